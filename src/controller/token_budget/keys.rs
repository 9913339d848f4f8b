//! A TokenBudget's API keys: one Secret per `spec.apiKeys` entry (`<budget>-<name>`, key `apiKey`),
//! owned by the budget and labelled as Quartermaster's. A key is generated once: the Secret is created
//! (never overwritten), and a create that finds one already there keeps that one. Status holds only the
//! key's SHA-256. Deleting the Secret rotates the key; a key removed from the spec loses its Secret.

use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::super::runtime::names::{MAX_OBJECT_NAME, fit};
use super::super::{Context, Error};
use crate::budget::keys;
use crate::controller::runtime::owned_secret::owned_secret;
use crate::crd::TokenBudget;
use crate::crd::conditions::reason;
use crate::crd::token_budget::ApiKeyStatus;

/// The data key of the key in its Secret.
pub const SECRET_KEY: &str = "apiKey";

/// The Secret name of key `key` of budget `budget` (shortened with a hash to fit).
pub fn secret_name(budget: &str, key: &str) -> String {
    fit(budget, &format!("-{key}"), MAX_OBJECT_NAME)
}

fn key_of(s: &Secret) -> Option<String> {
    s.data
        .as_ref()?
        .get(SECRET_KEY)
        .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
        .filter(|k| !k.is_empty())
}

/// Makes sure every key of the spec has its Secret (creating the missing ones) and returns their
/// status; deletes the Secrets of keys no longer in the spec.
pub async fn ensure(
    ctx: &Context,
    b: &TokenBudget,
    previous: &[ApiKeyStatus],
) -> Result<Vec<ApiKeyStatus>, Error> {
    let ns = b.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let cache = &ctx
        .caches()?
        .store::<k8s_openapi::api::core::v1::Secret>()?;
    let mut out = Vec::new();
    for spec in &b.spec.api_keys {
        let name = secret_name(&b.name_any(), &spec.name);
        let cached: Option<Arc<Secret>> = cache.get(&ObjectRef::new(&name).within(&ns));
        let key = match cached
            .as_deref()
            .filter(|s| owned_by(s, b))
            .and_then(key_of)
        {
            Some(k) => k,
            None => create_or_read(&api, b, &name).await?,
        };
        out.push(ApiKeyStatus {
            name: spec.name.clone(),
            secret_name: name,
            sha256: keys::hash(&key),
        });
    }
    for old in previous {
        if !b.spec.api_keys.iter().any(|k| k.name == old.name) {
            match api.delete(&old.secret_name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(Error::kube("deleting a removed API key's secret")(e)),
            }
        }
    }
    Ok(out)
}

fn owned_by(s: &Secret, b: &TokenBudget) -> bool {
    let uid = b.uid();
    s.owner_references()
        .iter()
        .any(|o| Some(&o.uid) == uid.as_ref())
}

/// Creates the Secret with a new key; when one exists already (the cache lagged our own create), the
/// live one is kept. A Secret of that name that the budget does not own is never taken over.
async fn create_or_read(api: &Api<Secret>, b: &TokenBudget, name: &str) -> Result<String, Error> {
    if let Some(live) = api
        .get_opt(name)
        .await
        .map_err(Error::kube("reading an API key's secret"))?
    {
        if !owned_by(&live, b) {
            return Err(Error::permanent(
                reason::OWNED_BY_ANOTHER,
                format!(
                    "Secret {name:?} exists and is not this TokenBudget's; rename the key or remove that Secret"
                ),
            ));
        }
        if let Some(k) = key_of(&live) {
            return Ok(k);
        }
        // Ours, but its key was emptied: replaced below by a new one.
        api.delete(name, &DeleteParams::default())
            .await
            .map_err(Error::kube("replacing an emptied API key's secret"))?;
    }
    let key = keys::generate();
    let secret = owned_secret(
        b,
        name,
        [(SECRET_KEY.to_string(), ByteString(key.clone().into_bytes()))].into(),
    )?;
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(key),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            // Created meanwhile (another reconcile): keep that one.
            let live = api
                .get(name)
                .await
                .map_err(Error::kube("reading an API key's secret"))?;
            key_of(&live).ok_or_else(|| {
                Error::permanent(
                    reason::INVALID_OBJECT,
                    format!("Secret {name:?} holds no key"),
                )
            })
        }
        Err(e) => Err(Error::kube("creating an API key's secret")(e)),
    }
}
