//! How the revocation set travels inside one Envoy: the poller's lease, the records it
//! publishes in proxy-wasm shared data, and the checks an update passes before use.
//!
//! Shared data (namespaced by `vm_id`) holds three values per feed:
//! - `lease`: which VM polls, renewed by compare-and-swap on every tick; the singleton
//!   poller service (`role: poller`, on Envoy's main thread) wins it over filter VMs;
//! - `state`: a 64-byte [`StateRecord`] every request reads to see if anything changed
//!   (and the leeway the feed's revocations assume, which caps the filter's own);
//! - `set` and `jwks`: the verified set's arrays and the JWKS, each prefixed by its
//!   version, read by a VM only when the version in `state` differs from the one it holds;
//! - `recent`: the entries deltas added since the arrays were built (at most
//!   [`RECENT_MAX`](shared::edgeset::RECENT_MAX)), prefixed by its version and the arrays'
//!   version: what a small delta publishes, so no VM copies the whole set for it.

// Reads untrusted request input and feed bytes: no input may panic the VM.
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

use shared::edgeset::{EdgeSetError, EdgeUpdate, RevocationSet, UpdateKind};

/// The shared-data key names for one control-plane cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Keys {
    /// The poller lease.
    pub(crate) lease: String,
    /// The [`StateRecord`].
    pub(crate) state: String,
    /// The versioned set blob (the arrays).
    pub(crate) set: String,
    /// The versioned recent-entries blob.
    pub(crate) recent: String,
    /// The versioned JWKS blob.
    pub(crate) jwks: String,
    /// Counter that hands each VM a distinct id.
    pub(crate) vm_counter: String,
    /// When a request last met a well-formed token with an unknown `kid` (ms): the
    /// poller refetches the JWKS when this moves, at most once per minimum interval.
    pub(crate) jwks_wanted: String,
    /// Prefix of the DPoP replay-cache buckets (`<prefix><n>`).
    pub(crate) dpop_replay: String,
}

impl Keys {
    /// Keys for feeds from `cluster` (two plugins on different clusters never mix).
    pub(crate) fn for_cluster(cluster: &str) -> Keys {
        let k = |name: &str| format!("edge_filter/{cluster}/{name}");
        Keys {
            lease: k("lease"),
            state: k("state"),
            set: k("set"),
            recent: k("recent"),
            jwks: k("jwks"),
            vm_counter: k("vm_counter"),
            jwks_wanted: k("jwks_wanted"),
            dpop_replay: k("dpop_jti/"),
        }
    }
}

/// What every request reads: versions and the times staleness is measured from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StateRecord {
    /// Version of the set blob; bumped whenever the set's arrays are rebuilt.
    pub(crate) set_version: u64,
    /// Version of the recent-entries blob; bumped whenever the set changes.
    pub(crate) recent_version: u64,
    /// Feed sequence number of the set.
    pub(crate) seq: u64,
    /// `generated_at` of the newest verified update (heartbeats included); 0: never synced.
    pub(crate) generated_at: i64,
    /// Local time the newest update was verified.
    pub(crate) verified_at: i64,
    /// Version of the JWKS blob (0 while none was fetched).
    pub(crate) jwks_version: u64,
    /// Local time the poller verified an update it could not hold (over
    /// `max_revocations`); 0 while the published set is complete. Non-zero makes the set
    /// stale at once: revocations exist that this edge does not enforce.
    pub(crate) refused_at: i64,
    /// The leeway (seconds) the newest verified update said its revocations assume
    /// ([`EdgeUpdate::leeway`]); `None` when it did not say (an older control plane).
    pub(crate) feed_leeway: Option<u32>,
}

impl StateRecord {
    /// The 64-byte encoding; the feed leeway is stored plus one, so 0 is "not said".
    pub(crate) fn encode(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[0..8].copy_from_slice(&self.set_version.to_le_bytes());
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.generated_at.to_le_bytes());
        out[24..32].copy_from_slice(&self.verified_at.to_le_bytes());
        out[32..40].copy_from_slice(&self.jwks_version.to_le_bytes());
        out[40..48].copy_from_slice(&self.refused_at.to_le_bytes());
        out[48..56].copy_from_slice(&self.recent_version.to_le_bytes());
        let leeway = self.feed_leeway.map_or(0, |l| u64::from(l) + 1);
        out[56..64].copy_from_slice(&leeway.to_le_bytes());
        out
    }

    /// Decodes; anything but 64 bytes, or a leeway out of range, reads as "nothing
    /// published yet".
    pub fn decode(bytes: &[u8]) -> StateRecord {
        let (
            [
                set_version,
                seq,
                generated_at,
                verified_at,
                jwks_version,
                refused_at,
                recent_version,
                leeway,
            ],
            [],
        ) = bytes.as_chunks::<8>()
        else {
            return StateRecord::default();
        };
        let feed_leeway = match u64::from_le_bytes(*leeway) {
            0 => None,
            l => match u32::try_from(l - 1) {
                Ok(l) => Some(l),
                Err(_) => return StateRecord::default(),
            },
        };
        StateRecord {
            feed_leeway,
            set_version: u64::from_le_bytes(*set_version),
            seq: u64::from_le_bytes(*seq),
            generated_at: i64::from_le_bytes(*generated_at),
            verified_at: i64::from_le_bytes(*verified_at),
            jwks_version: u64::from_le_bytes(*jwks_version),
            refused_at: i64::from_le_bytes(*refused_at),
            recent_version: u64::from_le_bytes(*recent_version),
        }
    }

    /// Seconds since the set was last confirmed current, or `None` if it never was.
    ///
    /// Measured from the older of the control plane's `generated_at` and the local
    /// verification time: a replayed old update cannot make the set look fresh, and a
    /// control-plane clock running ahead cannot either.
    pub fn staleness(&self, now: i64) -> Option<i64> {
        (self.generated_at > 0).then(|| {
            now.saturating_sub(self.generated_at.min(self.verified_at))
                .max(0)
        })
    }

    /// True when the set is older than `bound` seconds, was never synced, or the poller
    /// refused an update it could not hold.
    pub(crate) fn is_stale(&self, now: i64, bound: i64) -> bool {
        self.refused_at != 0 || self.staleness(now).is_none_or(|age| age > bound)
    }
}

/// The poller lease: the owning VM, whether it is the poller service, and when the lease
/// lapses (milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Id of the VM that polls.
    pub(crate) owner: u64,
    /// Local time in ms after which another VM may take over.
    pub(crate) expires_ms: u64,
    /// Held by the singleton poller service (main thread), which filter VMs never take
    /// over while it renews.
    pub(crate) service: bool,
}

impl Lease {
    /// The 17-byte encoding: owner, expiry, then 1 for the service.
    pub(crate) fn encode(&self) -> [u8; 17] {
        let mut out = [0u8; 17];
        out[..8].copy_from_slice(&self.owner.to_le_bytes());
        out[8..16].copy_from_slice(&self.expires_ms.to_le_bytes());
        out[16] = u8::from(self.service);
        out
    }

    /// Decodes, or `None` for anything but 17 bytes with a flag of 0 or 1 (or the 16
    /// bytes of a filter lease written before the service existed).
    pub fn decode(bytes: &[u8]) -> Option<Lease> {
        let (head, flag) = bytes.split_first_chunk::<16>()?;
        let service = match *flag {
            [] => false,
            [flag] => [false, true].get(usize::from(flag)).copied()?,
            _ => return None,
        };
        let ([owner, expires], []) = head.as_chunks::<8>() else {
            return None;
        };
        Some(Lease {
            owner: u64::from_le_bytes(*owner),
            expires_ms: u64::from_le_bytes(*expires),
            service,
        })
    }

    /// The lease VM `me` should write now, or `None` if another VM holds it. A filter VM
    /// takes a lapsed lease only; the service also takes one a filter VM holds, so
    /// snapshots are decoded on the main thread as soon as the service runs.
    pub(crate) fn claim(
        current: Option<Lease>,
        me: u64,
        service: bool,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Option<Lease> {
        match current {
            Some(l) if l.owner != me && l.expires_ms > now_ms && (l.service || !service) => None,
            _ => Some(Lease {
                owner: me,
                expires_ms: now_ms.saturating_add(ttl_ms),
                service,
            }),
        }
    }

    /// True while `me` holds this lease: a poller that lost it drops the answers of the
    /// calls it still had in flight, so two pollers never publish over each other.
    pub(crate) fn is_held_by(current: Option<Lease>, me: u64, now_ms: u64) -> bool {
        current.is_some_and(|l| l.owner == me && l.expires_ms > now_ms)
    }
}

/// Prefixes a blob with its version.
pub(crate) fn versioned(version: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits a versioned blob.
pub(crate) fn unversioned(blob: &[u8]) -> Option<(u64, &[u8])> {
    let (version, payload) = blob.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*version), payload))
}

/// The set blob: the set exactly as the poller holds it ([`RevocationSet::to_bytes`]),
/// decoded once by the poller, so each VM only copies the arrays (no wire decoding, and
/// no second rounding of expiries).
pub fn encode_set(version: u64, set: &RevocationSet) -> Vec<u8> {
    versioned(version, &set.to_bytes())
}

/// Decodes a set blob into its version and set.
pub fn decode_set(blob: &[u8], max_entries: u64) -> Result<(u64, RevocationSet), EdgeSetError> {
    let (version, payload) =
        unversioned(blob).ok_or(EdgeSetError::Malformed("set blob too short"))?;
    Ok((version, RevocationSet::from_bytes(payload, max_entries)?))
}

/// The recent-entries blob: its version, the version of the arrays it goes with, and
/// [`RevocationSet::recent_to_bytes`].
pub fn encode_recent(version: u64, set_version: u64, set: &RevocationSet) -> Vec<u8> {
    versioned(version, &versioned(set_version, &set.recent_to_bytes()))
}

/// Splits a recent-entries blob into its version, its arrays' version and its payload
/// (for [`RevocationSet::load_recent`]).
pub fn decode_recent(blob: &[u8]) -> Option<(u64, u64, &[u8])> {
    let (version, rest) = unversioned(blob)?;
    let (set_version, payload) = unversioned(rest)?;
    Some((version, set_version, payload))
}

/// Why the poller refused a verified update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Older than what the set already reflects: a replay.
    Rollback,
    /// A delta that does not start at our sequence number: ask for a snapshot.
    Gap(EdgeSetError),
    /// The set would hold more than `max_revocations` entries: this edge cannot hold it.
    TooLarge(u64),
    /// A delta (or heartbeat) of another feed than the set's: its sequence numbers count
    /// in another history, so it is never applied; ask for a snapshot.
    OtherFeed {
        /// The feed of the set held (`None`: a control plane that names no feed).
        held: Option<String>,
        /// The feed the update named.
        got: Option<String>,
    },
}

/// Applies a verified update to the poller's set; returns true when the entries changed.
/// On error the set is left exactly as it was, its `seq` included, so the next poll
/// asks again from there.
pub fn accept(
    set: &mut RevocationSet,
    update: EdgeUpdate,
    now: i64,
    max_entries: u64,
) -> Result<bool, Refused> {
    if update.generated_at < set.generated_at() {
        return Err(Refused::Rollback);
    }
    apply_live(set, update, now, max_entries)
}

/// [`accept`] without the rollback check.
fn apply_live(
    set: &mut RevocationSet,
    update: EdgeUpdate,
    now: i64,
    max_entries: u64,
) -> Result<bool, Refused> {
    let changed = update.kind == UpdateKind::Snapshot
        || !update.entries.is_empty()
        || update.seq != set.seq();
    // Entries that can match no valid token any more do not count against the limit
    // (`apply_at` drops them from the set when it rebuilds it).
    let mut update = update;
    let now_u32 = u32::try_from(now.max(0)).unwrap_or(u32::MAX);
    update.entries.retain(|e| e.expires_at > now_u32);
    set.apply_at(update, Some(now), max_entries)
        .map_err(|e| match e {
            EdgeSetError::TooManyEntries(n) => Refused::TooLarge(n),
            other => Refused::Gap(other),
        })?;
    Ok(changed)
}

/// [`accept`] for a set that came from the feed `held` (`None`: from a control plane that
/// names no feed, or no set yet): a delta applies only when it names the same feed (see
/// `shared::edgeset`, "The feed an update belongs to"), and `held` becomes the feed of
/// what was applied. On error nothing changes.
///
/// A snapshot of the held feed replaces the set. A snapshot of another feed (the edge
/// moved to another replica of its region, or the control plane was restored) joins the
/// set instead: what the edge held was verified, and a revocation the old feed had but
/// the new one lacks for now (not yet replicated, or lost in a restore) stays enforced.
/// Its time is checked against nothing but itself: each feed's clock is its own, and the
/// union can only add revocations.
pub fn accept_from_feed(
    set: &mut RevocationSet,
    held: &mut Option<String>,
    update: EdgeUpdate,
    now: i64,
    max_entries: u64,
) -> Result<bool, Refused> {
    let switching = held.is_some() && update.feed != *held;
    if update.kind == UpdateKind::Delta && update.feed != *held {
        return Err(Refused::OtherFeed {
            held: held.clone(),
            got: update.feed,
        });
    }
    let feed = update.feed.clone();
    let changed = if switching {
        let mut joined = update;
        joined.entries.extend(set.to_snapshot().entries);
        apply_live(set, joined, now, max_entries)?
    } else {
        accept(set, update, now, max_entries)?
    };
    *held = feed;
    Ok(changed)
}

/// The pause before the next call after `failures` failed ones in a row: `base` doubled
/// per failure up to `cap`, so a feed that keeps failing is never polled in a hot loop.
pub(crate) fn backoff_millis(base: u64, failures: u32, cap: u64) -> u64 {
    base.saturating_mul(1u64 << failures.min(16))
        .min(cap.max(base))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails on an unexpected input")]
mod tests {
    use super::*;
    use shared::edgeset::{Entry, entry_key};
    use shared::revocation::TokenIds;
    use shared::{Alg, Keyring, Kind, SigningKey};

    const NOW: i64 = 1_700_000_000;

    fn entry(value: &str) -> Entry {
        Entry {
            key: entry_key(Kind::Jti, value),
            expires_at: (NOW + 600) as u32,
            not_before: 0,
        }
    }

    fn update(kind: UpdateKind, base: u64, seq: u64, at: i64, entries: Vec<Entry>) -> EdgeUpdate {
        EdgeUpdate {
            kind,
            base_seq: base,
            seq,
            generated_at: at,
            entries,
            leeway: None,
            feed: None,
            jwks: None,
        }
    }

    fn ids(jti: &str) -> TokenIds<'_> {
        TokenIds {
            jti,
            sub: "s",
            kid: "k",
            sid: None,
            iat: NOW,
        }
    }

    #[test]
    fn records_round_trip_and_garbage_reads_as_nothing() {
        let rec = StateRecord {
            set_version: 3,
            seq: 9,
            generated_at: NOW,
            verified_at: NOW + 1,
            jwks_version: 2,
            refused_at: 7,
            recent_version: 11,
            feed_leeway: Some(30),
        };
        assert_eq!(StateRecord::decode(&rec.encode()), rec);
        for feed_leeway in [None, Some(0), Some(u32::MAX)] {
            let rec = StateRecord { feed_leeway, ..rec };
            assert_eq!(StateRecord::decode(&rec.encode()), rec);
        }
        assert_eq!(
            StateRecord::decode(&rec.encode()[..48]),
            StateRecord::default()
        );
        // The 56-byte record of a build before the feed leeway reads as nothing too.
        assert_eq!(
            StateRecord::decode(&rec.encode()[..56]),
            StateRecord::default()
        );
        let mut out_of_range = rec.encode();
        out_of_range[56..64].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(StateRecord::decode(&out_of_range), StateRecord::default());
        assert_eq!(decode_recent(b"short"), None);
        assert_eq!(StateRecord::decode(b"short"), StateRecord::default());
        let lease = Lease {
            owner: 5,
            expires_ms: 77,
            service: true,
        };
        assert_eq!(Lease::decode(&lease.encode()), Some(lease));
        assert_eq!(Lease::decode(b"x"), None);
        let mut bad_flag = lease.encode();
        bad_flag[16] = 2;
        assert_eq!(Lease::decode(&bad_flag), None);
        assert_eq!(
            Lease::decode(&lease.encode()[..16]),
            Some(Lease {
                service: false,
                ..lease
            })
        );
        assert_eq!(unversioned(&versioned(4, b"abc")), Some((4, &b"abc"[..])));
        assert_eq!(unversioned(b"1234567"), None);
    }

    #[test]
    fn staleness_counts_from_the_older_of_generation_and_verification() {
        let never = StateRecord::default();
        assert_eq!(never.staleness(NOW), None);
        assert!(never.is_stale(NOW, 30));
        let rec = StateRecord {
            generated_at: NOW - 10,
            verified_at: NOW - 5,
            ..StateRecord::default()
        };
        assert_eq!(rec.staleness(NOW), Some(10));
        assert!(!rec.is_stale(NOW, 30));
        assert!(rec.is_stale(NOW + 25, 30));
    }

    #[test]
    fn one_vm_holds_the_lease_until_it_lapses() {
        let a = Lease::claim(None, 1, false, 1000, 2000).unwrap();
        assert_eq!(Lease::claim(Some(a), 2, false, 1500, 2000), None);
        assert_eq!(
            Lease::claim(Some(a), 1, false, 1500, 2000),
            Some(Lease {
                owner: 1,
                expires_ms: 3500,
                service: false,
            })
        );
        assert_eq!(
            Lease::claim(Some(a), 2, false, 3001, 2000).map(|l| l.owner),
            Some(2)
        );
        assert!(Lease::is_held_by(Some(a), 1, 2999));
        assert!(!Lease::is_held_by(Some(a), 1, 3000));
        assert!(!Lease::is_held_by(Some(a), 2, 1500));
        assert!(!Lease::is_held_by(None, 1, 1500));
    }

    #[test]
    fn the_poller_service_takes_the_lease_from_a_filter_vm_and_keeps_it() {
        let filter = Lease::claim(None, 1, false, 1000, 2000).unwrap();
        let service = Lease::claim(Some(filter), 9, true, 1100, 2000).unwrap();
        assert_eq!((service.owner, service.service), (9, true));
        // A filter VM waits for the service's lease to lapse, whatever it held before.
        assert_eq!(Lease::claim(Some(service), 1, false, 3000, 2000), None);
        assert!(!Lease::is_held_by(Some(service), 1, 3000));
        assert_eq!(
            Lease::claim(Some(service), 1, false, 3100, 2000).map(|l| l.owner),
            Some(1)
        );
        // Two services (a misconfiguration) share it like filter VMs do.
        assert_eq!(Lease::claim(Some(service), 8, true, 3000, 2000), None);
    }

    #[test]
    fn snapshots_deltas_and_heartbeats_are_applied_in_order() {
        let mut set = RevocationSet::new();
        let snap = update(UpdateKind::Snapshot, 0, 5, NOW, vec![entry("a")]);
        assert_eq!(accept(&mut set, snap, NOW, 100), Ok(true));
        let delta = update(UpdateKind::Delta, 5, 6, NOW + 1, vec![entry("b")]);
        assert_eq!(accept(&mut set, delta, NOW, 100), Ok(true));
        assert!(set.check(&ids("b"), NOW).is_some());
        let heartbeat = update(UpdateKind::Delta, 6, 6, NOW + 2, vec![]);
        assert_eq!(accept(&mut set, heartbeat, NOW, 100), Ok(false));
        assert_eq!(set.generated_at(), NOW + 2);
        let gap = update(UpdateKind::Delta, 9, 10, NOW + 3, vec![entry("c")]);
        assert!(matches!(
            accept(&mut set, gap, NOW, 100),
            Err(Refused::Gap(_))
        ));
        let replay = update(UpdateKind::Delta, 6, 7, NOW - 100, vec![]);
        assert_eq!(accept(&mut set, replay, NOW, 100), Err(Refused::Rollback));
        assert_eq!(set.seq(), 6);
    }

    fn of_feed(feed: &str, update: EdgeUpdate) -> EdgeUpdate {
        EdgeUpdate {
            feed: Some(feed.into()),
            jwks: None,
            ..update
        }
    }

    #[test]
    fn a_delta_of_another_feed_is_never_applied_and_a_snapshot_of_it_joins_the_set() {
        let mut set = RevocationSet::new();
        let mut held = None;
        let snap = of_feed(
            "A",
            update(UpdateKind::Snapshot, 0, 5, NOW, vec![entry("a")]),
        );
        assert_eq!(
            accept_from_feed(&mut set, &mut held, snap, NOW, 100),
            Ok(true)
        );
        assert_eq!(held.as_deref(), Some("A"));
        // Feed B's delta 5 -> 6 numbers another history: applying it could skip the
        // revocations B has at 1..=5. Refused, the set as it was.
        let other = of_feed(
            "B",
            update(UpdateKind::Delta, 5, 6, NOW + 1, vec![entry("b")]),
        );
        assert_eq!(
            accept_from_feed(&mut set, &mut held, other, NOW, 100),
            Err(Refused::OtherFeed {
                held: Some("A".into()),
                got: Some("B".into())
            })
        );
        let beat = of_feed("B", update(UpdateKind::Delta, 5, 5, NOW + 1, vec![]));
        assert!(matches!(
            accept_from_feed(&mut set, &mut held, beat, NOW, 100),
            Err(Refused::OtherFeed { .. })
        ));
        // Nor one that names no feed, once the set has one.
        let unnamed = update(UpdateKind::Delta, 5, 6, NOW + 1, vec![entry("b")]);
        assert!(matches!(
            accept_from_feed(&mut set, &mut held, unnamed, NOW, 100),
            Err(Refused::OtherFeed { .. })
        ));
        assert_eq!((set.seq(), set.len(), held.as_deref()), (5, 1, Some("A")));
        // B's snapshot (a lower seq, an older time by B's clock) joins the set: A's
        // entry stays until B has it too, and B's deltas apply after it.
        let snap = of_feed(
            "B",
            update(UpdateKind::Snapshot, 0, 2, NOW - 2, vec![entry("c")]),
        );
        assert_eq!(
            accept_from_feed(&mut set, &mut held, snap, NOW, 100),
            Ok(true)
        );
        assert_eq!((set.seq(), set.len(), held.as_deref()), (2, 2, Some("B")));
        assert!(set.check(&ids("a"), NOW).is_some());
        assert_eq!(set.generated_at(), NOW - 2);
        let delta = of_feed(
            "B",
            update(UpdateKind::Delta, 2, 3, NOW + 3, vec![entry("d")]),
        );
        assert_eq!(
            accept_from_feed(&mut set, &mut held, delta, NOW, 100),
            Ok(true)
        );
        assert!(set.check(&ids("d"), NOW).is_some());
        // A replayed snapshot of the held feed is refused, the feed as it was.
        let replay = of_feed("B", update(UpdateKind::Snapshot, 0, 9, NOW - 100, vec![]));
        assert_eq!(
            accept_from_feed(&mut set, &mut held, replay, NOW, 100),
            Err(Refused::Rollback)
        );
        assert_eq!(held.as_deref(), Some("B"));
    }

    #[test]
    fn a_control_plane_that_names_no_feed_keeps_working() {
        let mut set = RevocationSet::new();
        let mut held = None;
        let snap = update(UpdateKind::Snapshot, 0, 5, NOW, vec![entry("a")]);
        assert_eq!(
            accept_from_feed(&mut set, &mut held, snap, NOW, 100),
            Ok(true)
        );
        let delta = update(UpdateKind::Delta, 5, 6, NOW + 1, vec![entry("b")]);
        assert_eq!(
            accept_from_feed(&mut set, &mut held, delta, NOW, 100),
            Ok(true)
        );
        assert_eq!((set.seq(), held), (6, None));
    }

    #[test]
    fn the_set_blob_round_trips_and_refuses_garbage() {
        let mut set = RevocationSet::new();
        accept(
            &mut set,
            update(
                UpdateKind::Snapshot,
                0,
                3,
                NOW,
                vec![entry("a"), entry("b")],
            ),
            NOW,
            100,
        )
        .unwrap();
        assert!(
            decode_set(&encode_set(8, &set), 1).is_err(),
            "over the limit"
        );
        let (version, copy) = decode_set(&encode_set(8, &set), 100).unwrap();
        assert_eq!(version, 8);
        assert!(copy.holds_the_same_as(&set));
        assert!(decode_set(b"", 100).is_err());
        assert!(decode_set(&versioned(1, b"PQRS\x01junk"), 100).is_err());
    }

    #[test]
    fn a_signed_update_must_verify_against_the_feed_key() {
        let key = SigningKey::from_seed(Alg::MlDsa65, &[5; 32]);
        let mut ring = Keyring::new();
        ring.add(key.verifying_key());
        let signed = update(UpdateKind::Snapshot, 0, 1, NOW, vec![entry("a")])
            .sign(&key)
            .unwrap();
        assert!(EdgeUpdate::open(&signed, &ring, 100).is_ok());
        let other = SigningKey::from_seed(Alg::MlDsa65, &[6; 32]);
        let mut wrong = Keyring::new();
        wrong.add(other.verifying_key());
        assert!(EdgeUpdate::open(&signed, &wrong, 100).is_err());
        let mut tampered = signed.clone();
        tampered.insert(tampered.len() / 2, 'A');
        assert!(EdgeUpdate::open(&tampered, &ring, 100).is_err());
    }

    #[test]
    fn an_update_over_the_limit_is_refused_and_leaves_the_set_as_it_was() {
        let mut set = RevocationSet::new();
        let snap = update(
            UpdateKind::Snapshot,
            0,
            5,
            NOW,
            vec![entry("a"), entry("b")],
        );
        assert_eq!(accept(&mut set, snap, NOW, 3), Ok(true));
        let delta = update(
            UpdateKind::Delta,
            5,
            6,
            NOW + 1,
            vec![entry("c"), entry("d")],
        );
        assert_eq!(accept(&mut set, delta, NOW, 3), Err(Refused::TooLarge(4)));
        assert_eq!((set.seq(), set.len(), set.generated_at()), (5, 2, NOW));
        let big = update(
            UpdateKind::Snapshot,
            0,
            7,
            NOW + 2,
            vec![entry("a"), entry("b"), entry("c"), entry("d")],
        );
        assert_eq!(accept(&mut set, big, NOW, 3), Err(Refused::TooLarge(4)));
        assert_eq!(set.seq(), 5);
        // Expired entries do not count: the same delta fits once they are gone.
        let mut expired = entry("old");
        expired.expires_at = (NOW - 1) as u32;
        let delta = update(UpdateKind::Delta, 5, 6, NOW + 3, vec![entry("c"), expired]);
        assert_eq!(accept(&mut set, delta, NOW, 3), Ok(true));
        assert_eq!((set.seq(), set.len()), (6, 3));
    }

    #[test]
    fn a_refused_update_makes_the_state_stale_at_once() {
        let fresh = StateRecord {
            generated_at: NOW,
            verified_at: NOW,
            ..StateRecord::default()
        };
        assert!(!fresh.is_stale(NOW, 30));
        let refused = StateRecord {
            refused_at: NOW,
            ..fresh
        };
        assert!(refused.is_stale(NOW, 30));
    }

    #[test]
    fn failures_back_off_exponentially_up_to_the_cap() {
        assert_eq!(backoff_millis(200, 0, 30_000), 200);
        assert_eq!(backoff_millis(200, 1, 30_000), 400);
        assert_eq!(backoff_millis(200, 5, 30_000), 6_400);
        assert_eq!(backoff_millis(200, 40, 30_000), 30_000);
        assert_eq!(backoff_millis(60_000, 3, 30_000), 60_000);
    }
}
