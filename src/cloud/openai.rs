//! The controller's client of an OpenAI-compatible upstream (a ProviderConfig of type `openai`): only
//! the ProviderConfig's check, `GET {endpoint}/models` with the upstream's key. The requests users
//! make go through the gateway (`crate::gateway`), which has its own client on its hot path.

use reqwest::Method;

use super::CloudError;
use crate::http::HttpClient;

/// OpenAI's public API, when a ProviderConfig names no endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://api.openai.com/v1";

/// A client of one upstream account.
pub struct OpenAi {
    http: HttpClient,
    base: String,
    key: String,
}

impl OpenAi {
    /// A client of the account whose API key is `key` at `endpoint` (its `/v1` base URL; default: OpenAI).
    pub fn new(http: HttpClient, endpoint: Option<&str>, key: &str) -> Self {
        Self {
            http,
            base: endpoint
                .unwrap_or(DEFAULT_ENDPOINT)
                .trim_end_matches('/')
                .to_string(),
            key: key.trim().to_string(),
        }
    }

    /// One cheap authenticated call: the model list (read, never billed).
    pub async fn verify(&self) -> Result<(), CloudError> {
        let req = self
            .http
            .request(Method::GET, &format!("{}/models", self.base))
            .bearer_auth(&self.key);
        self.http.send(req, true).await?;
        Ok(())
    }
}
