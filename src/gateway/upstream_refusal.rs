//! What a client sees of an upstream's refusal (a 4xx other than 429). A refusal of the platform's own
//! credentials (401, 403), or any answer that quotes the upstream's key, is not the client's business:
//! it becomes a 502 with a generic message, and the operators are told in the log. Any other refusal
//! (a bad parameter, an unknown model) is the client's to fix and passes through as the upstream wrote
//! it.

use http::StatusCode;

use super::directory::Upstream;
use super::errors::ApiError;

/// The most of a refusal's body the gateway reads (OpenAI's error bodies are well under 1 KiB).
pub const MAX_BODY: usize = 64 << 10;

/// The 502 a client gets instead of what upstream `u` said.
pub fn hidden(u: &Upstream, status: StatusCode) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "server_error",
        "upstream_error",
        format!(
            "upstream {} refused the gateway's request ({}); this is not the request's fault and the \
             platform's operators can see why",
            u.name,
            status.as_u16()
        ),
    )
}

/// `None` when upstream `u`'s refusal `status` with `body` may reach the client as it is; otherwise
/// the error the client gets instead.
pub fn verdict(u: &Upstream, status: StatusCode, body: &[u8]) -> Option<ApiError> {
    let about_credentials = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
    if about_credentials || quotes(body, &u.api_key) {
        tracing::warn!(
            upstream = %u.name,
            status = status.as_u16(),
            "an upstream refused the gateway's credentials, or quoted them; the client got a 502"
        );
        return Some(hidden(u, status));
    }
    None
}

/// Whether `body` holds `key` (or a long enough part of it to identify it: 12 characters of a key
/// of 16 or more, as a proxy that cuts keys short would quote them).
fn quotes(body: &[u8], key: &str) -> bool {
    let key = key.as_bytes();
    if key.len() < 8 {
        return !key.is_empty() && memchr::memmem::find(body, key).is_some();
    }
    let probe = if key.len() >= 16 { &key[..12] } else { key };
    memchr::memmem::find(body, probe).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ProviderConfig;

    fn upstream(key: &str) -> Upstream {
        let pc: ProviderConfig = serde_json::from_value(serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
            "metadata": {"name": "openrouter"},
            "spec": {"type": "openai", "credentialsSecretRef": {"name": "x", "namespace": "x", "key": "k"},
                "models": []}
        }))
        .unwrap();
        Upstream::of(&pc, key.into()).unwrap()
    }

    #[test]
    fn refusals_of_the_platforms_credentials_or_quoting_them_are_hidden_the_rest_pass() {
        let u = upstream("sk-or-v1-0123456789abcdef");
        for (status, body) in [
            (401, &br#"{"error":{"message":"Incorrect API key"}}"#[..]),
            (403, b"{}"),
            (
                400,
                br#"{"error":{"message":"bad key sk-or-v1-0123456789abcdef"}}"#,
            ),
            (
                404,
                br#"{"error":{"message":"key sk-or-v1-0123... has no access"}}"#,
            ),
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            let e = verdict(&u, status, body).expect("hidden");
            assert_eq!(e.status, StatusCode::BAD_GATEWAY);
            assert!(!e.message.contains("sk-or"), "{}", e.message);
        }
        for (status, body) in [
            (
                400,
                &br#"{"error":{"message":"max_tokens is too large","param":"max_tokens"}}"#[..],
            ),
            (
                404,
                br#"{"error":{"message":"The model `x` does not exist."}}"#,
            ),
            (422, b""),
        ] {
            assert_eq!(
                verdict(&u, StatusCode::from_u16(status).unwrap(), body),
                None
            );
        }
        // A short key is looked for whole.
        let short = upstream("abc");
        assert!(verdict(&short, StatusCode::BAD_REQUEST, b"key abc refused").is_some());
        assert!(verdict(&short, StatusCode::BAD_REQUEST, b"key ab refused").is_none());
    }
}
