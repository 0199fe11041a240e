//! The operator command line: `serve` plus `issue`, `revoke`, `inspect`, `keys`,
//! `audit`, `events` and `edge-credential`, working on a data directory or (`--server`) against a running
//! service.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use shared::Kind;

use crate::config::{ServeArgs, Settings, SettingsArgs};
use crate::region::{IssueRequest, Region, read_admin_secret};
use crate::store::{audit, db, keys};

/// `control-plane`: token service and operator tool.
#[derive(Debug, Parser)]
#[command(name = "control-plane", version, about)]
pub struct Cli {
    /// Region settings shared by every subcommand.
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// Log filter, in `tracing` env-filter syntax (e.g. `info`, `control_plane=debug`).
    #[arg(long, env = "CP_LOG", default_value = "info", global = true)]
    pub log: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the HTTP service.
    Serve(ServeArgs),
    /// Issues an access token and prints it as JSON.
    Issue(IssueArgs),
    /// Revokes a jti, subject, key or session.
    Revoke(RevokeArgs),
    /// Verifies a token and prints its claims and revocation state.
    Inspect(InspectArgs),
    /// Signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Edge credentials, the bearer secrets Envoy filters poll the edge feed with. With no
    /// subcommand: creates one and prints its secret alone on stdout (shown once; only
    /// its hash is stored). Rotate by creating a new one, deploying it, then revoking the
    /// old one. A running server sees the change within a second.
    EdgeCredential(EdgeCredentialArgs),
    /// Exits 0 when `url` answers 2xx within 3 s (container health checks need no curl).
    Probe {
        /// e.g. http://127.0.0.1:8000/ready
        url: String,
    },
    /// Runs only the Kafka consumer (and the Redis rebuilder, the outbox relay): applies
    /// the other regions' revocations to this data dir and keeps `REDIS_URL` current for
    /// services that only read Redis. Needs `KAFKA_BOOTSTRAP`.
    Consume,
    /// The signed revocation events.
    #[command(subcommand)]
    Events(EventsCommand),
    /// The edges that poll a running control plane (`GET /v1/edge/fleet`): where each is
    /// in the feed, how far behind, connected or not. Exits 1 when `--seq` or
    /// `--event-id` is given and a connected edge does not hold it yet.
    Fleet(FleetArgs),
    /// Copies the region's database to a new file while it runs (SQLite `VACUUM INTO`:
    /// one consistent snapshot). The copy holds the signing keys: it is created mode 0600.
    /// It has no edge feed id: whatever opens it starts a new feed.
    Backup {
        /// The file to create (must not exist).
        #[arg(long)]
        to: PathBuf,
    },
    /// Puts a backup in place as the data dir's database (the region must be stopped),
    /// with a new edge feed id, so every edge takes a snapshot instead of applying deltas
    /// numbered in the history the backup lost.
    Restore {
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        /// Replace an existing database (and drop its `-wal` and `-shm` files).
        #[arg(long)]
        replace: bool,
    },
}

/// Where a command runs: on the data directory, or against a server.
#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// Base URL of a running control plane (e.g. http://127.0.0.1:8000); without it the
    /// command works directly on the data directory.
    #[arg(long, env = "CP_SERVER")]
    pub server: Option<String>,
    /// Admin secret for `--server`; read from `<data-dir>/admin.secret` when absent.
    #[arg(long, env = "CP_ADMIN_SECRET", hide_env_values = true)]
    pub admin_secret: Option<String>,
}

/// `fleet` flags.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Base URL of the running control plane (the fleet lives in its memory). Give every
    /// replica of a region (repeated, or comma-separated) to see its whole fleet: each
    /// edge is in the view of the replica it polls.
    #[arg(long, env = "CP_SERVER", value_delimiter = ',', required = true)]
    pub server: Vec<String>,
    /// Admin secret; read from `<data-dir>/admin.secret` when absent.
    #[arg(long, env = "CP_ADMIN_SECRET", hide_env_values = true)]
    pub admin_secret: Option<String>,
    /// Whether every connected edge holds the feed up to this position.
    #[arg(long, conflicts_with = "event_id")]
    pub seq: Option<u64>,
    /// Whether every connected edge holds this revocation event.
    #[arg(long, allow_hyphen_values = true)]
    pub event_id: Option<String>,
}

/// `issue` flags.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// The token's subject.
    #[arg(long, allow_hyphen_values = true)]
    pub subject: String,
    /// Lifetime in minutes.
    #[arg(long)]
    pub expires_minutes: Option<i64>,
    /// Extra claims as a JSON object, e.g. '{"sid":"s1","scope":"read"}'.
    #[arg(long)]
    pub claims: Option<String>,
    #[command(flatten)]
    /// Local or remote.
    pub remote: Remote,
}

/// `revoke` flags.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// What to revoke: jti, sub, kid or sid.
    #[arg(long = "type", value_parser = ["jti", "sub", "kid", "sid"])]
    pub kind: String,
    /// The identifier (jtis are base64url and may begin with `-`).
    #[arg(long, allow_hyphen_values = true)]
    pub value: String,
    /// How long to keep the revocation (default: until every token it can match expired).
    #[arg(long)]
    pub ttl_seconds: Option<i64>,
    #[command(flatten)]
    /// Local or remote.
    pub remote: Remote,
}

/// `inspect` flags.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The compact JWS.
    pub token: String,
    #[command(flatten)]
    /// Local or remote.
    pub remote: Remote,
}

/// `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Retires the active keys and creates new ones (old ones verify until their tokens expire).
    Rotate(Remote),
    /// Lists stored keys (public facts only).
    List,
}

/// `edge-credential` flags and subcommands.
#[derive(Debug, Args)]
pub struct EdgeCredentialArgs {
    /// What to do (default: create).
    #[command(subcommand)]
    pub command: Option<EdgeCredentialCommand>,
    /// Name of the new credential (default: `edge-` and 8 random hex digits).
    #[arg(long)]
    pub name: Option<String>,
}

/// `edge-credential` subcommands.
#[derive(Debug, Subcommand)]
pub enum EdgeCredentialCommand {
    /// Creates a credential and prints its secret alone on stdout.
    Create {
        /// Its name (default: `edge-` and 8 random hex digits).
        #[arg(long)]
        name: Option<String>,
    },
    /// Stores a credential created on another replica of this region, so the same
    /// secret works on every replica (read from `--secret-file`, `-` for stdin).
    Import {
        /// Its name (the name it has on the replica that made it).
        #[arg(long)]
        name: String,
        /// A file holding the secret that `create` printed (`-`: stdin).
        #[arg(long)]
        secret_file: PathBuf,
    },
    /// Lists the credentials as JSON (names and times, never secrets).
    List,
    /// Revokes a credential: the edge feed refuses it from then on.
    Revoke {
        /// Its name.
        name: String,
    },
}

/// `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Checks the hash chain and every signed checkpoint; names the first bad row or
    /// checkpoint and prints the ids of the keys that signed. Signatures must be by keys
    /// you trust: `--jwks`, else the data dir's own keys. Exits 0 when the log verifies,
    /// 1 when it is broken or signed by a key not trusted, 2 when it cannot be checked.
    Verify {
        /// Verify an `audit export` file (`-` for stdin) instead of the database. Its
        /// signatures must be by the keys of `--jwks`, or else of the data dir (when it
        /// holds a database), never only by the keys the file carries: whoever edits the
        /// file can re-sign it and carry their own key.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Trust only the ML-DSA-65 keys of this JWKS: a file, or an `http(s)` URL such
        /// as the region's `/.well-known/jwks.json` (which lists retired keys only while
        /// their tokens live: keep a copy for older exports).
        #[arg(long, value_name = "URL|FILE")]
        jwks: Option<String>,
        /// With `--file` and no key to pin: check the file against the keys it carries.
        /// Shows the file is consistent, not who wrote it; never prints "audit log OK".
        #[arg(long, requires = "file", conflicts_with = "jwks")]
        trust_file_keys: bool,
    },
    /// Prints the log as JSON lines: the ML-DSA-65 public keys (`{"type":"key"}`), then
    /// every row (`{"type":"row"}`) in order, each checkpoint (`{"type":"checkpoint"}`)
    /// right after the row it covers. The format is in the README.
    Export,
    /// Prints the newest rows.
    Tail {
        /// How many rows.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
}

/// `events` subcommands.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Prints the signed revocation events of the feed as JSON lines
    /// (`{"seq","event_id","jws"}`, feed order), read from the database.
    Export {
        /// Only events with a sequence number greater than this.
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
}

fn print(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// Runs a subcommand other than `serve`.
pub fn run(settings_args: &SettingsArgs, command: Command) -> ExitCode {
    let result = match command {
        Command::Serve(_) => Err(anyhow::anyhow!("serve is run by main")),
        Command::Issue(a) => issue(settings_args, a),
        Command::Revoke(a) => revoke(settings_args, a),
        Command::Inspect(a) => inspect(settings_args, a),
        Command::Keys(KeysCommand::Rotate(remote)) => rotate(settings_args, remote),
        Command::Keys(KeysCommand::List) => list_keys(&settings_args.data_dir),
        Command::Audit(AuditCommand::Verify {
            file,
            jwks,
            trust_file_keys,
        }) => {
            return audit_verify(
                &settings_args.data_dir,
                file.as_deref(),
                jwks.as_deref(),
                trust_file_keys,
            );
        }
        Command::Audit(AuditCommand::Export) => audit_export(&settings_args.data_dir),
        Command::Audit(AuditCommand::Tail { limit }) => audit_tail(&settings_args.data_dir, limit),
        Command::Consume => consume(settings_args),
        Command::EdgeCredential(a) => edge_credential(settings_args, a),
        Command::Probe { url } => probe(&url),
        Command::Backup { to } => backup(&settings_args.data_dir, &to),
        Command::Restore { from, replace } => restore(&settings_args.data_dir, &from, replace),
        Command::Events(EventsCommand::Export { since }) => {
            events_export(&settings_args.data_dir, since)
        }
        Command::Fleet(a) => return fleet(&settings_args.data_dir, a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn backup(data_dir: &Path, to: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(!to.exists(), "{} exists; give a new file", to.display());
    let db = open_existing(data_dir)?;
    // Created empty with 0600 first (VACUUM INTO fills an empty file), so the keys in
    // the copy are never readable by others, not even while it is written.
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        options
            .open(to)
            .with_context(|| format!("cannot create {}", to.display()))?;
    }
    let target = to.to_string_lossy().into_owned();
    // A read-only connection: VACUUM INTO writes only the copy.
    db.read()?
        .execute("VACUUM INTO ?1", [&target])
        .with_context(|| format!("cannot write {}", to.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600))?;
    }
    // A restored copy must count in a new feed: edges hold sequence numbers of the
    // history after the backup, which the copy does not have.
    let copy =
        rusqlite::Connection::open(to).with_context(|| format!("cannot open {}", to.display()))?;
    db::clear_feed_id(&copy).with_context(|| format!("cannot write {}", to.display()))?;
    drop(copy);
    let bytes = std::fs::metadata(to)?.len();
    print(&serde_json::json!({ "backup": target, "bytes": bytes }));
    Ok(())
}

fn restore(data_dir: &Path, from: &Path, replace: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let source = std::fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
    anyhow::ensure!(
        source.starts_with(b"SQLite format 3\0"),
        "{} is not an SQLite database",
        from.display()
    );
    let target = data_dir.join(db::DB_FILE);
    // `prepare` makes an empty file: only a non-empty one is a database to keep.
    anyhow::ensure!(
        replace || std::fs::metadata(&target).map_or(true, |m| m.len() == 0),
        "{} exists; stop the region and pass --replace to overwrite it",
        target.display()
    );
    crate::store::data_dir::prepare(data_dir)?;
    let staged = data_dir.join(format!("{}.restoring", db::DB_FILE));
    let _ = std::fs::remove_file(&staged);
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options
            .open(&staged)
            .with_context(|| format!("cannot create {}", staged.display()))?;
        file.write_all(&source)?;
        file.sync_all()?;
    }
    // The old database's journal must not be replayed onto the copy.
    for suffix in ["-wal", "-shm", "-journal"] {
        let stale = data_dir.join(format!("{}{suffix}", db::DB_FILE));
        match std::fs::remove_file(&stale) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", stale.display())),
        }
    }
    std::fs::rename(&staged, &target)
        .with_context(|| format!("cannot move the copy to {}", target.display()))?;
    let db = db::Db::open(&target).with_context(|| format!("cannot open {}", target.display()))?;
    let feed = db.renew_feed_id()?;
    print(&serde_json::json!({ "restored": target, "from": from, "feed": feed }));
    Ok(())
}

fn probe(url: &str) -> anyhow::Result<()> {
    let response = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .build()?
        .get(url)
        .send()?;
    anyhow::ensure!(
        response.status().is_success(),
        "{url} answered {}",
        response.status()
    );
    Ok(())
}

fn consume(args: &SettingsArgs) -> anyhow::Result<()> {
    let settings = Settings::from_args(args, None)?;
    anyhow::ensure!(
        settings.kafka.is_some(),
        "consume needs KAFKA_BOOTSTRAP (the broker to consume from)"
    );
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let (region, backends) =
            tokio::task::spawn_blocking(move || crate::backends::open(settings)).await??;
        let region = std::sync::Arc::new(region);
        let _tasks = crate::backends::spawn(&region, &backends, true)?;
        tracing::info!(region = %region.settings().region, "consuming; Ctrl-C stops");
        let _ = tokio::signal::ctrl_c().await;
        Ok(())
    })
}

/// Runs an async region operation to its end for a command, on a runtime of its own
/// (the operation may sign or retire a key on its blocking pool).
fn block_on<F: std::future::Future>(work: F) -> anyhow::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(work))
}

fn open_region(args: &SettingsArgs) -> anyhow::Result<Region> {
    let settings = Settings::from_args(args, None)?;
    Region::open(settings)
}

struct Client {
    base: String,
    secret: Option<String>,
    http: reqwest::blocking::Client,
}

impl Client {
    fn new(server: &str, remote: &Remote, data_dir: &Path) -> anyhow::Result<Client> {
        let secret = remote
            .admin_secret
            .clone()
            .or_else(|| read_admin_secret(data_dir).ok());
        Ok(Client {
            base: server.trim_end_matches('/').to_owned(),
            secret,
            http: reqwest::blocking::Client::builder().build()?,
        })
    }

    /// The answer's status and body (JSON, else the text as a string).
    fn exchange(
        &self,
        request: reqwest::blocking::RequestBuilder,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        let request = match &self.secret {
            Some(s) => request.bearer_auth(s),
            None => request,
        };
        let response = request.send().context("cannot reach the server")?;
        let status = response.status();
        let text = response.text()?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    fn send(&self, request: reqwest::blocking::RequestBuilder) -> anyhow::Result<Value> {
        let (status, body) = self.exchange(request)?;
        if !status.is_success() {
            bail!("server answered {status}: {body}");
        }
        Ok(body)
    }

    fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
    }

    /// `GET /v1/edge/fleet`; `None` when asked about an event this server does not have.
    fn fleet(&self, query: &[(&str, String)]) -> anyhow::Result<Option<Value>> {
        let request = self.http.get(format!("{}/v1/edge/fleet", self.base));
        let (status, body) = self.exchange(request.query(query))?;
        if status == reqwest::StatusCode::NOT_FOUND && query.iter().any(|(k, _)| *k == "event_id") {
            return Ok(None);
        }
        if !status.is_success() {
            bail!("server answered {status}: {body}");
        }
        Ok(Some(body))
    }
}

fn fleet(data_dir: &Path, a: FleetArgs) -> ExitCode {
    let mut query = Vec::new();
    if let Some(seq) = a.seq {
        query.push(("seq", seq.to_string()));
    }
    if let Some(id) = &a.event_id {
        query.push(("event_id", id.clone()));
    }
    let mut views = Vec::new();
    let mut every = true;
    for server in &a.server {
        let remote = Remote {
            server: Some(server.clone()),
            admin_secret: a.admin_secret.clone(),
        };
        match Client::new(server, &remote, data_dir).and_then(|c| c.fleet(&query)) {
            Ok(Some(view)) => {
                every &= view["holds"]["every_connected_edge"] != false;
                views.push(json!({ "server": server, "view": view }));
            }
            // A replica that has not applied the event yet: its edges lack it too.
            Ok(None) => {
                every = false;
                views.push(json!({ "server": server, "holds": { "event": false } }));
            }
            Err(e) => {
                eprintln!("error: {server}: {e:#}");
                return ExitCode::from(2);
            }
        }
    }
    match views.as_slice() {
        [one] if one.get("view").is_some() => print(&one["view"]),
        _ => print(&json!({
            "replicas": views,
            "holds": { "every_connected_edge": every },
        })),
    }
    if every {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn issue(args: &SettingsArgs, a: IssueArgs) -> anyhow::Result<()> {
    let claims: Option<serde_json::Map<String, Value>> = a
        .claims
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .context("--claims must be a JSON object")?;
    if let Some(server) = &a.remote.server {
        let client = Client::new(server, &a.remote, &args.data_dir)?;
        let body = json!({
            "subject": a.subject, "expires_minutes": a.expires_minutes, "additional_claims": claims,
        });
        print(&client.post("/token", &body)?);
        return Ok(());
    }
    let region = Arc::new(open_region(args)?);
    let issued = block_on(region.issue(
        IssueRequest {
            subject: a.subject,
            expires_minutes: a.expires_minutes,
            additional_claims: claims,
        },
        "cli",
    ))??;
    print(&json!({
        "access_token": issued.token, "token_type": "bearer", "expires_in": issued.expires_in,
        "jti": issued.claims.jti, "subject": issued.claims.sub,
    }));
    Ok(())
}

fn revoke(args: &SettingsArgs, a: RevokeArgs) -> anyhow::Result<()> {
    if let Some(server) = &a.remote.server {
        let client = Client::new(server, &a.remote, &args.data_dir)?;
        let body = json!({
            "type": format!("revoke_{}", a.kind), "value": a.value, "ttl_seconds": a.ttl_seconds,
        });
        print(&client.post("/revoke", &body)?);
        return Ok(());
    }
    let kind = Kind::parse(&a.kind).context("--type must be jti, sub, kid or sid")?;
    if let Some(ttl) = a.ttl_seconds {
        anyhow::ensure!(ttl >= 1, "--ttl-seconds must be at least 1");
    }
    let region = Arc::new(open_region(args)?);
    let expires_at = a.ttl_seconds.map(|t| crate::time::now().saturating_add(t));
    let done = block_on(region.revoke(kind, a.value, expires_at, "cli"))??;
    print(&json!({ "event_id": done.event.event_id, "published": done.published }));
    Ok(())
}

fn inspect(args: &SettingsArgs, a: InspectArgs) -> anyhow::Result<()> {
    if let Some(server) = &a.remote.server {
        let client = Client::new(server, &a.remote, &args.data_dir)?;
        print(&client.post("/token/validate", &json!({ "token": a.token }))?);
        return Ok(());
    }
    let region = open_region(args)?;
    let check = region.check(&a.token, true)?;
    print(&json!({
        "valid": check.valid, "claims": check.claims, "revoked": check.revocation.is_some(),
        "message": check.message,
    }));
    Ok(())
}

fn rotate(args: &SettingsArgs, remote: Remote) -> anyhow::Result<()> {
    if let Some(server) = &remote.server {
        let client = Client::new(server, &remote, &args.data_dir)?;
        print(&client.post("/admin/keys/rotate", &json!({}))?);
        return Ok(());
    }
    let region = open_region(args)?;
    print(&serde_json::to_value(region.rotate_keys("cli")?)?);
    Ok(())
}

fn open_existing(data_dir: &Path) -> anyhow::Result<db::Db> {
    let path = data_dir.join(db::DB_FILE);
    anyhow::ensure!(path.exists(), "no database at {}", path.display());
    crate::store::data_dir::check(data_dir)?;
    db::Db::open(&path).with_context(|| format!("cannot open {}", path.display()))
}

fn edge_credential(args: &SettingsArgs, a: EdgeCredentialArgs) -> anyhow::Result<()> {
    use crate::store::credentials;
    let t = crate::time::now();
    let command = match (a.command, a.name) {
        (None, name) => EdgeCredentialCommand::Create { name },
        (Some(command), None) => command,
        (Some(_), Some(_)) => {
            bail!("--name belongs to creating: edge-credential [create] --name NAME")
        }
    };
    match command {
        EdgeCredentialCommand::Create { name } => {
            let db = open_or_prepare(&args.data_dir)?;
            let name = name.unwrap_or_else(credentials::default_name);
            let secret = credentials::create_recorded(&db, &name, None, t, &args.region)?;
            println!("{secret}");
            eprintln!("edge credential {name:?} created; its secret (above) is shown only once");
        }
        EdgeCredentialCommand::Import { name, secret_file } => {
            let text = if secret_file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?
            } else {
                std::fs::read_to_string(&secret_file)
                    .with_context(|| format!("cannot read {}", secret_file.display()))?
            };
            let db = open_or_prepare(&args.data_dir)?;
            credentials::create_recorded(&db, &name, Some(text.trim()), t, &args.region)?;
            eprintln!("edge credential {name:?} imported");
        }
        EdgeCredentialCommand::List => {
            let db = open_existing(&args.data_dir)?;
            print(&serde_json::to_value(credentials::list(&*db.read()?)?)?);
        }
        EdgeCredentialCommand::Revoke { name } => {
            let db = open_existing(&args.data_dir)?;
            let was_valid = credentials::revoke_recorded(&db, &name, t, &args.region)?;
            print(&json!({ "name": name, "revoked": true, "was_valid": was_valid }));
        }
    }
    Ok(())
}

/// The data dir's database, made if missing: the first credential of a new deployment
/// may come before the first start.
fn open_or_prepare(data_dir: &Path) -> anyhow::Result<db::Db> {
    crate::store::data_dir::prepare(data_dir)?;
    let path = data_dir.join(db::DB_FILE);
    db::Db::open(&path).with_context(|| format!("cannot open {}", path.display()))
}

fn list_keys(data_dir: &Path) -> anyhow::Result<()> {
    let db = open_existing(data_dir)?;
    let list = keys::list(&*db.read()?)?;
    print(&serde_json::to_value(list)?);
    Ok(())
}

fn audit_tail(data_dir: &Path, limit: i64) -> anyhow::Result<()> {
    let db = open_existing(data_dir)?;
    let rows = audit::tail(&*db.read()?, limit)?;
    print(&serde_json::to_value(rows)?);
    Ok(())
}

fn events_export(data_dir: &Path, since: u64) -> anyhow::Result<()> {
    use std::io::Write as _;
    let db = open_existing(data_dir)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut after = since;
    loop {
        // Pages, so no read transaction lasts the whole export.
        let page = db::signed_events(&*db.read()?, after, 1000)?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.seq;
        for event in &page {
            writeln!(out, "{}", serde_json::to_string(event)?)?;
        }
    }
    out.flush()?;
    Ok(())
}

fn audit_export(data_dir: &Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    let db = open_existing(data_dir)?;
    let conn = db.read()?;
    let ring = keys::audit_keyring(&conn)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    audit::export(&conn, &ring, &mut out)?;
    out.flush()?;
    Ok(())
}

/// The keys an audit log's signatures must be by, and where they came from.
struct Pinned {
    keys: shared::Keyring,
    source: String,
}

/// The ML-DSA-65 keys of a JWKS file or `http(s)` URL (other keys are left out: the audit
/// log is signed with ML-DSA-65 only).
fn load_jwks(source: &str) -> anyhow::Result<Pinned> {
    let bytes = if source.starts_with("https://") || source.starts_with("http://") {
        reqwest::blocking::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()?
            .get(source)
            .send()
            .and_then(reqwest::blocking::Response::error_for_status)
            .and_then(reqwest::blocking::Response::bytes)
            .with_context(|| format!("cannot fetch the JWKS at {source}"))?
            .to_vec()
    } else {
        std::fs::read(source).with_context(|| format!("cannot read the JWKS file {source}"))?
    };
    let set = shared::JwkSet::parse(&bytes).with_context(|| format!("{source} is not a JWKS"))?;
    let mut keys = shared::Keyring::new();
    for jwk in set
        .keys
        .iter()
        .filter(|k| k.alg.as_deref() == Some(shared::Alg::MlDsa65.as_str()))
    {
        let key = jwk
            .to_verifying_key()
            .with_context(|| format!("{source}: a key {:?} does not parse", jwk.kid))?;
        keys.add(key);
    }
    anyhow::ensure!(
        keys.iter().next().is_some(),
        "{source} holds no ML-DSA-65 key (the audit log is signed with ML-DSA-65)"
    );
    Ok(Pinned {
        keys,
        source: format!("the JWKS {source}"),
    })
}

/// The data dir's own audit keys.
fn data_dir_keys(data_dir: &Path) -> anyhow::Result<Pinned> {
    let db = open_existing(data_dir)?;
    let keys = keys::audit_keyring(&*db.read()?)?;
    Ok(Pinned {
        keys,
        source: format!("the keys of the data dir {}", data_dir.display()),
    })
}

fn audit_verify(
    data_dir: &Path,
    file: Option<&Path>,
    jwks: Option<&str>,
    trust_file_keys: bool,
) -> ExitCode {
    let pinned = match (jwks, trust_file_keys) {
        (Some(source), _) => load_jwks(source).map(Some),
        (None, true) => Ok(None),
        (None, false) => data_dir_keys(data_dir).map(Some).map_err(|e| match file {
            Some(_) => e.context(
                "no keys to check the export's signatures against: pin the keys that may \
                 sign with --jwks URL|FILE (the region's published JWKS) or --data-dir (the \
                 region that wrote it), or pass --trust-file-keys to check the file only \
                 against the keys it carries (that shows it is consistent, not who wrote it)",
            ),
            None => e,
        }),
    };
    let pinned = match pinned {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let trust = match &pinned {
        Some(p) => audit::Trust::Pinned(&p.keys),
        None => audit::Trust::FileKeys,
    };
    let outcome = match file {
        Some(path) if path == Path::new("-") => {
            Ok(audit::verify_export(std::io::stdin().lock(), trust))
        }
        Some(path) => std::fs::File::open(path)
            .with_context(|| format!("cannot open {}", path.display()))
            .map(|f| audit::verify_export(std::io::BufReader::new(f), trust)),
        None => open_existing(data_dir).and_then(|db| {
            let conn = db.read()?;
            let own;
            let keys = match &pinned {
                Some(p) => &p.keys,
                None => {
                    own = keys::audit_keyring(&conn)?;
                    &own
                }
            };
            Ok(audit::verify(&conn, keys).map(|report| (report, Vec::new())))
        }),
    };
    let list = |kids: &mut dyn Iterator<Item = &String>| {
        let kids: Vec<&str> = kids.map(String::as_str).collect();
        if kids.is_empty() {
            "none".to_owned()
        } else {
            kids.join(", ")
        }
    };
    match outcome {
        Ok(Ok((report, carried))) => {
            let counts = format!(
                "{} rows, {} checkpoints, chain head {}",
                report.rows, report.checkpoints, report.head
            );
            match &pinned {
                Some(p) => {
                    println!("audit log OK: {counts}");
                    println!("signed by: {}", list(&mut report.signers.iter()));
                    println!("trusted: {}", p.source);
                }
                None => {
                    println!(
                        "audit log CONSISTENT but NOT AUTHENTICATED (--trust-file-keys): {counts}"
                    );
                    println!("signed by: {}", list(&mut report.signers.iter()));
                    println!(
                        "these keys come from the file itself, and whoever edits the file can \
                         replace them: compare them with the region's JWKS, or pin it with --jwks"
                    );
                }
            }
            if file.is_some() {
                println!("keys carried by the file: {}", list(&mut carried.iter()));
            }
            if report.unsealed > 0 {
                println!(
                    "note: the last {} rows are chained but not sealed by a checkpoint yet",
                    report.unsealed
                );
            }
            ExitCode::SUCCESS
        }
        Ok(Err(e @ audit::AuditError::UntrustedKey { .. })) => {
            eprintln!("audit log NOT TRUSTED: {e}");
            if let Some(p) = &pinned {
                eprintln!("trusted: {}", p.source);
            }
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("audit log BROKEN: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
