--! keys: epoch task +task
--! args: epoch id now from +task
-- An operator sends a task held aside back to its queue: a dead letter
-- (from = 'dead') with fresh retries, or a poison task (from = 'poison')
-- with fresh retries and its casualties forgotten.
-- Its attempt numbers go on from where they were (retries count from
-- retryBase), so a result from an earlier life of the task names an attempt
-- that is no longer current and is ignored.
-- KEYS: epoch, task (its hash), and the task keys
-- A: epoch, id, now, from (dead, poison)
-- Returns outcome (queued, not_held) and pool (or, when not held there, state).
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
local task = KEY.task
local t = read(task, 'state', 'pool', 'score', 'attempt')
if t.state ~= A.from then return reply('not_held', {state = t.state or 'unknown'}) end
local set = K.dead
if A.from == 'poison' then set = K.poison end
redis.call('ZREM', set, A.id)
redis.call('HSET', task, 'state', 'queued', 'retryBase', t.attempt or 0, 'error', '', 'updatedAt', A.now,
  'casualties', 0)
redis.call('PERSIST', task)
redis.call('ZADD', K.queue .. t.pool, t.score, A.id)
return reply('queued', {pool = t.pool})
