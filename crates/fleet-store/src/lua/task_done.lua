--! keys: epoch task +task once
--! args: epoch id attempt agent_id now outcome detail retention_ms backoff_ms backoff_max_ms +task once_ttl
-- An agent completes or fails its current attempt. Results for an attempt
-- that is no longer current (duplicates, late ones) change nothing.
-- A failure is retried after a backoff, or dead-lettered once the task has
-- used its retries.
-- KEYS: epoch, task (its hash), and the task keys
-- A: epoch, id, attempt, agent_id, now, outcome ('completed' or 'failed'),
--    detail (result JSON or error text), retention_ms, backoff_ms,
--    backoff_max_ms, allocation_channel
-- Returns outcome (completed, retrying, dead, stale, recorded) and pool (or,
-- when stale, state). recorded: this attempt had already completed the task
-- (a re-sent result: the agent missed the acknowledgement).
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
if replayed() then return reply('replay') end
local task, counts = KEY.task, KEY.counts
local tid, now = A.id, tonumber(A.now)
local t = redis.call('HMGET', task, 'state', 'attempt', 'agent', 'assignedAt', 'pool',
  'maxRetries', 'retryBase')
if not t[1] then return reply('stale', {state = 'unknown'}) end
if (t[1] ~= 'assigned' and t[1] ~= 'running') or t[2] ~= A.attempt or t[3] ~= A.agent_id then
  if t[1] == 'completed' and t[2] == A.attempt and t[3] == A.agent_id then
    return reply('recorded', {state = t[1]})
  end
  return reply('stale', {state = t[1]})
end
local attempt = tonumber(t[2])
redis.call('ZREM', K.leases, tid)
redis.call('ZREM', K.stalls, tid)
release_agent(t[3], tid, now, A.outcome, now - tonumber(t[4] or now), counts)
if A.outcome == 'completed' then
  redis.call('HSET', task, 'state', 'completed', 'result', A.detail, 'updatedAt', now)
  redis.call('PEXPIRE', task, A.retention_ms)
  task_event(A.allocation_channel, 'task_completed', tid, t[5], t[3], attempt, now)
  return reply('completed', {pool = t[5]})
end
redis.call('HSET', task, 'error', A.detail, 'updatedAt', now)
-- Retries count from retryBase: a requeued dead letter has fresh ones.
local tries = attempt - tonumber(t[7] or 0)
if tries > tonumber(t[6]) then
  redis.call('HSET', task, 'state', 'dead', 'agent', '')
  redis.call('ZADD', K.dead, now, tid)
  task_event(A.allocation_channel, 'task_dead', tid, t[5], t[3], attempt, now)
  return reply('dead', {pool = t[5]})
end
local backoff = math.min(tonumber(A.backoff_ms) * 2 ^ (tries - 1), tonumber(A.backoff_max_ms))
redis.call('HSET', task, 'state', 'retrying', 'agent', '')
redis.call('ZADD', K.delayed, now + backoff, tid)
task_event(A.allocation_channel, 'task_retrying', tid, t[5], t[3], attempt, now)
return reply('retrying', {pool = t[5]})
