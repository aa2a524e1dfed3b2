//! The audit log end to end: privileged HTTP actions and the commander's
//! takeover are recorded with their actor and outcome, admins read them,
//! others may not, and `audit verify` names tampering; the leader's signed
//! checkpoints catch a log cut short, and a trim is itself recorded.

use crate::common::*;
use fleet_protocol::api;
use fleet_protocol::pool::PoolType;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_fleet-commander");

fn verify(h: &Harness) -> (bool, String) {
    audit(h, &["verify"])
}

/// `fleet-commander audit ARGS`: (success, stdout and stderr).
fn audit(h: &Harness, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(BIN)
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/fleet.toml"),
        ])
        .arg("audit")
        .args(args)
        .env("REDIS_URL", h.redis.url())
        .env("FLEET_COMMANDER_KEY", test_commander_key())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
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
        post(
            format!("{base}/v1/dead-letters/00000000-0000-4000-8000-000000000000/requeue"),
            json!({})
        )
        .await,
        409
    );

    let (code, log) = h.get(api::AUDIT).await;
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
    assert_eq!(
        drain["target"],
        api::path(api::AGENT_DRAIN, "aud-1").as_str()
    );
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
    let op = h
        .token("ops", fleet_store::tokens::TokenRole::Operator)
        .await;
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
    let mut conn = h.conn().await;
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

/// Issue 25, item 5: the log's end anchored outside Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_catch_a_log_cut_short_and_a_trim_is_recorded() {
    let h = Harness::start_with(|c| c.security.audit_checkpoint_ms = 1_000).await;
    let file = h.config.security.audit_checkpoint_file.clone();
    let cps = file.to_str().unwrap().to_string();
    let mut conn = h.conn().await;
    let head = |conn: &mut redis::aio::MultiplexedConnection| {
        let key = h.keys.audit_head();
        let mut conn = conn.clone();
        async move {
            let seq: Option<u64> = redis::cmd("HGET")
                .arg(key)
                .arg("seq")
                .query_async(&mut conn)
                .await
                .unwrap();
            seq.unwrap_or(0)
        }
    };
    // The leader checkpoints the head it has (its takeover entry, at least).
    let checkpointed = |seq: u64| {
        let file = file.clone();
        async move {
            std::fs::read_to_string(&file).is_ok_and(|t| {
                t.lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .any(|c| c["seq"].as_u64() >= Some(seq))
            })
        }
    };
    for pool in ["coder", "tester"] {
        let r = h
            .http
            .post(format!("{}/v1/pools/{pool}/pause", h.base()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    let n = head(&mut conn).await;
    assert!(n >= 3, "{n}");
    wait_until(|| checkpointed(n)).await;
    let (ok, out) = tokio::task::block_in_place(|| audit(&h, &["verify", "--checkpoint", &cps]));
    assert!(ok && out.contains("reaches all"), "{out}");

    // A trim is an entry of its own, and the log still reaches the
    // checkpoints taken before it.
    let (ok, out) = tokio::task::block_in_place(|| audit(&h, &["trim", "--keep", "1"]));
    assert!(ok, "{out}");
    let newest = &fleet_store::audit::list(&mut conn, &h.keys, 1)
        .await
        .unwrap()[0];
    assert_eq!(newest.action, "audit_trimmed", "{newest:?}");
    let r = h
        .http
        .post(format!("{}/v1/pools/ui/pause", h.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let after = head(&mut conn).await;
    wait_until(|| checkpointed(after)).await;
    let (ok, out) = tokio::task::block_in_place(|| audit(&h, &["verify", "--checkpoint", &cps]));
    assert!(ok, "{out}");

    // The newest entry (the ui pause) removed and the head set back: the
    // chain alone passes; against the checkpoints it does not.
    let raw: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(h.keys.audit())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let (last, before) = (&raw[raw.len() - 1], &raw[raw.len() - 2]);
    let _: () = redis::pipe()
        .cmd("XDEL")
        .arg(h.keys.audit())
        .arg(&last.0)
        .ignore()
        .cmd("HSET")
        .arg(h.keys.audit_head())
        .arg("seq")
        .arg(&before.1["seq"])
        .arg("hash")
        .arg(&before.1["hash"])
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    let (ok, out) = tokio::task::block_in_place(|| verify(&h));
    assert!(ok, "the chain alone cannot tell: {out}");
    let (ok, out) = tokio::task::block_in_place(|| audit(&h, &["verify", "--checkpoint", &cps]));
    assert!(!ok && out.contains("truncated or rolled back"), "{out}");

    // A checkpoint line that was edited is refused, not trusted.
    let forged = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "forged-{}.checkpoints",
        uuid::Uuid::new_v4().simple()
    ));
    let text = std::fs::read_to_string(&file).unwrap();
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let mut edited = first.clone();
    edited["seq"] = json!(1);
    std::fs::write(&forged, format!("{edited}\n")).unwrap();
    let (ok, out) = tokio::task::block_in_place(|| {
        audit(&h, &["verify", "--checkpoint", forged.to_str().unwrap()])
    });
    assert!(!ok && out.contains("not signed by this commander"), "{out}");
}
