-- An agent completes or fails its current attempt. Results for an attempt
-- that is no longer current (duplicates, late ones) change nothing.
-- A failure is retried after a backoff, or dead-lettered once the task has
-- used its retries.
-- KEYS: epoch, task hash, counts hash
-- ARGV: epoch, task id, attempt, agent id, now, 'completed' | 'failed',
--       result JSON or error text, retention ms, backoff base ms, backoff max ms,
--       allocation channel, [12-23] key prefixes
-- Returns {'completed' | 'retrying' | 'dead' | 'stale', pool or state}.
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
prefixes(12)
local task, counts = KEYS[2], KEYS[3]
local tid, now = ARGV[2], tonumber(ARGV[5])
local t = redis.call('HMGET', task, 'state', 'attempt', 'agent', 'assignedAt', 'pool',
  'maxRetries')
if not t[1] then return {'stale', 'unknown'} end
if (t[1] ~= 'assigned' and t[1] ~= 'running') or t[2] ~= ARGV[3] or t[3] ~= ARGV[4] then
  return {'stale', t[1]}
end
local attempt = tonumber(t[2])
redis.call('ZREM', K.leases, tid)
release_agent(t[3], tid, now, ARGV[6], now - tonumber(t[4] or now), counts)
if ARGV[6] == 'completed' then
  redis.call('HSET', task, 'state', 'completed', 'result', ARGV[7], 'updatedAt', now)
  redis.call('PEXPIRE', task, ARGV[8])
  task_event(ARGV[11], 'task_completed', tid, t[5], t[3], attempt, now)
  return {'completed', t[5]}
end
redis.call('HSET', task, 'error', ARGV[7], 'updatedAt', now)
if attempt > tonumber(t[6]) then
  redis.call('HSET', task, 'state', 'dead', 'agent', '')
  redis.call('ZADD', K.dead, now, tid)
  task_event(ARGV[11], 'task_dead', tid, t[5], t[3], attempt, now)
  return {'dead', t[5]}
end
local backoff = math.min(tonumber(ARGV[9]) * 2 ^ (attempt - 1), tonumber(ARGV[10]))
redis.call('HSET', task, 'state', 'retrying', 'agent', '')
redis.call('ZADD', K.delayed, now + backoff, tid)
task_event(ARGV[11], 'task_retrying', tid, t[5], t[3], attempt, now)
return {'retrying', t[5]}
