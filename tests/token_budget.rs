//! TokenBudget end to end on the real local API server: the reconciler generates the keys into Secrets
//! (only their hashes elsewhere), the gateway — fed by watching the API server — serves them against
//! the simulator's upstream, status shows consumed (equal to the ledger) and remaining, thresholds
//! raise one Event each, an exhausted budget answers 429 naming its reset, a deleted Secret rotates the
//! key, and a Project's credit stop blocks the budget.

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use quartermaster::crd::TokenBudget;
use quartermaster::gateway::{Gateway, GatewayConfig};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);
const HOOK_SECRET: &str = "whsec_token_budget_tests";

struct Env {
    client: kube::Client,
    ns: String,
    id: String,
    sim: common::SimHandle,
    ledger: quartermaster::ledger::Ledger,
    ledger_url: String,
    gateway: String,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn apply(client: &kube::Client, ns: &str, kind: &str, name: &str, v: Value) {
    let ar = match kind {
        "Project" => kube::discovery::ApiResource::erase::<quartermaster::crd::Project>(&()),
        "TokenBudget" => kube::discovery::ApiResource::erase::<TokenBudget>(&()),
        "Subscription" => {
            kube::discovery::ApiResource::erase::<quartermaster::crd::Subscription>(&())
        }
        _ => unreachable!(),
    };
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    api.patch(
        name,
        &PatchParams::apply("quartermaster-tests").force(),
        &Patch::Apply(&v),
    )
    .await
    .unwrap();
}

async fn env(project_spec: Value) -> Env {
    let client = common::client().await;
    let ns = common::namespace(&client, "tb").await;
    let id = common::unique("tb");
    let dir = tempfile::tempdir().unwrap();
    let (ledger, ledger_url) = common::db::fresh_ledger(&dir).await;
    // The sim's Stripe webhooks go to the controller's endpoint (a SubscriptionPeriod budget follows
    // its Subscription's period as Stripe announces it).
    let hooks = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/webhooks/stripe", hooks.local_addr().unwrap());
    let sim = common::start_sim(move |c| {
        c.stripe_webhook_url = Some(hook_url);
        c.stripe_webhook_secret = Some(HOOK_SECRET.into());
    })
    .await;
    common::secret(&client, &ns, "llm-token", "token", "sk-upstream-secret").await;
    let pcs: Api<quartermaster::crd::ProviderConfig> = Api::all(client.clone());
    let pc = format!("{id}-llm");
    pcs.patch(
        &pc,
        &PatchParams::apply("quartermaster-tests").force(),
        &Patch::Apply(&json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
            "metadata": {"name": pc, "labels": {"qm-test": id}},
            "spec": {
                "type": "openai", "endpoint": format!("{}/v1", sim.url),
                "credentialsSecretRef": {"name": "llm-token", "namespace": ns, "key": "token"},
                "allowedNamespaces": [ns],
                "models": [{"name": "gpt-4o-mini", "inputPerMillion": "0.15", "outputPerMillion": "0.60"}],
            }
        })),
    )
    .await
    .unwrap();
    let mut p = json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "Project",
        "metadata": {"name": "acme", "labels": {"qm-test": id}},
        "spec": {"currency": "USD"},
    });
    common::env::merge(&mut p, json!({"spec": project_spec}));
    apply(&client, &ns, "Project", "acme", p).await;
    let hook_ledger = ledger.clone();
    let (_, stop) = common::start_controller_full(
        client.clone(),
        &id,
        Some(ledger.clone()),
        |c| c.budget_status_interval = Duration::from_millis(500),
        move |ctx| {
            let waker = ctx.clone();
            let hook = quartermaster::webhooks::StripeHook::new(
                hook_ledger,
                vec![HOOK_SECRET.as_bytes().to_vec()],
                300,
                ctx.metrics.clone(),
                Box::new(move |h| quartermaster::controller::subscription::stripe_event(&waker, h)),
            );
            let router = quartermaster::webhooks::router(None, Some(std::sync::Arc::new(hook)));
            tokio::spawn(async move { axum::serve(hooks, router).await.unwrap() });
        },
    );
    // The gateway: its own process in production; here in-process, fed by the same API server.
    let gw = Gateway::new(
        GatewayConfig {
            flush_interval: Duration::from_millis(100),
            ..Default::default()
        },
        ledger.clone(),
        &format!("gw-{id}"),
    );
    tokio::spawn(quartermaster::gateway::watch::run(
        client.clone(),
        gw.clone(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(gw.serve(listener, futures::future::pending()));
    Env {
        client,
        ns,
        id,
        sim,
        ledger,
        ledger_url,
        gateway,
        _stop: stop,
        _dir: dir,
    }
}

impl Env {
    async fn budget(&self, tokens: u64, extra: Value) {
        let mut spec = json!({
            "tokens": tokens, "period": "Monthly",
            "projectRef": {"name": "acme"},
            "providerConfigRef": {"name": format!("{}-llm", self.id)},
            "models": ["gpt-4o-mini"],
            "alertThresholds": [50, 100],
            "defaultMaxTokens": 16,
            "apiKeys": [{"name": "prod"}],
        });
        common::env::merge(&mut spec, extra);
        apply(
            &self.client,
            &self.ns,
            "TokenBudget",
            "bot",
            json!({
                "apiVersion": "quartermaster.dev/v1alpha1", "kind": "TokenBudget",
                "metadata": {"name": "bot", "labels": {"qm-test": self.id}},
                "spec": spec,
            }),
        )
        .await;
    }

    /// A Stripe account (ProviderConfig `<id>-stripe`) whose plan `llm` carries `entitlements`, and a
    /// Subscription `llm` of Project acme to it.
    async fn plan(&self, entitlements: Value) {
        common::secret(&self.client, &self.ns, "stripe", "secretKey", "sk_test_123").await;
        let stripe_pc = format!("{}-stripe", self.id);
        Api::<quartermaster::crd::ProviderConfig>::all(self.client.clone())
            .patch(
                &stripe_pc,
                &PatchParams::apply("quartermaster-tests").force(),
                &Patch::Apply(&json!({
                    "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
                    "metadata": {"name": stripe_pc, "labels": {"qm-test": self.id}},
                    "spec": {"type": "stripe", "endpoint": self.sim.url,
                             "credentialsSecretRef": {"name": "stripe", "namespace": self.ns, "key": "secretKey"},
                             "plans": [{"name": "llm", "priceID": "price_basic",
                                        "entitlements": entitlements}]},
                })),
            )
            .await
            .unwrap();
        apply(
            &self.client,
            &self.ns,
            "Subscription",
            "llm",
            json!({
                "apiVersion": "quartermaster.dev/v1alpha1", "kind": "Subscription",
                "metadata": {"name": "llm", "labels": {"qm-test": self.id}},
                "spec": {"plan": "llm", "customer": {"email": "ops@acme.example"},
                         "projectRef": {"name": "acme"}, "providerConfigRef": {"name": stripe_pc}},
            }),
        )
        .await;
    }

    fn budgets(&self) -> Api<TokenBudget> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn wait<F: Fn(&TokenBudget) -> bool>(&self, what: &str, f: F) -> TokenBudget {
        let api = self.budgets();
        common::eventually(T, what, || async {
            api.get_opt("bot").await.ok().flatten().filter(|b| f(b))
        })
        .await
    }

    async fn key(&self) -> String {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns);
        let s = common::eventually(T, "the key Secret", || async {
            secrets.get_opt("bot-prod").await.ok().flatten()
        })
        .await;
        String::from_utf8(s.data.unwrap()["apiKey"].0.clone()).unwrap()
    }

    async fn chat(&self, key: &str) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", self.gateway))
            .bearer_auth(key)
            .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Waits until the gateway accepts `key` (its watch saw the budget's status).
    async fn served(&self, key: &str) -> Value {
        common::eventually(T, "the gateway serves the key", || async {
            let (s, v) = self.chat(key).await;
            (s == 200).then_some(v)
        })
        .await
    }

    async fn events(&self) -> Vec<(String, String)> {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &self.ns);
        events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }
}

fn ready(b: &TokenBudget) -> bool {
    b.status.as_ref().is_some_and(|s| {
        s.observed_generation == b.metadata.generation
            && s.conditions.iter().any(|c| {
                c.type_ == "Ready"
                    && c.status == quartermaster::crd::conditions::ConditionStatus::True
            })
    })
}

#[tokio::test]
async fn a_budget_serves_its_keys_through_the_gateway_until_exhausted_and_rotates_them() {
    quartermaster::install_crypto_provider();
    let e = env(json!({})).await;
    // Each request uses 2 prompt words + 16 output tokens = 18 tokens and reserves 66 (its prompt's
    // bound, 50, plus 16): 200 tokens serve several, never more than 200.
    e.budget(200, json!({})).await;
    let b = e.wait("Ready", ready).await;
    let key = e.key().await;
    let st = b.status.clone().unwrap();
    assert_eq!(st.api_keys.len(), 1);
    assert_eq!(
        st.api_keys[0].sha256,
        quartermaster::budget::keys::hash(&key)
    );
    assert_eq!(st.allocation, Some(200));
    let status_text = serde_json::to_string(&b).unwrap();
    assert!(!status_text.contains(&key), "the key is only in its Secret");

    let first = e.served(&key).await;
    let mut used = first["usage"]["total_tokens"].as_i64().unwrap();
    let mut refused = None;
    for _ in 0..20 {
        let (s, v) = e.chat(&key).await;
        match s {
            200 => used += v["usage"]["total_tokens"].as_i64().unwrap(),
            429 => {
                refused = Some(v);
                break;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    let refused = refused.expect("the budget runs out");
    // Tokens remain, fewer than a request reserves: refused saying how many are left (a smaller
    // request would pass), not as exhausted.
    assert_eq!(refused["error"]["code"], "budget_insufficient", "{refused}");
    let msg = refused["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "TokenBudget {}/bot has about {} left",
            e.ns,
            200 - used
        )),
        "{msg}"
    );
    assert!(used <= 200, "served {used} tokens of 200");
    assert!(
        used >= 200 - 66,
        "served {used} tokens of 200: the last refusal left less than a request"
    );

    // Status catches up with the ledger: consumed equals it, to the token.
    let b = e
        .wait("consumed shows every request", |b| {
            b.status.as_ref().and_then(|s| s.consumed) == Some(used as u64)
        })
        .await;
    let st = b.status.unwrap();
    let now = jiff::Timestamp::now().as_second();
    let ledger = e
        .ledger
        .consumed(
            b.metadata.uid.as_deref().unwrap(),
            now - 40 * 86_400,
            now + 86_400,
        )
        .await
        .unwrap();
    assert_eq!(ledger.tokens, used);
    assert!(
        st.cost.as_deref().is_some_and(|c| c.ends_with(" USD")),
        "{:?}",
        st.cost
    );
    assert!(st.period_end.is_some() && st.period_start.is_some());
    // The printer column shows the cost at the currency's precision; status keeps the exact amount.
    assert_eq!(st.cost_rounded.as_deref(), Some("0.00 USD"));
    assert_ne!(st.cost, st.cost_rounded);
    // Exhausted, or within one request of it: the 50 % threshold was crossed and announced once.
    let events = e.events().await;
    let crossed: Vec<_> = events
        .iter()
        .filter(|(r, _)| r == "BudgetThresholdCrossed")
        .collect();
    assert!(
        crossed.iter().any(|(_, n)| n.contains("crossed 50%")),
        "{events:?} {st:?}"
    );
    assert_eq!(
        crossed
            .iter()
            .filter(|(_, n)| n.contains("crossed 50%"))
            .count(),
        1
    );
    assert!(!events.iter().any(|(_, n)| n.contains(&key)));

    // Deleting the Secret rotates the key: the old one stops working, a new one is generated.
    let secrets: Api<Secret> = Api::namespaced(e.client.clone(), &e.ns);
    secrets
        .delete("bot-prod", &DeleteParams::default())
        .await
        .unwrap();
    let rotated = common::eventually(T, "a new key", || async {
        let s = secrets.get_opt("bot-prod").await.ok().flatten()?;
        let k = String::from_utf8(s.data?.get("apiKey")?.0.clone()).ok()?;
        (k != key).then_some(k)
    })
    .await;
    common::eventually(T, "the old key refused", || async {
        (e.chat(&key).await.0 == 401).then_some(())
    })
    .await;
    // The new key reaches the same (exhausted) budget.
    common::eventually(T, "the new key reaches the budget", || async {
        (e.chat(&rotated).await.0 == 429).then_some(())
    })
    .await;
    // Raising the allocation serves it again.
    e.budget(1000, json!({})).await;
    e.served(&rotated).await;
}

#[tokio::test]
async fn a_subscription_period_budget_takes_its_plans_tokens_and_resets_when_the_period_turns() {
    quartermaster::install_crypto_provider();
    let e = env(json!({})).await;
    // A Stripe account whose plan grants 100 tokens a period, and a Subscription to it.
    e.plan(json!({"tokensPerPeriod": 100})).await;
    apply(
        &e.client,
        &e.ns,
        "TokenBudget",
        "bot",
        json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "TokenBudget",
            "metadata": {"name": "bot", "labels": {"qm-test": e.id}},
            "spec": {"period": "SubscriptionPeriod", "subscriptionRef": {"name": "llm"},
                     "projectRef": {"name": "acme"},
                     "providerConfigRef": {"name": format!("{}-llm", e.id)},
                     "models": ["gpt-4o-mini"], "defaultMaxTokens": 16,
                     "apiKeys": [{"name": "prod"}]},
        }),
    )
    .await;
    let b = e.wait("Ready", ready).await;
    let first = b.status.unwrap();
    assert_eq!(first.allocation, Some(100), "the plan's tokensPerPeriod");
    let subs: Api<quartermaster::crd::Subscription> = Api::namespaced(e.client.clone(), &e.ns);
    let sub = subs.get("llm").await.unwrap().status.unwrap();
    assert_eq!(first.period_start, sub.current_period_start);
    assert_eq!(first.period_end, sub.current_period_end);

    // Spend the period's 100 tokens (18 a request, 66 reserved): then 429 until the period turns.
    let key = e.key().await;
    let mut used = e.served(&key).await["usage"]["total_tokens"]
        .as_i64()
        .unwrap();
    loop {
        let (s, v) = e.chat(&key).await;
        match s {
            200 => used += v["usage"]["total_tokens"].as_i64().unwrap(),
            429 => {
                // 100 is not a multiple of 18: what is left is fewer than a request reserves.
                assert_eq!(v["error"]["code"], "budget_insufficient", "{v}");
                break;
            }
            other => panic!("unexpected {other}: {v}"),
        }
        assert!(used <= 100, "served {used} tokens of 100");
    }

    // Stripe resets the billing cycle (the period ends now): the webhook wakes the Subscription, the
    // budget takes the new period, and the gateway serves the key again from a fresh allocation. (The
    // ledger is by time: the reset comes a second after the last request, as it would in real life,
    // so the old period's requests are all before the new period's start.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let sub_id = sub.subscription_id.clone().unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/v1/subscriptions/{sub_id}", e.sim.url))
        .bearer_auth("sk_test_123")
        .form(&[("billing_cycle_anchor", "now")])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let sub_start = sub.current_period_start.clone();
    common::eventually(T, "the Subscription in its new period", || async {
        let st = subs.get("llm").await.ok()?.status?;
        (st.current_period_start != sub_start).then_some(())
    })
    .await;
    let b = e
        .wait("the budget in the new period", |b| {
            b.status
                .as_ref()
                .is_some_and(|s| s.period_start != first.period_start)
        })
        .await;
    let next = b.status.unwrap();
    assert_eq!(next.allocation, Some(100));
    assert!(next.period_start > first.period_start);
    let v = e.served(&key).await;
    let fresh = v["usage"]["total_tokens"].as_i64().unwrap();
    // The old period's spend stays in the old period; the new one counts from zero.
    e.wait("consumed counts the new period only", |b| {
        b.status.as_ref().and_then(|s| s.consumed) == Some(fresh as u64)
    })
    .await;
    let uid = b.metadata.uid.clone().unwrap();
    let now = jiff::Timestamp::now().as_second();
    let all = e
        .ledger
        .consumed(&uid, now - 86_400, now + 86_400)
        .await
        .unwrap();
    assert_eq!(all.tokens, used + fresh, "every token in the ledger, once");
}

#[tokio::test]
async fn a_project_without_entitlement_blocks_its_budgets() {
    quartermaster::install_crypto_provider();
    // The Project's Subscription does not exist: it is not entitled, and nothing new may be spent.
    let e = env(json!({"subscriptionRef": {"name": "missing"}})).await;
    blocked_by_the_project(&e, "SubscriptionInactive", "acme").await;
}

/// `e`'s budget, once created, is blocked by its Project with `reason`, and the gateway refuses its
/// key with a message holding `needle`, sending nothing upstream.
async fn blocked_by_the_project(e: &Env, reason: &str, needle: &str) {
    e.budget(10_000, json!({})).await;
    let b = e
        .wait("blocked by its Project", |b| {
            b.status.as_ref().is_some_and(|s| s.blocked.is_some())
        })
        .await;
    let st = b.status.unwrap();
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.reason == reason),
        "{:?}",
        st.conditions
    );
    let key = e.key().await;
    let v = common::eventually(T, "the gateway refuses the blocked budget", || async {
        let (s, v) = e.chat(&key).await;
        (s == 429 && v["error"]["code"] == "budget_blocked").then_some(v)
    })
    .await;
    assert!(
        v["error"]["message"].as_str().unwrap().contains(needle),
        "{v}"
    );
    assert_eq!(
        reqwest::Client::new()
            .get(format!("{}/_sim/openai/state", e.sim.url))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()["requests"],
        0,
        "nothing reached the upstream"
    );
}

/// A plan's entitlements may carry per-key rate limits: the budget's status shows the lower of its own
/// and the plan's, and the gateway holds every key to it.
#[tokio::test]
async fn a_plans_rate_limits_lower_the_budgets_own() {
    quartermaster::install_crypto_provider();
    let e = env(json!({"subscriptionRef": {"name": "llm"}})).await;
    e.plan(json!({"requestsPerMinute": 2, "tokensPerMinute": 1000000}))
        .await;
    e.budget(100_000, json!({"rateLimits": {"requestsPerMinute": 50}}))
        .await;
    let b = e
        .wait("the plan's limits in status", |b| {
            b.status
                .as_ref()
                .and_then(|s| s.rate_limits.as_ref())
                .is_some_and(|r| r.requests_per_minute == Some(2))
        })
        .await;
    let limits = b.status.unwrap().rate_limits.unwrap();
    assert_eq!(limits.tokens_per_minute, Some(1_000_000));
    let key = e.key().await;
    e.served(&key).await;
    // 2 a minute (the first may have been served under the budget's own 50, had the gateway not seen
    // the status yet): refused by the third or fourth request.
    let mut served = 1;
    let mut refused = None;
    for _ in 0..4 {
        let (s, v) = e.chat(&key).await;
        match s {
            200 => served += 1,
            _ => {
                refused = Some((s, v));
                break;
            }
        }
    }
    let (s, v) = refused.expect("the plan's 2 a minute holds");
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (429, Some("rate_limit_exceeded")),
        "{v}"
    );
    assert!(served <= 3, "{served} served at 2 a minute");
}

/// Token spend counts toward the Project's `limits.maxMonthlySpend`: once the month-to-date cost
/// reaches it, the Project's budgets are blocked (`SpendLimitReached`) and the gateway serves nothing.
#[tokio::test]
async fn a_project_at_its_monthly_spend_limit_blocks_its_budgets() {
    quartermaster::install_crypto_provider();
    let e = env(json!({"limits": {"maxMonthlySpend": "0"}})).await;
    blocked_by_the_project(&e, "SpendLimitReached", "limits.maxMonthlySpend").await;
}

/// Two `quartermaster gateway` processes (as two replicas run) share one budget through PostgreSQL:
/// concurrent requests to both never spend more than the allocation, status agrees with what the
/// upstream reported, and the key appears in no log line.
#[tokio::test]
async fn two_gateway_processes_never_overspend_a_shared_budget() {
    quartermaster::install_crypto_provider();
    let e = env(json!({})).await;
    if !e.ledger_url.starts_with("postgres") {
        eprintln!(
            "\n*** SKIPPED: two gateway processes share a budget only through PostgreSQL (QM_TEST_DATABASE_URL) ***\n"
        );
        return;
    }
    // Each request uses 18 tokens and reserves 66: 300 tokens serve at most 16 of 40.
    e.budget(300, json!({})).await;
    e.wait("Ready", ready).await;
    let key = e.key().await;
    let mut gateways = Vec::new();
    for i in 0..2 {
        let port = common::process::free_port();
        let log = std::env::temp_dir().join(format!("gw-{}-{i}.log", e.id));
        let proc = common::process::Proc::spawn(
            common::process::quartermaster()
                .args([
                    "gateway",
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--admin-listen",
                    "127.0.0.1:0",
                    "--flush-interval-ms",
                    "100",
                ])
                .env("DATABASE_URL", &e.ledger_url)
                .env("KUBECONFIG", common::kubeconfig())
                .env("RUST_LOG", "debug")
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap()),
        );
        let url = format!("http://127.0.0.1:{port}");
        // The key and the upstream come from two watches: both must have arrived.
        common::eventually(
            T,
            "the gateway process knows the key and the model",
            || async {
                let r = reqwest::Client::new()
                    .get(format!("{url}/v1/models"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .ok()?;
                let models: Value = r.json().await.ok()?;
                (models["data"][0]["id"] == "gpt-4o-mini").then_some(())
            },
        )
        .await;
        gateways.push((proc, url, log));
    }
    let results = futures::future::join_all((0..40).map(|i| {
        let (url, key) = (gateways[i % 2].1.clone(), key.clone());
        async move {
            let resp = reqwest::Client::new()
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    }))
    .await;
    let used: i64 = results
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, v)| v["usage"]["total_tokens"].as_i64().unwrap())
        .sum();
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    assert!(
        results.iter().all(|(s, _)| *s == 200 || *s == 429),
        "{results:?}"
    );
    assert!(ok >= 1 && used <= 300, "{ok} served, {used} tokens of 300");
    e.wait("consumed equals what the upstream reported", |b| {
        b.status.as_ref().and_then(|s| s.consumed) == Some(used as u64)
    })
    .await;
    for (proc, _, log) in gateways {
        drop(proc);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("gateway listening"), "{text}");
        assert!(!text.contains(&key), "the key is in the gateway's log");
        assert!(
            !text.contains("sk-upstream-secret"),
            "the upstream's key is in the gateway's log"
        );
    }
}
