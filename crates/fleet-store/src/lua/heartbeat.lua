--! keys: epoch heartbeats failed +task
--! args: epoch now +task
--! batch: id status load memory cpu network sealed_at
-- Records a batch of heartbeats, in the order given. Each: the agent's id,
-- status (reported), load, memory, cpu, network (the three empty when the
-- heartbeat carried no resources: the declared ones stay), and when it was
-- sealed (0: unsigned). A sealed heartbeat must be sealed later than the
-- last one recorded for its agent (`sealedAt`, cleared when it registers
-- again): one that is not is a replay and changes nothing. So a heartbeat
-- needs no nonce kept in Redis.
-- A failed agent that is heard again goes to recovering; a recovering one
-- goes back to idle on its next heartbeat. An agent holding tasks is at
-- least active, and busy at its capacity, whatever it reports.
-- A halted agent (its budget below the minimum) stays halted whatever it
-- reports, until its budget window renews: then it resumes here.
-- A heartbeat that changes neither status nor load does not re-rank the
-- agent among the pool's available ones (it costs three commands less).
-- Returns one {n, outcome, pool, channel, message} for each heartbeat whose
-- outcome is not `ok` (n: its place in the batch, from 1): replay, unknown,
-- recovering, recovered, resumed (channel, message: the resume for the
-- caller to sign and send).
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
local hb, failed, counts, now = KEY.heartbeats, KEY.failed, KEY.counts, A.now

-- One heartbeat, b (an item of the batch): its outcome, and the agent's
-- pool, and the resume to send it, if any.
local function beat(b)
  local id, load = b.id, b.load
  local agent = K.agent .. id
  local cur = read(agent, 'status', 'pool', 'inflight', 'capacity', 'halted', 'load', 'sealedAt')
  local old, pool = cur.status, cur.pool
  if not old then return 'unknown' end
  local sealed = tonumber(b.sealed_at)
  if sealed > 0 and cur.sealedAt and sealed <= tonumber(cur.sealedAt) then return 'replay' end

  local new, outcome = b.status, 'ok'
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
  local channel, message
  if cur.halted == '1' and new ~= 'recovering' then
    local balance = budget(id, pool, now)
    if balance and balance < budgets().min then
      new = 'halted'
    else
      redis.call('HDEL', agent, 'halted')
      outcome = 'resumed'
      channel = K.agent_channel .. id
      message = encode.resume(balance or 0)
      local health = redis.call('HGET', K.settings, 'healthChannel')
      if health then
        redis.call('PUBLISH', health, encode.budget_event('agent_resumed', id, balance or 0, now))
      end
    end
  end
  local fields = {'status', new, 'load', load, 'lastHeartbeat', now}
  if b.memory ~= '' then
    for _, f in ipairs({'memory', b.memory, 'cpu', b.cpu, 'network', b.network}) do
      fields[#fields + 1] = f
    end
  end
  if sealed > 0 then
    fields[#fields + 1] = 'sealedAt'
    fields[#fields + 1] = b.sealed_at
  end
  redis.call('HSET', agent, unpack(fields))
  redis.call('ZADD', hb, now, id)
  move(counts, pool, old, new)
  -- A heartbeat that changes nothing the allocator ranks by (status, load)
  -- leaves the agent's place among the available as it was: every other
  -- change (tasks in hand, health, quarantine, draining) refreshes it where
  -- it happens. Not so under weighted_fair: an agent at its quota comes back
  -- when the window ends, which only a heartbeat notices.
  if new ~= old or load ~= cur.load or strategy(pool) == 'weighted_fair' then
    refresh_available(id, pool)
  end
  return outcome, pool, channel, message
end

local out = {}
for n, b in ipairs(BATCH) do
  local outcome, pool, channel, message = beat(b)
  if outcome ~= 'ok' then out[#out + 1] = {n, outcome, pool or '', channel or '', message or ''} end
end
return out
