//! Strict unpadded base64url (RFC 7515 section 2): no padding, no whitespace, canonical bits.

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

/// Decodes into a fixed-size array.
pub fn decode_array<const N: usize>(text: &str, what: &'static str) -> Result<[u8; N], JoseError> {
    decode(text, what)?
        .try_into()
        .map_err(|_| JoseError::BadKey(what))
}

#[cfg(test)]
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
    }
}
