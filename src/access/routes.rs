//! The route policy: which method and path a client may send through the
//! gateway. Engines serve their clients' API (`/v1/chat/completions`, ...)
//! and, on the same port, control endpoints no client should reach (vLLM's
//! `/sleep` or `/collective_rpc`, SGLang's `/flush_cache`, llama.cpp's
//! `/slots/{id}?action=erase`, every engine's `/metrics`). The default
//! allows the client API only; `docs/routes.md` lists what stays closed and
//! why.
//!
//! Matching is done on the path the engine will route on: percent-decoded
//! once (as Starlette and cpp-httplib decode it), case kept (both route case
//! sensitively). A path whose decoded form has an empty, `.` or `..`
//! segment, a backslash, a control character or bytes that are not UTF-8 is
//! refused whatever the rules say: such a path can mean another route to a
//! server that normalizes it.

use serde::{Deserialize, Serialize};

/// One allowed route: `"METHOD[,METHOD...] PATH"`, `*` for any method; a
/// path ending in `/*` allows everything below it (not the prefix itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    methods: Option<Vec<String>>,
    path: String,
    below: bool,
}

impl Rule {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (m, p) = s
            .trim()
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("route {s:?}: want \"METHOD /path\""))?;
        let p = p.trim();
        if !p.starts_with('/') {
            return Err(format!("route {s:?}: the path must start with /"));
        }
        let methods = if m == "*" {
            None
        } else {
            let list: Vec<String> = m
                .split(',')
                .map(|x| x.trim().to_ascii_uppercase())
                .collect();
            if list
                .iter()
                .any(|x| x.is_empty() || !x.bytes().all(|b| b.is_ascii_alphabetic()))
            {
                return Err(format!("route {s:?}: bad method list"));
            }
            Some(list)
        };
        let (path, below) = match p.strip_suffix("/*") {
            Some(base) => (format!("{base}/"), true),
            None => (p.to_string(), false),
        };
        if path.contains('*') {
            return Err(format!("route {s:?}: `*` only as the last segment"));
        }
        Ok(Self {
            methods,
            path,
            below,
        })
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        let m = self
            .methods
            .as_ref()
            .is_none_or(|ms| ms.iter().any(|x| x == method));
        let p = if self.below {
            path.len() > self.path.len() && path.starts_with(&self.path)
        } else {
            path == self.path || path.strip_suffix('/') == Some(&self.path)
        };
        m && p
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self
            .methods
            .as_ref()
            .map_or("*".to_string(), |m| m.join(","));
        let star = if self.below { "*" } else { "" };
        write!(f, "{m} {}{star}", self.path)
    }
}

impl Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Rule::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The client API of the OpenAI-compatible engines (vLLM, SGLang,
/// llama.cpp): inference, models, tokenizer, health.
pub const DEFAULT_ALLOW: &[&str] = &[
    "POST /v1/chat/completions",
    "POST /v1/completions",
    "POST /v1/responses",
    "GET,DELETE /v1/responses/*",
    "POST /v1/responses/*",
    "POST /v1/embeddings",
    "POST /v1/rerank",
    "POST /rerank",
    "POST /v1/score",
    "POST /score",
    "POST /classify",
    "POST /pooling",
    "POST /v1/audio/transcriptions",
    "POST /v1/audio/translations",
    "GET /v1/models",
    "GET /v1/models/*",
    "POST /tokenize",
    "POST /detokenize",
    "GET /health",
    "GET /ping",
    "GET /version",
];

/// `[routes]`: the route policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RoutesConfig {
    /// The routes clients may use (default: `DEFAULT_ALLOW`).
    pub allow: Vec<Rule>,
    /// Added to `allow` (keeps the defaults).
    pub allow_extra: Vec<Rule>,
    /// Forward every method and path, as before the policy existed (the
    /// path checks still apply).
    pub allow_all: bool,
}

impl Default for RoutesConfig {
    fn default() -> Self {
        Self {
            allow: DEFAULT_ALLOW
                .iter()
                .filter_map(|r| Rule::parse(r).ok())
                .collect(),
            allow_extra: Vec::new(),
            allow_all: false,
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A path no rule allows.
    NotAllowed,
    /// A path spelled so that it could reach another route.
    Suspicious(&'static str),
}

impl RoutesConfig {
    /// May `method` `raw_path` (as the client sent it, without the query)
    /// go to an engine?
    pub fn check(&self, method: &str, raw_path: &str) -> Result<(), Refusal> {
        let path = decoded(raw_path)?;
        if self.allow_all {
            return Ok(());
        }
        let ok = self
            .allow
            .iter()
            .chain(&self.allow_extra)
            .any(|r| r.matches(method, &path));
        if ok {
            Ok(())
        } else {
            Err(Refusal::NotAllowed)
        }
    }
}

/// The path as an engine routes on it, or why it is refused.
fn decoded(raw: &str) -> Result<String, Refusal> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(Refusal::Suspicious("a bad percent-encoding"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    let path =
        String::from_utf8(out).map_err(|_| Refusal::Suspicious("bytes that are not UTF-8"))?;
    if !path.starts_with('/') {
        return Err(Refusal::Suspicious("a path that does not start with /"));
    }
    if path.bytes().any(|b| b == b'\\' || b.is_ascii_control()) {
        return Err(Refusal::Suspicious("a backslash or a control character"));
    }
    // every segment but a final empty one (a trailing slash) must be a name
    let segs: Vec<&str> = path[1..].split('/').collect();
    for (k, s) in segs.iter().enumerate() {
        let last = k + 1 == segs.len();
        if (s.is_empty() && !last) || *s == "." || *s == ".." {
            return Err(Refusal::Suspicious("an empty, . or .. segment"));
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_allows(method: &str, path: &str) -> bool {
        RoutesConfig::default().check(method, path).is_ok()
    }

    #[test]
    fn the_client_api_is_open_and_control_endpoints_are_closed() {
        for (m, p) in [
            ("POST", "/v1/chat/completions"),
            ("POST", "/v1/chat/completions/"),
            ("POST", "/v1/completions"),
            ("POST", "/v1/responses"),
            ("GET", "/v1/responses/resp_123"),
            ("POST", "/v1/responses/resp_123/cancel"),
            ("GET", "/v1/models"),
            ("GET", "/v1/models/tiny"),
            ("POST", "/tokenize"),
            ("GET", "/health"),
        ] {
            assert!(default_allows(m, p), "{m} {p}");
        }
        for (m, p) in [
            ("POST", "/sleep"),
            ("POST", "/wake_up"),
            ("POST", "/reset_prefix_cache"),
            ("POST", "/collective_rpc"),
            ("POST", "/start_profile"),
            ("POST", "/v1/load_lora_adapter"),
            ("POST", "/flush_cache"),
            ("POST", "/update_weights_from_disk"),
            ("POST", "/abort_request"),
            ("POST", "/slots/0"),
            ("GET", "/slots"),
            ("POST", "/props"),
            ("GET", "/metrics"),
            ("POST", "/v1/chat/completions/control"),
            ("GET", "/v1/chat/completions"),
            ("DELETE", "/v1/models/tiny"),
            ("POST", "/v1/models"),
        ] {
            assert!(!default_allows(m, p), "{m} {p}");
        }
    }

    #[test]
    fn hostile_spellings_do_not_slip_past() {
        for p in [
            "/v1/models/../../sleep",
            "/v1/models/%2e%2e/%2e%2e/sleep",
            "/v1/models/%2E%2E/reset_prefix_cache",
            "/v1/models/./tiny",
            "/v1//models",
            "//sleep",
            "/v1/models%2F..%2F..%2Fsleep",
            "/v1/models/..%5csleep",
            "/v1/models/a%00b",
            "/v1/models/%zz",
            "/v1/models/%ff",
            "/v1/models/tiny\\..\\..\\sleep",
        ] {
            let r = RoutesConfig::default().check("GET", p);
            assert!(matches!(r, Err(Refusal::Suspicious(_))), "{p}: {r:?}");
        }
        // case, encoded letters and trailing dots name other routes, none
        // of them allowed
        for (m, p) in [
            ("POST", "/SLEEP"),
            ("POST", "/V1/chat/completions"),
            ("POST", "/sleep."),
            ("POST", "/reset%5Fprefix%5Fcache"),
            ("POST", "/v1/chat/completions."),
            ("POST", "/v1/chat/completions%2Fcontrol"),
        ] {
            assert!(!default_allows(m, p), "{m} {p}");
        }
        // an encoded letter that decodes to an allowed route is that route,
        // for the engine too
        assert!(default_allows("POST", "/v1/chat/%63ompletions"));
        // and even allow_all keeps the path checks
        let all = RoutesConfig {
            allow_all: true,
            ..RoutesConfig::default()
        };
        assert!(all.check("POST", "/sleep").is_ok());
        assert!(all.check("POST", "/v1/models/../sleep").is_err());
    }

    #[test]
    fn rules_parse_and_extra_routes_add_to_the_defaults() {
        assert!(Rule::parse("/sleep").is_err());
        assert!(Rule::parse("POST sleep").is_err());
        assert!(Rule::parse("PO$T /sleep").is_err());
        assert!(Rule::parse("POST /a/*/b").is_err());
        let r = Rule::parse("get,post /slots/*").unwrap();
        assert_eq!(r.to_string(), "GET,POST /slots/*");
        assert!(r.matches("POST", "/slots/0") && !r.matches("POST", "/slots"));
        let cfg = RoutesConfig {
            allow_extra: vec![Rule::parse("* /metrics").unwrap()],
            ..RoutesConfig::default()
        };
        assert!(cfg.check("GET", "/metrics").is_ok());
        assert!(cfg.check("POST", "/v1/chat/completions").is_ok());
        assert!(cfg.check("POST", "/sleep").is_err());
    }
}
