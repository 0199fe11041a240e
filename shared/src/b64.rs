//! Strict unpadded base64url (RFC 7515 section 2): no padding, no whitespace, canonical bits.

// Decodes untrusted text on the edge's hot path: no input may panic it.
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

use base64ct::{Base64UrlUnpadded, Encoding};

use crate::JoseError;

/// Encodes bytes as unpadded base64url.
pub fn encode(bytes: &[u8]) -> String {
    Base64UrlUnpadded::encode_string(bytes)
}

/// Decodes unpadded base64url, refusing padding and non-canonical trailing bits;
/// `what` names the part in the error.
pub fn decode(text: &str, what: &'static str) -> Result<Vec<u8>, JoseError> {
    let bytes = Base64UrlUnpadded::decode_vec(text).map_err(|_| JoseError::Base64(what))?;
    // Two encodings of the same bytes would give two token strings for one token
    // (cache keys, replay checks): only the canonical one is accepted.
    if Base64UrlUnpadded::encoded_len(&bytes) != text.len() || encode(&bytes) != text {
        return Err(JoseError::Base64(what));
    }
    Ok(bytes)
}

/// Value of each base64url character; 0xff for every other byte.
#[expect(
    clippy::indexing_slicing,
    reason = "evaluated at compile time: an index out of range fails the build"
)]
const DECODE_TABLE: [u8; 256] = {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 64 {
        table[alphabet[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// The value of base64url character `x`; 0xff for any other byte.
#[inline]
fn value(x: u8) -> u8 {
    // Every u8 is an index of the 256-entry table: `get` compiles to the plain load.
    DECODE_TABLE.get(usize::from(x)).copied().unwrap_or(0xff)
}

/// [`decode`] in variable time, for public data only (JWS headers, payloads and
/// signatures): a table lookup per character, and canonical trailing bits checked
/// directly instead of by encoding again, several times faster on the megabytes of a
/// large edge snapshot. Accepts and refuses exactly what [`decode`] does.
pub fn decode_public(text: &str, what: &'static str) -> Result<Vec<u8>, JoseError> {
    let err = || JoseError::Base64(what);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3 + 2);
    let (quads, rest) = bytes.as_chunks::<4>();
    for quad in quads {
        let [a, b, c, d] = quad.map(value);
        if (a | b | c | d) & 0x80 != 0 {
            return Err(err());
        }
        let n = u32::from(a) << 18 | u32::from(b) << 12 | u32::from(c) << 6 | u32::from(d);
        out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
    }
    match *rest {
        [] => {}
        // Canonical: the bits past the last whole byte are zero.
        [a, b] => match [a, b].map(value) {
            [a, b] if (a | b) & 0x80 == 0 && b & 0x0f == 0 => out.push(a << 2 | b >> 4),
            _ => return Err(err()),
        },
        [a, b, c] => match [a, b, c].map(value) {
            [a, b, c] if (a | b | c) & 0x80 == 0 && c & 0x03 == 0 => {
                out.extend_from_slice(&[a << 2 | b >> 4, b << 4 | c >> 2]);
            }
            _ => return Err(err()),
        },
        // One character left holds no whole byte.
        _ => return Err(err()),
    }
    Ok(out)
}

/// Decodes into a fixed-size array.
pub fn decode_array<const N: usize>(text: &str, what: &'static str) -> Result<[u8; N], JoseError> {
    decode(text, what)?
        .try_into()
        .map_err(|_| JoseError::BadKey(what))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails on an unexpected input")]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_non_canonical_forms() {
        assert_eq!(decode(&encode(b"hello"), "x").unwrap(), b"hello");
        assert_eq!(encode(b"hello"), "aGVsbG8");
        assert!(decode("aGVsbG8=", "x").is_err(), "padding");
        assert!(decode("aGVsbG9", "x").is_err(), "non-zero trailing bits");
        assert!(decode("aGV sbG8", "x").is_err(), "whitespace");
        assert!(decode("aGVsbG+", "x").is_err(), "standard alphabet");
        assert!(decode("a", "x").is_err(), "impossible length");
        for text in [
            "", "aGVsbG8", "aGVsbG8=", "aGVsbG9", "aGV sbG8", "aGVsbG+", "a", "ab", "aQ", "aR",
            "aGk", "aGl", "_-_-",
        ] {
            assert_eq!(decode_public(text, "x"), decode(text, "x"), "{text:?}");
        }
    }
}
