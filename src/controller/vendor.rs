//! Dereferencing a ProviderConfig for an object: existence, `allowedNamespaces`, `suspended`, the
//! credentials Secret — and a cache of vendor clients per ProviderConfig (so its rate limit and connection
//! pool are shared by every object using it), rebuilt when the ProviderConfig or its Secret changes.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use tokio::sync::Mutex;

use super::{Context, Error};
use crate::cloud::onence::{Endpoints, OneNce};
use crate::cloud::{self, Account, ComputeProvider};
use crate::crd::ProviderConfig;
use crate::crd::conditions::{self, ConditionStatus, reason};
use crate::http::RetryPolicy;

/// Whether `namespace` may use a ProviderConfig with this allow-list (empty: everyone).
pub fn namespace_allowed(allowed: &[String], namespace: &str) -> bool {
    allowed.is_empty() || allowed.iter().any(|a| a == namespace)
}

/// Whether objects in `namespace` may adopt untagged vendor objects of this ProviderConfig
/// (`spec.adoption.allowedNamespaces`; default: none may).
pub fn adoption_allowed(pc: &ProviderConfig, namespace: &str) -> bool {
    pc.spec
        .adoption
        .as_ref()
        .is_some_and(|a| a.allowed_namespaces.iter().any(|n| n == namespace))
}

/// `Err` naming the first vendor resource `o` names that `pc` does not grant `namespace`
/// (`spec.vendorResources`).
pub fn vendor_resources_granted(
    pc: &ProviderConfig,
    namespace: &str,
    o: &crate::cloud::ServerOptions,
) -> Result<(), String> {
    let grants: Vec<_> = pc
        .spec
        .vendor_resources
        .iter()
        .filter(|g| g.namespaces.iter().any(|n| n == namespace))
        .collect();
    let refuse = |field: &str, id: &str| {
        Err(format!(
            "{field} {id:?}: ProviderConfig {:?} does not grant namespace {namespace:?} this resource (spec.vendorResources)",
            pc.metadata.name.as_deref().unwrap_or_default()
        ))
    };
    if let Some(v) = &o.vpc_id
        && !grants.iter().any(|g| g.vpc_ids.contains(v))
    {
        return refuse("spec.vpcID", v);
    }
    if let Some(f) = &o.firewall_id
        && !grants.iter().any(|g| g.firewall_ids.contains(f))
    {
        return refuse("spec.firewallID", f);
    }
    if let Some((id, _)) = &o.stack_script
        && !grants.iter().any(|g| g.stack_script_ids.contains(id))
    {
        return refuse("spec.stackScript.id", &id.to_string());
    }
    Ok(())
}

/// Whether `pc` lets objects of `namespace` release its servers (`deletionPolicy: Orphan`).
pub fn release_allowed(pc: &ProviderConfig, namespace: &str) -> bool {
    pc.spec
        .release
        .as_ref()
        .is_some_and(|r| r.allowed_namespaces.iter().any(|n| n == namespace))
}

/// A usable ProviderConfig.
pub struct Resolved {
    /// The ProviderConfig.
    pub config: ProviderConfig,
    /// Credentials and endpoint.
    pub account: Account,
    /// Changes whenever the ProviderConfig's spec or its Secret changes.
    pub fingerprint: u64,
}

/// Looks the ProviderConfig `name` up (in the watch cache) for an object in `namespace` and checks it
/// may be used: it exists, allows the namespace, is not suspended ([`Error::Waiting`]) and its credentials
/// were not refused by the vendor at its last check (Stalled `InvalidCredentials`, naming it). Its
/// credentials come from the [`Providers`] cache: the Secret is read only when the ProviderConfig is
/// new or changed (its own reconciler refreshes them when the Secret changes).
pub async fn resolve(ctx: &Context, name: &str, namespace: &str) -> Result<Resolved, Error> {
    let r = resolve_any(ctx, name, namespace).await?;
    if r.config.spec.suspended {
        return Err(Error::Waiting {
            reason: reason::PROVIDER_CONFIG_SUSPENDED,
            message: format!("ProviderConfig {name:?} is suspended (spec.suspended); waiting"),
        });
    }
    Ok(r)
}

/// [`resolve`], also for a suspended ProviderConfig (`config.spec.suspended` says so): what costs money
/// in its account is still observed and metered; the caller changes nothing through it.
pub async fn resolve_any(ctx: &Context, name: &str, namespace: &str) -> Result<Resolved, Error> {
    resolve_for(ctx, name, Some(namespace)).await
}

/// [`resolve_any`] for an object that holds vendor state in this account (a server it created or
/// adopted): a namespace the ProviderConfig no longer allows still observes, meters and cleans up
/// what it holds there. The refusal comes back beside the account, for the object to say so and to
/// change nothing else through it.
pub async fn resolve_holding(
    ctx: &Context,
    name: &str,
    namespace: &str,
) -> Result<(Resolved, Option<String>), Error> {
    match resolve_any(ctx, name, namespace).await {
        Err(Error::Permanent { reason: r, message })
            if r == reason::PROVIDER_CONFIG_NOT_ALLOWED =>
        {
            Ok((resolve_for(ctx, name, None).await?, Some(message)))
        }
        other => other.map(|r| (r, None)),
    }
}

/// The account of ProviderConfig `name`, for an object of `namespace` (`None`: whatever the
/// ProviderConfig allows).
async fn resolve_for(
    ctx: &Context,
    name: &str,
    namespace: Option<&str>,
) -> Result<Resolved, Error> {
    let Some(pc) = ctx
        .caches()?
        .store::<crate::crd::ProviderConfig>()?
        .get(&kube::runtime::reflector::ObjectRef::new(name))
    else {
        return Err(Error::permanent(
            reason::PROVIDER_CONFIG_NOT_FOUND,
            format!("ProviderConfig {name:?} not found"),
        ));
    };
    if let Some(namespace) = namespace
        && !namespace_allowed(&pc.spec.allowed_namespaces, namespace)
    {
        return Err(Error::permanent(
            reason::PROVIDER_CONFIG_NOT_ALLOWED,
            format!(
                "ProviderConfig {name:?} does not allow namespace {namespace:?} (spec.allowedNamespaces)"
            ),
        ));
    }
    if let Some(c) = pc.status.as_ref().and_then(|s| {
        conditions::find(&s.conditions, conditions::STALLED).filter(|c| {
            c.status == ConditionStatus::True
                && c.reason == reason::INVALID_CREDENTIALS
                && c.observed_generation == pc.metadata.generation
        })
    }) {
        return Err(Error::permanent(
            reason::INVALID_CREDENTIALS,
            format!(
                "ProviderConfig {name:?}: the vendor refuses its credentials ({}); fix its Secret",
                c.message
            ),
        ));
    }
    let r = ctx.providers.account_for_reading(ctx, &pc).await?;
    Ok(r)
}

/// Reads the credentials of a ProviderConfig even while it is suspended (for reading, never changing).
pub async fn account_for_reading(ctx: &Context, pc: ProviderConfig) -> Result<Resolved, Error> {
    let mut readable = pc.clone();
    readable.spec.suspended = false;
    let mut r = account_for(ctx, readable).await?.ok_or_else(|| {
        Error::permanent(
            reason::INTERNAL_ERROR,
            "no account for a live ProviderConfig",
        )
    })?;
    r.config = pc;
    Ok(r)
}

/// Reads the credentials of a ProviderConfig. `Ok(None)` when it is suspended.
pub async fn account_for(ctx: &Context, pc: ProviderConfig) -> Result<Option<Resolved>, Error> {
    if pc.spec.suspended {
        return Ok(None);
    }
    let secret = credentials_secret(ctx, &pc).await?;
    account_from(pc, secret.as_ref())
}

/// The credentials Secret a ProviderConfig names, from the API server (Quartermaster keeps no cache of
/// other people's Secrets); `None` when it does not exist.
pub async fn credentials_secret(
    ctx: &Context,
    pc: &ProviderConfig,
) -> Result<Option<Secret>, Error> {
    let r = &pc.spec.credentials_secret_ref;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &r.namespace);
    secrets
        .get_opt(&r.name)
        .await
        .map_err(Error::kube("reading the credentials secret"))
}

/// The account of a ProviderConfig whose credentials Secret was read as `secret`. `Ok(None)` when it is
/// suspended.
pub fn account_from(
    pc: ProviderConfig,
    secret: Option<&Secret>,
) -> Result<Option<Resolved>, Error> {
    let name = pc.name_any();
    if pc.spec.suspended {
        return Ok(None);
    }
    let r = &pc.spec.credentials_secret_ref;
    let value = secret
        .and_then(|s| {
            s.data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                .or_else(|| s.string_data.as_ref().and_then(|d| d.get(&r.key)).cloned())
        })
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| {
            Error::permanent(
                reason::MISSING_SECRET,
                format!(
                    "ProviderConfig {name:?}: secret {}/{} has no non-empty key {:?}",
                    r.namespace, r.name, r.key
                ),
            )
        })?;
    let mut h = DefaultHasher::new();
    pc.metadata.generation.hash(&mut h);
    secret.and_then(|s| s.resource_version()).hash(&mut h);
    let account = Account {
        provider: pc.spec.type_,
        endpoint: pc.spec.endpoint.clone(),
        credentials: value,
        rate_limit: pc
            .spec
            .rate_limit
            .as_ref()
            .map(|l| (l.requests_per_second, l.burst))
            .or_else(|| cloud::documented_rate_limit(pc.spec.type_, pc.spec.endpoint.as_deref())),
    };
    Ok(Some(Resolved {
        config: pc,
        account,
        fingerprint: h.finish(),
    }))
}

/// A cached client and the fingerprint it was built for.
type Cached = (u64, Arc<dyn ComputeProvider>);

/// Credentials read for one version of a ProviderConfig: (uid, generation, account, fingerprint).
type Credentials = (Option<String>, Option<i64>, Account, u64);

/// Vendor clients and credentials per ProviderConfig name.
#[derive(Default)]
pub struct Providers {
    entries: Mutex<HashMap<String, Cached>>,
    sims: ClientCache<OneNce>,
    stripes: ClientCache<crate::cloud::stripe::Stripe>,
    upstreams: ClientCache<crate::cloud::openai::OpenAi>,
    accounts: std::sync::Mutex<HashMap<String, Credentials>>,
}

impl Providers {
    /// The credentials of `pc`: from memory when this version of it was resolved before, else read
    /// from its Secret (and remembered). `Ok(None)` when it is suspended.
    pub async fn account(
        &self,
        ctx: &Context,
        pc: &ProviderConfig,
    ) -> Result<Option<Resolved>, Error> {
        if pc.spec.suspended {
            return Ok(None);
        }
        let (uid, generation) = (pc.uid(), pc.metadata.generation);
        let known = self
            .accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pc.name_any())
            .filter(|(u, g, _, _)| *u == uid && *g == generation)
            .map(|(_, _, a, f)| (a.clone(), *f));
        if let Some((account, fingerprint)) = known {
            return Ok(Some(Resolved {
                config: pc.clone(),
                account,
                fingerprint,
            }));
        }
        let r = account_for(ctx, pc.clone()).await?;
        if let Some(r) = &r {
            self.remember(r);
        }
        Ok(r)
    }

    /// The credentials of `pc` even while it is suspended (reading is not changing); the returned
    /// `config` is `pc` as it is, so callers still see `spec.suspended`.
    pub async fn account_for_reading(
        &self,
        ctx: &Context,
        pc: &ProviderConfig,
    ) -> Result<Resolved, Error> {
        let mut readable = pc.clone();
        readable.spec.suspended = false;
        let mut r = self.account(ctx, &readable).await?.ok_or_else(|| {
            Error::permanent(
                reason::INTERNAL_ERROR,
                "no account for a live ProviderConfig",
            )
        })?;
        r.config = pc.clone();
        Ok(r)
    }

    /// Remembers credentials just read from the Secret (the ProviderConfig reconciler calls this each
    /// time it reads them, so a rotated Secret reaches every object using the ProviderConfig).
    pub fn remember(&self, r: &Resolved) {
        self.accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                r.config.name_any(),
                (
                    r.config.uid(),
                    r.config.metadata.generation,
                    r.account.clone(),
                    r.fingerprint,
                ),
            );
    }

    /// The compute client for a resolved ProviderConfig (built once per fingerprint).
    pub async fn compute(
        &self,
        ctx: &Context,
        r: &Resolved,
    ) -> Result<Arc<dyn ComputeProvider>, Error> {
        let name = r.config.name_any();
        let mut entries = self.entries.lock().await;
        if let Some((fp, p)) = entries.get(&name)
            && *fp == r.fingerprint
        {
            return Ok(p.clone());
        }
        let policy = RetryPolicy {
            timeout: ctx.config.vendor_timeout,
            ..Default::default()
        };
        let p: Arc<dyn ComputeProvider> =
            cloud::connect(&r.account, policy, Some(ctx.http_metrics.clone()))
                .map_err(|e| Error::permanent(reason::PROVIDER_CONFIG_WRONG_TYPE, e.to_string()))?
                .into();
        entries.insert(name, (r.fingerprint, p.clone()));
        Ok(p)
    }
}

/// A vendor client cached per ProviderConfig name and fingerprint.
type ClientCache<C> = Mutex<HashMap<String, (u64, Arc<C>)>>;

/// The cached client of `r` in `cache`, or one built now by `build` from an HTTP client with the
/// account's rate limit (built once per fingerprint, so its token, rate limit and connections are shared
/// by every object of the account). `Err` when the ProviderConfig is not of type `want`.
async fn cached<C>(
    ctx: &Context,
    r: &Resolved,
    cache: &ClientCache<C>,
    want: crate::crd::ProviderType,
    vendor: &'static str,
    build: impl FnOnce(crate::http::HttpClient) -> C,
) -> Result<Arc<C>, Error> {
    if r.account.provider != want {
        return Err(Error::permanent(
            reason::PROVIDER_CONFIG_WRONG_TYPE,
            format!(
                "ProviderConfig {:?} is of type {}, not {}",
                r.config.name_any(),
                r.account.provider.as_str(),
                want.as_str()
            ),
        ));
    }
    let name = r.config.name_any();
    let mut entries = cache.lock().await;
    if let Some((fp, c)) = entries.get(&name)
        && *fp == r.fingerprint
    {
        return Ok(c.clone());
    }
    let policy = RetryPolicy {
        timeout: ctx.config.vendor_timeout,
        ..Default::default()
    };
    let mut http =
        crate::http::HttpClient::new(vendor, policy).with_metrics(ctx.http_metrics.clone());
    if let Some((rps, burst)) = r.account.rate_limit {
        http = http.with_rate_limit(rps, burst);
    }
    let c = Arc::new(build(http));
    entries.insert(name, (r.fingerprint, c.clone()));
    Ok(c)
}

impl Providers {
    /// The 1NCE client for a resolved ProviderConfig of type `onence`.
    pub async fn onence(&self, ctx: &Context, r: &Resolved) -> Result<Arc<OneNce>, Error> {
        let (endpoint, credentials) = (r.account.endpoint.as_deref(), &r.account.credentials);
        cached(
            ctx,
            r,
            &self.sims,
            crate::crd::ProviderType::Onence,
            "1nce",
            |http| OneNce::new(http, Endpoints::at(endpoint), credentials),
        )
        .await
    }

    /// The Stripe client for a resolved ProviderConfig of type `stripe`.
    pub async fn stripe(
        &self,
        ctx: &Context,
        r: &Resolved,
    ) -> Result<Arc<crate::cloud::stripe::Stripe>, Error> {
        let (endpoint, credentials) = (r.account.endpoint.as_deref(), &r.account.credentials);
        cached(
            ctx,
            r,
            &self.stripes,
            crate::crd::ProviderType::Stripe,
            "stripe",
            |http| crate::cloud::stripe::Stripe::new(http, endpoint, credentials),
        )
        .await
    }

    /// The client of a resolved ProviderConfig of type `openai` (its check only).
    pub async fn openai(
        &self,
        ctx: &Context,
        r: &Resolved,
    ) -> Result<Arc<crate::cloud::openai::OpenAi>, Error> {
        let (endpoint, credentials) = (r.account.endpoint.as_deref(), &r.account.credentials);
        cached(
            ctx,
            r,
            &self.upstreams,
            crate::crd::ProviderType::Openai,
            "openai",
            |http| crate::cloud::openai::OpenAi::new(http, endpoint, credentials),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list() {
        assert!(namespace_allowed(&[], "anything"));
        let list = vec!["team-a".to_string(), "team-b".to_string()];
        assert!(namespace_allowed(&list, "team-b"));
        assert!(!namespace_allowed(&list, "team-c"));
    }
}
