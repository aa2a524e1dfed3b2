--! keys: epoch proposal votes open
--! args: epoch agent_id vote hash message now
-- A validator's signed vote on an open proposal (the signature was checked
-- by the commander; `message` is the signed vote as it was published, kept
-- for the seal). The proposal is decided here, atomically with the vote,
-- when the weighted allow reaches the quorum (allowed) or when the weight
-- that has not refused can no longer reach it (denied, or quarantined when
-- more weight said quarantine than deny).
-- KEYS: epoch, proposal (its hash), votes (its votes' hash), open (open
--   proposals)
-- A: epoch, agent_id, vote (allow, quarantine, deny), hash (the proposal hash
--    the vote names), message, now
-- Returns outcome: unknown, late (decided already, or past its deadline),
-- not_validator, wrong_hash, duplicate, counted (still open), or decided
-- with the decision (allowed, denied, quarantined).
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
local p = read(KEY.proposal, 'state', 'deadline', 'hash', 'validators', 'quorum',
  'totalWeight')
if not p.state then return reply('unknown') end
if p.state ~= 'open' or tonumber(A.now) > tonumber(p.deadline) then return reply('late') end
local weights = cjson.decode(p.validators)
local weight = weights[A.agent_id]
if not weight then return reply('not_validator') end
if A.hash ~= p.hash then return reply('wrong_hash') end
if redis.call('HSETNX', KEY.votes, A.agent_id, A.message) == 0 then return reply('duplicate') end
local w = {}
for _, choice in ipairs({'allow', 'quarantine', 'deny'}) do w[choice] = 0 end
w[A.vote] = tonumber(redis.call('HINCRBY', KEY.proposal, 'w_' .. A.vote, weight))
for _, choice in ipairs({'allow', 'quarantine', 'deny'}) do
  if choice ~= A.vote then
    w[choice] = tonumber(redis.call('HGET', KEY.proposal, 'w_' .. choice) or 0)
  end
end
local quorum, total = tonumber(p.quorum), tonumber(p.totalWeight)
local decision
if w.allow >= quorum then
  decision = 'allowed'
elseif total - w.deny - w.quarantine < quorum then
  decision = 'denied'
  if w.quarantine > w.deny then decision = 'quarantined' end
end
if not decision then return reply('counted') end
redis.call('HSET', KEY.proposal, 'state', decision, 'decidedAt', A.now)
redis.call('ZREM', KEY.open, redis.call('HGET', KEY.proposal, 'id'))
return reply('decided', {decision = decision})
