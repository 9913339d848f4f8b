//! Webhook endpoints vendors push to, served by `quartermaster run` beside `/metrics`:
//! `POST /webhooks/onence/usage` for 1NCE's Data Streamer (usage records, JSON lists of up to 3,000) and
//! `POST /webhooks/onence/sms` for its SMS forwarder (SMS from devices, re-sent for up to 24 h until
//! answered 200): each message kept once by its ID, listed by `quartermaster sms list`, and counted as
//! one streamed SMS of its SIM's day (so it is billed once, never on top of the polled figure).
//!
//! 1NCE re-sends a request until it gets 200, so every record is kept once (by its ID) and the answer
//! comes as soon as the records are stored. Credentials: HTTP Basic, the user and password from a
//! Kubernetes Secret (`--onence-streamer-secret NAMESPACE/NAME`, keys `username` and `password`), compared
//! in constant time. A SIM's day is metered at the larger of the streamed sum and the polled daily figure
//! (see `controller::sim_card::usage`), so streaming and polling together never count a byte twice.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use subtle::ConstantTimeEq;

use crate::ledger::Ledger;
use crate::metrics::Metrics;

/// What the Data Streamer endpoint needs.
pub struct Streamer {
    /// Where records are kept.
    pub ledger: Ledger,
    /// The `Authorization` header value 1NCE must send (`Basic base64(user:password)`).
    expected: Vec<u8>,
    /// Counters.
    pub metrics: Metrics,
}

impl Streamer {
    /// An endpoint accepting `user`:`password`.
    pub fn new(ledger: Ledger, user: &str, password: &str, metrics: Metrics) -> Self {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Self {
            ledger,
            expected: format!("Basic {token}").into_bytes(),
            metrics,
        }
    }
}

impl Streamer {
    /// Whether the request carries the expected credentials (compared in constant time).
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let given = headers
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        bool::from(given.ct_eq(&self.expected))
    }
}

/// The webhook routes.
pub fn router(streamer: Arc<Streamer>) -> Router {
    Router::new()
        .route("/webhooks/onence/usage", axum::routing::post(usage))
        .route("/webhooks/onence/sms", axum::routing::post(sms))
        .with_state(streamer)
}

async fn usage(
    State(s): State<Arc<Streamer>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    if !s.authorized(&headers) {
        return (StatusCode::UNAUTHORIZED, "unauthorized\n".into());
    }
    let records = match crate::cloud::onence::parse_stream(&body) {
        Ok(r) => r,
        Err(why) => {
            tracing::warn!(%why, "refused a Data Streamer request");
            return (StatusCode::BAD_REQUEST, format!("{why}\n"));
        }
    };
    match s.ledger.record_streamed(&records).await {
        Ok(new) => {
            s.metrics.stream_records.inc_by(new);
            s.metrics
                .stream_last
                .set(jiff::Timestamp::now().as_second());
            (StatusCode::OK, format!("{new} new of {}\n", records.len()))
        }
        // Not stored: 1NCE sends it again.
        Err(e) => {
            tracing::warn!(error = %e, "could not keep Data Streamer records");
            (StatusCode::SERVICE_UNAVAILABLE, "try again\n".into())
        }
    }
}

async fn sms(
    State(s): State<Arc<Streamer>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    if !s.authorized(&headers) {
        return (StatusCode::UNAUTHORIZED, "unauthorized\n".into());
    }
    let messages = match crate::cloud::onence::parse_forwarded_sms(&body) {
        Ok(m) => m,
        Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")),
    };
    let mut new = 0;
    for m in &messages {
        let day = jiff::Timestamp::from_second(m.received_at)
            .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date().to_string())
            .unwrap_or_default();
        let usage = crate::ledger::store::StreamRecord {
            record_id: format!("sms/{}", m.message_id),
            iccid: m.iccid.clone(),
            day,
            meter: crate::ledger::Meter::SimSms,
            quantity: 1,
        };
        let kept = s.ledger.record_inbound_sms(m).await;
        let counted = s.ledger.record_streamed(std::slice::from_ref(&usage)).await;
        match (kept, counted) {
            (Ok(k), Ok(_)) => new += u64::from(k),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "could not keep a forwarded SMS");
                return (StatusCode::SERVICE_UNAVAILABLE, "try again\n".into());
            }
        }
    }
    (StatusCode::OK, format!("{new} new of {}\n", messages.len()))
}
