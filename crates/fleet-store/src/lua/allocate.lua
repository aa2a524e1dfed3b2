--! keys: epoch queue evidence paused +task
--! args: epoch pool max now ack_ms evidence_cap retention_ms prefix.task_evidence +task
-- Hands a pool's waiting tasks to its available agents, best task first,
-- each to the best agent whose capabilities cover the task's. The claim is
-- atomic: a task leaves the queue exactly once, here, and its assignment is
-- leased (ack timeout); the task_assign messages are returned for the
-- caller to sign and publish.
-- Every decision is recorded, with the strategy and the chosen agent's score,
-- in the capped evidence stream and in the task's own evidence list.
-- KEYS: epoch, queue (the pool's), evidence (the stream), paused (the
-- paused pools), and the task keys
-- A: epoch, pool, max (tasks at most: the batch, fleet_store::tasks::ALLOCATE_BATCH),
--    now, ack_ms, allocation_channel, evidence_cap, retention_ms,
--    prefix.task_evidence
-- Returns {tasks assigned, tasks still queued, then (agent channel,
-- task_assign) pairs}.
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
local assigned, queued, out = allocate_pool(A.pool, tonumber(A.max), tonumber(A.now))
local r = {assigned, queued}
for _, x in ipairs(out) do table.insert(r, x) end
return r
