//! This commander's view of leadership ([`Ha`]): who it is, its role and
//! epoch, and who it last saw lead. Kept for the whole process; the lease
//! loops (crate::leader) change it, the HTTP API and the status read it.

use crate::metrics as m;
use fleet_protocol::now_ms;
use fleet_store::lease::{Commander, Lease, Role};
use serde::Serialize;
use std::sync::Mutex;

/// This commander: who it is, and what it knows of who leads.
pub(crate) struct Ha {
    pub(crate) lease: Lease,
    /// Where its HTTP API is reached.
    pub(crate) address: String,
    view: Mutex<View>,
}

/// What a commander knows of leadership.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct View {
    pub(crate) role: Role,
    /// Its own epoch while it leads; the leader's as last seen while it
    /// stands by (0: none seen).
    pub(crate) epoch: u64,
    /// When it took its role (ms).
    pub(crate) since: u64,
    /// The leader as last seen (itself while it leads).
    pub(crate) leader: Option<LeaderInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LeaderInfo {
    pub(crate) id: String,
    pub(crate) epoch: u64,
    /// Its HTTP address, if it has said.
    pub(crate) address: Option<String>,
}

impl Ha {
    pub(crate) fn new(lease: Lease, address: String) -> Ha {
        Ha {
            lease,
            address,
            view: Mutex::new(View {
                role: Role::Standby,
                epoch: 0,
                since: now_ms(),
                leader: None,
            }),
        }
    }

    pub(crate) fn id(&self) -> &str {
        self.lease.id()
    }

    pub(crate) fn view(&self) -> View {
        self.view.lock().expect("no panics while held").clone()
    }

    /// This commander's entry in the directory, as of now.
    pub(crate) fn entry(&self) -> Commander {
        let v = self.view();
        Commander {
            id: self.id().to_string(),
            role: v.role,
            epoch: v.epoch,
            address: self.address.clone(),
            renewed_at: now_ms(),
            since: v.since,
        }
    }

    /// Takes `role` (with `epoch`): the gauges follow.
    pub(crate) fn become_(&self, role: Role, epoch: u64) {
        let mut v = self.view.lock().expect("no panics while held");
        v.role = role;
        v.epoch = epoch;
        v.since = now_ms();
        v.leader = match role {
            Role::Leader => Some(LeaderInfo {
                id: self.id().to_string(),
                epoch,
                address: Some(self.address.clone()),
            }),
            Role::Standby => None,
        };
        metrics::gauge!(m::LEADER).set(if role == Role::Leader { 1.0 } else { 0.0 });
        metrics::gauge!(m::EPOCH).set(epoch as f64);
    }

    /// A standby saw `leader` hold the lease (None: nobody does).
    pub(crate) fn saw(&self, leader: Option<LeaderInfo>) {
        let mut v = self.view.lock().expect("no panics while held");
        v.epoch = leader.as_ref().map_or(v.epoch, |l| l.epoch);
        metrics::gauge!(m::EPOCH).set(v.epoch as f64);
        v.leader = leader;
    }
}
