--! keys: epoch proposal open all
--! args: epoch id action params proposer created_at deadline quorum total_weight validators hash kept
-- Stores a new governance proposal, open until its deadline, and lists it.
-- KEYS: epoch, proposal (its hash), open (open proposals by deadline), all
--   (proposals by creation, the newest `kept` listed)
-- A: epoch, the proposal's fields, hash (what every vote names), kept
-- Returns outcome opened.
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
redis.call('HSET', KEY.proposal, 'id', A.id, 'action', A.action, 'params', A.params,
  'proposer', A.proposer, 'createdAt', A.created_at, 'deadline', A.deadline,
  'quorum', A.quorum, 'totalWeight', A.total_weight, 'validators', A.validators,
  'hash', A.hash, 'state', 'open')
redis.call('ZADD', KEY.open, A.deadline, A.id)
redis.call('ZADD', KEY.all, A.created_at, A.id)
redis.call('ZREMRANGEBYRANK', KEY.all, 0, -tonumber(A.kept) - 1)
return reply('opened')
