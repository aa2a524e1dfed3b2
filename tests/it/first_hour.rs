//! A new user's first hour, from the docs alone: the README's "Your first
//! hour" block runs as printed (in bash, in a copy of the repository's
//! config, examples and SDK) against a private Redis and port, and ends with
//! a task completed by the Python agent; then the ten lines of Python the
//! README and sdk/python/README.md print (the same in both) run as an agent
//! of the installed SDK and complete a task of their own.
//!
//! The only departures from the printed lines: `cargo build` and
//! `redis-server` are skipped (the test's binary and Redis are used:
//! `PATH`, `REDIS_URL`, `FLEET_HTTP_ADDR`), pip installs into a virtual
//! environment (the SDK's dependencies come from the system's site-packages;
//! pip fetches only its build backend, setuptools, from PyPI), and the
//! Python lines' Redis URL is the test's.

use crate::common::docs::{bash, block_after, workdir};
use crate::common::*;
use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_first_hour_runs_as_printed_and_a_python_agent_completes_a_task() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let block = block_after(&readme, "<!-- first-hour:", "sh");
    let lines: Vec<&str> = block
        .lines()
        .filter(|l| !l.starts_with("cargo build") && !l.starts_with("redis-server"))
        .collect();
    assert!(
        lines.len() >= 8,
        "the first hour's lines, less the two skipped: {lines:?}"
    );

    let redis = fleet_testkit::RedisServer::start().expect("redis-server");
    let dir = workdir();
    let venv = dir.join("venv");
    let made = std::process::Command::new("python3")
        .args(["-m", "venv", "--system-site-packages"])
        .arg(&venv)
        .status()
        .expect("python3 runs");
    assert!(made.success(), "python3 -m venv");
    let bin = Path::new(env!("CARGO_BIN_EXE_fleet-commander"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}:{}",
        venv.join("bin").display(),
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let addr = free_addr();
    let env = [
        ("PATH", path),
        ("REDIS_URL", redis.url()),
        ("FLEET_HTTP_ADDR", addr.clone()),
        ("PIP_DISABLE_PIP_VERSION_CHECK", "1".to_string()),
    ];
    let script = format!("set -euo pipefail\n{}", lines.join("\n"));
    let out = bash(&dir, &env, &script).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = std::fs::read_to_string(dir.join("commander.log")).unwrap_or_default();
    let all = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- commander.log\n{log}");
    assert!(out.status.success(), "the first hour failed:\n{all}");
    assert!(stdout.contains("state: completed\n"), "{all}");
    assert!(stdout.contains("agentId: coder-7\n"), "{all}");
    assert!(stdout.contains("by: python\n"), "{all}");
    assert!(stdout.contains("coder"), "status shows the pools: {all}");
    // Quiet without a spawner: the start-up lines and little else.
    assert!(log.lines().count() < 40, "{log}");

    // The ten lines, the same in the README and the SDK's README, as an
    // agent of the SDK installed above; a task only it can take.
    let sdk_readme = std::fs::read_to_string(Path::new(ROOT).join("sdk/python/README.md")).unwrap();
    let ten = block_after(&sdk_readme, "## An agent in ten lines", "python");
    assert_eq!(
        ten,
        block_after(&readme, "### Writing an agent", "python"),
        "the README and sdk/python/README.md print the same agent"
    );
    assert!(ten.contains("redis://127.0.0.1:6379"), "{ten}");
    std::fs::write(
        dir.join("agent.py"),
        ten.replace("redis://127.0.0.1:6379", &redis.url()),
    )
    .unwrap();
    let script = format!(
        "set -euo pipefail\n\
         fleet-commander run > commander2.log 2>&1 &\n\
         python3 {agent} > agent.log 2>&1 &\n\
         export FLEET_TOKEN_FILE=\"$PWD/me.token\"\n\
         fleet-commander task submit --pool coder --capability rust --payload '{{\"file\":\"main.rs\"}}' --wait 60s\n\
         kill %2\n\
         wait %2\n",
        agent = dir.join("agent.py").display()
    );
    let out = bash(&dir, &env, &script).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let agent_log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    let all = format!(
        "--- stdout\n{stdout}\n--- stderr\n{}\n--- agent.log\n{agent_log}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the ten lines' agent failed:\n{all}");
    assert!(stdout.contains("state: completed\n"), "{all}");
    assert!(stdout.contains("file: main.rs\n"), "{all}");
    let _ = std::fs::remove_dir_all(&dir);
}
