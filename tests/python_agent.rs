//! An agent written in Python from docs/PROTOCOL.md alone (redis-py) joins,
//! heartbeats and leaves a fleet run by the commander.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_agent_from_the_protocol_doc_registers_heartbeats_and_leaves() {
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
    let child = tokio::process::Command::new("python3")
        .args([
            script,
            "--url",
            &h.redis.url(),
            "--id",
            "py-1",
            "--pool",
            "ui",
            "--beats",
            "6",
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
    assert!(stdout.contains("registered py-1 in ui"), "{stdout}");
    assert!(stdout.contains("deregistered: True"), "{stdout}");
    registry
        .wait_for("agent_registered", is("agent_registered", "py-1"))
        .await;
    registry
        .wait_for("agent_deregistered", is("agent_deregistered", "py-1"))
        .await;
    assert!(h.metric("fleet_heartbeats_total").await >= 6.0);
    let (_, t) = h.get(&format!("/v1/tasks/{task_id}")).await;
    assert_eq!(t["state"], "completed", "{t}\n{stdout}");
    assert_eq!(t["result"]["echo"]["say"], "hello");
    assert_eq!(t["result"]["by"], "python");
    let (_, fleet) = h.get("/v1/fleet").await;
    assert_eq!(fleet["totalAgents"], 0);
}
