//! ES256 (ECDSA P-256, SHA-256) verification fast enough for the edge: the same answers as
//! `p256::ecdsa::VerifyingKey::verify` (tests check them against each other), in under a
//! third of its time in V8 (BENCHMARKS.md, "DPoP proof verification per algorithm").
//!
//! The RustCrypto `p256` crate decodes and checks keys and does the scalar arithmetic
//! modulo the group order `n` here; what it does slowly for a verifier is the double
//! scalar multiplication `u1 G + u2 Q`: generic Montgomery field code and complete
//! (exception-free, constant-time) point formulas, about 0.7 us per point doubling
//! natively. This module does that step with its own field arithmetic (eight 32-bit limbs
//! and 64-bit products: fast in wasm, whose `i64.mul` is one instruction, and fine
//! natively; squares compute each cross product once; the Montgomery reduction uses the
//! shape of p and multiplies nothing), Jacobian coordinates with the `a = -3` doubling (3M + 5S), width-5 wNAF for
//! `u2 Q` (odd multiples of the key, made per verification) and width-7 wNAF for `u1 G`
//! (odd multiples of the generator in affine form, made once per process), and it checks
//! `x(R) mod n == r` without an inversion: `X == r Z^2` or, when `r + n < p`,
//! `X == (r + n) Z^2`. Everything here is variable time: every input of a verification is
//! public.
//!
//! The checks are those of `p256::ecdsa` (0.14, read from `ecdsa::hazmat::verify_prehashed`):
//! `r` and `s` in `1..n` (the caller parses the signature with
//! `p256::ecdsa::Signature::from_slice`), `z` the SHA-256 of the message reduced modulo `n`,
//! no low-`s` rule (P-256 does not normalise `s`), `R` not the point at infinity, and the
//! affine `x` of `R` reduced modulo `n` equal to `r`.

use std::sync::OnceLock;

use p256::elliptic_curve::ops::{Invert as _, Reduce};
use p256::elliptic_curve::sec1::ToSec1Point as _;
use p256::{FieldBytes, Scalar};
use sha2::{Digest, Sha256};

/// A field element modulo p, in Montgomery form (`a R mod p`, `R = 2^256`), eight 32-bit
/// limbs, least significant first, always fully reduced (`< p`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Fe([u32; 8]);

/// p = 2^256 - 2^224 + 2^192 + 2^96 - 1.
const P: [u32; 8] = [
    0xffff_ffff,
    0xffff_ffff,
    0xffff_ffff,
    0,
    0,
    0,
    1,
    0xffff_ffff,
];
/// The group order n.
const N: [u32; 8] = [
    0xfc63_2551,
    0xf3b9_cac2,
    0xa717_9e84,
    0xbce6_faad,
    0xffff_ffff,
    0xffff_ffff,
    0,
    0xffff_ffff,
];
/// R^2 mod p, to enter Montgomery form.
const R2: Fe = Fe([
    0x0000_0003,
    0,
    0xffff_ffff,
    0xffff_fffb,
    0xffff_fffe,
    0xffff_ffff,
    0xffff_fffd,
    0x0000_0004,
]);
/// 1 in Montgomery form (R mod p).
const ONE: Fe = Fe([
    1,
    0,
    0,
    0xffff_ffff,
    0xffff_ffff,
    0xffff_ffff,
    0xffff_fffe,
    0,
]);
/// The generator, in Montgomery form.
const GX: Fe = Fe([
    0x18a9_143c,
    0x79e7_30d4,
    0x5fed_b601,
    0x75ba_95fc,
    0x7762_2510,
    0x79fb_732b,
    0xa537_55c6,
    0x1890_5f76,
]);
const GY: Fe = Fe([
    0xce95_560a,
    0xddf2_5357,
    0xba19_e45c,
    0x8b4a_b8e4,
    0xdd21_f325,
    0xd2e8_8688,
    0x2588_5d85,
    0x8571_ff18,
]);

/// `a - b` on 256-bit little-endian limbs; the borrow out (1 when `a < b`).
fn sub_limbs(a: &[u32; 8], b: &[u32; 8]) -> ([u32; 8], u32) {
    let mut out = [0; 8];
    let mut borrow = 0u64;
    for i in 0..8 {
        let d = u64::from(a[i])
            .wrapping_sub(u64::from(b[i]))
            .wrapping_sub(borrow);
        out[i] = d as u32;
        borrow = (d >> 63) & 1;
    }
    (out, borrow as u32)
}

/// `a + b` on 256-bit limbs; the carry out.
fn add_limbs(a: &[u32; 8], b: &[u32; 8]) -> ([u32; 8], u32) {
    let mut out = [0; 8];
    let mut carry = 0u64;
    for i in 0..8 {
        let s = u64::from(a[i]) + u64::from(b[i]) + carry;
        out[i] = s as u32;
        carry = s >> 32;
    }
    (out, carry as u32)
}

/// True when `a < b` as 256-bit integers.
fn less_than(a: &[u32; 8], b: &[u32; 8]) -> bool {
    sub_limbs(a, b).1 == 1
}

impl Fe {
    const ZERO: Fe = Fe([0; 8]);

    /// From 32 big-endian bytes; None unless `< p`.
    fn from_be_bytes(bytes: &[u8]) -> Option<Fe> {
        let limbs = be_limbs(bytes)?;
        less_than(&limbs, &P).then(|| Fe(limbs).mul(&R2))
    }

    fn is_zero(&self) -> bool {
        self.0 == [0; 8]
    }

    fn add(&self, b: &Fe) -> Fe {
        let (sum, carry) = add_limbs(&self.0, &b.0);
        let (reduced, borrow) = sub_limbs(&sum, &P);
        // sum < 2p: subtract p when sum >= p (a carry out, or no borrow).
        if carry == 1 || borrow == 0 {
            Fe(reduced)
        } else {
            Fe(sum)
        }
    }

    fn sub(&self, b: &Fe) -> Fe {
        let (diff, borrow) = sub_limbs(&self.0, &b.0);
        if borrow == 1 {
            Fe(add_limbs(&diff, &P).0)
        } else {
            Fe(diff)
        }
    }

    fn double(&self) -> Fe {
        self.add(self)
    }

    fn neg(&self) -> Fe {
        Fe::ZERO.sub(self)
    }

    /// Montgomery multiplication, `a b / R mod p`: the 512-bit product, then [`reduce`].
    fn mul(&self, b: &Fe) -> Fe {
        let (a, b) = (&self.0, &b.0);
        let mut t = [0u32; 16];
        for i in 0..8 {
            let ai = u64::from(a[i]);
            let mut carry = 0u64;
            for j in 0..8 {
                let s = u64::from(t[i + j]) + ai * u64::from(b[j]) + carry;
                t[i + j] = s as u32;
                carry = s >> 32;
            }
            t[i + 8] = carry as u32;
        }
        reduce(&t)
    }

    /// `a^2 / R mod p`: each cross product once, doubled, then the squares (36 word
    /// products instead of 64).
    fn square(&self) -> Fe {
        let a = &self.0;
        let mut t = [0u32; 16];
        for i in 0..8 {
            let ai = u64::from(a[i]);
            let mut carry = 0u64;
            for j in (i + 1)..8 {
                let s = u64::from(t[i + j]) + ai * u64::from(a[j]) + carry;
                t[i + j] = s as u32;
                carry = s >> 32;
            }
            t[i + 8] = carry as u32;
        }
        // Double the cross products and add the squares.
        let mut carry = 0u64;
        let mut top_bit = 0u32;
        for k in 0..16 {
            let doubled = (u64::from(t[k]) << 1) | u64::from(top_bit);
            top_bit = t[k] >> 31;
            let square = if k % 2 == 0 {
                u64::from(a[k / 2]) * u64::from(a[k / 2])
            } else {
                0
            };
            // Square words: the low half at k, the high half at k + 1.
            let s = (doubled & 0xffff_ffff) + (square & 0xffff_ffff) + carry;
            t[k] = s as u32;
            carry = (s >> 32) + (square >> 32);
        }
        reduce(&t)
    }

    /// `self^(p-2)`, the inverse of a non-zero element (used only to build the generator's
    /// table).
    fn invert(&self) -> Fe {
        // p - 2, most significant bit first.
        let (e, _) = sub_limbs(&P, &[2, 0, 0, 0, 0, 0, 0, 0]);
        let mut acc = ONE;
        for i in (0..256).rev() {
            acc = acc.square();
            if (e[i / 32] >> (i % 32)) & 1 == 1 {
                acc = acc.mul(self);
            }
        }
        acc
    }
}

/// Montgomery reduction of a 512-bit `t` (below `p R`): `t / R mod p`. With
/// `-p^-1 = 1 mod 2^32` each round's multiplier is the low word `m`, and
/// `m p = m 2^256 - m 2^224 + m 2^192 + m 2^96 - m`, so adding `m p` needs no
/// multiplication: `m` goes in at words 3, 6 and 8 above the round's and out at word 7,
/// and the round's word becomes zero. Words are kept as i64, their carries pushed up one
/// word a round.
fn reduce(t: &[u32; 16]) -> Fe {
    let mut w = [0i64; 17];
    for (wi, &ti) in w.iter_mut().zip(t) {
        *wi = i64::from(ti);
    }
    for i in 0..8 {
        let m = w[i] & 0xffff_ffff;
        // w[i] - m is a multiple of 2^32: its carry moves up, the word is now zero.
        w[i + 1] += (w[i] - m) >> 32;
        w[i + 3] += m;
        w[i + 6] += m;
        w[i + 7] -= m;
        w[i + 8] += m;
    }
    let mut out = [0u32; 8];
    let mut carry = 0i64;
    for k in 0..8 {
        let v = w[k + 8] + carry;
        out[k] = (v & 0xffff_ffff) as u32;
        carry = v >> 32;
    }
    carry += w[16];
    // The value is below 2p: subtract p once when it is p or more.
    let (reduced, borrow) = sub_limbs(&out, &P);
    if carry > 0 || borrow == 0 {
        Fe(reduced)
    } else {
        Fe(out)
    }
}

/// 32 big-endian bytes as little-endian limbs.
fn be_limbs(bytes: &[u8]) -> Option<[u32; 8]> {
    let bytes: &[u8; 32] = bytes.try_into().ok()?;
    let mut limbs = [0u32; 8];
    for (i, chunk) in bytes.rchunks_exact(4).enumerate() {
        limbs[i] = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    Some(limbs)
}

/// A point in Jacobian coordinates (`x = X/Z^2`, `y = Y/Z^3`); `Z = 0` is infinity.
#[derive(Clone, Copy, Debug)]
struct Jacobian {
    x: Fe,
    y: Fe,
    z: Fe,
}

/// An affine point (never infinity).
#[derive(Clone, Copy, Debug)]
struct Affine {
    x: Fe,
    y: Fe,
}

impl Jacobian {
    const INFINITY: Jacobian = Jacobian {
        x: ONE,
        y: ONE,
        z: Fe::ZERO,
    };

    fn from_affine(p: &Affine) -> Jacobian {
        Jacobian {
            x: p.x,
            y: p.y,
            z: ONE,
        }
    }

    fn is_infinity(&self) -> bool {
        self.z.is_zero()
    }

    /// `2 P` (dbl-2001-b, `a = -3`); infinity stays infinity (its Z stays 0).
    fn double(&self) -> Jacobian {
        let delta = self.z.square();
        let gamma = self.y.square();
        let beta = self.x.mul(&gamma);
        let t = self.x.sub(&delta).mul(&self.x.add(&delta));
        let alpha = t.double().add(&t);
        let beta4 = beta.double().double();
        let x3 = alpha.square().sub(&beta4.double());
        let z3 = self.y.add(&self.z).square().sub(&gamma).sub(&delta);
        let gamma2_8 = gamma.square().double().double().double();
        let y3 = alpha.mul(&beta4.sub(&x3)).sub(&gamma2_8);
        Jacobian {
            x: x3,
            y: y3,
            z: z3,
        }
    }

    /// `P + Q` for an affine `Q` (madd-2007-bl), handling infinity, `P = Q` and `P = -Q`.
    fn add_affine(&self, q: &Affine) -> Jacobian {
        if self.is_infinity() {
            return Jacobian::from_affine(q);
        }
        let z1z1 = self.z.square();
        let u2 = q.x.mul(&z1z1);
        let s2 = q.y.mul(&self.z).mul(&z1z1);
        let h = u2.sub(&self.x);
        let r = s2.sub(&self.y).double();
        if h.is_zero() {
            return if r.is_zero() {
                self.double()
            } else {
                Jacobian::INFINITY
            };
        }
        let hh = h.square();
        let i = hh.double().double();
        let j = h.mul(&i);
        let v = self.x.mul(&i);
        let x3 = r.square().sub(&j).sub(&v.double());
        let y3 = r.mul(&v.sub(&x3)).sub(&self.y.mul(&j).double());
        let z3 = self.z.add(&h).square().sub(&z1z1).sub(&hh);
        Jacobian {
            x: x3,
            y: y3,
            z: z3,
        }
    }

    /// `P + Q` (add-2007-bl), handling infinity, `P = Q` and `P = -Q`.
    fn add(&self, q: &Jacobian) -> Jacobian {
        if self.is_infinity() {
            return *q;
        }
        if q.is_infinity() {
            return *self;
        }
        let z1z1 = self.z.square();
        let z2z2 = q.z.square();
        let u1 = self.x.mul(&z2z2);
        let u2 = q.x.mul(&z1z1);
        let s1 = self.y.mul(&q.z).mul(&z2z2);
        let s2 = q.y.mul(&self.z).mul(&z1z1);
        let h = u2.sub(&u1);
        let r = s2.sub(&s1).double();
        if h.is_zero() {
            return if r.is_zero() {
                self.double()
            } else {
                Jacobian::INFINITY
            };
        }
        let i = h.double().square();
        let j = h.mul(&i);
        let v = u1.mul(&i);
        let x3 = r.square().sub(&j).sub(&v.double());
        let y3 = r.mul(&v.sub(&x3)).sub(&s1.mul(&j).double());
        let z3 = self.z.add(&q.z).square().sub(&z1z1).sub(&z2z2).mul(&h);
        Jacobian {
            x: x3,
            y: y3,
            z: z3,
        }
    }

    fn neg(&self) -> Jacobian {
        Jacobian {
            y: self.y.neg(),
            ..*self
        }
    }

    fn to_affine(self) -> Affine {
        let zi = self.z.invert();
        let zi2 = zi.square();
        Affine {
            x: self.x.mul(&zi2),
            y: self.y.mul(&zi2).mul(&zi),
        }
    }
}

/// Width of the generator's wNAF: 32 odd multiples.
const G_WINDOW: u32 = 7;
/// Width of the key's wNAF: 8 odd multiples.
const Q_WINDOW: u32 = 5;

/// `G, 3G, 5G, ..., 63G`, affine (built once, about 40 inversions' worth of work).
fn generator_table() -> &'static [Affine] {
    static TABLE: OnceLock<Vec<Affine>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let g = Jacobian::from_affine(&Affine { x: GX, y: GY });
        odd_multiples(&g, G_WINDOW)
            .into_iter()
            .map(Jacobian::to_affine)
            .collect()
    })
}

/// `P, 3P, 5P, ..., (2^(w-1) - 1) P`.
fn odd_multiples(p: &Jacobian, window: u32) -> Vec<Jacobian> {
    let twice = p.double();
    let mut table = Vec::with_capacity(1 << (window - 2));
    table.push(*p);
    for i in 1..(1usize << (window - 2)) {
        table.push(table[i - 1].add(&twice));
    }
    table
}

/// The width-`w` NAF of a 256-bit scalar (little-endian limbs): digits odd and below
/// `2^(w-1)` in magnitude, or zero, least significant first; 257 of them at most.
fn wnaf(scalar: &[u32; 8], window: u32) -> [i8; 257] {
    let mut digits = [0i8; 257];
    // The scalar, with a word for the carry that a negative digit adds.
    let mut k = [0u32; 9];
    k[..8].copy_from_slice(scalar);
    let width = 1u32 << window;
    for digit in digits.iter_mut() {
        if k == [0; 9] {
            break;
        }
        if k[0] & 1 == 1 {
            let low = k[0] & (width - 1);
            let d = if low >= width / 2 {
                low as i32 - width as i32
            } else {
                low as i32
            };
            *digit = d as i8;
            // k -= d: the low bits become zero, so nothing but a carry or borrow moves.
            let mut carry = d.unsigned_abs();
            for word in k.iter_mut() {
                if carry == 0 {
                    break;
                }
                let (next, overflow) = if d > 0 {
                    word.overflowing_sub(carry)
                } else {
                    word.overflowing_add(carry)
                };
                *word = next;
                carry = u32::from(overflow);
            }
        }
        // k >>= 1.
        for w in 0..9 {
            let high = if w < 8 { k[w + 1] << 31 } else { 0 };
            k[w] = (k[w] >> 1) | high;
        }
    }
    digits
}

/// `u1 G + u2 Q` for the public key `q` (affine).
fn double_mul(u1: &[u32; 8], u2: &[u32; 8], q: &Affine) -> Jacobian {
    let g_table = generator_table();
    let q_table = odd_multiples(&Jacobian::from_affine(q), Q_WINDOW);
    let d1 = wnaf(u1, G_WINDOW);
    let d2 = wnaf(u2, Q_WINDOW);
    let top = (0..257)
        .rev()
        .find(|&i| d1[i] != 0 || d2[i] != 0)
        .unwrap_or(0);
    let mut acc = Jacobian::INFINITY;
    for i in (0..=top).rev() {
        acc = acc.double();
        let (a, b) = (d1[i], d2[i]);
        if a != 0 {
            let entry = g_table[usize::from(a.unsigned_abs() / 2)];
            acc = if a > 0 {
                acc.add_affine(&entry)
            } else {
                acc.add_affine(&Affine {
                    x: entry.x,
                    y: entry.y.neg(),
                })
            };
        }
        if b != 0 {
            let entry = q_table[usize::from(b.unsigned_abs() / 2)];
            acc = if b > 0 {
                acc.add(&entry)
            } else {
                acc.add(&entry.neg())
            };
        }
    }
    acc
}

/// A scalar as little-endian limbs.
fn scalar_limbs(s: &Scalar) -> [u32; 8] {
    be_limbs(&s.to_bytes()).unwrap_or_default()
}

/// Verifies an ES256 signature (`r` and `s` already checked to be in `1..n` by
/// `p256::ecdsa::Signature::from_slice`) over `message` with `key`.
pub(crate) fn verify(
    key: &p256::ecdsa::VerifyingKey,
    message: &[u8],
    signature: &p256::ecdsa::Signature,
) -> bool {
    let (r, s) = signature.split_scalars();
    let digest: [u8; 32] = Sha256::digest(message).into();
    let z = <Scalar as Reduce<FieldBytes>>::reduce(&digest.into());
    let w = s.invert_vartime();
    let u1 = z * *w;
    let u2 = *r * *w;
    let point = key.as_affine().to_sec1_point(false);
    let (Some(x), Some(y)) = (point.x(), point.y()) else {
        return false;
    };
    let (Some(x), Some(y)) = (Fe::from_be_bytes(x), Fe::from_be_bytes(y)) else {
        return false;
    };
    let sum = double_mul(&scalar_limbs(&u1), &scalar_limbs(&u2), &Affine { x, y });
    if sum.is_infinity() {
        return false;
    }
    // x(R) = X / Z^2 in 0..p; it must be r or, when r + n < p, r + n.
    let z2 = sum.z.square();
    let r_limbs = scalar_limbs(&r);
    let Some(r_fe) = Fe::from_be_bytes(&r.to_bytes()) else {
        return false;
    };
    if r_fe.mul(&z2) == sum.x {
        return true;
    }
    let (r_plus_n, carry) = add_limbs(&r_limbs, &N);
    carry == 0 && less_than(&r_plus_n, &P) && Fe(r_plus_n).mul(&R2).mul(&z2) == sum.x
}

#[cfg(test)]
mod tests;
