//! `deregister`: the agent leaves; what it held goes back to the queues.

use crate::context::{json, Shared};
use crate::metrics as m;
use fleet_protocol::{now_ms, Deregister, Event, ToAgent, VERSION};
use fleet_store::connection::Conn;
use fleet_store::{Once, StoreError};
use tracing::debug;

pub(super) async fn handle(
    shared: &Shared,
    conn: &mut Conn,
    d: Deregister,
    once: Option<&Once>,
) -> Result<(), StoreError> {
    let keys = &shared.keys;
    let removed = shared
        .registry
        .remove(conn, &d.agent_id, None, now_ms(), once)
        .await?;
    if let Some((_, orphans)) = removed {
        shared.on_orphans(orphans, "agent_left");
    }
    let removed = removed.map(|(pool, _)| pool);
    let reply = ToAgent::DeregisterReply {
        v: VERSION,
        reply_to: d.id,
        removed: removed.is_some(),
    };
    let mut p = redis::pipe();
    let ch = keys.channels().agent(&d.agent_id);
    p.publish(&ch, shared.seal(&ch, json(&reply))).ignore();
    if let Some(pool) = removed {
        metrics::counter!(m::DEREGISTRATIONS).increment(1);
        let ev = Event::AgentDeregistered {
            v: VERSION,
            agent_id: d.agent_id.clone(),
            pool,
            ts: now_ms(),
        };
        p.publish(keys.channels().registry(), json(&ev)).ignore();
        debug!(pool = %pool, "deregistered");
    }
    p.query_async::<()>(conn).await?;
    // Its session ended with its record (the reply above was sealed first).
    shared.sessions.forget(&d.agent_id);
    Ok(())
}
