//! `heartbeat`: the agent is alive; a failed one recovers.

use crate::context::{publish, Shared};
use crate::metrics as m;
use fleet_protocol::{now_ms, Event, Heartbeat, ToAgent, VERSION};
use fleet_store::connection::Conn;
use fleet_store::registry::HeartbeatOutcome;
use fleet_store::{Once, StoreError};
use std::time::Instant;
use tracing::info;

pub(super) async fn handle(
    shared: &Shared,
    conn: &mut Conn,
    hb: Heartbeat,
    once: Option<&Once>,
) -> Result<(), StoreError> {
    let keys = &shared.keys;
    let started = Instant::now();
    let outcome = shared.registry.heartbeat(conn, &hb, now_ms(), once).await?;
    metrics::counter!(m::HEARTBEATS).increment(1);
    let ts = now_ms();
    match outcome {
        HeartbeatOutcome::Ok => {}
        HeartbeatOutcome::Resumed(resume) => {
            metrics::counter!(m::AGENTS_RESUMED).increment(1);
            info!("budget window renewed: halted agent resumed");
            shared.tell(conn, resume.into_iter().collect()).await?;
        }
        HeartbeatOutcome::Unknown => {
            let reply = ToAgent::Reregister {
                v: VERSION,
                reason: "unknown_agent".into(),
            };
            shared
                .send(conn, keys.channels().agent(&hb.agent_id), &reply)
                .await?;
        }
        HeartbeatOutcome::Recovering(pool) => {
            info!(pool = %pool, "failed agent heard again: recovering");
            let ev = Event::AgentRecovering {
                v: VERSION,
                agent_id: hb.agent_id,
                pool,
                ts,
            };
            publish(conn, keys.channels().health(), &ev).await?;
        }
        HeartbeatOutcome::Recovered(pool) => {
            metrics::counter!(m::AGENTS_RECOVERED, "pool" => pool.as_str()).increment(1);
            info!(pool = %pool, "agent recovered");
            let ev = Event::AgentRecovered {
                v: VERSION,
                agent_id: hb.agent_id,
                pool,
                ts,
            };
            publish(conn, keys.channels().health(), &ev).await?;
        }
    }
    metrics::histogram!(m::HEARTBEAT_SECONDS).record(started.elapsed());
    Ok(())
}
