--! keys: epoch lease
--! args: id lease_ms renew_ms
-- Take the commander lease if it is free, or if it still names this
-- commander (a term it stepped down from: it need not wait out its own
-- lease). Taking it claims the next epoch in the same step, so the previous
-- term's next write is refused (fenced). The lease holds "<epoch> <id>"
-- and lapses lease_ms after its last renewal.
-- A try by the holder within renew_ms of the lease being taken or renewed
-- claims no new epoch: it is a try sent again (tries that timed out while
-- Redis was frozen wait in it and run one after another when it wakes;
-- each claiming an epoch left the commander with a stale one, and it
-- stepped down again at once). It gets the holder's epoch as it is.
-- Returns outcome held (and holder, the lease's value) or acquired (and epoch).
local holder = redis.call('GET', KEY.lease)
if holder and string.sub(holder, -(#A.id + 1)) ~= ' ' .. A.id then
  return reply('held', {holder = holder})
end
if holder then
  local held = string.match(holder, '^(%d+) ')
  if held == redis.call('GET', KEY.epoch)
      and redis.call('PTTL', KEY.lease) > tonumber(A.lease_ms) - tonumber(A.renew_ms) then
    return reply('acquired', {epoch = held})
  end
end
local epoch = redis.call('INCR', KEY.epoch)
redis.call('SET', KEY.lease, epoch .. ' ' .. A.id, 'PX', A.lease_ms)
return reply('acquired', {epoch = epoch})
