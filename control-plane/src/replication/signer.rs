//! The event signer: one thread that signs revocation events in batches, one ML-DSA-65
//! signature over the Merkle root of every event waiting ([`shared::revocation::sign_batch`]).
//!
//! An ML-DSA-65 signature costs about 0.7 ms here, so signing each event alone caps a
//! region near 1,400 revocations a second per core. The signer takes the first event
//! that arrives and every other one already queued behind it, signs them together and
//! answers each with its own signed form, which any consumer verifies on its own. An
//! idle region signs batches of one, with no added wait; under load the batch grows with
//! the queue, so the signature cost per event falls as the rate rises.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shared::{JoseError, RevocationEvent};

use crate::store::writer::KeySource;

/// Most events signed under one signature (a proof of at most 8 hashes).
pub(crate) const MAX_BATCH: usize = 256;

/// How long a batch waits for more events when the previous batch showed concurrent
/// callers. A lone caller (the previous batch held one event) never waits.
const LINGER: Duration = Duration::from_millis(1);

type Reply = tokio::sync::oneshot::Sender<Result<(RevocationEvent, String), JoseError>>;

struct Job {
    event: RevocationEvent,
    reply: Reply,
}

/// Counts what the signer did, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct SignerStats {
    /// Events signed.
    pub(crate) events: AtomicU64,
    /// ML-DSA-65 signatures made for them.
    pub(crate) signatures: AtomicU64,
}

/// A test hook: while closed, the signer takes the next batch and holds it unsigned.
#[derive(Debug)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
    /// Events submitted and not signed yet.
    waiting: tokio::sync::watch::Sender<usize>,
}

impl Gate {
    /// Returns at once when the gate is open; otherwise waits until it opens.
    fn pass(&self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        while !*open {
            open = self.opened.wait(open).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn set_open(&self, value: bool) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = value;
        self.opened.notify_all();
    }
}

/// The event signer paused by [`EventSigner::pause`] (a test hook, so tests can look
/// at what the rest of the region does while a revocation waits for its signature);
/// dropping it resumes the signer.
#[derive(Debug)]
pub struct SignerPause {
    gate: Arc<Gate>,
}

impl SignerPause {
    /// Resolves once at least `events` events wait for their signature.
    pub async fn holding(&self, events: usize) {
        let mut waiting = self.gate.waiting.subscribe();
        let _ = waiting.wait_for(|waiting| *waiting >= events).await;
    }

    /// Lets the signer sign what it holds and everything after it.
    pub fn resume(self) {
        drop(self);
    }
}

impl Drop for SignerPause {
    fn drop(&mut self) {
        self.gate.set_open(true);
    }
}

/// Handle to the signer thread; dropping it lets the thread finish what is queued and
/// joins it.
pub(crate) struct EventSigner {
    tx: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<SignerStats>,
    gate: Arc<Gate>,
}

impl std::fmt::Debug for EventSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSigner")
    }
}

impl EventSigner {
    /// Starts the signer; it signs with the event key `keys` gives at each batch.
    pub(crate) fn start(keys: KeySource) -> EventSigner {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(SignerStats::default());
        let counted = stats.clone();
        let gate = Arc::new(Gate {
            open: Mutex::new(true),
            opened: Condvar::new(),
            waiting: tokio::sync::watch::Sender::new(0),
        });
        let at_gate = gate.clone();
        let thread = std::thread::Builder::new()
            .name("event-signer".into())
            .spawn(move || run(&rx, &keys, &counted, &at_gate))
            .expect("cannot start the event signer thread");
        EventSigner {
            tx: Some(tx),
            thread: Some(thread),
            stats,
            gate,
        }
    }

    /// Pauses signing until the returned guard is dropped: the next batch is taken from
    /// the queue and held unsigned, later events queue behind it. A test hook.
    pub(crate) fn pause(&self) -> SignerPause {
        self.gate.set_open(false);
        SignerPause {
            gate: self.gate.clone(),
        }
    }

    /// What the signer has done so far.
    pub(crate) fn stats(&self) -> &SignerStats {
        &self.stats
    }

    fn submit(
        &self,
        event: RevocationEvent,
    ) -> tokio::sync::oneshot::Receiver<Result<(RevocationEvent, String), JoseError>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.gate.waiting.send_modify(|waiting| *waiting += 1);
        if let Some(tx) = &self.tx {
            // A send fails only once the thread has stopped; the dropped reply then
            // reports it to the caller.
            let _ = tx.send(Job { event, reply });
        }
        rx
    }

    /// Signs `event` (its `kid` is set to the key that signs it) and returns it with its
    /// signed form. Blocks: call from a blocking thread, never from async code.
    pub(crate) fn sign(
        &self,
        event: RevocationEvent,
    ) -> Result<(RevocationEvent, String), JoseError> {
        self.submit(event)
            .blocking_recv()
            .unwrap_or(Err(JoseError::SigningFailed))
    }

    /// [`EventSigner::sign`] for async callers.
    pub(crate) async fn sign_async(
        &self,
        event: RevocationEvent,
    ) -> Result<(RevocationEvent, String), JoseError> {
        self.submit(event)
            .await
            .unwrap_or(Err(JoseError::SigningFailed))
    }
}

impl Drop for EventSigner {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(rx: &Receiver<Job>, keys: &KeySource, stats: &SignerStats, gate: &Gate) {
    let mut concurrent = false;
    while let Ok(first) = rx.recv() {
        // Under concurrent load a short wait fills the batch: one signature then covers
        // many events, and the CPU it saves goes to the requests themselves.
        let deadline = concurrent.then(|| Instant::now() + LINGER);
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            let next = match deadline {
                Some(deadline) => {
                    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                }
                None => rx.try_recv().map_err(|_| mpsc::RecvTimeoutError::Timeout),
            };
            match next {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        concurrent = jobs.len() > 1;
        gate.pass();
        // One key snapshot for the whole batch: every event names the key that signs it.
        let key = keys().event_key.clone();
        let kid = key.kid();
        let (events, replies): (Vec<RevocationEvent>, Vec<Reply>) = jobs
            .into_iter()
            .map(|job| {
                let mut event = job.event;
                event.kid.clone_from(&kid);
                (event, job.reply)
            })
            .unzip();
        let count = events.len();
        match shared::revocation::sign_batch(&events, &key) {
            Ok(signed) => {
                stats.signatures.fetch_add(1, Ordering::Relaxed);
                stats
                    .events
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                for ((reply, event), signed) in replies.into_iter().zip(events).zip(signed) {
                    let _ = reply.send(Ok((event, signed)));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, events = events.len(), "cannot sign revocation events");
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        gate.waiting
            .send_modify(|waiting| *waiting = waiting.saturating_sub(count));
    }
}

#[cfg(test)]
mod tests {
    use shared::keys::{Alg, Keyring, SigningKey};
    use shared::{Kind, random};

    use super::*;
    use crate::store::keys::KeySet;

    fn event(value: &str) -> RevocationEvent {
        RevocationEvent {
            event_id: random::id(),
            kind: Kind::Jti,
            value: value.into(),
            not_before: None,
            expires_at: 2_000_000_000,
            issued_at: 1_700_000_000,
            origin: "test".into(),
            nonce: "00".into(),
            kid: String::new(),
        }
    }

    fn keyset() -> Arc<KeySet> {
        let key = Arc::new(SigningKey::from_seed(Alg::MlDsa65, &[3; 32]));
        Arc::new(KeySet {
            token_key: key.clone(),
            event_key: key,
            keyring: Keyring::new(),
            jwks: Default::default(),
            version: String::new(),
            refresh_at: None,
        })
    }

    #[test]
    fn queued_events_share_a_signature_and_each_verifies_alone() {
        let keyset = keyset();
        let mut ring = Keyring::new();
        ring.add(keyset.event_key.verifying_key());
        let source = keyset.clone();
        let signer = EventSigner::start(Arc::new(move || source.clone()));
        // All queued at once: the first signature (milliseconds) leaves the rest waiting,
        // so they go out in very few batches.
        let pending: Vec<_> = (0..64)
            .map(|i| signer.submit(event(&format!("j{i}"))))
            .collect();
        for (i, reply) in pending.into_iter().enumerate() {
            let (event, signed) = reply.blocking_recv().unwrap().unwrap();
            assert_eq!(event.value, format!("j{i}"));
            assert_eq!(
                event.kid,
                keyset.event_key.kid(),
                "the signing key is named"
            );
            assert_eq!(RevocationEvent::verify(&signed, &ring).unwrap(), event);
        }
        let stats = signer.stats();
        assert_eq!(stats.events.load(Ordering::Relaxed), 64);
        let signatures = stats.signatures.load(Ordering::Relaxed);
        assert!(
            signatures <= 8,
            "{signatures} signatures for 64 queued events"
        );
    }

    #[test]
    fn a_paused_signer_holds_its_batch_until_resumed() {
        let keyset = keyset();
        let source = keyset.clone();
        let signer = EventSigner::start(Arc::new(move || source.clone()));
        let pause = signer.pause();
        let mut pending = signer.submit(event("held"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(pause.holding(1));
        assert!(
            pending.try_recv().is_err(),
            "nothing is signed while paused"
        );
        assert_eq!(signer.stats().signatures.load(Ordering::Relaxed), 0);
        pause.resume();
        let (event, _) = pending.blocking_recv().unwrap().unwrap();
        assert_eq!(event.value, "held");
    }

    #[test]
    fn a_lone_event_is_signed_at_once() {
        let keyset = keyset();
        let source = keyset.clone();
        let signer = EventSigner::start(Arc::new(move || source.clone()));
        let (event, _) = signer.sign(event("alone")).unwrap();
        assert_eq!(event.value, "alone");
        assert_eq!(signer.stats().signatures.load(Ordering::Relaxed), 1);
    }
}
