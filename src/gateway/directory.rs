//! What the gateway knows, kept in memory and fed by watches (never read per request): API key hashes →
//! their budget, and the upstreams (ProviderConfigs of type `openai`) with their models, prices and
//! credentials.

use std::collections::HashMap;

use crate::fast_map::FastMap;
use std::sync::{Arc, RwLock};

use jiff::tz::TimeZone;
use kube::ResourceExt;
use rust_decimal::Decimal;

use super::endpoint::Endpoint;
use super::route::Route;
use crate::budget::{self, period};
use crate::crd::ProviderConfig;
use crate::crd::TokenBudget;
use crate::crd::provider_config::ProviderType;
use crate::crd::token_budget::BudgetPeriod;
use crate::ledger::metering::{Price, Subject};

/// How a budget's period is found.
#[derive(Clone, Debug)]
pub enum PeriodRule {
    /// Calendar-aligned in a time zone.
    Calendar(BudgetPeriod, TimeZone),
    /// The Subscription's current period, as the budget's status last recorded it.
    Subscription(Option<period::Window>),
}

/// A budget as the gateway enforces it.
#[derive(Clone, Debug)]
pub struct BudgetView {
    /// Who is billed: namespace, Project, the budget's name and UID.
    pub subject: Subject,
    /// Tokens per period (`None`: not known yet, every request is refused).
    pub allocation: Option<i64>,
    /// How the period is found.
    pub period: PeriodRule,
    /// Upstreams (ProviderConfig names), in failover order.
    pub upstreams: Vec<String>,
    /// Allowed models (empty: all the upstreams price).
    pub models: Vec<String>,
    /// Requests per minute per key.
    pub rpm: Option<u32>,
    /// Tokens per minute per key.
    pub tpm: Option<u64>,
    /// Output tokens reserved when a request sets no limit.
    pub default_max_tokens: i64,
    /// Requests per minute once exhausted (`onExhausted: Throttle`); `None`: Block.
    pub throttle_rpm: Option<u32>,
    /// Why every request is refused (the Project's money stop, a lost entitlement…).
    pub blocked: Option<String>,
    /// The only currency usage may be priced in (`None`: any).
    pub currency: Option<String>,
    last_window: WindowCache,
}

/// The last calendar window a budget was in (a cache; a copy of a view starts empty).
#[derive(Debug, Default)]
struct WindowCache(std::sync::Mutex<Option<period::Window>>);

impl Clone for WindowCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl WindowCache {
    fn get(&self) -> Option<period::Window> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, w: period::Window) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(w);
    }
}

impl BudgetView {
    /// The view of `b`, or why it cannot be served.
    pub fn of(b: &TokenBudget) -> Self {
        let status = b.status.clone().unwrap_or_default();
        let limits = status.rate_limits.as_ref().or(b.spec.rate_limits.as_ref());
        let ns = b.namespace().unwrap_or_default();
        let period = match b.spec.period {
            // The gateway checks that the period holds the time of each request itself.
            BudgetPeriod::SubscriptionPeriod => PeriodRule::Subscription(period::parse(
                status.period_start.as_deref(),
                status.period_end.as_deref(),
            )),
            p => match period::zone(b.spec.time_zone.as_deref()) {
                Ok(tz) => PeriodRule::Calendar(p, tz),
                Err(_) => PeriodRule::Subscription(None),
            },
        };
        let mut upstreams = vec![b.spec.provider_config_ref.name.clone()];
        upstreams.extend(
            b.spec
                .fallback_provider_config_refs
                .iter()
                .map(|r| r.name.clone()),
        );
        Self {
            subject: Subject {
                namespace: ns,
                project: b
                    .spec
                    .project_ref
                    .as_ref()
                    .map(|r| r.name.clone())
                    .unwrap_or_default(),
                project_uid: status.project_uid.clone().unwrap_or_default(),
                kind: "TokenBudget".into(),
                name: b.name_any(),
                uid: b.uid().unwrap_or_default(),
            },
            allocation: budget::allocation(b).and_then(|a| i64::try_from(a).ok()),
            period,
            upstreams,
            models: b.spec.models.clone(),
            // The controller's effective limits (the plan's lowering the budget's own) once it wrote
            // them; the budget's own before.
            rpm: limits.and_then(|r| r.requests_per_minute),
            tpm: limits.and_then(|r| r.tokens_per_minute),
            default_max_tokens: i64::from(
                b.spec
                    .default_max_tokens
                    .unwrap_or(budget::DEFAULT_MAX_TOKENS),
            ),
            throttle_rpm: budget::throttles(b).then(|| {
                b.spec
                    .throttle_requests_per_minute
                    .unwrap_or(budget::DEFAULT_THROTTLE_RPM)
            }),
            blocked: status.blocked.clone(),
            currency: status.currency.clone(),
            last_window: WindowCache::default(),
        }
    }

    /// `ns/name` of the budget.
    pub fn id(&self) -> String {
        format!("{}/{}", self.subject.namespace, self.subject.name)
    }

    /// The period holding `now`: `Err` says why none is known. A calendar period is worked out once
    /// and reused while it holds `now` (time-zone arithmetic is not free on the hot path).
    pub fn window(&self, now: i64) -> Result<period::Window, String> {
        match &self.period {
            PeriodRule::Calendar(p, tz) => {
                if let Some(w) = self.last_window.get().filter(|w| w.contains(now)) {
                    return Ok(w);
                }
                let w = period::calendar(*p, tz, now)?;
                self.last_window.set(w);
                Ok(w)
            }
            PeriodRule::Subscription(Some(w)) if w.contains(now) => Ok(*w),
            PeriodRule::Subscription(Some(w)) => Err(format!(
                "its Subscription's period ended at {}; the next one is not known yet",
                period::rfc3339(w.end)
            )),
            PeriodRule::Subscription(None) => {
                Err("its period is not known yet (see the TokenBudget's status)".into())
            }
        }
    }
}

/// A model an upstream serves, with its prices.
#[derive(Clone, Debug)]
pub struct Model {
    /// The name sent upstream.
    pub upstream_model: String,
    /// Price of input tokens (per million), the tenant's with the account's markup.
    pub input: Price,
    /// Price of output tokens (per million).
    pub output: Price,
    /// The model's name and the upstream's, for the usage rows.
    pub origin: crate::ledger::metering::requests::Origin,
    /// The largest output limit a request may ask of it (the ProviderConfig's `maxOutputTokens`).
    pub max_output_tokens: i64,
}

/// A model's output limit when its ProviderConfig sets none: the largest a 32-bit integer holds, as
/// OpenAI-compatible servers read the field.
pub const MAX_OUTPUT_TOKENS: i64 = i32::MAX as i64;

/// An OpenAI-compatible upstream.
pub struct Upstream {
    /// The ProviderConfig's name.
    pub name: String,
    /// Base URL, without a trailing slash (e.g. `https://openrouter.ai/api/v1`).
    pub base_url: String,
    /// Its API key (never logged or shown).
    pub api_key: String,
    /// `Bearer <api_key>`, marked sensitive; `None` when the key cannot be a header value.
    pub authorization: Option<http::HeaderValue>,
    /// Each route's URL there, parsed once (in [`Route::ALL`] order); `None` when the base URL is not
    /// an absolute http(s) URL.
    pub urls: Option<Vec<Endpoint>>,
    /// Models by the name clients use.
    /// Models by the name clients use (shared: a request holds its model without copying it).
    pub models: FastMap<String, Arc<Model>>,
    /// Namespaces that may use it (empty: all).
    pub allowed_namespaces: Vec<String>,
    /// Nothing is sent through it while suspended.
    pub suspended: bool,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("models", &self.models.len())
            .finish_non_exhaustive()
    }
}

/// OpenAI's public API, when a ProviderConfig names no endpoint.
pub const OPENAI_BASE_URL: &str = crate::cloud::openai::DEFAULT_ENDPOINT;

impl Upstream {
    /// The upstream of ProviderConfig `pc` (type `openai`) with credentials `api_key`; `None` for other
    /// types.
    pub fn of(pc: &ProviderConfig, api_key: String) -> Option<Self> {
        if pc.spec.type_ != ProviderType::Openai {
            return None;
        }
        let markup = pc.spec.markup();
        let models = pc
            .spec
            .models
            .iter()
            .filter_map(|m| {
                let price = |s: &str| s.parse::<Decimal>().ok();
                Some((
                    m.name.clone(),
                    Arc::new(Model {
                        upstream_model: m.upstream_model.clone().unwrap_or_else(|| m.name.clone()),
                        input: Price::with_markup(
                            price(&m.input_per_million)?,
                            &m.currency,
                            markup,
                        ),
                        output: Price::with_markup(
                            price(&m.output_per_million)?,
                            &m.currency,
                            markup,
                        ),
                        origin: crate::ledger::metering::requests::Origin {
                            model: m.name.as_str().into(),
                            upstream: pc.name_any().into(),
                        },
                        max_output_tokens: m
                            .max_output_tokens
                            .unwrap_or(MAX_OUTPUT_TOKENS)
                            .clamp(1, MAX_OUTPUT_TOKENS),
                    }),
                ))
            })
            .collect();
        let base_url = pc
            .spec
            .endpoint
            .clone()
            .unwrap_or_else(|| OPENAI_BASE_URL.into())
            .trim_end_matches('/')
            .to_string();
        let urls = Route::ALL
            .iter()
            .map(|r| Endpoint::parse(&format!("{base_url}{}", r.path())))
            .collect();
        let authorization = http::HeaderValue::from_str(&format!("Bearer {api_key}"))
            .ok()
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        Some(Self {
            name: pc.name_any(),
            base_url,
            urls,
            authorization,
            api_key,
            models,
            allowed_namespaces: pc.spec.allowed_namespaces.clone(),
            suspended: pc.spec.suspended,
        })
    }

    /// The URL of `route` there.
    pub fn url(&self, route: Route) -> Option<&Endpoint> {
        self.urls.as_ref()?.get(route.index())
    }

    /// Whether objects of namespace `ns` may send requests through it.
    pub fn serves(&self, ns: &str) -> bool {
        !self.suspended
            && (self.allowed_namespaces.is_empty()
                || self.allowed_namespaces.iter().any(|n| n == ns))
    }
}

/// A key's entry: its budget and the key's name.
#[derive(Clone, Debug)]
pub struct KeyEntry {
    /// The budget.
    pub budget: Arc<BudgetView>,
    /// The key's name (`spec.apiKeys[].name`): rate limits are per key.
    pub key_name: Arc<str>,
}

/// Keys and upstreams, shared by every request.
#[derive(Debug, Default)]
pub struct Directory {
    keys: RwLock<FastMap<String, KeyEntry>>,
    by_budget: RwLock<HashMap<String, Vec<String>>>,
    upstreams: RwLock<FastMap<String, Arc<Upstream>>>,
}

impl Directory {
    /// The entry of the key whose SHA-256 is `hash`.
    pub fn key(&self, hash: &str) -> Option<KeyEntry> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
            .cloned()
    }

    /// Adds or replaces budget `b` and its keys.
    pub fn put_budget(&self, b: &TokenBudget) {
        let uid = b.uid().unwrap_or_default();
        let view = Arc::new(BudgetView::of(b));
        let keys: Vec<(String, KeyEntry)> = b
            .status
            .as_ref()
            .map(|s| s.api_keys.as_slice())
            .unwrap_or_default()
            .iter()
            // Only keys the spec still names: a key removed from the spec stops working at once.
            .filter(|k| b.spec.api_keys.iter().any(|s| s.name == k.name))
            .map(|k| {
                (
                    k.sha256.clone(),
                    KeyEntry {
                        budget: view.clone(),
                        key_name: k.name.as_str().into(),
                    },
                )
            })
            .collect();
        let mut all = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let mut owned = self.by_budget.write().unwrap_or_else(|p| p.into_inner());
        for old in owned.remove(&uid).unwrap_or_default() {
            all.remove(&old);
        }
        owned.insert(uid, keys.iter().map(|k| k.0.clone()).collect());
        all.extend(keys);
    }

    /// Forgets budget `uid` and its keys.
    pub fn remove_budget(&self, uid: &str) {
        let mut all = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let mut owned = self.by_budget.write().unwrap_or_else(|p| p.into_inner());
        for old in owned.remove(uid).unwrap_or_default() {
            all.remove(&old);
        }
    }

    /// Budgets known.
    pub fn budgets(&self) -> usize {
        self.by_budget
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Adds or replaces an upstream.
    pub fn put_upstream(&self, u: Upstream) {
        self.upstreams
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(u.name.clone(), Arc::new(u));
    }

    /// Forgets upstream `name`.
    pub fn remove_upstream(&self, name: &str) {
        self.upstreams
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// Upstream `name`.
    pub fn upstream(&self, name: &str) -> Option<Arc<Upstream>> {
        self.upstreams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_key_goes_out_as_a_sensitive_bearer_header_and_a_bad_one_makes_no_header() {
        let pc: ProviderConfig = serde_json::from_value(serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
            "metadata": {"name": "up"},
            "spec": {"type": "openai", "endpoint": "http://127.0.0.1:9/v1",
                     "credentialsSecretRef": {"name": "s", "namespace": "n", "key": "k"}},
        }))
        .unwrap();
        let u = Upstream::of(&pc, "sk-123".into()).unwrap();
        let auth = u.authorization.as_ref().unwrap();
        assert_eq!(auth.to_str().unwrap(), "Bearer sk-123");
        assert!(auth.is_sensitive());
        assert_eq!(
            u.url(Route::Chat).unwrap().to_string(),
            "http://127.0.0.1:9/v1/chat/completions"
        );
        assert!(format!("{u:?}").find("sk-123").is_none());
        let bad = Upstream::of(&pc, "sk-\n123".into()).unwrap();
        assert!(bad.authorization.is_none());
    }
}
