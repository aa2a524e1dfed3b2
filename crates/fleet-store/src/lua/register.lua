--! keys: epoch agent heartbeats failed +task once
--! args: epoch id pool pool_max fleet_max now type priority capabilities memory cpu network capacity instance session reply_channel reply event_channel event +task once_ttl
-- Register (or idempotently re-register) an agent.
-- KEYS: epoch, agent (its hash), heartbeats, failed, and the task keys
-- A: epoch, id, pool, pool_max, fleet_max, now, type, priority, capabilities
--    (JSON), memory, cpu, network, capacity, instance, session (the X25519
--    public key of the session it set up, '' for none); for a new agent,
--    optionally, the pre-rendered reply and event with their channels
--    (reply_channel, reply, event_channel, event: published here, saving the
--    caller a round trip)
-- Returns outcome (registered, announced, reregistered, pool_full,
-- fleet_full, pool_mismatch) and, when registered: registeredAt,
-- tasksCompleted, avgTaskTime, successRate, failures, recoveryAttempts,
-- requeued, dead, poisoned (the tasks the previous instance held), health, quarantinedUntil, probation. Health
-- and quarantine survive a re-registration.
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
if replayed() then return reply('replay') end
local agent, hb, failed, counts = KEY.agent, KEY.heartbeats, KEY.failed, KEY.counts
local id, pool, now = A.id, A.pool, A.now

-- Its budget outlives its registration: one spent below the minimum leaves
-- it halted (no pre-rendered reply then: it says idle).
local balance = stored_balance(id, now)
local halted = balance and balance < budgets().min
local cur = read(agent, 'status', 'pool', 'registeredAt', 'tasksCompleted',
  'avgTaskTime', 'successRate', 'failures', 'recoveryAttempts', 'instance', 'health',
  'quarantinedUntil', 'probation')
local old = cur.status
local outcome
local orphaned = {queued = 0, dead = 0, poison = 0}
if old then
  if cur.pool ~= pool then return reply('pool_mismatch', {pool = cur.pool}) end
  outcome = 'reregistered'
  -- Another instance: the agent restarted and lost whatever it held.
  if A.instance ~= '' and cur.instance ~= A.instance then
    orphaned.queued, orphaned.dead, orphaned.poison = orphan_all(id, now, true)
    orphaned.poison = orphaned.poison + lapsed_casualties(id, now)
  end
  redis.call('HSET', agent, 'type', A.type, 'status', 'idle', 'priority', A.priority,
    'capabilities', A.capabilities, 'memory', A.memory, 'cpu', A.cpu, 'network', A.network,
    'load', 0, 'lastHeartbeat', now, 'lastActive', now, 'capacity', A.capacity,
    'instance', A.instance)
  -- A new registration starts its heartbeats' order afresh (another
  -- instance, maybe another clock): see heartbeat.lua.
  if A.session == '' then
    redis.call('HDEL', agent, 'sessionKey', 'sealedAt')
  else
    redis.call('HDEL', agent, 'sealedAt')
  end
  redis.call('ZREM', failed, id)
else
  local poolset = K.pool_agents .. pool
  if redis.call('SCARD', poolset) >= tonumber(A.pool_max) then return reply('pool_full') end
  if redis.call('ZCARD', hb) + redis.call('ZCARD', failed) >= tonumber(A.fleet_max) then
    return reply('fleet_full')
  end
  outcome = 'registered'
  cur = {status = false, pool = pool, registeredAt = now, tasksCompleted = '0',
    avgTaskTime = '0', successRate = '0', failures = '0', recoveryAttempts = '0',
    instance = false, health = '100', quarantinedUntil = '0', probation = '0'}
  redis.call('HSET', agent, 'id', id, 'pool', pool, 'registeredAt', now,
    'tasksCompleted', 0, 'tasksFailed', 0, 'avgTaskTime', 0, 'successRate', 0, 'failures', 0,
    'recoveryAttempts', 0, 'type', A.type, 'status', 'idle', 'priority', A.priority,
    'capabilities', A.capabilities, 'memory', A.memory, 'cpu', A.cpu, 'network', A.network,
    'load', 0, 'lastHeartbeat', now, 'lastActive', now, 'capacity', A.capacity,
    'inflight', 0, 'instance', A.instance)
  redis.call('SADD', poolset, id)
  redis.call('ZADD', K.pool_done .. pool, 0, id)
  -- The same identity back within the health memory: its health and
  -- quarantine are what they were (a quarantine that ran out meanwhile
  -- ends as parole.lua ends it: on probation).
  local past = read(K.history .. id, 'health', 'quarantinedUntil', 'probation',
    'quarantines')
  local restored = past.health ~= false
  if restored then
    local untl, probation, health = tonumber(past.quarantinedUntil), past.probation, past.health
    if untl > 0 and untl <= tonumber(now) then
      untl, probation, health = 0, '1', tostring(health_policy().below)
    end
    if untl > 0 then redis.call('ZADD', K.quarantine, untl, id) end
    redis.call('HSET', agent, 'health', health, 'quarantinedUntil', untl, 'probation', probation,
      'quarantines', past.quarantines)
    cur.health, cur.quarantinedUntil, cur.probation = health, tostring(untl), probation
    redis.call('DEL', K.history .. id)
  end
  -- The pre-rendered reply assumes a fresh record: not for a restored one.
  if A.reply_channel ~= '' and not restored and not halted then
    redis.call('PUBLISH', A.reply_channel, A.reply)
    redis.call('PUBLISH', A.event_channel, A.event)
    outcome = 'announced'
  end
end
if A.session ~= '' then redis.call('HSET', agent, 'sessionKey', A.session) end
redis.call('ZADD', hb, now, id)
-- A validator (governance) is one that declares the capability.
if string.find(A.capabilities, '"validator"', 1, true) then
  redis.call('SADD', K.validators, id)
else
  redis.call('SREM', K.validators, id)
end
local out = {}
if halted then
  redis.call('HSET', agent, 'status', 'halted', 'halted', '1')
  move(counts, pool, old, 'halted')
  out = {halted = balance, channel = K.agent_channel .. id,
    message = encode.halt(balance, budgets().unit)}
else
  redis.call('HDEL', agent, 'halted')
  move(counts, pool, old, 'idle')
end
refresh_available(id, pool)
return reply(outcome, out, {registeredAt = cur.registeredAt, tasksCompleted = cur.tasksCompleted, avgTaskTime = cur.avgTaskTime,
  successRate = cur.successRate, failures = cur.failures, recoveryAttempts = cur.recoveryAttempts, requeued = orphaned.queued, dead = orphaned.dead, poisoned = orphaned.poison,
  health = cur.health or '100', quarantinedUntil = cur.quarantinedUntil or '0', probation = cur.probation or '0'})
