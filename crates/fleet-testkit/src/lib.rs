//! A private `redis-server` on a free loopback port, for the demo and the
//! tests (never the shared 6379). Killed when dropped; can be paused,
//! resumed, killed and restarted on the same port. [`Sentinels`] watch one
//! of them, for failover tests; [`RedisCluster`] is a Redis Cluster of them
//! (masters with a replica each).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// With TLS: the TLS port and the files (the plain port stays, for the
    /// test's own checks).
    tls: Option<(u16, TlsFiles)>,
    /// A replica of the server on this port.
    replica_of: Option<u16>,
    /// A node of a Redis Cluster (`--cluster-enabled yes`).
    cluster: bool,
}

/// A CA, a server certificate for 127.0.0.1, and a client certificate, all
/// made for one server by `openssl` (PEM files in the server's directory).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Runs one openssl command.
fn openssl(args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args)
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("openssl: {e} (install openssl)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {}: {}",
            args[0],
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl TlsFiles {
    fn generate(dir: &std::path::Path) -> Result<TlsFiles, String> {
        let f = |n: &str| dir.join(n);
        let t = TlsFiles {
            ca: f("ca.pem"),
            server_cert: f("server.pem"),
            server_key: f("server.key"),
            client_cert: f("client.pem"),
            client_key: f("client.key"),
        };
        let ca_key = f("ca.key");
        // Version 3 certificates (webpki refuses v1): each gets extensions.
        let server_ext = f("server.ext");
        let client_ext = f("client.ext");
        let write = |p: &PathBuf, s: &str| std::fs::write(p, s).map_err(|e| e.to_string());
        write(&server_ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n")?;
        write(&client_ext, "extendedKeyUsage=clientAuth\n")?;
        let p = |x: &PathBuf| x.to_string_lossy().into_owned();
        let (ca, ca_key) = (p(&t.ca), p(&ca_key));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=fleet-test-ca",
            "-keyout",
            &ca_key,
            "-out",
            &ca,
        ])?;
        for (name, key, cert, ext) in [
            ("localhost", &t.server_key, &t.server_cert, &server_ext),
            (
                "fleet-test-client",
                &t.client_key,
                &t.client_cert,
                &client_ext,
            ),
        ] {
            let csr = p(&f(&format!("{name}.csr")));
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &p(key),
                "-out",
                &csr,
            ])?;
            openssl(&[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &csr,
                "-CA",
                &ca,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-extfile",
                &p(ext),
                "-out",
                &p(cert),
            ])?;
        }
        Ok(t)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RedisServerError {
    #[error("redis-server is not on PATH (install it: apt-get install redis-server, or brew install redis), or set REDIS_URL")]
    NotFound,
    #[error("redis-server did not start: {0}")]
    Start(String),
}

impl RedisServer {
    /// True if `redis-server` can be run.
    pub fn available() -> bool {
        Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts a server on a free port and waits until it answers PING.
    pub fn start() -> Result<RedisServer, RedisServerError> {
        Self::start_inner(false, None, false)
    }

    /// A replica of `primary` (`--replicaof`), on a free port of its own;
    /// returns once its first sync is done.
    pub fn start_replica_of(primary: &RedisServer) -> Result<RedisServer, RedisServerError> {
        Self::start_inner(false, Some(primary.port), false)
    }

    /// Also listens with TLS, on a second port, requiring client
    /// certificates: its certificates are generated for it.
    pub fn start_tls() -> Result<RedisServer, RedisServerError> {
        Self::start_inner(true, None, false)
    }

    fn start_inner(
        tls: bool,
        replica_of: Option<u16>,
        cluster: bool,
    ) -> Result<RedisServer, RedisServerError> {
        if !Self::available() {
            return Err(RedisServerError::NotFound);
        }
        let dir = std::env::temp_dir().join(format!("fleet-redis-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).map_err(|e| RedisServerError::Start(e.to_string()))?;
        let files = match tls {
            true => Some(TlsFiles::generate(&dir).map_err(RedisServerError::Start)?),
            false => None,
        };
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port().map_err(|e| RedisServerError::Start(e.to_string()))?;
            let tls = match &files {
                Some(f) => Some((
                    free_port().map_err(|e| RedisServerError::Start(e.to_string()))?,
                    f.clone(),
                )),
                None => None,
            };
            let mut s = RedisServer {
                port,
                dir: dir.clone(),
                child: None,
                tls,
                replica_of,
                cluster,
            };
            match s.spawn() {
                Ok(()) => return Ok(s),
                Err(e) => last = e, // port raced away: try another
            }
        }
        Err(RedisServerError::Start(last))
    }

    fn spawn(&mut self) -> Result<(), String> {
        // (Again: a failed try's drop removed it.)
        std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        let mut cmd = Command::new("redis-server");
        if let Some((port, f)) = &self.tls {
            cmd.args(["--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(&f.server_cert)
                .arg("--tls-key-file")
                .arg(&f.server_key)
                .arg("--tls-ca-cert-file")
                .arg(&f.ca)
                .args(["--tls-auth-clients", "yes"]);
        }
        if let Some(p) = self.replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &p.to_string()]);
        }
        if self.cluster {
            // Its nodes.conf in its own directory; a master unreachable
            // for 1 s is failed over.
            cmd.args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "1000"]);
        }
        let child = cmd
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--maxclients", "20000"])
            // As docs/OPERATIONS.md asks: no published message over 1 MB.
            .args(["--proto-max-bulk-len", "1mb"])
            // A replica's first sync starts at once, not after Redis's 5 s.
            .args(["--repl-diskless-sync-delay", "0"])
            // Notices: start, replication, failovers (what a failing test needs).
            .args(["--loglevel", "notice"])
            .arg("--logfile")
            .arg(self.log_path())
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "exited with {status}; its log:\n{}",
                        self.log_tail(20)
                    ));
                }
            }
            if self.ping() && (self.replica_of.is_none() || self.synced()) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err("no PING reply within 10 s".into())
    }

    fn ping(&self) -> bool {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    /// A replica whose link to its primary is up (its first sync done).
    fn synced(&self) -> bool {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| {
                redis::cmd("INFO")
                    .arg("replication")
                    .query::<String>(&mut c)
            })
            .is_ok_and(|info| info.contains("master_link_status:up"))
    }

    /// The TLS URL (`rediss://`), with the CA and the client certificate
    /// as `connection::client` and redis-py read them; None without TLS.
    pub fn tls_url(&self) -> Option<String> {
        let (port, f) = self.tls.as_ref()?;
        Some(format!(
            "rediss://127.0.0.1:{port}/?ssl_ca_certs={}&ssl_certfile={}&ssl_keyfile={}",
            f.ca.display(),
            f.client_cert.display(),
            f.client_key.display()
        ))
    }

    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref().map(|(_, f)| f)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log file (notices and above).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("redis-{}.log", self.port))
    }

    /// The last `n` lines of the server's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL): clients see a dropped connection.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port (empty: no persistence).
    pub fn restart(&mut self) -> Result<(), RedisServerError> {
        self.kill();
        self.spawn().map_err(RedisServerError::Start)
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        self.kill();
        // A failing test shows what Redis said (as redis-rs's test support does).
        if std::thread::panicking() {
            let tail = self.log_tail(30);
            if !tail.is_empty() {
                eprintln!(
                    "--- redis-server :{} log (last 30 lines) ---\n{tail}",
                    self.port
                );
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Sentinels (`redis-server --sentinel`) watching one master under a name,
/// each on a free loopback port, quick to fail over (the master is down
/// after 1 s without a reply). Killed when dropped.
pub struct Sentinels {
    name: String,
    dir: PathBuf,
    nodes: Vec<(u16, Child)>,
}

impl Sentinels {
    /// `n` sentinels watching `master` as `name`, `quorum` of which must
    /// agree it is down; returns once each knows the master.
    pub fn start(
        master: &RedisServer,
        name: &str,
        n: usize,
        quorum: usize,
    ) -> Result<Sentinels, RedisServerError> {
        if !RedisServer::available() {
            return Err(RedisServerError::NotFound);
        }
        let dir = std::env::temp_dir().join(format!("fleet-sentinel-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).map_err(|e| RedisServerError::Start(e.to_string()))?;
        let mut s = Sentinels {
            name: name.to_string(),
            dir,
            nodes: Vec::new(),
        };
        for i in 0..n {
            let mut last = String::new();
            let mut started = false;
            for _ in 0..5 {
                let port = free_port().map_err(|e| RedisServerError::Start(e.to_string()))?;
                match s.spawn(i, port, master.port, quorum) {
                    Ok(child) => {
                        s.nodes.push((port, child));
                        started = true;
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            if !started {
                return Err(RedisServerError::Start(format!("sentinel {i}: {last}")));
            }
        }
        Ok(s)
    }

    fn spawn(&self, i: usize, port: u16, master: u16, quorum: usize) -> Result<Child, String> {
        let conf = self.dir.join(format!("sentinel-{i}.conf"));
        let name = &self.name;
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {name} 127.0.0.1 {master} {quorum}\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 10000\n\
                 sentinel parallel-syncs {name} 1\n",
                self.dir.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let mut child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .args(["--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited with {status}"));
            }
            if master_of(port, name).is_some() {
                return Ok(child);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err("did not answer within 10 s".into())
    }

    /// `redis+sentinel://[userinfo@]127.0.0.1:p1,…/name`.
    pub fn url(&self, userinfo: Option<&str>) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        let auth = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        format!("redis+sentinel://{auth}{}/{}", hosts.join(","), self.name)
    }

    /// The master's port, as the first sentinel that answers says.
    pub fn master_port(&self) -> Option<u16> {
        self.nodes
            .iter()
            .find_map(|(p, _)| master_of(*p, &self.name))
    }

    /// How many replicas the sentinels know of the current master.
    pub fn replicas(&self) -> usize {
        let Some((port, _)) = self.nodes.first() else {
            return 0;
        };
        connect(*port)
            .and_then(|mut c| {
                redis::cmd("SENTINEL")
                    .arg("REPLICAS")
                    .arg(&self.name)
                    .query::<Vec<redis::Value>>(&mut c)
                    .ok()
            })
            .map_or(0, |v| v.len())
    }
}

/// `SENTINEL GET-MASTER-ADDR-BY-NAME` on the sentinel at `port`.
fn master_of(port: u16, name: &str) -> Option<u16> {
    let mut c = connect(port)?;
    let (_, p): (String, u16) = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(name)
        .query(&mut c)
        .ok()?;
    Some(p)
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for (_, c) in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster on loopback: `masters` nodes holding the 16384 slots,
/// each with `replicas` replicas (`redis-cli --cluster create`), every node
/// a [`RedisServer`] in its own directory. Quick to fail over (a master
/// unreachable for 1 s). Torn down when dropped.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster, and returns once every node
    /// says the cluster is ok with every slot served.
    pub fn start(masters: usize, replicas: usize) -> Result<RedisCluster, RedisServerError> {
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            nodes.push(RedisServer::start_inner(false, None, true)?);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .map_err(|e| {
                RedisServerError::Start(format!("redis-cli: {e} (install redis-tools)"))
            })?;
        if !out.status.success() {
            return Err(RedisServerError::Start(format!(
                "redis-cli --cluster create: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let c = RedisCluster { nodes };
        c.wait_ok(Duration::from_secs(30))
            .map_err(RedisServerError::Start)?;
        Ok(c)
    }

    /// Every node, masters and replicas, as started.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Every node's `127.0.0.1:port`: the seeds a client is given.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }

    /// Waits until every live node reports `cluster_state:ok` with all 16384
    /// slots served, and its masters' replicas in sync.
    pub fn wait_ok(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        while Instant::now() < deadline {
            let states: Vec<Option<String>> = self
                .nodes
                .iter()
                .filter(|n| n.child.is_some())
                .map(|n| query(n.port, &["CLUSTER", "INFO"]))
                .collect();
            let ok = states.iter().all(|s| {
                s.as_deref().is_some_and(|s| {
                    s.contains("cluster_state:ok") && s.contains("cluster_slots_ok:16384")
                })
            });
            if ok && self.replicas_synced() {
                return Ok(());
            }
            last = format!("{states:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("the cluster was not ok within {within:?}: {last}"))
    }

    /// Every live replica's link to its master is up.
    fn replicas_synced(&self) -> bool {
        self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
            query(n.port, &["INFO", "replication"]).is_some_and(|info| {
                info.contains("role:master") || info.contains("master_link_status:up")
            })
        })
    }

    /// The port of the master serving `slot`, as the first live node that
    /// answers `CLUSTER SLOTS` says.
    pub fn master_of_slot(&self, slot: u16) -> Option<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .find_map(|n| {
                let mut c = connect(n.port)?;
                let ranges: Vec<redis::Value> =
                    redis::cmd("CLUSTER").arg("SLOTS").query(&mut c).ok()?;
                ranges.into_iter().find_map(|r| {
                    let redis::Value::Array(r) = r else {
                        return None;
                    };
                    let lo: u16 = redis::from_redis_value(r.first()?.clone()).ok()?;
                    let hi: u16 = redis::from_redis_value(r.get(1)?.clone()).ok()?;
                    let redis::Value::Array(master) = r.get(2)? else {
                        return None;
                    };
                    let port: u16 = redis::from_redis_value(master.get(1)?.clone()).ok()?;
                    (lo..=hi).contains(&slot).then_some(port)
                })
            })
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`, asked of a live node).
    pub fn slot_of(&self, key: &str) -> Option<u16> {
        let n = self.nodes.iter().find(|n| n.child.is_some())?;
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut connect(n.port)?)
            .ok()
    }

    /// The node on `port`, to kill, pause or resume.
    pub fn node_mut(&mut self, port: u16) -> Option<&mut RedisServer> {
        self.nodes.iter_mut().find(|n| n.port == port)
    }
}

/// A connection to the server on `port` (loopback), or None within 500 ms.
fn connect(port: u16) -> Option<redis::Connection> {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .ok()?
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()
}

/// One command's text reply from the server on `port`.
fn query(port: u16, args: &[&str]) -> Option<String> {
    let mut c = connect(port)?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut c).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server keeps a log a failing test can show (its tail is printed
    /// when a test panics with the server alive).
    #[test]
    fn the_server_keeps_a_log() {
        let r = RedisServer::start().expect("redis-server");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !r.log_tail(50).contains("Ready to accept connections") {
            assert!(
                Instant::now() < deadline,
                "no log at {}",
                r.log_path().display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A cluster serves every slot; a write acknowledged by a replica
    /// (`WAIT`) survives its master's SIGKILL, the replica promoted.
    #[test]
    fn a_cluster_serves_every_slot_and_fails_a_killed_master_over() {
        let mut c = RedisCluster::start(3, 1).expect("a cluster");
        assert_eq!(c.nodes().len(), 6);
        let key = "{fleet-test}:kept";
        let slot = c.slot_of(key).expect("a slot");
        let master = c.master_of_slot(slot).expect("its master");
        let mut conn = connect(master).expect("the master");
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg("1")
            .query(&mut conn)
            .unwrap();
        let acked: u64 = redis::cmd("WAIT")
            .arg(1)
            .arg(5000)
            .query(&mut conn)
            .unwrap();
        assert_eq!(acked, 1, "its replica has the write");
        c.node_mut(master).expect("the node").kill();
        let deadline = Instant::now() + Duration::from_secs(20);
        let promoted = loop {
            match c.master_of_slot(slot) {
                Some(p) if p != master => break p,
                _ => {
                    assert!(Instant::now() < deadline, "no failover within 20 s");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        c.wait_ok(Duration::from_secs(20)).expect("ok again");
        let v: Option<String> = redis::cmd("GET")
            .arg(key)
            .query(&mut connect(promoted).expect("the new master"))
            .unwrap();
        assert_eq!(v.as_deref(), Some("1"));
    }
}
