--! keys: epoch lease
--! args: epoch id
-- Give the lease up (a clean stop, or a term that ended), so that a standby
-- takes over at its next try instead of waiting for the lease to lapse.
-- Only the holder's own lease is deleted. Returns outcome released or not_held.
if redis.call('GET', KEY.lease) ~= A.epoch .. ' ' .. A.id then return reply('not_held') end
redis.call('DEL', KEY.lease)
return reply('released')
