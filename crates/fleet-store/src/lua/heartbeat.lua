--! keys: epoch agent heartbeats failed +task once
--! args: epoch id now status load memory cpu network +task once_ttl
-- Record a heartbeat. A failed agent that is heard again goes to recovering;
-- a recovering one goes back to idle on its next heartbeat. An agent holding
-- tasks is at least active, and busy at its capacity, whatever it reports.
-- KEYS: epoch, agent, heartbeats, failed, and the task keys
-- A: epoch, id, now, status (reported), load, memory, cpu, network (the
--    three empty when the heartbeat carried no resources: the declared
--    ones stay)
-- A halted agent (its budget below the minimum) stays halted whatever it
-- reports, until its budget window renews: then it resumes here.
-- A heartbeat that changes neither status nor load does not re-rank the
-- agent among the pool's available ones (it costs three commands less).
-- Returns outcome (unknown, ok, recovering, recovered, resumed) and pool;
-- resumed: the resume (channel, message) for the caller to sign and send.
if fenced() then return redis.error_reply('FENCED commander epoch is stale') end
if replayed() then return reply('replay') end
return beat(KEY.agent, A.id, A.now, A)
