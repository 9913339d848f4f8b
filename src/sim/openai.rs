//! The OpenAI-compatible upstream of `quartermaster sim`, on the same port as the other vendors (base URL
//! `http://127.0.0.1:PORT/v1`): chat completions, responses, completions and embeddings, as JSON or as
//! server-sent events (`stream: true`), and the model list.
//!
//! An answer holds `--openai-completion-tokens` output tokens (fewer when the request's limit is lower),
//! one word each, for each of its `n` choices (`best_of` candidates on completions, when more); prompt
//! tokens are the words of the request's text. Numbers are read loosely, as vLLM and other
//! OpenAI-compatible servers read them: `"5000"` and `5.0` are limits too, and `max_completion_tokens`
//! wins over `max_tokens`. Streams send one chunk per token,
//! `--openai-chunk-delay-ms` apart, and the usage chunk when asked (`stream_options.include_usage`; a
//! responses stream always ends with `response.completed` and its usage). `--openai-latency-ms` delays
//! every answer.
//!
//! Faults for tests, `POST /_sim/openai/faults` with JSON: `{"status": 500, "count": 2}` answers the next
//! two requests with that status (429 with `Retry-After`); `{"noUsage": true}` sends streams without
//! usage; `{"cutAfter": 3}` breaks streams off after three chunks (the connection drops, no `[DONE]`);
//! `{"overrun": 40}` answers 40 output tokens beyond the request's limit (an upstream that does not keep
//! to it); `{"echoAuth": 401}` answers that status with a body quoting the request's `Authorization`
//! header, as a careless upstream or proxy does; `{}` clears them. `GET /_sim/openai/state` counts requests and tokens served.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::SimConfig;

/// Models the simulated upstream serves.
pub const MODELS: &[&str] = &["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"];

#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Faults {
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    count: u64,
    #[serde(default)]
    no_usage: bool,
    #[serde(default)]
    cut_after: Option<usize>,
    #[serde(default)]
    overrun: i64,
    #[serde(default)]
    echo_auth: Option<u16>,
}

#[derive(Default)]
struct Upstream {
    faults: std::sync::Mutex<Faults>,
    requests: AtomicU64,
    input: AtomicI64,
    output: AtomicI64,
}

#[derive(Clone)]
struct App {
    up: Arc<Upstream>,
    cfg: Arc<SimConfig>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Responses,
    Completions,
    Embeddings,
}

/// The OpenAI routes and their control endpoints.
pub fn router(cfg: Arc<SimConfig>) -> Router {
    let app = App {
        up: Arc::default(),
        cfg,
    };
    let route =
        |k: Kind| post(move |State(a): State<App>, h: HeaderMap, b: Bytes| answer(a, k, h, b));
    Router::new()
        .route("/v1/chat/completions", route(Kind::Chat))
        .route("/v1/responses", route(Kind::Responses))
        .route("/v1/completions", route(Kind::Completions))
        .route("/v1/embeddings", route(Kind::Embeddings))
        .route("/v1/models", get(models))
        .route("/_sim/openai/faults", post(set_faults))
        .route("/_sim/openai/state", get(state))
        .with_state(app)
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        axum::Json(
            json!({"error": {"message": message, "type": kind, "param": null, "code": null}}),
        ),
    )
        .into_response()
}

async fn models() -> Response {
    let data: Vec<Value> = MODELS
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "sim"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn set_faults(State(a): State<App>, axum::Json(f): axum::Json<Faults>) -> Response {
    *a.up.faults.lock().unwrap_or_else(|p| p.into_inner()) = f;
    StatusCode::NO_CONTENT.into_response()
}

async fn state(State(a): State<App>) -> Response {
    axum::Json(json!({
        "requests": a.up.requests.load(Ordering::Relaxed),
        "inputTokens": a.up.input.load(Ordering::Relaxed),
        "outputTokens": a.up.output.load(Ordering::Relaxed),
    }))
    .into_response()
}

/// A number as loose OpenAI-compatible servers read one: an integer, a float (truncated) or a string
/// holding either.
fn loose(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<i64>()
                .ok()
                .or_else(|| s.parse::<f64>().ok().map(|f| f as i64))
        }
        _ => None,
    }
}

/// Words of every string in the request's text fields: its prompt tokens.
fn words(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.split_whitespace().count() as i64,
        Value::Array(a) => a.iter().map(words).sum(),
        Value::Object(o) => o
            .iter()
            .filter(|(k, _)| {
                matches!(
                    k.as_str(),
                    "messages" | "content" | "text" | "input" | "prompt" | "instructions"
                )
            })
            .map(|(_, v)| words(v))
            .sum(),
        _ => 0,
    }
}

async fn answer(a: App, kind: Kind, headers: HeaderMap, body: Bytes) -> Response {
    let authed = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| !t.is_empty() && a.cfg.token.as_deref().is_none_or(|want| want == t));
    if !authed {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "Incorrect API key provided.",
        );
    }
    let faults = {
        let mut f = a.up.faults.lock().unwrap_or_else(|p| p.into_inner());
        let now = f.clone();
        if f.status.is_some() {
            f.count = f.count.saturating_sub(1);
            if f.count == 0 {
                f.status = None;
            }
        }
        now
    };
    if let Some(s) = faults.echo_auth {
        let status = StatusCode::from_u16(s).unwrap_or(StatusCode::UNAUTHORIZED);
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        return error(
            status,
            "invalid_request_error",
            &format!("Incorrect API key provided: {auth}"),
        );
    }
    if let Some(s) = faults.status {
        let status = StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = error(status, "server_error", "simulated upstream fault");
        if s == 429 {
            r.headers_mut()
                .insert("retry-after", "1".parse().expect("valid header"));
        }
        return r;
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "We could not parse the JSON body of your request.",
        );
    };
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !MODELS.contains(&model.as_str()) {
        return error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            &format!("The model `{model}` does not exist."),
        );
    }
    if a.cfg.openai_latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(a.cfg.openai_latency_ms)).await;
    }
    let input = words(&req).max(1);
    let limit = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
        .iter()
        .find_map(|f| req.get(*f).and_then(loose));
    let n = req.get("n").and_then(loose).unwrap_or(1).max(1);
    let answers = match kind {
        Kind::Completions => n.max(req.get("best_of").and_then(loose).unwrap_or(1)),
        Kind::Chat => n,
        _ => 1,
    };
    let output = match kind {
        Kind::Embeddings => 0,
        _ => {
            let one = limit.map_or(a.cfg.openai_completion_tokens, |l| {
                l.min(a.cfg.openai_completion_tokens)
            });
            one.max(0).saturating_mul(answers) + faults.overrun
        }
    };
    a.up.requests.fetch_add(1, Ordering::Relaxed);
    a.up.input.fetch_add(input, Ordering::Relaxed);
    a.up.output.fetch_add(output, Ordering::Relaxed);
    if req.get("stream").and_then(Value::as_bool) == Some(true) && kind != Kind::Embeddings {
        let with_usage = !faults.no_usage
            && (kind == Kind::Responses
                || req
                    .pointer("/stream_options/include_usage")
                    .and_then(Value::as_bool)
                    == Some(true));
        return stream(
            a.cfg.clone(),
            kind,
            model,
            input,
            output,
            with_usage,
            faults.cut_after,
        );
    }
    axum::Json(whole(kind, &model, input, output)).into_response()
}

fn text(n: i64) -> String {
    "tok "
        .repeat(usize::try_from(n).unwrap_or(0))
        .trim_end()
        .to_string()
}

fn whole(kind: Kind, model: &str, input: i64, output: i64) -> Value {
    match kind {
        Kind::Chat => json!({
            "id": "chatcmpl-sim", "object": "chat.completion", "created": 1_700_000_000, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text(output)}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output},
        }),
        Kind::Completions => json!({
            "id": "cmpl-sim", "object": "text_completion", "created": 1_700_000_000, "model": model,
            "choices": [{"index": 0, "text": text(output), "finish_reason": "stop"}],
            "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output},
        }),
        Kind::Responses => json!({
            "id": "resp_sim", "object": "response", "created_at": 1_700_000_000, "model": model, "status": "completed",
            "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text(output)}]}],
            "usage": {"input_tokens": input, "output_tokens": output, "total_tokens": input + output},
        }),
        Kind::Embeddings => json!({
            "object": "list", "model": model,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.0, 0.1, 0.2]}],
            "usage": {"prompt_tokens": input, "total_tokens": input},
        }),
    }
}

fn chunk(kind: Kind, model: &str, i: i64) -> Value {
    match kind {
        Kind::Responses => {
            json!({"type": "response.output_text.delta", "sequence_number": i, "delta": "tok "})
        }
        Kind::Completions => json!({"id": "cmpl-sim", "object": "text_completion", "model": model,
            "choices": [{"index": 0, "text": "tok ", "finish_reason": null}]}),
        _ => json!({"id": "chatcmpl-sim", "object": "chat.completion.chunk", "model": model,
            "choices": [{"index": 0, "delta": {"content": "tok "}, "finish_reason": null}]}),
    }
}

fn usage_event(kind: Kind, model: &str, input: i64, output: i64) -> Value {
    match kind {
        Kind::Responses => json!({"type": "response.completed", "response": {
            "id": "resp_sim", "object": "response", "model": model, "status": "completed",
            "usage": {"input_tokens": input, "output_tokens": output, "total_tokens": input + output}}}),
        _ => {
            json!({"id": "chatcmpl-sim", "object": "chat.completion.chunk", "model": model, "choices": [],
            "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output}})
        }
    }
}

fn stream(
    cfg: Arc<SimConfig>,
    kind: Kind,
    model: String,
    input: i64,
    output: i64,
    with_usage: bool,
    cut_after: Option<usize>,
) -> Response {
    let delay = Duration::from_millis(cfg.openai_chunk_delay_ms);
    let mut events: Vec<Value> = (0..output).map(|i| chunk(kind, &model, i)).collect();
    if with_usage {
        events.push(usage_event(kind, &model, input, output));
    }
    let total = events.len();
    let body = futures::stream::unfold(
        (events.into_iter(), 0usize, false),
        move |(mut it, n, done)| async move {
            if done {
                return None;
            }
            if cut_after.is_some_and(|c| n >= c) {
                // Let what was sent reach the client first: the break is visible mid-stream.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Some((
                    Err(std::io::Error::other("simulated disconnect")),
                    (it, n, true),
                ));
            }
            if n > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            match it.next() {
                Some(ev) => Some((
                    Ok::<_, std::io::Error>(Bytes::from(format!("data: {ev}\n\n"))),
                    (it, n + 1, false),
                )),
                None if kind == Kind::Responses => None,
                None => Some((
                    Ok(Bytes::from_static(b"data: [DONE]\n\n")),
                    (it, n + 1, true),
                )),
            }
        },
    );
    let _ = total;
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
