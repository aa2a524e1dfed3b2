--! keys: epoch agent heartbeats failed +task
--! args: epoch id cutoff now max_failures +task
-- Declare an agent failed if it is still silent past the cutoff (re-checked
-- here, atomically, so a heartbeat that raced the detector wins). Its tasks go
-- back to their queues at once. The max_failures-th failure removes the agent.
-- KEYS: epoch, agent, heartbeats, failed, and the task keys
-- A: epoch, id, cutoff, now, max_failures
-- Returns outcome (fresh, gone, failed, removed) and, when failed or removed:
-- pool, failures, lastHeartbeat, requeued, dead, poisoned (the tasks it held).
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
local agent, hb, failed, counts = KEY.agent, KEY.heartbeats, KEY.failed, KEY.counts
local id, now = A.id, A.now

local score = redis.call('ZSCORE', hb, id)
if not score or tonumber(score) > tonumber(A.cutoff) then return reply('fresh') end
local cur = read(agent, 'status', 'pool')
local old, pool = cur.status, cur.pool
redis.call('ZREM', hb, id)
if not old then return reply('gone') end

local queued, dead, poison = orphan_all(id, now, true)
poison = poison + lapsed_casualties(id, now)
redis.call('ZREM', K.available .. pool, id)
local failures = redis.call('HINCRBY', agent, 'failures', 1)
local out = {pool = pool, failures = failures, lastHeartbeat = score, requeued = queued,
  dead = dead, poisoned = poison}
if failures >= tonumber(A.max_failures) then
  remember(id, 'max_failures', now)
  redis.call('DEL', agent)
  redis.call('SREM', K.pool_agents .. pool, id)
  redis.call('ZREM', K.pool_done .. pool, id)
  redis.call('ZREM', failed, id)
  redis.call('SREM', K.validators, id)
  move(counts, pool, old, nil)
  return reply('removed', out)
end
redis.call('HSET', agent, 'status', 'failed')
redis.call('ZADD', failed, now, id)
move(counts, pool, old, 'failed')
return reply('failed', out)
