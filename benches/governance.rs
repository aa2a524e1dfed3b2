//! Proposal-to-decision latency (issue 18): a commander (release build,
//! security on: every vote signed and checked) with N simulated validators
//! (Rust SDK agents of weight 1, quorum 2/3), each voting `allow` as soon as
//! it hears a proposal on the governance channel. A governed pool drain is
//! proposed ROUNDS times; measured from the proposal's announcement to the
//! decision's, p50/p99, for N = 5, 25 and 100 (VALIDATORS="5 25 100").
//!
//!   cargo bench --bench governance

#[path = "../tests/it/common/mod.rs"]
mod common;

use common::*;
use fleet_agent::Agent;
use fleet_protocol::governance::Choice;
use fleet_protocol::pool::{AgentStatus, PoolType};
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

const ROUNDS: usize = 30;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sizes: Vec<usize> = std::env::var("VALIDATORS")
        .unwrap_or_else(|_| "5 25 100".into())
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    for n in sizes {
        rt.block_on(run(n));
    }
}

async fn run(n: usize) {
    let h = Harness::start_with(|c| {
        c.governance.actions = vec!["drain_pool".into()];
        c.governance.quorum = 2.0 / 3.0;
        c.fleet.heartbeat_interval_ms = 1000;
        c.fleet.missed_heartbeats = 5;
        c.fleet.max_agents = 1000;
    })
    .await;
    // Each validator hears proposals (one listener here hands them on) and
    // votes at once, signed with its own key.
    let (tx, _) = broadcast::channel::<Value>(64);
    let mut voters = Vec::new();
    // Spread over the pools (each has its maximum), but not the one drained.
    let pools: Vec<PoolType> = PoolType::ALL
        .into_iter()
        .filter(|p| *p != PoolType::Mobile)
        .collect();
    for i in 0..n {
        let mut s = spec(&format!("val-{i}"), pools[i % pools.len()]);
        s.capabilities = vec!["validator".into()];
        let mut a: Agent = h.agent_with(s).await;
        a.register(T).await.unwrap();
        let mut rx = tx.subscribe();
        voters.push(tokio::spawn(async move {
            let mut beat = tokio::time::interval(Duration::from_millis(1000));
            loop {
                tokio::select! {
                    _ = beat.tick() => { let _ = a.heartbeat(AgentStatus::Idle, 0.0).await; }
                    p = rx.recv() => match p {
                        Ok(p) => {
                            let (id, hash) = (p["proposalId"].as_str().unwrap(), p["hash"].as_str().unwrap());
                            let _ = a.vote(id, Choice::Allow, hash, "ok").await;
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => return,
                    }
                }
            }
        }));
    }
    wait_until(|| async { h.get("/v1/governance").await.1["live"] == n }).await;
    let mut gov = h.listen(&h.keys.channels().governance()).await;
    let mut lat = Vec::new();
    for _ in 0..ROUNDS {
        let r = h
            .http
            .post(format!("{}/v1/pools/mobile/drain", h.base()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        let proposal = gov.wait_for("proposal", |m| m["type"] == "proposal").await;
        let heard = Instant::now();
        let _ = tx.send(proposal.clone());
        let id = proposal["proposalId"].clone();
        let d = gov
            .wait_for("decision", |m| {
                m["type"] == "decision" && m["proposalId"] == id
            })
            .await;
        assert_eq!(d["outcome"], "allowed");
        lat.push(heard.elapsed().as_secs_f64() * 1000.0);
    }
    let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    let quorum = ((2.0 / 3.0) * n as f64).ceil() as usize;
    println!(
        "governance, {n} validators (quorum {quorum}, f = {}): proposal -> decision p50 {p50:.1} ms, p99 {p99:.1} ms (n={ROUNDS})",
        (n - 1) / 3
    );
    for v in voters {
        v.abort();
    }
}
