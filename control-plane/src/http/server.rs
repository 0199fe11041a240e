//! Accepting connections so that no unauthenticated client can starve the service: a
//! connection cap below the open-files limit where the longest-idle connection makes
//! room for a new one, header-read, body-read and idle timeouts, and the peer address for
//! handlers. The admin listener (`--admin-listen`) runs its own accept loop with its own
//! cap, so nothing on the public one can starve a revocation.
//!
//! A connection is idle while no request is in progress on it: freshly accepted, sending
//! headers slowly, or kept alive between requests. Held edge long polls are requests in
//! progress, so they are never evicted; their number has its own cap (`http::edge`).

use std::collections::HashMap;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::Region;
use crate::metrics::Metrics;

/// File descriptors kept for everything but client connections (SQLite, logs, ...).
const RESERVED_FDS: u64 = 64;

/// How long a shutdown waits for requests in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Limits of the accept loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Time allowed to send a request's headers.
    pub header_timeout: Duration,
    /// Time a connection may stay open with no request in progress.
    pub idle_timeout: Duration,
    /// Time allowed to send a request's whole body, counted from its headers.
    pub body_timeout: Duration,
}

/// The request body took longer than [`Limits::body_timeout`] to arrive.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {0:?}")]
pub(crate) struct BodyTimeout(Duration);

/// A request body that fails once its deadline passes: a client sending one byte now
/// and then cannot hold a connection (and a slot of the cap) for longer than that.
struct DeadlineBody<B> {
    inner: B,
    limit: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<B> DeadlineBody<B> {
    fn new(inner: B, limit: Duration) -> Self {
        DeadlineBody {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl<B> hyper::body::Body for DeadlineBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(BodyTimeout(this.limit).into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Raises the soft open-files limit to the hard one and returns the connection cap that
/// fits under it (at most `wanted`).
pub(crate) fn fit_connection_cap(wanted: usize) -> usize {
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-files limit");
            return wanted;
        }
    };
    let fit = usize::try_from(soft.saturating_sub(RESERVED_FDS).max(8)).unwrap_or(usize::MAX);
    if fit < wanted {
        tracing::warn!(
            open_files_limit = soft,
            max_connections = fit,
            "connection cap lowered to fit the open-files limit (raise it with ulimit -n)"
        );
    }
    wanted.min(fit)
}

struct Conn {
    in_flight: AtomicUsize,
    /// Milliseconds since the registry's epoch when the connection last became idle.
    idle_since: AtomicU64,
    close: Notify,
}

impl Conn {
    fn idle_for(&self, now_ms: u64) -> Option<Duration> {
        (self.in_flight.load(Ordering::SeqCst) == 0).then(|| {
            Duration::from_millis(now_ms.saturating_sub(self.idle_since.load(Ordering::SeqCst)))
        })
    }
}

/// Marks a request in progress until dropped.
struct Busy {
    conn: Arc<Conn>,
    epoch: Instant,
}

impl Busy {
    fn new(conn: &Arc<Conn>, epoch: Instant) -> Busy {
        conn.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy {
            conn: conn.clone(),
            epoch,
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conn
            .idle_since
            .store(millis(self.epoch), Ordering::SeqCst);
        self.conn.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn millis(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The open connections.
struct Registry {
    cap: usize,
    epoch: Instant,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
}

enum Admission {
    Admitted(u64, Arc<Conn>),
    /// At the cap with every connection busy.
    Refused,
}

impl Registry {
    /// Admits a connection; at the cap the longest-idle one is told to close first.
    fn admit(&self, metrics: &Metrics) -> Admission {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if conns.len() >= self.cap {
            let now = millis(self.epoch);
            let victim = conns
                .iter()
                .filter_map(|(id, c)| c.idle_for(now).map(|idle| (idle, *id)))
                .max();
            match victim {
                Some((_, id)) => {
                    if let Some(conn) = conns.remove(&id) {
                        conn.close.notify_one();
                        Metrics::inc(&metrics.connections_evicted);
                    }
                }
                None => return Admission::Refused,
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(millis(self.epoch)),
            close: Notify::new(),
        });
        conns.insert(id, conn.clone());
        metrics
            .connections_open
            .store(conns.len() as u64, Ordering::Relaxed);
        Admission::Admitted(id, conn)
    }

    fn remove(&self, id: u64, metrics: &Metrics) {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.remove(&id);
        metrics
            .connections_open
            .store(conns.len() as u64, Ordering::Relaxed);
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes, then waits
/// (a bounded time) for requests in progress.
pub(crate) async fn run(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    region: Arc<Region>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let registry = Arc::new(Registry {
        cap: limits.max_connections.max(1),
        epoch: Instant::now(),
        next_id: AtomicU64::new(0),
        conns: Mutex::new(HashMap::new()),
    });
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors or a reset before accept: wait instead of
                    // spinning; existing connections keep being served.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (id, conn) = match registry.admit(region.metrics()) {
            Admission::Admitted(id, conn) => (id, conn),
            Admission::Refused => {
                Metrics::inc(&region.metrics().connections_refused);
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let epoch = registry.epoch;
        let served = conn.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
            let busy = Busy::new(&served, epoch);
            let mut request = request
                .map(|body| axum::body::Body::new(DeadlineBody::new(body, limits.body_timeout)));
            request.extensions_mut().insert(ConnectInfo(peer));
            let response = tower::ServiceExt::oneshot(router.clone(), request);
            async move {
                let response = response.await;
                drop(busy);
                response
            }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        builder.http2().timer(TokioTimer::new());
        let connection = graceful.watch(
            builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned(),
        );
        let registry = registry.clone();
        let region = region.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    result = &mut connection => {
                        if let Err(e) = result {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    () = conn.close.notified() => break,
                    _ = tick.tick() => {
                        if conn
                            .idle_for(millis(epoch))
                            .is_some_and(|idle| idle >= limits.idle_timeout)
                        {
                            Metrics::inc(&region.metrics().connections_timed_out);
                            break;
                        }
                    }
                }
            }
            registry.remove(id, region.metrics());
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in progress after the shutdown grace period");
    }
    Ok(())
}
