//! `status_request`: the fleet's status, answered on the fleet channel.

use crate::context::{publish, Shared};
use fleet_protocol::{FleetStatusMessage, StatusRequest, VERSION};
use fleet_store::connection::Conn;
use fleet_store::StoreError;

pub(super) async fn handle(
    shared: &Shared,
    conn: &mut Conn,
    req: StatusRequest,
) -> Result<(), StoreError> {
    let status = crate::status::current(shared, conn).await?;
    let msg = FleetStatusMessage {
        v: VERSION,
        reply_to: Some(&req.id),
        status: &status,
    };
    publish(conn, shared.keys.channels().fleet(), &msg).await
}
