//! Tests of the wire update and the set together: round trips, canonical forms, every
//! malformed payload, and the set's layout at scale.

use super::entry::sort_and_merge;
use super::set::blob::{BLOB_HEADER_LEN, RECENT_HEADER_LEN};
use super::set::bucket_bits;
use super::update::{HEADER_LEN, MAGIC, VERSION};
use super::*;

fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

const AT: i64 = 1_800_000_000;

fn sample() -> EdgeUpdate {
    let mut seed = 0x1234_5678_9abc_def1;
    let mut entries: Vec<Entry> = (0..500)
        .map(|i| Entry {
            key: xorshift(&mut seed),
            expires_at: (AT + i64::from(i) * 37 % 7_200) as u32,
            not_before: if i % 50 == 0 {
                (AT - 100 + i64::from(i)) as u32
            } else {
                0
            },
        })
        .collect();
    // The edges of the key space, neighbours, and the edges of time.
    let e = |key, expires_at, not_before| Entry {
        key,
        expires_at,
        not_before,
    };
    entries.extend([
        e(0, (AT + 1) as u32, 1),
        e(1, (AT - 50) as u32, 0),
        e(u64::MAX - 1, u32::MAX, 0),
        e(u64::MAX, (AT + 31_536_000) as u32, u32::MAX),
        e(1 << 40, 0, 0),
    ]);
    EdgeUpdate {
        kind: UpdateKind::Delta,
        base_seq: 7,
        seq: 9,
        generated_at: AT,
        entries,
        leeway: None,
        feed: None,
        jwks: None,
    }
}

fn rounded(update: &EdgeUpdate) -> Vec<Entry> {
    let mut entries = update.entries.clone();
    sort_and_merge(&mut entries);
    for e in &mut entries {
        e.expires_at = wire_expiry(update.generated_at, e.expires_at);
    }
    entries
}

#[test]
fn updates_round_trip_with_expiries_rounded_up_and_bytes_stable() {
    for update in [
        sample(),
        EdgeUpdate {
            entries: Vec::new(),
            ..sample()
        },
        EdgeUpdate {
            entries: sample().entries[..1].to_vec(),
            kind: UpdateKind::Snapshot,
            base_seq: 0,
            ..sample()
        },
    ] {
        let bytes = update.encode();
        let back = EdgeUpdate::decode(&bytes, 1_000).unwrap();
        assert_eq!(back.entries, rounded(&update));
        assert_eq!(
            (back.kind, back.base_seq, back.seq, back.generated_at),
            (
                update.kind,
                update.base_seq,
                update.seq,
                update.generated_at
            )
        );
        assert_eq!(back.encode(), bytes, "one update, one encoding");
    }
}

#[test]
fn expiries_are_never_rounded_down() {
    let base = AT as u32;
    for expires_at in [
        0,
        1,
        base - 1,
        base,
        base + 1,
        base + 511,
        base + 512,
        base + 513,
    ]
    .into_iter()
    .chain((0..20_000).map(|i| base + i * 997))
    .chain([u32::MAX - 1, u32::MAX])
    {
        let sent = wire_expiry(AT, expires_at);
        assert!(sent >= expires_at, "{expires_at} -> {sent}");
        // Late by at most 1/256 of the time left, or lifted to generated_at.
        let left = expires_at.saturating_sub(base);
        assert!(
            sent - expires_at.max(base) <= left / 256,
            "{expires_at} -> {sent}"
        );
    }
    assert_eq!(wire_expiry(AT, base + 3_600), base + 3_600);
    assert_eq!(wire_expiry(AT, base + 3_601), base + 3_608);
    assert_eq!(wire_expiry(AT, base - 10), base);
    assert_eq!(wire_expiry(AT, u32::MAX), u32::MAX);
    // generated_at outside u32 is clamped on both sides alike.
    assert_eq!(wire_expiry(-5, 100), 100);
    assert_eq!(wire_expiry(i64::MAX, 100), u32::MAX);
}

#[test]
fn every_truncation_and_extension_is_refused() {
    let bytes = sample().encode();
    for cut in 0..bytes.len() {
        assert!(
            EdgeUpdate::decode(&bytes[..cut], 1_000).is_err(),
            "cut {cut}"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(EdgeUpdate::decode(&longer, 1_000).is_err());
}

#[test]
fn a_flipped_bit_is_refused_or_reads_as_another_canonical_update() {
    let bytes = sample().encode();
    let mut refused = 0;
    for i in 0..bytes.len() * 8 {
        let mut flipped = bytes.clone();
        flipped[i / 8] ^= 1 << (i % 8);
        match EdgeUpdate::decode(&flipped, 1_000) {
            Ok(update) => assert_eq!(update.encode(), flipped, "bit {i}"),
            Err(_) => refused += 1,
        }
    }
    assert!(refused > 0);
}

/// A payload with a hand-made bit stream.
fn crafted(generated_at: i64, count: u64, nbf: &[(u64, u64)], body: &[(u64, u32)]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&[VERSION, 0]);
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&1u64.to_le_bytes());
    out.extend_from_slice(&generated_at.to_le_bytes());
    wire::put_varint(&mut out, count);
    wire::put_varint(&mut out, nbf.len() as u64);
    for &(gap, t) in nbf {
        wire::put_varint(&mut out, gap);
        wire::put_varint(&mut out, t);
    }
    let mut bits = wire::BitWriter::new(out);
    for &(value, width) in body {
        if width == u32::MAX {
            bits.put_unary(value);
        } else {
            bits.put(value, width);
        }
    }
    bits.finish()
}

const UNARY: u32 = u32::MAX;

#[test]
fn malformed_payloads_are_each_refused_with_a_reason() {
    let malformed = |bytes: &[u8], max: u64| match EdgeUpdate::decode(bytes, max) {
        Err(EdgeSetError::Malformed(why)) => why,
        other => panic!("{other:?}"),
    };
    // A well-formed one-entry payload, to change one thing at a time.
    let k1 = u64::from(wire::rice_k(1));
    let good = crafted(AT, 1, &[], &[(0, UNARY), (5, k1 as u32), (60, 13)]);
    assert_eq!(EdgeUpdate::decode(&good, 10).unwrap().entries[0].key, 5);

    let mut bad = good.clone();
    bad[0] = b'X';
    assert_eq!(malformed(&bad, 10), "bad magic");
    let mut v1 = good.clone();
    v1[4] = 1;
    assert_eq!(malformed(&v1, 10), "unsupported version");
    let mut kind = good.clone();
    kind[5] = 2;
    assert_eq!(malformed(&kind, 10), "unknown update kind");
    let mut backwards = good.clone();
    backwards[5] = 1;
    backwards[6] = 5;
    assert_eq!(malformed(&backwards, 10), "delta ends before it starts");
    assert_eq!(
        EdgeUpdate::decode(&good, 0),
        Err(EdgeSetError::TooManyEntries(1))
    );
    // A huge declared count on a short input: refused before any allocation.
    let huge = crafted(AT, 1 << 40, &[], &[(0, UNARY)]);
    assert_eq!(malformed(&huge, u64::MAX), "truncated");
    // Non-minimal count varint.
    let mut long = good[..HEADER_LEN].to_vec();
    long.extend_from_slice(&[0x81, 0x00]);
    long.extend_from_slice(&good[HEADER_LEN + 1..]);
    assert_eq!(malformed(&long, 10), "non-minimal varint");
    // Not-befores: more than entries, past the count, zero.
    let two = |nbf: &[(u64, u64)]| {
        crafted(
            AT,
            2,
            nbf,
            &[(0, UNARY), (5, 62), (60, 13), (0, UNARY), (5, 62), (60, 13)],
        )
    };
    assert!(EdgeUpdate::decode(&two(&[(1, 0)]), 10).is_ok());
    assert_eq!(
        malformed(&two(&[(0, 0), (0, 0), (0, 0)]), 10),
        "more not-befores than entries"
    );
    assert_eq!(
        malformed(&two(&[(2, 0)]), 10),
        "not-before index out of range"
    );
    assert_eq!(
        malformed(&two(&[(0, 0), (1, 0)]), 10),
        "not-before index out of range"
    );
    assert_eq!(
        malformed(&two(&[(0, wire::zigzag(-AT))]), 10),
        "time out of range"
    );
    assert_eq!(
        malformed(&two(&[(0, wire::zigzag(1 << 40))]), 10),
        "time out of range"
    );
    // A key past 2^64: the last possible key, then one more.
    let over = crafted(
        AT,
        2,
        &[],
        &[
            (3, UNARY),
            ((1 << 62) - 1, 62),
            (60, 13),
            (0, UNARY),
            (0, 62),
            (60, 13),
        ],
    );
    assert_eq!(malformed(&over, 10), "key out of range");
    // A quotient past what k bits of remainder can carry.
    let far = crafted(AT, 1, &[], &[(2, UNARY), (0, 63), (60, 13)]);
    assert_eq!(malformed(&far, 10), "key gap out of range");
    // Two expiry codes for u32::MAX: only the first is canonical.
    let near = i64::from(u32::MAX) - 10;
    let first = wire::expiry_code(10);
    let ok = crafted(near, 1, &[], &[(0, UNARY), (5, 63), (u64::from(first), 13)]);
    assert_eq!(
        EdgeUpdate::decode(&ok, 10).unwrap().entries[0].expires_at,
        u32::MAX
    );
    let next = crafted(
        near,
        1,
        &[],
        &[(0, UNARY), (5, 63), (u64::from(first) + 1, 13)],
    );
    assert_eq!(malformed(&next, 10), "non-canonical expiry");
    // Padding: a one bit, or a whole extra byte.
    let mut padded = good.clone();
    *padded.last_mut().unwrap() |= 0x80;
    assert_eq!(malformed(&padded, 10), "non-zero padding");
    let mut extra = good.clone();
    extra.push(0);
    assert_eq!(malformed(&extra, 10), "trailing bytes");
}

#[test]
fn a_million_uniform_keys_take_under_eight_bytes_each_and_any_keys_stay_bounded() {
    let mut seed = 7;
    let uniform: Vec<Entry> = (0..1_000_000)
        .map(|i| Entry {
            key: xorshift(&mut seed),
            expires_at: (AT + 60 + i % 3_600) as u32,
            not_before: 0,
        })
        .collect();
    let update = |entries| EdgeUpdate {
        kind: UpdateKind::Snapshot,
        base_seq: 0,
        seq: 1,
        generated_at: AT,
        entries,
        leeway: None,
        feed: None,
        jwks: None,
    };
    let bytes = update(uniform).encode();
    assert!(bytes.len() < 7_500_000, "{} bytes", bytes.len());
    assert_eq!(
        EdgeUpdate::decode(&bytes, 1_000_000).unwrap().entries.len(),
        1_000_000
    );
    // Worst case: all keys bunched at one end and one far away, far expiries.
    let mut skewed: Vec<Entry> = (0..999_999)
        .map(|i| Entry {
            key: i,
            expires_at: u32::MAX - i as u32,
            not_before: 0,
        })
        .collect();
    skewed.push(Entry {
        key: u64::MAX,
        expires_at: 0,
        not_before: 0,
    });
    let bytes = update(skewed).encode();
    assert!(bytes.len() <= HEADER_LEN + 10 + 1_000_000 * (44 + 3 + 13) / 8);
    assert_eq!(
        EdgeUpdate::decode(&bytes, 1_000_000).unwrap().entries.len(),
        1_000_000
    );
}

/// A set holding exactly `keys` (any order, repeats merged), expiring at `AT + 60`.
fn set_of_keys(keys: &[u64]) -> RevocationSet {
    let mut set = RevocationSet::new();
    let entries = keys
        .iter()
        .map(|&key| Entry {
            key,
            expires_at: (AT + 60) as u32,
            not_before: 0,
        })
        .collect();
    set.apply(EdgeUpdate {
        kind: UpdateKind::Snapshot,
        base_seq: 0,
        seq: 1,
        generated_at: AT,
        entries,
        leeway: None,
        feed: None,
        jwks: None,
    })
    .unwrap();
    set
}

#[test]
fn the_bucket_index_finds_what_binary_search_finds_in_any_spread() {
    let mut seed = 99;
    let mut sets: Vec<Vec<u64>> = vec![
        (0..1_000).map(|_| xorshift(&mut seed)).collect(),
        (0..100_000).map(|_| xorshift(&mut seed)).collect(),
        (0..5_000).collect(),
        // Clustered: dense runs far apart (long buckets, bisected), and a long tail.
        (0..3_000)
            .map(|i| (i % 3) << 62 | i)
            .chain((0..40).map(|i| u64::MAX - (1 << i)))
            .collect(),
        (0..64).map(|i| 1u64 << i).collect(),
        vec![0, u64::MAX],
    ];
    // Every size around the bucket-count steps, small sets included.
    sets.extend((0..40).map(|n| (0..n).map(|_| xorshift(&mut seed)).collect()));
    for mut keys in sets {
        keys.sort_unstable();
        keys.dedup();
        let set = set_of_keys(&keys);
        assert_eq!(set.keys, keys);
        let mut probes: Vec<u64> = keys.clone();
        probes.extend(keys.iter().map(|k| k.wrapping_add(1)));
        probes.extend(keys.iter().map(|k| k.wrapping_sub(1)));
        probes.extend((0..2_000).map(|_| xorshift(&mut seed)));
        probes.extend([0, 1, u64::MAX - 1, u64::MAX]);
        for key in probes {
            assert_eq!(set.find(key), keys.binary_search(&key).ok(), "{key}");
        }
    }
}

#[test]
fn recent_entries_and_rebuilds_hold_what_one_merged_set_would() {
    use std::collections::BTreeMap;
    let mut seed = 11;
    let mut set = RevocationSet::new();
    let mut reference: BTreeMap<u64, Entry> = BTreeMap::new();
    let mut rebuilds = 0;
    for round in 0..300u64 {
        let size = match round % 9 {
            0 => 3_000,
            1 => 0,
            _ => (xorshift(&mut seed) % 40) as usize,
        };
        let entries: Vec<Entry> = (0..size)
            .map(|_| Entry {
                // Half from a small pool, so keys repeat across updates and merge.
                key: if xorshift(&mut seed).is_multiple_of(2) {
                    xorshift(&mut seed) % 2_000
                } else {
                    xorshift(&mut seed)
                },
                expires_at: (AT + 1_000 + (xorshift(&mut seed) % 100_000) as i64) as u32,
                not_before: if xorshift(&mut seed).is_multiple_of(5) {
                    (AT - (xorshift(&mut seed) % 1_000) as i64) as u32
                } else {
                    0
                },
            })
            .collect();
        let snapshot = round % 100 == 0;
        if snapshot {
            reference.clear();
        }
        for e in &entries {
            reference
                .entry(e.key)
                .and_modify(|r| r.merge(e))
                .or_insert(*e);
        }
        let generation = set.generation();
        set.apply(EdgeUpdate {
            kind: if snapshot {
                UpdateKind::Snapshot
            } else {
                UpdateKind::Delta
            },
            base_seq: if snapshot { 0 } else { round },
            seq: round + 1,
            generated_at: AT + round as i64,
            entries,
            leeway: None,
            feed: None,
            jwks: None,
        })
        .unwrap();
        rebuilds += usize::from(set.generation() != generation);
        assert!(set.recent.len() <= RECENT_MAX);
        assert_eq!(set.len(), reference.len(), "round {round}");
        for (&key, r) in &reference {
            let got = set.entry(key).unwrap();
            assert_eq!(got.not_before, r.not_before, "round {round}");
            let left = r.expires_at - set.expiry_base;
            assert!(
                got.expires_at >= r.expires_at && got.expires_at - r.expires_at <= left / 1024,
                "round {round}: {} held as {}",
                r.expires_at,
                got.expires_at
            );
        }
        for _ in 0..200 {
            let key = xorshift(&mut seed);
            assert_eq!(set.entry(key).is_some(), reference.contains_key(&key));
        }
    }
    // Snapshots, large deltas and a full recent part all rebuilt; most deltas did not.
    assert!((6..150).contains(&rebuilds), "{rebuilds} rebuilds");
}

#[test]
fn recent_entries_travel_apart_and_are_refused_when_they_do_not_fit() {
    let mut seed = 3;
    let keys: Vec<u64> = (0..1_000).map(|_| xorshift(&mut seed)).collect();
    let mut poller = set_of_keys(&keys);
    let delta: Vec<Entry> = (0..10)
        .map(|i| Entry {
            key: if i < 3 { keys[i] } else { xorshift(&mut seed) },
            expires_at: (AT + 7_200) as u32,
            not_before: if i == 5 { AT as u32 } else { 0 },
        })
        .collect();
    let generation = poller.generation();
    poller
        .apply(EdgeUpdate {
            kind: UpdateKind::Delta,
            base_seq: 1,
            seq: 2,
            generated_at: AT + 5,
            entries: delta,
            leeway: None,
            feed: None,
            jwks: None,
        })
        .unwrap();
    assert_eq!(poller.generation(), generation, "kept apart, no rebuild");
    assert_eq!(poller.len(), 1_007);
    // A worker holding the arrays loads the recent part and holds what the poller does.
    let mut worker = RevocationSet::from_bytes(&poller.to_bytes(), 2_000).unwrap();
    assert_eq!(worker.seq(), 1);
    let recent = poller.recent_to_bytes();
    worker.load_recent(&recent, 2_000).unwrap();
    assert_eq!((worker.seq(), worker.generated_at()), (2, AT + 5));
    assert_eq!(worker.to_snapshot(), poller.to_snapshot());
    assert_eq!(worker.len(), 1_007);
    // Refused, leaving the worker as it was: over the limit, truncated, out of order.
    let before = worker.clone();
    assert_eq!(
        worker.load_recent(&recent, 1_006),
        Err(EdgeSetError::TooManyEntries(1_007))
    );
    for cut in 0..recent.len() {
        assert!(worker.load_recent(&recent[..cut], 2_000).is_err());
    }
    let mut swapped = recent.clone();
    let at = RECENT_HEADER_LEN;
    let (a, b) = swapped[at..at + 32].split_at_mut(16);
    a.swap_with_slice(b);
    assert!(worker.load_recent(&swapped, 2_000).is_err());
    assert!(worker.holds_the_same_as(&before));
}

#[test]
fn buckets_hold_two_to_four_keys_on_average_at_any_size() {
    for n in [4usize, 5, 7, 8, 999, 1_000, 1_024, 65_537, 1_000_000] {
        let buckets = 1usize << bucket_bits(n);
        let mean = n as f64 / buckets as f64;
        assert!((2.0..4.0).contains(&mean), "{n}: {mean}");
    }
    let mut seed = 7;
    let keys: Vec<u64> = (0..1_000_000).map(|_| xorshift(&mut seed)).collect();
    let set = set_of_keys(&keys);
    // 8 bytes a key, 2 an expiry, 4 per bucket: about 11 bytes an entry, under 12.
    let per_entry = set.memory_bytes() as f64 / set.len() as f64;
    assert!(per_entry < 11.1, "{per_entry}");
}

#[test]
fn in_memory_expiries_are_rounded_up_by_under_a_2048th_and_kept_through_deltas() {
    let mut seed = 5;
    let mut set = RevocationSet::new();
    let snapshot: Vec<Entry> = (0..5_000)
        .map(|i| Entry {
            key: xorshift(&mut seed),
            expires_at: (AT + (i * i) % 40_000_000) as u32,
            not_before: 0,
        })
        .collect();
    set.apply(EdgeUpdate {
        kind: UpdateKind::Snapshot,
        base_seq: 0,
        seq: 1,
        generated_at: AT,
        entries: snapshot.clone(),
        leeway: None,
        feed: None,
        jwks: None,
    })
    .unwrap();
    let check = |set: &RevocationSet, given: &[Entry]| {
        for e in given {
            let i = set.find(e.key).unwrap();
            let held = set.expiry(i);
            let left = e.expires_at - set.expiry_base;
            assert!(held >= e.expires_at, "{} -> {held}: earlier", e.expires_at);
            assert!(
                held - e.expires_at <= left / 2048,
                "{} -> {held}",
                e.expires_at
            );
        }
    };
    check(&set, &snapshot);
    let held: Vec<u32> = (0..set.len()).map(|i| set.expiry(i)).collect();
    // A delta too large to stay apart rebuilds the arrays at the same base: nothing
    // moves. An expiry before the base comes back as the base: later, never earlier.
    let mut delta = vec![
        Entry {
            key: 3,
            expires_at: u32::MAX,
            not_before: 0,
        },
        Entry {
            key: 4,
            expires_at: 10,
            not_before: 0,
        },
    ];
    delta.extend((0..RECENT_MAX as u64).map(|i| Entry {
        key: 5 + i,
        expires_at: (AT + 60) as u32,
        not_before: 0,
    }));
    let generation = set.generation();
    set.apply(EdgeUpdate {
        kind: UpdateKind::Delta,
        base_seq: 1,
        seq: 2,
        generated_at: AT + 100,
        entries: delta,
        leeway: None,
        feed: None,
        jwks: None,
    })
    .unwrap();
    assert_ne!(set.generation(), generation, "rebuilt");
    assert!(set.recent.is_empty());
    check(&set, &snapshot);
    assert_eq!(set.expiry(set.find(3).unwrap()), u32::MAX);
    assert_eq!(set.expiry(set.find(4).unwrap()), set.expiry_base);
    let keys: std::collections::HashSet<u64> = snapshot.iter().map(|e| e.key).collect();
    let again: Vec<u32> = (0..set.len())
        .filter(|&i| keys.contains(&set.keys[i]))
        .map(|i| set.expiry(i))
        .collect();
    assert_eq!(again, held);
}

#[test]
fn the_shared_blob_is_the_set_exactly_and_refuses_anything_else() {
    let mut set = RevocationSet::new();
    set.apply(EdgeUpdate {
        kind: UpdateKind::Snapshot,
        ..sample()
    })
    .unwrap();
    let blob = set.to_bytes();
    assert_eq!(
        blob.len(),
        BLOB_HEADER_LEN + set.len() * 10 + set.not_before.len() * 12
    );
    assert!(
        RevocationSet::from_bytes(&blob, 1_000)
            .unwrap()
            .holds_the_same_as(&set)
    );
    assert!(
        RevocationSet::from_bytes(&RevocationSet::new().to_bytes(), 0)
            .unwrap()
            .holds_the_same_as(&RevocationSet::new())
    );
    assert_eq!(
        RevocationSet::from_bytes(&blob, 10).err(),
        Some(EdgeSetError::TooManyEntries(set.len() as u64))
    );
    for cut in 0..blob.len() {
        assert!(RevocationSet::from_bytes(&blob[..cut], 1_000).is_err());
    }
    let mut longer = blob.clone();
    longer.extend_from_slice(&[0; 12]);
    assert!(RevocationSet::from_bytes(&longer, 1_000).is_err());
    let at = BLOB_HEADER_LEN;
    let mut unsorted = blob.clone();
    unsorted[at..at + 16].rotate_left(8);
    assert!(RevocationSet::from_bytes(&unsorted, 1_000).is_err());
    let mut late = blob.clone();
    let codes_at = at + set.len() * 8;
    late[codes_at..codes_at + 2].copy_from_slice(&u16::MAX.to_le_bytes());
    assert!(RevocationSet::from_bytes(&late, 1_000).is_err());
    let nbf_at = at + set.len() * 10;
    let mut stray = blob.clone();
    stray[nbf_at + 3] ^= 1;
    assert!(RevocationSet::from_bytes(&stray, 1_000).is_err());
    let mut zero = blob.clone();
    let times = nbf_at + set.not_before.len() * 8;
    zero[times..times + 4].fill(0);
    assert!(RevocationSet::from_bytes(&zero, 1_000).is_err());
    let mut counts = blob.clone();
    counts[at - 8..at].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(RevocationSet::from_bytes(&counts, u64::MAX).is_err());
}
