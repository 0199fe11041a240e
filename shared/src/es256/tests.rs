//! The fast verifier against `p256`'s own: the same answer for valid signatures, either
//! `s`, every kind of damage, and random keys and messages.

use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use proptest::prelude::*;

use super::*;

fn key(seed: u8) -> SigningKey {
    let mut scalar = [seed; 32];
    scalar[0] = 0x11;
    SigningKey::from_slice(&scalar).expect("scalar")
}

/// Both verifiers' answers, which must agree.
fn both(key: &VerifyingKey, message: &[u8], signature: &Signature) -> bool {
    let ours = verify(key, message, signature);
    let theirs = key.verify(message, signature).is_ok();
    assert_eq!(ours, theirs, "message {message:?}, signature {signature:?}");
    ours
}

#[test]
fn field_arithmetic_agrees_with_the_definitions() {
    let a = Fe::from_be_bytes(&[0x5a; 32]).unwrap();
    let b = Fe::from_be_bytes(&[0xc3; 32]).unwrap();
    assert_eq!(a.mul(&b.invert()).mul(&b), a);
    assert_eq!(a.add(&b).sub(&b), a);
    assert_eq!(a.sub(&a), Fe::ZERO);
    assert_eq!(a.add(&a.neg()), Fe::ZERO);
    assert_eq!(ONE.mul(&a), a);
    // p - 1 squared is 1.
    let mut p_minus_1 = [0u8; 32];
    for (i, limb) in P.iter().rev().enumerate() {
        p_minus_1[i * 4..i * 4 + 4].copy_from_slice(&limb.to_be_bytes());
    }
    p_minus_1[31] -= 1;
    assert_eq!(Fe::from_be_bytes(&p_minus_1).unwrap().square(), ONE);
    let mut p = p_minus_1;
    p[31] += 1;
    assert!(
        Fe::from_be_bytes(&p).is_none(),
        "p itself is not a field element"
    );
}

#[test]
fn the_generator_table_holds_odd_multiples_of_g() {
    let table = generator_table();
    assert_eq!(table.len(), 32);
    for (i, entry) in table.iter().enumerate() {
        let k = Scalar::from(2 * i as u64 + 1);
        let expected = (p256::ProjectivePoint::GENERATOR * k)
            .to_affine()
            .to_sec1_point(false);
        assert_eq!(Fe::from_be_bytes(expected.x().unwrap()).unwrap(), entry.x);
        assert_eq!(Fe::from_be_bytes(expected.y().unwrap()).unwrap(), entry.y);
    }
}

#[test]
fn wnaf_digits_add_up_to_the_scalar() {
    for scalar in [[0u32; 8], [1, 0, 0, 0, 0, 0, 0, 0], N, [u32::MAX; 8], P] {
        for window in [Q_WINDOW, G_WINDOW] {
            let digits = wnaf(&scalar, window);
            // Rebuild the scalar (mod 2^288) from the digits, most significant first.
            let mut acc = [0u32; 9];
            for &d in digits.iter().rev() {
                let mut carry = 0u32;
                for w in acc.iter_mut() {
                    let next = (*w << 1) | carry;
                    carry = *w >> 31;
                    *w = next;
                }
                let mut add = d.unsigned_abs() as u32;
                for w in acc.iter_mut() {
                    if add == 0 {
                        break;
                    }
                    let (next, overflow) = if d > 0 {
                        w.overflowing_add(add)
                    } else {
                        w.overflowing_sub(add)
                    };
                    *w = next;
                    add = u32::from(overflow);
                }
                assert!(d == 0 || (d % 2 != 0 && d.unsigned_abs() < 1 << (window - 1)));
            }
            assert_eq!(acc[..8], scalar, "window {window}");
            assert_eq!(acc[8], 0);
        }
    }
}

#[test]
fn signatures_verify_with_either_s_and_fail_when_damaged_as_with_p256() {
    let signing = key(3);
    let public = *signing.verifying_key();
    let message = b"eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UifQ";
    let signature: Signature = signing.sign(message);
    assert!(both(&public, message, &signature));
    let (r, s) = signature.split_scalars();
    let flipped = Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
    assert!(both(&public, message, &flipped), "high s");
    assert!(!both(&public, b"another message", &signature));
    assert!(!both(key(4).verifying_key(), message, &signature));
    let mut bytes = signature.to_bytes();
    for i in [0, 17, 31, 32, 50, 63] {
        bytes[i] ^= 0x40;
        if let Ok(damaged) = Signature::from_slice(&bytes) {
            assert!(!both(&public, message, &damaged), "byte {i}");
        }
        bytes[i] ^= 0x40;
    }
    // r and s swapped.
    let swapped = Signature::from_scalars(s.to_bytes(), r.to_bytes()).unwrap();
    assert!(!both(&public, message, &swapped));
}

#[test]
fn a_signature_made_by_hand_whose_point_is_the_generator_verifies() {
    // For a key Q = dG the verifier computes R = (z + r d) / s G: s = z + r d (mod n) makes
    // R = G, and r = x(G). (The branch for an x(R) of n or more, `r + n`, cannot be reached
    // by a constructed test: such an x comes about once in 2^128.)
    let signing = key(9);
    let public = *signing.verifying_key();
    let message = b"m";
    let digest: [u8; 32] = Sha256::digest(message).into();
    let z = <Scalar as Reduce<FieldBytes>>::reduce(&digest.into());
    let gx = p256::ProjectivePoint::GENERATOR
        .to_affine()
        .to_sec1_point(false);
    let r = <Scalar as Reduce<FieldBytes>>::reduce(gx.x().unwrap());
    let d: Scalar = *signing.as_nonzero_scalar().as_ref();
    let s = z + r * d;
    let signature = Signature::from_scalars(r.to_bytes(), s.to_bytes()).unwrap();
    assert!(both(&public, message, &signature));
}

/// Montgomery multiplication word by word (CIOS, generic in the modulus' words): the
/// reference for the product-then-reduce code.
fn reference_mul(a: &Fe, b: &Fe) -> Fe {
    let (a, b) = (&a.0, &b.0);
    let mut t = [0u32; 10];
    for &ai in a {
        let ai = u64::from(ai);
        let mut carry = 0u64;
        for j in 0..8 {
            let s = u64::from(t[j]) + ai * u64::from(b[j]) + carry;
            t[j] = s as u32;
            carry = s >> 32;
        }
        let s = u64::from(t[8]) + carry;
        t[8] = s as u32;
        t[9] = (s >> 32) as u32;
        let m = u64::from(t[0]);
        let mut carry = (u64::from(t[0]) + m * u64::from(P[0])) >> 32;
        for j in 1..8 {
            let s = u64::from(t[j]) + m * u64::from(P[j]) + carry;
            t[j - 1] = s as u32;
            carry = s >> 32;
        }
        let s = u64::from(t[8]) + carry;
        t[7] = s as u32;
        t[8] = t[9] + (s >> 32) as u32;
    }
    let low = [t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]];
    let (reduced, borrow) = sub_limbs(&low, &P);
    if t[8] != 0 || borrow == 0 {
        Fe(reduced)
    } else {
        Fe(low)
    }
}

/// A field element from arbitrary bytes (reduced below p by clearing the top bit).
fn fe(mut bytes: [u8; 32]) -> Fe {
    bytes[0] &= 0x7f;
    Fe::from_be_bytes(&bytes).expect("below p")
}

#[test]
fn products_and_squares_of_extreme_elements_match_the_reference() {
    let mut p_minus_1 = [0u8; 32];
    for (i, limb) in P.iter().rev().enumerate() {
        p_minus_1[i * 4..i * 4 + 4].copy_from_slice(&limb.to_be_bytes());
    }
    p_minus_1[31] -= 1;
    let edges = [
        Fe::ZERO,
        ONE,
        Fe(be_limbs(&p_minus_1).unwrap()),
        Fe([
            0xffff_ffff,
            0xffff_ffff,
            0xffff_ffff,
            0,
            0,
            0,
            1,
            0xffff_fffe,
        ]),
        Fe([0, 0, 0, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0, 0]),
        R2,
        GX,
        GY,
    ];
    for a in &edges {
        assert_eq!(a.square(), reference_mul(a, a), "{a:?}");
        for b in &edges {
            assert_eq!(a.mul(b), reference_mul(a, b), "{a:?} {b:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn products_and_squares_match_the_reference(a in any::<[u8; 32]>(), b in any::<[u8; 32]>()) {
        let (a, b) = (fe(a), fe(b));
        prop_assert_eq!(a.mul(&b), reference_mul(&a, &b));
        prop_assert_eq!(a.square(), reference_mul(&a, &a));
    }

    #[test]
    fn random_keys_messages_and_signatures_get_the_same_answer(
        seed in any::<[u8; 32]>(),
        message in proptest::collection::vec(any::<u8>(), 0..200),
        garbage in any::<[u8; 64]>(),
        flip in 0usize..64,
    ) {
        let Ok(signing) = SigningKey::from_slice(&seed) else { return Ok(()) };
        let public = *signing.verifying_key();
        let signature: Signature = signing.sign(&message);
        prop_assert!(both(&public, &message, &signature));
        let mut bytes = signature.to_bytes();
        bytes[flip] ^= 1;
        if let Ok(damaged) = Signature::from_slice(&bytes) {
            prop_assert!(!both(&public, &message, &damaged));
        }
        if let Ok(random) = Signature::from_slice(&garbage) {
            prop_assert!(!both(&public, &message, &random));
        }
    }
}
