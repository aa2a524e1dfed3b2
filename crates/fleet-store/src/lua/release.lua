-- Moves retries whose backoff is over back into their queues.
-- KEYS: epoch
-- ARGV: epoch, now, most to move, [4-15] key prefixes
-- Returns the pools that got tasks.
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
prefixes(4)
local due = redis.call('ZRANGEBYSCORE', K.delayed, '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
local pools, seen = {}, {}
for _, tid in ipairs(due) do
  redis.call('ZREM', K.delayed, tid)
  local t = redis.call('HMGET', K.task .. tid, 'state', 'pool', 'score')
  if t[1] == 'retrying' then
    redis.call('HSET', K.task .. tid, 'state', 'queued', 'updatedAt', ARGV[2])
    redis.call('ZADD', K.queue .. t[2], t[3], tid)
    if not seen[t[2]] then
      seen[t[2]] = true
      table.insert(pools, t[2])
    end
  end
end
return pools
