--! keys: epoch +task
--! args: epoch id now reason +task
-- Drains an agent: it gets no new tasks, finishes what it holds, then
-- deregisters. The drain message is returned for the caller to sign and
-- publish on the agent's channel.
-- KEYS: epoch, and the task keys
-- A: epoch, id, now, reason
-- Returns outcome (draining, unknown) and, when draining: pool, inflight,
-- channel, message.
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
local id, key = A.id, K.agent .. A.id
local a = read(key, 'pool', 'inflight')
if not a.pool then return reply('unknown') end
redis.call('HSET', key, 'draining', 1, 'drainingSince', A.now)
refresh_available(id, a.pool)
return reply('draining', {pool = a.pool, inflight = tonumber(a.inflight or 0),
  channel = K.agent_channel .. id, message = encode.drain(A.reason)})
