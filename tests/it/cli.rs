//! The binary as an operator drives it: `status`, `demo` without Redis, and
//! the simulator's report.

use crate::common::*;
use fleet_protocol::api;
use fleet_protocol::pool::PoolType;
use fleet_sim::sim::{self, SimOptions};
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_fleet-commander");
const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/fleet.toml");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_prints_the_fleet_over_http() {
    let h = Harness::start().await;
    for (i, pool) in [PoolType::Coder, PoolType::Coder, PoolType::Ui]
        .iter()
        .enumerate()
    {
        h.agent(&format!("cli-{i}"), *pool)
            .await
            .register(Duration::from_secs(5))
            .await
            .unwrap();
    }
    // One validator (governance).
    let mut v = spec("cli-validator", PoolType::Coordinator);
    v.capabilities = vec!["validator".into()];
    h.agent_with(v)
        .await
        .register(Duration::from_secs(5))
        .await
        .unwrap();
    let out = Command::new(BIN)
        .args(["--config", CONFIG, "status", "--json", "--url", &h.base()])
        .env("FLEET_TOKEN", &h.token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["totalAgents"], 4);
    assert_eq!(s["pools"]["coder"]["byStatus"]["idle"], 2);
    assert_eq!(s["validators"], serde_json::json!({"n": 1, "f": 0}));

    let out = Command::new(BIN)
        .args(["--config", CONFIG, "status", "--url", &h.base()])
        .env("FLEET_TOKEN", &h.token)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("queued") && l.contains("quarantined")),
        "queue and quarantine columns: {table}"
    );
    assert!(table.starts_with("fleet: 4 agents"), "{table}");
    assert!(
        table.contains("validators: 1 (tolerates f = 0 lying)"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.trim_start().starts_with("ui ") && l.contains(" 1 ")),
        "{table}"
    );
}

#[test]
fn demo_without_redis_says_how_to_get_it() {
    let out = Command::new(BIN)
        .args(["--config", CONFIG, "demo"])
        .env_remove("REDIS_URL")
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no REDIS_URL given"), "{err}");
    assert!(err.contains("apt-get install redis-server"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_counts_refused_submissions_rather_than_measuring_nothing() {
    // A viewer's token: the fleet may be read, but every submission is
    // refused (403). The report says so, with the reason, instead of
    // "0/0 completed".
    let h = Harness::start().await;
    let viewer = h
        .token("viewer", fleet_store::tokens::TokenRole::Viewer)
        .await;
    let report = sim::run(
        SimOptions {
            agents: 4,
            status_queries: 0,
            http_token: Some(viewer),
            tasks: sim::TaskLoad {
                count: 10,
                rate: None,
                work: Duration::from_millis(1),
                fail_fraction: 0.0,
                die_fraction: 0.0,
                usage: 0.0,
                batch: 1,
            },
            ..h.sim_options()
        },
        Default::default(),
    )
    .await
    .unwrap();
    let tasks = report.tasks.expect("task report");
    assert_eq!((tasks.submitted, tasks.refused), (0, 10), "{tasks:?}");
    let first = tasks.first_refusal.unwrap_or_default();
    assert!(first.contains("403"), "{first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_registers_a_fleet_detects_stopped_agents_and_reports() {
    let _heavy = heavy().await;
    // This test also runs a task phase in the same process, alongside the
    // other tests of this binary: a 2 s failure window keeps a loaded 2-core
    // machine from faking deaths (1 s produced 5 in one full-suite run).
    // Failing agents sit out 500 ms, not 30 s: the test waits for every task.
    let h = Harness::start_with(|c| {
        c.fleet.missed_heartbeats = 20;
        c.tasks.quarantine_ms = 500;
        // Agents here die at random mid-task (5% of attempts): a task hit
        // twice by chance is not poison, and the test waits for every task.
        c.tasks.poison_after = 0;
    })
    .await;
    let report = sim::run(
        SimOptions {
            // The agents share 4 pub/sub connections (fleet_agent::Router).
            subscribers: 4,
            agents: 64,
            stop: 4,
            status_queries: 20,
            tasks: sim::TaskLoad {
                count: 200,
                rate: None,
                work: Duration::from_millis(1),
                fail_fraction: 0.1,
                die_fraction: 0.05,
                usage: 0.0,
                // Submitted as arrays of 10 (POST /v1/tasks with an array).
                batch: 10,
            },
            ..h.sim_options()
        },
        Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(report.registered, 64, "{report:?}");
    assert_eq!(report.registration.count, 64);
    assert!(report.registration.p99_ms > 0.0);
    assert_eq!(report.status.count, 20);
    assert_eq!(report.status_fresh, Some(true));
    // The machine's floor was measured alongside, every 10 ms of the run.
    assert!(
        report.redis_ping.count > 0 && report.redis_ping.p50_ms > 0.0,
        "{report:?}"
    );
    assert!(report.redis_ping.p50_ms <= report.redis_ping.p99_ms);
    assert_eq!((report.stopped, report.detected), (4, 4), "{report:?}");
    assert_eq!(report.false_deaths, 0);
    let silent = report.detection_after_last_heartbeat.p50_ms;
    assert!(
        silent >= h.config.failure_window().as_millis() as f64,
        "failed only after 3 missed heartbeats: {silent}"
    );
    let tasks = report.tasks.as_ref().expect("task report");
    assert_eq!((tasks.submitted, tasks.completed), (200, 200), "{tasks:?}");
    assert!(
        tasks.attempts_failed > 0,
        "some attempts failed and were retried"
    );
    assert!(
        tasks.agents_died > 0,
        "some agents died mid-task and restarted: {tasks:?}"
    );
    // Dispatch latency counts first attempts that did not die.
    assert!(
        tasks.dispatch.count > 150 && tasks.dispatch.count <= 200,
        "{tasks:?}"
    );
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["registration"]["p99_ms"].is_number());
    // Survivors deregistered at the end; the 4 stopped ones remain, failed.
    let (_, fleet) = h.get(api::FLEET).await;
    assert_eq!(fleet["totalAgents"], 4, "{fleet}");
    assert_eq!(fleet["byStatus"]["failed"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_commands_submit_show_cancel_and_list_dead_letters() {
    let h = Harness::start().await;
    let base = h.base();
    let run = |args: Vec<String>| {
        let out = Command::new(BIN)
            .args(["--config", CONFIG])
            .args(&args)
            .env("FLEET_TOKEN", &h.token)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let (ok, out, err) = tokio::task::block_in_place(|| {
        run(s(&[
            "task",
            "submit",
            "--json",
            "--url",
            &base,
            "--pool",
            "coder",
            "--priority",
            "9",
            "--payload",
            r#"{"job":1}"#,
            "--client-id",
            "cli-1",
        ]))
    });
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = v["task"]["id"].as_str().unwrap().to_string();
    assert_eq!(v["task"]["priority"], 9);
    assert_eq!(v["task"]["payload"]["job"], 1);

    // For people: `key: value` lines; for scripts: --json.
    let (ok, out, _) =
        tokio::task::block_in_place(|| run(s(&["task", "get", "--url", &base, &id])));
    assert!(ok);
    assert!(out.contains("state: queued\n"), "{out}");
    assert!(out.contains(" ago)"), "a human time: {out}");
    let (ok, out, _) =
        tokio::task::block_in_place(|| run(s(&["tasks", "get", "--json", "--url", &base, &id])));
    assert!(ok);
    assert!(out.contains("\"state\": \"queued\""), "{out}");
    // Lists with filters: a table by default.
    let (ok, out, err) = tokio::task::block_in_place(|| {
        run(s(&[
            "tasks", "list", "--url", &base, "--pool", "coder", "--state", "queued",
        ]))
    });
    assert!(ok, "{err}");
    let header = out.lines().next().unwrap_or_default();
    assert!(
        header.contains("id") && header.contains("state") && header.contains("submitted"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.contains(&id) && l.contains("queued")),
        "{out}"
    );
    let (ok, out, _) = tokio::task::block_in_place(|| {
        run(s(&["tasks", "list", "--url", &base, "--pool", "tester"]))
    });
    assert!(ok && !out.contains(&id), "{out}");
    // No agent yet, so no allocation decision yet.
    let (ok, out, err) = tokio::task::block_in_place(|| {
        run(s(&["task", "evidence", "--json", "--url", &base, &id]))
    });
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "[]");
    let (ok, _, err) = tokio::task::block_in_place(|| {
        run(s(&["task", "evidence", "--url", &base, "no such id!"]))
    });
    assert!(!ok && err.contains("invalid_task_id"), "{err}");
    let (ok, _, _) =
        tokio::task::block_in_place(|| run(s(&["task", "cancel", "--url", &base, &id])));
    assert!(ok);
    let (ok, _, err) =
        tokio::task::block_in_place(|| run(s(&["task", "cancel", "--url", &base, &id])));
    assert!(!ok && err.contains("not_cancellable"), "{err}");
    let (ok, _, err) = tokio::task::block_in_place(|| {
        run(s(&["task", "submit", "--url", &base, "--pool", "wizard"]))
    });
    assert!(!ok && err.contains("unknown_pool"), "{err}");
    let (ok, out, _) =
        tokio::task::block_in_place(|| run(s(&["dead-letters", "list", "--json", "--url", &base])));
    assert!(ok);
    assert_eq!(out.trim(), "[]");
    let (ok, out, err) = tokio::task::block_in_place(|| {
        run(s(&["dead-letters", "delete", "--all", "--url", &base]))
    });
    assert!(ok, "{err}");
    assert!(out.contains("deleted: -"), "{out}");
    for verb in ["pause", "resume", "clear"] {
        let (ok, out, err) =
            tokio::task::block_in_place(|| run(s(&["queue", verb, "tester", "--url", &base])));
        assert!(ok, "queue {verb}: {err}");
        assert!(out.contains("pool: tester"), "{out}");
    }
    let (ok, out, _) = tokio::task::block_in_place(|| run(s(&["poison", "list", "--url", &base])));
    assert!(ok);
    assert!(out.trim().ends_with("0 task(s)"), "{out}");
    let (ok, _, err) =
        tokio::task::block_in_place(|| run(s(&["poison", "requeue", "--url", &base, &id])));
    assert!(!ok && err.contains("not_poison"), "{err}");

    // Budgets: the shipped allowance, a top-up, an agent that is not there.
    let mut a = h.agent("cli-budget", PoolType::Coder).await;
    a.register(Duration::from_secs(5)).await.unwrap();
    let (ok, out, err) = tokio::task::block_in_place(|| {
        run(s(&[
            "budget",
            "show",
            "--json",
            "--url",
            &base,
            "cli-budget",
        ]))
    });
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["balance"], h.config.budgets.allowance, "{v}");
    // Agents: a list with filters, one agent's record.
    let (ok, out, err) = tokio::task::block_in_place(|| {
        run(s(&["agents", "list", "--url", &base, "--pool", "coder"]))
    });
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.contains("cli-budget") && l.contains("idle")),
        "{out}"
    );
    assert!(out.contains("1 of 1 agents"), "{out}");
    let (ok, out, _) =
        tokio::task::block_in_place(|| run(s(&["agents", "list", "--url", &base, "--pool", "ui"])));
    assert!(ok && out.contains("0 of 0 agents"), "{out}");
    let (ok, out, err) =
        tokio::task::block_in_place(|| run(s(&["agents", "get", "--url", &base, "cli-budget"])));
    assert!(ok, "{err}");
    assert!(
        out.contains("pool: coder\n") && out.contains("health:\n"),
        "{out}"
    );
    let (ok, out, err) = tokio::task::block_in_place(|| {
        run(s(&[
            "budget",
            "topup",
            "--json",
            "--url",
            &base,
            "cli-budget",
            "500",
        ]))
    });
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["balance"], h.config.budgets.allowance + 500.0, "{v}");
    let (ok, _, err) =
        tokio::task::block_in_place(|| run(s(&["budget", "reset", "--url", &base, "nobody"])));
    assert!(!ok && err.contains("not_found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_commands_init_issue_list_rotate_and_revoke() {
    let h = Harness::start().await;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("keys-cli");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("commander.key");
    let keys = |args: &[&str]| {
        Command::new(BIN)
            .args([
                "--config",
                concat!(env!("CARGO_MANIFEST_DIR"), "/config/fleet.toml"),
                "keys",
            ])
            .args(args)
            .env("REDIS_URL", h.redis.url())
            .env("FLEET_COMMANDER_KEY", &key)
            // As in a container: no USER or LOGNAME.
            .env_remove("USER")
            .env_remove("LOGNAME")
            .output()
            .unwrap()
    };
    let init = keys(&["init"]);
    assert!(init.status.success(), "{init:?}");
    assert!(
        !keys(&["init"]).status.success(),
        "init refuses to replace a key"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let issued = keys(&["issue", "cli-1", "--pool", "coder"]);
    assert!(issued.status.success(), "{issued:?}");
    let cred = fleet_protocol::auth::Credential::parse(&String::from_utf8_lossy(&issued.stdout))
        .expect("the credential on stdout");
    // Audited under the operator's name and host, even without USER.
    let mut conn = fleet_store::connection::connect(&h.redis.url())
        .await
        .unwrap();
    let entries = fleet_store::audit::list(&mut conn, &h.keys, 10)
        .await
        .unwrap();
    let issued_by = entries
        .iter()
        .find(|e| e.action == "key_issued")
        .map(|e| e.actor.clone())
        .expect("key_issued audited");
    assert!(
        issued_by.starts_with("cli:") && issued_by != "cli:unknown" && issued_by.contains('@'),
        "{issued_by}"
    );
    assert_eq!(
        (cred.subject.as_str(), cred.pool),
        ("cli-1", Some(PoolType::Coder))
    );
    assert!(!keys(&["issue", "cli-2", "--pool", "wizard"])
        .status
        .success());
    // Issuing again for the same agent would leave two keys working: refused,
    // with what to run instead.
    let twice = keys(&["issue", "cli-1", "--pool", "coder"]);
    assert!(!twice.status.success());
    let err = String::from_utf8_lossy(&twice.stderr);
    assert!(
        err.contains("already has 1 usable key") && err.contains("keys rotate cli-1"),
        "{err}"
    );

    let list = String::from_utf8_lossy(&keys(&["list"]).stdout).to_string();
    assert!(
        list.contains(&cred.kid) && list.contains("active"),
        "{list}"
    );
    assert!(!list.contains(&cred.secret), "list never shows a secret");

    let rotated = keys(&["rotate", "cli-1", "--overlap-ms", "60000"]);
    assert!(rotated.status.success(), "{rotated:?}");
    let new =
        fleet_protocol::auth::Credential::parse(&String::from_utf8_lossy(&rotated.stdout)).unwrap();
    let list = String::from_utf8_lossy(&keys(&["list", "--json"]).stdout).to_string();
    let recs: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
    let state = |kid: &str| {
        let r = recs.iter().find(|r| r["kid"] == kid).unwrap();
        (r["expiresMs"].is_u64(), r["revokedMs"].is_u64())
    };
    assert_eq!(
        state(&cred.kid),
        (true, false),
        "the old key is rotating out"
    );
    assert_eq!(state(&new.kid), (false, false));

    // The old key alone, by its id, while the new one stays in use.
    assert!(keys(&["revoke", "--kid", &cred.kid]).status.success());
    let list = String::from_utf8_lossy(&keys(&["list"]).stdout).to_string();
    assert_eq!(list.matches("revoked").count(), 1, "{list}");
    assert!(
        list.lines()
            .any(|l| l.contains(&new.kid) && !l.contains("revoked")),
        "{list}"
    );
    assert!(keys(&["revoke", "cli-1"]).status.success());
    let list = String::from_utf8_lossy(&keys(&["list"]).stdout).to_string();
    assert_eq!(list.matches("revoked").count(), 2, "{list}");
    assert!(
        !keys(&["revoke", "cli-1"]).status.success(),
        "nothing left to revoke"
    );

    // Grants: given at issue, listed, audited, kept by a rotation unless
    // replaced; refused for a submitter and out of range.
    let v = keys(&[
        "issue",
        "cli-v",
        "--pool",
        "coordinator",
        "--validator-weight",
        "3",
        "--max-capacity",
        "4",
    ]);
    assert!(v.status.success(), "{v:?}");
    let list = String::from_utf8_lossy(&keys(&["list"]).stdout).to_string();
    assert!(
        list.lines()
            .any(|l| l.contains("cli-v") && l.ends_with("validator:3 capacity<=4")),
        "{list}"
    );
    let entries = fleet_store::audit::list(&mut conn, &h.keys, 10)
        .await
        .unwrap();
    let issued = entries
        .iter()
        .find(|e| e.action == "key_issued" && e.target.starts_with("cli-v"))
        .unwrap();
    assert_eq!(issued.result, "grants validator:3 capacity<=4");
    assert!(keys(&["rotate", "cli-v", "--overlap-ms", "0"])
        .status
        .success());
    assert!(keys(&[
        "rotate",
        "cli-v",
        "--overlap-ms",
        "0",
        "--max-priority",
        "9"
    ])
    .status
    .success());
    let recs: Vec<serde_json::Value> =
        serde_json::from_slice(&keys(&["list", "--json"]).stdout).unwrap();
    let mut grants: Vec<(u64, serde_json::Value)> = recs
        .iter()
        .filter(|r| r["subject"] == "cli-v")
        .map(|r| (r["createdMs"].as_u64().unwrap(), r["grants"].clone()))
        .collect();
    grants.sort_by_key(|g| g.0);
    let grants: Vec<_> = grants.into_iter().map(|g| g.1).collect();
    assert_eq!(
        grants,
        [
            serde_json::json!({"validatorWeight": 3, "maxCapacity": 4}),
            serde_json::json!({"validatorWeight": 3, "maxCapacity": 4}),
            serde_json::json!({"maxPriority": 9}),
        ],
        "{recs:?}"
    );
    // Many at once: ids as arguments and from a file, each credential to
    // its own private file; one already keyed refuses the whole batch.
    let list_file = dir.join("agents.txt");
    std::fs::write(&list_file, "# the batch\nb-2\nb-3  # trailing comment\n\n").unwrap();
    let out_dir = dir.join("creds");
    let batch = keys(&[
        "issue",
        "b-1",
        "--from",
        list_file.to_str().unwrap(),
        "--pool",
        "ui",
        "--out-dir",
        out_dir.to_str().unwrap(),
    ]);
    assert!(batch.status.success(), "{batch:?}");
    for id in ["b-1", "b-2", "b-3"] {
        let path = out_dir.join(format!("{id}.cred"));
        let c = fleet_protocol::auth::Credential::parse(&std::fs::read_to_string(&path).unwrap())
            .unwrap();
        assert_eq!((c.subject.as_str(), c.pool), (id, Some(PoolType::Ui)));
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let again = keys(&[
        "issue",
        "b-9",
        "b-3",
        "--pool",
        "ui",
        "--out-dir",
        out_dir.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(
        !out_dir.join("b-9.cred").exists(),
        "nothing issued when one is refused"
    );
    let many = keys(&["issue", "b-7", "b-8", "--pool", "ui"]);
    assert!(
        String::from_utf8_lossy(&many.stderr).contains("--out-dir"),
        "{many:?}"
    );

    let sub = keys(&["issue", "cli-s", "--submitter", "--max-capacity", "4"]);
    assert!(!sub.status.success());
    assert!(String::from_utf8_lossy(&sub.stderr).contains("a submitter's key has none"));
    assert!(!keys(&[
        "issue",
        "cli-w",
        "--pool",
        "coder",
        "--validator-weight",
        "101"
    ])
    .status
    .success());
}

/// `agent` as a newcomer runs it: without a credential under the shipped
/// (signed) config it says at once what to run; with one, the pool comes
/// from the credential, the agent does a task, and SIGTERM makes it leave
/// cleanly (deregistered, exit 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_command_takes_its_pool_from_the_credential_and_leaves_on_sigterm() {
    let h = Harness::start().await;
    let out = Command::new(BIN)
        .args(["--config", CONFIG, "agent", "--pool", "coder"])
        .env("REDIS_URL", h.redis.url())
        .env("FLEET_COMMANDER_KEY", test_commander_key())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("needs a credential") && err.contains("keys issue"),
        "{err}"
    );

    let cred = h.credential("cli-agent", PoolType::Tester).await;
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-agent.cred");
    std::fs::write(&file, serde_json::to_string(&cred).unwrap()).unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .args(["--config", CONFIG, "agent", "--credential"])
        .arg(&file)
        .env("REDIS_URL", h.redis.url())
        .env("FLEET_COMMANDER_KEY", test_commander_key())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_until(|| async { h.get(&api::path(api::AGENT, "cli-agent")).await.0 == 200 }).await;
    let (_, a) = h.get(&api::path(api::AGENT, "cli-agent")).await;
    assert_eq!(a["pool"], "tester", "{a}");
    let id = submit(
        &h,
        serde_json::json!({"pool": "tester", "payload": {"n": 1}}),
    )
    .await;
    let t = wait_state(&h, &id, "completed").await;
    assert_eq!(t["agentId"], "cli-agent", "{t}");
    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("the agent leaves in time")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        h.get(&api::path(api::AGENT, "cli-agent")).await.0,
        404,
        "deregistered"
    );
}

/// A reader that went away (`status | head -1`, here a reader gone before
/// the first write) ends the command quietly
/// with status 0, not a panic (101); a request without a token says how to
/// get one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_is_a_clean_exit_and_a_401_says_what_to_do() {
    let h = Harness::start().await;
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; (sleep 0.3; {BIN} --config {CONFIG} status --url {}) | true",
            h.base()
        ))
        .env("FLEET_TOKEN", &h.token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args([
            "--config",
            CONFIG,
            "dead-letters",
            "list",
            "--url",
            &h.base(),
        ])
        .env_remove("FLEET_TOKEN")
        .env_remove("FLEET_TOKEN_FILE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("401") && err.contains("tokens issue") && err.contains("FLEET_TOKEN_FILE"),
        "{err}"
    );
}

/// The demo, small: every figure it prints, then its closing verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_demo_ends_with_its_verdict() {
    let redis = fleet_testkit::RedisServer::start().expect("redis-server");
    let out = tokio::process::Command::new(BIN)
        .args([
            "--config", CONFIG, "demo", "--agents", "20", "--tasks", "50",
        ])
        .args([
            "--kill",
            "0",
            "--status-queries",
            "10",
            "--skip-autoscaling",
        ])
        .env("REDIS_URL", redis.url())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the demo finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("connected 20 agents, each signing"),
        "{stdout}"
    );
    assert!(stdout.contains("mostly the wait in the queue"), "{stdout}");
    let verdict = stdout.lines().last().unwrap_or_default();
    assert!(
        verdict.starts_with("demo: all checks passed (every agent registered;")
            && verdict.contains("50 tasks completed")
            && !verdict.contains("grew"),
        "{verdict}"
    );
}

/// A fleet that joins slowly (three failure windows from the first agent
/// to the last) is not declared dead as it joins: each simulated agent
/// heartbeats from its registration on, as a real one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowly_joining_simulated_fleet_beats_from_its_first_registration() {
    let _heavy = heavy().await;
    // A 2 s window (as above: a loaded machine fakes deaths at 1 s).
    let h = Harness::start_with(|c| c.fleet.missed_heartbeats = 20).await;
    let window = h.config.failure_window();
    let agents = 36;
    let report = sim::run(
        SimOptions {
            subscribers: 2,
            agents,
            batch: 1,
            // The whole join takes three windows.
            join_rate: Some(agents as f64 / (3.0 * window.as_secs_f64())),
            ..h.sim_options()
        },
        Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(report.registered, agents, "{report:?}");
    assert_eq!(report.false_deaths, 0, "{report:?}");
}
