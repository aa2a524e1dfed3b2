--! keys: epoch +task
--! args: epoch now max +task
-- Moves retries whose backoff is over back into their queues.
-- KEYS: epoch, and the task keys
-- A: epoch, now, max (most to move)
-- Returns the pools that got tasks (a list).
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
local due = redis.call('ZRANGEBYSCORE', K.delayed, '-inf', A.now, 'LIMIT', 0, A.max)
local pools, seen = {}, {}
for _, tid in ipairs(due) do
  redis.call('ZREM', K.delayed, tid)
  local t = redis.call('HMGET', K.task .. tid, 'state', 'pool', 'score')
  if t[1] == 'retrying' then
    redis.call('HSET', K.task .. tid, 'state', 'queued', 'updatedAt', A.now)
    redis.call('ZADD', K.queue .. t[2], t[3], tid)
    if not seen[t[2]] then
      seen[t[2]] = true
      table.insert(pools, t[2])
    end
  end
end
return pools
