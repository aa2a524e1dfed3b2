--! keys: epoch task queue +task
--! args: epoch id now retention_ms +task
-- Cancel a task that has not finished. A queued or delayed one leaves its
-- queue; an assigned or running one is taken from its agent, whose slot is
-- freed at once and who is to be told on its channel; a late result for that
-- attempt is stale and ignored.
-- KEYS: epoch, task (its hash), queue (its pool's), and the task keys
-- A: epoch, id, now, retention_ms, allocation_channel
-- Returns outcome (cancelled, unknown, not_cancellable) and state (the
-- state it was in); when an agent held it, channel and message: the
-- task_cancel for the caller to sign and publish.
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
local task, tid, now = KEY.task, A.id, tonumber(A.now)
local t = read(task, 'state', 'agent', 'attempt', 'pool', 'assignedAt')
local state = t.state
local tell = {}
if not state then return reply('unknown') end
if state == 'assigned' or state == 'running' then
  redis.call('ZREM', K.leases, tid)
  redis.call('ZREM', K.stalls, tid)
  release_agent(t.agent, tid, now, 'gone', 0, KEY.counts)
  attempt_ended(tid, t.agent, t.attempt, t.assignedAt, now, 'cancelled', 'cancelled by an operator')
  tell = {channel = K.agent_channel .. t.agent, message = encode.task_cancel(tid, t.attempt)}
elseif state == 'queued' or state == 'retrying' then
  redis.call('ZREM', KEY.queue, tid)
  redis.call('ZREM', K.delayed, tid)
else
  return reply('not_cancellable', {state = state})
end
redis.call('HSET', task, 'state', 'cancelled', 'agent', '', 'updatedAt', now)
redis.call('PEXPIRE', task, A.retention_ms)
task_event(A.allocation_channel, 'task_cancelled', tid, t.pool, t.agent, t.attempt, now)
tell.state = state
return reply('cancelled', tell)
