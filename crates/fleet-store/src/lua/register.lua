-- Register (or idempotently re-register) an agent.
-- KEYS: epoch, agent hash, heartbeats zset, failed zset, counts hash
-- ARGV: epoch, id, pool, pool max, fleet max, now, type, priority,
--       capabilities (JSON), memory, cpu, network, pool-agents key prefix,
--       [14-17] for a new agent, optionally: agent channel, reply, registry
--       channel, event (published here, saving the caller a round trip),
--       [18] capacity, [19] instance, [20-31] key prefixes
-- Returns {outcome, registeredAt, tasksCompleted, avgTaskTime, successRate,
--          failures, recoveryAttempts, tasks given back, health, quarantinedUntil,
--          probation}. Health and quarantine survive a re-registration.
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
prefixes(20)
local agent, hb, failed, counts = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, pool, now = ARGV[2], ARGV[3], ARGV[6]

local cur = redis.call('HMGET', agent, 'status', 'pool', 'registeredAt', 'tasksCompleted',
  'avgTaskTime', 'successRate', 'failures', 'recoveryAttempts', 'instance', 'health',
  'quarantinedUntil', 'probation')
local old = cur[1]
local outcome
local orphaned = 0
if old then
  if cur[2] ~= pool then return {'pool_mismatch', cur[2]} end
  outcome = 'reregistered'
  -- Another instance: the agent restarted and lost whatever it held.
  if ARGV[19] ~= '' and cur[9] ~= ARGV[19] then
    local queued, dead = orphan_all(id, now)
    orphaned = queued + dead
  end
  redis.call('HSET', agent, 'type', ARGV[7], 'status', 'idle', 'priority', ARGV[8],
    'capabilities', ARGV[9], 'memory', ARGV[10], 'cpu', ARGV[11], 'network', ARGV[12],
    'load', 0, 'lastHeartbeat', now, 'lastActive', now, 'capacity', ARGV[18],
    'instance', ARGV[19])
  redis.call('ZREM', failed, id)
else
  local poolset = ARGV[13] .. pool
  if redis.call('SCARD', poolset) >= tonumber(ARGV[4]) then return {'pool_full'} end
  if redis.call('ZCARD', hb) + redis.call('ZCARD', failed) >= tonumber(ARGV[5]) then
    return {'fleet_full'}
  end
  outcome = 'registered'
  cur = {false, pool, now, '0', '0', '0', '0', '0', false, '100', '0', '0'}
  redis.call('HSET', agent, 'id', id, 'pool', pool, 'registeredAt', now,
    'tasksCompleted', 0, 'tasksFailed', 0, 'avgTaskTime', 0, 'successRate', 0, 'failures', 0,
    'recoveryAttempts', 0, 'type', ARGV[7], 'status', 'idle', 'priority', ARGV[8],
    'capabilities', ARGV[9], 'memory', ARGV[10], 'cpu', ARGV[11], 'network', ARGV[12],
    'load', 0, 'lastHeartbeat', now, 'lastActive', now, 'capacity', ARGV[18],
    'inflight', 0, 'instance', ARGV[19])
  redis.call('SADD', poolset, id)
  redis.call('ZADD', K.pool_done .. pool, 0, id)
  if ARGV[14] ~= '' then
    redis.call('PUBLISH', ARGV[14], ARGV[15])
    redis.call('PUBLISH', ARGV[16], ARGV[17])
    outcome = 'announced'
  end
end
redis.call('ZADD', hb, now, id)
move(counts, pool, old, 'idle')
refresh_available(id, pool)
return {outcome, cur[3], cur[4], cur[5], cur[6], cur[7], cur[8], orphaned, cur[10] or '100',
  cur[11] or '0', cur[12] or '0'}
