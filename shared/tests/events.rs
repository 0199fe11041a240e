//! Signed revocation events, the edge set wire format and its lookup.

use shared::edgeset::{
    EdgeSetError, EdgeUpdate, Entry, MAX_FEED_LEEWAY, RevocationSet, UpdateKind, entry_key,
};
use shared::keys::{Alg, Keyring, SigningKey};
use shared::revocation::{
    Kind, RevocationEvent, TokenIds, VerifiedRoots, join_batch_member, sign_batch,
    split_batch_member,
};
use shared::{JoseError, b64, jws};

fn region_key() -> SigningKey {
    SigningKey::from_seed(Alg::MlDsa65, &[5; 32])
}

fn event(kind: Kind, value: &str) -> RevocationEvent {
    RevocationEvent {
        event_id: format!("ev-{value}"),
        kind,
        value: value.into(),
        not_before: (kind == Kind::Sub).then_some(1_000),
        expires_at: 5_000,
        issued_at: 1_000,
        origin: "eu".into(),
        nonce: "00ff".into(),
        kid: region_key().kid(),
    }
}

fn ids<'a>(jti: &'a str, sub: &'a str, iat: i64) -> TokenIds<'a> {
    TokenIds {
        jti,
        sub,
        kid: "k1",
        sid: Some("s1"),
        iat,
    }
}

#[test]
fn revocation_events_round_trip_and_are_canonical() {
    let key = region_key();
    let mut ring = Keyring::new();
    ring.add(key.verifying_key());
    let ev = event(Kind::Sub, "alice");
    let signed = ev.sign(&key).unwrap();
    assert_eq!(RevocationEvent::verify(&signed, &ring).unwrap(), ev);
    // Deterministic bytes: signing twice gives the same token.
    assert_eq!(ev.sign(&key).unwrap(), signed);
}

#[test]
fn forged_or_foreign_events_are_refused() {
    let key = region_key();
    let mut ring = Keyring::new();
    ring.add(key.verifying_key());
    let signed = event(Kind::Jti, "j").sign(&key).unwrap();
    let (head, rest) = signed.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let mut other = event(Kind::Jti, "other");
    other.kid = key.kid();
    let forged = format!("{head}.{}.{sig}", b64::encode(&other.canonical_bytes()));
    assert_eq!(
        RevocationEvent::verify(&forged, &ring).unwrap_err(),
        JoseError::BadSignature
    );
    assert!(matches!(
        RevocationEvent::verify(&signed, &Keyring::new()),
        Err(JoseError::UnknownKey(_))
    ));
    // An Ed25519 key may not sign events.
    assert!(
        event(Kind::Jti, "j")
            .sign(&SigningKey::from_seed(Alg::EdDsa, &[1; 32]))
            .is_err()
    );
}

#[test]
fn every_event_of_a_signed_batch_verifies_on_its_own() {
    let key = region_key();
    let mut ring = Keyring::new();
    ring.add(key.verifying_key());
    for n in [1, 2, 3, 7, 8, 33] {
        let events: Vec<RevocationEvent> =
            (0..n).map(|i| event(Kind::Jti, &format!("j{i}"))).collect();
        let signed = sign_batch(&events, &key).unwrap();
        assert_eq!(signed.len(), n);
        for (event, token) in events.iter().zip(&signed) {
            assert_eq!(&RevocationEvent::verify(token, &ring).unwrap(), event);
            // A standard flattened JWS: any JOSE library checks the signature over the root.
            let jws: serde_json::Value = serde_json::from_str(token).unwrap();
            let header: serde_json::Value = serde_json::from_slice(
                &b64::decode(jws["protected"].as_str().unwrap(), "h").unwrap(),
            )
            .unwrap();
            assert_eq!(header["typ"], "revocation-batch+jws");
            assert_eq!(header["alg"], "ML-DSA-65");
        }
    }
    assert!(sign_batch(&[], &key).is_err());
}

#[test]
fn a_batch_member_splits_into_its_shared_root_and_joins_back_byte_for_byte() {
    let key = region_key();
    let events: Vec<RevocationEvent> = (0..3).map(|i| event(Kind::Jti, &format!("j{i}"))).collect();
    let signed = sign_batch(&events, &key).unwrap();
    let (root0, member0) = split_batch_member(&signed[0]).unwrap();
    let (root2, member2) = split_batch_member(&signed[2]).unwrap();
    assert_eq!(root0, root2, "one root per batch");
    assert_eq!(root0.split('.').count(), 3);
    assert!(member0.len() < 1_000, "the member part holds no signature");
    assert_eq!(join_batch_member(&root0, &member0).unwrap(), signed[0]);
    assert_eq!(join_batch_member(&root2, &member2).unwrap(), signed[2]);
    // A compact event, a reformatted member or junk does not split.
    assert!(split_batch_member(&events[0].sign(&key).unwrap()).is_none());
    let spaced = signed[0].replacen(",", ", ", 1);
    assert!(split_batch_member(&spaced).is_none());
    assert!(split_batch_member("{}").is_none());
    assert!(join_batch_member("a.b", &member0).is_none());
    assert!(join_batch_member(&root0, "{}").is_none());
}

#[test]
fn a_verified_root_spares_the_signature_but_never_the_proof_or_the_key() {
    let key = region_key();
    let mut ring = Keyring::new();
    ring.add(key.verifying_key());
    let events: Vec<RevocationEvent> = (0..8).map(|i| event(Kind::Jti, &format!("j{i}"))).collect();
    let signed = sign_batch(&events, &key).unwrap();
    let mut roots = VerifiedRoots::default();
    for (event, token) in events.iter().zip(&signed) {
        assert_eq!(
            &RevocationEvent::verify_cached(token, &ring, &mut roots).unwrap(),
            event
        );
    }
    assert_eq!(roots.len(), 1, "one root for the whole batch");
    // Another event put beside a cached root's proof still fails its proof.
    let mut member: serde_json::Value = serde_json::from_str(&signed[3]).unwrap();
    member["header"]["event"] = b64::encode(&event(Kind::Jti, "forged").canonical_bytes()).into();
    assert_eq!(
        RevocationEvent::verify_cached(&member.to_string(), &ring, &mut roots),
        Err(JoseError::BadSignature)
    );
    // A flipped signature byte is another root: verified, and refused.
    let mut member: serde_json::Value = serde_json::from_str(&signed[3]).unwrap();
    let mut sig = b64::decode(member["signature"].as_str().unwrap(), "sig").unwrap();
    sig[0] ^= 1;
    member["signature"] = b64::encode(&sig).into();
    assert_eq!(
        RevocationEvent::verify_cached(&member.to_string(), &ring, &mut roots),
        Err(JoseError::BadSignature)
    );
    // A root verified under a key no longer trusted is not taken from the cache.
    assert!(RevocationEvent::verify_cached(&signed[0], &Keyring::new(), &mut roots).is_err());
}

#[test]
fn a_batch_member_with_another_event_index_or_proof_is_refused() {
    let key = region_key();
    let mut ring = Keyring::new();
    ring.add(key.verifying_key());
    let events: Vec<RevocationEvent> = (0..5).map(|i| event(Kind::Jti, &format!("j{i}"))).collect();
    let signed = sign_batch(&events, &key).unwrap();
    let member: serde_json::Value = serde_json::from_str(&signed[2]).unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut m = member.clone();
        f(&mut m);
        RevocationEvent::verify(&m.to_string(), &ring)
    };
    let forged = b64::encode(&event(Kind::Jti, "forged").canonical_bytes());
    assert_eq!(
        edit(&|m| m["header"]["event"] = forged.clone().into()),
        Err(JoseError::BadSignature)
    );
    assert_eq!(
        edit(&|m| m["header"]["index"] = 3.into()),
        Err(JoseError::BadSignature)
    );
    assert_eq!(
        edit(&|m| m["header"]["index"] = 9.into()),
        Err(JoseError::BadSignature)
    );
    let other_proof =
        serde_json::from_str::<serde_json::Value>(&signed[0]).unwrap()["header"]["proof"].clone();
    assert_eq!(
        edit(&|m| m["header"]["proof"] = other_proof.clone()),
        Err(JoseError::BadSignature)
    );
    assert_eq!(
        edit(&|m| m["header"]["proof"] = serde_json::json!([])),
        Err(JoseError::BadSignature)
    );
    // Another batch's signature over another root.
    let other = sign_batch(&events[..4], &key).unwrap();
    let other: serde_json::Value = serde_json::from_str(&other[2]).unwrap();
    assert_eq!(
        edit(&|m| m["payload"] = other["payload"].clone()),
        Err(JoseError::BadSignature)
    );
    // Unknown members, an unknown key, garbage.
    assert!(edit(&|m| m["header"]["extra"] = 1.into()).is_err());
    assert!(edit(&|m| m["extra"] = 1.into()).is_err());
    assert!(matches!(
        RevocationEvent::verify(&signed[2], &Keyring::new()),
        Err(JoseError::UnknownKey(_))
    ));
    for junk in ["{", "{}", "{\"protected\":1}", &"{".repeat(20_000)] {
        assert!(RevocationEvent::verify(junk, &ring).is_err(), "{junk:.20}");
    }
    // The original still verifies: nothing above was accepted by accident.
    assert_eq!(
        RevocationEvent::verify(&signed[2], &ring).unwrap(),
        events[2]
    );
}

#[test]
fn subject_revocations_cover_tokens_issued_up_to_their_second() {
    let ev = event(Kind::Sub, "alice");
    assert!(ev.matches(&ids("x", "alice", 999)));
    assert!(ev.matches(&ids("x", "alice", 1_000)));
    assert!(
        !ev.matches(&ids("x", "alice", 1_001)),
        "a later login stays valid"
    );
    assert!(!ev.matches(&ids("x", "bob", 999)));
}

#[test]
fn edge_updates_round_trip_signed_and_sorted() {
    let key = region_key();
    let mut ring = Keyring::new();
    ring.add(key.verifying_key());
    let entries: Vec<Entry> = ["a", "b", "c"]
        .iter()
        .map(|v| Entry::from_event(&event(Kind::Jti, v)))
        .collect();
    let update = EdgeUpdate {
        kind: UpdateKind::Snapshot,
        base_seq: 0,
        seq: 3,
        generated_at: 1_000,
        entries,
        leeway: None,
        feed: None,
        jwks: None,
    };
    let opened = EdgeUpdate::open(&update.sign(&key).unwrap(), &ring, 10).unwrap();
    assert_eq!(opened.seq, 3);
    assert_eq!(opened.entries.len(), 3);
    assert!(opened.entries.windows(2).all(|w| w[0].key < w[1].key));
    assert!(matches!(
        EdgeUpdate::open(&update.sign(&key).unwrap(), &ring, 2),
        Err(EdgeSetError::TooManyEntries(3))
    ));
}

fn snapshot_with_leeway(leeway: Option<u32>) -> EdgeUpdate {
    EdgeUpdate {
        kind: UpdateKind::Snapshot,
        base_seq: 0,
        seq: 3,
        generated_at: 1_000,
        entries: vec![Entry::from_event(&event(Kind::Jti, "a"))],
        leeway,
        feed: None,
        jwks: None,
    }
}

#[test]
fn an_update_names_its_feed_in_the_signed_header() {
    let key = region_key();
    let mut ring = Keyring::new();
    ring.add(key.verifying_key());
    let with = EdgeUpdate {
        feed: Some("Zm9vYmFyYmF6cXV4MTIzNA".into()),
        jwks: None,
        ..snapshot_with_leeway(Some(30))
    };
    let signed = with.sign(&key).unwrap();
    assert_eq!(protected_header(&signed)["feed"], "Zm9vYmFyYmF6cXV4MTIzNA");
    let opened = EdgeUpdate::open(&signed, &ring, 10).unwrap();
    assert_eq!(opened.feed.as_deref(), Some("Zm9vYmFyYmF6cXV4MTIzNA"));
    assert_eq!(opened.leeway, Some(30));
    // Not in the payload: an edge built before the member decodes the same update.
    assert_eq!(with.encode(), snapshot_with_leeway(Some(30)).encode());
    // Without it, the header is as before the member, and opens as "not said".
    let without = snapshot_with_leeway(None).sign(&key).unwrap();
    assert!(protected_header(&without).get("feed").is_none());
    assert_eq!(EdgeUpdate::open(&without, &ring, 10).unwrap().feed, None);
}

#[test]
fn a_malformed_feed_id_is_neither_signed_nor_accepted() {
    let key = region_key();
    let mut ring = Keyring::new();
    ring.add(key.verifying_key());
    let too_long = "a".repeat(shared::edgeset::MAX_FEED_ID_LEN + 1);
    for bad in ["", "has space", "dot.ted", "é", too_long.as_str()] {
        assert!(!shared::edgeset::is_feed_id(bad), "{bad:?}");
        let update = EdgeUpdate {
            feed: Some(bad.into()),
            jwks: None,
            ..snapshot_with_leeway(None)
        };
        assert!(update.sign(&key).is_err(), "{bad:?} signed");
        // Signed through the header alone: the edge refuses it.
        let forged = jws::sign_with_header(
            &key,
            jws::Header {
                typ: Some(shared::envelope::TYP_EDGE_SNAPSHOT.into()),
                kid: Some(key.kid()),
                feed: Some(bad.into()),
                jwks: None,
                ..jws::Header::default()
            },
            &update.encode(),
        )
        .unwrap();
        assert!(
            matches!(
                EdgeUpdate::open(&forged, &ring, 10),
                Err(EdgeSetError::Malformed(_))
            ),
            "{bad:?} accepted"
        );
    }
    let longest = "a".repeat(shared::edgeset::MAX_FEED_ID_LEN);
    assert!(shared::edgeset::is_feed_id(&longest));
    // What the control plane makes: 16 random bytes, base64url.
    assert!(shared::edgeset::is_feed_id(&b64::encode(&[0xfb; 16])));
}

#[test]
fn an_update_names_the_digest_of_the_jwks_served_with_it() {
    let key = region_key();
    let mut ring = Keyring::new();
    ring.add(key.verifying_key());
    // SHA-256 of the document's bytes, base64url without padding.
    let digest = shared::edgeset::jwks_digest(br#"{"keys":[]}"#);
    assert_eq!(digest, b64::encode(&shared::sha256(br#"{"keys":[]}"#)));
    assert_eq!(digest.len(), 43);
    let with = EdgeUpdate {
        jwks: Some(digest.clone()),
        ..snapshot_with_leeway(None)
    };
    let signed = with.sign(&key).unwrap();
    assert_eq!(protected_header(&signed)["jwks"], digest.as_str());
    assert_eq!(
        EdgeUpdate::open(&signed, &ring, 10).unwrap().jwks,
        Some(digest)
    );
    // Not in the payload, and absent when not said.
    assert_eq!(with.encode(), snapshot_with_leeway(None).encode());
    let without = snapshot_with_leeway(None).sign(&key).unwrap();
    assert!(protected_header(&without).get("jwks").is_none());
    // A malformed one is neither signed nor accepted.
    let bad = EdgeUpdate {
        jwks: Some("not a digest".into()),
        ..snapshot_with_leeway(None)
    };
    assert!(bad.sign(&key).is_err());
    let forged = jws::sign_with_header(
        &key,
        jws::Header {
            typ: Some(shared::envelope::TYP_EDGE_SNAPSHOT.into()),
            kid: Some(key.kid()),
            jwks: Some("not a digest".into()),
            ..jws::Header::default()
        },
        &bad.encode(),
    )
    .unwrap();
    assert!(matches!(
        EdgeUpdate::open(&forged, &ring, 10),
        Err(EdgeSetError::Malformed(_))
    ));
}

fn protected_header(token: &str) -> serde_json::Value {
    let header = token.split('.').next().unwrap();
    serde_json::from_slice(&b64::decode_public(header, "header").unwrap()).unwrap()
}

#[test]
fn an_update_carries_its_leeway_in_the_signed_header_and_its_payload_is_unchanged() {
    let key = region_key();
    let mut ring = Keyring::new();
    ring.add(key.verifying_key());
    let with = snapshot_with_leeway(Some(30));
    let signed = with.sign(&key).unwrap();
    assert_eq!(protected_header(&signed)["leeway"], 30);
    let opened = EdgeUpdate::open(&signed, &ring, 10).unwrap();
    assert_eq!(opened.leeway, Some(30));
    assert_eq!(opened.entries.len(), 1);
    // Not in the payload: version 2 and its bytes stay as they were.
    let without = snapshot_with_leeway(None);
    assert_eq!(with.encode(), without.encode());
    assert_eq!(EdgeUpdate::decode(&with.encode(), 10).unwrap().leeway, None);
    // An update that says nothing opens as "not said", its header as before the member.
    let signed = without.sign(&key).unwrap();
    assert_eq!(
        protected_header(&signed),
        serde_json::json!({"alg": "ML-DSA-65", "typ": "edge-snapshot+jws", "kid": key.kid()})
    );
    assert_eq!(EdgeUpdate::open(&signed, &ring, 10).unwrap().leeway, None);
    // Zero is a leeway like any other, not "not said".
    let zero = snapshot_with_leeway(Some(0)).sign(&key).unwrap();
    assert_eq!(EdgeUpdate::open(&zero, &ring, 10).unwrap().leeway, Some(0));
}

#[test]
fn an_edge_built_before_the_leeway_member_still_opens_an_update_that_has_it() {
    // What such an edge ran: the header members it knew, unknown ones ignored (only
    // `crit` is refused), then the payload decoded.
    #[derive(serde::Deserialize)]
    #[expect(dead_code, reason = "the members the old parser read, to parse them")]
    struct OldHeader {
        alg: String,
        typ: Option<String>,
        kid: Option<String>,
        jwk: Option<serde_json::Value>,
        crit: Option<serde_json::Value>,
    }
    let key = region_key();
    let mut ring = Keyring::new();
    ring.add(key.verifying_key());
    let update = snapshot_with_leeway(Some(30));
    let signed = update.sign(&key).unwrap();
    let header = signed.split('.').next().unwrap();
    let old: OldHeader =
        shared::json::from_slice(&b64::decode_public(header, "header").unwrap(), "header").unwrap();
    assert!(old.crit.is_none());
    let (typ, payload) = shared::envelope::open(
        &signed,
        &[
            shared::envelope::TYP_EDGE_SNAPSHOT,
            shared::envelope::TYP_EDGE_DELTA,
        ],
        &ring,
        64 * 1024,
    )
    .unwrap();
    assert_eq!(typ, shared::envelope::TYP_EDGE_SNAPSHOT);
    let decoded = EdgeUpdate::decode(&payload, 10).unwrap();
    assert_eq!(
        decoded,
        EdgeUpdate {
            leeway: None,
            feed: None,
            jwks: None,
            entries: decoded.entries.clone(),
            ..update
        }
    );
}

#[test]
fn an_update_that_declares_a_leeway_over_a_day_is_refused() {
    let key = region_key();
    let mut ring = Keyring::new();
    ring.add(key.verifying_key());
    let max = snapshot_with_leeway(Some(MAX_FEED_LEEWAY))
        .sign(&key)
        .unwrap();
    assert_eq!(
        EdgeUpdate::open(&max, &ring, 10).unwrap().leeway,
        Some(MAX_FEED_LEEWAY)
    );
    let over = snapshot_with_leeway(Some(MAX_FEED_LEEWAY + 1))
        .sign(&key)
        .unwrap();
    assert!(matches!(
        EdgeUpdate::open(&over, &ring, 10),
        Err(EdgeSetError::Malformed(_))
    ));
    // Past u32 too, through the header alone.
    let huge = jws::sign_with_header(
        &key,
        jws::Header {
            typ: Some(shared::envelope::TYP_EDGE_SNAPSHOT.into()),
            kid: Some(key.kid()),
            leeway: Some(u64::MAX),
            ..jws::Header::default()
        },
        &snapshot_with_leeway(None).encode(),
    )
    .unwrap();
    assert!(matches!(
        EdgeUpdate::open(&huge, &ring, 10),
        Err(EdgeSetError::Malformed(_))
    ));
}

#[test]
fn malformed_edge_payloads_are_refused() {
    let update = EdgeUpdate {
        kind: UpdateKind::Delta,
        base_seq: 1,
        seq: 2,
        generated_at: 1_000,
        entries: vec![Entry::from_event(&event(Kind::Sid, "s"))],
        leeway: None,
        feed: None,
        jwks: None,
    };
    let bytes = update.encode();
    assert_eq!(EdgeUpdate::decode(&bytes, 10).unwrap(), update);
    for cut in 0..bytes.len() {
        assert!(
            EdgeUpdate::decode(&bytes[..cut], 10).is_err(),
            "truncated at {cut}"
        );
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(EdgeUpdate::decode(&trailing, 10).is_err());
    let mut magic = bytes.clone();
    magic[0] = b'X';
    assert!(EdgeUpdate::decode(&magic, 10).is_err());
}

#[test]
fn the_set_applies_snapshots_and_deltas_in_order_and_checks_every_kind() {
    let mut set = RevocationSet::new();
    let snap = EdgeUpdate {
        kind: UpdateKind::Snapshot,
        base_seq: 0,
        seq: 2,
        generated_at: 1_000,
        entries: vec![
            Entry::from_event(&event(Kind::Jti, "j1")),
            Entry::from_event(&event(Kind::Sub, "alice")),
        ],
        leeway: None,
        feed: None,
        jwks: None,
    };
    set.apply(snap).unwrap();
    assert_eq!(set.check(&ids("j1", "bob", 1_500), 1_500), Some(Kind::Jti));
    assert_eq!(set.check(&ids("j2", "alice", 900), 1_500), Some(Kind::Sub));
    assert_eq!(set.check(&ids("j2", "alice", 1_001), 1_500), None);
    let gap = EdgeUpdate {
        kind: UpdateKind::Delta,
        base_seq: 5,
        seq: 6,
        generated_at: 1_100,
        entries: vec![],
        leeway: None,
        feed: None,
        jwks: None,
    };
    assert!(matches!(
        set.apply(gap),
        Err(EdgeSetError::SequenceGap {
            base: 5,
            current: 2
        })
    ));
    let delta = EdgeUpdate {
        kind: UpdateKind::Delta,
        base_seq: 2,
        seq: 4,
        generated_at: 1_100,
        entries: vec![
            Entry::from_event(&event(Kind::Kid, "k1")),
            Entry::from_event(&event(Kind::Sid, "s1")),
        ],
        leeway: None,
        feed: None,
        jwks: None,
    };
    set.apply(delta).unwrap();
    assert_eq!(set.seq(), 4);
    assert_eq!(set.check(&ids("j9", "bob", 1_500), 1_500), Some(Kind::Kid));
    // Expired entries match nothing and are pruned.
    assert_eq!(set.check(&ids("j1", "bob", 1_500), 5_000), None);
    set.prune(5_000);
    assert!(set.is_empty());
}

#[test]
fn a_million_entries_stay_small_on_the_wire() {
    let entries: Vec<Entry> = (0..1_000_000u32)
        .map(|i| Entry {
            key: entry_key(Kind::Jti, &i.to_string()),
            expires_at: 1_000 + i % 3_600,
            not_before: 0,
        })
        .collect();
    let update = EdgeUpdate {
        kind: UpdateKind::Snapshot,
        base_seq: 0,
        seq: 1,
        generated_at: 1_000,
        entries,
        leeway: None,
        feed: None,
        jwks: None,
    };
    let bytes = update.encode();
    assert!(bytes.len() < 8_000_000, "{} bytes", bytes.len());
    assert_eq!(
        EdgeUpdate::decode(&bytes, 1_000_000).unwrap().entries.len(),
        1_000_000
    );
    assert_eq!(std::mem::size_of::<Entry>(), 16);
}

#[test]
fn the_edge_set_keeps_the_latest_subject_revocation_in_any_order() {
    let (t1, t2, t3) = (1_000_000, 2_000_000, 3_000_000);
    let at = |t: i64| {
        let mut e = event(Kind::Sub, "sam");
        e.not_before = Some(t);
        e.issued_at = t;
        e.expires_at = t3 + 1_000_000;
        Entry::from_event(&e)
    };
    for (first, second) in [(at(t1), at(t3)), (at(t3), at(t1))] {
        // In one snapshot, and as two deltas.
        let mut snapshot = RevocationSet::new();
        snapshot
            .apply(EdgeUpdate {
                kind: UpdateKind::Snapshot,
                base_seq: 0,
                seq: 2,
                generated_at: t3,
                entries: vec![first, second],
                leeway: None,
                feed: None,
                jwks: None,
            })
            .unwrap();
        let mut deltas = RevocationSet::new();
        for (seq, entry) in [(1, first), (2, second)] {
            deltas
                .apply(EdgeUpdate {
                    kind: UpdateKind::Delta,
                    base_seq: seq - 1,
                    seq,
                    generated_at: t3,
                    entries: vec![entry],
                    leeway: None,
                    feed: None,
                    jwks: None,
                })
                .unwrap();
        }
        for set in [&snapshot, &deltas] {
            assert_eq!(set.check(&ids("j", "sam", t2), t3), Some(Kind::Sub));
            assert_eq!(set.check(&ids("j", "sam", t3), t3), Some(Kind::Sub));
            assert_eq!(set.check(&ids("j", "sam", t3 + 1), t3), None);
        }
    }
}

#[test]
fn a_trusted_key_cannot_sign_an_event_in_another_keys_name() {
    let signer = region_key();
    let other = SigningKey::from_seed(Alg::MlDsa65, &[6; 32]);
    let mut ring = Keyring::new();
    ring.add(signer.verifying_key());
    ring.add(other.verifying_key());
    let mut forged = event(Kind::Jti, "in-another-name");
    forged.kid = other.kid();
    let mut roots = VerifiedRoots::default();
    for token in [
        forged.sign(&signer).unwrap(),
        sign_batch(std::slice::from_ref(&forged), &signer)
            .unwrap()
            .remove(0),
    ] {
        assert!(
            matches!(
                RevocationEvent::verify(&token, &ring),
                Err(JoseError::Malformed(_))
            ),
            "{token:.40}"
        );
        assert!(RevocationEvent::verify_cached(&token, &ring, &mut roots).is_err());
        // The caller that counts it apart learns who signed it.
        let verified = RevocationEvent::verify_signer(&token, &ring, &mut roots).unwrap();
        assert_eq!(verified.signer, signer.kid());
        assert_eq!(verified.event.kid, other.kid());
    }
}

#[test]
fn what_an_event_claims_is_read_without_its_signature_and_roots_merge() {
    let key = region_key();
    let ev = event(Kind::Jti, "claimed");
    let alone = ev.sign(&key).unwrap();
    let member = sign_batch(std::slice::from_ref(&ev), &key)
        .unwrap()
        .remove(0);
    for token in [&alone, &member] {
        assert_eq!(
            RevocationEvent::claimed(token),
            Some((key.kid(), ev.clone()))
        );
    }
    assert_eq!(RevocationEvent::claimed("a.b"), None);
    assert_eq!(RevocationEvent::claimed("{}"), None);
    // A copy verified apart gives its roots back.
    let mut ring = Keyring::new();
    ring.add(key.verifying_key());
    let mut shared_roots = VerifiedRoots::default();
    let mut copy = shared_roots.clone();
    RevocationEvent::verify_cached(&member, &ring, &mut copy).unwrap();
    assert_eq!(copy.added(), 1);
    shared_roots.absorb(copy.clone());
    shared_roots.absorb(copy);
    assert_eq!(shared_roots.len(), 1);
}
