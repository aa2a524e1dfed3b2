-- An agent acknowledges its assignment, or reports progress: the task is
-- running and its lease runs for the task's timeout from now.
-- KEYS: epoch, task hash, leases zset
-- ARGV: epoch, task id, attempt, agent id, now, progress ('' for a plain ack)
-- Returns {'ok'} or {'stale', state} for an attempt that is not current.
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
local task = KEYS[2]
local t = redis.call('HMGET', task, 'state', 'attempt', 'agent', 'timeoutMs')
if not t[1] then return {'stale', 'unknown'} end
if (t[1] ~= 'assigned' and t[1] ~= 'running') or t[2] ~= ARGV[3] or t[3] ~= ARGV[4] then
  return {'stale', t[1]}
end
redis.call('HSET', task, 'state', 'running', 'updatedAt', ARGV[5])
if ARGV[6] ~= '' then redis.call('HSET', task, 'progress', ARGV[6]) end
redis.call('ZADD', KEYS[3], tonumber(ARGV[5]) + tonumber(t[4]), ARGV[2])
return {'ok'}
