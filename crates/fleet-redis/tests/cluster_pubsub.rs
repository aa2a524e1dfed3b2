//! What redis-rs's cluster client (RESP3, the version in use) does with a
//! sharded subscription (`SSUBSCRIBE`) when the channel's slot migrates to
//! another master. Several clients have had such subscriptions die
//! silently (node-redis #3311, StackExchange.Redis #2969); the fleet's
//! channels will be sharded on a cluster (issue 28), so what this one does
//! is checked here against a real Redis Cluster, not assumed.

use fleet_testkit::RedisCluster;
use redis::{PushInfo, PushKind, Value};
use std::time::Duration;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

const WAIT: Duration = Duration::from_secs(5);

fn plain(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap()
}

fn myid(port: u16) -> String {
    redis::cmd("CLUSTER")
        .arg("MYID")
        .query(&mut plain(port))
        .unwrap()
}

fn spublish(port: u16, channel: &str, msg: &str) -> u64 {
    redis::cmd("SPUBLISH")
        .arg(channel)
        .arg(msg)
        .query(&mut plain(port))
        .unwrap()
}

/// The next push of `kind` within `within`, skipping others.
async fn next_push(
    rx: &mut UnboundedReceiver<PushInfo>,
    kind: PushKind,
    within: Duration,
) -> Option<PushInfo> {
    tokio::time::timeout(within, async {
        while let Some(p) = rx.recv().await {
            if p.kind == kind {
                return Some(p);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

fn text(v: &Value) -> String {
    redis::from_redis_value(v.clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_subscription_is_told_of_its_slots_migration_and_not_moved_with_it() {
    let c = RedisCluster::start(3, 0).expect("a cluster");
    let channel = "{fleet-migrate}:agent:a-1";
    let slot = c.slot_of(channel).expect("its slot");
    let from = c.master_of_slot(slot).expect("its master");
    let to = c
        .nodes()
        .iter()
        .map(|n| n.port())
        .find(|&p| p != from)
        .expect("another master");

    let (tx, mut rx) = unbounded_channel();
    let client = redis::cluster::ClusterClientBuilder::new(
        c.seeds()
            .iter()
            .map(|s| format!("redis://{s}/?protocol=3"))
            .collect::<Vec<_>>(),
    )
    .use_protocol(redis::ProtocolVersion::RESP3)
    .push_sender(tx)
    .build()
    .unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    conn.ssubscribe(channel).await.unwrap();
    next_push(&mut rx, PushKind::SSubscribe, WAIT)
        .await
        .expect("subscribed");
    assert_eq!(spublish(from, channel, "before"), 1, "one subscriber");
    let got = next_push(&mut rx, PushKind::SMessage, WAIT)
        .await
        .expect("a message before the migration");
    assert_eq!(text(&got.data[1]), "before");

    // The slot moves (it holds no keys, so nothing to MIGRATE): importing
    // on the new owner, migrating on the old, then given to the new owner
    // on every master.
    let (from_id, to_id) = (myid(from), myid(to));
    let setslot = |port: u16, args: &[&str]| {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SETSLOT").arg(slot);
        for a in args {
            cmd.arg(*a);
        }
        let () = cmd.query(&mut plain(port)).unwrap();
    };
    setslot(to, &["IMPORTING", &from_id]);
    setslot(from, &["MIGRATING", &to_id]);
    for n in c.nodes() {
        setslot(n.port(), &["NODE", &to_id]);
    }
    assert_eq!(c.master_of_slot(slot), Some(to), "the slot moved");

    // The old owner drops the subscription and says so: an unsolicited
    // SUNSUBSCRIBE reaches the client.
    let gone = next_push(&mut rx, PushKind::SUnsubscribe, WAIT)
        .await
        .expect("an unsolicited sunsubscribe");
    assert_eq!(text(&gone.data[0]), channel);
    // And redis-rs does not follow the slot by itself: for 3 s the new
    // owner has no subscriber, so what is published there is lost.
    for _ in 0..6 {
        assert_eq!(
            spublish(to, channel, "lost"),
            0,
            "no subscriber at the new owner"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Subscribing again (what the fleet's subscriber must do on an
    // unsolicited sunsubscribe) reaches the new owner.
    conn.ssubscribe(channel).await.unwrap();
    next_push(&mut rx, PushKind::SSubscribe, WAIT)
        .await
        .expect("subscribed again");
    assert_eq!(
        spublish(to, channel, "again"),
        1,
        "subscribed at the new owner"
    );
    let got = next_push(&mut rx, PushKind::SMessage, WAIT)
        .await
        .expect("a message after subscribing again");
    assert_eq!(text(&got.data[1]), "again");
}
