//! Issuing: the claims of a token request, the durable horizon of issued lifetimes,
//! signing with one key snapshot, and the audit row written through the writer.

use super::*;

impl Region {
    /// Issues an access token and records it in the audit log. An EdDSA token is signed
    /// on the calling thread (tens of microseconds), an ML-DSA-65 one on the blocking
    /// pool; the issued-lifetime horizon and the audit row wait for their group commits
    /// without holding a thread. A caller with no runtime (the CLI) blocks on it.
    pub(crate) async fn issue(
        self: &Arc<Self>,
        request: IssueRequest,
        via: &'static str,
    ) -> Result<Issued, Error> {
        let (claims, ttl) = self.issue_claims(request)?;
        // Reserved here, awaited: signing on this thread must not block on a commit.
        if claims.exp > self.issued_until.load(Ordering::Acquire) {
            let until = self.issued_until_step(claims.exp);
            let stored = self
                .writer
                .run_async(move |tx| db::reserve_horizon(tx, db::ISSUED_UNTIL, until))
                .await?;
            self.issued_until.fetch_max(stored, Ordering::AcqRel);
        }
        // One key snapshot decides where to sign and signs.
        let keys = self.keys();
        let (claims, token, row) = if keys.token_key.alg() == shared::Alg::EdDsa {
            let (token, row) = self.sign_issued(&keys, &claims, via)?;
            (claims, token, row)
        } else {
            let region = self.clone();
            tokio::task::spawn_blocking(move || {
                region
                    .sign_issued(&keys, &claims, via)
                    .map(|(token, row)| (claims, token, row))
            })
            .await??
        };
        self.writer.run_async(move |tx| row.write(tx)).await?;
        Ok(Issued {
            token,
            claims,
            expires_in: ttl,
        })
    }

    /// Signs issued claims with `keys`; returns the token and the writer job of its audit
    /// row.
    fn sign_issued(
        &self,
        keys: &KeySet,
        claims: &AccessClaims,
        via: &str,
    ) -> Result<(String, IssuedRow), Error> {
        let (token, kid, alg) = self.sign_access_with(keys, claims)?;
        let row = json!({
            "jti": claims.jti, "sub": claims.sub, "aud": claims.aud, "iat": claims.iat,
            "exp": claims.exp, "kid": kid, "alg": alg.as_str(),
            "sid": claims.sid, "scope": claims.scope, "client_id": claims.client_id,
            "via": via,
        });
        Ok((
            token,
            IssuedRow {
                region: self.settings.region.clone(),
                at: claims.iat,
                row,
            },
        ))
    }

    /// Checks a token request and builds its claims; returns them with the lifetime.
    fn issue_claims(&self, request: IssueRequest) -> Result<(AccessClaims, i64), Error> {
        check_value("subject", &request.subject)?;
        let max_minutes = self.settings.max_token_secs / 60;
        let ttl = match request.expires_minutes {
            None => self.settings.default_token_secs,
            Some(m) if (1..=max_minutes).contains(&m) => m * 60,
            Some(m) => {
                return Err(Error::InvalidRequest(format!(
                    "expires_minutes must be between 1 and {max_minutes}, got {m}"
                )));
            }
        };
        let mut extra = request.additional_claims.unwrap_or_default();
        if let Some(name) = REGISTERED_CLAIMS.iter().find(|c| extra.contains_key(**c)) {
            return Err(Error::InvalidRequest(format!(
                "additional_claims may not set the registered claim \"{name}\""
            )));
        }
        let sid = take_string(&mut extra, "sid")?;
        let scope = take_string(&mut extra, "scope")?;
        let client_id = take_string(&mut extra, "client_id")?;
        if let Some(sid) = &sid {
            check_value("sid", sid)?;
        }
        // The edge may copy any of these into a request header upstream: a control
        // character there would split or smuggle headers.
        for (name, value) in [("scope", &scope), ("client_id", &client_id)] {
            if let Some(value) = value {
                check_text(&format!("additional_claims.{name}"), value)?;
            }
        }
        for (name, value) in &extra {
            // The name too: the edge may copy a claim into a header named after it.
            check_text("an additional_claims name", name)?;
            check_strings(&format!("additional_claims.{name}"), value)?;
        }
        let cnf = match extra.remove("cnf") {
            None => None,
            Some(v) => Some(serde_json::from_value::<Confirmation>(v).map_err(|_| {
                Error::InvalidRequest(r#"cnf must be an object {"jkt": "<thumbprint>"}"#.into())
            })?),
        };
        let claims = self.access_claims(
            Grant {
                sub: request.subject,
                sid,
                scope,
                client_id,
                cnf,
                extra,
            },
            now(),
            ttl,
        );
        Ok((claims, ttl))
    }

    /// The claims of an access token this region issues at `t` for `ttl` seconds: the
    /// one place that sets `iss`, `aud`, the times and a fresh `jti` (tokens from
    /// `POST /token` and from refresh sessions alike).
    pub(crate) fn access_claims(&self, grant: Grant, t: i64, ttl: i64) -> AccessClaims {
        AccessClaims {
            iss: self.settings.issuer.clone(),
            sub: grant.sub,
            aud: Audience::One(self.settings.audience.clone()),
            exp: t + ttl,
            iat: t,
            nbf: t,
            jti: random::id(),
            sid: grant.sid,
            scope: grant.scope,
            client_id: grant.client_id,
            cnf: grant.cnf,
            extra: grant.extra,
        }
    }

    /// Signs access-token claims with the current token key (one snapshot of the keys);
    /// the caller writes the audit row. Returns the compact JWS, the key id and its
    /// algorithm. The token's `exp` is durably within [`db::ISSUED_UNTIL`] before it is
    /// signed, so revocations made later, even after a restart with shorter lifetimes,
    /// cover it.
    pub(crate) fn sign_access(
        &self,
        claims: &AccessClaims,
    ) -> Result<(String, String, shared::Alg), Error> {
        self.sign_access_with(&self.keys(), claims)
    }

    /// [`Region::sign_access`] with a key snapshot the caller already took.
    fn sign_access_with(
        &self,
        keys: &KeySet,
        claims: &AccessClaims,
    ) -> Result<(String, String, shared::Alg), Error> {
        let payload = serde_json::to_vec(claims)
            .map_err(|e| Error::InvalidRequest(format!("claims do not serialize: {e}")))?;
        self.reserve_issued_until(claims.exp)?;
        let kid = keys.token_key.kid();
        let token = jws::sign(
            &keys.token_key,
            TYP_ACCESS_TOKEN,
            Some(&kid),
            None,
            &payload,
        )
        .map_err(Error::Signing)?;
        // Edges refuse longer tokens: never hand one out.
        let limit = Limits::default().max_token_len;
        if token.len() > limit {
            return Err(Error::InvalidRequest(format!(
                "additional_claims make the token {} bytes, over the {limit}-byte limit",
                token.len()
            )));
        }
        Metrics::inc(&self.metrics.tokens_issued);
        Ok((token, kid, keys.token_key.alg()))
    }

    /// Makes sure [`db::ISSUED_UNTIL`] is at or past `exp`. Moving it takes a commit, so
    /// it moves ahead by a step (up to an hour) and most tokens need no write.
    fn reserve_issued_until(&self, exp: i64) -> Result<(), Error> {
        if exp <= self.issued_until.load(Ordering::Acquire) {
            return Ok(());
        }
        let until = self.issued_until_step(exp);
        let stored = self
            .writer
            .run(move |tx| db::reserve_horizon(tx, db::ISSUED_UNTIL, until))?;
        self.issued_until.fetch_max(stored, Ordering::AcqRel);
        Ok(())
    }

    /// Where [`db::ISSUED_UNTIL`] moves to for a token expiring at `exp`.
    fn issued_until_step(&self, exp: i64) -> i64 {
        exp.saturating_add(self.settings.max_token_secs.clamp(60, 3600))
    }
}

/// The audit row of an issued token, written in the writer thread.
pub(super) struct IssuedRow {
    region: String,
    at: i64,
    row: Value,
}

impl IssuedRow {
    /// One row in the next group commit; sealed by a checkpoint after the answer.
    fn write(self, tx: &rusqlite::Transaction<'_>) -> Result<i64, Error> {
        Ok(audit::append_row(
            tx,
            self.at,
            &self.region,
            "token.issued",
            self.row,
        )?)
    }
}
