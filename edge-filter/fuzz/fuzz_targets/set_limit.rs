//! The set-limit path: arbitrary snapshot and delta sequences under a small
//! `max_revocations` never leave the poller's set over the limit, and a refused update
//! never moves its sequence number.
#![no_main]

use edge_filter::sync::{self, Refused};
use libfuzzer_sys::fuzz_target;
use shared::edgeset::{EdgeUpdate, Entry, RevocationSet, UpdateKind};

const NOW: i64 = 1_700_000_000;
const LIMIT: u64 = 8;

fuzz_target!(|data: &[u8]| {
    let mut set = RevocationSet::new();
    // Each update: kind/base/seq/time byte, an entry count, then 2 bytes per entry.
    let mut bytes = data.iter().copied();
    let mut at = NOW;
    while let (Some(head), Some(count)) = (bytes.next(), bytes.next()) {
        let kind = if head & 1 == 0 {
            UpdateKind::Snapshot
        } else {
            UpdateKind::Delta
        };
        // Mostly in order, sometimes a gap or a step back in time.
        let base = if head & 2 == 0 { set.seq() } else { u64::from(head >> 4) };
        at += i64::from(head >> 6) - 1;
        let entries: Vec<Entry> = (0..count % 24)
            .filter_map(|_| {
                let (k, t) = (bytes.next()?, bytes.next()?);
                Some(Entry {
                    key: u64::from(k),
                    // Some already expired: pruning must not be needed to stay in bounds.
                    expires_at: (NOW + i64::from(t) - 32) as u32,
                    not_before: 0,
                })
            })
            .collect();
        let update = EdgeUpdate {
            kind,
            base_seq: if kind == UpdateKind::Delta { base } else { 0 },
            seq: base + u64::from(head >> 2 & 3),
            generated_at: at,
            entries,
            leeway: None,
            feed: None,
            jwks: None,
        };
        // Through the wire format too, as the feed delivers it.
        let Ok(update) = EdgeUpdate::decode(&update.encode(), LIMIT) else {
            continue;
        };
        let before = (set.seq(), set.generated_at());
        match sync::accept(&mut set, update, NOW, LIMIT) {
            Ok(_) => {}
            Err(Refused::TooLarge(n)) => {
                assert!(n > LIMIT);
                assert_eq!((set.seq(), set.generated_at()), before);
            }
            Err(_) => assert_eq!((set.seq(), set.generated_at()), before),
        }
        assert!(set.len() as u64 <= LIMIT, "{} entries", set.len());
        // What the poller publishes, every VM can load under the same limit.
        let blob = sync::encode_set(1, &set);
        assert!(sync::decode_set(&blob, LIMIT).is_ok());
    }
});
