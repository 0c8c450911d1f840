//! Bearer-token authentication and roles (§1), and the access each
//! route declares.
//!
//! `admin` may call everything; `client` may call the evaluate, assign, route
//! and participant endpoints and every GET. A missing or unknown token is 401,
//! a known token whose role may not call the endpoint is 403. Tokens are
//! compared through their SHA-256 digests, in constant time, so neither the
//! contents nor the lengths of the configured tokens leak through timing.
//!
//! # Where access is declared
//!
//! Next to the route, in the `routes/` module that defines it: a module hands
//! its routes to the router as [`Routes`], and the only way to add a route to
//! a [`Routes`] is [`Routes::routes`], which takes the route's [`Access`]:
//!
//! ```text
//! Routes::new()
//!     .routes(Access::Client, routes!(read))
//!     .routes(Access::Admin, routes!(upsert, remove))
//! ```
//!
//! Adding a route is that one line. [`Routes::into_router`] wraps every
//! handler in [`Auth::guard`] with its declared access; the guard is a route
//! layer of the handler's method router, so an unknown path (404) or method
//! (405) answers the same to everyone, as before.
//!
//! # Closed unless said otherwise
//!
//! A documented route cannot be reachable without a token by accident: `http`
//! builds its router only from [`Routes`], a route cannot enter one without an
//! [`Access`], and [`Access::Open`] has to be written out. The one route added
//! outside (`/openapi.json`, which serves the document built from the others)
//! is guarded explicitly. `tests/it/auth.rs` then walks every operation of the
//! OpenAPI document with no token, a client token and an admin token, so a
//! declaration that disagrees with §1 fails a test.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

use super::error::ApiError;
use crate::config::{AuthSettings, Role};

/// Who may call a route; declared with the route (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token: the probes and the OpenAPI document.
    Open,
    /// `/metrics`: anyone when `auth.metrics_public`, else any known token.
    Metrics,
    /// Any known token: the reads, and the decisions a client asks for
    /// (evaluate, assign, participant register, route, accept, decline).
    Client,
    /// An `admin` token: configuration writes.
    Admin,
}

/// Who is calling: the token's name, recorded as the actor of writes.
#[derive(Debug, Clone, Default)]
pub struct Actor(pub Option<String>);

struct Known {
    name: String,
    role: Role,
    digest: [u8; 32],
}

/// The configured tokens, ready to check.
#[derive(Clone)]
pub struct Auth {
    tokens: Arc<Vec<Known>>,
    metrics_public: bool,
}

/// Names the tokens' holders only: not even a token's digest is printed.
impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let holders: Vec<&str> = self.tokens.iter().map(|k| k.name.as_str()).collect();
        f.debug_struct("Auth")
            .field("holders", &holders)
            .field("metrics_public", &self.metrics_public)
            .finish()
    }
}

impl<S> std::fmt::Debug for Routes<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let access: Vec<Access> = self.declared.iter().map(|(a, _)| *a).collect();
        f.debug_struct("Routes").field("access", &access).finish()
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Auth {
    pub fn new(settings: &AuthSettings) -> Self {
        let tokens = settings
            .tokens
            .iter()
            .map(|t| Known {
                name: t.name.clone(),
                role: t.role,
                digest: digest(t.token.as_bytes()),
            })
            .collect();
        Self {
            tokens: Arc::new(tokens),
            metrics_public: settings.metrics_public,
        }
    }

    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The token's holder; every configured token is compared.
    fn holder(&self, presented: &[u8]) -> Option<&Known> {
        let presented = digest(presented);
        let mut found = None;
        for known in self.tokens.iter() {
            if bool::from(known.digest[..].ct_eq(&presented[..])) {
                found = Some(known);
            }
        }
        found
    }

    /// The least role that may call a route declared `access`; `None` when
    /// no token is needed.
    fn required(&self, access: Access) -> Option<Role> {
        match access {
            _ if !self.enabled() => None,
            Access::Open => None,
            Access::Metrics if self.metrics_public => None,
            Access::Metrics | Access::Client => Some(Role::Client),
            Access::Admin => Some(Role::Admin),
        }
    }

    /// `handlers` behind the check of `access`, which also leaves the
    /// [`Actor`] in the request's extensions.
    pub fn guard<S>(&self, access: Access, handlers: MethodRouter<S>) -> MethodRouter<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let gate = Gate {
            auth: self.clone(),
            required: self.required(access),
        };
        handlers.route_layer(axum::middleware::from_fn_with_state(gate, authenticate))
    }
}

/// Documented routes, each with the access it was declared with. The only
/// way a `routes/` module hands routes to the router (see the module doc).
pub struct Routes<S> {
    declared: Vec<(Access, UtoipaMethodRouter<S>)>,
}

impl<S> Default for Routes<S> {
    fn default() -> Self {
        Self {
            declared: Vec::new(),
        }
    }
}

impl<S> Routes<S>
where
    S: Clone + Send + Sync + 'static,
{
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the handlers of one `routes!(...)`, which `access` may call.
    pub fn routes(mut self, access: Access, handlers: UtoipaMethodRouter<S>) -> Self {
        self.declared.push((access, handlers));
        self
    }

    pub fn merge(mut self, other: Self) -> Self {
        self.declared.extend(other.declared);
        self
    }

    /// The router and its document, each handler behind its guard. Routes
    /// are added in declaration order, which is the order of the document.
    pub fn into_router(self, document: utoipa::openapi::OpenApi, auth: &Auth) -> OpenApiRouter<S> {
        self.declared.into_iter().fold(
            OpenApiRouter::with_openapi(document),
            |router, (access, (schemas, paths, handlers))| {
                router.routes((schemas, paths, auth.guard(access, handlers)))
            },
        )
    }
}

/// What one route's guard checks.
#[derive(Clone)]
struct Gate {
    auth: Auth,
    /// `None`: no token needed.
    required: Option<Role>,
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is
/// case-insensitive (RFC 9110 §11.1), so `bearer` and `BEARER` work too.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError::unauthorized(message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Middleware of [`Auth::guard`]: authenticates, authorises, and leaves the
/// [`Actor`] in the request's extensions.
///
/// As a route layer it also sees the matched route template, which it copies
/// into the response for the request metrics (`http::edge`).
async fn authenticate(State(gate): State<Gate>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let mut response = check(&gate, request, next).await;
    if let Some(route) = route {
        response.extensions_mut().insert(route);
    }
    response
}

async fn check(gate: &Gate, mut request: Request, next: Next) -> Response {
    let Some(required) = gate.required else {
        request.extensions_mut().insert(Actor(None));
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let Some(presented) = presented else {
        return unauthorized("send Authorization: Bearer <token>");
    };
    let Some(holder) = gate.auth.holder(presented.as_bytes()) else {
        return unauthorized("unknown token");
    };
    if !may(holder.role, required) {
        return ApiError::forbidden(
            "a client token may not call this endpoint; it needs an admin token",
        )
        .into_response();
    }
    request
        .extensions_mut()
        .insert(Actor(Some(holder.name.clone())));
    next.run(request).await
}

/// Whether a token of `role` may call a route that requires `required`.
fn may(role: Role, required: Role) -> bool {
    role == Role::Admin || required == Role::Client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(metrics_public: bool) -> Auth {
        Auth::new(&AuthSettings {
            tokens: crate::config::parse_tokens("ci:client:abc,ops:admin:xyz").unwrap(),
            metrics_public,
        })
    }

    #[test]
    fn each_access_needs_the_role_it_names_and_metrics_can_be_opened() {
        let private = auth(false);
        assert_eq!(private.required(Access::Open), None);
        assert_eq!(private.required(Access::Metrics), Some(Role::Client));
        assert_eq!(private.required(Access::Client), Some(Role::Client));
        assert_eq!(private.required(Access::Admin), Some(Role::Admin));
        assert_eq!(auth(true).required(Access::Metrics), None);
        assert_eq!(auth(true).required(Access::Admin), Some(Role::Admin));
        let off = Auth::new(&AuthSettings::default());
        for access in [Access::Open, Access::Metrics, Access::Client, Access::Admin] {
            assert_eq!(off.required(access), None, "{access:?}");
        }
    }

    #[test]
    fn an_admin_may_call_everything_and_a_client_only_client_routes() {
        assert!(may(Role::Admin, Role::Admin));
        assert!(may(Role::Admin, Role::Client));
        assert!(may(Role::Client, Role::Client));
        assert!(!may(Role::Client, Role::Admin));
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_the_token_is_not() {
        for value in ["Bearer abc", "bearer abc", "BEARER abc", "BeArEr \t abc  "] {
            assert_eq!(bearer_token(value), Some("abc"), "{value:?}");
        }
        assert_eq!(bearer_token("Bearer ABC"), Some("ABC"));
        for value in ["Basic abc", "Bearer", "Bearer   ", "Bearerabc", ""] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }

    #[test]
    fn only_a_configured_token_is_known() {
        let auth = auth(false);
        assert_eq!(auth.holder(b"xyz").map(|k| k.name.as_str()), Some("ops"));
        assert_eq!(auth.holder(b"abc").map(|k| k.name.as_str()), Some("ci"));
        assert!(auth.holder(b"xy").is_none());
        assert!(auth.holder(b"").is_none());
    }
}
