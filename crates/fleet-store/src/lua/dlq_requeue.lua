-- An operator sends a dead-lettered task back to its queue with fresh retries.
-- KEYS: epoch, task hash
-- ARGV: epoch, task id, now, [4-15] key prefixes
-- Returns {'queued', pool} or {'not_dead', state}.
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
prefixes(4)
local t = redis.call('HMGET', KEYS[2], 'state', 'pool', 'score')
if t[1] ~= 'dead' then return {'not_dead', t[1] or 'unknown'} end
redis.call('ZREM', K.dead, ARGV[2])
redis.call('HSET', KEYS[2], 'state', 'queued', 'attempt', 0, 'error', '', 'updatedAt', ARGV[3])
redis.call('PERSIST', KEYS[2])
redis.call('ZADD', K.queue .. t[2], t[3], ARGV[2])
return {'queued', t[2]}
