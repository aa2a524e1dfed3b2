//! Python agents against a real commander with security on: the example
//! (examples/python_agent.py, on the SDK) joins, does a task and leaves;
//! the SDK's own pytest suite (sdk/python/tests) runs against the binary.

use crate::common::*;
use fleet_protocol::api;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_agent_registers_does_a_task_and_leaves() {
    let h = Harness::start().await;
    let mut registry = h.listen(&h.keys.channels().registry()).await;
    // A task waits for the agent; the Python agent must do it.
    let task_id = submit(
        &h,
        serde_json::json!({"pool": "ui", "payload": {"say": "hello"}}),
    )
    .await;
    // This Redis runs without ACLs (sdk/python's tests run with them): the
    // agent is refused its ACL user, says so, and connects as the URL says.
    let cred = h
        .credential("py-1", fleet_protocol::pool::PoolType::Ui)
        .await;
    let out = python_example(&h.redis.url(), &cred, 1).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python agent failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("registering py-1 in ui"), "{stdout}");
    assert!(stdout.contains("left after 1 task(s)"), "{stdout}");
    assert_eq!(
        stderr.matches("acl --apply").count(),
        1,
        "one warning about the missing ACL user: {stderr}"
    );
    registry
        .wait_for("agent_registered", is("agent_registered", "py-1"))
        .await;
    registry
        .wait_for("agent_deregistered", is("agent_deregistered", "py-1"))
        .await;
    assert!(h.metric("fleet_heartbeats_total").await >= 1.0);
    let (_, t) = h.get(&api::path(api::TASK, &task_id)).await;
    assert_eq!(t["state"], "completed", "{t}\n{stdout}");
    assert_eq!(t["result"]["echo"]["say"], "hello");
    assert_eq!(t["result"]["by"], "python");
    let (_, fleet) = h.get(api::FLEET).await;
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
