//! The HTTP API: one route table, the error type that alone picks status codes, and the
//! extractors that reject bad input in the same JSON error format.

pub(crate) mod docs;
pub(crate) mod edge;
pub(crate) mod edge_auth;
pub(crate) mod events;
pub(crate) mod limits;
pub(crate) mod meta;
pub(crate) mod nonce;
pub(crate) mod oauth;
pub(crate) mod refresh;
pub(crate) mod replicas;
pub(crate) mod revocations;
pub(crate) mod server;
pub(crate) mod token_endpoint;
pub(crate) mod tokens;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::rejection::{FormRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, extract};
use serde::Serialize;
use utoipa::ToSchema;

use crate::region::{self, Region};

pub(crate) use docs::ApiDoc;

/// Shared state of the handlers: one `Arc`, so the copy every middleware and handler
/// takes of it costs one reference count, not one per part.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
#[derive(Debug)]
pub struct Shared {
    /// The region.
    pub region: Arc<Region>,
    ready: Arc<AtomicBool>,
    closing: Arc<tokio::sync::watch::Sender<bool>>,
    holder_limits: Arc<limits::HolderLimits>,
    /// Requests in progress without a credential, per client address.
    address_permits: Arc<limits::AddressPermits>,
    long_polls: Arc<tokio::sync::Semaphore>,
    /// Edge credentials of the feed, and the long-poll slots each holds.
    edge_auth: Arc<edge_auth::EdgeAuth>,
    /// Redis, Kafka and the peers, when configured.
    pub(crate) backends: crate::backends::Backends,
    /// DPoP server nonces of `/oauth2/token`, unless turned off (`CP_DPOP_NONCE`).
    nonces: Option<Arc<crate::http::nonce::DpopNonces>>,
    /// The region's other replicas, which hold the sessions this one does not.
    replicas: Option<Arc<replicas::Replicas>>,
}

impl AppState {
    /// Wraps a region with no optional services; ready at once.
    pub fn new(region: Region) -> AppState {
        AppState::with_backends(region, crate::backends::Backends::default())
    }

    /// Wraps a region and the services it was opened with; ready at once.
    pub fn with_backends(region: Region, backends: crate::backends::Backends) -> AppState {
        let settings = region.settings();
        let holder_limits = limits::HolderLimits::new(
            settings.holder_revokes_per_minute_per_client,
            settings.holder_revokes_per_minute_per_subject,
        );
        let address_permits = limits::AddressPermits::new(settings.max_unauthenticated_per_address);
        let long_polls = tokio::sync::Semaphore::new(settings.max_long_polls);
        let edge_auth = edge_auth::EdgeAuth::new(
            settings.edge_credentials,
            settings.max_long_polls_per_credential,
        );
        let nonces = settings.dpop_nonce.then(|| {
            crate::http::nonce::DpopNonces::load(&settings.data_dir).unwrap_or_else(|e| {
                // Nonces still work, only not across restarts or processes.
                tracing::warn!(error = %e, "DPoP nonce secret unavailable; using a per-process one");
                crate::http::nonce::DpopNonces::new(shared::random::bytes::<32>())
            })
        });
        let replicas = replicas::Replicas::new(&settings.replica_urls, &region.replica_key());
        AppState(Arc::new(Shared {
            region: Arc::new(region),
            ready: Arc::new(AtomicBool::new(true)),
            closing: Arc::new(tokio::sync::watch::Sender::new(false)),
            holder_limits: Arc::new(holder_limits),
            address_permits: Arc::new(address_permits),
            long_polls: Arc::new(long_polls),
            edge_auth: Arc::new(edge_auth),
            backends,
            nonces: nonces.map(Arc::new),
            replicas: replicas.map(Arc::new),
        }))
    }

    /// Ends held long-polls at once (they answer with a heartbeat), e.g. on shutdown.
    pub fn close_long_polls(&self) {
        self.closing.send_replace(true);
    }

    fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Marks the service (not) ready: when not ready every route but the probes and
    /// `/metrics` answers 503.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether a request was passed on by another replica of the region (it carries
    /// their shared replica key).
    pub(crate) fn passed_by_replica(&self, headers: &axum::http::HeaderMap) -> bool {
        self.replicas.as_ref().is_some_and(|r| r.is_passed(headers))
    }

    /// After a proof of possession was accepted and recorded here: false when another
    /// replica of the region had seen it (a replay), see [`replicas::Replicas::claim_proof`].
    pub(crate) async fn proof_is_fresh_on_replicas(&self, jkt: &str, jti: &str) -> bool {
        match &self.replicas {
            Some(replicas) => replicas.claim_proof(jkt, jti).await,
            None => true,
        }
    }

    /// True when ready.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// The router with every route.
pub fn app(state: AppState) -> Router {
    let limit = state.region.settings().max_body_bytes;
    // A refresh-session request this replica cannot answer goes to the one that can.
    let to_holder = middleware::from_fn_with_state(state.clone(), replicas::route_to_holder);
    Router::new()
        .route("/token", post(tokens::issue))
        .route("/token/validate", post(tokens::validate))
        .route("/token/inspect", get(tokens::inspect))
        .route("/token/refresh/create", post(refresh::create))
        .route(
            "/token/refresh",
            post(refresh::refresh).route_layer(to_holder.clone()),
        )
        .route(
            "/token/refresh/revoke",
            post(refresh::revoke).route_layer(to_holder.clone()),
        )
        .route("/revoke", post(revocations::revoke))
        .route("/revoke/token", post(revocations::revoke_token))
        .route("/v1/revocations/check", post(revocations::check))
        .route("/v1/revocations/{jti}", get(revocations::status))
        .route(
            "/oauth2/revoke",
            post(oauth::revoke).route_layer(to_holder.clone()),
        )
        .route("/oauth2/introspect", post(oauth::introspect))
        .route(
            "/oauth2/token",
            post(token_endpoint::token).route_layer(to_holder.clone()),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(token_endpoint::metadata),
        )
        .route(
            "/v1/edge/revocations",
            get(edge::revocations).route_layer(middleware::from_fn_with_state(
                state.clone(),
                edge_auth::require,
            )),
        )
        .route(replicas::PROOFS_PATH, post(replicas::record_proof))
        .route("/v1/edge/fleet", get(edge::fleet))
        .route("/v1/edge/ready", get(edge::ready))
        .route("/v1/events", get(events::list))
        .route("/admin/keys/rotate", post(meta::rotate_keys))
        .route("/.well-known/jwks.json", get(meta::jwks))
        .route("/v1/region/jwks", get(meta::region_jwks))
        .route("/health", get(meta::health))
        .route("/ready", get(meta::ready))
        .route("/metrics", get(meta::metrics))
        .route("/openapi.json", get(meta::openapi))
        .route("/docs", get(meta::docs))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::per_address,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state)
}

/// Answers 503 while not ready (probes excepted) and counts responses.
async fn gate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let probe = matches!(path, "/health" | "/ready" | "/metrics" | "/v1/edge/ready");
    let response = if !probe && !state.is_ready() {
        ApiError::NotReady.into_response()
    } else {
        next.run(request).await
    };
    let metrics = state.region.metrics();
    metrics.response(response.status().as_u16());
    if response.status() == StatusCode::TOO_MANY_REQUESTS {
        crate::metrics::Metrics::inc(&metrics.rate_limited);
    }
    response
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}

/// The one error body (OAuth 2.0 style).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// Machine-readable code, e.g. `invalid_request`.
    pub(crate) error: String,
    /// What exactly is wrong.
    pub(crate) error_description: String,
}

/// Every error a handler returns; the only place that chooses HTTP statuses.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// 400: malformed or invalid input.
    BadRequest(String),
    /// 401: missing or wrong credential.
    Unauthorized(String),
    /// 403: the credential does not allow this.
    Forbidden(String),
    /// 404.
    NotFound(String),
    /// 405.
    MethodNotAllowed(String),
    /// 413: body over the limit.
    PayloadTooLarge(String),
    /// 415: wrong content type.
    UnsupportedMediaType(String),
    /// 400 `invalid_grant` (RFC 6749 5.2): the refresh token is unknown, expired,
    /// revoked or reused, or the client binding does not match.
    InvalidGrant(String),
    /// 400 `invalid_dpop_proof` (RFC 9449 5): the DPoP proof at a token endpoint is
    /// missing, invalid or replayed.
    InvalidDpopProof(String),
    /// 400 `use_dpop_nonce` (RFC 9449 8): the proof lacks the server's current nonce;
    /// the answer's `DPoP-Nonce` header carries it.
    UseDpopNonce(String),
    /// 400 `unsupported_grant_type` (RFC 6749 5.2).
    UnsupportedGrantType(String),
    /// 400 `invalid_scope` (RFC 6749 5.2): more or other scope than the grant's.
    InvalidScope(String),
    /// 401 `invalid_dpop_proof` with a `DPoP` challenge: a DPoP-bound token used as a
    /// credential came without a valid proof of its key (RFC 9449 section 7).
    InvalidDpopCredential(String),
    /// 429: over a rate limit; `Retry-After` says when to come back.
    TooManyRequests(String, std::time::Duration),
    /// 503: too busy (e.g. every long-poll slot is taken); `Retry-After` as given.
    Busy(String, std::time::Duration),
    /// 503: not ready.
    NotReady,
    /// 500: the cause is logged, never shown.
    Internal(String),
    /// The inner error, for a request naming a refresh session this replica does not
    /// hold: another replica may (`replicas`).
    NotHere(Box<ApiError>),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = match &self {
            ApiError::TooManyRequests(_, wait) | ApiError::Busy(_, wait) => {
                Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
            }
            _ => None,
        };
        let (status, error, description) = match self {
            ApiError::BadRequest(d) => (StatusCode::BAD_REQUEST, "invalid_request", d),
            ApiError::Unauthorized(d) => (StatusCode::UNAUTHORIZED, "unauthorized", d),
            ApiError::Forbidden(d) => (StatusCode::FORBIDDEN, "forbidden", d),
            ApiError::NotFound(d) => (StatusCode::NOT_FOUND, "not_found", d),
            ApiError::MethodNotAllowed(d) => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", d)
            }
            ApiError::PayloadTooLarge(d) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", d),
            ApiError::UnsupportedMediaType(d) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                d,
            ),
            // Token endpoint errors are 400 (RFC 6749 5.2, RFC 9449 5): a 401 with a
            // challenge is for protected resources.
            ApiError::InvalidGrant(d) => (StatusCode::BAD_REQUEST, "invalid_grant", d),
            ApiError::InvalidDpopProof(d) => (StatusCode::BAD_REQUEST, "invalid_dpop_proof", d),
            ApiError::UseDpopNonce(d) => (StatusCode::BAD_REQUEST, "use_dpop_nonce", d),
            ApiError::UnsupportedGrantType(d) => {
                (StatusCode::BAD_REQUEST, "unsupported_grant_type", d)
            }
            ApiError::InvalidScope(d) => (StatusCode::BAD_REQUEST, "invalid_scope", d),
            ApiError::InvalidDpopCredential(d) => {
                (StatusCode::UNAUTHORIZED, "invalid_dpop_proof", d)
            }
            ApiError::TooManyRequests(d, _) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited", d),
            ApiError::Busy(d, _) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                d,
            ),
            ApiError::NotReady => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the service is not ready".to_owned(),
            ),
            ApiError::NotHere(inner) => {
                let mut response = inner.into_response();
                response.extensions_mut().insert(replicas::NotHere);
                return response;
            }
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "internal error; see the server log".to_owned(),
                )
            }
        };
        let mut response = (
            status,
            axum::Json(ErrorBody {
                error: error.to_owned(),
                error_description: description,
            }),
        )
            .into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if status == StatusCode::UNAUTHORIZED {
            // `algs` is `shared::dpop::PROOF_ALGS_CHALLENGE` (a test holds them equal),
            // written out so the header stays a static string.
            let challenge = if error == "invalid_dpop_proof" {
                r#"DPoP realm="control-plane", error="invalid_dpop_proof", algs="EdDSA Ed25519 ES256 ML-DSA-65""#
            } else {
                r#"Bearer realm="control-plane""#
            };
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

impl From<region::Error> for ApiError {
    fn from(e: region::Error) -> Self {
        match e {
            region::Error::InvalidRequest(d) => ApiError::BadRequest(d),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::refresh::Error> for ApiError {
    fn from(e: crate::refresh::Error) -> Self {
        use crate::refresh::Error as E;
        let text = e.to_string();
        match e {
            E::InvalidRequest(_) => ApiError::BadRequest(text),
            E::UnknownToken => ApiError::NotHere(Box::new(ApiError::InvalidGrant(text))),
            E::Expired(_)
            | E::Revoked(_)
            | E::ReusedRefreshToken { .. }
            | E::BindingMismatch(_) => ApiError::InvalidGrant(text),
            E::InvalidProof(_) => ApiError::InvalidDpopProof(text),
            E::UseDpopNonce(_) => ApiError::UseDpopNonce(text),
            E::InvalidScope(_) => ApiError::InvalidScope(text),
            E::UnknownSession(_) => ApiError::NotHere(Box::new(ApiError::NotFound(text))),
            E::Region(e) => ApiError::from(e),
        }
    }
}

fn from_status(status: StatusCode, text: String) -> ApiError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(text),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(text),
        s if s.is_server_error() => ApiError::Internal(text),
        _ => ApiError::BadRequest(text),
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        from_status(r.status(), r.body_text())
    }
}

impl From<FormRejection> for ApiError {
    fn from(r: FormRejection) -> Self {
        from_status(r.status(), r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

/// JSON body extractor whose rejections use [`ApiError`].
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub(crate) struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Form body extractor whose rejections use [`ApiError`].
#[derive(FromRequest)]
#[from_request(via(extract::Form), rejection(ApiError))]
pub(crate) struct Form<T>(pub T);

/// Query string extractor whose rejections use [`ApiError`].
#[derive(FromRequestParts)]
#[from_request(via(extract::Query), rejection(ApiError))]
pub(crate) struct Query<T>(pub T);

/// Path extractor whose rejections use [`ApiError`].
#[derive(FromRequestParts)]
#[from_request(via(extract::Path), rejection(ApiError))]
pub(crate) struct Path<T>(pub T);

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// Requires the admin credential (`Authorization: Bearer <admin secret>`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match bearer(parts) {
            None => Err(ApiError::Unauthorized(
                "the admin credential is required: Authorization: Bearer <admin secret>".into(),
            )),
            Some(secret) if state.region.is_admin(secret) => Ok(Admin),
            Some(_) => Err(ApiError::Unauthorized(
                "the admin credential is not valid".into(),
            )),
        }
    }
}

/// The address of the peer that sent the request, when served over TCP.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|info| info.0.ip()),
        ))
    }
}

/// Whether the request carries the admin credential; a wrong one is still refused.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MaybeAdmin(pub bool);

impl FromRequestParts<AppState> for MaybeAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if bearer(parts).is_none() {
            return Ok(MaybeAdmin(false));
        }
        Admin::from_request_parts(parts, state)
            .await
            .map(|_| MaybeAdmin(true))
    }
}

/// Runs blocking region work (SQLite commits, signing) off the async threads; its
/// domain error (region or refresh) becomes the API error.
async fn blocking<T, E, F>(state: &AppState, work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
    F: FnOnce(&Region) -> Result<T, E> + Send + 'static,
{
    let region = state.region.clone();
    tokio::task::spawn_blocking(move || work(&region))
        .await
        .map_err(|e| ApiError::Internal(format!("blocking task failed: {e}")))?
        .map_err(Into::into)
}
