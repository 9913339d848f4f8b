//! Vendor text made safe to show. A vendor (or a proxy before it) may quote what it was sent: an error
//! body that echoes `Authorization`, a token request's form, a key cut short. Before vendor text reaches
//! status, Events or logs, every credential the request carried is removed from it (and any run that
//! starts with 12 characters of one), and so is anything shaped like a credential: the word after
//! `Bearer`/`Basic`, known key prefixes (`sk_live_`, `sk-`, `whsec_`, `dop_v1_`, JWTs) and long
//! random-looking runs of letters and digits (UUIDs excepted: vendors name their objects with them).

use base64::Engine;

/// What replaces a credential.
pub const REDACTED: &str = "<redacted>";

/// Values shorter than this are not searched for (they would match ordinary words).
const MIN_SECRET: usize = 6;
/// How much of a long credential identifies it (a proxy that cuts keys short quotes this much).
const PREFIX: usize = 12;
/// A run of credential characters this long, with letters and digits, is taken for a credential.
const LONG_RUN: usize = 32;
/// Prefixes of vendors' credentials (Stripe, OpenAI-compatible, DigitalOcean, JWTs).
const KEY_PREFIXES: [&str; 8] = [
    "sk_live_", "sk_test_", "rk_live_", "rk_test_", "whsec_", "sk-", "dop_v1_", "eyJ",
];
/// Header, query and form names whose values are credentials (`pass` covers `password` and Linode's
/// `root_pass`).
const SECRET_NAMES: [&str; 6] = ["auth", "key", "token", "secret", "pass", "signature"];

/// The credentials one request carried: what [`Secrets::scrub`] removes from its answer.
#[derive(Default)]
pub struct Secrets(Vec<String>);

impl Secrets {
    /// The credentials in `req`: its authorization headers (whole, the part after the scheme, and a
    /// Basic pair decoded), headers, query and form or JSON fields named like a credential.
    pub fn of_request(req: &reqwest::Request) -> Self {
        let mut s = Secrets::default();
        for (name, value) in req.headers() {
            let (name, Ok(value)) = (name.as_str(), value.to_str()) else {
                continue;
            };
            if name.ends_with("authorization") {
                s.authorization(value);
            } else if secret_name(name) {
                s.add(value);
            }
        }
        for (k, v) in req.url().query_pairs() {
            if secret_name(&k) {
                s.add(&v);
            }
        }
        if let Some(body) = req.body().and_then(|b| b.as_bytes()) {
            s.body(body);
            // A secrets API's `value` is the secret itself (Contabo's `/v1/secrets`).
            if req.url().path().contains("/secrets")
                && let Ok(serde_json::Value::Object(o)) = serde_json::from_slice(body)
                && let Some(v) = o.get("value").and_then(|v| v.as_str())
            {
                s.add(v);
            }
        }
        s
    }

    /// Also removes `value` (a credential the caller knows of).
    pub fn add(&mut self, value: &str) {
        let v = value.trim();
        if v.len() >= MIN_SECRET && !self.0.iter().any(|s| s == v) {
            self.0.push(v.to_string());
        }
    }

    fn authorization(&mut self, value: &str) {
        self.add(value);
        let Some((scheme, credential)) = value.split_once(' ') else {
            return;
        };
        self.add(credential);
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD.decode(credential.trim());
            if let Ok(pair) = decoded.map(String::from_utf8) {
                let pair = pair.unwrap_or_default();
                let (user, pass) = pair.split_once(':').unwrap_or((&pair, ""));
                self.add(user);
                self.add(pass);
                self.add(&pair);
            }
        }
    }

    fn body(&mut self, body: &[u8]) {
        if let Ok(serde_json::Value::Object(o)) = serde_json::from_slice(body) {
            // A stored secret's value (Contabo's Secrets API: `{"type": "password", "value": …}`).
            if o.get("type").and_then(|t| t.as_str()) == Some("password")
                && let Some(v) = o.get("value").and_then(|v| v.as_str())
            {
                self.add(v);
            }
            for (k, v) in o {
                if let (true, Some(v)) = (secret_name(&k), v.as_str()) {
                    self.add(v);
                }
            }
            return;
        }
        let Ok(text) = std::str::from_utf8(body) else {
            return;
        };
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(text).unwrap_or_default();
        for (k, v) in pairs {
            if secret_name(&k) {
                self.add(&v);
            }
        }
    }

    /// `text` without these credentials (whole, or a long one's first 12 characters and what follows
    /// them) and without anything shaped like a credential.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.0 {
            out = out.replace(secret.as_str(), REDACTED);
            if secret.len() >= 16 && secret.is_char_boundary(PREFIX) {
                out = redact_runs_from(&out, &secret[..PREFIX]);
            }
        }
        scrub_shapes(&out)
    }
}

fn secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name != "idempotency-key" && SECRET_NAMES.iter().any(|n| name.contains(n))
}

/// A character a credential is made of.
fn credential_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '/' | '=' | '.' | '~')
}

/// `text` with every occurrence of `start`, and the credential characters after it, redacted.
fn redact_runs_from(text: &str, start: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(start) {
        out.push_str(&rest[..at]);
        out.push_str(REDACTED);
        let tail = &rest[at + start.len()..];
        let run = tail.find(|c| !credential_char(c)).unwrap_or(tail.len());
        rest = &tail[run..];
    }
    out.push_str(rest);
    out
}

/// `text` without anything shaped like a credential, whoever it belongs to.
pub fn scrub_shapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut after_scheme = false;
    let mut rest = text;
    while !rest.is_empty() {
        let start = rest.find(credential_char).unwrap_or(rest.len());
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find(|c| !credential_char(c)).unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        let word = &rest[..end];
        let secret = after_scheme || looks_like_credential(word);
        out.push_str(if secret { REDACTED } else { word });
        after_scheme = word.eq_ignore_ascii_case("bearer") || word.eq_ignore_ascii_case("basic");
        rest = &rest[end..];
    }
    out
}

fn looks_like_credential(word: &str) -> bool {
    if KEY_PREFIXES
        .iter()
        .any(|p| word.len() >= p.len() + 8 && word.starts_with(p))
    {
        return true;
    }
    word.split(['.', '/'])
        .any(|part| part.len() >= LONG_RUN && mixed(part) && !is_uuid(part))
}

/// Letters and digits both.
fn mixed(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_digit()) && s.bytes().any(|b| b.is_ascii_alphabetic())
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder) -> Secrets {
        crate::install_crypto_provider();
        let c = reqwest::Client::new();
        Secrets::of_request(
            &build(c.post("http://127.0.0.1/x?api_key=query-secret-1"))
                .build()
                .unwrap(),
        )
    }

    #[test]
    fn passwords_in_json_bodies_are_removed_whatever_the_vendor_calls_them() {
        for (body, pw) in [
            (
                serde_json::json!({"label": "web", "root_pass": "Root-Pass-9f8e7d"}),
                "Root-Pass-9f8e7d",
            ),
            (
                serde_json::json!({"name": "n", "type": "password", "value": "Stored-Pass-9f8e7d"}),
                "Stored-Pass-9f8e7d",
            ),
        ] {
            let s = request(|r| r.json(&body));
            let out = s.scrub(&format!("refused {pw} as weak"));
            assert!(!out.contains(pw) && out.contains("as weak"), "{out}");
        }
        // A secrets API's value, set again without its type.
        crate::install_crypto_provider();
        let req = reqwest::Client::new()
            .patch("http://127.0.0.1/v1/secrets/12")
            .json(&serde_json::json!({"value": "Again-Pass-9f8e7d"}))
            .build()
            .unwrap();
        let out = Secrets::of_request(&req).scrub("refused Again-Pass-9f8e7d as weak");
        assert!(!out.contains("Again-Pass"), "{out}");
        // Elsewhere a `value` is no credential.
        let req = reqwest::Client::new()
            .patch("http://127.0.0.1/v1/tags/12")
            .json(&serde_json::json!({"value": "plain-label-1"}))
            .build()
            .unwrap();
        let out = Secrets::of_request(&req).scrub("refused plain-label-1");
        assert!(out.contains("plain-label-1"), "{out}");
    }

    #[test]
    fn every_credential_a_request_carried_is_removed_from_its_answer() {
        let s = request(|r| {
            r.bearer_auth("tok-AAAAbbbbCCCC")
                .header("X-Api-Key", "header-key-1")
                .header("Idempotency-Key", "qm-create-1234")
                .form(&[
                    ("client_secret", "form/secret+1"),
                    ("grant_type", "password"),
                ])
        });
        let text = "got Bearer tok-AAAAbbbbCCCC, tok-AAAAbbbbCCCC, header-key-1, query-secret-1, \
                    form/secret+1 for qm-create-1234 grant password";
        let out = s.scrub(text);
        for secret in [
            "tok-AAAA",
            "header-key-1",
            "query-secret-1",
            "form/secret+1",
        ] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(
            out.contains("qm-create-1234") && out.contains("grant password"),
            "{out}"
        );

        let s = request(|r| r.basic_auth("client-id-9", Some("client-pass-9")));
        let out = s.scrub("client-id-9:client-pass-9 and Y2xpZW50LWlkLTk6Y2xpZW50LXBhc3MtOQ==");
        assert!(!out.contains("client-") && !out.contains("Y2xp"), "{out}");

        let s = request(|r| r.json(&serde_json::json!({"password": "json-pass-1", "name": "web"})));
        assert_eq!(s.scrub("json-pass-1 web"), "<redacted> web");
    }

    #[test]
    fn a_long_credential_cut_short_is_still_removed() {
        let mut s = Secrets::default();
        s.add("AbCdEfGh1234567890zzzz");
        assert_eq!(
            s.scrub("key AbCdEfGh12345... refused"),
            "key <redacted> refused"
        );
        assert_eq!(s.scrub("key AbCdEfGh1234"), "key <redacted>");
    }

    #[test]
    fn anything_shaped_like_a_credential_is_removed() {
        let table = [
            (
                "Authorization: Bearer abc",
                "Authorization: Bearer <redacted>",
            ),
            ("basic Zm9vOmJhcg==", "basic <redacted>"),
            (
                "key sk_live_51Habcdefgh is wrong",
                "key <redacted> is wrong",
            ),
            ("sk-or-v1-0123456789", "<redacted>"),
            ("dop_v1_0123456789abcdef", "<redacted>"),
            (
                "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIx.sig",
                "jwt <redacted>",
            ),
            (
                "token 0123456789abcdef0123456789abcdef0123 denied",
                "token <redacted> denied",
            ),
            // What stays: UUIDs, words, short IDs, paths, sizes.
            (
                "droplet 3164444 in 1bd08fd8-4d5b-4c49-bcb2-3a1c10b2a1f2 not found",
                "droplet 3164444 in 1bd08fd8-4d5b-4c49-bcb2-3a1c10b2a1f2 not found",
            ),
            (
                "size s-1vcpu-1gb at /v2/droplets/12 InvalidParameterValueForInstanceType",
                "size s-1vcpu-1gb at /v2/droplets/12 InvalidParameterValueForInstanceType",
            ),
            ("ICCID 8988280666000000001", "ICCID 8988280666000000001"),
        ];
        for (text, want) in table {
            assert_eq!(scrub_shapes(text), want, "{text}");
        }
    }
}
