-- Cancel a task that has not started: queued or waiting out a retry backoff.
-- KEYS: epoch, task hash, queue zset, delayed zset
-- ARGV: epoch, id, now, retention ms
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
local task = KEYS[2]
local state = redis.call('HGET', task, 'state')
if not state then return {'unknown'} end
if state ~= 'queued' and state ~= 'retrying' then return {'not_cancellable', state} end
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('HSET', task, 'state', 'cancelled', 'updatedAt', ARGV[3])
redis.call('PEXPIRE', task, ARGV[4])
return {'cancelled', state}
