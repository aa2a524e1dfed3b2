//! The HTTP API's listener. At most `http.max_connections` connections are
//! open at once: a new one beyond that closes the one that has gone longest
//! without moving a byte (so idle or half-sent connections can never keep a
//! client out), and a connection that moves no byte either way for
//! `http.idle_timeout_ms` is closed. Either way the process's descriptors
//! and the API's slots stay bounded.

use crate::metrics as m;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tracing::warn;

/// One open connection as the listener sees it.
#[derive(Debug, Default)]
struct Conn {
    /// When it last moved a byte (ms since the listener started).
    progress_ms: AtomicU64,
    /// Told to close: the next poll fails.
    evicted: AtomicBool,
    /// Woken to notice an eviction while it waits.
    waker: Mutex<Option<Waker>>,
}

#[derive(Debug)]
struct Open {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    started: std::time::Instant,
}

impl Open {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

pub(crate) struct Limited {
    inner: TcpListener,
    open: Arc<Open>,
    max: usize,
    idle: Duration,
    next_id: u64,
}

impl Limited {
    pub(crate) fn new(inner: TcpListener, max_connections: usize, idle: Duration) -> Limited {
        Limited {
            inner,
            open: Arc::new(Open {
                conns: Mutex::new(HashMap::new()),
                started: std::time::Instant::now(),
            }),
            max: max_connections,
            idle,
            next_id: 0,
        }
    }

    /// At the limit: the connection quiet the longest is told to close.
    fn make_room(&self) {
        let conns = self.open.conns.lock().expect("no panics while held");
        if conns.len() < self.max {
            return;
        }
        let oldest = conns
            .values()
            .filter(|c| !c.evicted.load(Ordering::Acquire))
            .min_by_key(|c| c.progress_ms.load(Ordering::Acquire));
        if let Some(c) = oldest {
            c.evicted.store(true, Ordering::Release);
            if let Some(w) = c.waker.lock().expect("no panics while held").take() {
                w.wake();
            }
            metrics::counter!(m::HTTP_IDLE_CLOSED, "why" => "evicted").increment(1);
        }
    }
}

impl axum::serve::Listener for Limited {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    self.make_room();
                    self.next_id += 1;
                    let conn = Arc::new(Conn::default());
                    conn.progress_ms
                        .store(self.open.now_ms(), Ordering::Release);
                    self.open
                        .conns
                        .lock()
                        .expect("no panics while held")
                        .insert(self.next_id, conn.clone());
                    metrics::gauge!(m::HTTP_CONNECTIONS).increment(1.0);
                    let g = Guarded {
                        stream,
                        id: self.next_id,
                        conn,
                        open: self.open.clone(),
                        idle: self.idle,
                        deadline: Box::pin(tokio::time::sleep(self.idle)),
                    };
                    return (g, addr);
                }
                Err(e) => {
                    // Out of descriptors, a reset before accept: wait, retry.
                    warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection that fails once it is evicted or after `idle` without progress.
pub(crate) struct Guarded {
    stream: TcpStream,
    id: u64,
    conn: Arc<Conn>,
    open: Arc<Open>,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl Guarded {
    fn progress(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
        self.conn
            .progress_ms
            .store(self.open.now_ms(), Ordering::Release);
    }

    fn evicted(&self) -> Option<io::Error> {
        self.conn
            .evicted
            .load(Ordering::Acquire)
            .then(|| io::Error::new(io::ErrorKind::ConnectionAborted, "closed to make room"))
    }

    /// While the inner stream is pending: an error once evicted or idle too long.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        *self.conn.waker.lock().expect("no panics while held") = Some(cx.waker().clone());
        if let Some(e) = self.evicted() {
            return Poll::Ready(e);
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                metrics::counter!(m::HTTP_IDLE_CLOSED, "why" => "idle").increment(1);
                Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no progress within http.idle_timeout_ms",
                ))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.open
            .conns
            .lock()
            .expect("no panics while held")
            .remove(&self.id);
        metrics::gauge!(m::HTTP_CONNECTIONS).decrement(1.0);
    }
}

use std::future::Future;

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.evicted() {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.progress();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.stalled(cx).map(Err),
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, data) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.progress();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.stalled(cx).map(Err),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
