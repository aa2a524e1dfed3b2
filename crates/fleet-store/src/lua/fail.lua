-- Declare an agent failed if it is still silent past the cutoff (re-checked
-- here, atomically, so a heartbeat that raced the detector wins). Its tasks go
-- back to their queues at once. The max_failures-th failure removes the agent.
-- KEYS: epoch, agent hash, heartbeats zset, failed zset, counts hash
-- ARGV: epoch, id, cutoff, now, max failures, pool-agents key prefix, [7-18] key prefixes
-- Returns {outcome, old status, pool, failures, last heartbeat, tasks requeued, tasks dead}.
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
prefixes(7)
local agent, hb, failed, counts = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, now = ARGV[2], ARGV[4]

local score = redis.call('ZSCORE', hb, id)
if not score or tonumber(score) > tonumber(ARGV[3]) then return {'fresh'} end
local cur = redis.call('HMGET', agent, 'status', 'pool')
local old, pool = cur[1], cur[2]
redis.call('ZREM', hb, id)
if not old then return {'gone'} end

local queued, dead = orphan_all(id, now)
redis.call('ZREM', K.available .. pool, id)
local failures = redis.call('HINCRBY', agent, 'failures', 1)
if failures >= tonumber(ARGV[5]) then
  redis.call('DEL', agent)
  redis.call('SREM', ARGV[6] .. pool, id)
  redis.call('ZREM', K.pool_done .. pool, id)
  redis.call('ZREM', failed, id)
  move(counts, pool, old, nil)
  return {'removed', old, pool, failures, score, queued, dead}
end
redis.call('HSET', agent, 'status', 'failed')
redis.call('ZADD', failed, now, id)
move(counts, pool, old, 'failed')
return {'failed', old, pool, failures, score, queued, dead}
