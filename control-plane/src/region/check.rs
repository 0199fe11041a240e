//! Checking a token: signature against this region's and the peers' keys, claims, the
//! lifetime a revocation can cover, and the in-process revocation set.

use super::*;

impl Region {
    /// The live revocation that covers a token, from the in-process set (everything
    /// this process committed or verified and applied; never Redis).
    pub(crate) fn revocation_of(
        &self,
        ids: &TokenIds<'_>,
    ) -> Result<Option<RevocationEvent>, Error> {
        Ok(cache::check(&self.revoked, ids, now()).unwrap_or_default())
    }

    /// The live revocation of one identifier (any not-before for `sub`).
    pub(crate) fn find(&self, kind: Kind, value: &str) -> Result<Option<RevocationEvent>, Error> {
        Ok(self
            .revoked
            .find(kind, value, None, now())
            .unwrap_or_default())
    }

    /// Verifies a token's signature against the region's keys, then the peers'. A token
    /// that verified before (same bytes, keys unchanged since) is not verified again.
    pub(crate) fn verify(&self, token: &str) -> Result<(AccessClaims, String), JoseError> {
        let digest = sha256(token.as_bytes());
        if let Some(hit) = self.verified.get(&digest) {
            return Ok(hit);
        }
        let verified = self.verify_signature(token)?;
        self.verified.insert(digest, verified.clone());
        Ok(verified)
    }

    fn verify_signature(&self, token: &str) -> Result<(AccessClaims, String), JoseError> {
        match AccessClaims::verify(token, &self.keys().keyring, &Limits::default()) {
            Err(JoseError::UnknownKey(kid)) => {
                let peers = self.peer_keys();
                if peers.1.get(&kid).is_none() {
                    return Err(JoseError::UnknownKey(kid));
                }
                AccessClaims::verify(token, &peers.1, &Limits::default())
            }
            other => other,
        }
    }

    /// Checks a token completely: signature, claims and (if asked) revocation.
    pub(crate) fn check(&self, token: &str, check_revocation: bool) -> Result<TokenCheck, Error> {
        let (claims, kid) = match self.verify(token) {
            Ok(ok) => ok,
            Err(e) => {
                Metrics::inc(&self.metrics.validations_invalid);
                return Ok(TokenCheck {
                    valid: false,
                    claims: None,
                    revocation: None,
                    message: e.to_string(),
                    unknown_key: matches!(e, JoseError::UnknownKey(_)),
                });
            }
        };
        let claims_error = claims
            .validate(&self.settings.validation(), now())
            .err()
            .map(|e| e.to_string())
            .or_else(|| self.lifetime_error(&claims));
        let revocation = if check_revocation {
            self.revocation_of(&TokenIds {
                jti: &claims.jti,
                sub: &claims.sub,
                kid: &kid,
                sid: claims.sid.as_deref(),
                iat: claims.iat,
            })?
        } else {
            None
        };
        let message = match (&claims_error, &revocation) {
            (Some(e), _) => e.clone(),
            (None, Some(r)) => format!("token {}", describe(r)),
            (None, None) => "token is valid".to_owned(),
        };
        let valid = claims_error.is_none() && revocation.is_none();
        Metrics::inc(if valid {
            &self.metrics.validations_valid
        } else {
            &self.metrics.validations_invalid
        });
        Ok(TokenCheck {
            valid,
            claims: Some(claims),
            revocation,
            message,
            unknown_key: false,
        })
    }

    /// Why a token outlives what a revocation made after its issue is sure to cover (it
    /// lives longer than any region may issue, and this region did not issue it), if it
    /// does: such a token could be accepted after its revocation lapsed.
    pub(crate) fn lifetime_error(&self, claims: &AccessClaims) -> Option<String> {
        let issued = claims.iat.min(claims.nbf);
        let covered = issued
            .saturating_add(self.settings.fleet_max_token_secs)
            .max(self.issued_until.load(Ordering::Acquire));
        (claims.exp > covered).then(|| {
            format!(
                "token lifetime {} s exceeds the fleet's longest, {} s (CP_FLEET_MAX_TOKEN_MINUTES): a revocation could lapse before it",
                claims.exp.saturating_sub(issued),
                self.settings.fleet_max_token_secs
            )
        })
    }
}
