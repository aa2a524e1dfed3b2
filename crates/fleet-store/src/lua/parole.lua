--! keys: epoch +task
--! args: epoch now max +task
-- Ends the quarantine of agents whose period is over: they go on probation
-- (one task at a time, health at the quarantine line) and are available again.
-- KEYS: epoch, and the task keys
-- A: epoch, now, max (most to release)
-- Returns the ids released (a list).
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
local due = redis.call('ZRANGE', K.quarantine, '-inf', A.now, 'BYSCORE', 'LIMIT', 0, A.max)
local released = {}
for _, aid in ipairs(due) do
  redis.call('ZREM', K.quarantine, aid)
  local key = K.agent .. aid
  local pool = redis.call('HGET', key, 'pool')
  if pool then
    redis.call('HSET', key, 'quarantinedUntil', 0, 'probation', 1,
      'health', health_policy().below)
    refresh_available(aid, pool)
    table.insert(released, aid)
  end
end
return released
