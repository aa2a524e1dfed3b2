//! The audit log end to end: privileged HTTP actions and the commander's
//! takeover are recorded with their actor and outcome, admins read them,
//! others may not, and `audit verify` names tampering.

mod common;

use common::*;
use fleet_protocol::pool::PoolType;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_fleet-commander");

fn verify(h: &Harness) -> (bool, String) {
    let out = std::process::Command::new(BIN)
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/fleet.toml"),
        ])
        .args(["audit", "verify"])
        .env("REDIS_URL", h.redis.url())
        .env("FLEET_COMMANDER_KEY", test_commander_key())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_actions_are_recorded_and_tampering_is_found() {
    let h = Harness::start().await;
    let base = h.base();
    let mut a = h.agent("aud-1", PoolType::Coder).await;
    a.register(T).await.unwrap();
    let post = |path: String, body: Value| {
        let http = h.http.clone();
        async move {
            http.post(path)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        post(format!("{base}/v1/agents/aud-1/drain"), json!({})).await,
        200
    );
    assert_eq!(
        post(format!("{base}/v1/pools/tester/size"), json!({"agents": 5})).await,
        200
    );
    assert_eq!(
        post(format!("{base}/v1/dead-letters/nope/requeue"), json!({})).await,
        409
    );

    let (code, log) = h.get("/v1/audit").await;
    assert_eq!(code, 200);
    let log = log.as_array().unwrap().clone();
    let find = |action: &str| {
        log.iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("{action} in {log:?}"))
            .clone()
    };
    let drain = find("drain");
    assert_eq!(drain["actor"], "token:tests");
    assert_eq!(drain["target"], "/v1/agents/aud-1/drain");
    assert_eq!(drain["result"], "ok");
    assert_eq!(find("scale")["result"], "ok");
    // The entry says what was set, not only where.
    assert_eq!(find("scale")["target"], "/v1/pools/tester/size agents=5");
    assert_eq!(
        find("requeue")["result"],
        "409",
        "refused actions are recorded too"
    );
    assert_eq!(find("commander_took_over")["actor"], "commander:1");

    // Only admins read it.
    let mut conn = fleet_store::connection::connect(&h.redis.url())
        .await
        .unwrap();
    let op = fleet_store::tokens::TokenStore::new(h.keys.clone())
        .issue(
            &mut conn,
            "ops",
            fleet_store::tokens::TokenRole::Operator,
            fleet_protocol::now_ms(),
        )
        .await
        .unwrap();
    let r = authed(&op)
        .get(format!("{base}/v1/audit"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    // Intact, until an entry is deleted behind the commander's back.
    let (ok, out) = tokio::task::block_in_place(|| verify(&h));
    assert!(ok, "{out}");
    assert!(out.starts_with("intact: 4 entries"), "{out}");
    let ids: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(h.keys.audit())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: u64 = redis::cmd("XDEL")
        .arg(h.keys.audit())
        .arg(&ids[1].0)
        .query_async(&mut conn)
        .await
        .unwrap();
    let (ok, out) = tokio::task::block_in_place(|| verify(&h));
    assert!(!ok, "{out}");
    assert_eq!(
        out.trim(),
        "broken at entry 2: deleted: entries 2 to 2 are missing"
    );
}
