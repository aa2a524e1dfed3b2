--! keys: epoch task leases once
--! args: epoch id attempt agent_id now progress once_ttl
-- An agent acknowledges its assignment, or reports progress: the task is
-- running and its lease runs for the task's timeout from now.
-- KEYS: epoch, task (its hash), leases
-- A: epoch, id, attempt, agent_id, now, progress ('' for a plain ack)
-- Returns outcome (ok, stale) and, when stale, state.
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
if replayed() then return reply('replay') end
local task = KEY.task
local t = redis.call('HMGET', task, 'state', 'attempt', 'agent', 'timeoutMs')
if not t[1] then return reply('stale', {state = 'unknown'}) end
if (t[1] ~= 'assigned' and t[1] ~= 'running') or t[2] ~= A.attempt or t[3] ~= A.agent_id then
  return reply('stale', {state = t[1]})
end
redis.call('HSET', task, 'state', 'running', 'updatedAt', A.now)
if A.progress ~= '' then redis.call('HSET', task, 'progress', A.progress) end
redis.call('ZADD', KEY.leases, tonumber(A.now) + tonumber(t[4]), A.id)
return reply('ok')
