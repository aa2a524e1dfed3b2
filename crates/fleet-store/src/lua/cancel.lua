-- Cancel a task that has not finished. A queued or delayed one leaves its
-- queue; an assigned or running one is taken from its agent, whose slot is
-- freed at once and who is told on its channel; a late result for that
-- attempt is stale and ignored.
-- KEYS: epoch, task hash, queue zset, delayed zset, counts hash
-- ARGV: epoch, id, now, retention ms, agent channel prefix, allocation channel,
--       [7-18] key prefixes
-- Returns {'cancelled', previous state} | {'unknown'} | {'not_cancellable', state}.
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
prefixes(7)
local task, tid, now = KEYS[2], ARGV[2], tonumber(ARGV[3])
local t = redis.call('HMGET', task, 'state', 'agent', 'attempt', 'pool')
local state = t[1]
if not state then return {'unknown'} end
if state == 'assigned' or state == 'running' then
  redis.call('ZREM', K.leases, tid)
  release_agent(t[2], tid, now, 'gone', 0, KEYS[5])
  redis.call('PUBLISH', ARGV[5] .. t[2], '{"v":1,"type":"task_cancel","taskId":"' .. tid ..
    '","attempt":' .. t[3] .. '}')
elseif state == 'queued' or state == 'retrying' then
  redis.call('ZREM', KEYS[3], tid)
  redis.call('ZREM', KEYS[4], tid)
else
  return {'not_cancellable', state}
end
redis.call('HSET', task, 'state', 'cancelled', 'agent', '', 'updatedAt', now)
redis.call('PEXPIRE', task, ARGV[4])
task_event(ARGV[6], 'task_cancelled', tid, t[4], t[2], t[3], now)
return {'cancelled', state}
