//! Token authentication as registries such as ghcr.io do it (the distribution project's token
//! specification): a registry answers 401 with `WWW-Authenticate: Bearer realm=…,service=…,
//! scope=repository:<name>:pull`; the client asks the realm for a token, with HTTP basic
//! credentials for a private repository and anonymously for a public one; the token is a JWT
//! the registry checks against the certificates it trusts.
//!
//! [`TokenServer`] is that realm for Debian's real `docker-registry` run with `auth: token`
//! ([`crate::Registry::serve_with_token_auth`]): it signs ES256 JWTs with a key whose
//! certificate (made by [`crate::pki::Pki`]) travels in the token's `x5c` header, and grants
//! `pull` on the public repositories to anyone and on the private ones only to its user. The
//! scope and credential checks are shared with [`crate::registry_standin`].

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Router;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;

use crate::http_server::{bind_loopback, bound_address, json_response, ServerThread};
use crate::pki::{CertPair, Pki};
use crate::util::{base64_decode, base64_encode, parse_query, query_value};
use crate::{Error, Result};

/// The `iss` of the tokens, as the registry's `auth.token.issuer` must name it.
pub const ISSUER: &str = "dctest-token-issuer";
/// How long a token is valid.
const TOKEN_TTL_SECS: i64 = 300;

/// The repositories a token request asks to pull (`scope=repository:<name>:pull`, repeatable,
/// space-separated).
pub(crate) fn pulled_repositories(query: &[(String, String)]) -> BTreeSet<String> {
    let mut repos = BTreeSet::new();
    for (_, value) in query.iter().filter(|(k, _)| k == "scope") {
        for scope in value.split(' ') {
            let Some(rest) = scope.strip_prefix("repository:") else {
                continue;
            };
            if let Some((name, actions)) = rest.rsplit_once(':') {
                if actions.split(',').any(|a| a == "pull" || a == "*") {
                    repos.insert(name.to_owned());
                }
            }
        }
    }
    repos
}

/// What HTTP basic credentials a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Basic {
    Missing,
    Valid,
    Invalid,
}

/// Checks the request's basic credentials against `user` and `password`.
pub(crate) fn basic_credentials(headers: &HeaderMap, user: &str, password: &str) -> Basic {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Basic::Missing;
    };
    let expected = base64_encode(format!("{user}:{password}").as_bytes());
    let valid = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .is_some_and(|(scheme, credentials)| {
            scheme.eq_ignore_ascii_case("basic") && credentials.trim() == expected
        });
    if valid {
        Basic::Valid
    } else {
        Basic::Invalid
    }
}

/// A 401 asking for basic credentials.
pub(crate) fn basic_challenge(message: &str) -> Response {
    let mut response = json_response(
        StatusCode::UNAUTHORIZED,
        &json!({ "errors": [{ "code": "UNAUTHORIZED", "message": message }] }),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"dctest\""),
    );
    response
}

/// Who may pull what.
#[derive(Clone)]
pub struct TokenPolicy {
    /// The registry's `auth.token.service`, the tokens' `aud`.
    pub service: String,
    pub user: String,
    pub password: String,
    /// Repositories (as the registry names them, `cybozu/setup-hw`) only `user` may pull.
    pub private: BTreeSet<String>,
}

impl std::fmt::Debug for TokenPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenPolicy")
            .field("service", &self.service)
            .field("user", &self.user)
            .field("private", &self.private)
            .finish_non_exhaustive()
    }
}

/// A running token server; stopped when dropped.
#[derive(Debug)]
pub struct TokenServer {
    _server: ServerThread,
    shared: Arc<Shared>,
    /// The CA whose certificate the registry trusts (`auth.token.rootcertbundle`).
    pki: Pki,
}

struct Shared {
    policy: TokenPolicy,
    key: EcdsaKeyPair,
    /// The signing certificate, DER, base64 (the `x5c` header).
    x5c: String,
    rng: SystemRandom,
    issued: AtomicU64,
    refused: AtomicU64,
    base_url: String,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("service", &self.policy.service)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl TokenServer {
    /// Starts the realm on loopback, with a signing key and certificate made for it.
    pub fn start(policy: TokenPolicy) -> Result<Self> {
        let pki = Pki::new("dctest-token-ca")?;
        let signer = pki.client("dctest-token-signer")?;
        let (cert, pkcs8) = der(&signer)?;
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|e| {
            Error::InvalidArgument(format!(
                "{}: not an EC P-256 key: {e}",
                signer.key.display()
            ))
        })?;
        let (listener, _) = bind_loopback("token server")?;
        Self::serve(listener, policy, key, base64_encode(&cert), pki)
    }

    fn serve(
        listener: TcpListener,
        policy: TokenPolicy,
        key: EcdsaKeyPair,
        x5c: String,
        pki: Pki,
    ) -> Result<Self> {
        let addr = bound_address("token server", &listener)?;
        let shared = Arc::new(Shared {
            policy,
            key,
            x5c,
            rng: SystemRandom::new(),
            issued: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            base_url: format!("http://{addr}"),
        });
        let router = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let server = ServerThread::start("token server", listener, router)?;
        Ok(Self {
            _server: server,
            shared,
            pki,
        })
    }

    /// The realm, `http://127.0.0.1:PORT/token`.
    pub fn realm(&self) -> String {
        format!("{}/token", self.shared.base_url)
    }

    pub fn service(&self) -> &str {
        &self.shared.policy.service
    }

    /// The certificate the registry must trust.
    pub fn root_certificate(&self) -> std::path::PathBuf {
        self.pki.ca()
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> u64 {
        self.shared.issued.load(Ordering::SeqCst)
    }

    /// Token requests refused so far (missing or wrong credentials for a private repository).
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

/// The certificate and the PKCS#8 key of `pair`, DER.
fn der(pair: &CertPair) -> Result<(Vec<u8>, Vec<u8>)> {
    let read = |path: &std::path::Path| -> Result<Vec<u8>> {
        let text = std::fs::read_to_string(path)
            .map_err(Error::io(format!("reading {}", path.display())))?;
        let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        base64_decode(&body)
            .ok_or_else(|| Error::InvalidArgument(format!("{}: not PEM", path.display())))
    };
    Ok((read(&pair.cert)?, read(&pair.key)?))
}

fn base64url(bytes: &[u8]) -> String {
    base64_encode(bytes)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let query = parse_query(request.uri().query());
    if request.uri().path() != "/token" {
        return json_response(StatusCode::NOT_FOUND, &json!({ "error": "not found" }));
    }
    let policy = &shared.policy;
    if query_value(&query, "service") != Some(policy.service.as_str()) {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({ "error": format!("unknown service; this realm serves {}", policy.service) }),
        );
    }
    let repos = pulled_repositories(&query);
    let credentials = basic_credentials(request.headers(), &policy.user, &policy.password);
    if credentials == Basic::Invalid {
        shared.refused.fetch_add(1, Ordering::SeqCst);
        return basic_challenge("invalid credentials");
    }
    if credentials == Basic::Missing && repos.iter().any(|r| policy.private.contains(r)) {
        shared.refused.fetch_add(1, Ordering::SeqCst);
        return basic_challenge("credentials required for a private repository");
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let serial = shared.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let header = json!({ "typ": "JWT", "alg": "ES256", "x5c": [shared.x5c] });
    let claims = json!({
        "iss": ISSUER,
        "sub": if credentials == Basic::Valid { policy.user.as_str() } else { "" },
        "aud": policy.service,
        "exp": now + TOKEN_TTL_SECS,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("dctest-{serial}"),
        "access": repos
            .iter()
            .map(|name| json!({ "type": "repository", "name": name, "actions": ["pull"] }))
            .collect::<Vec<_>>(),
    });
    let signing_input = format!(
        "{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    );
    let signature = match shared.key.sign(&shared.rng, signing_input.as_bytes()) {
        Ok(signature) => signature,
        Err(e) => {
            return json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({ "error": format!("signing: {e}") }),
            )
        }
    };
    let token = format!("{signing_input}.{}", base64url(signature.as_ref()));
    json_response(
        StatusCode::OK,
        &json!({ "token": token, "access_token": token, "expires_in": TOKEN_TTL_SECS }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_name_the_pulled_repositories() {
        let query = vec![
            (
                "scope".to_owned(),
                "repository:cybozu/etcd:pull repository:cybozu/x:push".to_owned(),
            ),
            (
                "scope".to_owned(),
                "repository:cybozu/y:pull,push".to_owned(),
            ),
        ];
        let repos: Vec<String> = pulled_repositories(&query).into_iter().collect();
        assert_eq!(repos, ["cybozu/etcd", "cybozu/y"]);
    }

    #[test]
    fn base64url_has_no_padding() {
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }
}
