//! The other regions' public keys (`PEER_JWKS`): the only keys, besides this region's
//! own, whose signed events the consumer applies. Refreshed in the background and at
//! once (rate limited) when an event names a `kid` nobody knows yet, so a peer's key
//! rotation never stalls its events here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use shared::revocation::VerifiedRoots;
use shared::{JoseError, Keyring, RevocationEvent};

use crate::store::keys::KeySet;
use shared::jwk::JwkSet;

/// How often the peer JWKS are fetched when nothing asks earlier.
pub(crate) const REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// How soon a fetch is retried when a peer did not answer (it may be starting).
pub(crate) const RETRY_INTERVAL: Duration = Duration::from_secs(2);
/// The shortest time between two fetches triggered by unknown keys.
pub(crate) const MIN_REFETCH: Duration = Duration::from_secs(2);

/// Parses `PEER_JWKS`: comma-separated `http(s)://` URLs or file paths. Returns every
/// problem at once.
pub(crate) fn parse_sources(list: &str) -> Result<Vec<String>, Vec<String>> {
    let mut sources = Vec::new();
    let mut problems = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if item.starts_with("http://") || item.starts_with("https://") {
            match reqwest::Url::parse(item) {
                Ok(_) => sources.push(item.to_owned()),
                Err(e) => problems.push(format!("PEER_JWKS: {item:?} is not a valid URL: {e}")),
            }
        } else if item.contains("://") {
            problems.push(format!(
                "PEER_JWKS: {item:?}: only http(s) URLs and file paths are supported"
            ));
        } else if std::path::Path::new(item).is_file() {
            sources.push(item.to_owned());
        } else {
            problems.push(format!(
                "PEER_JWKS: {item:?} is neither a URL nor a readable file"
            ));
        }
    }
    if problems.is_empty() {
        Ok(sources)
    } else {
        Err(problems)
    }
}

/// The peer keys and where they come from.
#[derive(Debug)]
pub(crate) struct Peers {
    sources: Vec<String>,
    by_source: Mutex<HashMap<String, JwkSet>>,
    keyring: RwLock<Arc<Keyring>>,
    jwks: RwLock<Arc<JwkSet>>,
    last_fetch: Mutex<Option<Instant>>,
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
            keyring: RwLock::new(Arc::new(Keyring::new())),
            jwks: RwLock::new(Arc::new(JwkSet::default())),
            last_fetch: Mutex::new(None),
            trusted: Mutex::new(Trusted::default()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        }
    }

    /// The keys known now.
    /// Verifies a signed revocation event with this region's keys and the peers'; a
    /// batch root already verified is not verified again.
    pub(crate) fn verify_event(
        &self,
        own: Arc<KeySet>,
        signed: &str,
    ) -> Result<RevocationEvent, JoseError> {
        let peers = self.keyring();
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
        let Trusted { keys, roots, .. } = &mut *trusted;
        RevocationEvent::verify_cached(signed, keys, roots)
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
            match self.fetch(source).await {
                Ok(set) => {
                    self.by_source
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(source.clone(), set);
                }
                Err(e) => {
                    all = false;
                    tracing::warn!(source, error = %e, "cannot fetch a peer JWKS");
                }
            }
        }
        let mut ring = Keyring::new();
        let mut merged = JwkSet::default();
        let sets: Vec<JwkSet> = self
            .by_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for set in &sets {
            match Keyring::from_jwks(set) {
                Ok(keys) => {
                    merged.keys.extend(set.keys.iter().cloned());
                    ring.merge(&keys);
                }
                Err(e) => tracing::warn!(error = %e, "a peer JWKS holds an invalid key"),
            }
        }
        *self.keyring.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ring);
        *self.jwks.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(merged);
        all
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

    async fn fetch(&self, source: &str) -> Result<JwkSet, FetchError> {
        let bytes = if source.starts_with("http://") || source.starts_with("https://") {
            let response = self.http.get(source).send().await?;
            if !response.status().is_success() {
                return Err(FetchError::Status(response.status()));
            }
            response.bytes().await?.to_vec()
        } else {
            tokio::fs::read(source).await?
        };
        Ok(JwkSet::parse(&bytes)?)
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
