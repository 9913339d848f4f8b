//! The proxied routes: authenticate, route the model, admit against the budget, forward with failover,
//! and settle with the upstream's usage — streaming responses passed through chunk by chunk.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures::Stream;

use super::Gateway;
use super::directory::{BudgetView, KeyEntry, Model, Upstream};
use super::enforce::{Refusal, Reservation};
use super::errors::ApiError;
use super::output;
use super::request_body::RequestBody;
pub use super::route::Route;
use super::sse::UsageStripper;
use super::upstream::{self, Answer};
use super::upstream_refusal;
use super::usage::{self, SseTap, Usage};
use crate::budget::{keys, period};
use crate::ledger::metering::requests::Outcome;

/// The key in the `Authorization` header's `Bearer` credentials, if there is one (the scheme is
/// case-insensitive, RFC 9110 section 11.1).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let scheme = value.as_bytes().get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    // The 7 bytes are ASCII, so this is a character boundary.
    let key = value[7..].trim();
    (!key.is_empty()).then_some(key)
}

/// The key's entry, from the `Authorization: Bearer` header.
pub fn authenticate(gw: &Gateway, headers: &HeaderMap) -> Result<KeyEntry, ApiError> {
    let key = bearer(headers).ok_or_else(ApiError::unauthorized)?;
    gw.directory
        .key(&keys::hash(key))
        .ok_or_else(ApiError::unauthorized)
}

/// An upstream that may serve a request, and the model there.
type Candidate = (Arc<Upstream>, Arc<Model>);

/// The upstreams that may serve `model` for `budget`, in order (the first is the primary).
fn candidates(gw: &Gateway, budget: &BudgetView, asked: &str) -> Result<Vec<Candidate>, ApiError> {
    let (only, model) = match asked.split_once('/') {
        Some((pc, m)) if budget.upstreams.iter().any(|u| u == pc) => (Some(pc), m),
        _ => (None, asked),
    };
    if !budget.models.is_empty() && !budget.models.iter().any(|m| m == asked || m == model) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "model_not_allowed",
            format!(
                "model {asked:?} is not allowed by TokenBudget {}",
                budget.id()
            ),
        ));
    }
    let list: Vec<_> = budget
        .upstreams
        .iter()
        .filter(|u| only.is_none_or(|o| o == u.as_str()))
        .filter_map(|u| gw.directory.upstream(u))
        .filter(|u| u.serves(&budget.subject.namespace))
        .filter_map(|u| {
            let m = u.models.get(model)?.clone();
            budget
                .currency
                .as_ref()
                .is_none_or(|c| *c == m.input.currency)
                .then_some((u, m))
        })
        .collect();
    if list.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!(
                "model {asked:?} is not offered to TokenBudget {}: no upstream it may use prices it{}",
                budget.id(),
                budget
                    .currency
                    .as_ref()
                    .map(|c| format!(" in {c}"))
                    .unwrap_or_default()
            ),
        ));
    }
    Ok(list)
}

fn refusal(budget: &BudgetView, r: Refusal) -> ApiError {
    match r {
        Refusal::Exhausted { reset, retry_after } => {
            let e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "insufficient_quota",
                "budget_exhausted",
                format!(
                    "TokenBudget {} is exhausted until {}",
                    budget.id(),
                    period::rfc3339(reset)
                ),
            );
            let now = jiff::Timestamp::now().as_second();
            e.retry_after(retry_after.map_or((reset - now).max(1) as u64, |w| w.ceil() as u64))
        }
        Refusal::Insufficient { needed, left } => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "budget_insufficient",
            format!(
                "the request may use {needed} tokens and TokenBudget {} has about {left} left: \
                 ask for fewer (a lower max_tokens, n or prompt)",
                budget.id()
            ),
        ),
        Refusal::RateLimited { what, retry_after } => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "requests",
            "rate_limit_exceeded",
            format!("rate limit of TokenBudget {} reached ({what})", budget.id()),
        )
        .retry_after(retry_after.ceil() as u64),
        Refusal::TooLarge(n) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "request_too_large",
            format!(
                "the request may use {n} tokens, more than TokenBudget {}'s tokens-per-minute limit",
                budget.id()
            ),
        ),
        Refusal::NotReady(why) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "budget_not_ready",
            format!("TokenBudget {} cannot be used yet: {why}", budget.id()),
        )
        .retry_after(5),
        Refusal::Ledger(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "ledger_unavailable",
            "the budget ledger is unreachable; try again".into(),
        )
        .retry_after(1),
    }
}

/// The model label of metrics when a request names no model the gateway's configuration knows: labels
/// come from ProviderConfigs and TokenBudgets only, never from request content.
pub const OTHER: &str = "other";

/// Serves one request of `route` by the key's `entry` (authenticated before its body was read).
pub async fn handle(gw: Arc<Gateway>, route: Route, entry: KeyEntry, body: Bytes) -> Response {
    let started = Instant::now();
    let budget = entry.budget.clone();
    match serve(&gw, route, entry, body, started).await {
        Ok(r) => r,
        Err((e, model)) => {
            let label = model.as_ref().map_or(OTHER, |m| &*m.origin.model);
            let s = &budget.subject;
            gw.metrics
                .requests
                .with_label_values(&[&s.namespace, &s.name, label, e.status.as_str()])
                .inc();
            let outcome = match e.code {
                "upstream_unavailable" | "upstream_error" => Outcome::UpstreamError,
                _ => Outcome::Refused,
            };
            unserved(&gw, &budget, model.as_deref(), outcome);
            e.into_response()
        }
    }
}

/// Counts a request of `budget` for `model` (a configured name, or [`OTHER`]) that ended with `outcome`.
fn count(gw: &Gateway, budget: &BudgetView, model: &str, outcome: Outcome) {
    let s = &budget.subject;
    gw.metrics
        .outcomes
        .with_label_values(&[&s.namespace, &s.name, model, outcome.as_str()])
        .inc();
}

/// Counts a request of `budget` that nothing charged (for `model` when it named a configured one):
/// its outcome in the metric and on the ledger's `llm_requests` meter.
fn unserved(gw: &Gateway, budget: &BudgetView, model: Option<&Model>, outcome: Outcome) {
    count(
        gw,
        budget,
        model.map_or(OTHER, |m| &*m.origin.model),
        outcome,
    );
    gw.enforcer.uncharged(budget, model, outcome);
}

/// A refusal, and the configured model it concerns (`None`: [`OTHER`]).
type Failure = (ApiError, Option<Arc<Model>>);

async fn serve(
    gw: &Arc<Gateway>,
    route: Route,
    entry: KeyEntry,
    body: Bytes,
    started: Instant,
) -> Result<Response, Failure> {
    let budget = entry.budget.clone();
    let Ok(mut req) = RequestBody::parse(&body) else {
        return Err((
            ApiError::bad_request("the body must be a JSON object"),
            None,
        ));
    };
    let asked = match req.str("model") {
        Some(m) if !m.is_empty() => m.into_owned(),
        _ => return Err((ApiError::bad_request("`model` is required"), None)),
    };
    let fail = |e: ApiError| (e, None);
    if let Some(why) = &budget.blocked {
        return Err(fail(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "budget_blocked",
            format!("TokenBudget {} is blocked: {why}", budget.id()),
        )));
    }
    let upstreams = candidates(gw, &budget, &asked).map_err(fail)?;
    let label = upstreams[0].1.origin.model.clone();
    let primary = upstreams[0].1.clone();
    let fail = |e: ApiError| (e, Some(primary.clone()));
    let stream = req.bool("stream") == Some(true);
    let ceiling = upstreams[0].1.max_output_tokens;
    let output = output::read(route, &mut req, budget.default_max_tokens, ceiling)
        .map_err(fail)?
        .bound();
    // Asked for by the gateway to meter the stream: the usage-only chunk goes to the client only if it
    // asked for it too.
    let mut strip_usage = false;
    if stream && matches!(route, Route::Chat | Route::Completions) {
        let mut opts = req.object("stream_options").unwrap_or_default();
        strip_usage = opts.get("include_usage").and_then(|v| v.as_bool()) != Some(true);
        opts.insert("include_usage".into(), true.into());
        req.set("stream_options", &opts);
    }
    let input_estimate = req.prompt_bound().map_err(|e| {
        fail(ApiError::bad_request(format!(
            "the body is not JSON an upstream can read: {e}"
        )))
    })?;
    let amount = input_estimate.saturating_add(output);
    let reservation = gw
        .enforcer
        .reserve(
            &budget,
            &entry.key_name,
            amount,
            input_estimate,
            &upstreams[0].1,
        )
        .await
        .map_err(|r| fail(refusal(&budget, r)))?;
    // From here the reservation is charged unless it is cancelled: a request dropped while the
    // upstream works on it (its client gone) may have been served, so it is charged, never lost.
    let mut charge = Charge {
        gw: gw.clone(),
        r: Some(reservation),
        label: label.clone(),
    };
    let before = started.elapsed();
    let (upstream, resp, waited) = match forward(gw, route, &req, &body, &upstreams).await {
        Ok(x) => x,
        Err(e) => {
            charge.cancel();
            return Err(fail(e));
        }
    };
    let after = Instant::now();
    if let Some(r) = charge.r.as_mut() {
        r.model = upstream.1.clone();
    }
    charge.label = upstream.1.origin.model.clone();
    let (head, body) = resp.into_parts();
    let status = head.status;
    gw.metrics
        .requests
        .with_label_values(&[
            &budget.subject.namespace,
            &budget.subject.name,
            &*upstream.1.origin.model,
            status.as_str(),
        ])
        .inc();
    if !status.is_success() {
        // Refused by the upstream (a 4xx other than 429): nothing was served.
        charge.cancel();
        unserved(gw, &budget, Some(&upstream.1), Outcome::UpstreamError);
        // Boxed, as the other cold paths: the served request's future does not carry their state.
        let r = Box::pin(refused_upstream(
            gw,
            &upstream.0,
            status,
            &head.headers,
            body,
        ))
        .await;
        gw.metrics
            .added_latency
            .observe((before + after.elapsed()).as_secs_f64());
        return Ok(r);
    }
    let is_sse = head
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    if stream || is_sse {
        let body = Metered {
            inner: Box::pin(http_body_util::BodyDataStream::new(body)),
            tap: SseTap::default(),
            strip: strip_usage.then(UsageStripper::default),
            done: false,
            charge: Some(charge),
        };
        gw.metrics
            .added_latency
            .observe((before + after.elapsed()).as_secs_f64());
        return Ok(passthrough(status, &head.headers, Body::from_stream(body)));
    }
    let bytes = match upstream::read(body).await {
        Ok(b) => b,
        Err(_) => {
            // The upstream served and the answer was lost: charged at the reservation (and counted
            // there, so answered here rather than through the refusal path).
            charge.finish(None, Outcome::UpstreamError);
            return Ok(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "server_error",
                "upstream_error",
                format!("upstream {} broke off its answer", upstream.0.name),
            )
            .into_response());
        }
    };
    let read = Instant::now();
    let used = usage::of_bytes(&bytes);
    if charge.finish(used, Outcome::Completed) {
        // The upstream billed more than the replica held: on the ledger before the client can ask again.
        Box::pin(gw.enforcer.overruns_written(&budget.subject.uid)).await;
    }
    let r = passthrough(status, &head.headers, Body::from(bytes));
    let _ = waited;
    gw.metrics
        .added_latency
        .observe((before + read.elapsed()).as_secs_f64());
    Ok(r)
}

type Forwarded = (Candidate, Answer, std::time::Duration);

/// Sends the request to each upstream in turn until one answers other than with a connect error, a
/// timeout, a 5xx or a 429 (nothing has reached the client yet, so trying the next is safe).
async fn forward(
    gw: &Gateway,
    route: Route,
    req: &RequestBody<'_>,
    client_body: &Bytes,
    upstreams: &[Candidate],
) -> Result<Forwarded, ApiError> {
    let mut last = String::new();
    let client = upstream::client();
    for (u, m) in upstreams {
        // The client's bytes as they came when the gateway changes nothing: no copy.
        let body = if req.unchanged(&m.upstream_model) {
            client_body.clone()
        } else {
            Bytes::from(req.write(&m.upstream_model))
        };
        let Some(url) = u.url(route) else {
            last = format!("upstream {} has no valid endpoint URL", u.name);
            continue;
        };
        let Some(auth) = &u.authorization else {
            last = format!("upstream {}'s API key is not a valid header value", u.name);
            continue;
        };
        let sent = Instant::now();
        let call = client.request(url, upstream::post(url, auth, body));
        let outcome = tokio::time::timeout(gw.config.upstream_timeout, call).await;
        let waited = sent.elapsed();
        gw.metrics
            .upstream_latency
            .with_label_values(&[&u.name])
            .observe(waited.as_secs_f64());
        match outcome {
            Ok(Ok(resp)) if !(resp.status().is_server_error() || resp.status().as_u16() == 429) => {
                return Ok(((u.clone(), m.clone()), resp, waited));
            }
            Ok(Ok(resp)) => last = format!("upstream {} answered {}", u.name, resp.status()),
            Ok(Err(e)) if e.is_connect() => {
                last = format!("upstream {} could not be reached", u.name)
            }
            Ok(Err(_)) => last = format!("upstream {} failed before answering", u.name),
            Err(_) => last = format!("upstream {} timed out", u.name),
        }
        gw.metrics.failovers.with_label_values(&[&u.name]).inc();
        tracing::warn!(upstream = %u.name, why = %last, "upstream failed; trying the next");
    }
    Err(ApiError::new(
        StatusCode::BAD_GATEWAY,
        "server_error",
        "upstream_unavailable",
        format!("every upstream failed; the last: {last}"),
    ))
}

/// Upstream `u`'s refusal as the client gets it ([`upstream_refusal`]): its body read (bounded in size
/// and time), passed through, or hidden behind a 502.
async fn refused_upstream(
    gw: &Gateway,
    u: &Upstream,
    status: StatusCode,
    headers: &HeaderMap,
    body: super::pool::Body,
) -> Response {
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(body, upstream_refusal::MAX_BODY).collect();
    let bytes = match tokio::time::timeout(gw.config.upstream_timeout, limited).await {
        Ok(Ok(b)) => b.to_bytes(),
        _ => return upstream_refusal::hidden(u, status).into_response(),
    };
    match upstream_refusal::verdict(u, status, &bytes) {
        Some(e) => e.into_response(),
        None => passthrough(status, headers, Body::from(bytes)),
    }
}

/// The upstream's headers a client gets: its answer's type and caching, and what identifies the
/// request at the upstream.
const PASSED: [http::HeaderName; 4] = [
    http::header::CONTENT_TYPE,
    http::header::CACHE_CONTROL,
    http::HeaderName::from_static("openai-processing-ms"),
    http::HeaderName::from_static("x-request-id"),
];

fn passthrough(status: StatusCode, headers: &HeaderMap, body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    for name in PASSED {
        if let Some(v) = headers.get(&name) {
            r.headers_mut().insert(name, v.clone());
        }
    }
    r
}

/// A request's reservation until it is settled: dropped unsettled (a client gone mid-stream, an answer
/// lost), it is charged the whole reservation — never zero.
struct Charge {
    gw: Arc<Gateway>,
    r: Option<Reservation>,
    /// The model's configured name (its metrics label).
    label: Arc<str>,
}

impl Charge {
    /// Nothing was served: the reservation goes back, uncharged.
    fn cancel(mut self) {
        if let Some(r) = self.r.take() {
            self.gw.enforcer.cancel(r);
        }
    }

    /// Settles with what the upstream reported (the reservation when nothing), the request having
    /// ended with `outcome`; true when it overran what the replica held.
    fn finish(mut self, used: Option<Usage>, outcome: Outcome) -> bool {
        self.r
            .take()
            .is_some_and(|r| settle(&self.gw, r, used, &self.label, outcome))
    }
}

impl Drop for Charge {
    /// Dropped unsettled: the request's client went away before its answer (the handler was dropped).
    fn drop(&mut self) {
        if let Some(r) = self.r.take() {
            settle(&self.gw, r, None, &self.label, Outcome::ClientAborted);
        }
    }
}

fn settle(
    gw: &Gateway,
    r: Reservation,
    used: Option<Usage>,
    model: &str,
    outcome: Outcome,
) -> bool {
    let used = used.unwrap_or_else(|| r.as_usage());
    let s = &r.budget.subject;
    let t = &gw.metrics.tokens;
    t.with_label_values(&[&s.namespace, &s.name, model, "input"])
        .inc_by(u64::try_from(used.input).unwrap_or(0));
    t.with_label_values(&[&s.namespace, &s.name, model, "output"])
        .inc_by(u64::try_from(used.output).unwrap_or(0));
    count(gw, &r.budget, model, outcome);
    gw.enforcer.settle(r, used, outcome)
}

/// A streamed answer passed through chunk by chunk, its usage read on the way (and, when the client
/// did not ask for it, the usage-only chunk left out).
struct Metered {
    inner: Pin<Box<dyn Stream<Item = Result<Bytes, hyper::Error>> + Send>>,
    tap: SseTap,
    strip: Option<UsageStripper>,
    /// The upstream's stream has ended (it is not polled again).
    done: bool,
    charge: Option<Charge>,
}

impl Metered {
    fn settle(&mut self, outcome: Outcome) {
        let used = self.tap.usage;
        if let Some(c) = self.charge.take() {
            c.finish(used, outcome);
        }
    }
}

impl Stream for Metered {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                this.settle(Outcome::Completed);
                return Poll::Ready(None);
            }
            match this.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    this.tap.feed(&chunk);
                    let out = match this.strip.as_mut() {
                        Some(s) => s.feed(&chunk),
                        None => chunk,
                    };
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(out)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.settle(Outcome::UpstreamError);
                    return Poll::Ready(Some(Err(std::io::Error::other(e.to_string()))));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    if let Some(rest) = this.strip.as_mut().map(UsageStripper::finish)
                        && !rest.is_empty()
                    {
                        return Poll::Ready(Some(Ok(rest)));
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        // The client went away mid-stream: what the upstream reported so far, else the reservation.
        self.settle(Outcome::ClientAborted);
    }
}
