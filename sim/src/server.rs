//! The simulator's HTTP side: OpenAI-compatible routes, request validation
//! with vLLM's status codes, and the streamed body fed by engine events.

use crate::config::{Flavor, ReasoningMode, SimConfig};
use crate::engine::{Engine, Event, Finish, SeqSpec, Submit};
use crate::wire::{error_body, Api, Channel, Render, Usage};
use crate::workload::{self, answer_token, fnv1a, Plan};
use bytes::{Bytes, BytesMut};
use http::{header, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A running simulator.
pub struct Sim {
    pub cfg: Arc<SimConfig>,
    pub engine: Engine,
    counter: AtomicU64,
    started_unix: u64,
}

pub type SimBody = Either<Full<Bytes>, SimStream>;

impl Sim {
    pub fn new(cfg: SimConfig) -> Arc<Self> {
        let engine = Engine::start(cfg.engine.clone(), cfg.time_scale, cfg.host.clone());
        Arc::new(Self {
            cfg: Arc::new(cfg),
            engine,
            counter: AtomicU64::new(0),
            started_unix: unix_now(),
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Serve `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, sim: Arc<Sim>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let sim = Arc::clone(&sim);
        let svc = hyper::service::service_fn(move |req| {
            let sim = Arc::clone(&sim);
            async move { Ok::<_, Infallible>(route(sim, req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

/// Bind and serve in the background; returns the bound address.
pub async fn spawn(
    cfg: SimConfig,
) -> std::io::Result<(SocketAddr, Arc<Sim>, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let sim = Sim::new(cfg);
    let task = tokio::spawn(serve(listener, Arc::clone(&sim)));
    Ok((addr, sim, task))
}

fn full(status: StatusCode, ct: &'static str, body: impl Into<Bytes>) -> Response<SimBody> {
    let mut r = Response::new(Either::Left(Full::new(body.into())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ct));
    r
}

fn error(
    sim: &Sim,
    status: StatusCode,
    kind: &str,
    msg: &str,
    param: Option<&str>,
) -> Response<SimBody> {
    full(
        status,
        "application/json",
        error_body(sim.cfg.flavor, status.as_u16(), kind, msg, param),
    )
}

async fn route(sim: Arc<Sim>, req: Request<Incoming>) -> Response<SimBody> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::POST, "/v1/chat/completions") => generate(sim, req, Api::Chat).await,
        (Method::POST, "/v1/completions") => generate(sim, req, Api::Completions).await,
        (Method::GET, "/v1/models") => models(&sim),
        (Method::GET, "/health") => full(StatusCode::OK, "application/json", ""),
        (Method::GET, "/metrics") => full(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::render(sim.cfg.flavor, &sim.cfg.model, &sim.engine.stats),
        ),
        _ => full(
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"detail":"Not Found"}"#,
        ),
    }
}

fn models(sim: &Sim) -> Response<SimBody> {
    let owner = match sim.cfg.flavor {
        Flavor::Vllm => "vllm",
        Flavor::Sglang => "sglang",
        Flavor::Llamacpp => "llamacpp",
    };
    let body = serde_json::json!({
        "object": "list",
        "data": [{
            "id": sim.cfg.model, "object": "model", "created": sim.started_unix,
            "owned_by": owner, "root": sim.cfg.model, "parent": null,
            "max_model_len": sim.cfg.model_len(),
        }]
    });
    full(StatusCode::OK, "application/json", body.to_string())
}

/// One choice's generation: its plan and how its tokens look on the wire.
#[derive(Debug, Clone)]
struct ChoiceGen {
    plan: Plan,
    /// Tokens of the thinking phase on the wire (words plus inline markers).
    think_wire: u64,
    open_tag: bool,
    close_tag: bool,
    /// Thinking goes inline in content/text (no reasoning parser).
    inline: bool,
    target: u64,
    finish: Finish,
    generated: u64,
    done: bool,
    reasoning: String,
    content: String,
    /// Streamed tokens not sent yet (`stream_interval` above 1): their
    /// channel, text and count.
    pending: Option<(Channel, String, u32)>,
}

impl ChoiceGen {
    fn token(&self, k: u64) -> (Channel, Cow<'static, str>) {
        if k < self.think_wire {
            if self.inline {
                if self.open_tag && k == 0 {
                    return (Channel::Content, "<think>".into());
                }
                if self.close_tag && k == self.think_wire - 1 {
                    return (Channel::Content, "</think>".into());
                }
                return (Channel::Content, self.plan.think_word(k).into());
            }
            return (Channel::Reasoning, self.plan.think_word(k).into());
        }
        let j = k - self.think_wire;
        let t = answer_token(self.plan.text_seed, j, self.plan.answer, self.plan.stated);
        if self.inline && j == 0 && self.think_wire > 0 {
            return (Channel::Content, format!("\n\n{}", t.trim_start()).into());
        }
        (Channel::Content, t)
    }

    fn reasoning_tokens(&self) -> u64 {
        if self.inline {
            0
        } else {
            self.generated.min(self.think_wire)
        }
    }
}

/// The parsed request.
struct Parsed {
    prompt: String,
    /// The question: the last user message (the prompt on completions).
    problem: String,
    system: String,
    effort: Option<String>,
    prompt_tokens: u64,
    n: u32,
    max_tokens: Option<u64>,
    stream: bool,
    include_usage: bool,
    continuous_usage: bool,
    stop: Vec<String>,
    thinking_enabled: bool,
    already_thought: u64,
    closed: bool,
    /// The engine's own thinking budget (vLLM `thinking_token_budget`,
    /// llama.cpp `thinking_budget_tokens`; SGLang has none without a logit
    /// processor).
    thinking_budget: Option<u64>,
    continuing: bool,
    salt: u64,
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str).or(p.as_str()))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn parse(
    sim: &Sim,
    v: &Value,
    api: Api,
) -> Result<Parsed, (StatusCode, &'static str, String, Option<&'static str>)> {
    let bad =
        |m: String, p: Option<&'static str>| (StatusCode::BAD_REQUEST, "BadRequestError", m, p);
    if !v.is_object() {
        return Err(bad("Request body must be a JSON object".into(), None));
    }
    if let Some(m) = v.get("model").and_then(Value::as_str) {
        if m != sim.cfg.model {
            return Err((
                StatusCode::NOT_FOUND,
                "NotFoundError",
                format!("The model `{m}` does not exist."),
                Some("model"),
            ));
        }
    }
    let mut prompt = String::new();
    let (mut problem, mut system) = (String::new(), String::new());
    let mut messages = 0u64;
    let (mut already_thought, mut closed, mut continuing) = (0, false, false);
    match api {
        Api::Chat => {
            let Some(msgs) = v.get("messages").and_then(Value::as_array) else {
                return Err(bad("Field required: messages".into(), Some("messages")));
            };
            if msgs.is_empty() {
                return Err(bad("messages must not be empty".into(), Some("messages")));
            }
            let cont = v
                .get("continue_final_message")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let add_gen = v
                .get("add_generation_prompt")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            if cont && add_gen {
                return Err(bad(
                    "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
                        .into(),
                    None,
                ));
            }
            let last_is_assistant = msgs
                .last()
                .and_then(|m| m.get("role"))
                .and_then(Value::as_str)
                == Some("assistant");
            continuing = cont && last_is_assistant;
            let take = if continuing {
                msgs.len() - 1
            } else {
                msgs.len()
            };
            for m in &msgs[..take] {
                let text = text_of(m.get("content").unwrap_or(&Value::Null));
                match m.get("role").and_then(Value::as_str) {
                    Some("system" | "developer") => system.push_str(&text),
                    Some("user") => problem.clone_from(&text),
                    _ => {}
                }
                prompt.push_str(&text);
                prompt.push('\n');
                messages += 1;
            }
            if problem.is_empty() {
                problem.clone_from(&prompt);
            }
            if continuing {
                let partial = text_of(msgs[msgs.len() - 1].get("content").unwrap_or(&Value::Null));
                let reasoning = msgs[msgs.len() - 1]
                    .get("reasoning")
                    .or_else(|| msgs[msgs.len() - 1].get("reasoning_content"))
                    .map(text_of)
                    .unwrap_or_default();
                let (thought, was_closed) = match partial.find("</think>") {
                    Some(i) => (&partial[..i], true),
                    None => (partial.as_str(), false),
                };
                already_thought = (thought.replace("<think>", "").split_whitespace().count()
                    + reasoning.split_whitespace().count())
                    as u64;
                closed = was_closed;
            }
        }
        Api::Completions => {
            match v.get("prompt") {
                Some(Value::String(s)) => prompt.push_str(s),
                Some(Value::Array(a)) if !a.is_empty() => {
                    // A list of prompts is one request per prompt in vLLM; the
                    // sim serves the first (documented).
                    prompt.push_str(&text_of(&a[0]));
                }
                _ => return Err(bad("Field required: prompt".into(), Some("prompt"))),
            }
            messages = 1;
            // A completion prompt that already closed thinking continues
            // with the answer (used for forced answers on /v1/completions).
            if let Some(i) = prompt.rfind("</think>") {
                let open = prompt[..i].rfind("<think>").map(|o| o + 7).unwrap_or(0);
                already_thought = prompt[open..i].split_whitespace().count() as u64;
                closed = true;
                continuing = true;
                prompt.truncate(prompt[..i].rfind("<think>").unwrap_or(i));
            }
            problem.clone_from(&prompt);
        }
    }
    let n = v.get("n").and_then(Value::as_u64).unwrap_or(1);
    if !(1..=128).contains(&n) {
        return Err(bad("n must be between 1 and 128".into(), Some("n")));
    }
    let max_tokens = v
        .get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| v.get("max_tokens").and_then(Value::as_u64));
    if max_tokens == Some(0) {
        return Err(bad(
            "max_tokens must be at least 1, got 0.".into(),
            Some("max_tokens"),
        ));
    }
    // A continued message's thinking is prompt now (the engine prefills it).
    let per_token = sim.cfg.engine.bytes_per_token.max(0.25);
    let prompt_tokens =
        ((prompt.len() as f64 / per_token) as u64 + 4 * messages).max(1) + already_thought;
    let max_len = sim.cfg.model_len() as u64;
    if prompt_tokens + max_tokens.unwrap_or(0) > max_len {
        return Err(bad(
            format!(
                "This model's maximum context length is {max_len} tokens. However, you requested {} tokens ({prompt_tokens} in the messages, {} in the completion). Please reduce the length of the messages or completion.",
                prompt_tokens + max_tokens.unwrap_or(0),
                max_tokens.unwrap_or(0)
            ),
            None,
        ));
    }
    let so = v.get("stream_options");
    let stop = match v.get("stop") {
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        _ => Vec::new(),
    };
    let effort = v
        .get("reasoning_effort")
        .and_then(Value::as_str)
        .map(String::from);
    let thinking_enabled = v
        .get("chat_template_kwargs")
        .and_then(|k| k.get("enable_thinking"))
        .and_then(Value::as_bool)
        .unwrap_or(effort.as_deref() != Some("none"))
        && sim.cfg.reasoning != ReasoningMode::None;
    let salt = v.get("seed").and_then(Value::as_u64).unwrap_or(0)
        ^ v.get("temperature")
            .and_then(Value::as_f64)
            .map(|t| (t * 1000.0) as u64)
            .unwrap_or(0);
    Ok(Parsed {
        prompt,
        problem,
        system,
        effort,
        prompt_tokens,
        n: n as u32,
        max_tokens,
        stream: v.get("stream").and_then(Value::as_bool).unwrap_or(false),
        include_usage: so
            .and_then(|s| s.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
        continuous_usage: so
            .and_then(|s| s.get("continuous_usage_stats"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
        stop,
        thinking_enabled,
        already_thought,
        closed,
        continuing,
        salt,
        thinking_budget: match sim.cfg.flavor {
            Flavor::Vllm => v.get("thinking_token_budget"),
            Flavor::Llamacpp => v.get("thinking_budget_tokens"),
            Flavor::Sglang => None,
        }
        .and_then(Value::as_u64),
    })
}

fn choice_gen(sim: &Sim, p: &Parsed, api: Api, choice: u32) -> ChoiceGen {
    let plan = workload::plan(
        &sim.cfg.workload,
        sim.cfg.seed,
        &workload::Ask {
            prompt: &p.prompt,
            problem: &p.problem,
            system: &p.system,
            effort: p.effort.as_deref(),
            choice,
            salt: p.salt,
            thinking_enabled: p.thinking_enabled,
            already_thought: p.already_thought,
            closed: p.closed,
            budget: p.thinking_budget,
        },
    );
    let mode = sim.cfg.reasoning;
    let inline =
        api == Api::Completions || matches!(mode, ReasoningMode::Tags | ReasoningMode::TagsNoOpen);
    let thinking_open = p.thinking_enabled && !p.closed;
    let (open_tag, close_tag) = if inline && thinking_open {
        (mode != ReasoningMode::TagsNoOpen && !p.continuing, true)
    } else {
        (false, false)
    };
    let think_wire = if thinking_open {
        plan.think + u64::from(open_tag) + u64::from(close_tag)
    } else {
        0
    };
    let mut g = ChoiceGen {
        plan,
        think_wire,
        open_tag,
        close_tag,
        inline,
        target: 0,
        finish: Finish::Stop,
        generated: 0,
        done: false,
        reasoning: String::new(),
        content: String::new(),
        pending: None,
    };
    let mut natural = think_wire + g.plan.answer;
    if !p.stop.is_empty() {
        // Stop strings end the answer at the token that completes one.
        let mut text = String::new();
        for j in 0..g.plan.answer {
            text.push_str(&g.token(think_wire + j).1);
            if p.stop.iter().any(|s| text.contains(s.as_str())) {
                natural = think_wire + j;
                break;
            }
        }
    }
    // Without max_tokens, vLLM allows up to the model length.
    let room = (sim.cfg.model_len() as u64).saturating_sub(p.prompt_tokens);
    let cap = p.max_tokens.unwrap_or(room).min(room);
    g.target = natural.min(cap).max(1);
    g.finish = if natural <= cap {
        Finish::Stop
    } else {
        Finish::Length
    };
    g
}

async fn generate(sim: Arc<Sim>, req: Request<Incoming>, api: Api) -> Response<SimBody> {
    let arrival = Instant::now();
    let body = match Limited::new(req.into_body(), 64 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                &sim,
                StatusCode::BAD_REQUEST,
                "BadRequestError",
                "could not read the request body",
                None,
            )
        }
    };
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                &sim,
                StatusCode::BAD_REQUEST,
                "BadRequestError",
                &format!("JSON decode error: {e}"),
                None,
            )
        }
    };
    let p = match parse(&sim, &v, api) {
        Ok(p) => p,
        Err((status, kind, msg, param)) => return error(&sim, status, kind, &msg, param),
    };
    let choices: Vec<ChoiceGen> = (0..p.n).map(|i| choice_gen(&sim, &p, api, i)).collect();
    let bs = sim.engine.block_size * 4; // ~4 bytes per token
    let mut hashes = Vec::with_capacity(p.prompt.len() / bs.max(1));
    let mut h = sim.cfg.seed;
    for chunk in p.prompt.as_bytes().chunks_exact(bs.max(1)) {
        h = fnv1a(chunk, h);
        hashes.push(h);
    }
    let hashes: Arc<[u64]> = hashes.into();
    let (tx, rx) = mpsc::unbounded_channel();
    let seqs = choices
        .iter()
        .enumerate()
        .map(|(i, c)| SeqSpec {
            choice: i as u32,
            prompt_tokens: p.prompt_tokens.min(u64::from(u32::MAX)) as u32,
            block_hashes: Arc::clone(&hashes),
            target: c.target.min(u64::from(u32::MAX)) as u32,
            finish: c.finish,
        })
        .collect();
    if !sim.engine.submit(Submit {
        seqs,
        events: tx,
        arrival,
    }) {
        return error(
            &sim,
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "engine stopped",
            None,
        );
    }
    let id = sim.counter.fetch_add(1, Ordering::Relaxed) ^ (sim.cfg.seed << 40);
    let render = Render::new(
        sim.cfg.flavor,
        sim.cfg.reasoning,
        api,
        id,
        unix_now(),
        &sim.cfg.model,
        p.continuous_usage && p.include_usage,
    );
    let gen = Gen {
        render,
        choices,
        prompt_tokens: p.prompt_tokens,
        include_usage: p.include_usage,
        stream_interval: sim.cfg.engine.stream_interval.max(1),
    };
    if p.stream {
        let mut buf = BytesMut::with_capacity(1024);
        for i in 0..gen.choices.len() {
            gen.render.role_chunk(&mut buf, i as u32, Some(gen.usage()));
        }
        let mut r = Response::new(Either::Right(SimStream {
            rx,
            gen,
            buf,
            finished: false,
            ended: false,
        }));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        return r;
    }
    non_streamed(gen, rx).await
}

struct Gen {
    render: Render,
    choices: Vec<ChoiceGen>,
    prompt_tokens: u64,
    include_usage: bool,
    /// Tokens per streamed event.
    stream_interval: u32,
}

impl Gen {
    fn usage(&self) -> Usage {
        Usage {
            prompt: self.prompt_tokens,
            completion: self.choices.iter().map(|c| c.generated).sum(),
            reasoning: self.choices.iter().map(ChoiceGen::reasoning_tokens).sum(),
        }
    }

    fn all_done(&self) -> bool {
        self.choices.iter().all(|c| c.done)
    }

    /// Apply one engine event; write its chunk to `buf` when streaming.
    fn apply(&mut self, ev: Event, buf: Option<&mut BytesMut>) {
        let (choice, finish) = match ev {
            Event::Token { choice } => (choice, None),
            Event::Finished { choice, reason } => (choice, Some(reason)),
        };
        let Some(c) = self.choices.get_mut(choice as usize) else {
            return;
        };
        if c.done {
            return;
        }
        match finish {
            None => {
                let k = c.generated;
                c.generated += 1;
                let last = c.generated >= c.target;
                if last {
                    c.done = true;
                }
                let (channel, text) = c.token(k);
                let fin = last.then_some(c.finish.as_str());
                match buf {
                    Some(buf) if self.stream_interval > 1 => {
                        // merged: a channel change sends what waits first
                        let (prev, send) = match c.pending.take() {
                            Some((ch, mut t, n)) if ch == channel => {
                                t.push_str(&text);
                                (None, (ch, t, n + 1))
                            }
                            other => (other, (channel, text.into_owned(), 1)),
                        };
                        let full = send.2 >= self.stream_interval || fin.is_some();
                        let usage = self.render.continuous_usage.then(|| self.usage());
                        let c = &mut self.choices[choice as usize];
                        if let Some((ch, t, _)) = prev {
                            self.render.token_chunk(buf, choice, ch, &t, None, usage);
                        }
                        if full {
                            self.render
                                .token_chunk(buf, choice, send.0, &send.1, fin, usage);
                        } else {
                            c.pending = Some(send);
                        }
                    }
                    Some(buf) => {
                        let usage = self.render.continuous_usage.then(|| self.usage());
                        self.render
                            .token_chunk(buf, choice, channel, &text, fin, usage);
                    }
                    None => match channel {
                        Channel::Reasoning => c.reasoning.push_str(&text),
                        Channel::Content => c.content.push_str(&text),
                    },
                }
            }
            Some(reason) => {
                // A finish without a token (the request could never fit).
                c.done = true;
                c.finish = reason;
                let pending = c.pending.take();
                if let Some(buf) = buf {
                    let usage = self.render.continuous_usage.then(|| self.usage());
                    if let Some((ch, t, _)) = pending {
                        self.render.token_chunk(buf, choice, ch, &t, None, usage);
                    }
                    self.render.token_chunk(
                        buf,
                        choice,
                        Channel::Content,
                        "",
                        Some(reason.as_str()),
                        usage,
                    );
                }
            }
        }
    }
}

async fn non_streamed(mut gen: Gen, mut rx: mpsc::UnboundedReceiver<Event>) -> Response<SimBody> {
    while !gen.all_done() {
        match rx.recv().await {
            Some(ev) => gen.apply(ev, None),
            None => break,
        }
    }
    let r = &gen.render;
    let choices: Vec<Value> = gen
        .choices
        .iter()
        .enumerate()
        .map(|(i, c)| match r.api {
            Api::Chat => {
                let mut msg = serde_json::json!({"role": "assistant", "content": c.content, "tool_calls": []});
                if !c.inline && !c.reasoning.is_empty() {
                    msg[r.reasoning_field] = Value::String(c.reasoning.clone());
                }
                serde_json::json!({"index": i, "message": msg, "logprobs": null, "finish_reason": c.finish.as_str(), "stop_reason": null})
            }
            Api::Completions => {
                serde_json::json!({"index": i, "text": c.content, "logprobs": null, "finish_reason": c.finish.as_str(), "stop_reason": null})
            }
        })
        .collect();
    let object = match r.api {
        Api::Chat => "chat.completion",
        Api::Completions => "text_completion",
    };
    let body = serde_json::json!({
        "id": r.id, "object": object, "created": r.created, "model": r.model,
        "choices": choices, "usage": r.usage_value(gen.usage()),
    });
    full(StatusCode::OK, "application/json", body.to_string())
}

/// The streamed response: engine events become SSE chunks; several events
/// that are ready together go out in one frame.
pub struct SimStream {
    rx: mpsc::UnboundedReceiver<Event>,
    gen: Gen,
    buf: BytesMut,
    finished: bool,
    ended: bool,
}

impl Body for SimStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        let mut n = 0;
        while !this.finished && n < 512 {
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(ev)) => {
                    this.gen.apply(ev, Some(&mut this.buf));
                    n += 1;
                    if this.gen.all_done() {
                        this.finish();
                    }
                }
                Poll::Ready(None) => this.finish(),
                Poll::Pending => break,
            }
        }
        if !this.buf.is_empty() {
            return Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze()))));
        }
        if this.finished {
            this.ended = true;
            return Poll::Ready(None);
        }
        if n >= 512 {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

impl SimStream {
    fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        if self.gen.include_usage {
            let u = self.gen.usage();
            self.gen.render.usage_chunk(&mut self.buf, u);
        }
        Render::done(&mut self.buf);
    }
}
