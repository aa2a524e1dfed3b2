-- Remove an agent from the registry (deregistration, or expiry of a failed
-- agent); its tasks go back to their queues. With a cutoff, only a failed
-- agent failed at or before it is removed.
-- KEYS: epoch, agent hash, heartbeats zset, failed zset, counts hash
-- ARGV: epoch, id, pool-agents key prefix, failed cutoff ('' for none), now, [6-17] key prefixes
-- Returns {outcome, old status, pool, tasks requeued, tasks dead}.
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
prefixes(6)
local agent, hb, failed, counts = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id = ARGV[2]

if ARGV[4] ~= '' then
  local score = redis.call('ZSCORE', failed, id)
  if not score or tonumber(score) > tonumber(ARGV[4]) then return {'kept'} end
end
local cur = redis.call('HMGET', agent, 'status', 'pool')
local old, pool = cur[1], cur[2]
redis.call('ZREM', hb, id)
redis.call('ZREM', failed, id)
if not old then return {'unknown'} end
local queued, dead = orphan_all(id, ARGV[5])
redis.call('ZREM', K.available .. pool, id)
redis.call('DEL', agent)
redis.call('SREM', ARGV[3] .. pool, id)
redis.call('ZREM', K.pool_done .. pool, id)
redis.call('ZREM', K.quarantine, id)
redis.call('DEL', K.quota .. id)
move(counts, pool, old, nil)
return {'removed', old, pool, queued, dead}
