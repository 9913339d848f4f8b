//! Contabo's Secrets API, for the administrator password of a Windows server: Contabo's create takes
//! the ID of a password secret (`rootPassword`), never the password itself.
//!
//! - The secret is named after the server's ownership tag ([`secret_name`]), so a create tried again
//!   after a crash or a lost answer finds the secret it made before (listed by name, matched exactly)
//!   and sets its value again, instead of making a second one.
//! - The password was written to the VM's connection Secret before any of this (the controller's
//!   order), so nothing Contabo holds is the only copy.
//! - Cancelling the server deletes the secrets named after its ownership tags.

use reqwest::Method;
use serde::Deserialize;

use super::{Contabo, DataEnvelope};
use crate::cloud::CloudError;
use crate::cloud::rest::done_if_not_found;
use crate::http::HttpError;

/// The password secret's name for a server with ownership tag `tag` (at most 255 characters at
/// Contabo; a tag is `quartermaster-uid-` and a UID, so this is 63).
pub(super) fn secret_name(tag: &str) -> String {
    format!("{tag}-password")
}

/// A secret as Contabo lists it (the value is never read back).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretItem {
    /// A JSON number in Contabo's document.
    secret_id: serde_json::Number,
    #[serde(default)]
    name: String,
}

impl SecretItem {
    fn id(&self) -> Option<i64> {
        self.secret_id
            .as_i64()
            .or_else(|| self.secret_id.as_f64().map(|f| f as i64))
    }
}

impl Contabo {
    /// The ID of a password secret named `name` holding `value`: the one made before (its value set
    /// again) or a new one.
    pub(super) async fn password_secret(&self, name: &str, value: &str) -> Result<i64, CloudError> {
        if let Some(id) = self.secret_named(name).await?.first().copied() {
            let url = self.url(&format!("/v1/secrets/{id}"));
            // Setting the same value twice is harmless: idempotent.
            self.send(true, || {
                self.http
                    .request(Method::PATCH, &url)
                    .json(&serde_json::json!({ "value": value }))
            })
            .await?;
            return Ok(id);
        }
        let url = self.url("/v1/secrets");
        let body = serde_json::json!({ "name": name, "type": "password", "value": value });
        // Not repeated by the HTTP layer: a lost answer is found by name on the next attempt.
        let made: DataEnvelope<SecretItem> = self
            .call(false, || self.http.request(Method::POST, &url).json(&body))
            .await?;
        made.data.first().and_then(SecretItem::id).ok_or_else(|| {
            HttpError::Decode {
                vendor: "contabo",
                message: "the secret's create answer has no secretId".into(),
            }
            .into()
        })
    }

    /// Deletes the password secrets named after `tags` (a cancelled server's); none is fine.
    pub(super) async fn delete_password_secrets(&self, tags: &[String]) -> Result<(), CloudError> {
        for tag in tags {
            for id in self.secret_named(&secret_name(tag)).await? {
                let url = self.url(&format!("/v1/secrets/{id}"));
                done_if_not_found(
                    self.send(true, || self.http.request(Method::DELETE, &url))
                        .await,
                )?;
            }
        }
        Ok(())
    }

    /// The IDs of the password secrets named exactly `name` (Contabo's `name` filter is matched again
    /// here: how it matches is not specified).
    async fn secret_named(&self, name: &str) -> Result<Vec<i64>, CloudError> {
        let path = format!("/v1/secrets?type=password&name={name}");
        let all: Vec<SecretItem> = self.list(&path).await?;
        Ok(all
            .iter()
            .filter(|s| s.name == name)
            .filter_map(SecretItem::id)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_name_fits_contabo_and_names_the_owner() {
        let tag = crate::cloud::uid_tag("0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa");
        let name = secret_name(&tag);
        assert!(name.len() <= 255 && name.starts_with(&tag), "{name}");
    }

    #[test]
    fn secret_ids_are_read_as_contabo_sends_them() {
        for (json, id) in [
            (r#"{"secretId":12345,"name":"a"}"#, 12345),
            (r#"{"secretId":12345.0,"name":"a"}"#, 12345),
        ] {
            let s: SecretItem = serde_json::from_str(json).unwrap();
            assert_eq!(s.id(), Some(id), "{json}");
        }
    }
}
