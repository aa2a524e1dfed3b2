--! keys: epoch agent heartbeats failed +task
--! args: epoch id now action amount +task
-- An operator adjusts an agent's budget (action):
--   topup      adds amount to its balance;
--   reset      its balance back to its allowance, a new window from now;
--   allowance  gives it an allowance of its own (amount; its pool's no
--              longer applies) and resets its balance to it.
-- A halted agent whose balance is back at or above the minimum resumes.
-- KEYS: epoch, agent (its hash), heartbeats, failed (unused), and the task keys
-- A: epoch, id, now, action, amount
-- Returns outcome (ok, unknown, no_budget) and balance, allowance, spent,
-- windowEnds; when the agent resumed, the resume (channel, message).
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
local id, now = A.id, tonumber(A.now)
local pool = redis.call('HGET', KEY.agent, 'pool')
if not pool then return reply('unknown') end
local key = K.budget .. id
if A.action == 'allowance' then
  redis.call('HSET', key, 'allowance', A.amount)
  redis.call('HDEL', key, 'balance')
elseif A.action == 'reset' then
  redis.call('HDEL', key, 'balance')
end
local balance, allowance = budget(id, pool, now)
if not balance then return reply('no_budget') end
if A.action == 'topup' then
  balance = tonumber(redis.call('HINCRBYFLOAT', key, 'balance', A.amount))
end
local out = {balance = balance, allowance = allowance,
  spent = redis.call('HGET', key, 'spent') or 0,
  windowEnds = redis.call('HGET', key, 'windowEnds') or 0}
if balance >= budgets().min then
  local msg = resume(id, pool, balance, KEY.counts, now)
  if msg then
    out.channel = K.agent_channel .. id
    out.message = msg
  end
end
return reply('ok', out)
