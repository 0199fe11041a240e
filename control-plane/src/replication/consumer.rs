//! The Kafka consumer of a region: verifies each signed revocation event from the
//! `revocations` topic against this region's keys and `PEER_JWKS`, applies it once
//! (`event_id`) to SQLite, the cache and the edge feed, and only then commits the offset.
//!
//! An event must name the key that signed it and claim the region that key is bound to
//! (`peers`): a trusted region cannot speak for another. Forged, malformed, expired,
//! unknown-key or misattributed messages are logged, counted by reason in `/metrics`
//! and skipped (their offset is committed, so a poison message never stalls
//! its partition). A control plane ignores its own events coming back (signed by its own
//! keys); the events of a replica of its region (keys from a `PEER_JWKS` source bound to
//! this region's name) are applied like any peer's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::Message as _;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use shared::revocation::Verified;
use shared::{JoseError, RevocationEvent};

use crate::Region;
use crate::config::KafkaSettings;
use crate::replication::peers::{self, Peers};
use crate::store::db;
use crate::time::now;

/// Most messages applied together.
const MAX_BATCH: usize = 256;

/// Why a message was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// Not a compact JWS of a revocation event (bad bytes, JSON, typ, size).
    Malformed,
    /// The signature does not verify under the key it names.
    BadSignature,
    /// Signed by a key neither this region nor any peer publishes.
    UnknownKey,
    /// It can no longer match a valid token.
    Expired,
    /// Already applied (a replay or a redelivery).
    Duplicate,
    /// Names another key (`kid`) than the one that signed it.
    WrongKid,
    /// Claims an origin the key that signed it is not bound to (see `peers`).
    WrongOrigin,
}

impl Rejection {
    /// Every reason, in `/metrics` order.
    pub(crate) const ALL: [Rejection; 7] = [
        Rejection::Malformed,
        Rejection::BadSignature,
        Rejection::UnknownKey,
        Rejection::Expired,
        Rejection::Duplicate,
        Rejection::WrongKid,
        Rejection::WrongOrigin,
    ];

    /// The label in `/metrics`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::BadSignature => "bad_signature",
            Rejection::UnknownKey => "unknown_key",
            Rejection::Expired => "expired",
            Rejection::Duplicate => "duplicate",
            Rejection::WrongKid => "wrong_kid",
            Rejection::WrongOrigin => "wrong_origin",
        }
    }

    fn index(self) -> usize {
        match self {
            Rejection::Malformed => 0,
            Rejection::BadSignature => 1,
            Rejection::UnknownKey => 2,
            Rejection::Expired => 3,
            Rejection::Duplicate => 4,
            Rejection::WrongKid => 5,
            Rejection::WrongOrigin => 6,
        }
    }
}

/// What the consumer did, for `/metrics` and `/ready`.
#[derive(Debug, Default)]
pub(crate) struct ConsumerStats {
    /// Events applied.
    pub applied: AtomicU64,
    /// This region's own events seen coming back (skipped).
    pub own: AtomicU64,
    /// Messages not applied, by [`Rejection`].
    pub rejected: [AtomicU64; 7],
    /// Messages behind the end of the topic at the last check (all partitions).
    pub lag: AtomicU64,
    /// 1 while the consumer is subscribed and receiving.
    pub running: AtomicU64,
    /// Times the tail reader started at, or jumped to, the end of the topic.
    pub tail_jumps: AtomicU64,
    /// Events the tail reader applied ahead of the backlog.
    pub tail_applied: AtomicU64,
}

impl ConsumerStats {
    fn reject(&self, why: Rejection) {
        self.rejected[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Rejections by reason.
    pub(crate) fn rejected(&self) -> Vec<(Rejection, u64)> {
        Rejection::ALL
            .iter()
            .map(|r| (*r, self.rejected[r.index()].load(Ordering::Relaxed)))
            .collect()
    }
}

/// Most messages remembered as refused for their signature ([`Refused`]).
const MAX_REFUSED: usize = 100_000;

/// The digests of messages whose signature did not verify: the same bytes again cost a
/// hash, not a verification. Only exact copies match (SHA-256 of the whole message), so
/// nothing genuine can be refused through it.
#[derive(Debug, Default)]
pub(crate) struct Refused {
    seen: std::sync::Mutex<std::collections::HashSet<[u8; 32]>>,
}

impl Refused {
    fn contains(&self, digest: &[u8; 32]) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(digest)
    }

    fn add(&self, digest: [u8; 32]) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_REFUSED {
            seen.clear();
        }
        seen.insert(digest);
    }
}

/// A message that passed every check.
#[derive(Debug)]
pub(crate) enum Checked {
    /// A peer's event to apply, with its signed form.
    Apply(RevocationEvent, String),
    /// This region's own event coming back: nothing to do.
    Own,
}

/// Checks one message without applying it (CPU and a SQLite read: run it on a blocking
/// thread). What the message claims is read first, unverified, to refuse at the cost of
/// a parse what would be refused after the ML-DSA-65 verification anyway: an exact copy
/// of a message already refused for its signature, an event naming another key than its
/// header's or a region its key is not bound to, an expired one, one already applied,
/// and this region's own events coming back (skipped, as they were after verifying).
/// Everything else is verified, and the same checks run again on what was verified.
pub(crate) fn check(
    region: &Region,
    peers: &Peers,
    refused: &Refused,
    payload: Option<&[u8]>,
) -> Result<Checked, Rejection> {
    let signed = payload
        .and_then(|p| std::str::from_utf8(p).ok())
        .ok_or(Rejection::Malformed)?;
    let digest = shared::sha256(signed.as_bytes());
    if refused.contains(&digest) {
        return Err(Rejection::BadSignature);
    }
    let own_region = region.settings().region.as_str();
    let own = region.keys();
    let (signer, claimed) = RevocationEvent::claimed(signed).ok_or(Rejection::Malformed)?;
    if claimed.origin == own_region && claimed.kid == signer && own.keyring.get(&signer).is_some() {
        return Ok(Checked::Own);
    }
    let claim = Verified {
        event: claimed,
        signer,
    };
    fits(peers, own_region, &own, &claim)?;
    if claim.event.expires_at <= now() {
        return Err(Rejection::Expired);
    }
    let applied = region.db().read().ok().and_then(|conn| {
        db::has_revocation(&conn, &claim.event.origin, &claim.event.event_id).ok()
    });
    if applied == Some(true) {
        return Err(Rejection::Duplicate);
    }
    let verified = peers
        .verify_event(own.clone(), signed)
        .map_err(|e| match e {
            JoseError::UnknownKey(_) => Rejection::UnknownKey,
            JoseError::BadSignature => {
                refused.add(digest);
                Rejection::BadSignature
            }
            _ => Rejection::Malformed,
        })?;
    fits(peers, own_region, &own, &verified)?;
    // Only this process's keys make an event its own: an event of this region signed by
    // a replica's key (a peer source bound to this region's name) is applied like a
    // peer region's.
    if own.keyring.get(&verified.signer).is_some() {
        return Ok(Checked::Own);
    }
    if verified.event.expires_at <= now() {
        return Err(Rejection::Expired);
    }
    Ok(Checked::Apply(verified.event, signed.to_owned()))
}

/// A trusted key signs for its own region only, and in its own name.
fn fits(
    peers: &Peers,
    own_region: &str,
    own: &crate::store::keys::KeySet,
    event: &Verified,
) -> Result<(), Rejection> {
    peers
        .origin_check(own_region, own, event)
        .map_err(|misfit| match misfit {
            peers::Misfit::Kid => Rejection::WrongKid,
            peers::Misfit::Origin => Rejection::WrongOrigin,
        })
}

/// Longest an event signed by an unknown key waits for a peer JWKS that could not be
/// fetched (see [`check_all`]); after it, the event is refused as `unknown_key`.
const UNKNOWN_KEY_WAIT: Duration = Duration::from_secs(30);

/// Pause between two looks for the keys of such an event (a refetch happens at most
/// every `peers::MIN_REFETCH`).
const UNKNOWN_KEY_RETRY: Duration = Duration::from_millis(250);

/// Checks `payloads` on up to `workers` blocking threads at once (ML-DSA-65
/// verifications are the cost of a flood: they use every core, and none of the async
/// threads that serve HTTP); an unknown key refreshes `PEER_JWKS` (rate limited) and
/// checks those messages again, waiting for a peer JWKS that could not be fetched (up
/// to [`UNKNOWN_KEY_WAIT`]). Results in input order.
async fn check_all(
    region: &Arc<Region>,
    peers: &Arc<Peers>,
    refused: &Arc<Refused>,
    payloads: Vec<Option<Vec<u8>>>,
    workers: usize,
) -> Vec<Result<Checked, Rejection>> {
    let n = payloads.len();
    let payloads = Arc::new(payloads);
    let run = |indices: Vec<usize>| {
        let (region, peers, refused, payloads) = (
            region.clone(),
            peers.clone(),
            refused.clone(),
            payloads.clone(),
        );
        move || {
            indices
                .into_iter()
                .map(|i| (i, check(&region, &peers, &refused, payloads[i].as_deref())))
                .collect::<Vec<_>>()
        }
    };
    let mut results: Vec<Option<Result<Checked, Rejection>>> = (0..n).map(|_| None).collect();
    let workers = workers.clamp(1, n.max(1));
    let mut checks = tokio::task::JoinSet::new();
    for w in 0..workers {
        // Interleaved, so a real event late in the batch is not left for last.
        checks.spawn_blocking(run((w..n).step_by(workers).collect()));
    }
    while let Some(done) = checks.join_next().await {
        match done {
            Ok(part) => {
                for (i, r) in part {
                    results[i] = Some(r);
                }
            }
            Err(e) => tracing::error!(error = %e, "a consumer check failed"),
        }
    }
    let unknown_in = |results: &[Option<Result<Checked, Rejection>>]| -> Vec<usize> {
        (0..n)
            .filter(|&i| matches!(results[i], Some(Err(Rejection::UnknownKey))))
            .collect()
    };
    let mut unknown = unknown_in(&results);
    // A key is unknown because a peer published it after the last fetch, or because a
    // peer's JWKS could not be fetched (a peer that started after this one, or is away):
    // then its events wait for its keys instead of being dropped, up to
    // UNKNOWN_KEY_WAIT. With every source fetched, an unknown key is nobody's and its
    // events are refused at once (a flood of them costs no wait).
    let give_up = tokio::time::Instant::now() + UNKNOWN_KEY_WAIT;
    while !unknown.is_empty() {
        let refreshed = peers.refresh_soon().await;
        if refreshed {
            peers.hand_to(region);
        }
        // Read before checking again: keys fetched by the refresher meanwhile count.
        let complete = peers.complete();
        if refreshed || complete {
            if let Ok(part) = tokio::task::spawn_blocking(run(unknown)).await {
                for (i, r) in part {
                    results[i] = Some(r);
                }
            }
            unknown = unknown_in(&results);
        }
        if unknown.is_empty() || complete || tokio::time::Instant::now() >= give_up {
            break;
        }
        tokio::time::sleep(UNKNOWN_KEY_RETRY).await;
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or(Err(Rejection::Malformed)))
        .collect()
}

/// Applies a checked message. `Ok(true)` applied, `Ok(false)` own event.
async fn apply(region: &Arc<Region>, checked: Checked) -> Result<bool, Rejection> {
    let (event, signed) = match checked {
        Checked::Own => return Ok(false),
        Checked::Apply(event, signed) => (event, signed),
    };
    let event = Arc::new((event, signed));
    loop {
        let (writer, job) = (region.clone(), event.clone());
        match tokio::task::spawn_blocking(move || writer.ingest(&job.0, &job.1)).await {
            Ok(Ok(true)) => return Ok(true),
            Ok(Ok(false)) => return Err(Rejection::Duplicate),
            // Storage failed: not the message's fault. Its offset stays uncommitted and
            // the partition waits, so a verified event is never skipped.
            Ok(Err(e)) => tracing::error!(error = %e, "cannot apply a peer event; retrying"),
            Err(e) => tracing::error!(error = %e, "ingest task failed; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Checks one message and applies it. `Ok(true)` applied, `Ok(false)` own event.
#[cfg(test)]
pub(crate) async fn handle(
    region: &Arc<Region>,
    peers: &Arc<Peers>,
    payload: Option<&[u8]>,
) -> Result<bool, Rejection> {
    let refused = Arc::new(Refused::default());
    let checked = check_all(
        region,
        peers,
        &refused,
        vec![payload.map(<[u8]>::to_vec)],
        1,
    )
    .await
    .pop()
    .unwrap_or(Err(Rejection::Malformed))?;
    apply(region, checked).await
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Creates the region's consumer (its own group), subscribed to the revocations topic.
pub(crate) fn subscribe(settings: &KafkaSettings) -> Result<StreamConsumer, SubscribeError> {
    let consumer: StreamConsumer = settings
        .client_config()
        .set("group.id", &settings.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("fetch.wait.max.ms", settings.fetch_wait_ms.to_string())
        .set("topic.metadata.refresh.interval.ms", "2000")
        .create()
        .map_err(SubscribeError::Create)?;
    consumer
        .subscribe(&[&settings.revocations_topic])
        .map_err(|e| SubscribeError::Subscribe(settings.revocations_topic.clone(), e))?;
    Ok(consumer)
}

/// Why the region's consumer could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SubscribeError {
    /// librdkafka refused the consumer's configuration.
    #[error("cannot create a Kafka consumer: {0}")]
    Create(rdkafka::error::KafkaError),
    /// The topic could not be subscribed to.
    #[error("cannot subscribe to {0}: {1}")]
    Subscribe(String, rdkafka::error::KafkaError),
}

/// Messages behind the end of the topic past which the tail reader reads the newest
/// messages first (and jumps to the end again when it falls as far behind itself).
const TAIL_AFTER: u64 = 512;

/// Messages before the end of each partition where the tail reader starts: what was
/// published just before it looked is read too.
const TAIL_WINDOW: i64 = 256;

/// How often the tail reader compares positions with the end of the topic.
const TAIL_CHECK: Duration = Duration::from_millis(250);

/// The tail reader: while the region's consumer is more than [`TAIL_AFTER`] messages
/// behind (a flood of forged events under a trusted `kid` costs one ML-DSA-65
/// verification each), a second client of the topic, with its own group and no commits,
/// reads from the end of each partition the consumer holds, so an event published after
/// the flood is verified and applied within about [`TAIL_CHECK`] instead of behind every
/// forgery. It applies through the same checks and the same writer; the consumer later
/// meets those events as already applied (counted `duplicate`), and the refused
/// digests make a forgery both meet cost one verification. Events in the middle of a
/// flood still wait for the consumer, which alone commits positions, so nothing is
/// skipped. The client is made the first time it is needed.
async fn tail(
    region: Arc<Region>,
    peers: Arc<Peers>,
    refused: Arc<Refused>,
    settings: KafkaSettings,
    main: Arc<StreamConsumer>,
    stats: Arc<ConsumerStats>,
    workers: usize,
) {
    let mut reader: Option<Arc<StreamConsumer>> = None;
    let mut reading = false;
    let mut checked_at = tokio::time::Instant::now();
    loop {
        if !reading || checked_at.elapsed() >= TAIL_CHECK {
            checked_at = tokio::time::Instant::now();
            let (m, r) = (main.clone(), reader.clone().filter(|_| reading));
            let (behind, own) =
                tokio::task::spawn_blocking(move || (lag_of(&m), r.and_then(|r| read_lag_of(&r))))
                    .await
                    .unwrap_or((None, None));
            if behind.is_some_and(|b| b > TAIL_AFTER) {
                if !reading || own.is_some_and(|o| o > TAIL_AFTER) {
                    if reader.is_none() {
                        reader = tail_reader(&settings).map(Arc::new);
                    }
                    reading = match reader.clone() {
                        Some(r) => {
                            let m = main.clone();
                            tokio::task::spawn_blocking(move || jump_to_end(&m, &r))
                                .await
                                .unwrap_or(false)
                        }
                        None => false,
                    };
                    if reading {
                        stats.tail_jumps.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(?behind, ?own, "tail reader: at the end of the topic");
                    }
                }
            } else if reading {
                if let Some(r) = &reader
                    && let Err(e) = r.unassign()
                {
                    tracing::debug!(error = %e, "tail reader: cannot unassign");
                }
                reading = false;
            }
        }
        let Some(r) = reader.as_ref().filter(|_| reading) else {
            tokio::time::sleep(TAIL_CHECK).await;
            continue;
        };
        let first = match tokio::time::timeout(TAIL_CHECK, r.recv()).await {
            Ok(Ok(m)) => m.detach(),
            _ => continue,
        };
        let (_, payloads) = batch_from(r, first);
        for outcome in check_all(&region, &peers, &refused, payloads, workers).await {
            if let Ok(checked) = outcome
                && apply(&region, checked).await == Ok(true)
            {
                stats.tail_applied.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The tail reader's client: its own group, never committing, never subscribing.
fn tail_reader(settings: &KafkaSettings) -> Option<StreamConsumer> {
    settings
        .client_config()
        .set("group.id", format!("{}-tail", settings.group))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "latest")
        .set("fetch.wait.max.ms", settings.fetch_wait_ms.to_string())
        .create()
        .inspect_err(|e| tracing::warn!(error = %e, "cannot create the consumer's tail reader"))
        .ok()
}

/// Assigns the tail reader every partition the consumer holds, [`TAIL_WINDOW`] messages
/// before its end (an event published just before the jump is not jumped over). `false`
/// if the consumer holds none yet, the broker did not answer, or the client refused.
/// Blocking: asks the broker for each partition's end.
fn jump_to_end(main: &StreamConsumer, reader: &StreamConsumer) -> bool {
    let Ok(held) = main.assignment() else {
        return false;
    };
    let mut near_end = TopicPartitionList::new();
    for element in held.elements() {
        let Ok((low, high)) =
            main.fetch_watermarks(element.topic(), element.partition(), Duration::from_secs(1))
        else {
            return false;
        };
        let from = high.saturating_sub(TAIL_WINDOW).max(low);
        if near_end
            .add_partition_offset(element.topic(), element.partition(), Offset::Offset(from))
            .is_err()
        {
            return false;
        }
    }
    if near_end.count() == 0 {
        return false;
    }
    match reader.assign(&near_end) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "tail reader: cannot assign the end of the topic");
            false
        }
    }
}

/// Consumes until the task is dropped.
pub(crate) async fn run(
    region: Arc<Region>,
    peers: Arc<Peers>,
    consumer: StreamConsumer,
    settings: KafkaSettings,
    stats: Arc<ConsumerStats>,
) {
    let _refresher = AbortOnDrop({
        let (peers, region) = (peers.clone(), region.clone());
        tokio::spawn(async move {
            loop {
                let every = if peers.refresh_into(&region).await {
                    peers::REFRESH_INTERVAL
                } else {
                    peers::RETRY_INTERVAL
                };
                tokio::time::sleep(every).await;
            }
        })
    });
    let refused = Arc::new(Refused::default());
    let workers = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let consumer = Arc::new(consumer);
    let _tail = AbortOnDrop(tokio::spawn(tail(
        region.clone(),
        peers.clone(),
        refused.clone(),
        settings,
        consumer.clone(),
        stats.clone(),
        workers,
    )));
    let _lag = AbortOnDrop({
        let (consumer, stats) = (consumer.clone(), stats.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let c = consumer.clone();
                if let Ok(Some(lag)) = tokio::task::spawn_blocking(move || lag_of(&c)).await {
                    stats.lag.store(lag, Ordering::Relaxed);
                }
            }
        })
    });
    loop {
        let first = match consumer.recv().await {
            Ok(m) => m.detach(),
            Err(e) => {
                // Before the topic exists, or while the broker is away: transient.
                stats.running.store(0, Ordering::Relaxed);
                tracing::debug!(error = %e, "Kafka consumer error (retrying)");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        stats.running.store(1, Ordering::Relaxed);
        // What is already fetched is applied together: the writer commits the batch in
        // one transaction. Order within a batch does not matter: revocations combine
        // by the coverage rule whatever their order, and each event_id applies once.
        let (batch, payloads) = batch_from(&consumer, first);
        let checked = check_all(&region, &peers, &refused, payloads, workers).await;
        let mut applying = tokio::task::JoinSet::new();
        let mut not_applied: Vec<(Rejection, usize)> = Vec::new();
        for (i, outcome) in checked.into_iter().enumerate() {
            match outcome {
                Ok(checked) => {
                    let region = region.clone();
                    applying.spawn(async move { (i, apply(&region, checked).await) });
                }
                Err(why) => not_applied.push((why, i)),
            }
        }
        while let Some(done) = applying.join_next().await {
            let Ok((i, outcome)) = done else {
                tracing::error!("a consumer task failed");
                continue;
            };
            match outcome {
                Ok(true) => {
                    stats.applied.fetch_add(1, Ordering::Relaxed);
                }
                Ok(false) => {
                    stats.own.fetch_add(1, Ordering::Relaxed);
                }
                Err(why) => not_applied.push((why, i)),
            }
        }
        // One log line per batch, not per message: a flood must not become a flood of
        // log lines.
        if let Some(&(why, i)) = not_applied.first() {
            for (why, _) in &not_applied {
                stats.reject(*why);
            }
            tracing::warn!(
                count = not_applied.len(),
                first_reason = why.as_str(),
                partition = batch[i].partition(),
                first_offset = batch[i].offset(),
                "events from the broker not applied (reasons in cp_consumer_rejected_total)"
            );
        }
        // Only after every event of the batch is in SQLite: a crash before this
        // redelivers them, and applying them again is a no-op.
        let mut next: std::collections::HashMap<(String, i32), i64> = Default::default();
        for message in &batch {
            let at = next
                .entry((message.topic().to_owned(), message.partition()))
                .or_default();
            *at = (*at).max(message.offset() + 1);
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            if let Err(e) = offsets.add_partition_offset(&topic, partition, Offset::Offset(offset))
            {
                tracing::warn!(error = %e, "cannot record a consumer offset");
            }
        }
        if let Err(e) = consumer.commit(&offsets, CommitMode::Async) {
            tracing::warn!(error = %e, "cannot commit consumer offsets");
        }
    }
}

/// `first` and the messages the client has already fetched after it (up to
/// [`MAX_BATCH`]), with their payloads. Only what is already here: waiting for more (a
/// 1 ms timer, 1 to 2 ms with the timer's granularity) added its length to every
/// revocation's hop at low rates.
fn batch_from(
    consumer: &StreamConsumer,
    first: OwnedMessage,
) -> (Vec<OwnedMessage>, Vec<Option<Vec<u8>>>) {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match already_fetched(consumer) {
            Some(Ok(m)) => batch.push(m.detach()),
            _ => break,
        }
    }
    let payloads = batch
        .iter()
        .map(|m| m.payload().map(<[u8]>::to_vec))
        .collect();
    (batch, payloads)
}

/// The next message if the client has already fetched it, without waiting for the broker.
fn already_fetched(consumer: &StreamConsumer) -> Option<KafkaResult<BorrowedMessage<'_>>> {
    let mut next = std::pin::pin!(consumer.recv());
    match next
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(message) => Some(message),
        std::task::Poll::Pending => None,
    }
}

/// Messages between what the tail reader has read and the end of each partition it
/// holds; a partition it has not started reading (its position is still the logical
/// end) counts as not behind.
fn read_lag_of(reader: &StreamConsumer) -> Option<u64> {
    let position = reader.position().ok()?;
    let mut total = 0u64;
    for element in position.elements() {
        let Offset::Offset(at) = element.offset() else {
            continue;
        };
        let (_, high) = reader
            .fetch_watermarks(element.topic(), element.partition(), Duration::from_secs(1))
            .ok()?;
        total += u64::try_from(high.saturating_sub(at)).unwrap_or(0);
    }
    Some(total)
}

/// Messages between the committed position and the end of each assigned partition.
fn lag_of(consumer: &StreamConsumer) -> Option<u64> {
    let position = consumer.position().ok()?;
    let mut total = 0u64;
    for element in position.elements() {
        let (_, high) = consumer
            .fetch_watermarks(element.topic(), element.partition(), Duration::from_secs(1))
            .ok()?;
        let at = element.offset().to_raw().unwrap_or(0).max(0);
        total += u64::try_from(high.saturating_sub(at)).unwrap_or(0);
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use shared::keys::{Alg, SigningKey};
    use shared::{Kind, RevocationEvent};

    /// Signs `event` with `key` (at once) and hands it to the consumer's checks and apply.
    fn send_signed(
        region: &Arc<Region>,
        peers: &Arc<Peers>,
        event: RevocationEvent,
        key: &SigningKey,
    ) -> impl std::future::Future<Output = Result<bool, Rejection>> + use<> {
        let signed = event.sign(key).unwrap();
        let (region, peers) = (region.clone(), peers.clone());
        async move { handle(&region, &peers, Some(signed.as_bytes())).await }
    }

    fn event(id: &str, origin: &str, kid: String) -> RevocationEvent {
        let t = now();
        RevocationEvent {
            event_id: id.into(),
            kind: Kind::Jti,
            value: format!("value-of-{id}"),
            not_before: None,
            expires_at: t + 3600,
            issued_at: t,
            origin: origin.into(),
            nonce: "00".into(),
            kid,
        }
    }

    #[tokio::test]
    async fn a_peer_key_signs_only_for_its_own_region_and_in_its_own_name() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut settings = Settings::new(dir.path().join("data"));
        settings.region = "c".into();
        let region = Arc::new(Region::open(settings).unwrap());
        let (a, b) = (
            SigningKey::generate(Alg::MlDsa65),
            SigningKey::generate(Alg::MlDsa65),
        );
        let jwks = |key: &SigningKey, region: Option<&str>| {
            let mut set = serde_json::json!({ "keys": [key.verifying_key().to_jwk()] });
            if let Some(r) = region {
                set["region"] = r.into();
            }
            set.to_string()
        };
        // Region a named in PEER_JWKS, region b by its own JWKS.
        let (file_a, file_b) = (dir.path().join("a.json"), dir.path().join("b.json"));
        std::fs::write(&file_a, jwks(&a, None)).unwrap();
        std::fs::write(&file_b, jwks(&b, Some("b"))).unwrap();
        let peers = Arc::new(Peers::new(vec![
            format!("a={}", file_a.display()),
            file_b.display().to_string(),
        ]));
        assert!(peers.refresh().await);
        let send = |e: RevocationEvent, key: &SigningKey| send_signed(&region, &peers, e, key);

        // B's key claiming A's origin, or this region's, or naming A's key: refused.
        assert_eq!(
            send(event("e1", "a", b.kid()), &b).await,
            Err(Rejection::WrongOrigin)
        );
        assert_eq!(
            send(event("e2", "c", b.kid()), &b).await,
            Err(Rejection::WrongOrigin)
        );
        assert_eq!(
            send(event("e3", "b", a.kid()), &b).await,
            Err(Rejection::WrongKid)
        );
        // In a batch too.
        let batch = shared::revocation::sign_batch(&[event("e4", "a", b.kid())], &b).unwrap();
        assert_eq!(
            handle(&region, &peers, Some(batch[0].as_bytes())).await,
            Err(Rejection::WrongOrigin)
        );
        for id in ["e1", "e2", "e3", "e4"] {
            assert!(
                region
                    .find(Kind::Jti, &format!("value-of-{id}"))
                    .unwrap()
                    .is_none()
            );
        }
        // Each region's own events, in its own name, apply.
        assert_eq!(send(event("e5", "b", b.kid()), &b).await, Ok(true));
        assert_eq!(send(event("e6", "a", a.kid()), &a).await, Ok(true));
        // Ids are unique per origin: B reusing A's id shadows nothing, and each region's
        // event with that id applies once.
        let mut from_b = event("e6", "b", b.kid());
        from_b.value = "b-own-e6".into();
        assert_eq!(send(from_b.clone(), &b).await, Ok(true));
        assert_eq!(send(from_b, &b).await, Err(Rejection::Duplicate));
        assert_eq!(
            send(event("e6", "a", a.kid()), &a).await,
            Err(Rejection::Duplicate)
        );
        assert!(region.find(Kind::Jti, "b-own-e6").unwrap().is_some());
    }

    #[tokio::test]
    async fn a_replica_of_this_region_is_applied_and_only_own_keys_make_an_event_own() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut settings = Settings::new(dir.path().join("data"));
        settings.region = "c".into();
        let region = Arc::new(Region::open(settings).unwrap());
        let replica = SigningKey::generate(Alg::MlDsa65);
        let file = dir.path().join("replica.json");
        let jwks = serde_json::json!({ "keys": [replica.verifying_key().to_jwk()] });
        std::fs::write(&file, jwks.to_string()).unwrap();
        // The replica's JWKS, bound to this region's own name.
        let peers = Arc::new(Peers::new(vec![format!("c={}", file.display())]));
        assert!(peers.refresh().await);
        let send = |e: RevocationEvent, key: &SigningKey| send_signed(&region, &peers, e, key);
        // Before replicas, an event of this region from another process was dropped as
        // this process's own: the replicas would never see each other's revocations.
        assert_eq!(
            send(event("r1", "c", replica.kid()), &replica).await,
            Ok(true)
        );
        assert!(region.find(Kind::Jti, "value-of-r1").unwrap().is_some());
        assert_eq!(
            send(event("r1", "c", replica.kid()), &replica).await,
            Err(Rejection::Duplicate)
        );
        // The replica's key speaks for this region only.
        assert_eq!(
            send(event("r2", "d", replica.kid()), &replica).await,
            Err(Rejection::WrongOrigin)
        );
        // This process's own events coming back change nothing.
        let own = region.keys().event_key.clone();
        assert_eq!(send(event("r3", "c", own.kid()), &own).await, Ok(false));
        assert!(region.find(Kind::Jti, "value-of-r3").unwrap().is_none());
    }

    #[tokio::test]
    async fn an_unbound_peer_key_cannot_claim_a_bound_region_or_this_one() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut settings = Settings::new(dir.path().join("data"));
        settings.region = "c".into();
        let region = Arc::new(Region::open(settings).unwrap());
        let (a, old) = (
            SigningKey::generate(Alg::MlDsa65),
            SigningKey::generate(Alg::MlDsa65),
        );
        let (file_a, file_old) = (dir.path().join("a.json"), dir.path().join("old.json"));
        let set = |k: &SigningKey| {
            serde_json::json!({ "keys": [k.verifying_key().to_jwk()] }).to_string()
        };
        std::fs::write(&file_a, set(&a)).unwrap();
        // An older peer: its JWKS names no region and PEER_JWKS does not either.
        std::fs::write(&file_old, set(&old)).unwrap();
        let peers = Arc::new(Peers::new(vec![
            format!("a={}", file_a.display()),
            file_old.display().to_string(),
        ]));
        assert!(peers.refresh().await);
        let send = |e: RevocationEvent| send_signed(&region, &peers, e, &old);
        assert_eq!(
            send(event("u1", "a", old.kid())).await,
            Err(Rejection::WrongOrigin)
        );
        assert_eq!(
            send(event("u2", "c", old.kid())).await,
            Err(Rejection::WrongOrigin)
        );
        // It keeps working for its own (unnamed) region.
        assert_eq!(send(event("u3", "d", old.kid())).await, Ok(true));
    }
}
