//! `control-plane`: parses the command line, sets up logging, then serves or runs an
//! operator command.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser as _;
use control_plane::AppState;
use control_plane::cli::{Cli, Command};
use control_plane::config::Settings;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Before anything can create a file: the data dir, the database with its WAL and
    // shared-memory files and the secrets stay the owner's whatever umask launched us.
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command {
        Command::Serve(serve) => match Settings::from_args(&cli.settings, Some(&serve)) {
            Err(problems) => {
                eprintln!("invalid configuration:\n{problems}");
                ExitCode::from(2)
            }
            Ok(settings) => match run_server(settings, serve.listen, serve.admin_listen) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            },
        },
        command => control_plane::cli::run(&cli.settings, command),
    }
}

fn run_server(
    mut settings: Settings,
    listen: std::net::SocketAddr,
    admin_listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        // Bound first: an issuer derived from the listen address needs the real port.
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        if let Some(warning) = settings.settle_issuer(addr) {
            tracing::warn!("{warning}");
        }
        for warning in settings.issuer_warnings() {
            tracing::warn!("{warning}");
        }
        tracing::info!(
            issuer = %settings.issuer,
            accepted_issuers = %settings.accepted_issuers.join(","),
            "issuer"
        );
        let (region, backends) =
            tokio::task::spawn_blocking(move || control_plane::open(settings)).await??;
        let keys = region.keys();
        tracing::info!(
            data_dir = %region.settings().data_dir.display(),
            region = %region.settings().region,
            token_alg = keys.token_key.alg().as_str(),
            token_kid = %keys.token_key.kid(),
            event_kid = %keys.event_key.kid(),
            bus = region.bus_name(),
            redis = backends.redis.is_some(),
            "region opened"
        );
        tracing::info!(
            path = %region.admin_path().display(),
            "admin credential file (mode 0600): send its content as Authorization: Bearer"
        );
        tracing::info!("listening on http://{addr}");
        let admin = match admin_listen {
            Some(at) => {
                let admin = tokio::net::TcpListener::bind(at).await?;
                tracing::info!(
                    "admin API (own connection cap) on http://{}",
                    admin.local_addr()?
                );
                Some(admin)
            }
            None => None,
        };
        control_plane::serve_with_admin(
            listener,
            admin,
            AppState::with_backends(region, backends),
            shutdown(),
        )
        .await?;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn shutdown() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
