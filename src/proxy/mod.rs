//! The request pipeline: a tower `Service` whose `forward` takes every
//! request through named phases, in order (`docs/lifecycle.md` walks them
//! with the timestamps, metrics and record fields of each):
//!
//! 1. `open`: the request's context and id (`t_recv`); `guard`: the route
//!    policy and the client key (404, 401, 429 before anything else);
//! 2. `admit`: the global in-flight limit, a bounded wait, or a 503;
//! 3. `read`: an inference body read whole (bounded), its features
//!    parsed, usage injected; other bodies stream through untouched;
//! 4. `route`: the experiment arm, the straggler plan, the backend;
//! 5. `outgoing`: the upstream request (headers cleaned, id, body) and
//!    which path answers it;
//! 6. the **managed** path (`crate::managed`: budgets, deadlines, hedging)
//!    or the **plain** one (`plain`: bytes pass through, observed).
//!
//! Every phase returns `Result<_, GatewayError>`; an error becomes the
//! client's response in one place (`body::response::error_response`), which
//! also settles the request.

mod admit;
mod guard;
mod open;
mod outgoing;
mod plain;
mod read;
mod route;

use crate::body::response::error_response;
use crate::state::Shared;
use http::{Request, Response};
use hyper::body::Incoming;
use outgoing::Path;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

pub use crate::body::response::ResponseBody;

/// The proxy as a tower service.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

impl Proxy {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl tower::Service<Request<Incoming>> for Proxy {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { Ok(forward(shared, req).await) })
    }
}

/// One request, phase by phase (see the module docs).
async fn forward(shared: Arc<Shared>, req: Request<Incoming>) -> Response<ResponseBody> {
    let (parts, body) = req.into_parts();
    let (mut ctx, minted) = open::context(&shared, &parts);
    let path = async {
        guard::check(&shared, &mut ctx, &parts)?;
        // grades of earlier requests, sent inline (the request goes on as is)
        for f in crate::feedback::from_headers(&parts.headers) {
            shared.recorder.send_feedback(f);
        }
        admit::slot(&shared, &mut ctx).await?;
        let inbound = read::request(&shared, &mut ctx, parts, body).await?;
        let routed = route::pick(&shared, &mut ctx, &inbound).await?;
        shared
            .extra_legs
            .on_request(routed.fleet.straggler.extra_legs_ratio);
        Ok(outgoing::build(&shared, &mut ctx, inbound, routed, minted))
    };
    match path.await {
        Err(e) => error_response(&mut ctx, e),
        // boxed: the managed path's future is ~55 KB, and inline it would
        // size every request's future (the plain path's too) until its
        // response head, ~57 KB where the plain path needs ~6
        Ok(Path::Managed(m)) => Box::pin(crate::managed::respond(m.with_ctx(ctx))).await,
        Ok(Path::Plain(p)) => plain::respond(&shared, ctx, p).await,
    }
}
