--! keys: stream head
--! args: prev seq ts actor action target result hash sig
-- Appends one entry to the audit log if the log's head is still the entry
-- the caller chained it to (`prev`, `seq` - 1); otherwise changes nothing
-- and answers `moved` (another writer appended first: read the head again).
-- KEYS: stream, head
-- A: prev (hash of the entry before), seq, ts, actor, action, target,
--    result, hash (of this entry, chained to prev), sig (the commander's
--    signature of hash)
-- Returns outcome (appended, moved).
local h = read(KEY.head, 'seq', 'hash')
local seq, hash = h.seq or '0', h.hash or 'genesis'
if hash ~= A.prev or tonumber(seq) + 1 ~= tonumber(A.seq) then return reply('moved') end
redis.call('XADD', KEY.stream, '*', 'seq', A.seq, 'ts', A.ts, 'actor', A.actor,
  'action', A.action, 'target', A.target, 'result', A.result, 'prev', A.prev,
  'hash', A.hash, 'sig', A.sig)
redis.call('HSET', KEY.head, 'seq', A.seq, 'hash', A.hash)
return reply('appended')
