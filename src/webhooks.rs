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
//!
//! `POST /webhooks/stripe` takes Stripe's events ([`StripeHook`]): the `Stripe-Signature` is verified
//! over the raw body with the endpoint's secrets (several during a rotation) before anything else, and
//! anything that fails is answered 400 with no side effect. Each event is handled once by its ID (kept in
//! the ledger database); handling only wakes the Subscription it concerns (found by the UID in the
//! Stripe object's metadata, or its subscription or customer ID), whose reconcile reads the current state
//! back from Stripe: neither the event's order nor its copy of the object is trusted. Unknown types are
//! answered 200 and ignored. Only the leader wakes objects: a standby answers 503 without keeping the
//! event, so Stripe delivers it again (and the periodic resync reads Stripe anyway).
//!
//! Every body is bounded in size and time, sized to what the vendor sends: a declared length over the
//! route's limit is refused (413) before anything is read, a body found over it while reading likewise,
//! and a body that has not arrived within [`BODY_DEADLINE`] is answered 408. 1NCE's credentials are
//! checked before its body is read.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use subtle::ConstantTimeEq;

use crate::cloud::onence::{ForwardedSms, StreamedUsage, Traffic};
use crate::cloud::stripe_event::{STRIPE_EVENTS, StripeHint, parse_stripe_event};
use crate::ledger::store::{InboundSms, StreamRecord};
use crate::ledger::{Ledger, Meter};
use crate::metrics::Metrics;

/// The largest Data Streamer request taken: 1NCE sends at most 3,000 usage records a request, about
/// 2.6 MB in its documented record shape; 8 MiB leaves room for longer records.
pub const ONENCE_USAGE_MAX_BYTES: usize = 8 << 20;

/// The largest SMS forwarder request taken (1NCE forwards one message a request).
pub const ONENCE_SMS_MAX_BYTES: usize = 256 << 10;

/// The largest Stripe event taken (Stripe's event payloads are tens of kilobytes).
pub const STRIPE_EVENT_MAX_BYTES: usize = 1 << 20;

/// How long a webhook's body may take to arrive.
pub const BODY_DEADLINE: Duration = Duration::from_secs(30);

/// `body` read whole within `max` bytes ([`crate::body_limit`]) and `deadline`, or the answer that
/// refuses it.
async fn read_body(
    body: axum::body::Body,
    headers: &HeaderMap,
    max: usize,
    deadline: Duration,
) -> Result<Bytes, (StatusCode, String)> {
    use crate::body_limit::Refused;
    match tokio::time::timeout(deadline, crate::body_limit::read(body, headers, max)).await {
        Ok(Ok(all)) => Ok(all),
        Ok(Err(Refused::TooLarge)) => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than this endpoint's {max} bytes\n"),
        )),
        Ok(Err(Refused::Broken)) => Err((
            StatusCode::BAD_REQUEST,
            "the body could not be read to its end\n".into(),
        )),
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            format!("the body did not arrive within {} s\n", deadline.as_secs()),
        )),
    }
}

/// What the Data Streamer endpoint needs.
pub struct Streamer {
    /// Where records are kept.
    pub ledger: Ledger,
    /// The `Authorization` header value 1NCE must send (`Basic base64(user:password)`).
    expected: Vec<u8>,
    /// Counters.
    pub metrics: Metrics,
    /// How long a body may take to arrive ([`BODY_DEADLINE`]).
    pub body_deadline: Duration,
}

impl Streamer {
    /// An endpoint accepting `user`:`password`.
    pub fn new(ledger: Ledger, user: &str, password: &str, metrics: Metrics) -> Self {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Self {
            ledger,
            expected: format!("Basic {token}").into_bytes(),
            metrics,
            body_deadline: BODY_DEADLINE,
        }
    }
}

impl Streamer {
    /// Whether the request carries the expected credentials (compared in constant time); a refusal is
    /// counted.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let given = headers
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let ok = bool::from(given.ct_eq(&self.expected));
        if !ok {
            self.metrics
                .webhook_refusals
                .with_label_values(&["1nce"])
                .inc();
        }
        ok
    }
}

/// The webhook routes of the endpoints configured.
pub fn router(streamer: Option<Arc<Streamer>>, stripe: Option<Arc<StripeHook>>) -> Router {
    let mut r = Router::new();
    if let Some(s) = streamer {
        r = r.merge(
            Router::new()
                .route("/webhooks/onence/usage", axum::routing::post(usage))
                .route("/webhooks/onence/sms", axum::routing::post(sms))
                .with_state(s),
        );
    }
    if let Some(h) = stripe {
        r = r.merge(
            Router::new()
                .route("/webhooks/stripe", axum::routing::post(stripe_event))
                .with_state(h),
        );
    }
    r
}

/// What the Stripe endpoint needs.
pub struct StripeHook {
    ledger: Ledger,
    secrets: Vec<Vec<u8>>,
    tolerance: i64,
    metrics: Metrics,
    /// Wakes the Subscription a hint names; `false` when no controller runs here (a standby).
    wake: Box<dyn Fn(StripeHint) -> bool + Send + Sync>,
    /// How long a body may take to arrive ([`BODY_DEADLINE`]).
    pub body_deadline: Duration,
}

impl StripeHook {
    /// An endpoint accepting signatures by any of `secrets` within `tolerance` seconds, waking objects
    /// through `wake`.
    pub fn new(
        ledger: Ledger,
        secrets: Vec<Vec<u8>>,
        tolerance: i64,
        metrics: Metrics,
        wake: Box<dyn Fn(StripeHint) -> bool + Send + Sync>,
    ) -> Self {
        Self {
            ledger,
            secrets,
            tolerance,
            metrics,
            wake,
            body_deadline: BODY_DEADLINE,
        }
    }
}

async fn stripe_event(
    State(h): State<Arc<StripeHook>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> (StatusCode, String) {
    let body = match read_body(body, &headers, STRIPE_EVENT_MAX_BYTES, h.body_deadline).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let secrets: Vec<&[u8]> = h.secrets.iter().map(Vec::as_slice).collect();
    let now = jiff::Timestamp::now().as_second();
    let header = headers.get("stripe-signature").map(|v| v.as_bytes());
    if let Err(why) =
        crate::cloud::stripe_signature::verify(header, &body, &secrets, now, h.tolerance)
    {
        h.metrics
            .webhook_refusals
            .with_label_values(&["stripe"])
            .inc();
        return (StatusCode::BAD_REQUEST, format!("{why}\n"));
    }
    let (id, kind, hint) = match parse_stripe_event(&body) {
        Ok(e) => e,
        Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")),
    };
    if !STRIPE_EVENTS.contains(&kind.as_str()) {
        return (StatusCode::OK, format!("{kind} ignored\n"));
    }
    // A standby keeps nothing: Stripe delivers again, perhaps to the leader.
    if !(h.wake)(StripeHint::default()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not the leader; try again\n".into(),
        );
    }
    match h.ledger.record_stripe_event(&id, &kind).await {
        Ok(false) => (StatusCode::OK, format!("{id} already handled\n")),
        Ok(true) => {
            h.metrics.stripe_events.with_label_values(&[&kind]).inc();
            (h.wake)(hint);
            (StatusCode::OK, format!("{id} handled\n"))
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not keep a Stripe event");
            (StatusCode::SERVICE_UNAVAILABLE, "try again\n".into())
        }
    }
}

async fn usage(
    State(s): State<Arc<Streamer>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> (StatusCode, String) {
    if !s.authorized(&headers) {
        return (StatusCode::UNAUTHORIZED, "unauthorized\n".into());
    }
    let body = match read_body(body, &headers, ONENCE_USAGE_MAX_BYTES, s.body_deadline).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let records: Vec<StreamRecord> = match crate::cloud::onence::parse_stream(&body) {
        Ok(r) => r.into_iter().map(stream_record).collect(),
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

/// What the ledger keeps of a Data Streamer record (its ID in 1NCE's namespace of IDs).
fn stream_record(r: StreamedUsage) -> StreamRecord {
    StreamRecord {
        record_id: format!("1nce/{}", r.id),
        iccid: r.iccid,
        day: r.day,
        meter: match r.traffic {
            Traffic::Data => Meter::SimDataBytes,
            Traffic::Sms => Meter::SimSms,
        },
        quantity: r.quantity,
    }
}

/// What the ledger keeps of a forwarded SMS, received at `now`.
fn inbound_sms(m: ForwardedSms, now: i64) -> InboundSms {
    InboundSms {
        message_id: format!("1nce/{}", m.id),
        iccid: m.iccid,
        received_at: now,
        submitted: m.submitted,
        payload: m.payload,
    }
}

async fn sms(
    State(s): State<Arc<Streamer>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> (StatusCode, String) {
    if !s.authorized(&headers) {
        return (StatusCode::UNAUTHORIZED, "unauthorized\n".into());
    }
    let body = match read_body(body, &headers, ONENCE_SMS_MAX_BYTES, s.body_deadline).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let now = jiff::Timestamp::now().as_second();
    let messages: Vec<InboundSms> = match crate::cloud::onence::parse_forwarded_sms(&body) {
        Ok(m) => m.into_iter().map(|m| inbound_sms(m, now)).collect(),
        Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")),
    };
    let mut new = 0;
    for m in &messages {
        let day = jiff::Timestamp::from_second(m.received_at)
            .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date().to_string())
            .unwrap_or_default();
        let usage = StreamRecord {
            record_id: format!("sms/{}", m.message_id),
            iccid: m.iccid.clone(),
            day,
            meter: Meter::SimSms,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A full Data Streamer batch in 1NCE's documented record shape (~2.6 MB) is taken; a far larger
    /// body is refused at once, declared or not; a body that stalls is cut off at the deadline.
    #[tokio::test]
    async fn bodies_are_sized_to_the_vendor_and_bounded_in_time() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
        let ledger = Ledger::connect(Some(&url), std::path::Path::new(""))
            .await
            .unwrap();
        ledger.migrate().await.unwrap();
        let mut streamer = Streamer::new(ledger, "streamer", "s3cret", Metrics::new());
        streamer.body_deadline = Duration::from_millis(300);
        let app = router(Some(Arc::new(streamer)), None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let endpoint = format!("http://{addr}/webhooks/onence/usage");
        let records: Vec<serde_json::Value> = (0..crate::cloud::onence::STREAM_BATCH)
            .map(|i| {
                serde_json::json!({
                    "id": format!("{:032x}", i), "event_type": "usage", "organisation": {"id": "1234567"},
                    "sim": {"iccid": "8988280666000000001", "imsi": "901405100000001", "msisdn": "882285100000001",
                            "ip_address": "100.64.12.34", "current_quota": "500", "current_quota_SMS": "250"},
                    "start_timestamp": "2026-12-04T10:00:00.000+0000",
                    "stop_timestamp": "2026-12-04T10:15:00.000+0000",
                    "traffic_type": {"id": 5, "description": "Data"},
                    "volume": {"rx": "0.512345", "tx": "0.123456", "total": "0.635801"},
                    "cost": "0.0000", "currency": {"id": 1, "code": "EUR", "symbol": "€"},
                    "operator": {"id": 4, "name": "Telekom Deutschland", "country": {"id": 74, "name": "Germany",
                                 "country_code": "49", "mcc": "262", "iso_code": "de"}},
                    "tariff": {"id": 555, "name": "1NCE Lifetime Flex", "currency": {"id": 1, "code": "EUR"}},
                    "ratezone": {"id": 777, "name": "Zone 1"}, "apn": "iot.1nce.net", "endpoint": {"id": 123456, "name": "tracker-0001"}
                })
            })
            .collect();
        let full = serde_json::to_vec(&records).unwrap();
        assert!(full.len() > 2_500_000, "{} bytes", full.len());
        let http = reqwest::Client::new();
        let ok = http
            .post(&endpoint)
            .basic_auth("streamer", Some("s3cret"))
            .body(full)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200, "{}", ok.text().await.unwrap());
        // Far larger, declared: 413 before a byte of it is sent.
        let raw = |head: String| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(head.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("answered without the body")
                .unwrap();
            String::from_utf8_lossy(&buf[..n]).to_string()
        };
        let auth = "Basic c3RyZWFtZXI6czNjcmV0";
        let declared = raw(format!(
            "POST /webhooks/onence/usage HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\n\
             content-length: 100000000\r\n\r\n["
        ))
        .await;
        assert!(declared.starts_with("HTTP/1.1 413"), "{declared}");
        // Far larger, undeclared (chunked): 413 once the limit is passed.
        let big = vec![b' '; ONENCE_USAGE_MAX_BYTES + 1];
        let chunked = http
            .post(&endpoint)
            .basic_auth("streamer", Some("s3cret"))
            .body(reqwest::Body::wrap_stream(futures::stream::iter(
                big.chunks(1 << 20)
                    .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
                    .collect::<Vec<_>>(),
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(chunked.status(), 413);
        // A body that stalls: 408 at the deadline. Credentials first: a stranger gets 401 at once.
        let stalled = raw(format!(
            "POST /webhooks/onence/usage HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\n\
             content-length: 100\r\n\r\n["
        ))
        .await;
        assert!(stalled.starts_with("HTTP/1.1 408"), "{stalled}");
        let stranger = raw(
            "POST /webhooks/onence/usage HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n["
                .into(),
        )
        .await;
        assert!(stranger.starts_with("HTTP/1.1 401"), "{stranger}");
    }
}
