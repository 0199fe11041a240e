//! The bit-level pieces of the edge update format (version 2): LEB128 varints, an LSB-first
//! bit stream, Rice codes for the key gaps and the 13-bit expiry code.
//!
//! Every reader here refuses what a writer here would not have produced (non-minimal
//! varints, quotients that overflow, non-zero padding), so one update has one encoding.

use super::EdgeSetError;

/// Bits of one expiry code: 5 of exponent, 8 of mantissa.
pub(super) const EXPIRY_BITS: u32 = 13;
const MANTISSA_BITS: u32 = 8;

/// Seconds after the update's time that expiry `code` stands for. Like a float with
/// subnormals: codes 0..512 are exact seconds, then each doubling of the time has 256
/// codes, so the step is at most 1/256 of the time; the largest code is past 2^32 s.
pub(super) fn expiry_seconds(code: u16) -> u64 {
    float_seconds(code, MANTISSA_BITS)
}

/// The smallest code whose time is at or after `seconds` (rounding up, never down);
/// `seconds` must be below 2^32 (an expiry is a u32 time).
pub(super) fn expiry_code(seconds: u64) -> u16 {
    float_code(seconds, MANTISSA_BITS)
}

/// [`expiry_seconds`] with `mantissa` bits of mantissa (the rest of the code is the
/// exponent): codes below 2^(mantissa + 1) are exact seconds, then the step is at most
/// 1/2^mantissa of the time.
pub(super) fn float_seconds(code: u16, mantissa: u32) -> u64 {
    let exponent = u32::from(code) >> mantissa;
    let low = u64::from(code) & ((1 << mantissa) - 1);
    if exponent == 0 {
        low
    } else {
        ((1 << mantissa) + low) << (exponent - 1)
    }
}

/// [`expiry_code`] with `mantissa` bits of mantissa; `seconds` below 2^32 and a
/// mantissa of 8 to 11 bits keep the code within 16 bits.
pub(super) fn float_code(seconds: u64, mantissa: u32) -> u16 {
    let one = 1u64 << mantissa;
    if seconds < one {
        return seconds as u16;
    }
    // one <= seconds < 2^32: the top mantissa + 1 bits, rounded up, are one + low bits.
    let mut shift = 63 - seconds.leading_zeros() - mantissa;
    let mut top = seconds.div_ceil(1 << shift);
    if top == 2 * one {
        top = one;
        shift += 1;
    }
    (((u64::from(shift) + 1) << mantissa) | (top - one)) as u16
}

/// The Rice parameter for `count` uniformly spread 64-bit keys: the mean gap is
/// 2^64 / count, and 63 - floor(log2 count) keeps the unary part of all gaps together
/// under 2 * count bits whatever the keys (their sum is below 2^64).
pub(super) fn rice_k(count: u64) -> u32 {
    63 - count.max(1).ilog2()
}

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(super) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(super) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Reads the byte-aligned part of a payload.
pub(super) struct Reader<'a> {
    pub(super) bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn take<const N: usize>(&mut self) -> Result<[u8; N], EdgeSetError> {
        let (head, rest) = self
            .bytes
            .split_first_chunk::<N>()
            .ok_or(EdgeSetError::Malformed("truncated"))?;
        self.bytes = rest;
        Ok(*head)
    }

    pub(super) fn varint(&mut self) -> Result<u64, EdgeSetError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let [byte] = self.take::<1>()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(EdgeSetError::Malformed("varint overflows 64 bits"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                if byte == 0 && shift > 0 {
                    return Err(EdgeSetError::Malformed("non-minimal varint"));
                }
                return Ok(value);
            }
        }
        Err(EdgeSetError::Malformed("varint too long"))
    }

    /// The rest of the payload, as a bit stream.
    pub(super) fn into_bits(self) -> BitReader<'a> {
        BitReader {
            bytes: self.bytes,
            pos: 0,
            acc: 0,
            n: 0,
        }
    }
}

/// Writes bits least significant first into bytes, each byte filled from its low bit.
pub(super) struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    pub(super) fn new(out: Vec<u8>) -> BitWriter {
        BitWriter { out, acc: 0, n: 0 }
    }

    /// The low `bits` bits of `value` (`bits` <= 64; higher bits of `value` are ignored).
    pub(super) fn put(&mut self, value: u64, bits: u32) {
        if bits > 32 {
            self.put(value & 0xffff_ffff, 32);
            self.put(value >> 32, bits - 32);
            return;
        }
        let value = value & ((1u64 << bits) - 1);
        // n < 8 on entry, so n + bits <= 40 fits.
        self.acc |= value << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// `q` zero bits, then a one.
    pub(super) fn put_unary(&mut self, mut q: u64) {
        while q >= 32 {
            self.put(0, 32);
            q -= 32;
        }
        self.put(1 << q, q as u32 + 1);
    }

    /// The bytes, the last one padded with zero bits.
    pub(super) fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// Reads what [`BitWriter`] wrote. Invariant: `acc` holds `n` unread bits and no others.
pub(super) struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    acc: u64,
    n: u32,
}

const TRUNCATED: EdgeSetError = EdgeSetError::Malformed("truncated");

impl BitReader<'_> {
    /// Bits not read yet.
    pub(super) fn remaining_bits(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64 * 8 + u64::from(self.n)
    }

    /// Tops `acc` up to at least 57 bits, or to the end of the input.
    fn refill(&mut self) {
        if let Some(word) = self
            .bytes
            .get(self.pos..)
            .and_then(|rest| rest.first_chunk::<8>())
        {
            // Whole bytes that fit above the n bits held.
            let take = (64 - self.n) / 8;
            let word = u64::from_le_bytes(*word);
            let bits = self.n + take * 8;
            let fresh = if bits >= 64 {
                word << self.n
            } else {
                (word << self.n) & ((1u64 << bits) - 1)
            };
            self.acc |= fresh;
            self.pos += take as usize;
            self.n = bits;
            return;
        }
        while self.n <= 56 {
            let Some(&byte) = self.bytes.get(self.pos) else {
                return;
            };
            self.acc |= u64::from(byte) << self.n;
            self.pos += 1;
            self.n += 8;
        }
    }

    /// `bits` bits (<= 64).
    pub(super) fn get(&mut self, bits: u32) -> Result<u64, EdgeSetError> {
        if bits > 32 {
            let low = self.get(32)?;
            let high = self.get(bits - 32)?;
            return Ok(low | (high << 32));
        }
        if self.n < bits {
            self.refill();
            if self.n < bits {
                return Err(TRUNCATED);
            }
        }
        let value = self.acc & ((1u64 << bits) - 1);
        self.acc = self.acc.checked_shr(bits).unwrap_or(0);
        self.n -= bits;
        Ok(value)
    }

    /// The count of zero bits before the next one bit (which is consumed), at most `max`.
    pub(super) fn unary(&mut self, max: u64) -> Result<u64, EdgeSetError> {
        let mut q = 0u64;
        loop {
            if self.n == 0 {
                self.refill();
                if self.n == 0 {
                    return Err(TRUNCATED);
                }
            }
            // acc has no bits above n: all zero means n zeros.
            let zeros = self.acc.trailing_zeros().min(self.n);
            q += u64::from(zeros);
            if q > max {
                return Err(EdgeSetError::Malformed("key gap out of range"));
            }
            if zeros < self.n {
                self.acc = (self.acc >> zeros) >> 1;
                self.n -= zeros + 1;
                return Ok(q);
            }
            self.acc = 0;
            self.n = 0;
        }
    }

    /// Succeeds when only the zero padding of the last byte is left.
    pub(super) fn finish(mut self) -> Result<(), EdgeSetError> {
        self.refill();
        if self.pos != self.bytes.len() || self.n >= 8 {
            return Err(EdgeSetError::Malformed("trailing bytes"));
        }
        if self.acc != 0 {
            return Err(EdgeSetError::Malformed("non-zero padding"));
        }
        Ok(())
    }
}

#[cfg(test)]
#[expect(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    reason = "a test fails on an unexpected input"
)]
mod tests {
    use super::*;

    /// Times to encode: every second up to 10,000, each power of two and its neighbours,
    /// a few round figures, and 100,000 pseudo-random u32 values.
    fn seconds_to_try() -> Vec<u64> {
        let mut seconds: Vec<u64> = (0..10_000).collect();
        seconds.extend((0..32).flat_map(|s| {
            let p = 1u64 << s;
            [p - 1, p, p + 1]
        }));
        seconds.extend([3_599, 3_600, 86_400, 31_536_000, u64::from(u32::MAX)]);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            seconds.push(x >> 32);
        }
        seconds
    }

    #[test]
    fn eleven_bit_mantissa_codes_round_up_by_under_a_2048th_and_fit_16_bits() {
        for s in seconds_to_try() {
            let code = float_code(s, 11);
            let back = float_seconds(code, 11);
            assert!(back >= s && back - s <= s / 2048, "{s} -> {back}");
            if code > 0 {
                assert!(float_seconds(code - 1, 11) < s, "{s}: not the smallest");
            }
        }
        assert!(float_code(u64::from(u32::MAX), 11) < u16::MAX);
    }

    #[test]
    fn expiry_codes_round_up_by_at_most_one_step_and_are_the_smallest() {
        for s in seconds_to_try() {
            let code = expiry_code(s);
            assert!(u32::from(code) < 1 << EXPIRY_BITS);
            let back = expiry_seconds(code);
            assert!(back >= s, "{s} -> {back}: rounded down");
            // Exact up to 511 s, then late by less than 1/256 of the time.
            assert!(back - s <= s / 256, "{s} -> {back}");
            if code > 0 {
                assert!(
                    expiry_seconds(code - 1) < s,
                    "{s}: {code} is not the smallest"
                );
            }
        }
        assert!(expiry_seconds((1 << EXPIRY_BITS) - 1) > u64::from(u32::MAX));
        // Strictly increasing, and every code of a u32 time is that time's own code.
        for code in 1..(1u16 << EXPIRY_BITS) {
            let s = expiry_seconds(code);
            assert!(s > expiry_seconds(code - 1));
            if s <= u64::from(u32::MAX) {
                assert_eq!(expiry_code(s), code);
            }
        }
    }

    #[test]
    fn bits_round_trip_and_padding_must_be_zero() {
        let mut w = BitWriter::new(Vec::new());
        let items: Vec<(u64, u32)> = (0..200u64)
            .map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15), (i % 65) as u32))
            .collect();
        for &(v, bits) in &items {
            w.put(v, bits);
            w.put_unary(v % 70);
        }
        let bytes = w.finish();
        let mut r = Reader { bytes: &bytes }.into_bits();
        for &(v, bits) in &items {
            let mask = if bits == 64 {
                u64::MAX
            } else {
                (1 << bits) - 1
            };
            assert_eq!(r.get(bits).unwrap(), v & mask);
            assert_eq!(r.unary(1_000).unwrap(), v % 70);
        }
        r.finish().unwrap();
        // A one in the padding, or a byte more, is refused.
        let mut w = BitWriter::new(Vec::new());
        w.put(0b101, 3);
        let mut bytes = w.finish();
        let mut r = Reader { bytes: &bytes }.into_bits();
        assert_eq!(r.get(3).unwrap(), 0b101);
        r.finish().unwrap();
        bytes[0] |= 0x80;
        let mut r = Reader { bytes: &bytes }.into_bits();
        r.get(3).unwrap();
        assert!(r.finish().is_err());
        let extra = [0b101, 0];
        let mut r = Reader { bytes: &extra }.into_bits();
        r.get(3).unwrap();
        assert!(r.finish().is_err());
        // Unary runs past the limit or the end are errors.
        let zeros = [0u8; 40];
        assert!(Reader { bytes: &zeros }.into_bits().unary(100).is_err());
        assert!(Reader { bytes: &zeros }.into_bits().unary(1_000).is_err());
    }

    #[test]
    fn the_rice_parameter_follows_the_count() {
        assert_eq!(rice_k(0), 63);
        assert_eq!(rice_k(1), 63);
        assert_eq!(rice_k(1_000), 54);
        assert_eq!(rice_k(1_000_000), 44);
        assert_eq!(rice_k(u64::MAX), 0);
    }
}
