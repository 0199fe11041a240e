//! Ed25519 verification with a table of multiples of a trusted key, built once when a
//! keyring takes the key: accepts and refuses exactly what
//! `ed25519_dalek::VerifyingKey::verify_strict` does, in under half its time in wasm.
//!
//! `verify_strict` computes R' = [s]B - [k]A with a variable-base double scalar
//! multiplication: 253 doublings whatever the key. With A fixed per key, both halves can
//! be fixed-base: [k](-A) and [s]B are each sums of 43 table entries (signed radix-64
//! digits, the odd-position digits first, then six doublings, then the even ones), with
//! no doubling per bit. Radix 64 costs 110 KiB a key against 40 KiB for radix 16, for 86
//! additions a verification instead of 128 (a request verified in V8: 49 -> 38 us). The lookups index the table directly (variable time, as
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

/// Bits per signed digit of the scalars.
const WINDOW: u32 = 6;
/// Largest digit magnitude, and the multiples per table row.
const HALF: usize = 1 << (WINDOW - 1);
/// Digits of a reduced scalar (below 2^253, plus a carry out of the top digit).
const DIGITS: usize = 254usize.div_ceil(WINDOW as usize);
/// Multiples per table row: digits are in `-HALF..=HALF`.
const PER_ROW: usize = HALF;
/// Table rows: one per pair of digit positions (odd and even positions share a row).
const ROWS: usize = DIGITS.div_ceil(2);

/// `j * 64^(2i) * P` for `i` in `0..22` and `j` in `1..=32`: 704 extended points, 110 KiB.
struct Multiples(Box<[[EdwardsPoint; PER_ROW]; ROWS]>);

impl Multiples {
    fn new(point: &EdwardsPoint) -> Multiples {
        let mut rows = Box::new([[EdwardsPoint::default(); PER_ROW]; ROWS]);
        let mut base = *point;
        for row in rows.iter_mut() {
            let mut acc = base;
            for entry in row.iter_mut() {
                *entry = acc;
                acc += base;
            }
            // Two digit positions further.
            base = shifted(&shifted(&base));
        }
        Multiples(rows)
    }

    /// Adds `digit * 2^(2 WINDOW i) * P` to `acc` (`-HALF <= digit <= HALF`).
    fn add(&self, acc: &mut EdwardsPoint, i: usize, digit: i8) {
        let Some(row) = self.0.get(i) else {
            return;
        };
        let Some(entry) = row.get((digit.unsigned_abs() as usize).wrapping_sub(1)) else {
            return; // digit 0
        };
        if digit > 0 {
            *acc += entry;
        } else {
            *acc -= entry;
        }
    }
}

/// `2^WINDOW * p`: three doublings (curve25519-dalek exposes doubling only as the
/// cofactor's 2^3) and the rest as additions of a point to itself.
fn shifted(p: &EdwardsPoint) -> EdwardsPoint {
    let mut x = p.mul_by_cofactor();
    for _ in 3..WINDOW {
        x += x;
    }
    x
}

/// The digits of `s` in signed radix 2^WINDOW: `s = sum d[i] 2^(WINDOW i)`, each digit in
/// `-HALF..HALF` but the last, in `-HALF..=HALF`. `s` must be reduced (below 2^253), as
/// every `Scalar` made by `from_canonical_bytes` or `from_bytes_mod_order_wide` is.
fn signed_digits(s: &Scalar) -> [i8; DIGITS] {
    let bytes = s.as_bytes();
    let mask = (1u16 << WINDOW) - 1;
    let mut d = [0i8; DIGITS];
    for (i, x) in d.iter_mut().enumerate() {
        let start = i * WINDOW as usize;
        let (at, shift) = (start / 8, start % 8);
        let pair = u16::from_le_bytes([
            bytes.get(at).copied().unwrap_or(0),
            bytes.get(at + 1).copied().unwrap_or(0),
        ]);
        *x = ((pair >> shift) & mask) as i8;
    }
    let half = HALF as i8;
    let mut carry = 0i8;
    for x in d.iter_mut().take(DIGITS - 1) {
        *x += carry;
        carry = (*x + half) >> WINDOW;
        *x -= carry << WINDOW;
    }
    d[DIGITS - 1] += carry;
    d
}

/// [a]P + [b]Q from the multiples of P and Q.
fn double_fixed_base(a: &Scalar, p: &Multiples, b: &Scalar, q: &Multiples) -> EdwardsPoint {
    let (da, db) = (signed_digits(a), signed_digits(b));
    let mut acc = EdwardsPoint::default();
    for i in 0..ROWS {
        if let (Some(&x), Some(&y)) = (da.get(2 * i + 1), db.get(2 * i + 1)) {
            p.add(&mut acc, i, x);
            q.add(&mut acc, i, y);
        }
    }
    acc = shifted(&acc);
    for i in 0..ROWS {
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

/// A trusted Ed25519 key with its table: 110 KiB (704 extended points of -A), plus the
/// basepoint's table once per process.
pub(crate) struct KeyTable {
    key: ed25519_dalek::VerifyingKey,
    minus_a: Multiples,
    small_order: bool,
}

impl KeyTable {
    /// Builds the table of `key` (about as costly as nine verifications) and, the first time,
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
