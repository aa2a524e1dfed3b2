//! Python agents against a real commander with security on: the example
//! (examples/python_agent.py, on the SDK) joins, does a task and leaves;
//! the SDK's own pytest suite (sdk/python/tests) runs against the binary.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_agent_registers_does_a_task_and_leaves() {
    let h = Harness::start().await;
    let mut registry = h.listen(&h.keys.channels().registry()).await;
    // A task waits for the agent; the Python agent must do it.
    let r = h
        .http
        .post(format!("{}/v1/tasks", h.base()))
        .json(&serde_json::json!({"pool": "ui", "payload": {"say": "hello"}}))
        .send()
        .await
        .unwrap();
    let task: serde_json::Value = r.json().await.unwrap();
    let task_id = task["task"]["id"].as_str().unwrap().to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python_agent.py");
    let mut cred = h
        .credential("py-1", fleet_protocol::pool::PoolType::Ui)
        .await;
    // This Redis runs without ACLs (sdk/python's tests run with them).
    (cred.redis_user, cred.redis_password) = (None, None);
    let cred_file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("py-1.cred");
    std::fs::write(&cred_file, serde_json::to_string(&cred).unwrap()).unwrap();
    let child = tokio::process::Command::new("python3")
        .args([
            script,
            "--url",
            &h.redis.url(),
            "--credential",
            cred_file.to_str().unwrap(),
            "--tasks",
            "1",
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), child)
        .await
        .expect("python agent finishes")
        .expect("python3 runs (with redis-py: pip install redis)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python agent failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("registering py-1 in ui"), "{stdout}");
    assert!(stdout.contains("left after 1 task(s)"), "{stdout}");
    registry
        .wait_for("agent_registered", is("agent_registered", "py-1"))
        .await;
    registry
        .wait_for("agent_deregistered", is("agent_deregistered", "py-1"))
        .await;
    assert!(h.metric("fleet_heartbeats_total").await >= 1.0);
    let (_, t) = h.get(&format!("/v1/tasks/{task_id}")).await;
    assert_eq!(t["state"], "completed", "{t}\n{stdout}");
    assert_eq!(t["result"]["echo"]["say"], "hello");
    assert_eq!(t["result"]["by"], "python");
    let (_, fleet) = h.get("/v1/fleet").await;
    assert_eq!(fleet["totalAgents"], 0);
}

#[test]
fn the_python_sdk_tests_pass_against_the_binary() {
    let out = std::process::Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/sdk/python"))
        .env("FLEET_BIN", env!("CARGO_BIN_EXE_fleet-commander"))
        .output()
        .expect("python3 runs (pip install pytest redis cryptography)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pytest failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" passed"), "{stdout}");
}
