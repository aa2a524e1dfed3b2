-- Ends the quarantine of agents whose period is over: they go on probation
-- (one task at a time, health at the quarantine line) and are available again.
-- KEYS: epoch
-- ARGV: epoch, now, most to release, [4-15] key prefixes
-- Returns the ids released.
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
prefixes(4)
local due = redis.call('ZRANGE', K.quarantine, '-inf', ARGV[2], 'BYSCORE', 'LIMIT', 0, ARGV[3])
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
