//! What the poller and every VM decode: feed answers (wire format version 2, which must
//! be canonical), the published set and recent-entries blobs, shared-data records and
//! the plugin configuration.
#![no_main]

use edge_filter::config::Config;
use edge_filter::sync::{self, Lease, StateRecord};
use libfuzzer_sys::fuzz_target;
use shared::edgeset::{EdgeUpdate, RevocationSet};

fuzz_target!(|data: &[u8]| {
    if let Ok(update) = EdgeUpdate::decode(data, 10_000) {
        // Canonical: whatever decodes is exactly what the encoder writes for it.
        assert_eq!(update.encode(), data);
        let mut set = RevocationSet::new();
        let _ = sync::accept(&mut set, update, 1_700_000_000, 10_000);
        // What the poller publishes (arrays, then recent entries), every VM loads back as
        // the same set.
        let (_, mut copy) = sync::decode_set(&sync::encode_set(1, &set), 10_000).expect("own blob");
        let recent = sync::encode_recent(1, 1, &set);
        let (_, _, payload) = sync::decode_recent(&recent).expect("own recent blob");
        copy.load_recent(payload, 10_000)
            .expect("own recent entries");
        assert!(
            copy.holds_the_same_as(&set),
            "the published blobs load back as the same set"
        );
    }
    if let Ok(set) = RevocationSet::from_bytes(data, 10_000) {
        assert_eq!(set.to_bytes(), data);
    }
    let mut set = RevocationSet::new();
    if set.load_recent(data, 10_000).is_ok() {
        assert_eq!(set.recent_to_bytes(), data);
    }
    let _ = sync::decode_set(data, 10_000);
    let _ = StateRecord::decode(data).staleness(1_700_000_000);
    let _ = Lease::decode(data);
    let _ = Config::parse(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = EdgeUpdate::open(text, &shared::Keyring::new(), 10_000);
    }
});
