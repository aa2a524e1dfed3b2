--! keys: epoch lease
--! args: id lease_ms
-- Take the commander lease if it is free, or if it still names this
-- commander (a term it stepped down from: it need not wait out its own
-- lease). Taking it claims the next epoch in the same step, so the previous
-- term's next write is refused (fenced). The lease holds "<epoch> <id>"
-- and lapses lease_ms after its last renewal.
-- Returns outcome held (and holder, the lease's value) or acquired (and epoch).
local holder = redis.call('GET', KEY.lease)
if holder and string.sub(holder, -(#A.id + 1)) ~= ' ' .. A.id then
  return reply('held', {holder = holder})
end
local epoch = redis.call('INCR', KEY.epoch)
redis.call('SET', KEY.lease, epoch .. ' ' .. A.id, 'PX', A.lease_ms)
return reply('acquired', {epoch = epoch})
