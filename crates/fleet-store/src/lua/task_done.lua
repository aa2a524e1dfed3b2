--! keys: epoch task +task once
--! args: epoch id attempt agent_id now outcome detail usage retention_ms backoff_ms backoff_max_ms +task once_ttl
-- An agent completes or fails its current attempt. Results for an attempt
-- that is no longer current (duplicates, late ones) change nothing.
-- A failure is retried after a backoff, or dead-lettered once the task has
-- used its retries.
-- What the attempt consumed (usage) is added to the task and debited from
-- the agent's budget here, with the result: an agent whose balance falls
-- below the budget's minimum is halted (no new work; the caller sends it
-- the halt). An attempt that consumed more than the task's maxCost fails
-- the task as over_budget (dead-lettered: running it again would cost as
-- much again).
-- KEYS: epoch, task (its hash), and the task keys
-- A: epoch, id, attempt, agent_id, now, outcome ('completed' or 'failed'),
--    detail (result JSON or error text), usage ('' for none), retention_ms,
--    backoff_ms, backoff_max_ms, allocation_channel
-- Returns outcome (completed, retrying, dead, stale, recorded) and pool (or,
-- when stale, state), and when the agent was halted, the halt (channel,
-- message) to send. recorded: this attempt had already completed the task
-- (a re-sent result: the agent missed the acknowledgement).
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
if replayed() then return reply('replay') end
local task, counts = KEY.task, KEY.counts
local tid, now = A.id, tonumber(A.now)
local t = read(task, 'state', 'attempt', 'agent', 'assignedAt', 'pool',
  'maxRetries', 'retryBase', 'maxCost', 'error', 'history', 'watchMs')
if not t.state then return reply('stale', {state = 'unknown'}) end
if (t.state ~= 'assigned' and t.state ~= 'running') or t.attempt ~= A.attempt or t.agent ~= A.agent_id then
  if t.state == 'completed' and t.attempt == A.attempt and t.agent == A.agent_id then
    return reply('recorded', {state = t.state})
  end
  return reply('stale', {state = t.state})
end
local attempt, aid, pool = tonumber(t.attempt), t.agent, t.pool
local outcome, detail = A.outcome, A.detail
local usage = tonumber(A.usage)
local over = usage and t.maxCost and usage > tonumber(t.maxCost)
if over then
  outcome = 'failed'
  detail = 'over_budget: used ' .. A.usage .. ', maxCost ' .. t.maxCost
end
redis.call('ZREM', K.leases, tid)
-- Only a watched attempt (a progress timeout) can be among the stalls; one
-- assigned before watchMs was written may be.
if not t.watchMs or tonumber(t.watchMs) > 0 then redis.call('ZREM', K.stalls, tid) end
-- A failure the agent reports is the task's, not a sign the agent is sick.
local released = outcome
if outcome == 'failed' then released = 'task_failed' end
release_agent(aid, tid, now, released, now - tonumber(t.assignedAt or now), counts)

local out = {pool = pool}
if usage then
  redis.call('HINCRBYFLOAT', task, 'usage', usage)
  local balance, _, spent = budget(aid, pool, now)
  if balance then
    balance = balance - usage
    redis.call('HSET', K.budget .. aid, 'balance', balance, 'spent', spent + usage)
    if balance < budgets().min and redis.call('HGET', K.agent .. aid, 'halted') ~= '1' then
      out.channel = K.agent_channel .. aid
      out.message = halt(aid, pool, balance, counts, now)
      out.halted = balance
    end
  end
end

-- The attempt goes into the task's history, written with the outcome.
local ended = outcome
if over then ended = 'over_budget' end
local err = nil
if outcome ~= 'completed' then err = detail end
local history = history_with(t.history, attempt_entry(aid, attempt, t.assignedAt, now, ended, err))
if outcome == 'completed' then
  -- An earlier attempt's error is in the history, not the completed task.
  if t.error then redis.call('HDEL', task, 'error') end
  redis.call('HSET', task, 'state', 'completed', 'result', detail, 'updatedAt', now,
    'history', history, 'lastAgent', aid)
  redis.call('PEXPIRE', task, A.retention_ms)
  task_event(A.allocation_channel, 'task_completed', tid, pool, aid, attempt, now)
  return reply('completed', out)
end
redis.call('HSET', task, 'error', detail, 'updatedAt', now, 'history', history, 'lastAgent', aid)
-- Retries count from retryBase: a requeued dead letter has fresh ones.
local tries = attempt - tonumber(t.retryBase or 0)
if over or tries > tonumber(t.maxRetries) then
  redis.call('HSET', task, 'state', 'dead') -- its agent stays: the last to try it
  redis.call('ZADD', K.dead, now, tid)
  task_event(A.allocation_channel, 'task_dead', tid, pool, aid, attempt, now)
  if over then out.overBudget = 1 end
  return reply('dead', out)
end
local backoff = math.min(tonumber(A.backoff_ms) * 2 ^ (tries - 1), tonumber(A.backoff_max_ms))
redis.call('HSET', task, 'state', 'retrying', 'agent', '')
redis.call('ZADD', K.delayed, now + backoff, tid)
task_event(A.allocation_channel, 'task_retrying', tid, pool, aid, attempt, now)
return reply('retrying', out)
