--! keys: epoch lease
--! args: epoch id lease_ms
-- Extend the lease of the leader that holds it with this epoch. Refused
-- (outcome lost, and holder: the lease's value or '') when the lease lapsed,
-- was taken, or a newer epoch was claimed: the caller has stopped leading.
local mine = A.epoch .. ' ' .. A.id
local holder = redis.call('GET', KEY.lease)
if holder ~= mine or redis.call('GET', KEY.epoch) ~= A.epoch then
  return reply('lost', {holder = holder or ''})
end
redis.call('PEXPIRE', KEY.lease, A.lease_ms)
return reply('renewed')
