-- A lease ran out (no ack in time, or no result within the task's timeout):
-- the agent loses the task, which goes back to its queue at once (or to the
-- dead letters if it has used its attempts).
-- KEYS: epoch, task hash, counts hash
-- ARGV: epoch, task id, now, allocation channel, [5-16] key prefixes
-- Returns {'queued' | 'dead' | 'fresh' | 'stale', pool, agent}.
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
prefixes(5)
local tid, now = ARGV[2], tonumber(ARGV[3])
local lease = redis.call('ZSCORE', K.leases, tid)
if not lease or tonumber(lease) > now then return {'fresh'} end
local t = redis.call('HMGET', KEYS[2], 'state', 'agent', 'pool', 'attempt')
if t[1] ~= 'assigned' and t[1] ~= 'running' then
  redis.call('ZREM', K.leases, tid)
  return {'stale'}
end
release_agent(t[2], tid, now, 'failed', 0, KEYS[3])
local r = requeue(tid, now, 'lease expired')
if r == 'dead' then
  task_event(ARGV[4], 'task_dead', tid, t[3], t[2], t[4], now)
else
  task_event(ARGV[4], 'task_requeued', tid, t[3], t[2], t[4], now)
end
return {r, t[3], t[2]}
