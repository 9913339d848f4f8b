//! A request body read whole within a size limit, for every server that takes bodies (the gateway, the
//! webhooks): a declared length over the limit is refused before a byte is read, and a body found over
//! it while reading likewise. Each server answers a refusal in its own shape.

use axum::body::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;

/// Why a body was not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Longer than the limit (declared, or found while reading).
    TooLarge,
    /// The body broke off before its end.
    Broken,
}

/// `body` read whole, if it is at most `max` bytes (`headers` give its declared length).
pub async fn read<B>(body: B, headers: &HeaderMap, max: usize) -> Result<Bytes, Refused>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(Refused::TooLarge);
    }
    match http_body_util::Limited::new(body, max).collect().await {
        Ok(all) => Ok(all.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Refused::TooLarge),
        Err(_) => Err(Refused::Broken),
    }
}
