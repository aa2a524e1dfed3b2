//! Criterion benchmarks of the commander's hot paths:
//! - decoding an inbound message (size check, parse, validation);
//! - signing a message, and checking a signature;
//! - the allocation choice: one task submitted and handed to an agent by the
//!   allocate script, in a pool of 1000 registered agents (a real,
//!   private redis-server: the choice is made in Lua, next to the data);
//! - status assembly: counters -> the fleet view, its table and its JSON;
//! - the scaler's decision on a window of samples.
//!
//!   cargo bench --bench hot_paths
//!
//! (The load scenario is benches/loadtest.sh.)

use criterion::{criterion_group, criterion_main, Criterion};
use fleet_commander::config::Config;
use fleet_commander::reload::write_settings;
use fleet_commander::scaler::{decide, PoolState, Sample};
use fleet_protocol::auth::{unframe, Signer, Unframed};
use fleet_protocol::now_ms;
use fleet_protocol::pool::{AgentStatus, PoolType};
use fleet_protocol::status::render;
use fleet_protocol::task::ValidTask;
use fleet_protocol::{decode, Channel, Resources};
use fleet_store::registry::{Counts, NewAgent, Registry};
use fleet_store::tasks::TaskStore;
use fleet_store::Keys;
use fleet_testkit::RedisServer;
use std::hint::black_box;

fn config() -> Config {
    Config::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/fleet.toml"
    )))
    .expect("shipped config")
}

fn decoding(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    let heartbeat = br#"{"v":1,"type":"heartbeat","agentId":"coder-7","status":"busy","load":0.8,"resources":{"memory":310,"cpu":0.4,"network":12},"seq":42}"#;
    let register = br#"{"v":1,"type":"register","id":"5b0c8f1e-0d5e-4a43-9d86-1c1f3b7e2a10","agentId":"coder-7","pool":"coder","capabilities":["rust","testing"],"priority":7,"resources":{"memory":256,"cpu":0.25,"network":10}}"#;
    let complete = br#"{"v":1,"type":"task_complete","taskId":"0b7c6a9e-4f7c-4a43-9d86-1c1f3b7e2a10","attempt":1,"agentId":"coder-7","result":{"lines":120}}"#;
    let malformed = br#"{"v":1,"type":"heartbeat","agentId":"coder 7!","status":"sleeping"}"#;
    for (name, ch, msg) in [
        ("heartbeat", Channel::Health, &heartbeat[..]),
        ("register", Channel::Registry, &register[..]),
        ("task_complete", Channel::Results, &complete[..]),
        ("malformed_refused", Channel::Health, &malformed[..]),
    ] {
        g.bench_function(name, |b| b.iter(|| decode(ch, black_box(msg), 16384)));
    }
    g.finish();
}

/// Signing one heartbeat (an agent's cost per message, and the commander's
/// per task_assign) and checking one (the commander's per inbound message:
/// header split, signing input, Ed25519 verify); and the same with a
/// session's MAC.
fn signing(c: &mut Criterion) {
    let mut g = c.benchmark_group("signature");
    let heartbeat = br#"{"v":1,"type":"heartbeat","agentId":"coder-7","status":"busy","load":0.8,"resources":{"memory":310,"cpu":0.4,"network":12},"seq":42}"#;
    let channel = "swarm:phase-1:health";
    let signer = Signer::new("k0123456789ab", &[3; 32]);
    let public = signer.public();
    g.bench_function("sign_heartbeat", |b| {
        b.iter(|| signer.sign(channel, black_box(heartbeat), now_ms()))
    });
    let signed = signer.sign(channel, heartbeat, now_ms());
    g.bench_function("verify_heartbeat", |b| {
        b.iter(|| match unframe(black_box(&signed)) {
            Ok(Unframed::Signed(s)) => assert!(s.verify(channel, &public)),
            _ => unreachable!(),
        })
    });
    // The same with a session (FS1): an HMAC-SHA256 in place of Ed25519.
    let x = fleet_protocol::session::Exchange::random();
    let session = x
        .session(&x.public_b64(), "coder-7", &x.public_b64())
        .unwrap();
    g.bench_function("mac_heartbeat", |b| {
        b.iter(|| session.seal("k0123456789ab", channel, black_box(heartbeat), now_ms()))
    });
    let maced = session.seal("k0123456789ab", channel, heartbeat, now_ms());
    g.bench_function("check_mac_heartbeat", |b| {
        b.iter(|| match unframe(black_box(&maced)) {
            Ok(Unframed::Signed(s)) => assert!(session.verify(channel, &s)),
            _ => unreachable!(),
        })
    });
    g.finish();
}

fn counts(per_pool: u64) -> Counts {
    let mut c = Counts::default();
    for pool in PoolType::ALL {
        let m = c.by_pool.entry(pool).or_default();
        for (i, st) in AgentStatus::ALL.into_iter().enumerate() {
            m.insert(st, per_pool / (i as u64 + 1));
        }
    }
    c
}

fn status_assembly(c: &mut Criterion) {
    let config = config();
    let counts = counts(60);
    let mut g = c.benchmark_group("status");
    g.bench_function("assemble", |b| {
        b.iter(|| fleet_commander::status::fleet(&config, black_box(&counts), 1))
    });
    let s = fleet_commander::status::fleet(&config, &counts, 1);
    g.bench_function("assemble_json", |b| {
        b.iter(|| {
            serde_json::to_vec(&fleet_commander::status::fleet(
                &config,
                black_box(&counts),
                1,
            ))
        })
    });
    g.bench_function("render_table", |b| b.iter(|| render(black_box(&s))));
    g.finish();
}

fn scaler_decision(c: &mut Criterion) {
    let policy = config().scaling;
    let mut st = PoolState::default();
    for i in 0..10u64 {
        st.samples.push_back(Sample {
            at: i * 1000,
            live: 20,
            held: 0,
            busy: 18,
            queued: 30,
            oldest_wait_ms: 2500,
        });
    }
    c.bench_function("scaler/decide_10_samples", |b| {
        b.iter(|| decide(&policy, 2, 200, None, black_box(&st), 20_000))
    });
}

/// Submit one task and run the allocate script on a pool of 1000 agents.
fn allocation(c: &mut Criterion) {
    let redis = RedisServer::start().expect("redis-server on PATH");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut config = config();
    config.redis.url = redis.url();
    config.fleet.max_agents = 2000;
    config.pools.get_mut(&PoolType::Coder).unwrap().max_agents = 1500;
    let keys = Keys::new(config.fleet.prefix.clone());
    let (mut conn, registry, tasks) = rt.block_on(async {
        let client = fleet_store::connection::client(&redis.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let epoch = Registry::claim_epoch(&mut conn, &keys).await.unwrap();
        fleet_store::scripts::load_all(&mut conn).await.unwrap();
        write_settings(&mut conn, &keys, &config).await.unwrap();
        let registry = Registry::new(keys.clone(), epoch);
        let tasks = TaskStore::new(keys.clone(), epoch, config.task_policy());
        (conn, registry, tasks)
    });
    rt.block_on(async {
        for i in 0..1000 {
            let id = format!("coder-{i}");
            registry
                .register(
                    &mut conn,
                    &NewAgent {
                        id: &id,
                        pool: PoolType::Coder,
                        agent_type: "coder",
                        priority: (i % 10) as u8 + 1,
                        capabilities: &[],
                        resources: Resources {
                            memory: 256.0,
                            cpu: 0.25,
                            network: 10.0,
                        },
                        pool_max: 1500,
                        fleet_max: 2000,
                        // Room for every iteration without completing tasks.
                        capacity: 100_000,
                        instance: "bench",
                        session_key: "",
                    },
                    now_ms(),
                    None,
                    None,
                )
                .await
                .unwrap();
        }
    });
    let task = ValidTask {
        pool: PoolType::Coder,
        capabilities: vec![],
        priority: 5,
        payload: "{}".into(),
        timeout_ms: 3_600_000,
        max_retries: 3,
        client_id: None,
        progress_timeout_ms: None,
        max_cost: None,
    };
    c.bench_function("allocation/submit_and_assign_1000_agents", |b| {
        b.to_async(&rt).iter(|| {
            let (mut conn, tasks, task) = (conn.clone(), &tasks, &task);
            async move {
                tasks.submit(&mut conn, task, now_ms()).await.unwrap();
                let a = tasks
                    .allocate(&mut conn, PoolType::Coder, 1, now_ms())
                    .await
                    .unwrap();
                assert_eq!(a.assigned, 1);
            }
        })
    });
}

criterion_group!(
    benches,
    decoding,
    signing,
    status_assembly,
    scaler_decision,
    allocation
);
criterion_main!(benches);
