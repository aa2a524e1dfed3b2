--! keys: epoch task leases stalls settings once
--! args: epoch id attempt agent_id now progress step once_ttl
-- An agent acknowledges its assignment, or reports progress: the task is
-- running and its lease runs for the task's timeout from now.
-- Progress is watched when the task (progressTimeoutMs) or its pool (the
-- `<pool>:progressTimeout` setting) says so: the attempt must show progress
-- within that time or it is stuck (stalls, expire.lua). A report with a step
-- no higher than the last one is not progress: it moves neither deadline.
-- KEYS: epoch, task (its hash), leases, stalls, settings
-- A: epoch, id, attempt, agent_id, now, progress ('' for a plain ack),
--    step ('' for none)
-- Returns outcome (ok, repeated, stale) and, when stale, state.
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
if replayed() then return reply('replay') end
local task, now = KEY.task, tonumber(A.now)
local t = read(task, 'state', 'attempt', 'agent', 'timeoutMs', 'pool',
  'progressTimeoutMs', 'step', 'watchMs')
if not t.state then return reply('stale', {state = 'unknown'}) end
if (t.state ~= 'assigned' and t.state ~= 'running') or t.attempt ~= A.attempt or t.agent ~= A.agent_id then
  return reply('stale', {state = t.state})
end
if A.step ~= '' and t.step and tonumber(A.step) <= tonumber(t.step) then
  return reply('repeated')
end
local set = {'state', 'running', 'updatedAt', now}
if A.progress ~= '' then table.insert(set, 'progress'); table.insert(set, A.progress) end
if A.step ~= '' then table.insert(set, 'step'); table.insert(set, A.step) end
redis.call('HSET', task, unpack(set))
redis.call('ZADD', KEY.leases, now + tonumber(t.timeoutMs), A.id)
-- The progress timeout the attempt was told at assignment (watchMs); for
-- an attempt assigned before that was kept, the task's or the pool's.
local watch = tonumber(t.watchMs or t.progressTimeoutMs
  or redis.call('HGET', KEY.settings, t.pool .. ':progressTimeout') or 0)
if watch > 0 then redis.call('ZADD', KEY.stalls, now + watch, A.id) end
return reply('ok')
