--! keys: epoch task dead evidence recent
--! args: epoch id prefix.task_client
-- An operator deletes a dead letter for good: it leaves the dead set and
-- the recent-tasks index, and its record, its evidence and its client id
-- go. Only a task in the dead set is touched.
-- KEYS: epoch, task (its hash), dead (the set), evidence (its list),
--   recent (the recent-tasks index)
-- A: epoch, id, prefix.task_client
-- Returns outcome: deleted, or not_dead.
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
if redis.call('ZREM', KEY.dead, A.id) == 0 then return reply('not_dead') end
local client = redis.call('HGET', KEY.task, 'clientId')
if client and client ~= '' then
  -- The client id named this task: a new submission with it is a new task.
  if redis.call('GET', K.task_client .. client) == A.id then
    redis.call('DEL', K.task_client .. client)
  end
end
redis.call('DEL', KEY.task, KEY.evidence)
redis.call('ZREM', KEY.recent, A.id)
return reply('deleted')
