//! The other regions' public keys (`PEER_JWKS`): the only keys, besides this region's
//! own, whose signed events the consumer applies. Refreshed in the background and at
//! once (rate limited) when an event names a `kid` nobody knows yet, so a peer's key
//! rotation never stalls its events here.
//!
//! Each key is bound to the region it came from, so a region's key signs events of that
//! region only ([`Peers::origin_check`]): a source written `REGION=URL` (or
//! `REGION=path`) names it, else the region the JWKS itself names (`/v1/region/jwks`
//! answers `{"region": ..., "keys": [...]}`). The keys of a source that names no region
//! (an older peer, a bare file) are unbound: their events may claim any origin but this
//! region's and those bound to other keys, and a warning says to name the region.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use shared::revocation::{Verified, VerifiedRoots};
use shared::{JoseError, Keyring, RevocationEvent};

use crate::store::keys::KeySet;
use shared::jwk::JwkSet;

/// How often the peer JWKS are fetched when nothing asks earlier.
pub(crate) const REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// How soon a fetch is retried when a peer did not answer (it may be starting).
pub(crate) const RETRY_INTERVAL: Duration = Duration::from_secs(2);
/// The shortest time between two fetches triggered by unknown keys.
pub(crate) const MIN_REFETCH: Duration = Duration::from_secs(2);

/// Which region each peer key signs for.
#[derive(Debug, Default)]
struct Bindings {
    /// Bound keys: `kid` -> region.
    region_of: HashMap<String, String>,
    /// Every region some key is bound to.
    regions: HashSet<String>,
}

/// Why an event's origin or `kid` does not fit the key that signed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Misfit {
    /// The event names another key than its signer.
    Kid,
    /// The event claims a region its signer's key is not bound to.
    Origin,
}

/// The peer keys and where they come from.
#[derive(Debug)]
pub(crate) struct Peers {
    sources: Vec<String>,
    /// The JWKS each source gave last, and the region it named (`None`: unbound).
    by_source: Mutex<HashMap<String, (JwkSet, Option<String>)>>,
    bindings: RwLock<Arc<Bindings>>,
    keyring: RwLock<Arc<Keyring>>,
    jwks: RwLock<Arc<JwkSet>>,
    last_fetch: Mutex<Option<Instant>>,
    /// The last refresh fetched every source (false before the first).
    complete: std::sync::atomic::AtomicBool,
    http: reqwest::Client,
    /// The keys events are verified with (this region's and the peers'), merged once
    /// per change of either, and the batch roots they already verified.
    trusted: Mutex<Trusted>,
}

/// The merged keyring, remembered with the two sources it was built from (held, so
/// a pointer comparison cannot mistake a new set for a freed one).
#[derive(Debug, Default)]
struct Trusted {
    from: Option<(Arc<KeySet>, Arc<Keyring>)>,
    keys: Arc<Keyring>,
    roots: VerifiedRoots,
}

impl Peers {
    /// Peers read from `sources` (none fetched yet).
    pub(crate) fn new(sources: Vec<String>) -> Peers {
        Peers {
            sources,
            by_source: Mutex::new(HashMap::new()),
            bindings: RwLock::new(Arc::new(Bindings::default())),
            keyring: RwLock::new(Arc::new(Keyring::new())),
            jwks: RwLock::new(Arc::new(JwkSet::default())),
            last_fetch: Mutex::new(None),
            complete: std::sync::atomic::AtomicBool::new(false),
            trusted: Mutex::new(Trusted::default()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        }
    }

    /// Verifies a signed revocation event with this region's keys and the peers'; a
    /// batch root already verified is not verified again. The event's `kid` and origin
    /// are checked apart ([`Peers::origin_check`]).
    pub(crate) fn verify_event(
        &self,
        own: Arc<KeySet>,
        signed: &str,
    ) -> Result<Verified, JoseError> {
        let peers = self.keyring();
        // The signature is checked with no lock held, so events verify on every core at
        // once; only the merged keys and a copy of the roots are taken under it.
        let (keys, mut roots) = {
            let mut trusted = self.trusted.lock().unwrap_or_else(|e| e.into_inner());
            let current = trusted
                .from
                .as_ref()
                .is_some_and(|(k, p)| Arc::ptr_eq(k, &own) && Arc::ptr_eq(p, &peers));
            if !current {
                let mut merged: Keyring = (*peers).clone();
                merged.merge(&own.keyring);
                trusted.keys = Arc::new(merged);
                trusted.from = Some((own, peers));
            }
            (trusted.keys.clone(), trusted.roots.clone())
        };
        let known = roots.added();
        let verified = RevocationEvent::verify_signer(signed, &keys, &mut roots);
        if roots.added() != known {
            self.trusted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .roots
                .absorb(roots);
        }
        verified
    }

    /// Whether a verified event fits the key that signed it: it names that key, and it
    /// claims the region that key is bound to (this region for its own keys). An
    /// unbound peer key may claim any region but this one and those bound to other keys;
    /// a key nobody publishes passes here and is refused by verification.
    pub(crate) fn origin_check(
        &self,
        own_region: &str,
        own: &KeySet,
        verified: &Verified,
    ) -> Result<(), Misfit> {
        let Verified { event, signer } = verified;
        if event.kid != *signer {
            return Err(Misfit::Kid);
        }
        if own.keyring.get(signer).is_some() {
            return if event.origin == own_region {
                Ok(())
            } else {
                Err(Misfit::Origin)
            };
        }
        let bindings = self
            .bindings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match bindings.region_of.get(signer) {
            Some(region) if *region == event.origin => Ok(()),
            Some(_) => Err(Misfit::Origin),
            // Not a key of any peer: verification refuses it (as an unknown key).
            None if self.keyring().get(signer).is_none() => Ok(()),
            None if event.origin == own_region || bindings.regions.contains(&event.origin) => {
                Err(Misfit::Origin)
            }
            None => Ok(()),
        }
    }

    pub(crate) fn keyring(&self) -> Arc<Keyring> {
        self.keyring
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every peer key as one JWKS.
    pub(crate) fn jwks(&self) -> Arc<JwkSet> {
        self.jwks.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Fetches every source; a source that fails keeps the keys it gave last time.
    /// True when every source answered.
    pub(crate) async fn refresh(&self) -> bool {
        *self.last_fetch.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let mut all = true;
        for source in &self.sources {
            let (named, location) = crate::config::named(source);
            match self.fetch(location).await {
                Ok((set, served)) => {
                    let region = match (named, served) {
                        (Some(named), Some(served)) if named != served => {
                            tracing::warn!(
                                source = location,
                                named,
                                served,
                                "PEER_JWKS names another region than its JWKS does; the keys \
                                 sign for the one PEER_JWKS names"
                            );
                            Some(named.to_owned())
                        }
                        (Some(named), _) => Some(named.to_owned()),
                        (None, Some(served)) => Some(served),
                        (None, None) => {
                            tracing::warn!(
                                source = location,
                                "the keys of this peer JWKS are bound to no region, so they may \
                                 sign events of any unbound region: name it in PEER_JWKS \
                                 (REGION=URL) or upgrade the peer"
                            );
                            None
                        }
                    };
                    self.by_source
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(source.clone(), (set, region));
                }
                Err(e) => {
                    all = false;
                    tracing::warn!(source, error = %e, "cannot fetch a peer JWKS");
                }
            }
        }
        let mut ring = Keyring::new();
        let mut merged = JwkSet::default();
        let mut bindings = Bindings::default();
        let sets: Vec<(JwkSet, Option<String>)> = self
            .by_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for (set, region) in &sets {
            match Keyring::from_jwks(set) {
                Ok(keys) => {
                    merged.keys.extend(set.keys.iter().cloned());
                    ring.merge(&keys);
                    if let Some(region) = region {
                        // The kids the keyring files them under (from_jwks's rule).
                        for jwk in set.keys.iter().filter(|j| j.is_supported()) {
                            if let Ok(key) = jwk.to_verifying_key() {
                                let kid = jwk.kid.clone().unwrap_or_else(|| key.thumbprint());
                                bindings.region_of.insert(kid, region.clone());
                            }
                        }
                        bindings.regions.insert(region.clone());
                    }
                }
                Err(e) => tracing::warn!(error = %e, "a peer JWKS holds an invalid key"),
            }
        }
        *self.bindings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(bindings);
        *self.keyring.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ring);
        *self.jwks.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(merged);
        self.complete
            .store(all, std::sync::atomic::Ordering::Release);
        all
    }

    /// Whether the last refresh fetched every source: then a key none of them publishes
    /// is nobody's, and an event signed by it can be refused at once.
    pub(crate) fn complete(&self) -> bool {
        self.complete.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Refreshes unless the last fetch was less than [`MIN_REFETCH`] ago; true if it did.
    pub(crate) async fn refresh_soon(&self) -> bool {
        let due = self
            .last_fetch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none_or(|at| at.elapsed() >= MIN_REFETCH);
        if due {
            self.refresh().await;
        }
        due
    }

    /// Refreshes now and hands the keys to the region (tokens of peers verify there).
    pub(crate) async fn refresh_into(&self, region: &crate::Region) -> bool {
        let all = self.refresh().await;
        self.hand_to(region);
        all
    }

    /// Gives the region the keys known now.
    pub(crate) fn hand_to(&self, region: &crate::Region) {
        region.set_peer_keys((*self.jwks()).clone(), (*self.keyring()).clone());
    }

    /// The JWKS at `source` and the region it names, if it names one.
    async fn fetch(&self, source: &str) -> Result<(JwkSet, Option<String>), FetchError> {
        let bytes = if source.starts_with("http://") || source.starts_with("https://") {
            let response = self.http.get(source).send().await?;
            if !response.status().is_success() {
                return Err(FetchError::Status(response.status()));
            }
            response.bytes().await?.to_vec()
        } else {
            tokio::fs::read(source).await?
        };
        /// The optional member naming the region whose keys these are.
        #[derive(serde::Deserialize)]
        struct Named {
            #[serde(default)]
            region: Option<String>,
        }
        let set = JwkSet::parse(&bytes)?;
        let region = serde_json::from_slice::<Named>(&bytes)
            .ok()
            .and_then(|n| n.region)
            .filter(|r| !r.is_empty());
        Ok((set, region))
    }
}

/// Why a peer's JWKS could not be fetched.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    /// The request failed.
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    /// The server answered with an error status.
    #[error("HTTP {0}")]
    Status(reqwest::StatusCode),
    /// The file could not be read.
    #[error("{0}")]
    File(#[from] std::io::Error),
    /// What it holds is not a JWK set.
    #[error("{0}")]
    Jwks(#[from] shared::JoseError),
}
