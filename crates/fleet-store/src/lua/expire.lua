--! keys: epoch task +task
--! args: epoch id now +task
-- A lease ran out (no ack in time, or no result within the task's timeout):
-- the agent loses the task and is sent task_cancel for the attempt; the task
-- goes back to its queue at once (or to the dead letters if it has used its
-- attempts: an expired attempt counts as one).
-- KEYS: epoch, task (its hash), and the task keys
-- A: epoch, id, now, allocation_channel
-- Returns outcome (queued, dead, fresh, stale) and, when queued or dead,
-- pool, agent, and the task_cancel (channel, message) to publish.
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
local tid, now = A.id, tonumber(A.now)
local lease = redis.call('ZSCORE', K.leases, tid)
if not lease or tonumber(lease) > now then return reply('fresh') end
local t = redis.call('HMGET', KEY.task, 'state', 'agent', 'pool', 'attempt')
if t[1] ~= 'assigned' and t[1] ~= 'running' then
  redis.call('ZREM', K.leases, tid)
  return reply('stale')
end
release_agent(t[2], tid, now, 'failed', 0, KEY.counts)
local r = requeue(tid, now, 'lease expired')
if r == 'dead' then
  task_event(A.allocation_channel, 'task_dead', tid, t[3], t[2], t[4], now)
else
  task_event(A.allocation_channel, 'task_requeued', tid, t[3], t[2], t[4], now)
end
-- The agent is to be told, so that it stops working on an attempt that no
-- longer counts: the caller signs and publishes the task_cancel.
return reply(r, {pool = t[3], agent = t[2], channel = K.agent_channel .. t[2],
  message = encode.task_cancel(tid, t[4])})
