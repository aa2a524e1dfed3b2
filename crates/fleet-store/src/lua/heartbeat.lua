-- Record a heartbeat. A failed agent that is heard again goes to recovering;
-- a recovering one goes back to idle on its next heartbeat. An agent holding
-- tasks is at least active, and busy at its capacity, whatever it reports.
-- KEYS: epoch, agent hash, heartbeats zset, failed zset, counts hash
-- ARGV: epoch, id, now, reported status, load, memory, cpu, network, [9-20] key prefixes
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
prefixes(9)
local agent, hb, failed, counts = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, now = ARGV[2], ARGV[3]

local cur = redis.call('HMGET', agent, 'status', 'pool', 'inflight', 'capacity')
local old, pool = cur[1], cur[2]
if not old then return {'unknown'} end

local new, outcome = ARGV[4], 'ok'
if old == 'failed' then
  new, outcome = 'recovering', 'recovering'
  redis.call('HINCRBY', agent, 'recoveryAttempts', 1)
  redis.call('ZREM', failed, id)
elseif old == 'recovering' then
  new, outcome = 'idle', 'recovered'
end
if new ~= 'recovering' then
  local inflight, capacity = tonumber(cur[3] or 0), tonumber(cur[4] or 1)
  if inflight >= capacity then new = 'busy'
  elseif inflight > 0 and new == 'idle' then new = 'active' end
end
redis.call('HSET', agent, 'status', new, 'load', ARGV[5], 'memory', ARGV[6],
  'cpu', ARGV[7], 'network', ARGV[8], 'lastHeartbeat', now)
redis.call('ZADD', hb, now, id)
move(counts, pool, old, new)
refresh_available(id, pool)
return {outcome, old, new, pool}
