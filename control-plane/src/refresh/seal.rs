//! The delivery of a rotated refresh token: sealed to the client's ephemeral X-Wing key
//! over the transcript of the exchange, or in clear.

use shared::kem;
use shared::{b64, sha256};

use super::{Delivery, Error, RefreshRequest};

/// First line of the handshake transcript.
pub(crate) const TRANSCRIPT_LABEL: &str = "pq-refresh-v1";

/// The transcript a sealed refresh answer is bound to: ASCII lines joined by `\n`
/// (no trailing newline), so any client (also the JS bindings, which take a string)
/// can rebuild it from what it sent:
///
/// ```text
/// pq-refresh-v1
/// sid=<session id>
/// rt=<base64url SHA-256 of the presented refresh token>
/// dpop=<base64url SHA-256 of the DPoP header value, or "-" without one>
/// kem=<base64url SHA-256 of the raw X-Wing public key (1216 bytes)>
/// ```
pub fn transcript(sid: &str, presented: &str, dpop: Option<&str>, kem_public_key: &[u8]) -> String {
    let h = |bytes: &[u8]| b64::encode(&sha256(bytes));
    let dpop = dpop.map_or_else(|| "-".to_owned(), |p| h(p.as_bytes()));
    format!(
        "{TRANSCRIPT_LABEL}\nsid={sid}\nrt={}\ndpop={dpop}\nkem={}",
        h(presented.as_bytes()),
        h(kem_public_key)
    )
}

/// How the rotated token `next` reaches the client: sealed to the request's ephemeral
/// X-Wing key over the [`transcript`] of this exchange, or in clear without one.
pub(super) fn deliver(next: &str, sid: &str, request: &RefreshRequest) -> Result<Delivery, Error> {
    let Some(pk) = &request.kem_public_key else {
        return Ok(Delivery::Clear(next.to_owned()));
    };
    let transcript = transcript(sid, &request.refresh_token, request.dpop.as_deref(), pk);
    let sealed = kem::seal_random(pk, transcript.as_bytes(), next.as_bytes())
        .map_err(|e| Error::InvalidRequest(format!("kem_public_key: {e}")))?;
    Ok(Delivery::Sealed {
        sealed,
        transcript_hash: b64::encode(&sha256(transcript.as_bytes())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transcript_is_the_documented_ascii_lines() {
        let h = |b: &[u8]| b64::encode(&sha256(b));
        let t = transcript("s-1", "rt_a", Some("p.r.f"), &[7; 1216]);
        assert_eq!(
            t,
            format!(
                "pq-refresh-v1\nsid=s-1\nrt={}\ndpop={}\nkem={}",
                h(b"rt_a"),
                h(b"p.r.f"),
                h(&[7; 1216])
            )
        );
        assert!(transcript("s-1", "rt_a", None, &[7; 1216]).contains("\ndpop=-\n"));
        assert!(t.is_ascii());
    }
}
