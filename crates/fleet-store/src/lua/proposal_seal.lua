--! keys: epoch proposal
--! args: epoch seal
-- Records a decided proposal's seal (the same seal is in the audit log).
-- KEYS: epoch, proposal (its hash)
-- A: epoch, seal
-- Returns outcome sealed.
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
redis.call('HSET', KEY.proposal, 'seal', A.seal)
return reply('sealed')
