//! One supervisor for every loop of the service.
//!
//! - A loop's failed round goes through [`round_failed`]: fenced → the
//!   term ends (the commander stands by, crate::leader); any other store
//!   error → counted (`fleet_redis_errors_total{op}`, and
//!   `fleet_redis_reconnects_total` for a dropped connection), logged with
//!   its reason, backed off, and the loop goes on.
//! - Every loop is spawned by [`Supervisor::spawn`]. A loop that panics, or
//!   that ends while the service is not stopping, stops the service, and the
//!   process exits non-zero ([`Exit::Failed`]).
//! - Shutdown is one [`CancellationToken`]; [`Supervisor::wait`] gives the
//!   loops a grace period to drain, then aborts what is left.

use crate::context::Shared;
use crate::metrics as m;
use fleet_store::StoreError;
use std::future::Future;
use std::time::Duration;
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{error, info_span, warn, Instrument};

/// How the service stopped; the binary turns it into the exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Asked to stop (SIGTERM, SIGINT) and drained in time. (A commander
    /// fenced by a newer one does not stop: it stands by, crate::leader.)
    Clean,
    /// A loop panicked or ended on its own, or the drain overran the grace
    /// period.
    Failed(String),
}

impl Exit {
    /// 0 clean; 1 failure. 64 (EX_USAGE, an invalid config) is the binary's.
    pub fn code(&self) -> u8 {
        match self {
            Exit::Clean => 0,
            Exit::Failed(_) => 1,
        }
    }
}

/// Back-off after a failed round: doubles from 50 ms to 2 s; reset by a good one.
#[derive(Debug)]
pub(crate) struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(2);

    pub(crate) fn new() -> Self {
        Backoff(Self::FIRST)
    }

    pub(crate) fn reset(&mut self) {
        self.0 = Self::FIRST;
    }

    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        d
    }
}

/// What a loop does after a round failed: false means stop (fenced, or
/// shutdown during the back-off); true means go on.
pub(crate) async fn round_failed(
    shared: &Shared,
    op: &'static str,
    e: StoreError,
    backoff: &mut Backoff,
) -> bool {
    if matches!(e, StoreError::Fenced) {
        shared.on_fenced();
        return false;
    }
    m::redis_error(op, &e);
    let wait = backoff.next();
    warn!(op, reason = e.reason(), error = %e, retry_in = ?wait, "round failed; retrying");
    pause(shared.shutdown_token(), wait).await
}

/// The service's tasks, under one shutdown signal.
pub(crate) struct Supervisor {
    tasks: JoinSet<()>,
    names: Vec<(Id, &'static str)>,
    shutdown: CancellationToken,
}

impl Supervisor {
    pub(crate) fn new(shutdown: CancellationToken) -> Self {
        Supervisor {
            tasks: JoinSet::new(),
            names: Vec::new(),
            shutdown,
        }
    }

    /// Runs `task` in its own span. It should return only on shutdown.
    pub(crate) fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let h = self
            .tasks
            .spawn(task.instrument(info_span!("task", task = name)));
        self.names.push((h.id(), name));
    }

    fn name(&self, id: Id) -> &'static str {
        self.names
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, n)| *n)
            .unwrap_or("?")
    }

    /// Waits until every task has stopped, or the service must stop. After
    /// shutdown begins, the tasks get `grace` *in all* to finish (one
    /// deadline, however many there are), then are aborted.
    pub(crate) async fn wait(mut self, grace: Duration) -> Exit {
        let mut failure: Option<String> = None;
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let next = if self.shutdown.is_cancelled() {
                let until = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + grace);
                match tokio::time::timeout_at(until, self.tasks.join_next_with_id()).await {
                    Ok(n) => n,
                    Err(_) => {
                        let left = self.tasks.len();
                        error!(
                            left,
                            ?grace,
                            "shutdown grace period over: aborting what is left"
                        );
                        self.tasks.abort_all();
                        while self.tasks.join_next().await.is_some() {}
                        failure.get_or_insert(format!(
                            "{left} tasks still running after the grace period"
                        ));
                        break;
                    }
                }
            } else {
                self.tasks.join_next_with_id().await
            };
            let Some(r) = next else { break };
            let stopping = self.shutdown.is_cancelled();
            match r {
                Ok((id, ())) if !stopping => {
                    let name = self.name(id);
                    error!(task = name, "a service task ended on its own: stopping");
                    failure.get_or_insert(format!("task {name} ended on its own"));
                }
                Ok(_) => {}
                Err(e) if e.is_panic() => {
                    let name = self.name(e.id());
                    error!(task = name, "a service task panicked: stopping");
                    failure.get_or_insert(format!("task {name} panicked"));
                }
                Err(_) => {} // aborted
            }
            // One task ending ends the service; the rest drain.
            self.shutdown.cancel();
        }
        if let Some(f) = failure {
            Exit::Failed(f)
        } else {
            Exit::Clean
        }
    }
}

/// Sleeps for `d` unless shutdown comes first; false on shutdown.
pub(crate) async fn pause(shutdown: &tokio_util::sync::CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(5);

    /// A loop as the service's are: runs until shutdown.
    async fn until_shutdown(t: CancellationToken) {
        t.cancelled().await
    }

    #[tokio::test]
    async fn a_panicking_loop_stops_the_service_with_a_failure() {
        let token = CancellationToken::new();
        let mut sup = Supervisor::new(token.clone());
        sup.spawn("steady", until_shutdown(token.clone()));
        sup.spawn("faulty", async { panic!("a bug in a loop") });
        let exit = sup.wait(GRACE).await;
        assert_eq!(exit, Exit::Failed("task faulty panicked".into()));
        assert_ne!(exit.code(), 0);
        assert!(token.is_cancelled(), "the other loops were told to stop");
    }

    #[tokio::test]
    async fn a_loop_that_ends_on_its_own_is_a_failure() {
        let token = CancellationToken::new();
        let mut sup = Supervisor::new(token.clone());
        sup.spawn("steady", until_shutdown(token.clone()));
        sup.spawn("http", async {});
        let exit = sup.wait(GRACE).await;
        assert_eq!(exit, Exit::Failed("task http ended on its own".into()));
    }

    #[tokio::test]
    async fn shutdown_drains_cleanly() {
        let token = CancellationToken::new();
        let mut sup = Supervisor::new(token.clone());
        sup.spawn("steady", until_shutdown(token.clone()));
        token.cancel();
        let exit = sup.wait(GRACE).await;
        assert_eq!((exit.code(), exit), (0, Exit::Clean));
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_ignores_shutdown_is_aborted_after_the_grace_period() {
        let token = CancellationToken::new();
        let mut sup = Supervisor::new(token.clone());
        sup.spawn("stuck", std::future::pending());
        token.cancel();
        let started = tokio::time::Instant::now();
        let exit = sup.wait(Duration::from_secs(3)).await;
        assert!(
            matches!(exit, Exit::Failed(ref why) if why.contains("grace")),
            "{exit:?}"
        );
        assert_eq!(
            started.elapsed().as_secs(),
            3,
            "waited the grace period, no more"
        );
    }

    /// Issue 26: the grace is one deadline for all the tasks, not one each.
    /// Two tasks that each take two thirds of it to stop are aborted when it
    /// is over (re-arming the wait per task let them run 4/3 of it).
    #[tokio::test(start_paused = true)]
    async fn the_grace_is_one_deadline_for_every_task() {
        let token = CancellationToken::new();
        let mut sup = Supervisor::new(token.clone());
        for (name, delay) in [("slow-1", 2), ("slow-2", 4)] {
            let t = token.clone();
            sup.spawn(name, async move {
                t.cancelled().await;
                tokio::time::sleep(Duration::from_secs(delay)).await;
            });
        }
        token.cancel();
        let started = tokio::time::Instant::now();
        let exit = sup.wait(Duration::from_secs(3)).await;
        assert_eq!(started.elapsed().as_secs(), 3, "the stop overran the grace");
        assert!(
            matches!(exit, Exit::Failed(ref why) if why.contains("1 tasks still running")),
            "{exit:?}"
        );
    }
}
