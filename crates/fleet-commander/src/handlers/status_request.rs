//! `status_request`: the fleet's status, answered on the fleet channel.

use crate::context::{publish, Shared};
use fleet_protocol::{FleetStatusMessage, StatusRequest, VERSION};
use fleet_store::StoreError;
use redis::aio::ConnectionManager;

pub(super) async fn handle(
    shared: &Shared,
    conn: &mut ConnectionManager,
    req: StatusRequest,
) -> Result<(), StoreError> {
    let status = shared.fleet_status(conn).await?;
    let msg = FleetStatusMessage {
        v: VERSION,
        reply_to: Some(&req.id),
        status: &status,
    };
    publish(conn, shared.keys.channels().fleet(), &msg).await
}
