-- Persist a new task and queue it. Idempotent by client id.
-- KEYS: epoch, task hash, client-id key ('' key name when none), queue zset
-- ARGV: epoch, id, client id ('' for none), pool, capabilities (JSON), priority,
--       payload (JSON), timeout ms, max retries, now, queue score, idempotency ttl ms
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
local task, client, queue = KEYS[2], KEYS[3], KEYS[4]
local id = ARGV[2]
if ARGV[3] ~= '' then
  local existing = redis.call('GET', client)
  if existing then return {'duplicate', existing} end
  redis.call('SET', client, id, 'PX', ARGV[12])
end
redis.call('HSET', task, 'id', id, 'clientId', ARGV[3], 'pool', ARGV[4],
  'capabilities', ARGV[5], 'priority', ARGV[6], 'payload', ARGV[7],
  'timeoutMs', ARGV[8], 'maxRetries', ARGV[9], 'state', 'queued', 'attempt', 0,
  'submittedAt', ARGV[10], 'updatedAt', ARGV[10], 'score', ARGV[11])
redis.call('ZADD', queue, ARGV[11], id)
return {'accepted', id}
