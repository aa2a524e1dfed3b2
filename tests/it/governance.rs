//! Governed actions (issue 18): a pool drain that needs a weighted quorum of
//! validators' signed votes, on a real redis-server: a quorum reached, one
//! made impossible by denials, one that expires; forged, duplicate, late
//! and non-validator votes refused and counted; too few live validators;
//! the seal verified by `fleet-commander governance show`, and failing once
//! the audit stream or a stored vote is edited; a stolen agent key claims
//! no more than its grants (validator, weight, priority, capacity).

use crate::common::*;
use fleet_agent::{Agent, AgentError};
use fleet_protocol::api;
use fleet_protocol::auth::Grants;
use fleet_protocol::governance::Choice;
use fleet_protocol::pool::{AgentStatus, PoolType};
use fleet_protocol::RefusalReason;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_fleet-commander");
const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/fleet.toml");

async fn harness(deadline_ms: u64) -> Harness {
    Harness::start_with(|c| {
        c.governance.actions = vec!["drain_pool".into(), "scale_pool".into()];
        c.governance.scale_threshold = 10;
        c.governance.quorum = 0.6;
        c.governance.deadline_ms = deadline_ms;
    })
    .await
}

/// A validator (or any agent) that heartbeats every 100 ms and votes when told.
struct Voter {
    tx: mpsc::UnboundedSender<(String, Choice, String)>,
    stop: CancellationToken,
}

impl Voter {
    /// Its key granted what its capabilities claim.
    async fn start(h: &Harness, id: &str, caps: &[&str]) -> Voter {
        let mut spec = spec(id, PoolType::Coordinator);
        spec.capabilities = caps.iter().map(|c| c.to_string()).collect();
        let grants = fleet_sim::issuer::Issuer::grants_for(&spec);
        Voter::start_keyed(h, spec, grants).await
    }

    async fn start_keyed(h: &Harness, spec: fleet_agent::AgentSpec, grants: Grants) -> Voter {
        let mut a: Agent = h.agent_keyed(spec, grants).await;
        a.register(T).await.unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, Choice, String)>();
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = s.cancelled() => return,
                    _ = tick.tick() => { let _ = a.heartbeat(AgentStatus::Idle, 0.0).await; }
                    Some((p, c, hash)) = rx.recv() => {
                        a.vote(&p, c, &hash, "checked").await.unwrap();
                    }
                }
            }
        });
        Voter { tx, stop }
    }

    fn vote(&self, p: &Value, c: Choice) {
        let id = p["proposalId"].as_str().unwrap().to_string();
        let hash = p["hash"].as_str().unwrap().to_string();
        self.tx.send((id, c, hash)).unwrap();
    }
}

async fn propose_drain(h: &Harness, pool: &str) -> (u16, Value) {
    let r = h
        .http
        .post(format!("{}/v1/pools/{pool}/drain", h.base()))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn decided(h: &Harness, id: &str) -> Value {
    let path = api::path(api::PROPOSAL, id);
    wait_until(|| async { h.get(&path).await.1["seal"].is_string() }).await;
    h.get(&path).await.1
}

/// `fleet-commander governance show ID`: (valid, its report).
fn show(h: &Harness, id: &str) -> (bool, Value) {
    let out = std::process::Command::new(BIN)
        .args(["--config", CONFIG, "governance", "show", id])
        .env("REDIS_URL", h.redis.url())
        .env("FLEET_COMMANDER_KEY", test_commander_key())
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_governed_drain_runs_only_on_a_quorum_and_its_seal_verifies() {
    let h = harness(30_000).await;
    let mut gov = h.listen(&h.keys.channels().governance()).await;
    let v: Vec<Voter> = futures_util::future::join_all(
        ["v1", "v2", "v3"].map(|id| Voter::start(&h, id, &["validator"])),
    )
    .await;
    // Its key may vote, but it did not register as a validator.
    let validator_key = Grants {
        validator_weight: Some(1),
        ..Grants::default()
    };
    let outsider = Voter::start_keyed(&h, spec("nv", PoolType::Coordinator), validator_key).await;
    let (stop_d, d) = start_agent(&h, "dev-1", PoolType::Devops, &[], None).await;
    let (_, g) = h.get(api::GOVERNANCE).await;
    assert_eq!(
        (g["validators"].as_u64(), g["tolerance"].as_u64()),
        (Some(3), Some(0)),
        "{g}"
    );

    // Three validators of weight 1, quorum 0.6: two allows decide.
    let (code, body) = propose_drain(&h, "devops").await;
    assert_eq!(code, 202, "{body}");
    let p = body["proposal"].clone();
    assert_eq!(
        (p["quorum"].as_u64(), p["totalWeight"].as_u64()),
        (Some(2), Some(3))
    );
    let announced = gov.wait_for("proposal", |m| m["type"] == "proposal").await;
    assert_eq!(announced["hash"], p["hash"]);
    let id = p["proposalId"].as_str().unwrap().to_string();
    // One allow is not enough: nothing drained yet.
    v[0].vote(&p, Choice::Allow);
    // Refused and counted: an outsider, a second vote, a vote for another hash.
    outsider.vote(&p, Choice::Allow);
    v[0].vote(&p, Choice::Allow);
    let mut wrong = p.clone();
    wrong["hash"] = json!("0".repeat(64));
    v[2].vote(&wrong, Choice::Deny);
    wait_until(|| async {
        h.metric(r#"fleet_votes_rejected_total{reason="not_validator"}"#)
            .await
            >= 1.0
            && h.metric(r#"fleet_votes_rejected_total{reason="duplicate"}"#)
                .await
                >= 1.0
            && h.metric(r#"fleet_votes_rejected_total{reason="wrong_hash"}"#)
                .await
                >= 1.0
    })
    .await;
    let (_, agent) = h.get(&api::path(api::AGENT, "dev-1")).await;
    assert_eq!(
        agent["draining"], false,
        "drained before the quorum: {agent}"
    );
    v[1].vote(&p, Choice::Allow);
    let decision = gov
        .wait_for("decision", |m| {
            m["type"] == "decision" && m["proposalId"] == id.as_str()
        })
        .await;
    assert_eq!(decision["outcome"], "allowed");
    // Drained: it finishes what it holds (nothing) and leaves at once.
    wait_until(|| async {
        let (code, a) = h.get(&api::path(api::AGENT, "dev-1")).await;
        code == 404 || a["draining"] == true
    })
    .await;
    // Late: a vote after the decision.
    v[2].vote(&p, Choice::Deny);
    wait_until(|| async {
        h.metric(r#"fleet_votes_rejected_total{reason="late"}"#)
            .await
            >= 1.0
    })
    .await;
    let rec = decided(&h, &id).await;
    assert_eq!(rec["state"], "allowed");
    assert_eq!(rec["votes"].as_object().unwrap().len(), 2, "{rec}");
    let (ok, report) = tokio::task::block_in_place(|| show(&h, &id));
    assert!(ok, "{report}");
    assert_eq!(report["valid"], true);

    // Denied: two denials leave one allow short of the quorum for good.
    let (_, body) = propose_drain(&h, "coordinator").await;
    let p2 = body["proposal"].clone();
    let id2 = p2["proposalId"].as_str().unwrap().to_string();
    v[0].vote(&p2, Choice::Deny);
    v[1].vote(&p2, Choice::Deny);
    let rec = decided(&h, &id2).await;
    assert_eq!(rec["state"], "denied", "{rec}");
    // Quarantined: refused, with more weight for quarantine than deny.
    let (_, body) = propose_drain(&h, "coordinator").await;
    let p3 = body["proposal"].clone();
    v[1].vote(&p3, Choice::Quarantine);
    v[2].vote(&p3, Choice::Quarantine);
    let rec = decided(&h, p3["proposalId"].as_str().unwrap()).await;
    assert_eq!(rec["state"], "quarantined", "{rec}");
    let (_, vr) = h.get(&api::path(api::AGENT, "v1")).await;
    assert_eq!(vr["draining"], false, "nothing drained: {vr}");

    // Edited afterwards: a stored vote, then the audit stream. Each is caught.
    let mut conn = h.conn().await;
    let votes_key = h.keys.proposal_votes(&id);
    let original: String = redis::cmd("HGET")
        .arg(&votes_key)
        .arg("v1")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&votes_key)
        .arg("v1")
        .arg(original.replace("\"allow\"", "\"deny\""))
        .query_async(&mut conn)
        .await
        .unwrap();
    let (ok, report) = tokio::task::block_in_place(|| show(&h, &id));
    assert!(!ok, "{report}");
    let problems = report["problems"].to_string();
    assert!(problems.contains("v1: bad signature"), "{problems}");
    let _: () = redis::cmd("HSET")
        .arg(&votes_key)
        .arg("v1")
        .arg(&original)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(tokio::task::block_in_place(|| show(&h, &id)).0, "restored");
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(h.keys.audit())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let (entry, _) = entries
        .iter()
        .find(|(_, f)| {
            f.iter()
                .any(|(k, v)| k == "target" && *v == format!("proposal:{id}"))
        })
        .expect("the decision's audit entry");
    let _: () = redis::cmd("XDEL")
        .arg(h.keys.audit())
        .arg(entry)
        .query_async(&mut conn)
        .await
        .unwrap();
    let (ok, report) = tokio::task::block_in_place(|| show(&h, &id));
    assert!(!ok, "{report}");
    assert!(
        report["problems"].to_string().contains("no audit entry"),
        "{report}"
    );

    for x in v.iter().chain([&outsider]) {
        x.stop.cancel();
    }
    stop_d.cancel();
    let _ = d.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_expires_and_too_few_live_validators_refuse_one() {
    let h = harness(800).await;
    let v: Vec<Voter> = futures_util::future::join_all(
        ["e1", "e2", "e3"].map(|id| Voter::start(&h, id, &["validator"])),
    )
    .await;
    // One allow of the two needed, then nothing: expired at its deadline.
    let (code, body) = propose_drain(&h, "mobile").await;
    assert_eq!(code, 202, "{body}");
    let p = body["proposal"].clone();
    v[0].vote(&p, Choice::Allow);
    let rec = decided(&h, p["proposalId"].as_str().unwrap()).await;
    assert_eq!(rec["state"], "expired", "{rec}");
    assert!(tokio::task::block_in_place(|| show(&h, p["proposalId"].as_str().unwrap())).0);

    // A pool's size: up to the threshold at once, above it by a quorum.
    let size = |n: u64| {
        h.http
            .post(format!("{}/v1/pools/coder/size", h.base()))
            .json(&json!({"agents": n}))
            .send()
    };
    assert_eq!(size(8).await.unwrap().status().as_u16(), 200);
    let r = size(50).await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let p: Value = r.json::<Value>().await.unwrap()["proposal"].clone();
    let manual = || async {
        let v: Option<u64> = redis::cmd("HGET")
            .arg(h.keys.manual_sizes())
            .arg("coder")
            .query_async(&mut h.conn().await)
            .await
            .unwrap();
        v
    };
    assert_eq!(manual().await, Some(8), "not before the votes");
    v[0].vote(&p, Choice::Allow);
    v[1].vote(&p, Choice::Allow);
    wait_until(|| async { manual().await == Some(50) }).await;

    // Two of the three validators go silent and are declared failed: the
    // live weight (1) is below the quorum (2), so no proposal opens.
    v[1].stop.cancel();
    v[2].stop.cancel();
    wait_until(|| async { h.get(api::GOVERNANCE).await.1["live"] == 1 }).await;
    let (code, body) = propose_drain(&h, "mobile").await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"], "quorum_unreachable");
    assert!(
        h.metric(r#"fleet_proposals_total{outcome="refused"}"#)
            .await
            >= 1.0
    );
    v[0].stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_vote_is_refused_and_counted() {
    let h = harness(30_000).await;
    let _v: Vec<Voter> =
        futures_util::future::join_all(["f1", "f2"].map(|id| Voter::start(&h, id, &["validator"])))
            .await;
    let (_, body) = propose_drain(&h, "network").await;
    let p = body["proposal"].clone();
    // "f2"'s vote, signed with f1's key: the key speaks for f1 only.
    let vote = json!({"v": 1, "type": "vote", "proposalId": p["proposalId"], "agentId": "f2",
        "vote": "allow", "hash": p["hash"], "reason": "forged"});
    let channel = h.keys.channels().governance();
    let f1 = h.credential("f1", PoolType::Coordinator).await.signer();
    let forged = f1.sign(
        &channel,
        vote.to_string().as_bytes(),
        fleet_protocol::now_ms(),
    );
    h.publish_raw(&channel, forged).await;
    // And a good signature over a body altered afterwards.
    let mine = json!({"v": 1, "type": "vote", "proposalId": p["proposalId"], "agentId": "f1",
        "vote": "deny", "hash": p["hash"]});
    let signed = f1.sign(
        &channel,
        mine.to_string().as_bytes(),
        fleet_protocol::now_ms(),
    );
    let altered = String::from_utf8(signed)
        .unwrap()
        .replace("\"deny\"", "\"allow\"");
    h.publish_raw(&channel, altered).await;
    wait_until(|| async {
        h.metric(r#"fleet_messages_rejected_total{channel="governance",reason="bad_signature"}"#)
            .await
            >= 1.0
    })
    .await;
    wait_until(|| async {
        h.metric(r#"fleet_messages_rejected_total{channel="governance",reason="wrong_agent"}"#)
            .await
            >= 1.0
    })
    .await;
    let (_, rec) = h
        .get(&format!(
            "/v1/governance/proposals/{}",
            p["proposalId"].as_str().unwrap()
        ))
        .await;
    assert_eq!(rec["votes"], json!({}), "nothing counted: {rec}");
}

/// Issue 25, item 1: what gives an agent power is granted with its key, not
/// declared. A stolen key of no grants cannot make itself a validator (or a
/// heavier one), vote, or claim a higher priority or capacity than granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_key_claims_no_more_than_its_grants() {
    let h = harness(30_000).await;
    let mut gov = h.listen(&h.keys.channels().governance()).await;
    let v: Vec<Voter> = futures_util::future::join_all(
        ["g1", "g2", "g3"].map(|id| Voter::start(&h, id, &["validator"])),
    )
    .await;
    let (stop_d, d) = start_agent(&h, "dev-g", PoolType::Devops, &[], None).await;
    let refused = |r: Result<_, AgentError>| match r {
        Err(AgentError::Refused { reason, detail }) => (reason, detail),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let claim = |id: &str, pool, caps: &[&str], priority, capacity| {
        let mut s = spec(id, pool);
        s.capabilities = caps.iter().map(|c| c.to_string()).collect();
        s.priority = priority;
        s.capacity = capacity;
        s
    };

    // The thief's key was issued plainly: no validator, no weight.
    let mut thief = h
        .agent_keyed(
            claim(
                "thief",
                PoolType::Coordinator,
                &["validator", "weight:100"],
                None,
                1,
            ),
            Grants::default(),
        )
        .await;
    let (reason, detail) = refused(thief.register(T).await);
    assert_eq!(reason, RefusalReason::NotGranted, "{detail}");
    assert!(detail.contains("--validator-weight"), "says how: {detail}");
    // A key granted weight 2 may be a validator of weight 2, not 100.
    let heavy = Grants {
        validator_weight: Some(2),
        ..Grants::default()
    };
    let mut w = h
        .agent_keyed(
            claim(
                "w2",
                PoolType::Coordinator,
                &["validator", "weight:100"],
                None,
                1,
            ),
            heavy,
        )
        .await;
    let (reason, detail) = refused(w.register(T).await);
    assert_eq!(reason, RefusalReason::NotGranted, "{detail}");
    assert!(detail.contains("weight 100"), "{detail}");
    // Priority above its pool's (coder: 8) and capacity above 1: refused
    // unless granted.
    for (id, priority, capacity) in [("hog-p", Some(10), 1), ("hog-c", None, 64)] {
        let mut hog = h
            .agent_keyed(
                claim(id, PoolType::Coder, &[], priority, capacity),
                Grants::default(),
            )
            .await;
        let (reason, detail) = refused(hog.register(T).await);
        assert_eq!(reason, RefusalReason::NotGranted, "{id}: {detail}");
    }
    let granted = Grants {
        max_priority: Some(10),
        max_capacity: Some(64),
        ..Grants::default()
    };
    h.agent_keyed(claim("big", PoolType::Coder, &[], Some(10), 64), granted)
        .await
        .register(T)
        .await
        .expect("granted: accepted");
    let rejected = r#"fleet_messages_rejected_total{channel="registry",reason="not_granted"}"#;
    assert_eq!(h.metric(rejected).await, 4.0);
    let (_, g) = h.get(api::GOVERNANCE).await;
    assert_eq!(
        (g["validators"].as_u64(), g["totalWeight"].as_u64()),
        (Some(3), Some(3)),
        "{g}"
    );

    // Registered plainly, the thief hears a proposal and votes: refused,
    // counted, and one true allow does not decide (quorum 2 of 3).
    let mut thief = h
        .agent_keyed(
            claim("thief", PoolType::Coordinator, &[], None, 1),
            Grants::default(),
        )
        .await;
    thief.register(T).await.unwrap();
    let (code, body) = propose_drain(&h, "devops").await;
    assert_eq!(code, 202, "{body}");
    let p = body["proposal"].clone();
    gov.wait_for("proposal", |m| m["type"] == "proposal").await;
    let (id, hash) = (
        p["proposalId"].as_str().unwrap(),
        p["hash"].as_str().unwrap(),
    );
    thief.vote(id, Choice::Allow, hash, "lgtm").await.unwrap();
    v[0].vote(&p, Choice::Allow);
    wait_until(|| async {
        h.metric(r#"fleet_votes_rejected_total{reason="not_granted"}"#)
            .await
            >= 1.0
            && h.metric(r#"fleet_votes_total{vote="allow"}"#).await >= 1.0
    })
    .await;
    let rec = h.get(&api::path(api::PROPOSAL, id)).await.1;
    assert_eq!(rec["state"], "open", "the thief's vote decided: {rec}");
    assert_eq!(rec["votes"].as_object().map(|v| v.len()), Some(1), "{rec}");
    let (_, agent) = h.get(&api::path(api::AGENT, "dev-g")).await;
    assert_eq!(agent["draining"], false, "{agent}");
    stop_d.cancel();
    let _ = d.await;
}
