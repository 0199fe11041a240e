//! Ed25519 verification with a table of multiples of a trusted key, built once when a
//! keyring takes the key: accepts and refuses exactly what
//! `ed25519_dalek::VerifyingKey::verify_strict` does, in about half its time in wasm.
//!
//! `verify_strict` computes R' = [s]B - [k]A with a variable-base double scalar
//! multiplication: 253 doublings whatever the key. With A fixed per key, both halves can
//! be fixed-base: [k](-A) and [s]B are each sums of 64 table entries (signed radix-16
//! digits, the odd-position digits first, then four doublings, then the even ones), with
//! no doubling per bit. The lookups index the table directly (variable time, as
//! `verify_strict` is: every input is public). The tables hold extended points, so this
//! needs nothing but curve25519-dalek's public API.
//!
//! The checks are those of ed25519-dalek 3.0's `verify_strict`, in its order: `s` must be
//! canonical (`s < l`), `R` must decode, neither `R` nor `A` may have small order, and the
//! encoding of R' must equal the 32 bytes of `R`. The last is done without encoding R':
//! R' equals the decoded `R` as a point and `R`'s `y` is canonical (`y < p`). That is the
//! same test, because `R` (not of small order, so `x != 0`) re-encodes to its own bytes
//! exactly when its `y` is canonical, and encoding is injective on points.

use std::sync::{Arc, OnceLock};

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use sha2::{Digest, Sha512};

/// `j * 16^(2i) * P` for `i` in `0..32` and `j` in `1..=8`: 256 extended points, 40 KiB.
struct Multiples(Box<[[EdwardsPoint; 8]; 32]>);

impl Multiples {
    fn new(point: &EdwardsPoint) -> Multiples {
        let mut rows = Box::new([[EdwardsPoint::default(); 8]; 32]);
        let mut base = *point;
        for row in rows.iter_mut() {
            let mut acc = base;
            for entry in row.iter_mut() {
                *entry = acc;
                acc += base;
            }
            // base * 2^8 (curve25519-dalek exposes doubling only as the cofactor's 2^3).
            base = base.mul_by_cofactor().mul_by_cofactor();
            base += base;
            base += base;
        }
        Multiples(rows)
    }

    /// Adds `digit * 16^(2i) * P` to `acc` (`-8 <= digit <= 8`).
    fn add(&self, acc: &mut EdwardsPoint, i: usize, digit: i8) {
        let row = &self.0[i];
        match digit {
            1..=8 => *acc += row[digit as usize - 1],
            -8..=-1 => *acc -= row[digit.unsigned_abs() as usize - 1],
            _ => {}
        }
    }
}

/// The digits of `s` in signed radix 16: `s = sum d[i] 16^i`, `-8 <= d[i] < 8` for
/// `i < 63` and `-8 <= d[63] <= 8`. `s` must be reduced (below 2^253), as every
/// `Scalar` made by `from_canonical_bytes` or `from_bytes_mod_order_wide` is.
fn radix16(s: &Scalar) -> [i8; 64] {
    let bytes = s.as_bytes();
    let mut d = [0i8; 64];
    for (i, b) in bytes.iter().enumerate() {
        d[2 * i] = (b & 15) as i8;
        d[2 * i + 1] = (b >> 4) as i8;
    }
    let mut carry = 0i8;
    for x in d.iter_mut().take(63) {
        *x += carry;
        carry = (*x + 8) >> 4;
        *x -= carry << 4;
    }
    d[63] += carry;
    d
}

/// [a]P + [b]Q from the multiples of P and Q.
fn double_fixed_base(a: &Scalar, p: &Multiples, b: &Scalar, q: &Multiples) -> EdwardsPoint {
    let (da, db) = (radix16(a), radix16(b));
    let mut acc = EdwardsPoint::default();
    for i in 0..32 {
        p.add(&mut acc, i, da[2 * i + 1]);
        q.add(&mut acc, i, db[2 * i + 1]);
    }
    // * 16
    acc = acc.mul_by_cofactor();
    acc += acc;
    for i in 0..32 {
        p.add(&mut acc, i, da[2 * i]);
        q.add(&mut acc, i, db[2 * i]);
    }
    acc
}

/// The basepoint's multiples: built once per process (per wasm VM), by the first key table.
fn basepoint() -> &'static Multiples {
    static B: OnceLock<Multiples> = OnceLock::new();
    B.get_or_init(|| Multiples::new(&ED25519_BASEPOINT_POINT))
}

/// A trusted Ed25519 key with its table: 40 KiB (256 extended points of -A), plus the
/// basepoint's table once per process.
pub(crate) struct KeyTable {
    key: ed25519_dalek::VerifyingKey,
    minus_a: Multiples,
    small_order: bool,
}

impl KeyTable {
    /// Builds the table of `key` (about as costly as two verifications) and, the first time,
    /// the basepoint's, so that no request pays for either.
    pub(crate) fn new(key: &ed25519_dalek::VerifyingKey) -> Arc<KeyTable> {
        basepoint();
        let a = key.to_edwards();
        Arc::new(KeyTable {
            key: *key,
            minus_a: Multiples::new(&-a),
            small_order: a.is_small_order(),
        })
    }

    /// True when `signature` is valid for `message` under this key by the rules of
    /// ed25519-dalek's `verify_strict` (see the module doc).
    pub(crate) fn verify_strict(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = <&[u8; 64]>::try_from(signature) else {
            return false;
        };
        let (r_bytes, s_bytes) = signature.split_at(32);
        let (Ok(r_bytes), Ok(s_bytes)) =
            (<[u8; 32]>::try_from(r_bytes), <[u8; 32]>::try_from(s_bytes))
        else {
            return false;
        };
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) else {
            return false;
        };
        let Some(r) = CompressedEdwardsY(r_bytes).decompress() else {
            return false;
        };
        if r.is_small_order() || self.small_order {
            return false;
        }
        let mut h = Sha512::new();
        h.update(r_bytes);
        h.update(self.key.as_bytes());
        h.update(message);
        let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        let expected = double_fixed_base(&k, &self.minus_a, &s, basepoint());
        canonical_y(&r_bytes) && expected == r
    }
}

/// True when the `y` of an encoded point (bit 255, the sign of `x`, aside) is below
/// p = 2^255 - 19, i.e. unless bits 8..255 are all ones and the low byte is 0xed or more.
fn canonical_y(encoding: &[u8; 32]) -> bool {
    !(encoding[31] & 0x7f == 0x7f
        && encoding[1..31].iter().all(|&b| b == 0xff)
        && encoding[0] >= 0xed)
}

#[cfg(test)]
mod tests;
