//! The minimal agent of docs/PROTOCOL.md, exactly as the page has it, run
//! against a real commander with security on: it must register (signed) and
//! heartbeat.

use crate::common::*;
use fleet_protocol::api;
use fleet_protocol::pool::PoolType;
use serde_json::Value;

/// The page's "A minimal agent in Python" code block.
fn minimal_agent() -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md")).unwrap();
    let section = doc
        .split("## A minimal agent in Python")
        .nth(1)
        .expect("the section");
    let code = section.split("```python\n").nth(1).expect("a python block");
    code.split("\n```").next().unwrap().to_string()
}

/// Waits until the agent's record shows a heartbeat newer than now's.
async fn heartbeats_go_on(h: &Harness, id: &str) {
    let path = api::path(api::AGENT, id);
    let last = |v: Value| v["health"]["lastHeartbeat"].as_u64().unwrap_or(0);
    let first = last(h.get(&path).await.1);
    wait_until(|| async { last(h.get(&path).await.1) > first }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_minimal_agent_of_the_protocol_doc_registers_and_heartbeats() {
    let h = Harness::start().await;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let script = dir.join("protocol_doc_agent.py");
    let code = minimal_agent().replace("redis://127.0.0.1:6379", &h.redis.url());
    std::fs::write(&script, code).unwrap();
    let mut cred = h.credential("doc-1", PoolType::Coder).await;
    (cred.redis_user, cred.redis_password) = (None, None); // this Redis has no ACLs
    let cred_file = dir.join("doc-1.cred");
    std::fs::write(&cred_file, serde_json::to_string(&cred).unwrap()).unwrap();

    let mut registry = h.listen(&h.keys.channels().registry()).await;
    let mut child = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(&cred_file)
        .kill_on_drop(true)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with redis-py and cryptography");
    registry
        .wait_for("agent_registered", is("agent_registered", "doc-1"))
        .await;
    // It heartbeats (every 100 ms here): its record's lastHeartbeat moves on.
    heartbeats_go_on(&h, "doc-1").await;
    // Anything may arrive on its channel while ACLs are off: it survives
    // every kind of garbage and keeps heartbeating.
    let channel = h.keys.channels().agent("doc-1");
    let commander = fleet_protocol::auth::Signer::new("commander:1", &TEST_SECRET);
    let garbage: Vec<Vec<u8>> = vec![
        b"not signed".to_vec(),
        b"FC1 commander:1 notanumber abc sig\n{}".to_vec(),
        b"FC1 commander:x 1 abc sig\n{}".to_vec(),
        format!(
            "FC1 commander:1 {} abcdefgh !!!\n{{}}",
            fleet_protocol::now_ms()
        )
        .into_bytes(),
        vec![0xff, 0xfe, b'\n', 0x00],
        commander.sign(&channel, b"[1,2,3]", fleet_protocol::now_ms()),
        commander.sign(&channel, b"{not json", fleet_protocol::now_ms()),
    ];
    for g in &garbage {
        h.publish_raw(&channel, g).await;
    }
    heartbeats_go_on(&h, "doc-1").await;
    if let Some(status) = child.try_wait().unwrap() {
        let mut err = String::new();
        use tokio::io::AsyncReadExt;
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .await
            .unwrap();
        panic!("the agent died of garbage ({status}): {err}");
    }
    child.kill().await.unwrap();
}

/// The page's "Sessions" Python code, exactly as printed, run on the page's
/// worked example (its fixed keys, time and nonce): it must derive the
/// printed secret and MAC (which `fleet_protocol::session` is tested
/// against too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_code_of_the_protocol_doc_matches_its_worked_example() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md")).unwrap();
    let section = doc
        .split("## Sessions")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("the section");
    let code = section.split("```python\n").nth(1).expect("a python block");
    let code = code.split("\n```").next().unwrap();
    let printed = |what: &str| {
        section
            .split(&format!("- {what}: `"))
            .nth(1)
            .and_then(|s| s.split('`').next())
            .unwrap_or_else(|| panic!("the example's {what}"))
            .to_string()
    };
    let check = format!(
        r#"
import base64, os, time
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
cred = {{"kid": "k3f9c1a0b2d4e"}}
commander = X25519PrivateKey.from_private_bytes(b"\x01" * 32)
exchange = X25519PrivateKey.from_private_bytes(b"\x02" * 32)
public = exchange.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
commander_public = commander.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
assert base64.b64encode(commander_public).decode() == "{commander}", "commander public"
assert base64.b64encode(public).decode() == "{agent}", "agent public"
secret = session_secret("coder-7", "{commander}")
assert base64.b64encode(secret).decode() == "{secret}", "secret"
time.time = lambda: 1700000000.0
os.urandom = lambda n: bytes.fromhex("00112233445566778899aabbccddeeff")
frame = maced(secret, "swarm:phase-1:health", b'{{"type":"heartbeat"}}')
header = frame.split(b"\n", 1)[0].decode().split(" ")
assert header[:4] == ["FS1", "k3f9c1a0b2d4e", "1700000000000", "00112233445566778899aabbccddeeff"], header
assert header[4] == "{mac}", header[4]
print("ok")
"#,
        commander = printed("commander public"),
        agent = printed("agent public"),
        secret = printed("secret"),
        mac = printed("mac"),
    );
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(format!("{code}\n{check}"))
        .output()
        .await
        .expect("python3 with cryptography");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
