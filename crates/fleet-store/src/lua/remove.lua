--! keys: epoch agent heartbeats failed +task once
--! args: epoch id failed_before now +task once_ttl
-- Remove an agent from the registry (deregistration, or expiry of a failed
-- agent); its tasks go back to their queues. With a cutoff, only a failed
-- agent failed at or before it is removed.
-- KEYS: epoch, agent, heartbeats, failed, and the task keys
-- A: epoch, id, failed_before ('' for none), now
-- Returns outcome (kept, unknown, removed) and, when removed: pool,
-- requeued, dead (the tasks it held).
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
if replayed() then return reply('replay') end
local agent, hb, failed, counts = KEY.agent, KEY.heartbeats, KEY.failed, KEY.counts
local id = A.id

if A.failed_before ~= '' then
  local score = redis.call('ZSCORE', failed, id)
  if not score or tonumber(score) > tonumber(A.failed_before) then return reply('kept') end
end
local cur = read(agent, 'status', 'pool')
local old, pool = cur.status, cur.pool
redis.call('ZREM', hb, id)
redis.call('ZREM', failed, id)
if not old then return reply('unknown') end
-- Leaving on purpose is no casualty of its tasks.
local queued, dead = orphan_all(id, A.now, false)
redis.call('ZREM', K.available .. pool, id)
local why = 'left'
if A.failed_before ~= '' then why = 'expired' end
remember(id, why, A.now)
redis.call('DEL', agent)
redis.call('SREM', K.pool_agents .. pool, id)
redis.call('ZREM', K.pool_done .. pool, id)
redis.call('ZREM', K.quarantine, id)
redis.call('SREM', K.validators, id)
redis.call('DEL', K.quota .. id)
move(counts, pool, old, nil)
return reply('removed', {pool = pool, requeued = queued, dead = dead})
