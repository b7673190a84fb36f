//! Sends one request and measures its response from the client side with
//! the same observer the gateway uses (`thinkgate-asu`): `t_recv` is the
//! moment the request is handed to the connection.

use crate::dataset::Item;
use bytes::Bytes;
use http::{header, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thinkgate_asu::{BodyKind, Observer, ObserverConfig, Summary};

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn http_client() -> HttpClient {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.set_connect_timeout(Some(Duration::from_secs(10)));
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(usize::MAX)
        .build(conn)
}

/// What one request became (a line of `requests.jsonl`, read back by
/// `load compare`).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RequestResult {
    pub index: usize,
    /// Planned send time, seconds since the run started.
    pub scheduled_s: f64,
    /// How late the send was against its plan.
    pub lateness_s: f64,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub difficulty: Option<String>,
    pub domain: Option<String>,
    /// The application of a mixed-traffic item.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    pub reference: String,
    pub extracted: Option<String>,
    pub correct: bool,
    /// `x-thinkgate-backend` and `x-thinkgate-arm`, when a gateway sent them.
    pub backend: Option<String>,
    pub arm: Option<String>,
    pub request_id: Option<String>,
    /// `x-thinkgate-predicted-thinking`: the gateway's prediction of this
    /// request's thinking tokens, made before it ran (`difficulty_aware`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_thinking: Option<f64>,
    /// Seconds since the run started when the response ended.
    pub done_at_s: f64,
    pub ttft_s: Option<f64>,
    pub ttfvt_s: Option<f64>,
    pub thinking_s: Option<f64>,
    pub e2e_s: f64,
    pub tpot_s: Option<f64>,
    pub itl_max_s: Option<f64>,
    pub itl_mean_s: Option<f64>,
    pub thinking_tokens: u64,
    pub visible_tokens: u64,
    pub token_source: thinkgate_asu::TokenSource,
    pub finish_reason: Option<String>,
    #[serde(skip)]
    pub summary: Option<Summary>,
}

impl RequestResult {
    pub fn ok(&self) -> bool {
        self.error.is_none() && (200..300).contains(&self.status)
    }
}

/// Everything a request needs, shared by all of them.
pub struct Target {
    pub client: HttpClient,
    /// Base URLs; request `i` goes to one drawn from a hash of `i` (one URL:
    /// all to it).
    pub urls: Vec<String>,
    pub chat: bool,
    pub model: String,
    pub template: String,
    pub max_tokens: Option<u64>,
    pub stream: bool,
    pub include_usage: bool,
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Extra request headers (`--header`).
    pub headers: http::HeaderMap,
    pub observer: Arc<ObserverConfig>,
    pub timeout: Duration,
    /// Each request's `x-request-id` is `{id_prefix}-{index}` (unless
    /// `--header` sets one), so gateway records and engine logs match
    /// the load generator's `requests.jsonl`.
    pub id_prefix: String,
    /// Oracle mode: send each item's difficulty label as the client hint
    /// `x-thinkgate-difficulty`, which production traffic does not carry;
    /// it shows the ceiling of difficulty-aware routing.
    pub oracle: bool,
}

impl Target {
    /// The request body for `item` (built ahead of its send time).
    pub fn body(&self, item: &Item) -> Bytes {
        let prompt = crate::dataset::render_prompt(&self.template, item);
        let mut m = serde_json::Map::new();
        m.insert("model".into(), self.model.clone().into());
        let earlier = item.system.iter().map(|s| ("system", s.as_str())).chain(
            item.history
                .iter()
                .map(|t| (t.role.as_str(), t.content.as_str())),
        );
        if self.chat {
            let mut messages: Vec<serde_json::Value> = earlier
                .map(|(role, content)| serde_json::json!({"role": role, "content": content}))
                .collect();
            messages.push(serde_json::json!({"role": "user", "content": prompt}));
            m.insert("messages".into(), messages.into());
        } else {
            let mut text: String = earlier.map(|(_, c)| format!("{c}\n\n")).collect();
            text.push_str(&prompt);
            m.insert("prompt".into(), text.into());
        }
        if let Some(t) = self.max_tokens {
            m.insert("max_tokens".into(), t.into());
        }
        m.insert("stream".into(), self.stream.into());
        if self.stream && self.include_usage {
            m.insert(
                "stream_options".into(),
                serde_json::json!({"include_usage": true}),
            );
        }
        for (k, v) in self.extra.iter().chain(item.body.iter().flatten()) {
            m.insert(k.clone(), v.clone());
        }
        Bytes::from(serde_json::Value::Object(m).to_string())
    }

    fn path(&self) -> &'static str {
        if self.chat {
            "/v1/chat/completions"
        } else {
            "/v1/completions"
        }
    }
}

fn header_str(h: &http::HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(200).collect())
}

/// Send `item` now and measure the response. `run_start` anchors the
/// timeline of the run.
pub async fn send(
    t: &Target,
    index: usize,
    item: &Item,
    scheduled: Duration,
    run_start: Instant,
) -> RequestResult {
    let body = t.body(item);
    let sent = Instant::now();
    let lateness = sent
        .saturating_duration_since(run_start + scheduled)
        .as_secs_f64();
    let mut r = RequestResult {
        index,
        scheduled_s: scheduled.as_secs_f64(),
        lateness_s: lateness,
        status: 0,
        error: None,
        difficulty: item.difficulty.clone(),
        domain: item.domain.clone(),
        app: item.app.clone(),
        reference: item.answer.clone(),
        extracted: None,
        correct: false,
        backend: None,
        arm: None,
        request_id: None,
        predicted_thinking: None,
        done_at_s: 0.0,
        ttft_s: None,
        ttfvt_s: None,
        thinking_s: None,
        e2e_s: 0.0,
        tpot_s: None,
        itl_max_s: None,
        itl_mean_s: None,
        thinking_tokens: 0,
        visible_tokens: 0,
        token_source: thinkgate_asu::TokenSource::None,
        finish_reason: None,
        summary: None,
    };
    let url = match t.urls.len() {
        0 | 1 => t.urls.first().map(String::as_str).unwrap_or_default(),
        n => {
            // splitmix64 of the index: a fixed, even spread
            let mut z = (index as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            &t.urls[((z ^ (z >> 31)) % n as u64) as usize]
        }
    };
    let mut req = Request::post(format!("{url}{}", t.path()))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(h) = req.headers_mut() {
        h.extend(t.headers.clone());
        if t.oracle {
            if let Some(v) = item
                .difficulty
                .as_deref()
                .and_then(|d| http::HeaderValue::from_str(d).ok())
            {
                h.insert("x-thinkgate-difficulty", v);
            }
        }
        if !h.contains_key("x-request-id") {
            let id = format!("{}-{index}", t.id_prefix);
            if let Ok(v) = http::HeaderValue::from_str(&id) {
                h.insert("x-request-id", v);
                r.request_id = Some(id);
            }
        }
    }
    let req = req.body(Full::new(body));
    let req = match req {
        Ok(q) => q,
        Err(e) => {
            r.error = Some(format!("bad request: {e}"));
            return r;
        }
    };
    let outcome = tokio::time::timeout(t.timeout, async {
        let resp = t
            .client
            .request(req)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status();
        let h = resp.headers();
        let gw = GatewayHeaders {
            backend: header_str(h, "x-thinkgate-backend"),
            arm: header_str(h, "x-thinkgate-arm"),
            request_id: header_str(h, "x-thinkgate-request-id"),
            predicted_thinking: header_str(h, "x-thinkgate-predicted-thinking")
                .and_then(|v| v.parse().ok()),
        };
        let ct = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let mut obs = Observer::new(Arc::clone(&t.observer), BodyKind::from_content_type(ct));
        let mut body = resp.into_body();
        let mut err_text = Vec::new();
        let mut broken = None;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Some(d) = f.data_ref() {
                        obs.feed(d, sent.elapsed().as_nanos() as u64);
                        if !status.is_success() && err_text.len() < 2048 {
                            err_text.extend_from_slice(&d[..d.len().min(2048)]);
                        }
                    }
                }
                Err(e) => {
                    broken = Some(format!("response body broken: {e}"));
                    break;
                }
            }
        }
        let summary = obs.finish(sent.elapsed().as_nanos() as u64);
        Ok::<_, String>((status.as_u16(), gw, summary, broken, err_text))
    })
    .await;
    r.done_at_s = run_start.elapsed().as_secs_f64();
    match outcome {
        Err(_) => r.error = Some(format!("timed out after {} s", t.timeout.as_secs())),
        Ok(Err(e)) => r.error = Some(e),
        Ok(Ok((status, gw, s, broken, err_text))) => {
            r.status = status;
            r.backend = gw.backend;
            r.arm = gw.arm;
            r.predicted_thinking = gw.predicted_thinking;
            if gw.request_id.is_some() {
                r.request_id = gw.request_id;
            }
            if !(200..300).contains(&status) {
                r.error = Some(
                    String::from_utf8_lossy(&err_text)
                        .chars()
                        .take(300)
                        .collect(),
                );
            } else if let Some(b) = broken {
                r.error = Some(b);
            } else if s.error_event {
                r.error = Some("error event in stream".into());
            } else if s.streamed && !s.done_marker {
                r.error = Some("stream ended without [DONE]".into());
            }
            fill(&mut r, item, s);
        }
    }
    r
}

/// The `x-thinkgate-*` response headers a gateway sent.
struct GatewayHeaders {
    backend: Option<String>,
    arm: Option<String>,
    request_id: Option<String>,
    predicted_thinking: Option<f64>,
}

fn fill(r: &mut RequestResult, item: &Item, s: Summary) {
    let content: String = s
        .text
        .iter()
        .flatten()
        .take(1)
        .map(|t| t.content.as_str())
        .collect();
    r.extracted = crate::grade::extract(&content, item.choices.is_some());
    r.correct = r.ok()
        && r.extracted
            .as_deref()
            .is_some_and(|e| crate::grade::matches(e, &item.answer));
    r.ttft_s = s.ttft();
    r.ttfvt_s = s.ttfvt();
    r.thinking_s = s.thinking_time();
    r.e2e_s = s.e2e();
    r.tpot_s = s.tpot();
    r.itl_max_s = s.itl_max_ns.map(|n| n as f64 / 1e9);
    r.itl_mean_s = s.itl_mean_ns.map(|n| n as f64 / 1e9);
    r.thinking_tokens = s.thinking_tokens;
    r.visible_tokens = s.visible_tokens;
    r.token_source = s.token_source;
    r.finish_reason = s.finish_reason.clone();
    r.summary = Some(s);
}
