--! keys: epoch task +task
--! args: epoch id now why +task
-- An attempt is taken back from its agent, for one of two reasons (why):
--   lease  its lease ran out (no ack in time, or no result within the
--          task's timeout);
--   stuck  the agent heartbeats but showed no progress (a higher step) within
--          the task's progress timeout: it is flagged stuck, judged as a
--          failure that quarantines it, and an agent_stuck event goes out.
-- The task goes back to its queue at once, to the dead letters if it has
-- used its attempts, or (stuck: a casualty of the task, common.lua) to the
-- poison set if it took down `poisonAfter` agents. The agent is sent
-- task_cancel for the attempt.
-- KEYS: epoch, task (its hash), and the task keys
-- A: epoch, id, now, why (lease, stuck), allocation_channel
-- Returns outcome (queued, dead, poison, fresh, stale) and, when queued,
-- dead or poison: pool, agent, and the task_cancel (channel, message) to
-- publish.
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
local tid, now = A.id, tonumber(A.now)
local watch = K.leases
if A.why == 'stuck' then watch = K.stalls end
local deadline = redis.call('ZSCORE', watch, tid)
if not deadline or tonumber(deadline) > now then return reply('fresh') end
local t = read(KEY.task, 'state', 'agent', 'pool', 'attempt')
if t.state ~= 'assigned' and t.state ~= 'running' then
  redis.call('ZREM', watch, tid)
  return reply('stale')
end
local outcome = 'failed'
if A.why == 'stuck' then
  outcome = 'stuck'
  local agent = K.agent .. t.agent
  if redis.call('EXISTS', agent) == 1 then
    local n = redis.call('HINCRBY', agent, 'stuck', 1)
    redis.call('HSET', agent, 'stuckAt', now)
    local channel = redis.call('HGET', K.settings, 'healthChannel')
    if channel then
      redis.call('PUBLISH', channel, encode.agent_stuck(t.agent, tid, t.attempt, n, now))
    end
  end
end
release_agent(t.agent, tid, now, outcome, 0, KEY.counts)
local r
if A.why == 'stuck' then
  r = requeue(tid, now, 'stuck: no progress', true, nil, 'stuck')
else
  -- A lapsed lease alone is no casualty: the agent may be slow or mute. If
  -- it has not been heard since it got the task, it may also be dead of
  -- it: the task then waits out the failure window before it goes to
  -- another agent, and if its agent is found dead meanwhile, that death is
  -- the task's casualty (lapsed_casualties) and it may never run again.
  local a = read(K.agent .. t.agent, 'lastHeartbeat')
  local task_at = redis.call('HGET', KEY.task, 'assignedAt')
  local window = tonumber(redis.call('HGET', K.settings, 'failureWindow') or 0)
  local silent = tonumber(a.lastHeartbeat or 0) <= tonumber(task_at or 0)
  if silent and window > 0 then
    r = requeue(tid, now, 'lease expired', false, window, 'timed_out')
    local lapsed = K.lapsed .. t.agent
    redis.call('SADD', lapsed, tid)
    redis.call('PEXPIRE', lapsed, 2 * window)
  else
    r = requeue(tid, now, 'lease expired', false, nil, 'timed_out')
  end
end
task_event(A.allocation_channel, requeued_event[r], tid, t.pool, t.agent, t.attempt, now)
-- The agent is to be told, so that it stops working on an attempt that no
-- longer counts: the caller signs and publishes the task_cancel.
return reply(r, {pool = t.pool, agent = t.agent, channel = K.agent_channel .. t.agent,
  message = encode.task_cancel(tid, t.attempt)})
