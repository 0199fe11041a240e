//! The region's single writer: one thread owns the write connection and group-commits
//! what concurrent callers hand it, so they share one transaction and one fsync.
//!
//! A caller's operation runs inside a savepoint of the group's `BEGIN IMMEDIATE`
//! transaction (a failing operation rolls back alone); every caller is answered after
//! the `COMMIT` returned (`synchronous = FULL`: on disk), or with its error. The writer
//! takes whatever has queued up while the previous group was being written (up to
//! [`MAX_GROUP`] operations), so an idle server commits a lone request at once and a
//! busy one amortises the fsync over everything that arrived meanwhile.
//!
//! After each commit the writer hands the new audit chain head to the sealer thread,
//! which signs a checkpoint ([`crate::store::audit`]) off the request path (at most one every
//! [`SEAL_INTERVAL`]) and gives it back to the writer to store in the next group.
//!
//! The writer never copies the WAL back into the database file itself (SQLite's
//! auto-checkpoint would do that inside a commit, stalling every caller of the group):
//! a checkpointer thread runs passive checkpoints on its own connection meanwhile.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::store::audit::{self, Checkpoint};
use crate::store::db::Db;
use crate::store::keys::KeySet;
use crate::time::now;

/// Most operations committed together.
pub(crate) const MAX_GROUP: usize = 1024;
/// Shortest time between two checkpoint signatures: ML-DSA-65 costs about 0.7-1.5 ms
/// here, so a checkpoint per 1-3 ms commit group would take a whole core under load.
pub(crate) const SEAL_INTERVAL: Duration = Duration::from_millis(50);
/// How often the checkpointer copies the WAL into the database file.
const WAL_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);
/// WAL pages (4 KiB) past which the checkpointer makes the WAL restart from its
/// beginning; passive checkpoints alone never get there while writes keep coming.
const WAL_RESTART_PAGES: i64 = 4096;

/// What the writer thread does with a group's outcome for one caller.
type Done = Box<dyn FnOnce(Result<(), &rusqlite::Error>) + Send>;
/// One caller's operation: run inside the group's transaction (or told that it could
/// not start), returning how to answer the caller once the commit is known.
type Job = Box<dyn FnOnce(Result<&Transaction<'_>, &rusqlite::Error>) -> Done + Send>;

enum Msg {
    Job(Job),
    /// A signed checkpoint from the sealer, stored in the next group.
    Checkpoint(Checkpoint),
    /// Look at the audit head again (rows written by another connection or process).
    Poke,
    Shutdown,
}

/// Where the sealer finds the key to sign checkpoints with, now.
pub(crate) type KeySource = Arc<dyn Fn() -> Arc<KeySet> + Send + Sync>;

/// The writer thread's handle; dropping it commits what is queued, seals the audit
/// log's tail and joins the thread.
pub(crate) struct Writer {
    tx: Sender<Msg>,
    thread: Option<JoinHandle<()>>,
    /// Dropped to stop the checkpointer.
    checkpointer_stop: Option<Sender<()>>,
    checkpointer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

/// A copy of a rusqlite error for every caller of a failed commit.
fn copy_error(e: &rusqlite::Error) -> rusqlite::Error {
    let code = e
        .sqlite_error()
        .copied()
        .unwrap_or_else(|| rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR));
    rusqlite::Error::SqliteFailure(code, Some(e.to_string()))
}

impl Writer {
    /// Starts the writer (and its sealer) on a connection of its own to `db`. Rows
    /// written at start-up or left unsealed by a crash are sealed first, before the region
    /// serves (signed, then stored).
    pub(crate) fn start(db: &Db, keys: KeySource, region: String) -> rusqlite::Result<Writer> {
        let mut conn = db.open_connection()?;
        if let Err(e) = seal_tail(&mut conn, &keys, &region) {
            tracing::warn!(error = %e, "could not seal the audit log's tail at start");
        }
        let (checkpointer_stop, stop_rx) = mpsc::channel::<()>();
        let checkpointer = match conn.path().map(std::path::PathBuf::from) {
            Some(path) if !path.as_os_str().is_empty() => {
                if let Err(e) = conn.pragma_update(None, "wal_autocheckpoint", 0) {
                    tracing::warn!(error = %e, "cannot turn off the writer's auto-checkpoint");
                }
                Some(
                    std::thread::Builder::new()
                        .name("wal-checkpointer".into())
                        .spawn(move || checkpointer(&path, &stop_rx))
                        .expect("cannot start the WAL checkpointer thread"),
                )
            }
            _ => None,
        };
        let (tx, rx) = mpsc::channel();
        let (seal_tx, seal_rx) = mpsc::channel::<(i64, String)>();
        let sealer_back = tx.clone();
        let sealer_keys = keys.clone();
        let sealer_region = region.clone();
        std::thread::Builder::new()
            .name("audit-sealer".into())
            .spawn(move || sealer(&seal_rx, &sealer_back, &sealer_keys, &sealer_region))
            .expect("cannot start the audit sealer thread");
        let thread = std::thread::Builder::new()
            .name("db-writer".into())
            .spawn(move || {
                let mut state = WriterState {
                    conn,
                    seal_tx,
                    requested: 0,
                    keys,
                    region,
                };
                state.requested = audit::last_checkpoint(&state.conn).unwrap_or(0);
                state.run(&rx);
            })
            .expect("cannot start the database writer thread");
        Ok(Writer {
            tx,
            thread: Some(thread),
            checkpointer_stop: Some(checkpointer_stop),
            checkpointer,
        })
    }

    fn send(&self, msg: Msg) -> bool {
        self.tx.send(msg).is_ok()
    }

    fn submit<T, E, F>(&self, op: F) -> tokio::sync::oneshot::Receiver<Result<T, E>>
    where
        T: Send + 'static,
        E: From<rusqlite::Error> + Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, E> + Send + 'static,
    {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |tx| {
            let outcome = match tx {
                Err(e) => Err(E::from(copy_error(e))),
                Ok(tx) => in_savepoint(tx, op),
            };
            Box::new(move |commit| {
                let result = match (commit, outcome) {
                    (Ok(()), outcome) => outcome,
                    (Err(e), Ok(_)) => Err(E::from(copy_error(e))),
                    (Err(_), Err(e)) => Err(e),
                };
                let _ = answer.send(result);
            })
        });
        if !self.send(Msg::Job(job)) {
            tracing::error!("the database writer thread is gone");
        }
        answered
    }

    /// Runs `op` in the next group's transaction and returns its result once the group
    /// has committed (blocking; call it off the async threads).
    pub(crate) fn run<T, E, F>(&self, op: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<rusqlite::Error> + Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, E> + Send + 'static,
    {
        self.submit(op)
            .blocking_recv()
            .unwrap_or_else(|_| Err(E::from(copy_error(&rusqlite::Error::InvalidQuery))))
    }

    /// [`Writer::run`] for async callers.
    pub(crate) async fn run_async<T, E, F>(&self, op: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<rusqlite::Error> + Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, E> + Send + 'static,
    {
        self.submit(op)
            .await
            .unwrap_or_else(|_| Err(E::from(copy_error(&rusqlite::Error::InvalidQuery))))
    }

    /// Asks the writer to seal audit rows other connections or processes appended.
    pub(crate) fn poke(&self) {
        self.send(Msg::Poke);
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.send(Msg::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.checkpointer_stop = None;
        if let Some(thread) = self.checkpointer.take() {
            let _ = thread.join();
        }
    }
}

/// Copies committed WAL frames into the database file every
/// [`WAL_CHECKPOINT_INTERVAL`] with passive checkpoints, which never block the writer.
/// Past [`WAL_RESTART_PAGES`] a restart checkpoint (which waits for the writer, but only
/// has the frames since the passive one left to copy) makes the next commit write the
/// WAL from its beginning again, so the file stays bounded.
fn checkpointer(path: &std::path::Path, stop: &Receiver<()>) {
    let conn = match Connection::open(path) {
        Ok(conn) => conn,
        Err(e) => {
            tracing::error!(error = %e, "the WAL checkpointer cannot open the database");
            return;
        }
    };
    let _ = conn.busy_timeout(Duration::from_secs(1));
    let _ = conn.pragma_update(None, "synchronous", "FULL");
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(WAL_CHECKPOINT_INTERVAL) {
        let pages = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1));
        let restart = match pages {
            Ok(pages) => pages > WAL_RESTART_PAGES,
            Err(e) => {
                tracing::warn!(error = %e, "WAL checkpoint failed");
                false
            }
        };
        if restart && let Err(e) = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
        {
            tracing::warn!(error = %e, "WAL restart checkpoint failed");
        }
    }
}

/// Signs a checkpoint of the chain head, if rows were appended since the last one, and
/// stores it (the signature is made before the transaction opens).
fn seal_tail(
    conn: &mut Connection,
    keys: &KeySource,
    region: &str,
) -> Result<(), audit::AppendError> {
    let Some((upto, head)) = audit::head(conn)? else {
        return Ok(());
    };
    if upto <= audit::last_checkpoint(conn)? {
        return Ok(());
    }
    let cp = Checkpoint::sign(&keys().event_key, upto, head, now(), region)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    audit::store_checkpoint(&tx, &cp)?;
    tx.commit()?;
    Ok(())
}

/// Runs `op` in a savepoint, so its failure undoes only its own writes.
fn in_savepoint<T, E, F>(tx: &Transaction<'_>, op: F) -> Result<T, E>
where
    E: From<rusqlite::Error>,
    F: FnOnce(&Transaction<'_>) -> Result<T, E>,
{
    tx.prepare_cached("SAVEPOINT op")?.execute([])?;
    match op(tx) {
        Ok(value) => {
            tx.prepare_cached("RELEASE op")?.execute([])?;
            Ok(value)
        }
        Err(e) => {
            tx.prepare_cached("ROLLBACK TO op")?.execute([])?;
            tx.prepare_cached("RELEASE op")?.execute([])?;
            Err(e)
        }
    }
}

struct WriterState {
    conn: Connection,
    seal_tx: Sender<(i64, String)>,
    /// The audit row up to which a checkpoint was stored or asked for.
    requested: i64,
    keys: KeySource,
    region: String,
}

impl WriterState {
    fn run(&mut self, rx: &Receiver<Msg>) {
        let mut shutdown = false;
        while !shutdown {
            let Ok(first) = rx.recv() else { break };
            let mut batch = vec![first];
            while batch.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(msg) => batch.push(msg),
                    Err(_) => break,
                }
            }
            let mut jobs = Vec::with_capacity(batch.len());
            let mut checkpoints = Vec::new();
            for msg in batch {
                match msg {
                    Msg::Job(job) => jobs.push(job),
                    Msg::Checkpoint(cp) => checkpoints.push(cp),
                    Msg::Poke => {}
                    Msg::Shutdown => shutdown = true,
                }
            }
            if !jobs.is_empty() || !checkpoints.is_empty() {
                self.commit_group(jobs, &checkpoints);
            }
            self.request_seal();
        }
        // Whatever the sealer had not stored yet is signed here, so a clean stop leaves
        // no unsealed rows.
        if let Err(e) = self.seal_now() {
            tracing::warn!(error = %e, "could not seal the audit log at shutdown");
        }
    }

    fn commit_group(&mut self, jobs: Vec<Job>, checkpoints: &[Checkpoint]) {
        let tx = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => {
                tracing::error!(error = %e, "cannot begin a write transaction");
                for job in jobs {
                    job(Err(&e))(Err(&e));
                }
                return;
            }
        };
        let done: Vec<Done> = jobs.into_iter().map(|job| job(Ok(&tx))).collect();
        for cp in checkpoints {
            if let Err(e) = audit::store_checkpoint(&tx, cp) {
                tracing::warn!(error = %e, upto = cp.upto, "cannot store an audit checkpoint");
            }
        }
        match tx.commit() {
            Ok(()) => done.into_iter().for_each(|d| d(Ok(()))),
            Err(e) => {
                tracing::error!(error = %e, "group commit failed");
                done.into_iter().for_each(|d| d(Err(&e)));
            }
        }
    }

    /// Asks the sealer for a checkpoint when the chain grew past the last one asked.
    fn request_seal(&mut self) {
        match audit::head(&self.conn) {
            Ok(Some((seq, hash))) if seq > self.requested => {
                self.requested = seq;
                let _ = self.seal_tx.send((seq, hash));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the audit head"),
        }
    }

    fn seal_now(&mut self) -> Result<(), audit::AppendError> {
        seal_tail(&mut self.conn, &self.keys, &self.region)
    }
}

/// Signs checkpoints of the chain heads the writer reports, the newest one at a time,
/// at most one per [`SEAL_INTERVAL`], and hands them back to the writer.
fn sealer(rx: &Receiver<(i64, String)>, back: &Sender<Msg>, keys: &KeySource, region: &str) {
    let mut last = Instant::now() - SEAL_INTERVAL;
    while let Ok(mut head) = rx.recv() {
        // Waits out the interval, taking whatever newer head arrives meanwhile.
        loop {
            let wait = SEAL_INTERVAL.saturating_sub(last.elapsed());
            if wait.is_zero() {
                break;
            }
            match rx.recv_timeout(wait) {
                Ok(newer) => head = newer,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        while let Ok(newer) = rx.try_recv() {
            head = newer;
        }
        last = Instant::now();
        let key = keys().event_key.clone();
        match Checkpoint::sign(&key, head.0, head.1, now(), region) {
            Ok(cp) => {
                if back.send(Msg::Checkpoint(cp)).is_err() {
                    return;
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot sign an audit checkpoint"),
        }
    }
}
