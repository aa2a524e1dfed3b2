--! keys: epoch queue evidence paused +task
--! args: epoch pool max now ack_ms evidence_cap +task
-- Hands a pool's waiting tasks to its available agents, best task first,
-- each to the best agent whose capabilities cover the task's. The claim is
-- atomic: a task leaves the queue exactly once, here, and its assignment is
-- leased (ack timeout); the task_assign messages are returned for the
-- caller to sign and publish.
-- Every decision is recorded, with the strategy and the chosen agent's score,
-- in the capped evidence stream and in the task's own record (decisions).
-- KEYS: epoch, queue (the pool's), evidence (the stream), paused (the
-- paused pools), and the task keys
-- A: epoch, pool, max (tasks at most: the batch, fleet_store::tasks::ALLOCATE_BATCH),
--    now, ack_ms, allocation_channel, evidence_cap
-- Returns {tasks assigned, tasks still queued, then (agent channel,
-- task_assign) pairs}.
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
local queue, counts = KEY.queue, KEY.counts
-- A paused queue hands nothing out (an operator paused it: pool_pause.lua).
if redis.call('HEXISTS', KEY.paused, A.pool) == 1 then
  return {0, redis.call('ZCARD', queue)}
end
local pool, max_n, now, ack = A.pool, tonumber(A.max), tonumber(A.now), tonumber(A.ack_ms)
-- No agent free: nothing to hand out, said in two reads (the common case
-- beside a submission while the pool is saturated), before any setting is
-- read or decoded.
if redis.call('EXISTS', K.available .. pool) == 0 then
  return {0, redis.call('ZCARD', queue)}
end

-- The pool's settings in one read: strategy, quota, progress timeout.
local set = read(K.settings, pool, pool .. ':quota', pool .. ':progressTimeout')
local strat = set[pool] or 'priority'
local quota = tonumber(set[pool .. ':quota'] or 0)
local pool_progress = tonumber(set[pool .. ':progressTimeout'] or 0)
strategies[pool] = strat
-- The batch's tasks, and twice as many agents to choose among.
local tids = redis.call('ZRANGE', queue, 0, max_n - 1)
if #tids == 0 then return {0, 0} end
local out = {}
local ranked = redis.call('ZRANGE', K.available .. pool, 0, 2 * max_n - 1, 'WITHSCORES')
if #ranked == 0 then return {0, redis.call('ZCARD', queue)} end
local agents, scores = {}, {}
for i = 1, #ranked, 2 do
  table.insert(agents, ranked[i])
  table.insert(scores, ranked[i + 1])
end

local caps = {}
local function agent_caps(aid)
  local c = caps[aid]
  if c == nil then
    c = {}
    local raw = redis.call('HGET', K.agent .. aid, 'capabilities')
    if raw then for _, x in ipairs(cjson.decode(raw)) do c[x] = true end end
    caps[aid] = c
  end
  return c
end

local function fits(aid, need)
  if #need == 0 then return true end
  local have = agent_caps(aid)
  for _, c in ipairs(need) do
    if not have[c] then return false end
  end
  return true
end

local rotate = {round_robin = true, least_loaded = true, weighted_fair = true}
local assigned = 0
local free = #agents
for _, tid in ipairs(tids) do
  if assigned >= max_n or free == 0 then break end
  local task = K.task .. tid
  local t = read(task, 'state', 'capabilities', 'attempt', 'timeoutMs',
    'payload', 'priority', 'lastAgent', 'progressTimeoutMs', 'maxCost', 'decisions', 'step')
  if t.state ~= 'queued' then
    redis.call('ZREM', queue, tid) -- cancelled or gone: a stale entry
  else
    local need = cjson.decode(t.capabilities or '[]')
    -- A retry goes to another agent than the last attempt's when one can
    -- take it; to the same one only when none can.
    local avoid, skipped = t.lastAgent, nil
    local function try(i, aid)
      local a = read(K.agent .. aid, 'status', 'inflight', 'capacity',
        'probation', 'quarantinedUntil', 'draining', 'priority', 'lastAssigned', 'load',
        'capabilities', 'tasksCompleted', 'tasksFailed', 'avgTaskTime')
      local inflight, capacity = tonumber(a.inflight or 0), tonumber(a.capacity or 1)
      if a.probation == '1' then capacity = 1 end
      local used = 0
      if strat == 'weighted_fair' then
        used = tonumber(redis.call('GET', K.quota .. aid) or 0)
      end
      if not (a.status == 'idle' or a.status == 'active') or inflight >= capacity
          or tonumber(a.quarantinedUntil or 0) > 0 or a.draining == '1' or (quota > 0 and used >= quota) then
        agents[i] = false
        free = free - 1
        if a.status then place(aid, pool, a) else
          redis.call('ZREM', K.available .. pool, aid) end
        return false
      end
      local among = free
      local attempt = tonumber(t.attempt) + 1
      local progress = tonumber(t.progressTimeoutMs or pool_progress)
      redis.call('ZREM', queue, tid)
      if t.step then redis.call('HDEL', task, 'step') end
      redis.call('ZADD', K.leases, now + ack, tid)
      redis.call('SADD', K.agent_tasks .. aid, tid)
      inflight = inflight + 1
      local status = 'active'
      if inflight >= capacity then
        status = 'busy'
        agents[i] = false
        free = free - 1
      end
      if strat == 'weighted_fair' then
        used = redis.call('INCR', K.quota .. aid)
        if used == 1 then redis.call('PEXPIRE', K.quota .. aid, health_policy().window) end
        if quota > 0 and used >= quota and status ~= 'busy' then
          agents[i] = false
          free = free - 1
        end
      end
      redis.call('HSET', K.agent .. aid, 'inflight', inflight, 'status', status,
        'lastActive', now, 'lastAssigned', now)
      move(counts, pool, a.status, status)
      a.status, a.inflight, a.lastAssigned = status, tostring(inflight), tostring(now)
      place(aid, pool, a)
      table.insert(out, K.agent_channel .. aid)
      table.insert(out, encode.task_assign(tid, attempt, pool, t.priority, t.timeoutMs, t.payload,
        progress, t.maxCost))
      redis.call('PUBLISH', A.allocation_channel,
        encode.task_assigned(tid, pool, aid, attempt, strat, now))
      local reason = 'best ' .. strat .. ' score among ' .. among ..
        ' available agents with capabilities ' .. (t.capabilities or '[]')
      if avoid and avoid ~= '' then
        if aid == avoid then
          reason = reason .. '; the previous attempt\'s agent again: no other could take it'
        else
          reason = reason .. '; a retry: not ' .. avoid .. ', the previous attempt\'s agent'
        end
      end
      local entry = encode.decision(tid, attempt, aid, pool, strat, scores[i], reason, now)
      redis.call('XADD', KEY.evidence, 'MAXLEN', '~', A.evidence_cap, '*', 'task', tid,
        'decision', entry)
      -- The task keeps its own decisions (GET /v1/tasks/{id}/evidence), in
      -- the write that assigns it.
      -- watchMs: the progress timeout this attempt was told (task_ack.lua
      -- arms it), so that a pool setting changed meanwhile cannot differ.
      redis.call('HSET', task, 'state', 'assigned', 'attempt', attempt, 'agent', aid,
        'updatedAt', now, 'assignedAt', now, 'decisions', history_with(t.decisions, entry),
        'watchMs', progress)
      assigned = assigned + 1
      -- Strategies that spread work send the agent to the back of the line.
      if agents[i] and rotate[strat] then
        table.remove(agents, i)
        table.insert(agents, aid)
        table.insert(scores, table.remove(scores, i))
      end
      return true
    end
    local done = false
    for i, aid in ipairs(agents) do
      if aid and fits(aid, need) then
        if aid == avoid and skipped == nil then
          skipped = i
        elseif try(i, aid) then
          done = true
          break
        end
      end
    end
    if not done and skipped and agents[skipped] == avoid then try(skipped, avoid) end
  end
end
local r = {assigned, redis.call('ZCARD', queue)}
for _, x in ipairs(out) do table.insert(r, x) end
return r
