//! OS randomness (feature `rand`): key seeds, identifiers, KEM randomness.

/// `N` random bytes from the operating system (or the JS crypto API in browsers/Node).
///
/// # Panics
/// When the platform has no randomness source at all: no key can be made safely then.
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    #[expect(
        clippy::expect_used,
        reason = "no secure fallback exists without an entropy source"
    )]
    getrandom::fill(&mut out).expect("the OS randomness source is unavailable");
    out
}

/// A random identifier: 16 bytes as unpadded base64url (22 characters).
pub fn id() -> String {
    crate::b64::encode(&bytes::<16>())
}
