//! The OpenAPI description, assembled from the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{edge, events, meta, oauth, refresh, revocations, token_endpoint, tokens};

/// The API description served at `/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "control-plane",
        description = "Issues, validates and revokes post-quantum-signed access tokens and \
            serves the signed revocation feed of the Envoy edge filter."
    ),
    paths(
        tokens::issue, tokens::validate, tokens::inspect,
        refresh::create, refresh::refresh, refresh::revoke,
        revocations::revoke, revocations::revoke_token, revocations::status, revocations::check,
        oauth::revoke, oauth::introspect, token_endpoint::token, token_endpoint::metadata,
        edge::revocations, edge::fleet, edge::ready, events::list,
        meta::jwks, meta::region_jwks, meta::health, meta::ready, meta::metrics, meta::rotate_keys,
        meta::openapi, meta::docs,
    ),
    components(schemas(super::ErrorBody)),
    modifiers(&AdminAuth),
    tags(
        (name = "tokens", description = "Issue, validate and inspect access tokens"),
        (name = "refresh", description = "Refresh sessions: device-bound rotation with \
            forward-secret delivery and reuse detection"),
        (name = "revocations", description = "Revoke and look up revocations"),
        (name = "oauth2", description = "RFC 6749 token endpoint with RFC 9449 DPoP, RFC 7009 \
            revocation, RFC 7662 introspection and RFC 8414 metadata"),
        (name = "edge", description = "Signed revocation feed for the Envoy filter, and the fleet \
            of edges that poll it"),
        (name = "meta", description = "Probes, metrics, keys and docs"),
    )
)]
pub(crate) struct ApiDoc;

struct AdminAuth;

impl Modify for AdminAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin secret from <data-dir>/admin.secret".to_owned(),
                    ))
                    .build(),
            ),
        );
    }
}
