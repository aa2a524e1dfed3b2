//! The subcommands other than `run`: operators' tools over the HTTP API in
//! [`admin`] (printed by [`render`]: tables and lines, or `--json`); the
//! set-up tools that work on Redis directly in [`keys`], [`tokens`], [`acl`],
//! [`audit`], [`governance`]; simulated fleets, one agent and the demo in
//! [`fleet`].

/// `println!` for the CLI's output: a reader that went away (`status |
/// head`) ends the command quietly with status 0 instead of a panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::cli::stdout_failed(e);
        }
    }};
}

/// `print!`, as [`out!`].
macro_rules! out_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout().lock(), $($arg)*) {
            $crate::cli::stdout_failed(e);
        }
    }};
}

/// Standard output failed: a closed pipe is a reader that has had enough
/// (exit 0); anything else is an error (exit 1).
pub(crate) fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: writing to standard output: {e}");
    std::process::exit(1);
}

pub(crate) mod acl;
pub(crate) mod admin;
pub(crate) mod audit;
pub(crate) mod fleet;
pub(crate) mod governance;
pub(crate) mod keys;
pub(crate) mod render;
pub(crate) mod tokens;

use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the commander (registry, health, status, HTTP API).
    Run,
    /// The main job: Redis, a commander and a simulated fleet of 1000 agents.
    Demo(DemoArgs),
    /// Simulate agents against a running commander.
    Sim(SimArgs),
    /// The fleet: agents by pool and status, who leads (over the HTTP API).
    Status,
    /// List agents, or show one (over the HTTP API).
    Agents {
        #[command(subcommand)]
        action: AgentsAction,
    },
    /// Run one agent (it echoes each task's payload) until Ctrl-C or SIGTERM,
    /// then leave cleanly.
    Agent {
        /// The agent's pool (default: the credential's).
        #[arg(long)]
        pool: Option<String>,
        /// The agent's id (default: the credential's subject, else POOL-<random>).
        #[arg(long)]
        id: Option<String>,
        /// A capability the agent declares (repeat for more).
        #[arg(long = "capability")]
        capabilities: Vec<String>,
        /// The agent's credential file (`keys issue --out`); it names the
        /// agent's id and pool.
        #[arg(long, env = "FLEET_CREDENTIAL")]
        credential: Option<PathBuf>,
    },
    /// Submit, list, show and cancel tasks (over the HTTP API; `task` works too).
    #[command(alias = "task")]
    Tasks {
        #[command(subcommand)]
        action: TaskAction,
    },
    /// List and requeue dead-lettered tasks (over the HTTP API).
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Pause, resume or clear a pool's queue (over the HTTP API).
    Queue {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Poison tasks: their attempts took down `tasks.poison_after` agents
    /// (dead, restarted or stuck); held until requeued.
    Poison {
        #[command(subcommand)]
        action: PoisonAction,
    },
    /// Fix a pool's size (within its bounds), or `auto` to hand it back to the scaler.
    Scale {
        /// The pool.
        pool: String,
        /// A number of agents, or `auto`.
        size: String,
    },
    /// Retire an agent or every agent of a pool without losing work: no new
    /// tasks, they finish what they hold, then deregister.
    Drain {
        #[command(subcommand)]
        target: DrainTarget,
    },
    /// An agent's budget: show it, top it up, reset it, or give it an
    /// allowance of its own (a halted agent back above the minimum resumes).
    Budget {
        #[command(subcommand)]
        action: BudgetAction,
    },
    /// Keys: the commander's own, and agents' and submitters' credentials.
    Keys {
        #[command(subcommand)]
        action: keys::KeysAction,
    },
    /// Operators' bearer tokens for the HTTP API (FLEET_TOKEN, FLEET_TOKEN_FILE).
    Tokens {
        #[command(subcommand)]
        action: tokens::TokensAction,
    },
    /// Governed actions: proposals, votes, sealed decisions (verify one
    /// with `show`).
    Governance {
        #[command(subcommand)]
        action: governance::GovernanceAction,
    },
    /// The audit log: list, verify the chain, trim.
    Audit {
        #[command(subcommand)]
        action: audit::AuditAction,
    },
    /// The fleet's Redis ACL users: print them, or --apply them.
    Acl(acl::AclArgs),
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Simulated agents in the fleet.
    #[arg(long, default_value_t = 1000)]
    pub(crate) agents: usize,
    /// Agents to kill (they stop heartbeating) once the fleet is up.
    #[arg(long, default_value_t = 5)]
    pub(crate) kill: usize,
    /// Registrations in flight at once.
    #[arg(long, default_value_t = 50)]
    pub(crate) batch: usize,
    /// Fleet status queries made over HTTP once the fleet is up.
    #[arg(long, default_value_t = 1000)]
    pub(crate) status_queries: usize,
    /// Override the heartbeat interval (ms) for a quicker demo.
    #[arg(long)]
    pub(crate) heartbeat_ms: Option<u64>,
    /// No-op tasks pushed through the fleet once it is up.
    #[arg(long, default_value_t = 5000)]
    pub(crate) tasks: usize,
    /// Skip the autoscaling phase (a pool growing and shrinking with load).
    #[arg(long)]
    pub(crate) skip_autoscaling: bool,
    /// Keep the fleet running this many seconds once its tasks are done,
    /// for a look at the console (its URL and a sign-in token are printed).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub(crate) hold: u64,
    /// Write the measurements as JSON.
    #[arg(long)]
    pub(crate) report: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct SimArgs {
    /// Simulated agents.
    #[arg(long, default_value_t = 1000)]
    pub(crate) agents: usize,
    /// Registrations in flight at once (a wave).
    #[arg(long, default_value_t = 50)]
    pub(crate) batch: usize,
    /// Instead of waves of --batch: agents join one after another at this
    /// many registrations per second, whether or not earlier ones have been
    /// answered (an open loop).
    #[arg(long)]
    pub(crate) join_rate: Option<f64>,
    /// Agents that stop heartbeating after registration.
    #[arg(long, default_value_t = 0)]
    pub(crate) stop: usize,
    /// Fleet status queries made over HTTP once the fleet is up.
    #[arg(long, default_value_t = 1000)]
    pub(crate) status_queries: usize,
    /// Commander HTTP API, for status queries (default: http://{http.addr} from the config).
    #[arg(long)]
    pub(crate) commander_url: Option<String>,
    /// Keep the fleet running this many seconds.
    #[arg(long, default_value_t = 0)]
    pub(crate) hold_secs: u64,
    /// Leave the agents registered at the end (default: deregister them).
    #[arg(long)]
    pub(crate) keep: bool,
    /// Tasks to push through the fleet (submitted over the HTTP API).
    #[arg(long, default_value_t = 0)]
    pub(crate) tasks: usize,
    /// Submissions per second (default: as fast as possible).
    #[arg(long)]
    pub(crate) task_rate: Option<f64>,
    /// Pub/sub connections the simulated agents share (each agent's channel
    /// on one of them); 0: one connection per agent, as real agents have.
    /// Thousands of agents need this (100,000 connections would not fit).
    #[arg(long, default_value_t = 0)]
    pub(crate) subscribers: usize,
    /// Tasks per request when submitting as fast as possible: above 1, each
    /// `POST /v1/tasks` carries an array of this many.
    #[arg(long, default_value_t = 1)]
    pub(crate) submit_batch: usize,
    /// How long an agent works on one task.
    #[arg(long, default_value_t = 0)]
    pub(crate) work_ms: u64,
    /// Fraction of attempts that fail (and are retried).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) fail_fraction: f64,
    /// Fraction of attempts during which the agent dies (its task must be
    /// completed by another agent once the death is detected).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) die_fraction: f64,
    /// Budget units each completed attempt reports consuming (usage).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) usage: f64,
    /// Act on the commander's scale requests: start agents on scale_up.
    #[arg(long)]
    pub(crate) spawner: bool,
    /// Agents crashed and restarted (re-registering) per second.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) churn_per_sec: f64,
    /// The commander's pid (same machine): report its CPU and memory.
    #[arg(long)]
    pub(crate) commander_pid: Option<u32>,
    /// Instead of the fleet: the autoscaling scenario on this pool (which
    /// must have scaling_enabled): a step of load, then quiet, with the
    /// spawner on. Uses --work-ms (300 if 0), --ramp-rate and --ramp-secs.
    #[arg(long)]
    pub(crate) ramp: Option<String>,
    /// Submissions per second during the load step.
    #[arg(long, default_value_t = 30.0)]
    pub(crate) ramp_rate: f64,
    /// How long the load step lasts.
    #[arg(long, default_value_t = 6)]
    pub(crate) ramp_secs: u64,
    /// Write the measurements as JSON to this file.
    #[arg(long)]
    pub(crate) report: Option<PathBuf>,
}

#[derive(Subcommand)]
pub(crate) enum TaskAction {
    /// Submit a task; prints it once the commander has persisted it.
    Submit {
        /// The pool whose agents run it.
        #[arg(long)]
        pool: String,
        /// 1 (lowest) to 10 (default: the pool's priority level).
        #[arg(long)]
        priority: Option<u8>,
        /// JSON handed to the agent as is.
        #[arg(long, default_value = "null")]
        payload: String,
        /// A capability an agent needs to take it (repeat for more).
        #[arg(long = "capability")]
        capabilities: Vec<String>,
        /// How long one attempt may run (default: tasks.default_timeout_ms).
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Failed attempts retried before the dead letters (default: tasks.default_max_retries).
        #[arg(long)]
        max_retries: Option<u32>,
        /// Idempotency key: submitting again with it returns the same task.
        #[arg(long)]
        client_id: Option<String>,
        /// Wait until the task is finished (completed, dead, cancelled or
        /// poison), at most this long (e.g. 60s, 5m), and print it then;
        /// the exit status is 0 only if it completed.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        wait: Option<std::time::Duration>,
    },
    /// The newest tasks that match, newest first.
    List {
        /// Only this pool's.
        #[arg(long)]
        pool: Option<String>,
        /// Only in this state (queued, assigned, running, retrying, completed, dead, cancelled, poison).
        #[arg(long)]
        state: Option<String>,
        /// Only those this agent holds or last tried.
        #[arg(long)]
        agent: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    /// Show a task: its state, result or error, and every attempt.
    Get {
        /// The task's id.
        id: String,
    },
    /// Cancel a task that has not finished (a running one is taken from its agent).
    Cancel {
        /// The task's id.
        id: String,
    },
    /// Why each attempt went to the agent it did (strategy, score, reason).
    Evidence {
        /// The task's id.
        id: String,
    },
}

/// What every list takes besides its filters.
#[derive(Args)]
pub(crate) struct Page {
    /// An id (a task's: also its client id), or part of one.
    #[arg(long, short)]
    pub(crate) query: Option<String>,
    /// How many at most.
    #[arg(long, default_value_t = 50)]
    pub(crate) limit: usize,
}

impl Page {
    /// The list's query string: the filters given, then `q` and `limit`.
    pub(crate) fn query<'a>(
        &self,
        filters: &[(&'a str, Option<String>)],
    ) -> Vec<(&'a str, String)> {
        let mut q: Vec<(&str, String)> = filters
            .iter()
            .filter_map(|(k, v)| Some((*k, v.clone()?)))
            .collect();
        if let Some(s) = &self.query {
            q.push(("q", s.clone()));
        }
        q.push(("limit", self.limit.to_string()));
        q
    }
}

#[derive(Subcommand)]
pub(crate) enum AgentsAction {
    /// The agents that match, a page of them.
    List {
        /// Only this pool's.
        #[arg(long)]
        pool: Option<String>,
        /// Only in this status (idle, active, busy, failed, recovering, halted).
        #[arg(long)]
        status: Option<String>,
        /// Only those that declare this capability.
        #[arg(long)]
        capability: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    /// One agent's record: status, load, health, performance, resources.
    Get {
        /// The agent's id.
        id: String,
    },
    /// Agents that left lately (deregistered, expired, removed), newest first.
    Departed {
        /// How many at most.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Subcommand)]
pub(crate) enum DrainTarget {
    /// One agent: it finishes what it holds, then deregisters.
    Agent {
        /// The agent's id.
        id: String,
    },
    /// Every agent of a pool (a rolling restart: the scaler refills it to its minimum).
    Pool {
        /// The pool.
        pool: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum DeadLetterAction {
    /// Tasks out of retries, most recent first.
    List,
    /// Send dead-lettered tasks back to their queues with fresh retries.
    Requeue(DeadLetters),
    /// Delete dead-lettered tasks for good (record and evidence).
    Delete(DeadLetters),
}

/// Which dead letters a bulk action is for.
#[derive(Args)]
pub(crate) struct DeadLetters {
    /// The tasks' ids.
    #[arg(required_unless_present = "all")]
    pub(crate) ids: Vec<String>,
    /// Every dead letter (up to 500 a call).
    #[arg(long, conflicts_with = "ids")]
    pub(crate) all: bool,
}

impl DeadLetters {
    /// The body of the bulk endpoints.
    pub(crate) fn body(&self) -> serde_json::Value {
        if self.all {
            serde_json::json!({"all": true})
        } else {
            serde_json::json!({"ids": self.ids})
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum QueueAction {
    /// Hand out none of the pool's tasks until resumed (they are still accepted and wait).
    Pause {
        /// The pool.
        pool: String,
    },
    /// Hand out the pool's tasks again.
    Resume {
        /// The pool.
        pool: String,
    },
    /// Cancel every task waiting in the pool's queue (not those running), up to 500 a call.
    Clear {
        /// The pool.
        pool: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum BudgetAction {
    /// Balance, allowance, spent and when the window renews.
    Show {
        /// The agent's id.
        agent: String,
    },
    /// Add AMOUNT to the balance.
    Topup {
        /// The agent's id.
        agent: String,
        /// Budget units to add.
        amount: f64,
    },
    /// Balance back to the allowance, a new window from now.
    Reset {
        /// The agent's id.
        agent: String,
    },
    /// An allowance of the agent's own (instead of its pool's), and a reset.
    Allowance {
        /// The agent's id.
        agent: String,
        /// Budget units per window.
        amount: f64,
    },
}

#[derive(Subcommand)]
pub(crate) enum PoisonAction {
    /// Poison tasks, most recent first.
    List,
    /// One task: its record, casualties and allocation evidence.
    Show {
        /// The task's id.
        id: String,
    },
    /// Send a poison task back to its queue with fresh retries and no casualties.
    Requeue {
        /// The task's id.
        id: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum ConfigAction {
    /// Validate a configuration file without running anything.
    Check {
        /// The file.
        file: PathBuf,
    },
}

/// Runs a subcommand other than `run`; the process's exit status.
/// Runs a subcommand. `url`: the commander's HTTP API (`--url`), for the
/// commands that use it.
pub(crate) async fn execute(
    command: Command,
    config: &Path,
    url: Option<String>,
) -> anyhow::Result<std::process::ExitCode> {
    match command {
        Command::Run => unreachable!("`run` is the binary's own"),
        Command::Demo(args) => fleet::demo(args, config).await,
        Command::Sim(args) => fleet::sim(args, config).await,
        Command::Agent {
            pool,
            id,
            capabilities,
            credential,
        } => fleet::agent(config, pool, id, capabilities, credential).await,
        Command::Keys { action } => keys::keys(config, action).await,
        Command::Acl(args) => acl::acl(config, args).await,
        Command::Tokens { action } => tokens::tokens(config, action).await,
        Command::Audit { action } => audit::audit_cmd(config, action).await,
        Command::Governance { action } => governance::governance_cmd(config, action).await,
        Command::Status => admin::status(config, url).await,
        Command::Agents { action } => admin::agents(config, action, url).await,
        Command::Tasks { action } => admin::task(config, action, url).await,
        Command::Scale { pool, size } => admin::scale(config, pool, size, url).await,
        Command::Drain { target } => admin::drain(config, target, url).await,
        Command::DeadLetters { action } => admin::dead_letters(config, action, url).await,
        Command::Poison { action } => admin::poison(config, action, url).await,
        Command::Queue { action } => admin::queue(config, action, url).await,
        Command::Budget { action } => admin::budget(config, action, url).await,
        Command::Config {
            action: ConfigAction::Check { file },
        } => admin::config_check(&file),
    }
    .map(|ok| {
        if ok {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        }
    })
}

pub(crate) fn load(path: &Path) -> anyhow::Result<fleet_commander::Config> {
    Ok(fleet_commander::Config::load(path)?)
}

/// The commander's HTTP API: `--url`, else `http://{http.addr}` from the config.
pub(crate) fn base_url(config: &Path, url: Option<String>) -> anyhow::Result<String> {
    match url {
        Some(u) => Ok(u),
        None => Ok(format!("http://{}", load(config)?.http.addr)),
    }
}

/// Sends a request to the HTTP API and returns the JSON answer; an error
/// status is an error (with what to do about a 401 or 403). A write sent to
/// a standby (503 `not_leader`) is sent once more, to the leader the standby
/// names.
pub(crate) async fn request(req: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
    let (client, req) = req.build_split();
    let req = req?;
    let again = req.try_clone();
    let send = |req: reqwest::Request| {
        let client = client.clone();
        async move {
            // A commander just started may not listen yet: wait a little for it.
            let deadline = std::time::Instant::now() + CONNECT_WAIT;
            let mut said = false;
            let r = loop {
                let again = req.try_clone().expect("no streaming bodies");
                match client.execute(again).await {
                Ok(r) => break r,
                Err(e) if e.is_connect() && std::time::Instant::now() < deadline => {
                    if !said {
                        eprintln!(
                            "no commander answers at {} yet; trying for {} s (is `fleet-commander run` started? \
                             --url or FLEET_HTTP_ADDR name another address)",
                            req.url().origin().ascii_serialization(),
                            CONNECT_WAIT.as_secs()
                        );
                        said = true;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "reaching the commander's HTTP API at {} (is `fleet-commander run` started? \
                         --url or FLEET_HTTP_ADDR name another address)",
                        req.url().origin().ascii_serialization()
                    )))
                }
            }
            };
            let status = r.status();
            let body: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
            anyhow::Ok((status, body))
        }
    };
    let (mut status, mut body) = send(req.try_clone().expect("no streaming bodies")).await?;
    // No commander leads yet (one just started stands by until the last
    // leader's lease runs out): wait a little for one to.
    let deadline = std::time::Instant::now() + CONNECT_WAIT;
    while body["error"] == "not_leader"
        && body["leader"].is_null()
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        (status, body) = send(req.try_clone().expect("no streaming bodies")).await?;
    }
    let leader = body["leader"]["address"].as_str().map(str::to_string);
    if let (true, Some(mut again), Some(leader)) = (body["error"] == "not_leader", again, leader) {
        let (host, port) = leader
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
            .with_context(|| format!("the leader's address {leader:?}"))?;
        let url = again.url_mut();
        url.set_host(Some(&host))?;
        let _ = url.set_port(Some(port));
        eprintln!("this commander stands by: sending to the leader at {leader}");
        (status, body) = send(again).await?;
    }
    match status.as_u16() {
        401 => anyhow::bail!(
            "{status}: {body}\nthe HTTP API needs a token: `fleet-commander tokens issue --role operator \
             --name me > me.token`, then `export FLEET_TOKEN_FILE=me.token` (or FLEET_TOKEN=<token>)"
        ),
        403 => anyhow::bail!(
            "{status}: {body}\nthe token's role is too weak for this: a viewer may read, an operator \
             may act, an admin may read the audit log (fleet-commander tokens issue --role ...)"
        ),
        _ if !status.is_success() => anyhow::bail!("{status}: {body}"),
        _ => {}
    }
    Ok(body)
}

/// How long the CLI waits for a commander that does not answer yet.
const CONNECT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `--json`: print what the HTTP API served (and lists as JSON), not tables.
static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub(crate) fn set_json(on: bool) {
    JSON.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether `--json` was given.
pub(crate) fn json() -> bool {
    JSON.load(std::sync::atomic::Ordering::Relaxed)
}

/// Prints `body`: as JSON with `--json`, else as `human` renders it.
pub(crate) fn print(body: &serde_json::Value, human: impl FnOnce(&serde_json::Value) -> String) {
    if json() {
        out!(
            "{}",
            serde_json::to_string_pretty(body).expect("a JSON value")
        );
    } else {
        out_raw!("{}", human(body));
    }
}

/// Sends `req` ([`request`]) and prints the answer: `key: value` lines, or
/// JSON with `--json`.
pub(crate) async fn call(req: reqwest::RequestBuilder) -> anyhow::Result<()> {
    let body = request(req).await?;
    print(&body, render::record);
    Ok(())
}

/// Cancelled on Ctrl-C or SIGTERM.
pub(crate) fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        t.cancel();
    });
    token
}

pub(crate) fn write_report(
    path: &Option<PathBuf>,
    report: &impl serde::Serialize,
) -> anyhow::Result<()> {
    if let Some(p) = path {
        std::fs::write(p, serde_json::to_string_pretty(report)?)
            .with_context(|| format!("writing {}", p.display()))?;
        out!("report written to {}", p.display());
    }
    Ok(())
}
