//! DPoP server nonces (RFC 9449 section 8) for the token endpoint: stateless, rotating
//! values a client must put in its proofs, so a proof cannot be made ahead of time.
//!
//! A nonce is `base64url(HMAC-SHA256(secret, "dpop-nonce/" || window))` where `window`
//! is the current time divided by [`WINDOW_SECS`]. The nonce of the current window and
//! of the previous one are accepted, so a nonce lives between one and two windows and a
//! client that just learnt one never races a rotation. The secret is kept in the data
//! directory (`dpop-nonce.secret`, mode 0600), so nonces survive a restart and every
//! process serving the same data directory agrees on them.

use std::fs;
use std::io::Write as _;
use std::path::Path;

use shared::{b64, random, sha256};

/// Length of a nonce window, in seconds.
pub(crate) const WINDOW_SECS: i64 = 300;

/// File in the data directory holding the nonce secret.
pub const SECRET_FILE: &str = "dpop-nonce.secret";

/// Issues and checks DPoP nonces.
#[derive(Clone)]
pub struct DpopNonces {
    secret: [u8; 32],
}

impl std::fmt::Debug for DpopNonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DpopNonces { .. }")
    }
}

impl DpopNonces {
    /// Nonces under a given secret.
    pub(crate) fn new(secret: [u8; 32]) -> DpopNonces {
        DpopNonces { secret }
    }

    /// Reads the secret from `data_dir`, creating it (mode 0600) on first use.
    pub fn load(data_dir: &Path) -> std::io::Result<DpopNonces> {
        let path = data_dir.join(SECRET_FILE);
        if !path.exists() {
            let mut options = fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt as _;
                options.mode(0o600);
            }
            match options.open(&path) {
                Ok(mut file) => {
                    file.write_all(b64::encode(&random::bytes::<32>()).as_bytes())?;
                    file.write_all(b"\n")?;
                    file.sync_all()?;
                }
                // Another process of the same data directory created it first.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        let text = fs::read_to_string(&path)?;
        let bytes = b64::decode(text.trim(), SECRET_FILE)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
        let secret: [u8; 32] = bytes.try_into().map_err(|_| {
            std::io::Error::other(format!("{}: not a 32-byte secret", path.display()))
        })?;
        Ok(DpopNonces { secret })
    }

    fn for_window(&self, window: i64) -> String {
        let message = format!("dpop-nonce/{window}");
        b64::encode(&hmac_sha256(&self.secret, message.as_bytes()))
    }

    /// The nonce to hand out at time `t` (unix seconds).
    pub(crate) fn current(&self, t: i64) -> String {
        self.for_window(t.div_euclid(WINDOW_SECS))
    }

    /// The nonces accepted at time `t`: the current window's, then the previous one's.
    pub fn accepted(&self, t: i64) -> Vec<String> {
        let window = t.div_euclid(WINDOW_SECS);
        vec![self.for_window(window), self.for_window(window - 1)]
    }
}

/// HMAC-SHA256 (RFC 2104) with a key shorter than the block.
pub(crate) fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    let mut inner = vec![0x36u8; 64];
    let mut outer = vec![0x5cu8; 64];
    for (i, k) in key.iter().enumerate() {
        inner[i] ^= k;
        outer[i] ^= k;
    }
    inner.extend_from_slice(message);
    outer.extend_from_slice(&sha256(&inner));
    sha256(&outer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_test_case_1() {
        // RFC 4231 case 1 uses a 20-byte key: pad it to 32 with zeros, which HMAC does
        // itself (keys are zero-padded to the block), so the result is the same.
        let mut key = [0u8; 32];
        key[..20].copy_from_slice(&[0x0b; 20]);
        let mac = hmac_sha256(&key, b"Hi There");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
    }

    #[test]
    fn a_nonce_is_accepted_for_its_window_and_the_next_only() {
        let nonces = DpopNonces::new([7; 32]);
        let t = 1_000 * WINDOW_SECS + 10;
        let issued = nonces.current(t);
        assert!(nonces.accepted(t).contains(&issued));
        assert!(nonces.accepted(t + WINDOW_SECS).contains(&issued));
        assert!(!nonces.accepted(t + 2 * WINDOW_SECS).contains(&issued));
        assert_ne!(nonces.current(t + WINDOW_SECS), issued, "rotates");
        assert_ne!(DpopNonces::new([8; 32]).current(t), issued, "keyed");
    }

    #[test]
    fn the_secret_is_created_once_with_mode_0600() {
        let dir = tempfile::TempDir::new().unwrap();
        let a = DpopNonces::load(dir.path()).unwrap();
        let b = DpopNonces::load(dir.path()).unwrap();
        assert_eq!(a.current(0), b.current(0));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir.path().join(SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
