//! Differential tests: `KeyTable::verify_strict` against ed25519-dalek's `verify_strict`.

use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use proptest::prelude::*;
use sha2::{Digest as _, Sha512};

use super::{
    DIGITS, HALF, KeyTable, Multiples, PER_ROW, ROWS, WINDOW, canonical_y, double_fixed_base,
    signed_digits,
};

/// Both verifiers' answer; panics when they differ.
fn agree(key: &VerifyingKey, message: &[u8], signature: &[u8]) -> bool {
    let dalek = ed25519_dalek::Signature::from_slice(signature)
        .is_ok_and(|sig| key.verify_strict(message, &sig).is_ok());
    let ours = KeyTable::new(key).verify_strict(message, signature);
    assert_eq!(
        ours,
        dalek,
        "key {} message {} signature {}",
        hex::encode(key.as_bytes()),
        hex::encode(message),
        hex::encode(signature)
    );
    ours
}

fn sign(seed: [u8; 32], message: &[u8]) -> (VerifyingKey, [u8; 64]) {
    let key = SigningKey::from_bytes(&seed);
    (key.verifying_key(), key.sign(message).to_bytes())
}

/// Signs by the verification equation for any point `a_point = [a]B + T`: valid for
/// `verify_strict` exactly when `[k]T` is the identity.
fn sign_raw(a: &Scalar, a_point: &EdwardsPoint, r: &Scalar, message: &[u8]) -> [u8; 64] {
    let r_enc = EdwardsPoint::mul_base(r).compress();
    let mut h = Sha512::new();
    h.update(r_enc.as_bytes());
    h.update(a_point.compress().as_bytes());
    h.update(message);
    let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
    let s = r + k * a;
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(r_enc.as_bytes());
    sig[32..].copy_from_slice(s.as_bytes());
    sig
}

fn scalar(seed: u8, salt: &[u8]) -> Scalar {
    Scalar::from_bytes_mod_order_wide(
        &Sha512::new()
            .chain_update([seed])
            .chain_update(salt)
            .finalize()
            .into(),
    )
}

/// `x` + `y` as 256-bit little-endian integers (no overflow for the values used).
fn add256(x: &[u8; 32], y: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let v = u16::from(x[i]) + u16::from(y[i]) + carry;
        out[i] = v as u8;
        carry = v >> 8;
    }
    out
}

/// The encodings of small-order points, canonical or not, that decode: the eight
/// torsion points with either sign bit, and `y = p + j` for small `j`.
fn small_order_and_noncanonical_encodings() -> Vec<[u8; 32]> {
    let mut out = Vec::new();
    for t in EIGHT_TORSION {
        let enc = t.compress().to_bytes();
        out.push(enc);
        let mut flipped = enc;
        flipped[31] ^= 0x80;
        out.push(flipped);
    }
    for j in 0u8..19 {
        for sign in [0u8, 0x80] {
            let mut enc = [0xffu8; 32];
            enc[0] = 0xed + j;
            enc[31] = 0x7f | sign;
            out.push(enc);
        }
    }
    out
}

#[test]
fn a_key_table_holds_110_kib() {
    // 704 extended points of four field elements (ten u32 limbs in wasm32, five u64 here).
    assert_eq!((ROWS, PER_ROW), (22, 32));
    assert_eq!(
        std::mem::size_of::<[[EdwardsPoint; PER_ROW]; ROWS]>(),
        704 * 160
    );
}

#[test]
fn rfc_8032_test_vectors_are_accepted_by_both() {
    let vectors = [
        (
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
        (
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "af82",
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        ),
    ];
    for (public, message, signature) in vectors {
        let key: [u8; 32] = hex::decode(public).unwrap().try_into().unwrap();
        let key = VerifyingKey::from_bytes(&key).unwrap();
        let message = hex::decode(message).unwrap();
        let signature = hex::decode(signature).unwrap();
        assert!(agree(&key, &message, &signature));
        let mut wrong = signature.clone();
        wrong[0] ^= 1;
        assert!(!agree(&key, &message, &wrong));
    }
}

#[test]
fn every_single_bit_flip_of_a_signature_key_or_message_gets_the_same_answer() {
    let message = b"eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1In0";
    let (key, signature) = sign([3; 32], message);
    assert!(agree(&key, message, &signature));
    for bit in 0..512 {
        let mut sig = signature;
        sig[bit / 8] ^= 1 << (bit % 8);
        agree(&key, message, &sig);
    }
    for bit in 0..256 {
        let mut bytes = key.to_bytes();
        bytes[bit / 8] ^= 1 << (bit % 8);
        if let Ok(other) = VerifyingKey::from_bytes(&bytes) {
            agree(&other, message, &signature);
        }
    }
    for bit in 0..message.len() * 8 {
        let mut m = message.to_vec();
        m[bit / 8] ^= 1 << (bit % 8);
        assert!(!agree(&key, &m, &signature));
    }
    for len in [0, 63, 65] {
        assert!(!agree(&key, message, &vec![0; len]));
    }
}

#[test]
fn non_canonical_s_is_refused_by_both() {
    // l = 2^252 + 27742317777372353535851937790883648493, little-endian.
    let order: [u8; 32] =
        hex::decode("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010")
            .unwrap()
            .try_into()
            .unwrap();
    assert_eq!(Scalar::from_bytes_mod_order(order), Scalar::ZERO);
    for seed in 0..8u8 {
        let message = [seed; 40];
        let (key, signature) = sign([seed; 32], &message);
        assert!(agree(&key, &message, &signature));
        let s: [u8; 32] = signature[32..].try_into().unwrap();
        for extra in [order, add256(&order, &order)] {
            let mut sig = signature;
            sig[32..].copy_from_slice(&add256(&s, &extra));
            assert!(!agree(&key, &message, &sig));
        }
        let mut high = signature;
        high[63] |= 0x80;
        assert!(!agree(&key, &message, &high));
    }
    // s = l exactly.
    let (key, signature) = sign([9; 32], b"m");
    let mut at_l = signature;
    at_l[32..].copy_from_slice(&order);
    assert!(!agree(&key, b"m", &at_l));
}

#[test]
fn small_order_and_non_canonical_r_get_the_same_answer() {
    let (key, signature) = sign([5; 32], b"message");
    for enc in small_order_and_noncanonical_encodings() {
        let mut sig = signature;
        sig[..32].copy_from_slice(&enc);
        assert!(!agree(&key, b"message", &sig));
        // With s = 0: R' = -[k]A, never small order, never these encodings.
        sig[32..].fill(0);
        assert!(!agree(&key, b"message", &sig));
    }
}

#[test]
fn the_canonical_y_test_is_the_re_encoding_test_for_every_point_that_decodes() {
    let mut encodings = small_order_and_noncanonical_encodings();
    for seed in 0..64u8 {
        let enc = EdwardsPoint::mul_base(&scalar(seed, b"r"))
            .compress()
            .to_bytes();
        encodings.push(enc);
        let mut flipped = enc;
        flipped[31] ^= 0x80;
        encodings.push(flipped);
    }
    for enc in encodings {
        let Some(point) = CompressedEdwardsY(enc).decompress() else {
            continue;
        };
        if point.is_small_order() {
            // verify_strict refuses these before comparing; x may be 0 and the sign bit
            // then does not round-trip.
            continue;
        }
        assert_eq!(
            canonical_y(&enc),
            point.compress().to_bytes() == enc,
            "{}",
            hex::encode(enc)
        );
    }
}

#[test]
fn small_order_keys_are_refused_by_both_even_when_the_equation_holds() {
    for t in EIGHT_TORSION {
        for enc in [t.compress().to_bytes(), {
            let mut e = t.compress().to_bytes();
            e[31] ^= 0x80;
            e
        }] {
            let Ok(key) = VerifyingKey::from_bytes(&enc) else {
                continue;
            };
            for i in 0..16u8 {
                // R = [s]B: the equation holds whenever [k]A is the identity.
                let s = scalar(i, b"s");
                let mut sig = [0u8; 64];
                sig[..32].copy_from_slice(EdwardsPoint::mul_base(&s).compress().as_bytes());
                sig[32..].copy_from_slice(s.as_bytes());
                assert!(!agree(&key, &[i], &sig));
            }
        }
    }
}

#[test]
fn mixed_order_keys_get_the_same_answer() {
    // A = [a]B + T: verify_strict's equation has no cofactor, so a signature holds only
    // when [k]T is the identity; both must agree on every one.
    let mut accepted = 0;
    for (n, t) in EIGHT_TORSION.iter().enumerate().skip(1) {
        let a = scalar(n as u8, b"a");
        let a_point = EdwardsPoint::mul_base(&a) + t;
        let key = VerifyingKey::from_bytes(&a_point.compress().to_bytes()).unwrap();
        for i in 0..24u8 {
            let message = [i, n as u8];
            let sig = sign_raw(&a, &a_point, &scalar(i, b"r"), &message);
            accepted += u32::from(agree(&key, &message, &sig));
        }
    }
    assert!(
        accepted > 0,
        "no case where [k]T vanished: the test lost its point"
    );
}

#[test]
fn signed_digits_sum_back_to_the_scalar() {
    let mut scalars: Vec<Scalar> = (0..32u8).map(|seed| scalar(seed, b"digits")).collect();
    // l - 1, and values whose windows are all at the carry boundary.
    scalars.push(-Scalar::ONE);
    scalars.push(Scalar::from_bytes_mod_order([0xff; 32]));
    scalars.push(Scalar::from(0x8421_0842_1084_2108u64));
    scalars.push(Scalar::ZERO);
    for s in scalars {
        let d = signed_digits(&s);
        let half = HALF as i8;
        assert!(d[..DIGITS - 1].iter().all(|&x| (-half..half).contains(&x)));
        assert!((-half..=half).contains(&d[DIGITS - 1]));
        let mut acc = Scalar::ZERO;
        for &x in d.iter().rev() {
            acc *= Scalar::from(1u64 << WINDOW);
            acc += if x < 0 {
                -Scalar::from(x.unsigned_abs())
            } else {
                Scalar::from(x as u8)
            };
        }
        assert_eq!(acc, s);
    }
    let max = -Scalar::ONE; // l - 1
    assert_eq!(ED25519_BASEPOINT_POINT * max, -ED25519_BASEPOINT_POINT);
}

#[test]
fn the_fixed_base_sum_is_the_variable_base_product() {
    let p = ED25519_BASEPOINT_POINT * scalar(1, b"p");
    let q = ED25519_BASEPOINT_POINT * scalar(2, b"q");
    let (tp, tq) = (Multiples::new(&p), Multiples::new(&q));
    for seed in 0..16u8 {
        let (a, b) = (scalar(seed, b"a"), scalar(seed, b"b"));
        assert_eq!(double_fixed_base(&a, &tp, &b, &tq), p * a + q * b);
    }
    let max = -Scalar::ONE;
    assert_eq!(double_fixed_base(&max, &tp, &max, &tq), -(p + q));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_keys_messages_and_mutations_get_the_same_answer(
        seed in any::<[u8; 32]>(),
        message in proptest::collection::vec(any::<u8>(), 0..300),
        flip in 0usize..64,
        xor in 1u8..=255,
        other in any::<[u8; 64]>(),
    ) {
        let (key, signature) = sign(seed, &message);
        prop_assert!(agree(&key, &message, &signature));
        let mut mutated = signature;
        mutated[flip] ^= xor;
        agree(&key, &message, &mutated);
        agree(&key, &message, &other);
        let mut r_kept = other;
        r_kept[..32].copy_from_slice(&signature[..32]);
        agree(&key, &message, &r_kept);
        let mut s_kept = other;
        s_kept[32..].copy_from_slice(&signature[32..]);
        agree(&key, &message, &s_kept);
    }
}
