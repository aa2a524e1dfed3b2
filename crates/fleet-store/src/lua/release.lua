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
  local t = read(K.task .. tid, 'state', 'pool', 'score')
  if t.state == 'retrying' then
    redis.call('HSET', K.task .. tid, 'state', 'queued', 'updatedAt', A.now)
    redis.call('ZADD', K.queue .. t.pool, t.score, tid)
    if not seen[t.pool] then
      seen[t.pool] = true
      table.insert(pools, t.pool)
    end
  end
end
return pools
