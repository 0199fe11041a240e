//! The edge feed held in memory: its id, its head, the entries of recent changes, and
//! the signed bytes of snapshots, deltas and heartbeats, each prepared once and shared by
//! every poller that asks for the same thing.
//!
//! A change reaches the feed after its commit ([`Feed::committed`], or
//! [`Feed::caught_up`] for rows other processes wrote). The head pollers see is the
//! highest sequence number up to which every change is here (handovers of one group
//! commit may arrive out of order), so a snapshot or delta at the head never lacks one.
//!
//! An answer is a [`Prepared`] update for a key `(since, head)`: `since` `None` for a
//! snapshot, `Some(head)` for a heartbeat. The first poller to ask builds and signs it on
//! the blocking pool (one signer per key, a [`OnceCell`]); every other poller awaits the
//! same cell and gets the same bytes. In steady state every parked poller has
//! `since` = the previous head, so one ML-DSA-65 signature serves a whole fleet; an idle
//! feed signs one heartbeat about once a second, whoever asks. An update is reused for
//! [`REUSE_FOR`] only: its `generated_at` is what an edge measures staleness from, so
//! bytes kept longer would make a late poller look stale.
//!
//! The feed also holds the JWKS document served at `/.well-known/jwks.json`, serialised
//! once per change ([`Feed::publish_jwks`]); every update names its digest in the signed
//! header member `jwks`, and a change wakes every parked poll with a heartbeat naming the
//! new digest, so a key rotation reaches a whole fleet of edges within one long-poll
//! round trip (see `shared::edgeset`, "The keys an edge should hold").
//!
//! Nothing per poll touches SQLite, parses JSON or signs. Deltas come from the window of
//! recent entries; a delta reaching before the window (or past a gap) is read from SQLite,
//! once per key. Snapshots come from the region's in-memory revocation set.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use shared::edgeset::{EdgeUpdate, Entry, UpdateKind};
use shared::{JwkSet, RevocationEvent, SigningKey};
use tokio::sync::{OnceCell, watch};

use super::fleet::Fleet;
use crate::cache::RevocationCache as _;
use crate::metrics::Metrics;
use crate::region::{Error, Region};
use crate::store::db;
use crate::time::now;

/// How long a prepared update is handed out before a new one is signed (its
/// `generated_at` would otherwise age on the edge).
pub(crate) const REUSE_FOR: Duration = Duration::from_secs(1);

/// Most prepared updates kept at once; past it, an update is made for its caller alone.
const MAX_PREPARED: usize = 1024;

/// A signed update ready to send.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// The compact JWS.
    pub(crate) body: Bytes,
    /// The feed sequence number it brings a set to (`x-edge-seq`).
    pub(crate) seq: u64,
}

/// The JWKS document as served, and its digest (`shared::edgeset::jwks_digest`).
#[derive(Debug, Default)]
pub(crate) struct PreparedJwks {
    /// The JSON bytes.
    pub(crate) body: Bytes,
    /// The digest edge updates carry.
    pub(crate) digest: String,
}

/// What a poller asks for, at a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Want {
    /// `None`: a snapshot; `Some(s)`: a delta from `s` (a heartbeat when `s` = `upto`).
    pub(crate) since: Option<u64>,
    /// The head it brings the set to.
    pub(crate) upto: u64,
}

/// Entries of recent changes, by sequence number.
#[derive(Debug, Default)]
struct Window {
    entries: BTreeMap<u64, Entry>,
    /// Every change after `floor` that is still live is in `entries`.
    floor: u64,
    /// Every change up to here is in `entries` (or before `floor`) and in the region's
    /// in-memory set: the head pollers see.
    complete: u64,
    /// Most entries kept.
    cap: usize,
}

impl Window {
    fn insert(&mut self, seq: u64, entry: Entry) {
        if seq > self.floor {
            self.entries.insert(seq, entry);
        }
        self.settle();
    }

    /// Moves `complete` over the changes now held, and trims the window to its cap (a
    /// change still missing then is found by the next [`Feed::caught_up`]).
    fn settle(&mut self) {
        while self.entries.contains_key(&(self.complete + 1)) {
            self.complete += 1;
        }
        while self.entries.len() > self.cap {
            if let Some((seq, _)) = self.entries.pop_first() {
                self.floor = seq;
            }
        }
    }

    /// The entries of changes in `(since, upto]`, if the window holds all of them.
    fn delta(&self, since: u64, upto: u64) -> Option<Vec<Entry>> {
        (since >= self.floor && upto <= self.complete).then(|| {
            self.entries
                .range(since + 1..=upto)
                .map(|(_, e)| *e)
                .collect()
        })
    }
}

struct Slot {
    made: Instant,
    cell: Arc<OnceCell<Arc<Prepared>>>,
}

#[derive(Default)]
struct Cache {
    /// The key the prepared updates are signed with: a new key empties the cache.
    key: Option<Arc<SigningKey>>,
    /// The JWKS digest the prepared updates carry: a new JWKS empties the cache.
    jwks: String,
    slots: HashMap<Want, Slot>,
}

/// The edge feed of one region.
pub(crate) struct Feed {
    id: String,
    head: watch::Sender<u64>,
    window: Mutex<Window>,
    cache: Mutex<Cache>,
    jwks: watch::Sender<Arc<PreparedJwks>>,
    fleet: Arc<Fleet>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("id", &self.id)
            .field("head", &*self.head.borrow())
            .finish()
    }
}

impl Feed {
    /// The feed `id` at `head`, with the newest of `recent` (live changes in feed order,
    /// every live one after some point) as its window of at most `cap` entries.
    pub(crate) fn new(id: String, head: u64, recent: &[(u64, RevocationEvent)], cap: u64) -> Feed {
        let cap = usize::try_from(cap).unwrap_or(usize::MAX).max(1);
        let skip = recent.len().saturating_sub(cap);
        let floor = match skip {
            0 => 0,
            n => recent[n - 1].0,
        };
        let window = Window {
            entries: recent[skip..]
                .iter()
                .map(|(seq, event)| (*seq, Entry::from_event(event)))
                .collect(),
            floor,
            complete: head,
            cap,
        };
        Feed {
            id,
            head: watch::Sender::new(head),
            window: Mutex::new(window),
            cache: Mutex::new(Cache::default()),
            jwks: watch::Sender::new(Arc::default()),
            fleet: Arc::default(),
        }
    }

    /// The edges that poll this feed.
    pub(crate) fn fleet(&self) -> &Arc<Fleet> {
        &self.fleet
    }

    /// The JWKS document served now.
    pub(crate) fn jwks(&self) -> Arc<PreparedJwks> {
        self.jwks.borrow().clone()
    }

    /// A way to wait for the next JWKS document.
    pub(crate) fn subscribe_jwks(&self) -> watch::Receiver<Arc<PreparedJwks>> {
        self.jwks.subscribe()
    }

    /// Serialises `set` as the JWKS document to serve; when it differs from the one
    /// served, it replaces it and wakes every parked poll (their heartbeat names it).
    pub(crate) fn publish_jwks(&self, set: &JwkSet) {
        let body = match serde_json::to_vec(set) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialise the JWKS; still serving the last one");
                return;
            }
        };
        let digest = shared::edgeset::jwks_digest(&body);
        self.jwks.send_if_modified(|doc| {
            if doc.digest == digest {
                return false;
            }
            *doc = Arc::new(PreparedJwks {
                body: Bytes::from(body),
                digest,
            });
            true
        });
    }

    /// The feed id every update carries.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The head: every change up to it is here.
    pub(crate) fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// A way to wait for the next head.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// After its commit, and after the region's in-memory set has it: the change `seq`.
    pub(crate) fn committed(&self, seq: u64, event: &RevocationEvent) {
        if seq == 0 {
            return;
        }
        let complete = {
            let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
            window.insert(seq, Entry::from_event(event));
            window.complete
        };
        self.advance(complete);
    }

    /// After reading the database up to `through` (every live row after the previous
    /// head, `rows`, already in the region's in-memory set): rows other processes wrote.
    pub(crate) fn caught_up(&self, rows: &[(u64, RevocationEvent)], through: u64) {
        let complete = {
            let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
            for (seq, event) in rows {
                window.insert(*seq, Entry::from_event(event));
            }
            window.complete = window.complete.max(through);
            window.settle();
            window.complete
        };
        self.advance(complete);
    }

    fn advance(&self, complete: u64) {
        let moved = self.head.send_if_modified(|head| {
            let moved = complete > *head;
            *head = (*head).max(complete);
            moved
        });
        if moved {
            self.fleet.head_moved(complete, now());
        }
    }

    /// The signed update for `want`, prepared once and shared: the first caller builds
    /// and signs it on the blocking pool, every other caller of the same key awaits it.
    pub(crate) async fn prepare(region: &Arc<Region>, want: Want) -> Result<Arc<Prepared>, Error> {
        let key = region.keys().event_key.clone();
        let jwks = region.feed().jwks();
        let cell = region.feed().slot(want, &key, &jwks.digest);
        let metrics = region.metrics();
        Metrics::inc(match want.since {
            None => &metrics.edge_snapshots,
            Some(s) if s == want.upto => &metrics.edge_heartbeats,
            Some(_) => &metrics.edge_deltas,
        });
        cell.get_or_try_init(|| {
            let region = region.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    region.feed().build(&region, want, &key, &jwks.digest)
                })
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "preparing an edge update failed");
                    Error::Signing(shared::JoseError::SigningFailed)
                })?
                .map(Arc::new)
            }
        })
        .await
        .cloned()
    }

    /// The cell of `want` under `key` and the JWKS `jwks`: the shared one while it is
    /// fresh, else a new one.
    fn slot(&self, want: Want, key: &Arc<SigningKey>, jwks: &str) -> Arc<OnceCell<Arc<Prepared>>> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if !cache.key.as_ref().is_some_and(|k| Arc::ptr_eq(k, key)) || cache.jwks != jwks {
            cache.key = Some(key.clone());
            jwks.clone_into(&mut cache.jwks);
            cache.slots.clear();
        }
        let t = Instant::now();
        if let Some(slot) = cache.slots.get(&want)
            && t.duration_since(slot.made) < REUSE_FOR
        {
            return slot.cell.clone();
        }
        let cell = Arc::new(OnceCell::new());
        if cache.slots.len() >= MAX_PREPARED {
            cache
                .slots
                .retain(|_, slot| t.duration_since(slot.made) < REUSE_FOR);
        }
        if cache.slots.len() < MAX_PREPARED {
            cache.slots.insert(
                want,
                Slot {
                    made: t,
                    cell: cell.clone(),
                },
            );
        }
        cell
    }

    /// Builds and signs one update (blocking: may read SQLite, signs with ML-DSA-65).
    fn build(
        &self,
        region: &Region,
        want: Want,
        key: &SigningKey,
        jwks: &str,
    ) -> Result<Prepared, Error> {
        let t = now();
        let (kind, base, entries) = match want.since {
            None => {
                let mut entries = Vec::with_capacity(region.revocations().len());
                region
                    .revocations()
                    .for_each_live(t, |event| entries.push(Entry::from_event(event)));
                (UpdateKind::Snapshot, 0, entries)
            }
            Some(since) if since >= want.upto => (UpdateKind::Delta, since, Vec::new()),
            Some(since) => {
                let held = self
                    .window
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .delta(since, want.upto);
                let entries = match held {
                    Some(entries) => entries,
                    // Before the window: read once for this key.
                    None => db::feed_range(&*region.db().read()?, since, want.upto, Some(t))?
                        .iter()
                        .map(|(_, event)| Entry::from_event(event))
                        .collect(),
                };
                (UpdateKind::Delta, since, entries)
            }
        };
        let t32 = u32::try_from(t.max(0)).unwrap_or(u32::MAX);
        let body = EdgeUpdate {
            kind,
            base_seq: base,
            seq: want.upto,
            generated_at: t,
            entries: entries.into_iter().filter(|e| e.expires_at > t32).collect(),
            leeway: Some(revocation_leeway(region)),
            feed: Some(self.id.clone()),
            jwks: (!jwks.is_empty()).then(|| jwks.to_owned()),
        }
        .sign(key)
        .map_err(Error::Signing)?;
        Ok(Prepared {
            body: Bytes::from(body),
            seq: want.upto,
        })
    }
}

/// The clock leeway, in seconds, that the region's revocation entries assume (each
/// covers its tokens until their `exp` plus this), declared in every update so that an
/// edge never applies more to `exp` (see `shared::edgeset`, "The leeway the revocations
/// assume").
fn revocation_leeway(region: &Region) -> u32 {
    let leeway = region.revocation_leeway();
    // A constant far below the maximum; clamped all the same, so a wider one never makes
    // every edge refuse the feed.
    u32::try_from(leeway.clamp(0, i64::from(shared::edgeset::MAX_FEED_LEEWAY))).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: u64) -> Entry {
        Entry {
            key,
            expires_at: u32::MAX,
            not_before: 0,
        }
    }

    fn window(cap: usize) -> Window {
        Window {
            cap,
            ..Window::default()
        }
    }

    #[test]
    fn the_head_waits_for_a_change_handed_over_late() {
        let mut w = window(10);
        w.insert(2, entry(2));
        assert_eq!(w.complete, 0);
        assert_eq!(w.delta(0, 2), None);
        w.insert(1, entry(1));
        assert_eq!(w.complete, 2);
        assert_eq!(w.delta(0, 2), Some(vec![entry(1), entry(2)]));
        assert_eq!(w.delta(1, 2), Some(vec![entry(2)]));
    }

    #[test]
    fn a_delta_from_before_the_window_is_not_served_from_it() {
        let mut w = window(2);
        for seq in 1..=4 {
            w.insert(seq, entry(seq));
        }
        assert_eq!((w.floor, w.complete, w.entries.len()), (2, 4, 2));
        assert_eq!(w.delta(1, 4), None);
        assert_eq!(w.delta(2, 4), Some(vec![entry(3), entry(4)]));
    }
}
