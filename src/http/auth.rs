//! Bearer-token authentication and roles (contract §1).
//!
//! `admin` may call everything; `client` may call the evaluate, assign, route
//! and participant endpoints and every GET. A missing or unknown token is 401,
//! a known token whose role may not call the endpoint is 403. Tokens are
//! compared through their SHA-256 digests, in constant time, so neither the
//! contents nor the lengths of the configured tokens leak through timing.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::config::{AuthSettings, Role};

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
}

/// Whether a `client` token may call `method path`.
pub fn client_may(method: &Method, path: &str) -> bool {
    if method == Method::GET || method == Method::HEAD {
        return true;
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    matches!(
        (method.as_str(), parts.as_slice()),
        ("POST", ["v1", "flags", _, "evaluate"])
            | ("POST", ["v1", "experiments", _, "assign"])
            | ("POST", ["v1", "assign"])
            | ("PUT", ["v1", "experiments", _, "participants", _])
            | (
                "POST",
                [
                    "v1",
                    "experiments",
                    _,
                    "participants",
                    _,
                    "route" | "accept" | "decline"
                ]
            )
    )
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

/// Middleware: authenticates, authorises, and leaves the [`Actor`] in the
/// request's extensions.
///
/// As a route layer it also sees the matched route template, which it copies
/// into the response for the request metrics (`http::edge`).
pub async fn authenticate(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let mut response = check(&auth, request, next).await;
    if let Some(route) = route {
        response.extensions_mut().insert(route);
    }
    response
}

async fn check(auth: &Auth, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let open = matches!(path, "/healthz" | "/readyz" | "/openapi.json")
        || (path == "/metrics" && auth.metrics_public);
    if !auth.enabled() || open {
        request.extensions_mut().insert(Actor(None));
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let Some(presented) = presented else {
        return unauthorized("send Authorization: Bearer <token>");
    };
    let Some(holder) = auth.holder(presented.as_bytes()) else {
        return unauthorized("unknown token");
    };
    if holder.role == Role::Client && !client_may(request.method(), request.uri().path()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_may_decide_and_read_but_not_configure() {
        for (m, p) in [
            (Method::GET, "/v1/experiments"),
            (Method::POST, "/v1/flags/f/evaluate"),
            (Method::POST, "/v1/experiments/e/assign"),
            (Method::POST, "/v1/assign"),
            (Method::PUT, "/v1/experiments/e/participants/p"),
            (Method::POST, "/v1/experiments/e/participants/p/decline"),
        ] {
            assert!(client_may(&m, p), "{m} {p}");
        }
        for (m, p) in [
            (Method::PUT, "/v1/flags/f"),
            (Method::DELETE, "/v1/flags/f"),
            (Method::PUT, "/v1/flags/f/orgs/1"),
            (Method::PUT, "/v1/experiments/e"),
            (Method::DELETE, "/v1/experiments/e"),
            (Method::POST, "/v1/experiments/e/participants/p/steal"),
        ] {
            assert!(!client_may(&m, p), "{m} {p}");
        }
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
        let settings = AuthSettings {
            tokens: crate::config::parse_tokens("ci:client:abc,ops:admin:xyz").unwrap(),
            metrics_public: false,
        };
        let auth = Auth::new(&settings);
        assert_eq!(auth.holder(b"xyz").map(|k| k.name.as_str()), Some("ops"));
        assert!(auth.holder(b"xy").is_none());
        assert!(auth.holder(b"").is_none());
    }
}
