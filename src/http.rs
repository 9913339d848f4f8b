//! The one HTTP client policy every vendor client uses: timeouts, retry with capped exponential backoff and
//! jitter on 429/5xx/timeouts (honouring `Retry-After`), no retry on other 4xx (their message reaches the
//! caller), a client-side token-bucket rate limit per account, and request/latency/retry metrics.
//!
//! # Guarantees
//! - A request that is not idempotent (a plain POST) is retried only when the vendor certainly did not act
//!   on it: connection refused before sending, or 429. A timeout or 5xx on such a request is returned to the
//!   caller, whose create-exactly-once logic (look up by tag before creating again) decides.
//! - The same request — headers (so an `Idempotency-Key`) and body — is re-sent on every retry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::redact::{Secrets, scrub_shapes};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use reqwest::{Method, Request, Response, StatusCode};
use tokio::sync::Mutex;

/// Retry and timeout settings.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Most attempts per call (first try included).
    pub max_attempts: u32,
    /// First backoff.
    pub base: Duration,
    /// Longest backoff (also the longest `Retry-After` honoured; longer ones end the retries).
    pub cap: Duration,
    /// Per-attempt timeout.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            timeout: Duration::from_secs(30),
        }
    }
}

/// What one attempt produced, as far as the retry decision cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// An HTTP response with this status and, if sent, a parsed `Retry-After`.
    Status(u16, Option<Duration>),
    /// The attempt timed out (the vendor may or may not have acted).
    Timeout,
    /// The connection could not be established (nothing was sent).
    Connect,
    /// Another transport error after sending.
    Transport,
}

/// Whether to try a vendor call again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Done: hand the outcome to the caller.
    Stop,
    /// Wait this long, then try again.
    RetryAfter(Duration),
}

/// Decides whether attempt number `attempt` (1-based) is retried, and after how long.
/// `jitter` is a uniform sample in `[0, 1)`.
pub fn decide(
    policy: &RetryPolicy,
    attempt: u32,
    outcome: AttemptOutcome,
    idempotent: bool,
    jitter: f64,
) -> Retry {
    if attempt >= policy.max_attempts {
        return Retry::Stop;
    }
    let backoff = backoff_delay(attempt, policy.base, policy.cap, jitter);
    let retryable = match outcome {
        AttemptOutcome::Status(s, _) if (200..400).contains(&s) => false,
        AttemptOutcome::Status(429, _) => true,
        AttemptOutcome::Status(s, _) if s >= 500 => idempotent,
        AttemptOutcome::Status(_, _) => false,
        AttemptOutcome::Connect => true,
        AttemptOutcome::Timeout | AttemptOutcome::Transport => idempotent,
    };
    if !retryable {
        return Retry::Stop;
    }
    match outcome {
        AttemptOutcome::Status(_, Some(after)) if after > policy.cap => Retry::Stop,
        AttemptOutcome::Status(_, Some(after)) => Retry::RetryAfter(after.max(backoff)),
        _ => Retry::RetryAfter(backoff),
    }
}

/// Backoff before retry number `attempt` (1-based): `base * 2^(attempt-1)` capped at `cap`, then scaled by
/// a jitter factor in `[0.5, 1.0]` (`jitter` is a uniform sample in `[0, 1)`), so a crowd of failing callers
/// spreads out instead of retrying in lockstep. Used for vendor retries and for requeues of failed reconciles.
pub fn backoff_delay(attempt: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(31);
    let raw = base.saturating_mul(1u32 << exp).min(cap);
    raw.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// Parses `Retry-After`: delta-seconds or an HTTP-date.
pub fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = jiff::fmt::rfc2822::parse(v).ok()?.timestamp();
    let d = at.duration_since(now);
    Some(Duration::try_from(d).unwrap_or(Duration::ZERO))
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, tokio::time::Instant)>,
}

impl RateLimiter {
    /// A full bucket.
    pub fn new(requests_per_second: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(requests_per_second.max(1)),
            burst,
            state: Mutex::new((burst, tokio::time::Instant::now())),
        }
    }

    /// Waits until a token is available and takes it.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut s = self.state.lock().await;
                let now = tokio::time::Instant::now();
                s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate).min(self.burst);
                s.1 = now;
                if s.0 >= 1.0 {
                    s.0 -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - s.0) / self.rate)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Metrics of vendor HTTP calls (labels: vendor, status class, retry reason — all bounded).
#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    retries: IntCounterVec,
}

impl HttpMetrics {
    /// Creates and registers the metrics in `registry`.
    pub fn register(registry: &Registry) -> Self {
        let requests = IntCounterVec::new(
            Opts::new(
                "quartermaster_vendor_requests_total",
                "Vendor HTTP attempts, by vendor and status class.",
            ),
            &["vendor", "class"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "quartermaster_vendor_request_duration_seconds",
                "Vendor HTTP attempt latency.",
            ),
            &["vendor"],
        )
        .expect("valid metric");
        let retries = IntCounterVec::new(
            Opts::new(
                "quartermaster_vendor_retries_total",
                "Vendor HTTP retries, by vendor and reason.",
            ),
            &["vendor", "reason"],
        )
        .expect("valid metric");
        // NB: registering twice (several clients on one registry) is fine: the first registration wins.
        let _ = registry.register(Box::new(requests.clone()));
        let _ = registry.register(Box::new(duration.clone()));
        let _ = registry.register(Box::new(retries.clone()));
        Self {
            requests,
            duration,
            retries,
        }
    }
}

/// Why a vendor call failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum HttpError {
    /// The vendor answered with an error status; `message` is the vendor's explanation (never credentials).
    #[error("{vendor} answered {status}: {message}")]
    Status {
        /// Vendor name.
        vendor: &'static str,
        /// HTTP status.
        status: u16,
        /// The vendor's message, trimmed.
        message: String,
        /// Parsed `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// The request timed out.
    #[error("{vendor} did not answer within {timeout:?}")]
    Timeout {
        /// Vendor name.
        vendor: &'static str,
        /// The per-attempt timeout.
        timeout: Duration,
    },
    /// The connection failed.
    #[error("cannot reach {vendor}: {message}")]
    Unreachable {
        /// Vendor name.
        vendor: &'static str,
        /// Transport error text.
        message: String,
    },
    /// The vendor's answer could not be decoded.
    #[error("unexpected answer from {vendor}: {message}")]
    Decode {
        /// Vendor name.
        vendor: &'static str,
        /// Decoder error.
        message: String,
    },
}

impl HttpError {
    /// True for 429, 5xx, timeouts and connection failures: trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::Timeout { .. } | Self::Unreachable { .. } => true,
            Self::Decode { .. } => false,
        }
    }
    /// The HTTP status, if the vendor answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// One vendor account's HTTP client: shared connection pool, policy, rate limit and metrics.
#[derive(Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
    vendor: &'static str,
    policy: RetryPolicy,
    limiter: Option<Arc<RateLimiter>>,
    metrics: Option<HttpMetrics>,
}

impl HttpClient {
    /// A client for `vendor` with the given policy.
    pub fn new(vendor: &'static str, policy: RetryPolicy) -> Self {
        crate::install_crypto_provider();
        let inner = reqwest::Client::builder()
            .timeout(policy.timeout)
            .connect_timeout(policy.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("quartermaster/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Self {
            inner,
            vendor,
            policy,
            limiter: None,
            metrics: None,
        }
    }

    /// Adds a client-side rate limit.
    pub fn with_rate_limit(mut self, requests_per_second: u32, burst: u32) -> Self {
        self.limiter = Some(Arc::new(RateLimiter::new(requests_per_second, burst)));
        self
    }

    /// Records metrics.
    pub fn with_metrics(mut self, metrics: HttpMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The vendor name.
    pub fn vendor(&self) -> &'static str {
        self.vendor
    }

    /// A request builder on the shared connection pool.
    pub fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        self.inner.request(method, url)
    }

    /// Sends `req` under the policy. Returns the response of a 2xx/3xx; an [`HttpError`] otherwise.
    /// `idempotent` says whether repeating the request is harmless (GET, PUT, DELETE, or a POST with an
    /// idempotency key).
    pub async fn send(
        &self,
        req: reqwest::RequestBuilder,
        idempotent: bool,
    ) -> Result<Response, HttpError> {
        let req = req.build().map_err(|e| HttpError::Decode {
            vendor: self.vendor,
            message: format!("cannot build request: {e}"),
        })?;
        let idempotent = idempotent
            || matches!(
                *req.method(),
                Method::GET | Method::HEAD | Method::PUT | Method::DELETE
            );
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (outcome, err) = match self.attempt(&req).await? {
                Ok(resp) => return Ok(resp),
                Err(failed) => failed,
            };
            match decide(
                &self.policy,
                attempt,
                outcome,
                idempotent,
                rand::random::<f64>(),
            ) {
                Retry::Stop => return Err(err),
                Retry::RetryAfter(d) => {
                    self.count_retry(outcome);
                    tracing::debug!(vendor = self.vendor, attempt, delay = ?d, error = %err, "retrying vendor call");
                    tokio::time::sleep(d).await;
                }
            }
        }
    }

    /// One attempt, through the rate limit, timed and counted: the response when it succeeded, else what
    /// happened (for the retry policy) and the error to report. `Err` only when the request cannot be
    /// sent again (its body cannot be replayed).
    async fn attempt(
        &self,
        req: &reqwest::Request,
    ) -> Result<Result<Response, (AttemptOutcome, HttpError)>, HttpError> {
        let this = clone_request(req).ok_or_else(|| HttpError::Decode {
            vendor: self.vendor,
            message: "request body cannot be replayed".into(),
        })?;
        if let Some(l) = &self.limiter {
            l.acquire().await;
        }
        let started = Instant::now();
        let result = self.inner.execute(this).await;
        if let Some(m) = &self.metrics {
            m.duration
                .with_label_values(&[self.vendor])
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(match result {
            Ok(resp) => {
                let status = resp.status();
                self.count(class(status));
                if status.is_success() || status.is_redirection() {
                    Ok(resp)
                } else {
                    Err(self.refused(resp, &Secrets::of_request(req)).await)
                }
            }
            Err(e) => Err(self.failed(&e)),
        })
    }

    /// A vendor's non-success answer: its status, `Retry-After` and message (without the `secrets` the
    /// request carried, or anything shaped like a credential).
    async fn refused(&self, resp: Response, secrets: &Secrets) -> (AttemptOutcome, HttpError) {
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, jiff::Timestamp::now()));
        let message = vendor_message(resp, secrets).await;
        (
            AttemptOutcome::Status(status, retry_after),
            HttpError::Status {
                vendor: self.vendor,
                status,
                message,
                retry_after,
            },
        )
    }

    /// A transport failure: a timeout, or the vendor unreachable (the URL never appears in the error).
    fn failed(&self, e: &reqwest::Error) -> (AttemptOutcome, HttpError) {
        if e.is_timeout() {
            self.count("timeout");
            return (
                AttemptOutcome::Timeout,
                HttpError::Timeout {
                    vendor: self.vendor,
                    timeout: self.policy.timeout,
                },
            );
        }
        self.count("error");
        let outcome = if e.is_connect() {
            AttemptOutcome::Connect
        } else {
            AttemptOutcome::Transport
        };
        (
            outcome,
            HttpError::Unreachable {
                vendor: self.vendor,
                message: without_url(e),
            },
        )
    }

    /// Counts a retry by its reason.
    fn count_retry(&self, outcome: AttemptOutcome) {
        if let Some(m) = &self.metrics {
            let reason = match outcome {
                AttemptOutcome::Status(429, _) => "throttled",
                AttemptOutcome::Status(..) => "server_error",
                AttemptOutcome::Timeout => "timeout",
                _ => "transport",
            };
            m.retries.with_label_values(&[self.vendor, reason]).inc();
        }
    }

    /// Sends and decodes a JSON body.
    pub async fn json<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        idempotent: bool,
    ) -> Result<T, HttpError> {
        let resp = self.send(req, idempotent).await?;
        let bytes = resp.bytes().await.map_err(|e| HttpError::Unreachable {
            vendor: self.vendor,
            message: without_url(&e),
        })?;
        decode_json(self.vendor, &bytes)
    }

    fn count(&self, class: &str) {
        if let Some(m) = &self.metrics {
            m.requests.with_label_values(&[self.vendor, class]).inc();
        }
    }
}

/// Decodes `vendor`'s JSON body; the decoder's message (which can quote the body) is kept free of
/// anything shaped like a credential.
pub fn decode_json<T: serde::de::DeserializeOwned>(
    vendor: &'static str,
    bytes: &[u8],
) -> Result<T, HttpError> {
    serde_json::from_slice(bytes).map_err(|e| HttpError::Decode {
        vendor,
        message: scrub_shapes(&e.to_string()),
    })
}

fn clone_request(req: &Request) -> Option<Request> {
    req.try_clone()
}

fn class(s: StatusCode) -> &'static str {
    match s.as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        429 => "429",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Transport error text without the URL (which could carry a query-string secret).
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "<url>");
    }
    s
}

/// The vendor's error message: common JSON shapes (`message`, `error`, `errors[].reason`,
/// `error.message`), else the body; without `secrets` (removed before it is cut to 300 characters, so
/// that no part of one survives the cut).
async fn vendor_message(resp: Response, secrets: &Secrets) -> String {
    let text = resp.text().await.unwrap_or_default();
    let from_json = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| {
            let pick = |v: &serde_json::Value| v.as_str().map(str::to_string);
            pick(&v["message"])
                .or_else(|| pick(&v["error"]["message"]))
                .or_else(|| pick(&v["error"]))
                .or_else(|| pick(&v["errors"][0]["reason"]))
                .or_else(|| pick(&v["detail"]))
                .or_else(|| pick(&v["title"]))
        });
    let msg = secrets.scrub(&from_json.unwrap_or(text));
    let msg: String = msg.chars().take(300).collect();
    if msg.trim().is_empty() {
        "no message".into()
    } else {
        msg.trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn retry_decision_table() {
        use AttemptOutcome::*;
        use Retry::*;
        let j = 0.999_999;
        let s = |n| Duration::from_secs_f64(n);
        let cases: &[(u32, AttemptOutcome, bool, Retry)] = &[
            (1, Status(200, None), true, Stop),
            (1, Status(404, None), true, Stop),
            (1, Status(422, None), true, Stop),
            (1, Status(401, None), true, Stop),
            (1, Status(429, None), false, RetryAfter(s(1.0))),
            (2, Status(429, Some(s(7.0))), false, RetryAfter(s(7.0))),
            (2, Status(429, Some(s(0.0))), false, RetryAfter(s(2.0))),
            (1, Status(429, Some(s(3600.0))), true, Stop),
            (1, Status(503, None), true, RetryAfter(s(1.0))),
            (3, Status(500, None), true, RetryAfter(s(4.0))),
            (1, Status(500, None), false, Stop),
            (1, Timeout, true, RetryAfter(s(1.0))),
            (1, Timeout, false, Stop),
            (1, Connect, false, RetryAfter(s(1.0))),
            (1, Transport, false, Stop),
            (4, Status(503, None), true, Stop),
        ];
        for (attempt, outcome, idem, want) in cases {
            let got = decide(&p(), *attempt, *outcome, *idem, j);
            let close = match (got, want) {
                (RetryAfter(a), RetryAfter(b)) => (a.as_secs_f64() - b.as_secs_f64()).abs() < 0.01,
                (a, b) => a == *b,
            };
            assert!(
                close,
                "attempt {attempt} {outcome:?} idempotent={idem}: got {got:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn backoff_table() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(300);
        let cases = [
            (1, 0.999_999, 1.0),
            (2, 0.999_999, 2.0),
            (3, 0.999_999, 4.0),
            (9, 0.999_999, 256.0),
            (10, 0.999_999, 300.0),
            (1000, 0.999_999, 300.0),
            (1, 0.0, 0.5),
            (10, 0.0, 150.0),
        ];
        for (attempt, jitter, want) in cases {
            let got = backoff_delay(attempt, base, cap, jitter).as_secs_f64();
            assert!(
                (got - want).abs() < 0.01,
                "attempt {attempt} jitter {jitter}: got {got}, want {want}"
            );
        }
    }

    #[test]
    fn retry_after_formats() {
        let now = jiff::Timestamp::from_second(784_111_777).unwrap(); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[tokio::test]
    async fn token_bucket_spaces_requests() {
        tokio::time::pause();
        let l = RateLimiter::new(10, 2);
        let t0 = tokio::time::Instant::now();
        for _ in 0..4 {
            l.acquire().await;
        }
        // 2 from the burst, then 2 more at 10/s.
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(190), "{waited:?}");
    }
}
