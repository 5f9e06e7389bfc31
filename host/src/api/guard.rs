//! What every request passes before it reaches an endpoint, in order:
//! the `Host` header must be the API's own address (a web page that
//! rebinds its DNS name to 127.0.0.1 sends its own name), the token must
//! match, and a POST must carry JSON (a form that another site's page
//! posts cannot). Every request, let through or denied, goes to the
//! audit log with its remote address and status.

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// The file the host keeps its token in when the config gives none.
pub const TOKEN_FILE: &str = "api.token";

pub struct Guard {
    /// `Host` values that name this API.
    hosts: Vec<String>,
    token: String,
}

impl Guard {
    pub fn new(listen: SocketAddr, token: String) -> Guard {
        let mut hosts = vec![listen.to_string()];
        if listen.ip().is_loopback() {
            hosts.push(format!("localhost:{}", listen.port()));
        }
        Guard { hosts, token }
    }

    fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !self.hosts.iter().any(|h| h == host) {
            return Err((
                StatusCode::FORBIDDEN,
                format!(
                    "Host '{host}' is not this API's address ({}); refused (DNS rebinding)",
                    self.hosts.join(" or ")
                ),
            ));
        }
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "));
        match given {
            None => {
                return Err((
                    StatusCode::UNAUTHORIZED,
                    format!(
                        "no token: send `Authorization: Bearer TOKEN`, the token in STATE_DIR/{TOKEN_FILE} or `api.token`"
                    ),
                ));
            }
            Some(given) if !same(given.as_bytes(), self.token.as_bytes()) => {
                return Err((StatusCode::UNAUTHORIZED, "wrong token".into()));
            }
            Some(_) => {}
        }
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|t| t.trim_start().starts_with("application/json"));
        if method == Method::POST && !json {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "a POST needs `Content-Type: application/json`".into(),
            ));
        }
        Ok(())
    }
}

/// Compares in time that does not depend on where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The middleware: checks, answers or passes on, and audits.
pub async fn guard(
    State(guard): State<Arc<Guard>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let denied = guard.check(&method, request.headers()).err();
    let response = match &denied {
        None => next.run(request).await,
        Some((status, why)) => super::error(*status, why).into_response(),
    };
    crate::audit::record(
        "api",
        serde_json::json!({
            "remote": remote.to_string(),
            "method": method.as_str(),
            "path": path,
            "status": response.status().as_u16(),
            "denied": denied.map(|(_, why)| why),
        }),
    );
    response
}

/// The token requests must carry: `api.token` if the config gives one,
/// else the one in the state folder, made there on first use when `make`
/// (the host) and otherwise only read (the CLI). Read through a
/// `${file:..}` reference, so its value is scrubbed from every output.
pub fn token(config: &crate::config::Config, make: bool) -> anyhow::Result<String> {
    if let Some(token) = &config.api.token {
        return token
            .resolve()
            .map_err(|e| anyhow::anyhow!("api.token: {e}"));
    }
    let path = config.state_dir.join(TOKEN_FILE);
    if make && !path.exists() {
        let token = hex::encode(rand::random::<[u8; 32]>());
        crate::config::create_private_dir(&config.state_dir)
            .and_then(|()| crate::config::write_private(&path, token.as_bytes()))
            .map_err(|e| anyhow::anyhow!("state_dir: cannot make {}: {e}", path.display()))?;
    }
    token_from_file(&path)
}

fn token_from_file(path: &Path) -> anyhow::Result<String> {
    let reference = format!("${{file:{}}}", path.display());
    let token = crate::config::Secret::new(reference).resolve().map_err(|e| {
        anyhow::anyhow!("no API token: {e}; `sluice run` makes it in the state folder at its first start, or set `api.token`")
    })?;
    Ok(token.trim().to_string())
}
