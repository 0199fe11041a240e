//! The per-request decision: token -> strict parse -> key by `kid` -> signature ->
//! time, issuer, audience -> DPoP binding -> revocation set, on every request.

// Reads untrusted request input and feed bytes: no input may panic the VM.
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

use std::rc::Rc;

use shared::claims::TYP_ACCESS_TOKEN;
use shared::dpop::{ProofRequirements, verify_proof};
use shared::edgeset::{RevocationSet, TokenKeys};
use shared::jws::{Jws, Limits};
use shared::revocation::TokenIds;
use shared::{AccessClaims, Keyring, Validation};

use crate::cache::{TokenCache, key_of};
use crate::replay::{ReplayGuard, proof_id};
use crate::request::{Scheme, claim_at, claim_header_value, extract_token, names_dpop_scheme};

use crate::reason::{Challenge, Reason};

/// What a verified token leaves in the cache: what later requests still need to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// `jti`.
    pub(crate) jti: String,
    /// `sub`.
    pub(crate) sub: String,
    /// `kid` of the key that signed it.
    pub(crate) kid: String,
    /// `sid`, when the token belongs to a session.
    pub(crate) sid: Option<String>,
    /// `iat`.
    pub(crate) iat: i64,
    /// `exp`.
    pub(crate) exp: i64,
    /// `nbf`.
    pub(crate) nbf: i64,
    /// `cnf.jkt`: the token needs a DPoP proof signed by this key.
    pub(crate) jkt: Option<String>,
    /// Upstream headers from the claim mapping, computed once.
    pub(crate) headers: Vec<(String, String)>,
    /// `jti`, `sub`, `kid`, `sid` as the revocation set looks them up, computed once.
    pub(crate) revocation_keys: TokenKeys,
}

/// Why [`Authorizer::verify`] refused a token, and whether its verified claims bind it
/// to a key (which picks the `DPoP` challenge even for a bearer request).
struct Refused {
    reason: Reason,
    bound: bool,
}

impl From<Reason> for Refused {
    fn from(reason: Reason) -> Refused {
        Refused {
            reason,
            bound: false,
        }
    }
}

/// The request facts the decision needs.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The `Authorization` header value.
    pub authorization: Option<&'a [u8]>,
    /// The `DPoP` header value.
    pub dpop: Option<&'a [u8]>,
    /// How many `DPoP` headers came (RFC 9449 allows one).
    pub dpop_headers: usize,
    /// `:method`.
    pub method: &'a str,
    /// `:scheme`.
    pub scheme: &'a str,
    /// `:authority`.
    pub authority: &'a str,
    /// `:path`.
    pub path: &'a str,
}

/// How fresh the revocation set is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Within the staleness bound.
    Fresh,
    /// Past the bound (or never synced): requests get 503 unless configured to fail open.
    Stale,
}

/// The decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forward, with these claims.
    Allow {
        /// The verified token.
        token: Rc<Verified>,
        /// True when no signature had to be verified.
        cache_hit: bool,
    },
    /// Answer 401.
    Deny {
        /// Why.
        reason: Reason,
        /// True when the token came from the cache (revoked or expired since).
        cache_hit: bool,
        /// The challenge to answer with.
        challenge: Challenge,
    },
    /// Answer 503: the revocation set is too old to trust.
    Unavailable,
}

/// The leeway the `exp` check applies: the configured one, unless the revocation feed
/// says its entries assume less.
///
/// A revocation entry covers its tokens until their `exp` plus the control plane's
/// leeway and then lapses: an edge that accepted tokens for longer would accept a
/// revoked one once its entry is gone. So `exp` gets `min(configured, feed)`. `nbf` and
/// `iat` keep the configured leeway: a token accepted early is still covered by every
/// entry until its `exp` plus the feed's leeway, so how early it may be is clock skew
/// alone, the operator's call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpLeeway {
    /// `leeway_seconds` as configured: the feed did not say (a control plane built
    /// before it could), or its entries assume at least as much.
    Configured(i64),
    /// The feed's entries assume less than `leeway_seconds`: `exp` gets `feed`.
    Clamped {
        /// `leeway_seconds`.
        configured: i64,
        /// What the feed's entries assume, applied to `exp`.
        feed: i64,
    },
}

impl ExpLeeway {
    /// The `exp` leeway for a configured leeway and what the feed says, if anything.
    pub fn new(configured: i64, feed: Option<u32>) -> ExpLeeway {
        match feed.map(i64::from) {
            Some(feed) if feed < configured => ExpLeeway::Clamped { configured, feed },
            _ => ExpLeeway::Configured(configured),
        }
    }

    /// Seconds past `exp` a token is still accepted.
    pub fn seconds(self) -> i64 {
        match self {
            ExpLeeway::Configured(l) | ExpLeeway::Clamped { feed: l, .. } => l,
        }
    }

    /// Seconds of the configured leeway not applied (0 when not clamped).
    pub fn clamped_by(self) -> i64 {
        match self {
            ExpLeeway::Configured(_) => 0,
            ExpLeeway::Clamped { configured, feed } => configured - feed,
        }
    }
}

/// Verifies tokens for one VM: keys, rules and the cache of verified tokens.
#[derive(Debug)]
pub struct Authorizer {
    keys: Keyring,
    validation: Validation,
    /// What the `exp` check applies (see [`ExpLeeway`]).
    exp_leeway: ExpLeeway,
    limits: Limits,
    claim_headers: Vec<(String, String)>,
    dpop_max_age: i64,
    /// `scheme://authority` values a DPoP proof's `htu` may name; empty: the request's own.
    dpop_origins: Vec<String>,
    fail_open: bool,
    cache: TokenCache<Verified>,
}

/// True when `origin` (`scheme://authority`) is the request's, compared without regard to
/// ASCII case and without allocating (this runs on the request path).
fn names_origin(origin: &str, scheme: &str, authority: &str) -> bool {
    let split = scheme.len();
    origin.len() == split + 3 + authority.len()
        && origin
            .get(..split)
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
        && origin.get(split..split + 3) == Some("://")
        && origin
            .get(split + 3..)
            .is_some_and(|a| a.eq_ignore_ascii_case(authority))
}

/// The static settings of an [`Authorizer`].
#[derive(Debug, Clone)]
pub struct Rules {
    /// `iss`, `aud`, leeway.
    pub validation: Validation,
    /// Token size limit.
    pub limits: Limits,
    /// `(claim path, header)` pairs.
    pub claim_headers: Vec<(String, String)>,
    /// DPoP `iat` window.
    pub dpop_max_age: i64,
    /// Serve past the staleness bound instead of answering 503.
    pub fail_open: bool,
    /// Cache bound.
    pub cache_max_entries: usize,
}

impl Authorizer {
    /// An authorizer with these keys and rules.
    pub fn new(keys: Keyring, rules: Rules) -> Self {
        Authorizer {
            keys,
            exp_leeway: ExpLeeway::Configured(rules.validation.leeway),
            validation: rules.validation,
            limits: rules.limits,
            claim_headers: rules.claim_headers,
            dpop_max_age: rules.dpop_max_age,
            dpop_origins: Vec::new(),
            fail_open: rules.fail_open,
            cache: TokenCache::new(rules.cache_max_entries),
        }
    }

    /// Restricts DPoP proofs to these public origins (`scheme://authority`, lower case):
    /// a request that names another authority cannot pass a proof made for another
    /// resource server as one made for us.
    pub(crate) fn set_dpop_origins(&mut self, origins: Vec<String>) {
        self.dpop_origins = origins;
    }

    /// The trusted keys (also used to check signed revocation updates).
    pub(crate) fn keys(&self) -> &Keyring {
        &self.keys
    }

    /// Replaces the keys; cached verifications are dropped since a key may be gone.
    pub(crate) fn set_keys(&mut self, keys: Keyring) {
        self.keys = keys;
        self.cache.clear();
    }

    /// Takes the leeway the revocation feed says its entries assume (`None`: it did not
    /// say). Returns the new [`ExpLeeway`] when it changed, for the caller to log and
    /// count once per change rather than per request.
    pub(crate) fn set_feed_leeway(&mut self, feed: Option<u32>) -> Option<ExpLeeway> {
        let new = ExpLeeway::new(self.validation.leeway, feed);
        (new != self.exp_leeway).then(|| {
            self.exp_leeway = new;
            new
        })
    }

    /// What the `exp` check applies now.
    pub(crate) fn exp_leeway(&self) -> ExpLeeway {
        self.exp_leeway
    }

    /// Number of cached tokens.
    #[cfg(test)]
    pub(crate) fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Decides one request against the revocation set at `now`; DPoP proofs are recorded
    /// in `replay` so that each is used once.
    pub fn authorize(
        &mut self,
        req: &Request<'_>,
        set: &RevocationSet,
        freshness: Freshness,
        now: i64,
        replay: &mut dyn ReplayGuard,
    ) -> Outcome {
        // Either scheme may carry either kind of token: what binds a token to a key is
        // its `cnf.jkt`, checked below, not the scheme it was sent with.
        let (scheme, token) = match extract_token(req.authorization) {
            Ok(found) => found,
            Err(reason) => {
                let dpop = req.dpop.is_some() || names_dpop_scheme(req.authorization);
                return Outcome::Deny {
                    reason,
                    cache_hit: false,
                    challenge: if dpop {
                        Challenge::Dpop
                    } else {
                        Challenge::Bearer
                    },
                };
            }
        };
        // A client doing DPoP gets the DPoP challenge, whatever went wrong; so does one
        // sending a bound token as a bearer token (known once its claims are read).
        let dpop_request = scheme == Scheme::Dpop || req.dpop.is_some();
        let challenge = |bound: bool| {
            if dpop_request || bound {
                Challenge::Dpop
            } else {
                Challenge::Bearer
            }
        };
        // RFC 9449 section 4.3: exactly one proof. Two headers (or one value joined with a
        // comma by a proxy) would let the upstream read a proof we never checked.
        if req.dpop_headers > 1 || req.dpop.is_some_and(|p| p.contains(&b',')) {
            return Outcome::Deny {
                reason: Reason::InvalidDpopProof,
                cache_hit: false,
                challenge: Challenge::Dpop,
            };
        }
        let key = key_of(token);
        let (verified, cache_hit) = match self.cache.get(&key, token) {
            Some(v) => (v, true),
            None => match self.verify(token, now) {
                Ok(v) => {
                    let v = Rc::new(v);
                    self.cache.insert(key, token, Rc::clone(&v));
                    (v, false)
                }
                Err(Refused { reason, bound }) => {
                    return Outcome::Deny {
                        reason,
                        cache_hit: false,
                        challenge: challenge(bound),
                    };
                }
            },
        };
        let deny = |reason| Outcome::Deny {
            reason,
            cache_hit,
            challenge: challenge(verified.jkt.is_some()),
        };
        // Time moves on for cached tokens: re-check what depends on it, on every request.
        // `verify` checked `exp` with the configured leeway; this applies the feed's when
        // it is less (a token past it is dropped from the cache like any expired one).
        if now >= verified.exp.saturating_add(self.exp_leeway.seconds()) {
            self.cache.remove(&key);
            return deny(Reason::Expired);
        }
        if verified.nbf > now.saturating_add(self.validation.leeway) {
            return deny(Reason::NotYetValid);
        }
        if let Some(jkt) = verified.jkt.as_deref()
            && !self.dpop_ok(req, token, jkt, now, replay)
        {
            return deny(Reason::InvalidDpopProof);
        }
        if freshness == Freshness::Stale && !self.fail_open {
            return Outcome::Unavailable;
        }
        if set.check_keys(&verified.revocation_keys, now).is_some() {
            return deny(Reason::Revoked);
        }
        Outcome::Allow {
            token: verified,
            cache_hit,
        }
    }

    fn dpop_ok(
        &self,
        req: &Request<'_>,
        token: &str,
        jkt: &str,
        now: i64,
        replay: &mut dyn ReplayGuard,
    ) -> bool {
        let Some(proof) = req.dpop.and_then(|p| std::str::from_utf8(p).ok()) else {
            return false;
        };
        if !self.dpop_origins.is_empty()
            && !self
                .dpop_origins
                .iter()
                .any(|o| names_origin(o, req.scheme, req.authority))
        {
            return false;
        }
        let uri = crate::request::htu(req.scheme, req.authority, req.path);
        verify_proof(
            proof,
            &ProofRequirements {
                method: req.method,
                uri: &uri,
                now,
                max_age: self.dpop_max_age,
                access_token: Some(token),
                nonce: None,
                jkt: Some(jkt),
            },
        )
        // Only a proof that verified is recorded: unsigned garbage cannot fill the cache.
        // It is kept as long as its `iat` window lasts, after which it is stale anyway.
        .is_ok_and(|proof| {
            let until = proof
                .claims
                .iat
                .saturating_add(self.dpop_max_age)
                .saturating_add(1);
            replay.first_use(proof_id(jkt, &proof.claims.jti), until, now)
        })
    }

    /// Full verification of a token not in the cache.
    fn verify(&self, token: &str, now: i64) -> Result<Verified, Refused> {
        let jws = Jws::parse(token, &self.limits).map_err(|e| Reason::from_jose(&e))?;
        jws.expect_typ(TYP_ACCESS_TOKEN)
            .map_err(|_| Reason::Malformed)?;
        jws.verify(&self.keys).map_err(|e| Reason::from_jose(&e))?;
        let claims: AccessClaims = jws.claims().map_err(|_| Reason::Malformed)?;
        claims
            .validate(&self.validation, now)
            .map_err(|e| Refused {
                reason: Reason::from_claims(&e),
                bound: claims.cnf.is_some(),
            })?;
        let headers = if self.claim_headers.is_empty() {
            Vec::new()
        } else {
            let json = serde_json::to_value(&claims).map_err(|_| Reason::Malformed)?;
            self.claim_headers
                .iter()
                .filter_map(|(claim, header)| {
                    let value = claim_header_value(claim_at(&json, claim)?)?;
                    Some((header.clone(), value))
                })
                .collect()
        };
        let kid = jws.header.kid.clone().unwrap_or_default();
        let revocation_keys = TokenKeys::new(&TokenIds {
            jti: &claims.jti,
            sub: &claims.sub,
            kid: &kid,
            sid: claims.sid.as_deref(),
            iat: claims.iat,
        });
        Ok(Verified {
            kid,
            revocation_keys,
            jkt: claims.cnf.map(|c| c.jkt),
            jti: claims.jti,
            sub: claims.sub,
            sid: claims.sid,
            iat: claims.iat,
            exp: claims.exp,
            nbf: claims.nbf,
            headers,
        })
    }
}

#[cfg(test)]
#[expect(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    reason = "a test fails on an unexpected input"
)]
mod tests;
