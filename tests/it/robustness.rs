//! Bad input is refused, counted and logged with its reason; the commander
//! keeps serving. Bad configuration stops the binary with the field named.

use crate::common::*;
use fleet_protocol::api;
use fleet_protocol::pool::PoolType;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_are_refused_counted_and_logged() {
    let (h, logs) = Harness::start_logged(|_| {}).await;
    let reg = h.keys.channels().registry();
    let hb = h.keys.channels().health();
    let fleet = h.keys.channels().fleet();
    let cases: Vec<(&str, String, String, &str)> = vec![
        ("registry", reg.clone(), "{not json".to_string(), "bad_json"),
        (
            "registry",
            reg.clone(),
            json!({"v": 9, "type": "register"}).to_string(),
            "unsupported_version",
        ),
        (
            "registry",
            reg.clone(),
            json!({"v": 1, "type": "launch_missiles"}).to_string(),
            "unknown_type",
        ),
        (
            "health",
            hb.clone(),
            json!({"v": 1, "type": "heartbeat", "agentId": "../etc", "status": "idle"}).to_string(),
            "invalid_fields",
        ),
        (
            "health",
            hb.clone(),
            json!({"v": 1, "type": "heartbeat", "agentId": "a", "status": "failed"}).to_string(),
            "invalid_fields",
        ),
        (
            "health",
            hb.clone(),
            json!({"v": 1, "type": "register", "id": "m", "agentId": "a", "pool": "ui"})
                .to_string(),
            "wrong_channel",
        ),
        ("fleet", fleet.clone(), "[1,2,3]".to_string(), "bad_json"),
        (
            "registry",
            reg.clone(),
            json!({"v": 1, "type": "register", "id": "r-pool", "agentId": "wiz", "pool": "wizards"})
                .to_string(),
            "unknown_pool",
        ),
        (
            "tasks",
            h.keys.channels().tasks(),
            json!({"v": 1, "type": "task_submit", "id": "s-pool", "pool": "wizards"}).to_string(),
            "unknown_pool",
        ),
        (
            "registry",
            reg.clone(),
            json!({"v": 1, "type": "register", "id": "r-arr", "agentId": "arr", "pool": "ui",
                   "resources": []})
            .to_string(),
            "invalid_fields",
        ),
        (
            "results",
            h.keys.channels().results(),
            json!({"v": 1, "type": "task_fail", "taskId": "t", "attempt": 1, "agentId": "a",
                   "error": null})
            .to_string(),
            "invalid_fields",
        ),
        (
            "results",
            h.keys.channels().results(),
            format!(
                r#"{{"v":1,"type":"task_complete","taskId":"t","attempt":1,"agentId":"a","result":{}{}}}"#,
                "[".repeat(3000),
                "]".repeat(3000)
            ),
            "too_deep",
        ),
        (
            "registry",
            reg.clone(),
            format!(
                r#"{{"v":1,"type":"register","pad":"{}"}}"#,
                "x".repeat(20_000)
            ),
            "oversized",
        ),
    ];
    let mut before = Vec::new();
    for (ch, _, _, reason) in &cases {
        let series =
            format!(r#"fleet_messages_rejected_total{{channel="{ch}",reason="{reason}"}}"#);
        before.push(h.metric(&series).await);
    }
    for (_, channel, payload, _) in &cases {
        h.publish(channel, payload).await;
    }
    // Garbage bytes too.
    h.publish(&reg, [0xff_u8, 0xfe, 0x00, 0x01]).await;

    // The commander still serves: a valid registration right after.
    let mut a = h.agent("ok-1", PoolType::Coder).await;
    a.register(Duration::from_secs(5))
        .await
        .expect("still serving");

    for ((ch, _, _, reason), b) in cases.iter().zip(before) {
        let series =
            format!(r#"fleet_messages_rejected_total{{channel="{ch}",reason="{reason}"}}"#);
        let after = h.metric(&series).await;
        assert!(after > b, "{series} not counted ({b} -> {after})");
    }
    let text = logs.text();
    for reason in [
        "bad_json",
        "unsupported_version",
        "unknown_type",
        "wrong_channel",
        "oversized: 20",
    ] {
        assert!(
            text.contains("message refused") && text.contains(reason),
            "log does not give reason {reason}:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_garbage_does_not_stall_the_commander() {
    let _heavy = heavy().await;
    // Its warnings kept out of the test's output.
    let (h, _logs) = Harness::start_logged(|_| {}).await;
    let mut c = h.conn().await;
    let mut p = redis::pipe();
    for i in 0..5000 {
        p.publish(h.keys.channels().health(), format!("garbage {i}"))
            .ignore();
    }
    p.query_async::<()>(&mut c).await.unwrap();
    let mut a = h.agent("after-flood", PoolType::Ui).await;
    a.register(Duration::from_secs(5))
        .await
        .expect("served after the flood");
    let (code, _) = h.get(api::FLEET).await;
    assert_eq!(code, 200);
    // Every piece counted (the health channel has its own connection: the
    // registration above need not wait until the flood is read).
    wait_until(|| async {
        h.metric(r#"fleet_messages_rejected_total{channel="health",reason="bad_json"}"#)
            .await
            >= 5000.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_from_an_unknown_agent_is_told_to_register() {
    // Its warnings kept out of the test's output.
    let (h, _logs) = Harness::start_logged(|_| {}).await;
    let mut inbox = h.listen(&h.keys.channels().agent("stranger")).await;
    h.publish(
        &h.keys.channels().health(),
        json!({"v": 1, "type": "heartbeat", "agentId": "stranger", "status": "idle"}).to_string(),
    )
    .await;
    let m = inbox
        .wait_for("reregister", |v| v["type"] == "reregister")
        .await;
    assert_eq!(m["reason"], "unknown_agent");
    let (_, fleet) = h.get(api::FLEET).await;
    assert_eq!(
        fleet["totalAgents"], 0,
        "a heartbeat never creates an agent"
    );
}

#[test]
fn the_binary_refuses_a_bad_config_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("fleet-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/fleet.toml")).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        shipped.replacen("max_agents = 120", "max_agents = -4", 1),
    )
    .unwrap();
    for args in [vec!["run"], vec!["config", "check", bad.to_str().unwrap()]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleet-commander"))
            .arg("--config")
            .arg(&bad)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?} must exit 64 (EX_USAGE)"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("pools.tester.max_agents"), "{args:?}: {err}");
    }
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_fleet-commander"))
        .args([
            "config",
            "check",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/fleet.toml"),
        ])
        .output()
        .unwrap();
    assert!(ok.status.success());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_missing_commander_key_or_a_bad_security_mode_stops_the_start_with_the_field() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("security-config");
    std::fs::create_dir_all(&dir).unwrap();
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/fleet.toml")).unwrap();
    let cfg = dir.join("fleet.toml");
    std::fs::write(&cfg, &shipped).unwrap();
    let _ = std::fs::remove_file(dir.join("commander.key"));
    let run = |cfg: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fleet-commander"))
            .arg("--config")
            .arg(cfg)
            .arg("run")
            .env_remove("FLEET_COMMANDER_KEY")
            .output()
            .unwrap()
    };
    // Secure by default: no key, no start, and it says how to make one.
    let out = run(&cfg);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("security.commander_key_file"), "{err}");
    assert!(err.contains("keys init"), "{err}");

    let bad = dir.join("bad-mode.toml");
    std::fs::write(
        &bad,
        shipped.replacen(r#"mode = "signed""#, r#"mode = "trusting""#, 1),
    )
    .unwrap();
    let out = run(&bad);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("security.mode"), "{err}");
}

/// A task payload nested deeper than agents' parsers can follow is refused
/// at submission over HTTP too (it would be handed to an agent otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_nested_too_deep_is_refused() {
    let h = Harness::start().await;
    let deep = format!("{}{}", "[".repeat(8000), "]".repeat(8000));
    let body = format!(r#"{{"pool":"coder","payload":{deep}}}"#);
    let r = h.post_text(api::TASKS, body).await;
    let code = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(code, 422, "{v}");
    assert!(v.to_string().contains("nested deeper than 64"), "{v}");
    // 64 levels are fine.
    let ok = format!("{}{}", "[".repeat(63), "]".repeat(63));
    let r = h
        .post_text(api::TASKS, format!(r#"{{"pool":"coder","payload":{ok}}}"#))
        .await;
    assert_eq!(r.status().as_u16(), 201);
}
