//! Helpers for tests and benches with several commander processes on one
//! Redis: a commander and its address, who leads, a submitter that follows
//! the leader.

use super::*;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::process::Child;

/// A commander process and its HTTP address.
pub struct Node {
    pub addr: String,
    pub child: Child,
}

impl Node {
    pub async fn start(redis_url: &str, config: &std::path::Path) -> Node {
        let addr = free_addr();
        let child = commander_process_with(redis_url, &addr, config).await;
        Node { addr, child }
    }

    pub async fn role(&self) -> Value {
        readyz(&self.addr).await["role"].clone()
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(ok.success(), "kill {sig} {pid}");
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// Which of `nodes` leads, once exactly one does.
pub async fn leader_of(nodes: &[Node]) -> usize {
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let mut leaders = Vec::new();
            for (i, n) in nodes.iter().enumerate() {
                let r = readyz(&n.addr).await;
                if r["role"] == "leader" && r["ready"] == true {
                    leaders.push(i);
                }
            }
            if let [one] = leaders[..] {
                return one;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    found.expect("one leader within the wait")
}

/// Submits `n` tasks, one every `every`, each to whichever commander takes
/// it (a refusal or a dead commander: the next one, the same `clientId`).
/// The accepted ids.
pub fn submit_stream(
    http: reqwest::Client,
    addrs: Arc<Mutex<Vec<String>>>,
    n: usize,
    every: Duration,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut ids = Vec::new();
        for k in 0..n {
            let body = json!({"pool": "coder", "timeoutMs": 10000, "clientId": format!("ha-{k}"), "payload": k});
            let deadline = Instant::now() + WAIT;
            'accepted: loop {
                assert!(Instant::now() < deadline, "task {k} accepted by nobody");
                let targets = addrs.lock().unwrap().clone();
                for a in targets {
                    let r = http
                        .post(format!("http://{a}/v1/tasks"))
                        .json(&body)
                        .timeout(Duration::from_secs(2))
                        .send()
                        .await;
                    let Ok(r) = r else { continue };
                    if matches!(r.status().as_u16(), 200 | 201) {
                        let v: Value = r.json().await.unwrap();
                        ids.push(v["task"]["id"].as_str().unwrap().to_string());
                        break 'accepted;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(every).await;
        }
        ids
    })
}
