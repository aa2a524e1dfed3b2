--! keys: epoch task +task
--! args: epoch id now +task
-- An operator sends a dead-lettered task back to its queue with fresh retries.
-- Its attempt numbers go on from where they were (retries count from
-- retryBase), so a result from an earlier life of the task names an attempt
-- that is no longer current and is ignored.
-- KEYS: epoch, task (its hash), and the task keys
-- A: epoch, id, now
-- Returns outcome (queued, not_dead) and pool (or, when not dead, state).
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
local task = KEY.task
local t = redis.call('HMGET', task, 'state', 'pool', 'score', 'attempt')
if t[1] ~= 'dead' then return reply('not_dead', {state = t[1] or 'unknown'}) end
redis.call('ZREM', K.dead, A.id)
redis.call('HSET', task, 'state', 'queued', 'retryBase', t[4] or 0, 'error', '', 'updatedAt', A.now)
redis.call('PERSIST', task)
redis.call('ZADD', K.queue .. t[2], t[3], A.id)
return reply('queued', {pool = t[2]})
