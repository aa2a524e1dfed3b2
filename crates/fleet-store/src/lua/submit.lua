--! keys: epoch task client queue recent
--! args: epoch id client_id pool capabilities priority payload timeout_ms max_retries progress_timeout_ms max_cost now score idempotency_ttl_ms recent_max
-- Persist a new task and queue it. Idempotent by client id.
-- KEYS: epoch, task (its hash), client (the client-id key; a placeholder
--       when none), queue (the pool's), recent (the index of recent tasks,
--       kept to about its recent_max newest)
-- A: epoch, id, client_id ('' for none), pool, capabilities (JSON),
--    priority, payload (JSON), timeout_ms, max_retries, progress_timeout_ms
--    and max_cost ('' for the pool's / none), now, score (queue
--    score), idempotency_ttl_ms
-- Returns outcome (accepted, duplicate) and id (the new task's, or the one
-- the client id already names; its remembering is renewed).
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
local task, client, queue = KEY.task, KEY.client, KEY.queue
local id = A.id
if A.client_id ~= '' then
  local existing = redis.call('GET', client)
  if existing then
    -- A write, so that a caller waiting for replicas (WAIT) waits for one
    -- that comes after the task itself: a retry of a submission that was
    -- refused as not yet replicated must not be acknowledged unreplicated.
    redis.call('PEXPIRE', client, A.idempotency_ttl_ms)
    return reply('duplicate', {id = existing})
  end
  redis.call('SET', client, id, 'PX', A.idempotency_ttl_ms)
end
redis.call('HSET', task, 'id', id, 'clientId', A.client_id, 'pool', A.pool,
  'capabilities', A.capabilities, 'priority', A.priority, 'payload', A.payload,
  'timeoutMs', A.timeout_ms, 'maxRetries', A.max_retries, 'state', 'queued', 'attempt', 0,
  'submittedAt', A.now, 'updatedAt', A.now, 'score', A.score)
if A.progress_timeout_ms ~= '' then
  redis.call('HSET', task, 'progressTimeoutMs', A.progress_timeout_ms)
end
if A.max_cost ~= '' then redis.call('HSET', task, 'maxCost', A.max_cost) end
redis.call('ZADD', queue, A.score, id)
redis.call('ZADD', KEY.recent, A.now, id)
-- Trimmed by one submission in 16 (a new id's last hex digit is 0), not by
-- each: the index holds a few more than recent_max, which readers cut.
if string.sub(id, -1) == '0' then
  redis.call('ZREMRANGEBYRANK', KEY.recent, 0, -(tonumber(A.recent_max) + 1))
end
return reply('accepted', {id = id})
