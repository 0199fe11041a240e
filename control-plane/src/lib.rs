//! The control plane: issues, validates and revokes post-quantum-signed access tokens,
//! keeps a signed hash-chained audit log in SQLite and serves the edge revocation feed.
//!
//! [`http::app`] builds the router over an [`http::AppState`]; [`serve`] runs it with the
//! background sync task. `main.rs` only parses the command line.

mod backends;
mod cache;
pub mod cli;
pub mod config;
mod http;
mod metrics;
mod refresh;
mod region;
mod replication;
pub mod store;
mod time;

// The public surface: what the binary, the integration tests and the operator tools use.
pub use backends::{Backends, open};
pub use cache::{CacheError, MemoryCache, RevocationCache};
pub use http::nonce::{DpopNonces, SECRET_FILE as DPOP_NONCE_SECRET_FILE};
pub use http::{AppState, app};
pub use refresh::transcript as refresh_transcript;
pub use region::{Region, read_admin_secret};
pub use replication::bus::{EventBus, LocalBus};
pub use store::db::Db;
pub use time::now;

use std::future::Future;
use std::time::Duration;

/// How often the server picks up changes other processes made to the database.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_admin(listener, None, state, shutdown).await
}

/// Most connections the admin listener serves at once: its clients are a handful of
/// operators and services, and its cap is apart from the public one.
const ADMIN_MAX_CONNECTIONS: usize = 256;

/// [`serve`], plus the same API on `admin` (`--admin-listen`) with its own connection
/// cap, so that public traffic can never starve an issue or a revocation sent there.
pub async fn serve_with_admin(
    listener: tokio::net::TcpListener,
    admin: Option<tokio::net::TcpListener>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let _background = backends::spawn(&state.region, &state.backends, true)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let region = state.region.clone();
    let sync = tokio::spawn(async move {
        let mut tick = tokio::time::interval(SYNC_INTERVAL);
        loop {
            tick.tick().await;
            let region = region.clone();
            match tokio::task::spawn_blocking(move || region.sync()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "sync with the database failed"),
                Err(e) => tracing::error!(error = %e, "sync task failed"),
            }
        }
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let closer = state.clone();
    tokio::spawn(async move {
        shutdown.await;
        // Held long-polls would delay the shutdown by up to a minute.
        closer.close_long_polls();
        let _ = stop.send(true);
    });
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let settings = state.region.settings();
    let limits = http::server::Limits {
        max_connections: http::server::fit_connection_cap(settings.max_connections),
        header_timeout: settings.header_timeout,
        idle_timeout: settings.idle_timeout,
        body_timeout: settings.body_timeout,
    };
    let admin_task = admin.map(|admin| {
        let limits = http::server::Limits {
            max_connections: ADMIN_MAX_CONNECTIONS,
            ..limits
        };
        let router = app(state.clone());
        let region = state.region.clone();
        let stopped = until_stopped(stopped.clone());
        tokio::spawn(http::server::run(admin, router, limits, region, stopped))
    });
    let region = state.region.clone();
    let result =
        http::server::run(listener, app(state), limits, region, until_stopped(stopped)).await;
    if let Some(task) = admin_task {
        match task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "the admin listener failed"),
            Err(e) => tracing::error!(error = %e, "the admin listener task failed"),
            Ok(Ok(())) => {}
        }
    }
    sync.abort();
    result
}
