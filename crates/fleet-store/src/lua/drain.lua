-- Drains an agent: it gets no new tasks, finishes what it holds, then
-- deregisters. The agent is told on its channel.
-- KEYS: epoch
-- ARGV: epoch, agent id, now, agent channel prefix, reason, [6-17] key prefixes
-- Returns {'draining', pool, tasks in hand} or {'unknown'}.
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
prefixes(6)
local id, key = ARGV[2], K.agent .. ARGV[2]
local a = redis.call('HMGET', key, 'pool', 'inflight')
if not a[1] then return {'unknown'} end
redis.call('HSET', key, 'draining', 1, 'drainingSince', ARGV[3])
refresh_available(id, a[1])
redis.call('PUBLISH', ARGV[4] .. id, '{"v":1,"type":"drain","reason":' .. cjson.encode(ARGV[5]) .. '}')
return {'draining', a[1], tonumber(a[2] or 0)}
