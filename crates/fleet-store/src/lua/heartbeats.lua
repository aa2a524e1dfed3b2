--! keys: epoch heartbeats failed +task
--! args: epoch now batch once_ttl +task
-- Several heartbeats in one call, in order, each recorded exactly as
-- heartbeat.lua records one (beat() in the prelude). A handler sends the
-- heartbeats queued behind the one it took, so a busy commander pays one
-- script call, not one per heartbeat.
-- KEYS: epoch, heartbeats, failed, and the task keys
-- A: epoch, now, batch (JSON: a list of {id, key (the agent's hash), once
--    (the nonce key, '' for none), status, load, memory, cpu, network}, the
--    values as heartbeat.lua takes them), once_ttl (0: messages unsigned)
-- Returns one reply per heartbeat, in order: heartbeat.lua's, or replay
-- (its nonce was recorded already: that one changed nothing).
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
local ttl, now = tonumber(A.once_ttl), A.now
local out = {}
for i, h in ipairs(cjson.decode(A.batch)) do
  if ttl > 0 and h.once ~= '' and not redis.call('SET', h.once, '1', 'NX', 'PX', ttl) then
    out[i] = reply('replay')
  else
    out[i] = beat(h.key, h.id, now, h)
  end
end
return out
