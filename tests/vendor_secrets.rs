//! No secret in vendor text: every vendor client, against an endpoint that refuses each call with a
//! body quoting the request's credentials (its authorization headers and its body), reports the refusal
//! without any credential it used, whole or cut short. The token endpoints of the OAuth vendors are
//! tried both ways: refusing (quoting the client secret or the password grant) and granting a token that
//! the API call then quotes.

use axum::http::StatusCode;
use quartermaster::cloud::onence::{Endpoints, OneNce};
use quartermaster::cloud::openai::OpenAi;
use quartermaster::cloud::stripe::Stripe;
use quartermaster::cloud::{Account, CloudError, connect};
use quartermaster::crd::ProviderType;
use quartermaster::http::{HttpClient, RetryPolicy};

mod common;

fn http(vendor: &'static str) -> HttpClient {
    HttpClient::new(vendor, RetryPolicy::default())
}

/// The refusal `e` was echoed (it says something was redacted) and shows none of `secrets`, nor the
/// first 12 characters of any.
fn assert_clean(what: &str, e: CloudError, secrets: &[&str]) {
    let text = e.to_string();
    assert!(
        text.contains("<redacted>"),
        "{what}: the echo was not quoted: {text}"
    );
    for s in secrets {
        let probe = &s[..s.len().min(12)];
        assert!(!text.contains(probe), "{what} shows {probe:?}: {text}");
    }
}

#[tokio::test]
async fn no_vendor_client_shows_the_credentials_an_echoing_endpoint_quotes() {
    quartermaster::install_crypto_provider();
    let refuse = common::echo::start(false, StatusCode::UNAUTHORIZED).await;
    let grant = common::echo::start(true, StatusCode::UNAUTHORIZED).await;

    for (provider, token) in [
        (ProviderType::Digitalocean, "Plain-DigitalOcean-Token"),
        (ProviderType::Linode, "Plain-Linode-Token-Value"),
        (ProviderType::Vultr, "Plain-Vultr-Token-Value"),
    ] {
        let account = Account {
            provider,
            endpoint: Some(refuse.clone()),
            credentials: format!("{token}\n"),
            rate_limit: None,
        };
        let client = connect(&account, RetryPolicy::default(), None).unwrap();
        let e = client.verify().await.unwrap_err();
        assert_clean(provider.as_str(), e, &[token]);
    }

    for (base, secrets) in [
        (
            &refuse,
            vec!["Contabo-Client-Secret", "Contabo-Api-Password"],
        ),
        (&grant, vec![common::echo::ISSUED]),
    ] {
        let credentials = serde_json::json!({
            "clientId": "qm-client", "clientSecret": "Contabo-Client-Secret",
            "apiUser": "ops@example.com", "apiPassword": "Contabo-Api-Password",
            "authUrl": format!("{base}/auth/token"),
        });
        let account = Account {
            provider: ProviderType::Contabo,
            endpoint: Some(base.clone()),
            credentials: credentials.to_string(),
            rate_limit: None,
        };
        let client = connect(&account, RetryPolicy::default(), None).unwrap();
        assert_clean("contabo", client.verify().await.unwrap_err(), &secrets);
    }

    for (base, secrets) in [
        (&refuse, vec!["Onence-Client-Id", "Onence-Client-Secret"]),
        (&grant, vec![common::echo::ISSUED]),
    ] {
        let credentials =
            r#"{"clientId":"Onence-Client-Id","clientSecret":"Onence-Client-Secret"}"#;
        let client = OneNce::new(http("1nce"), Endpoints::at(Some(base)), credentials);
        assert_clean("1nce", client.verify().await.unwrap_err(), &secrets);
    }

    let stripe = Stripe::new(http("stripe"), Some(&refuse), "Plain-Stripe-Secret-Key");
    let e = stripe.verify().await.unwrap_err();
    assert_clean("stripe", e, &["Plain-Stripe-Secret-Key"]);

    let openai = OpenAi::new(http("openai"), Some(&refuse), "Plain-Upstream-Key-Value");
    let e = openai.verify().await.unwrap_err();
    assert_clean("openai", e, &["Plain-Upstream-Key-Value"]);
}
