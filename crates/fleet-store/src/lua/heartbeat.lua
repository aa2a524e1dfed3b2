--! keys: epoch agent heartbeats failed +task once
--! args: epoch id now status load memory cpu network +task once_ttl
-- Record a heartbeat. A failed agent that is heard again goes to recovering;
-- a recovering one goes back to idle on its next heartbeat. An agent holding
-- tasks is at least active, and busy at its capacity, whatever it reports.
-- KEYS: epoch, agent, heartbeats, failed, and the task keys
-- A: epoch, id, now, status (reported), load, memory, cpu, network (the
--    three empty when the heartbeat carried no resources: the declared
--    ones stay)
-- A halted agent (its budget below the minimum) stays halted whatever it
-- reports, until its budget window renews: then it resumes here.
-- A heartbeat that changes neither status nor load does not re-rank the
-- agent among the pool's available ones (it costs three commands less).
-- Returns outcome (unknown, ok, recovering, recovered, resumed) and pool;
-- resumed: the resume (channel, message) for the caller to sign and send.
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
if replayed() then return reply('replay') end
local agent, hb, failed, counts = KEY.agent, KEY.heartbeats, KEY.failed, KEY.counts
local id, now = A.id, A.now

local cur = read(agent, 'status', 'pool', 'inflight', 'capacity', 'halted', 'load')
local old, pool = cur.status, cur.pool
if not old then return reply('unknown') end

local new, outcome = A.status, 'ok'
if old == 'failed' then
  new, outcome = 'recovering', 'recovering'
  redis.call('HINCRBY', agent, 'recoveryAttempts', 1)
  redis.call('ZREM', failed, id)
elseif old == 'recovering' then
  new, outcome = 'idle', 'recovered'
end
if new ~= 'recovering' then
  local inflight, capacity = tonumber(cur.inflight or 0), tonumber(cur.capacity or 1)
  if inflight >= capacity then new = 'busy'
  elseif inflight > 0 and new == 'idle' then new = 'active' end
end
local out = {pool = pool}
if cur.halted == '1' and new ~= 'recovering' then
  local balance = budget(id, pool, now)
  if balance and balance < budgets().min then
    new = 'halted'
  else
    redis.call('HDEL', agent, 'halted')
    outcome = 'resumed'
    out.channel = K.agent_channel .. id
    out.message = encode.resume(balance or 0)
    local channel = redis.call('HGET', K.settings, 'healthChannel')
    if channel then
      redis.call('PUBLISH', channel, encode.budget_event('agent_resumed', id, balance or 0, now))
    end
  end
end
if A.memory ~= '' then
  redis.call('HSET', agent, 'status', new, 'load', A.load, 'lastHeartbeat', now,
    'memory', A.memory, 'cpu', A.cpu, 'network', A.network)
else
  redis.call('HSET', agent, 'status', new, 'load', A.load, 'lastHeartbeat', now)
end
redis.call('ZADD', hb, now, id)
move(counts, pool, old, new)
-- A heartbeat that changes nothing the allocator ranks by (status, load)
-- leaves the agent's place among the available as it was: every other
-- change (tasks in hand, health, quarantine, draining) refreshes it where
-- it happens. Not so under weighted_fair: an agent at its quota comes back
-- when the window ends, which only a heartbeat notices.
if new ~= old or A.load ~= cur.load or strategy(pool) == 'weighted_fair' then
  refresh_available(id, pool)
end
return reply(outcome, out)
