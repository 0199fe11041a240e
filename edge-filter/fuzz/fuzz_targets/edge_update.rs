//! What the poller and every VM decode: feed answers, shared-data records and the
//! plugin configuration.
#![no_main]

use edge_filter::config::Config;
use edge_filter::sync::{self, Lease, StateRecord};
use libfuzzer_sys::fuzz_target;
use shared::edgeset::{EdgeUpdate, RevocationSet};

fuzz_target!(|data: &[u8]| {
    if let Ok(update) = EdgeUpdate::decode(data, 10_000) {
        let mut set = RevocationSet::new();
        let _ = sync::accept(&mut set, update, 1_700_000_000, 10_000);
    }
    let _ = sync::decode_set(data, 10_000);
    let _ = StateRecord::decode(data).staleness(1_700_000_000);
    let _ = Lease::decode(data);
    let _ = Config::parse(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = EdgeUpdate::open(text, &shared::Keyring::new(), 10_000);
    }
});
