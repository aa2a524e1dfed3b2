--! keys: epoch proposal open
--! args: epoch id now
-- A proposal past its deadline: expired if it is still open (a vote may have
-- decided it meanwhile), and off the open list either way.
-- KEYS: epoch, proposal (its hash), open (open proposals by deadline)
-- A: epoch, id, now
-- Returns outcome expired or decided (it was decided before).
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
redis.call('ZREM', KEY.open, A.id)
if redis.call('HGET', KEY.proposal, 'state') ~= 'open' then return reply('decided') end
redis.call('HSET', KEY.proposal, 'state', 'expired', 'decidedAt', A.now)
return reply('expired')
