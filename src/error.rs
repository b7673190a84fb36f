//! Errors of the gateway, and the one place that turns them into an
//! OpenAI-style JSON error response with the right status code.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;
use std::path::PathBuf;

/// Whose fault a failure was; recorded with every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    Client,
    Upstream,
    Gateway,
}

impl Fault {
    /// The record's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Upstream => "upstream",
            Fault::Gateway => "gateway",
        }
    }
}

/// A request the gateway answers itself instead of forwarding.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("upstream {backend} is unreachable: {reason}")]
    UpstreamUnreachable { backend: String, reason: String },
    /// The TLS handshake with an `https://` engine failed: `kind` is the
    /// label of `thinkgate_tls_errors_total`, `why` says it in words.
    #[error("TLS to upstream {backend} failed ({kind}): {why}; {reason}")]
    UpstreamTls {
        backend: String,
        kind: &'static str,
        why: &'static str,
        reason: String,
    },
    #[error("upstream {backend} sent no response head within {secs} s")]
    UpstreamTimeout { backend: String, secs: u64 },
    #[error("request body exceeds the gateway limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("request body could not be read: {0}")]
    BodyRead(String),
    #[error("request body not received within {secs} s")]
    BodyTimeout { secs: u64 },
    #[error("{0}")]
    NoBackend(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the gateway is at its limit of {limit} requests in flight; retry shortly")]
    Overloaded { limit: usize },
    #[error("every backend is at its limit of {limit} requests in flight; retry shortly")]
    BackendsBusy { limit: u64 },
    /// The route policy (`[routes]`) does not open this method and path.
    #[error("{method} {path} is not open to clients of this gateway")]
    RouteNotAllowed { method: String, path: String },
    /// `[auth]` is on and the request carried no known key.
    #[error("Incorrect API key provided: send a key this gateway knows as `Authorization: Bearer <key>`")]
    Unauthorized,
    /// A client key's limit (`max_inflight`, `rps`).
    #[error("client {client} is over its limit; retry after {} s", .retry_after.as_secs().max(1))]
    RateLimited {
        client: String,
        retry_after: std::time::Duration,
    },
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::UpstreamUnreachable { .. } | GatewayError::UpstreamTls { .. } => {
                StatusCode::BAD_GATEWAY
            }
            GatewayError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BodyRead(_) => StatusCode::BAD_REQUEST,
            GatewayError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            GatewayError::NoBackend(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::Overloaded { .. } | GatewayError::BackendsBusy { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::RouteNotAllowed { .. } => StatusCode::NOT_FOUND,
            GatewayError::Unauthorized => StatusCode::UNAUTHORIZED,
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            GatewayError::UpstreamUnreachable { .. }
            | GatewayError::UpstreamTls { .. }
            | GatewayError::UpstreamTimeout { .. } => Fault::Upstream,
            GatewayError::BodyTooLarge { .. }
            | GatewayError::BodyRead(_)
            | GatewayError::BodyTimeout { .. }
            | GatewayError::BadRequest(_)
            | GatewayError::RouteNotAllowed { .. }
            | GatewayError::Unauthorized
            | GatewayError::RateLimited { .. } => Fault::Client,
            GatewayError::NoBackend(_) => Fault::Upstream,
            GatewayError::Overloaded { .. } | GatewayError::BackendsBusy { .. } => Fault::Gateway,
        }
    }

    /// The OpenAI error `type` string.
    fn kind(&self) -> &'static str {
        match self {
            GatewayError::UpstreamUnreachable { .. } => "upstream_unreachable",
            GatewayError::UpstreamTls { .. } => "upstream_tls_error",
            GatewayError::UpstreamTimeout { .. } => "upstream_timeout",
            GatewayError::BodyTooLarge { .. } => "invalid_request_error",
            GatewayError::BodyRead(_) => "invalid_request_error",
            GatewayError::BodyTimeout { .. } => "request_timeout",
            GatewayError::NoBackend(_) => "no_healthy_backend",
            GatewayError::BadRequest(_) => "invalid_request_error",
            GatewayError::Overloaded { .. } | GatewayError::BackendsBusy { .. } => "overloaded",
            GatewayError::RouteNotAllowed { .. } => "not_found_error",
            GatewayError::Unauthorized => "invalid_request_error",
            GatewayError::RateLimited { .. } => "rate_limit_exceeded",
        }
    }

    /// `{"error": {"message", "type", "param", "code"}}` as OpenAI and vLLM
    /// send it.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let status = self.status();
        let mut r = error_response(status, self.kind(), &self.to_string());
        if status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        if let GatewayError::RateLimited { retry_after, .. } = self {
            let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        if let GatewayError::Unauthorized = self {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

/// An OpenAI-style error response.
pub fn error_response(status: StatusCode, kind: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "error": {
            "message": message,
            "type": kind,
            "param": null,
            "code": status.as_u16(),
        }
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Configuration problems: reported at startup, before anything listens.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("cannot parse config {0}: {1}")]
    Parse(PathBuf, Box<toml::de::Error>),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}
