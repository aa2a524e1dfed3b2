-- Shared prelude of every state-changing script: the top of the one
-- Redis Functions library (crates/fleet-store/src/script.rs, `library`),
-- defined once when the library loads.
--
-- The contract with Rust: each script declares its keys and arguments by
-- name in its first two lines (`--! keys:` and `--! args:`; `+task` is the
-- group every task-aware script takes). From them Rust generates the first
-- lines of the script's function, which set KEY.<name>, A.<name> and K
-- (every named key, and every argument prefix.<name> under <name>), and puts
-- each value it is given by name in its declared place. Scripts never read
-- KEYS[i] or ARGV[i].
-- Of the `+task` group a script is given only what it, or the definitions
-- below that it names (and what those name: script::prelude_for), name.
-- Every top-level line starts one definition (a `local function`, a
-- `function encode.<name>`, a `local` value), with the comment lines right
-- above it.

-- The nonce of the signed message this script acts on, recorded now; true if
-- it was recorded already (a replay: the script must change nothing). Only
-- scripts that declare the `once` key and `once_ttl` argument call it; a ttl
-- of 0 means the message was not signed (security open).
local function replayed()
  local ttl = tonumber(A.once_ttl)
  if ttl == 0 then return false end
  return not redis.call('SET', KEY.once, '1', 'NX', 'PX', ttl)
end

-- A write from a commander that is no longer the current one is refused
-- (fencing): KEY.epoch holds the current epoch, A.epoch is the caller's.
local function fenced()
  local current = redis.call('GET', KEY.epoch)
  if not current then
    -- Redis lost its data (a restart without persistence): the first writer
    -- re-establishes its epoch; a newer commander still takes over with INCR.
    redis.call('SET', KEY.epoch, A.epoch)
    return false
  end
  return current ~= A.epoch
end

-- A hash's fields by name: read(key, 'state', 'pool') is {state = ..., pool
-- = ...}, a missing field false (as HMGET gives it). Scripts read hashes
-- through this, never HMGET results by position; the names they read from a
-- task's or an agent's hash are checked against Rust's lists of those
-- hashes' fields (crates/fleet-store/src/fields.rs) by the lint test.
local function read(key, ...)
  local names = {...}
  local values = redis.call('HMGET', key, unpack(names))
  local r = {}
  for i, n in ipairs(names) do r[n] = values[i] end
  return r
end

-- A reply of named fields: {'outcome', outcome, name, value, ...}, from
-- one table of fields or more.
local function reply(outcome, fields, more)
  local out = {'outcome', outcome}
  for _, f in ipairs({fields or {}, more or {}}) do
    for n, v in pairs(f) do
      table.insert(out, n)
      table.insert(out, tostring(v))
    end
  end
  return out
end

-- Every message a script publishes is built here, and each is decoded as
-- its Rust type (fleet_protocol) by crates/fleet-store/tests/messages.rs.
-- Ids are validated by the commander ([A-Za-z0-9._:-]); free text goes
-- through cjson; a task's payload is stored as JSON and embedded as is.
local encode = {}
-- progress: the attempt's progress timeout in ms (0: not watched);
-- max_cost: the task's maxCost as stored, or nil.
function encode.task_assign(tid, attempt, pool, priority, timeout, payload, progress, max_cost)
  local cost = ''
  if max_cost then cost = ',"maxCost":' .. max_cost end
  return '{"v":1,"type":"task_assign","taskId":"' .. tid .. '","attempt":' .. attempt ..
    ',"pool":"' .. pool .. '","priority":' .. priority .. ',"timeoutMs":' .. timeout ..
    ',"progressTimeoutMs":' .. progress .. cost .. ',"payload":' .. payload .. '}'
end
function encode.task_cancel(tid, attempt)
  return '{"v":1,"type":"task_cancel","taskId":"' .. tid .. '","attempt":' .. attempt .. '}'
end
function encode.drain(reason)
  return '{"v":1,"type":"drain","reason":' .. cjson.encode(reason) .. '}'
end
function encode.task_event(kind, tid, pool, aid, attempt, now)
  return '{"v":1,"type":"' .. kind .. '","taskId":"' .. tid .. '","pool":"' .. (pool or '') ..
    '","agentId":"' .. (aid or '') .. '","attempt":' .. (attempt or 0) .. ',"ts":' .. now .. '}'
end
function encode.task_assigned(tid, pool, aid, attempt, strat, now)
  return '{"v":1,"type":"task_assigned","taskId":"' .. tid .. '","pool":"' .. pool ..
    '","agentId":"' .. aid .. '","attempt":' .. attempt .. ',"strategy":"' .. strat ..
    '","ts":' .. now .. '}'
end
function encode.agent_quarantined(aid, health, untl, now)
  return '{"v":1,"type":"agent_quarantined","agentId":"' .. aid .. '","health":' .. health ..
    ',"until":' .. untl .. ',"ts":' .. now .. '}'
end
function encode.agent_stuck(aid, tid, attempt, n, now)
  return '{"v":1,"type":"agent_stuck","agentId":"' .. aid .. '","taskId":"' .. tid ..
    '","attempt":' .. attempt .. ',"count":' .. n .. ',"ts":' .. now .. '}'
end
function encode.halt(balance, unit)
  return '{"v":1,"type":"halt","reason":"budget","balance":' .. balance .. ',"unit":' ..
    cjson.encode(unit) .. '}'
end
function encode.resume(balance)
  return '{"v":1,"type":"resume","balance":' .. balance .. '}'
end
function encode.budget_event(kind, aid, balance, now)
  return '{"v":1,"type":"' .. kind .. '","agentId":"' .. aid .. '","balance":' .. balance ..
    ',"ts":' .. now .. '}'
end
function encode.decision(tid, attempt, aid, pool, strat, score, reason, now)
  return '{"taskId":"' .. tid .. '","attempt":' .. attempt .. ',"agentId":"' .. aid ..
    '","pool":"' .. pool .. '","strategy":"' .. strat .. '","score":' .. score ..
    ',"reason":' .. cjson.encode(reason) .. ',"ts":' .. now .. '}'
end

-- Keeps the {pool}:{status} counters in step with a status change.
local function move(counts, pool, from, to)
  if from == to then return end
  if from then redis.call('HINCRBY', counts, pool .. ':' .. from, -1) end
  if to then redis.call('HINCRBY', counts, pool .. ':' .. to, 1) end
end

-- The pool's allocation strategy (from the config), 'priority' by default.
-- A pool's strategy, read once per script call.
local strategies = {}
local function strategy(pool)
  local s = strategies[pool]
  if not s then
    s = redis.call('HGET', K.settings, pool) or 'priority'
    strategies[pool] = s
  end
  return s
end

-- The health policy (from the config): up, down, below, clear, period, window.
local policy
local function health_policy()
  if not policy then
    local raw = redis.call('HGET', K.settings, 'health')
    policy = raw and cjson.decode(raw) or
      {up = 5, down = 20, below = 50, clear = 70, period = 30000, window = 60000, cap = 50,
       memory = 3600000}
  end
  return policy
end

-- Whether an agent can take a task now, and its place among the pool's
-- available agents, lower first, by the pool's strategy. A quarantined or
-- draining agent takes none; one on probation takes one at a time.
--   priority          higher agent priority, then fewer tasks in hand
--   round_robin       the agent given a task longest ago
--   least_loaded      the smallest share of its capacity in use, then reported load
--   capability_match  the most specialised agent (fewest capabilities), keeping generalists free
--   performance       the best success rate, then the fastest average task (new agents count as perfect)
--   weighted_fair     the fewest tasks given in the quota window per unit of weight
--                     (its priority); at the pool's quota, none until the window ends
-- `place` takes the agent's fields as a caller already holds them (read with
-- every field below, and updated with what it wrote): no second read.
local function place(id, pool, a)
  local status, inflight, capacity = a.status, tonumber(a.inflight or 0), tonumber(a.capacity or 1)
  if a.probation == '1' then capacity = 1 end
  local set = K.available .. pool
  if not (status and (status == 'idle' or status == 'active') and inflight < capacity)
      or tonumber(a.quarantinedUntil or 0) > 0 or a.draining == '1' then
    redis.call('ZREM', set, id)
    return
  end
  local s = strategy(pool)
  local priority = tonumber(a.priority or 5)
  local score
  if s == 'round_robin' then
    score = tonumber(a.lastAssigned or 0)
  elseif s == 'least_loaded' then
    score = (inflight / capacity) * 1000 + tonumber(a.load or 0)
  elseif s == 'capability_match' then
    local n = 0
    if a.capabilities then n = #cjson.decode(a.capabilities) end
    score = n * 1000 + inflight
  elseif s == 'performance' then
    local done, failed = tonumber(a.tasksCompleted or 0), tonumber(a.tasksFailed or 0)
    local rate = 1
    if done + failed > 0 then rate = done / (done + failed) end
    score = (1 - rate) * 1e9 + tonumber(a.avgTaskTime or 0)
  elseif s == 'weighted_fair' then
    local used = tonumber(redis.call('GET', K.quota .. id) or 0)
    local quota = tonumber(redis.call('HGET', K.settings, pool .. ':quota') or 0)
    if quota > 0 and used >= quota then
      redis.call('ZREM', set, id)
      return
    end
    score = used / priority * 1000 + inflight
  else
    score = (10 - priority) * 1000 + inflight
  end
  redis.call('ZADD', set, score, id)
end
local function refresh_available(id, pool)
  place(id, pool, read(K.agent .. id, 'status', 'inflight', 'capacity', 'priority',
    'lastAssigned', 'load', 'capabilities', 'tasksCompleted', 'tasksFailed', 'avgTaskTime',
    'quarantinedUntil', 'probation', 'draining'))
end

-- Counts an agent taken down by a task (its casualty); true when the task
-- has now taken down `poisonAfter` agents (the setting; 0: never).
local function casualty(task)
  local n = redis.call('HINCRBY', task, 'casualties', 1)
  local k = tonumber(redis.call('HGET', K.settings, 'poisonAfter') or 0)
  return k > 0 and n >= k
end

-- Holds a task in the poison set until an operator requeues it.
local function poison(tid, now, reason)
  redis.call('HSET', K.task .. tid, 'state', 'poison', 'updatedAt', now, 'error', reason)
  redis.call('ZADD', K.poison, now, tid)
end

-- ---- a task's attempts ----
-- Appends an ended attempt to the task's history: the hash field `history`,
-- a JSON list of {attempt, agentId, startedAt, endedAt, outcome, error},
-- kept as long as the task (appended as text, never decoded here; at most
-- HISTORY_MAX bytes, past which later attempts are not added); and the
-- agent as `lastAgent`, whom a retry avoids when another agent can take it.
-- outcome: completed, failed (reported by the agent), over_budget,
-- timed_out (its lease ran out), stuck, agent_lost (died or restarted),
-- agent_left, cancelled.
local HISTORY_MAX = 16384
-- One attempt's entry (JSON text).
local function attempt_entry(aid, attempt, started, now, outcome, err)
  local entry = '{"attempt":' .. (tonumber(attempt) or 0) .. ',"agentId":' .. cjson.encode(aid) ..
    ',"startedAt":' .. (tonumber(started) or 0) .. ',"endedAt":' .. now ..
    ',"outcome":"' .. outcome .. '"'
  if err then entry = entry .. ',"error":' .. cjson.encode(err) end
  return entry .. '}'
end
-- The history `raw` (or nil: none yet) with `entry` appended.
local function history_with(raw, entry)
  if not raw then return '[' .. entry .. ']' end
  if #raw + #entry >= HISTORY_MAX then return raw end
  return string.sub(raw, 1, -2) .. ',' .. entry .. ']'
end
local function attempt_ended(tid, aid, attempt, started, now, outcome, err)
  if not aid or aid == '' then return end
  local task = K.task .. tid
  local raw = redis.call('HGET', task, 'history')
  redis.call('HSET', task, 'history',
    history_with(raw, attempt_entry(aid, attempt, started, now, outcome, err)), 'lastAgent', aid)
end

local function requeue(tid, now, reason, took_down, hold, outcome)
  local task = K.task .. tid
  local t = read(task, 'pool', 'score', 'attempt', 'maxRetries', 'retryBase',
    'agent', 'assignedAt')
  if not t.pool then return 'gone' end
  attempt_ended(tid, t.agent, t.attempt, t.assignedAt, now, outcome or reason, reason)
  redis.call('ZREM', K.leases, tid)
  redis.call('ZREM', K.stalls, tid)
  if took_down and casualty(task) then
    poison(tid, now, reason)
    return 'poison', t.pool, tonumber(t.attempt)
  end
  if tonumber(t.attempt) - tonumber(t.retryBase or 0) > tonumber(t.maxRetries) then
    redis.call('HSET', task, 'state', 'dead', 'updatedAt', now, 'error', reason)
    redis.call('ZADD', K.dead, now, tid)
    return 'dead', t.pool, tonumber(t.attempt)
  end
  if hold then
    redis.call('HSET', task, 'state', 'retrying', 'agent', '', 'updatedAt', now)
    redis.call('ZADD', K.delayed, now + hold, tid)
  else
    redis.call('HSET', task, 'state', 'queued', 'agent', '', 'updatedAt', now)
    redis.call('ZADD', K.queue .. t.pool, t.score, tid)
  end
  return 'queued', t.pool, tonumber(t.attempt)
end

-- Keeps an agent's health and quarantine for the policy's `memory` after it
-- leaves (deregistration, removal), so that registering again is no way out
-- of quarantine; register.lua restores them.
-- It is also listed as departed (why: left, expired, max_failures; when),
-- with its pool and what it had done, for operators (GET /v1/agents/departed).
local DEPARTED_MAX = 1000
local function remember(aid, why, now)
  local h = read(K.agent .. aid, 'health', 'quarantinedUntil', 'probation',
    'quarantines', 'pool', 'tasksCompleted', 'tasksFailed', 'registeredAt')
  local key = K.history .. aid
  redis.call('HSET', key, 'health', h.health or '100', 'quarantinedUntil', h.quarantinedUntil or '0',
    'probation', h.probation or '0', 'quarantines', h.quarantines or '0', 'pool', h.pool or '',
    'tasksCompleted', h.tasksCompleted or '0', 'tasksFailed', h.tasksFailed or '0', 'registeredAt', h.registeredAt or '0',
    'leftAt', now, 'leftBecause', why)
  redis.call('PEXPIRE', key, health_policy().memory or 3600000)
  redis.call('ZADD', K.departed, now, aid)
  redis.call('ZREMRANGEBYRANK', K.departed, 0, -(DEPARTED_MAX + 1))
end

-- The event of a task taken back from its agent, by where it went.
local requeued_event = {queued = 'task_requeued', dead = 'task_dead', poison = 'task_poisoned'}

-- Gives back every task an agent holds (it failed, left or restarted; a
-- casualty unless it left on purpose). Returns how many went back to a
-- queue, how many died and how many were set aside as poison.
local function orphan_all(agent_id, now, casualty)
  local set = K.agent_tasks .. agent_id
  local tids = redis.call('SMEMBERS', set)
  local queued, dead, poisoned = 0, 0, 0
  for _, tid in ipairs(tids) do
    local state = redis.call('HGET', K.task .. tid, 'state')
    if state == 'assigned' or state == 'running' then
      local why = 'agent_left'
      if casualty then why = 'agent_lost' end
      local r, pool, attempt = requeue(tid, now, 'orphaned', casualty, nil, why)
      if r == 'dead' then dead = dead + 1
      elseif r == 'poison' then poisoned = poisoned + 1
      else queued = queued + 1 end
      if requeued_event[r] then
        redis.call('PUBLISH', A.allocation_channel,
          encode.task_event(requeued_event[r], tid, pool, agent_id, attempt, now))
      end
    end
  end
  redis.call('DEL', set)
  redis.call('HSET', K.agent .. agent_id, 'inflight', 0)
  return queued, dead, poisoned
end

-- An agent found dead (or restarted): the tasks whose lease ran out in its
-- hands lately (expire.lua) count it as their casualty too. One that waits
-- in its queue and reaches `poisonAfter` goes to the poison set now, before
-- it reaches another agent. Returns how many did.
local function lapsed_casualties(agent_id, now)
  local set = K.lapsed .. agent_id
  local poisoned = 0
  for _, tid in ipairs(redis.call('SMEMBERS', set)) do
    local task = K.task .. tid
    local t = read(task, 'state', 'pool', 'attempt')
    if t.state and casualty(task) and (t.state == 'queued' or t.state == 'retrying') then
      redis.call('ZREM', K.queue .. t.pool, tid)
      redis.call('ZREM', K.delayed, tid)
      poison(tid, now, 'its agent died')
      poisoned = poisoned + 1
      redis.call('PUBLISH', A.allocation_channel,
        encode.task_event('task_poisoned', tid, t.pool, agent_id, t.attempt, now))
    end
  end
  redis.call('DEL', set)
  return poisoned
end

-- Whether one more of the pool's agents may go into quarantine: at most
-- `cap` % of its live agents are there at once, and at least one may be.
local function may_quarantine(aid, pool, counts, now, hp)
  local cap = tonumber(hp.cap or 100)
  if cap >= 100 then return true end
  local c = read(counts, pool .. ':idle', pool .. ':active', pool .. ':busy')
  local live = 0
  for _, n in pairs(c) do live = live + tonumber(n or 0) end
  local allowed = math.max(1, math.floor(live * cap / 100))
  local held = 0
  for _, q in ipairs(redis.call('ZRANGE', K.quarantine, '(' .. now, '+inf', 'BYSCORE')) do
    if q ~= aid and redis.call('HGET', K.agent .. q, 'pool') == pool then held = held + 1 end
  end
  return held < allowed
end

-- Updates an agent's health after an outcome: failures take more than
-- successes give. Below the threshold the agent is quarantined (no new work
-- until its period is over, then probation) unless the pool's quarantine cap
-- is reached; on probation, a failure sends it back and reaching `clear`
-- frees it. Returns the fields to set.
local function judge(aid, pool, counts, a_health, a_probation, outcome, now, out)
  local hp = health_policy()
  local health = tonumber(a_health or 100)
  if outcome == 'completed' then
    health = math.min(100, health + hp.up)
    if a_probation == '1' and health >= hp.clear then
      table.insert(out, 'probation')
      table.insert(out, '0')
    end
  elseif outcome == 'failed' or outcome == 'stuck' then
    -- A stuck agent (heartbeating, no progress) goes to quarantine whatever
    -- its health: its next task would most likely go the same way.
    health = math.max(0, health - hp.down)
    if (health < hp.below or a_probation == '1' or outcome == 'stuck')
        and may_quarantine(aid, pool, counts, now, hp) then
      local n = redis.call('HINCRBY', K.agent .. aid, 'quarantines', 1)
      local untl = now + hp.period * 2 ^ math.min(n - 1, 3)
      redis.call('ZADD', K.quarantine, untl, aid)
      local channel = redis.call('HGET', K.settings, 'healthChannel')
      if channel then
        redis.call('PUBLISH', channel, encode.agent_quarantined(aid, health, untl, now))
      end
      for _, x in ipairs({'quarantinedUntil', untl, 'probation', '0'}) do
        table.insert(out, x)
      end
    end
  end
  table.insert(out, 'health')
  table.insert(out, health)
end

-- Frees an agent's slot after a task left it, and updates its performance
-- record and health. outcome: 'completed'; 'task_failed' (the agent reported
-- the failure: the task's, which costs the agent no health); 'failed' (its
-- lease ran out: no ack or no result in time) and 'stuck', which are the
-- agent's and cost health; or 'gone'.
local function release_agent(aid, tid, now, outcome, duration, counts)
  redis.call('SREM', K.agent_tasks .. aid, tid)
  local key = K.agent .. aid
  local a = read(key, 'status', 'inflight', 'tasksCompleted', 'tasksFailed',
    'avgTaskTime', 'pool', 'health', 'probation', 'capacity', 'priority', 'lastAssigned', 'load',
    'capabilities', 'quarantinedUntil', 'draining')
  if not a.status then return end
  local inflight = math.max(0, tonumber(a.inflight or 0) - 1)
  local done, failed, avg = tonumber(a.tasksCompleted or 0), tonumber(a.tasksFailed or 0), tonumber(a.avgTaskTime or 0)
  if outcome == 'completed' then
    done = done + 1
    avg = avg + (duration - avg) / done
    redis.call('ZADD', K.pool_done .. a.pool, done, aid)
    redis.call('HINCRBY', counts, a.pool .. ':done', 1)
  elseif outcome == 'failed' or outcome == 'stuck' or outcome == 'task_failed' then
    failed = failed + 1
  end
  local rate = 0
  if done + failed > 0 then rate = done / (done + failed) end
  local status = a.status
  if status == 'busy' or status == 'active' then
    if inflight == 0 then status = 'idle' else status = 'active' end
  end
  local fields = {'inflight', inflight, 'tasksCompleted', done, 'tasksFailed', failed,
    'avgTaskTime', avg, 'successRate', rate, 'status', status, 'lastActive', now}
  judge(aid, a.pool, counts, a.health, a.probation, outcome, now, fields)
  redis.call('HSET', key, unpack(fields))
  move(counts, a.pool, a.status, status)
  -- What was just written (judge may have added health and quarantine).
  for i = 1, #fields, 2 do a[fields[i]] = tostring(fields[i + 1]) end
  place(aid, a.pool, a)
end

-- The task event every outcome publishes on the allocation channel.
local function task_event(channel, kind, tid, pool, aid, attempt, now)
  redis.call('PUBLISH', channel, encode.task_event(kind, tid, pool, aid, attempt, now))
end

-- ---- budgets ----
-- The budget settings (`budgetMin`, `budgetWindow`, `budgetUnit`) and, when
-- asked with a pool, its allowance per window (`<pool>:allowance`, 0: none),
-- read in one call and kept for the rest of the script.
local budget_policy
local function budgets(pool)
  if budget_policy == nil or (pool and budget_policy.pool ~= pool) then
    local allowance = (pool or '-') .. ':allowance'
    local s = read(K.settings, 'budgetMin', 'budgetWindow', 'budgetUnit', allowance)
    budget_policy = {min = tonumber(s.budgetMin or 0), window = tonumber(s.budgetWindow or 0),
      unit = s.budgetUnit or '', pool = pool, allowance = tonumber(s[allowance] or 0)}
  end
  return budget_policy
end

-- An agent's budget now, its window renewed if it ended: balance, allowance
-- and spent, or nil when the agent has none. A window ends at a multiple of
-- its length since the epoch (a day: midnight UTC).
local function budget(aid, pool, now)
  local bp = budgets(pool)
  local key = K.budget .. aid
  local b = read(key, 'balance', 'windowEnds', 'allowance', 'spent')
  local allowance = tonumber(b.allowance or bp.allowance)
  if allowance <= 0 then return nil end
  now = tonumber(now)
  local window = bp.window
  if b.balance and (window == 0 or now < tonumber(b.windowEnds)) then
    return tonumber(b.balance), allowance, tonumber(b.spent or 0)
  end
  local ends = 0
  if window > 0 then ends = (math.floor(now / window) + 1) * window end
  redis.call('HSET', key, 'balance', allowance, 'windowEnds', ends, 'spent', 0)
  if window > 0 then redis.call('PEXPIRE', key, 2 * window) end
  return allowance, allowance, 0
end

-- An agent's balance as stored, if its budget exists and its window has
-- not ended (nil otherwise: a fresh or renewed budget starts at the
-- allowance). Reads only: for registration, which must not create a budget
-- for every agent that joins.
local function stored_balance(aid, now)
  local b = read(K.budget .. aid, 'balance', 'windowEnds')
  if not b.balance then return nil end
  local ends = tonumber(b.windowEnds or 0)
  if ends > 0 and tonumber(now) >= ends then return nil end
  return tonumber(b.balance)
end

-- Marks an agent halted (its budget fell below the minimum): no new work.
-- Returns the halt message for the caller to sign and send.
local function halt(aid, pool, balance, counts, now)
  local key = K.agent .. aid
  local old = redis.call('HGET', key, 'status')
  redis.call('HSET', key, 'halted', '1')
  if old == 'idle' or old == 'active' or old == 'busy' then
    redis.call('HSET', key, 'status', 'halted')
    move(counts, pool, old, 'halted')
  end
  redis.call('ZREM', K.available .. pool, aid)
  local channel = redis.call('HGET', K.settings, 'healthChannel')
  if channel then
    redis.call('PUBLISH', channel, encode.budget_event('agent_halted', aid, balance, now))
  end
  return encode.halt(balance, budgets().unit)
end

-- Lifts an agent's halt (its budget is back above the minimum). Returns the
-- resume message for the caller to sign and send, or nil if it was not halted.
local function resume(aid, pool, balance, counts, now)
  local key = K.agent .. aid
  local a = read(key, 'status', 'halted', 'inflight', 'capacity')
  if a.halted ~= '1' then return nil end
  redis.call('HDEL', key, 'halted')
  if a.status == 'halted' then
    local inflight, capacity = tonumber(a.inflight or 0), tonumber(a.capacity or 1)
    local status = 'idle'
    if inflight >= capacity then status = 'busy' elseif inflight > 0 then status = 'active' end
    redis.call('HSET', key, 'status', status)
    move(counts, pool, 'halted', status)
  end
  refresh_available(aid, pool)
  local channel = redis.call('HGET', K.settings, 'healthChannel')
  if channel then
    redis.call('PUBLISH', channel, encode.budget_event('agent_resumed', aid, balance, now))
  end
  return encode.resume(balance)
end

-- The caches above (a pool's strategy, the health policy, the budget
-- settings) hold for one call: every function of the library starts with
-- them empty (the prelude is defined once, when the library loads).
local function reset_caches()
  strategies = {}
  policy = nil
  budget_policy = nil
end
