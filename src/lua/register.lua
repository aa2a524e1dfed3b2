-- Register (or idempotently re-register) an agent.
-- KEYS: epoch, agent hash, heartbeats zset, failed zset, counts hash
-- ARGV: epoch, id, pool, pool max, fleet max, now, type, priority,
--       capabilities (JSON), memory, cpu, network, pool-agents key prefix
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
local agent, hb, failed, counts = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, pool, now = ARGV[2], ARGV[3], ARGV[6]
local poolset = ARGV[13] .. pool

local cur = redis.call('HMGET', agent, 'status', 'pool')
local old = cur[1]
if old then
  if cur[2] ~= pool then return {'pool_mismatch', cur[2]} end
else
  if redis.call('SCARD', poolset) >= tonumber(ARGV[4]) then return {'pool_full'} end
  if redis.call('ZCARD', hb) + redis.call('ZCARD', failed) >= tonumber(ARGV[5]) then
    return {'fleet_full'}
  end
  redis.call('HSET', agent, 'id', id, 'pool', pool, 'registeredAt', now,
    'tasksCompleted', 0, 'avgTaskTime', 0, 'successRate', 0,
    'failures', 0, 'recoveryAttempts', 0)
  redis.call('SADD', poolset, id)
end
redis.call('HSET', agent, 'type', ARGV[7], 'status', 'idle', 'priority', ARGV[8],
  'capabilities', ARGV[9], 'memory', ARGV[10], 'cpu', ARGV[11], 'network', ARGV[12],
  'load', 0, 'lastHeartbeat', now, 'lastActive', now)
redis.call('ZREM', failed, id)
redis.call('ZADD', hb, now, id)
move(counts, pool, old, 'idle')
local outcome = 'registered'
if old then outcome = 'reregistered' end
return {outcome, redis.call('HGETALL', agent)}
