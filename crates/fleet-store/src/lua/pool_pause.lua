--! keys: epoch paused
--! args: epoch pool paused now
-- An operator pauses a pool's queue (paused = '1': its tasks are accepted
-- and wait; allocate.lua hands none out) or resumes it (paused = '0').
-- KEYS: epoch, paused (the hash pool -> since when)
-- A: epoch, pool, paused ('1' or '0'), now
-- Returns outcome: paused, resumed, or unchanged.
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
if A.paused == '1' then
  if redis.call('HSETNX', KEY.paused, A.pool, A.now) == 1 then return reply('paused') end
elseif redis.call('HDEL', KEY.paused, A.pool) == 1 then
  return reply('resumed')
end
return reply('unchanged')
