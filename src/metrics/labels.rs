//! Label values, typed: a series carries only what these enums list, and
//! the README's metric table names every one (`tests/metric_labels.rs`).

use metrics::SharedString;

macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $value:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $value),+ }
            }
        }
    };
}

label_values! {
    /// `kind` of `thinkgate_upstream_errors_total`.
    UpstreamError {
        Connect => "connect",
        Timeout => "timeout",
        Reset => "reset",
        Idle => "idle",
        StreamError => "stream_error",
        Truncated => "truncated",
    }
}

label_values! {
    /// `result` of `thinkgate_hedges_total`.
    HedgeResult { Sent => "sent", Won => "won", Wasted => "wasted" }
}

label_values! {
    /// `kind` of `thinkgate_extra_legs_refused_total` (and of a record's
    /// `extra_refused` action): what spends from the budget retries and
    /// hedges share.
    LegKind { Retry => "retry", Hedge => "hedge" }
}

impl serde::Serialize for LegKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

label_values! {
    /// `kind` of `thinkgate_output_tokens_total`.
    TokenKind { Thinking => "thinking", Visible => "visible" }
}

label_values! {
    /// `trigger` of `thinkgate_forced_answers_total`.
    ForcedTrigger { Budget => "budget", Deadline => "deadline", Loop => "loop" }
}

label_values! {
    /// `api` of every request-level series: the inference API the request
    /// used (`/v1/chat/completions`, `/v1/completions`, `/v1/responses`),
    /// `other` for every other path.
    Api { Chat => "chat", Completions => "completions", Responses => "responses", Other => "other" }
}

label_values! {
    /// `way` of `thinkgate_forced_answers_total`.
    ForcedWayLabel { Continuation => "continuation", Native => "native" }
}

label_values! {
    /// `kind` of `thinkgate_tls_errors_total`: why a TLS handshake failed
    /// (`crate::tls` says it in words and reads it from rustls's errors).
    TlsFailure {
        UnknownCa => "unknown_ca",
        NameMismatch => "name_mismatch",
        Expired => "expired",
        BadCertificate => "bad_certificate",
        Refused => "refused",
        Handshake => "handshake",
    }
}

label_values! {
    /// `side` of `thinkgate_tls_errors_total`: an https engine, or a
    /// client of the https listener.
    TlsSide { Upstream => "upstream", Listener => "listener" }
}

label_values! {
    /// `result` of `thinkgate_config_reloads_total`.
    ReloadResult { Ok => "ok", Error => "error" }
}

/// `reason` of `thinkgate_retries_total` (and of a record's `retry`
/// action): the attempt could not connect, lost its connection before the
/// response head, or answered a status the config retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    Connect,
    Reset,
    Status(u16),
}

impl RetryReason {
    /// The fixed values (`Status` is the code itself).
    pub const FIXED: &'static [&'static str] = &["connect", "reset"];

    pub fn label(self) -> SharedString {
        match self {
            RetryReason::Connect => SharedString::const_str("connect"),
            RetryReason::Reset => SharedString::const_str("reset"),
            RetryReason::Status(s) => super::status_label(s),
        }
    }
}

impl serde::Serialize for RetryReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.label())
    }
}
