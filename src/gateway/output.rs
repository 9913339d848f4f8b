//! What a request lets an upstream bill for output, read the way upstreams read it: every field that
//! bounds an answer's length (`max_tokens`, `max_completion_tokens`, `max_output_tokens`) and every one
//! that multiplies answers (`n`, and `best_of` on completions). The gateway reserves their product, so
//! an upstream that keeps to the body it is sent cannot bill more than was reserved.
//!
//! A value the gateway cannot hold the upstream to is refused (400, naming the field), never replaced:
//! a limit that is not a positive JSON integer within the model's range (`-5`, `5.0`, `"5"`, 2^64), an
//! `n` or `best_of` outside OpenAI's range. The effective limit is the smallest one given; every limit
//! field in the body is sent upstream as that value (a loose upstream reads any of them), and with none
//! given the route's own field carries the budget's `defaultMaxTokens`.

use http::StatusCode;

use super::errors::ApiError;
use super::request_body::RequestBody;
use super::route::Route;

/// The most choices a request may ask for (`n`), as OpenAI's API document allows.
pub const MAX_N: i64 = 128;

/// The most candidates a completions request may ask for (`best_of`), as OpenAI's API document allows.
pub const MAX_BEST_OF: i64 = 20;

/// Every field an upstream may read as an output limit.
const LIMITS: [&str; 3] = ["max_tokens", "max_completion_tokens", "max_output_tokens"];

/// What a request may make its upstream bill for output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Output {
    /// Output tokens one answer may take.
    pub per_answer: i64,
    /// Answers the upstream generates and bills (`n`, or `best_of` when larger).
    pub answers: i64,
}

impl Output {
    /// The output tokens to reserve.
    pub fn bound(self) -> i64 {
        self.per_answer.saturating_mul(self.answers)
    }
}

/// 400 naming `field`.
fn invalid(field: &'static str, what: String) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "invalid_value",
        format!("`{field}` {what}"),
    )
    .param(field)
}

/// `field`'s value when the client gave a non-null one: a JSON integer from `min` to `max`, else 400.
fn integer(
    req: &RequestBody,
    field: &'static str,
    min: i64,
    max: i64,
) -> Result<Option<i64>, ApiError> {
    match req.given(field) {
        None | Some("null") => Ok(None),
        Some(_) => match req.i64(field) {
            Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(invalid(
                field,
                format!("must be an integer from {min} to {max}"),
            )),
        },
    }
}

/// The field the gateway sets on `route` when the request gives no limit.
fn own_field(route: Route) -> Option<&'static str> {
    match route {
        Route::Chat | Route::Completions => Some("max_tokens"),
        Route::Responses => Some("max_output_tokens"),
        Route::Embeddings => None,
    }
}

/// Reads `req`'s output fields for `route` (the model takes limits up to `ceiling`; `default` when the
/// request gives none), sets the body's limits to the effective one, and says what to reserve.
pub fn read(
    route: Route,
    req: &mut RequestBody,
    default: i64,
    ceiling: i64,
) -> Result<Output, ApiError> {
    let Some(own) = own_field(route) else {
        return Ok(Output {
            per_answer: 0,
            answers: 1,
        });
    };
    let mut effective: Option<i64> = None;
    for field in LIMITS {
        if let Some(n) = integer(req, field, 1, ceiling)? {
            effective = Some(effective.map_or(n, |e| e.min(n)));
        }
    }
    let per_answer = effective.unwrap_or_else(|| default.clamp(1, ceiling));
    let mut given_any = false;
    for field in LIMITS {
        if req.given(field).is_some() {
            given_any = true;
            if req.i64(field) != Some(per_answer) {
                req.set(field, &per_answer);
            }
        }
    }
    if !given_any {
        req.set(own, &per_answer);
    }
    let answers = match route {
        Route::Chat => {
            // Chat takes no `best_of`; an upstream that does would bill its candidates.
            integer(req, "best_of", 1, 1)?;
            integer(req, "n", 1, MAX_N)?.unwrap_or(1)
        }
        Route::Completions => {
            let n = integer(req, "n", 1, MAX_N)?.unwrap_or(1);
            match integer(req, "best_of", 1, MAX_BEST_OF)? {
                Some(b) if b < n => {
                    return Err(invalid("best_of", format!("must be at least `n` ({n})")));
                }
                Some(b) => b,
                None => n,
            }
        }
        _ => {
            for field in ["n", "best_of"] {
                if integer(req, field, 1, 1)?.is_some() {
                    req.set(field, &1);
                }
            }
            1
        }
    };
    Ok(Output {
        per_answer,
        answers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// What `body` reserves on `route` (default 4096, ceiling 16384), and the body sent upstream.
    fn read_on(route: Route, body: &str) -> Result<(Output, Value), ApiError> {
        let mut req = RequestBody::parse(body.as_bytes()).unwrap();
        let out = read(route, &mut req, 4096, 16384)?;
        Ok((out, serde_json::from_slice(&req.write("m")).unwrap()))
    }

    fn refused(route: Route, body: &str) -> ApiError {
        read_on(route, body).expect_err(body)
    }

    #[test]
    fn choices_multiply_what_is_reserved() {
        let (out, sent) = read_on(Route::Chat, r#"{"max_tokens":100,"n":20}"#).unwrap();
        assert_eq!((out.per_answer, out.answers, out.bound()), (100, 20, 2000));
        assert_eq!(sent["n"], 20);
        let (out, _) =
            read_on(Route::Completions, r#"{"max_tokens":10,"n":2,"best_of":5}"#).unwrap();
        assert_eq!(out.bound(), 50, "best_of candidates are billed");
        let (out, _) = read_on(Route::Completions, r#"{"max_tokens":10,"n":3}"#).unwrap();
        assert_eq!(out.bound(), 30);
        let (out, _) = read_on(Route::Chat, r#"{"n":null}"#).unwrap();
        assert_eq!(
            out,
            Output {
                per_answer: 4096,
                answers: 1
            }
        );
        let (out, _) = read_on(Route::Embeddings, r#"{"n":99,"max_tokens":"x"}"#).unwrap();
        assert_eq!(out.bound(), 0, "embeddings have no output");
    }

    #[test]
    fn the_smallest_limit_given_holds_and_every_limit_field_is_sent_as_it() {
        let (out, sent) = read_on(
            Route::Chat,
            r#"{"max_tokens":300,"max_completion_tokens":200}"#,
        )
        .unwrap();
        assert_eq!(out.per_answer, 200);
        assert_eq!(
            (
                sent["max_tokens"].clone(),
                sent["max_completion_tokens"].clone()
            ),
            (json!(200), json!(200))
        );
        // Only the field the client gave goes up: o-series models refuse `max_tokens`.
        let (out, sent) = read_on(Route::Chat, r#"{"max_completion_tokens":70}"#).unwrap();
        assert_eq!(out.per_answer, 70);
        assert_eq!(sent.get("max_tokens"), None);
        // None given: the route's own field carries the default, set explicitly.
        let (out, sent) = read_on(Route::Chat, r#"{}"#).unwrap();
        assert_eq!(
            (out.per_answer, sent["max_tokens"].clone()),
            (4096, json!(4096))
        );
        let (_, sent) = read_on(Route::Responses, r#"{}"#).unwrap();
        assert_eq!(sent["max_output_tokens"], 4096);
        // A null limit is no limit to a loose upstream: it is sent as the effective one.
        let (_, sent) = read_on(Route::Chat, r#"{"max_tokens":null}"#).unwrap();
        assert_eq!(sent["max_tokens"], 4096);
        // A limit field the route does not take still bounds a loose upstream's answer.
        let (out, sent) = read_on(
            Route::Responses,
            r#"{"max_output_tokens":900,"max_tokens":20}"#,
        )
        .unwrap();
        assert_eq!(out.per_answer, 20);
        assert_eq!(sent["max_output_tokens"], 20);
        // A default above the model's range is the range's end.
        let mut req = RequestBody::parse(b"{}").unwrap();
        assert_eq!(
            read(Route::Chat, &mut req, 4096, 100).unwrap().per_answer,
            100
        );
    }

    #[test]
    fn a_limit_the_gateway_cannot_hold_the_upstream_to_is_refused_naming_it() {
        for (route, body, field) in [
            (Route::Chat, r#"{"max_tokens":-5}"#, "max_tokens"),
            (Route::Chat, r#"{"max_tokens":0}"#, "max_tokens"),
            (Route::Chat, r#"{"max_tokens":5.0}"#, "max_tokens"),
            (Route::Chat, r#"{"max_tokens":"5"}"#, "max_tokens"),
            (
                Route::Chat,
                r#"{"max_tokens":18446744073709551616}"#,
                "max_tokens",
            ),
            (Route::Chat, r#"{"max_tokens":16385}"#, "max_tokens"),
            (
                Route::Chat,
                r#"{"max_completion_tokens":"5000"}"#,
                "max_completion_tokens",
            ),
            (
                Route::Responses,
                r#"{"max_output_tokens":true}"#,
                "max_output_tokens",
            ),
            (
                Route::Completions,
                r#"{"max_completion_tokens":-1}"#,
                "max_completion_tokens",
            ),
            (Route::Chat, r#"{"n":129}"#, "n"),
            (Route::Chat, r#"{"n":"2"}"#, "n"),
            (Route::Chat, r#"{"n":0}"#, "n"),
            (Route::Completions, r#"{"best_of":21}"#, "best_of"),
            (Route::Completions, r#"{"n":3,"best_of":2}"#, "best_of"),
            (Route::Responses, r#"{"n":4}"#, "n"),
            (Route::Chat, r#"{"best_of":3}"#, "best_of"),
        ] {
            let e = refused(route, body);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.kind, "invalid_request_error", "{body}");
            assert_eq!(e.param, Some(field), "{body}");
            assert!(e.message.contains(field), "{body}: {}", e.message);
        }
    }
}
