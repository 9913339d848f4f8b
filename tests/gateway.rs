//! The LLM gateway against the simulator's OpenAI upstream and a real ledger (PostgreSQL when the test
//! script provides one, else SQLite): request shapes, streaming, usage settled to the token, budgets that
//! hold under concurrency across two gateway processes sharing the ledger, failover, and refusals in
//! OpenAI's error shape. Budgets and upstreams are put into the gateway's directory directly (the watch
//! that feeds it in production is tested end to end in `tests/token_budget.rs`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::ObjectMeta;
use quartermaster::budget::keys;
use quartermaster::crd::provider_config::{
    ModelPrice, ProviderConfigSpec, ProviderType, SecretKeyReference,
};
use quartermaster::crd::token_budget::{
    ApiKeySpec, ApiKeyStatus, TokenBudgetSpec, TokenBudgetStatus,
};
use quartermaster::crd::{ProviderConfig, ProviderConfigReference, TokenBudget};
use quartermaster::gateway::directory::Upstream;
use quartermaster::gateway::{Gateway, GatewayConfig};
use quartermaster::ledger::Ledger;
use serde_json::{Value, json};

struct Rig {
    sim: common::SimHandle,
    ledger: Ledger,
    gws: Vec<(Arc<Gateway>, String)>,
    key: String,
    budget: TokenBudget,
    _dir: tempfile::TempDir,
}

fn provider(name: &str, endpoint: &str, models: &[&str]) -> ProviderConfig {
    let mut pc = ProviderConfig::new(
        name,
        ProviderConfigSpec {
            type_: ProviderType::Openai,
            credentials_secret_ref: SecretKeyReference {
                name: "x".into(),
                namespace: "x".into(),
                key: "token".into(),
            },
            endpoint: Some(endpoint.into()),
            rate_limit: None,
            suspended: false,
            allowed_namespaces: vec![],
            adoption: None,
            vendor_resources: Vec::new(),
            release: None,
            require_project: false,
            markup_percent: Some("20".into()),
            sim_claims: vec![],
            top_up_price: None,
            transfer_price: None,
            plans: vec![],
            models: models
                .iter()
                .map(|m| ModelPrice {
                    name: (*m).into(),
                    upstream_model: None,
                    input_per_million: "2.5".into(),
                    output_per_million: "10".into(),
                    currency: "USD".into(),
                    max_output_tokens: None,
                })
                .collect(),
        },
    );
    pc.metadata.uid = Some(format!("uid-{name}"));
    pc
}

fn budget(tokens: u64, extra: Value) -> (TokenBudget, String) {
    let key = keys::generate();
    let mut spec = json!({
        "tokens": tokens,
        "period": "Monthly",
        "providerConfigRef": {"name": "primary"},
        "apiKeys": [{"name": "prod"}],
        "defaultMaxTokens": 50,
    });
    common::env::merge(&mut spec, extra);
    let spec: TokenBudgetSpec = serde_json::from_value(spec).unwrap();
    let mut b = TokenBudget::new("bot", spec);
    b.metadata = ObjectMeta {
        name: Some("bot".into()),
        namespace: Some("demo".into()),
        uid: Some(format!("budget-{:08x}", rand::random::<u32>())),
        ..Default::default()
    };
    b.status = Some(TokenBudgetStatus {
        api_keys: vec![ApiKeyStatus {
            name: "prod".into(),
            secret_name: "bot-prod".into(),
            sha256: keys::hash(&key),
        }],
        project_uid: Some("project-uid".into()),
        ..Default::default()
    });
    let _ = ApiKeySpec {
        name: String::new(),
    };
    (b, key)
}

/// A gateway process of its own on `ledger`, serving budget `b` through the simulator at `sim`.
async fn gateway(ledger: &Ledger, b: &TokenBudget, sim: &str, i: usize) -> (Arc<Gateway>, String) {
    let cfg = GatewayConfig {
        flush_interval: Duration::from_millis(100),
        upstream_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let gw = Gateway::new(cfg, ledger.clone(), &format!("gw-{i}"));
    gw.directory.put_budget(b);
    for name in ["primary", "backup"] {
        let pc = provider(
            name,
            &format!("{sim}/v1"),
            &["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"],
        );
        gw.directory
            .put_upstream(Upstream::of(&pc, "sk-upstream".into()).unwrap());
    }
    gw.set_ready(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(gw.clone().serve(listener, futures::future::pending()));
    (gw, url)
}

async fn rig(tokens: u64, extra: Value, gateways: usize, postgres: bool) -> Option<Rig> {
    let dir = tempfile::tempdir().unwrap();
    let ledger = if postgres {
        common::db::fresh_postgres().await?.0
    } else {
        common::db::sqlite(&dir).await.0
    };
    let sim = common::start_sim(|_| {}).await;
    let (b, key) = budget(tokens, extra);
    let mut gws = Vec::new();
    for i in 0..gateways {
        gws.push(gateway(&ledger, &b, &sim.url, i).await);
    }
    Some(Rig {
        sim,
        ledger,
        gws,
        key,
        budget: b,
        _dir: dir,
    })
}

impl Rig {
    fn uid(&self) -> String {
        self.budget.metadata.uid.clone().unwrap()
    }

    async fn post(&self, gw: usize, path: &str, body: Value) -> reqwest::Response {
        client()
            .post(format!("{}{path}", self.gws[gw].1))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Flushes every gateway and returns the ledger's tokens for the budget this month.
    /// The first gateway's `primary` upstream becomes a simulator of its own, set by `tweak`.
    async fn own_upstream(
        &self,
        tweak: impl FnOnce(&mut quartermaster::sim::SimConfig),
    ) -> common::SimHandle {
        let sim = common::start_sim(tweak).await;
        let pc = provider("primary", &format!("{}/v1", sim.url), &["gpt-4o-mini"]);
        self.gws[0]
            .0
            .directory
            .put_upstream(Upstream::of(&pc, "sk".into()).unwrap());
        sim
    }

    /// The ledger's tokens once any are recorded (within 5 s; 0 if none are).
    async fn charged(&self) -> i64 {
        let mut charged = 0;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            charged = self.ledger_tokens().await;
            if charged > 0 {
                break;
            }
        }
        charged
    }

    async fn ledger_tokens(&self) -> i64 {
        for (gw, _) in &self.gws {
            gw.housekeep(false).await;
        }
        let now = jiff::Timestamp::now().as_second();
        self.ledger
            .consumed(&self.uid(), now - 40 * 86_400, now + 86_400)
            .await
            .unwrap()
            .tokens
    }

    async fn sim_state(&self) -> Value {
        client()
            .get(format!("{}/_sim/openai/state", self.sim.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn faults(&self, f: Value) {
        client()
            .post(format!("{}/_sim/openai/faults", self.sim.url))
            .json(&f)
            .send()
            .await
            .unwrap();
    }
}

/// What the gateway reserves for `body`: its prompt's bound plus the budget's default output limit (50).
fn reservation_of(body: &Value) -> i64 {
    let text = body.to_string();
    quartermaster::gateway::request_body::RequestBody::parse(text.as_bytes())
        .unwrap()
        .prompt_bound()
        .unwrap()
        + 50
}

fn client() -> reqwest::Client {
    quartermaster::install_crypto_provider();
    reqwest::Client::new()
}

fn chat(stream: bool) -> Value {
    json!({"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": "say four words please"}]})
}

#[tokio::test]
async fn every_route_is_proxied_and_charged_what_the_upstream_reported() {
    let r = rig(1_000_000, json!({}), 1, false).await.unwrap();
    let mut reported = 0;
    for (path, body) in [
        ("/v1/chat/completions", chat(false)),
        (
            "/v1/completions",
            json!({"model": "gpt-4o-mini", "prompt": "one two three"}),
        ),
        (
            "/v1/responses",
            json!({"model": "gpt-4o", "input": "one two"}),
        ),
        (
            "/v1/embeddings",
            json!({"model": "text-embedding-3-small", "input": "embed these words"}),
        ),
    ] {
        let resp = r.post(0, path, body).await;
        assert_eq!(resp.status(), 200, "{path}");
        let v: Value = resp.json().await.unwrap();
        let u = &v["usage"];
        let n = u["total_tokens"].as_i64().unwrap();
        assert!(n > 0, "{path}: {v}");
        reported += n;
    }
    assert_eq!(
        r.ledger_tokens().await,
        reported,
        "the ledger holds exactly what the upstream reported"
    );
    let s = r.sim_state().await;
    assert_eq!(
        s["inputTokens"].as_i64().unwrap() + s["outputTokens"].as_i64().unwrap(),
        reported
    );
    // Priced at the upstream's price plus the ProviderConfig's 20 % markup.
    let now = jiff::Timestamp::now().as_second();
    let c = r
        .ledger
        .consumed(&r.uid(), now - 40 * 86_400, now + 86_400)
        .await
        .unwrap();
    assert_eq!(c.amounts.len(), 1);
    assert_eq!(c.amounts[0].0, "USD");
    assert!(c.amounts[0].1 > 0);
    // Each usage row names the model and the upstream that served it.
    if let Ledger::Sqlite(p) = &r.ledger {
        let attrs: Vec<(String,)> = sqlx::query_as("SELECT attributes FROM usage_events")
            .fetch_all(p)
            .await
            .unwrap();
        assert!(!attrs.is_empty());
        for (a,) in attrs {
            let v: Value = serde_json::from_str(&a).unwrap();
            assert_eq!(v["upstream"], "primary", "{v}");
            assert!(v["model"].is_string(), "{v}");
        }
    }
    // The model list shows what the budget may use.
    let models: Value = client()
        .get(format!("{}/v1/models", r.gws[0].1))
        .bearer_auth(&r.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "gpt-4o-mini")
    );
    // A route it does not meter it does not proxy.
    let resp = client()
        .post(format!("{}/v1/images/generations", r.gws[0].1))
        .bearer_auth(&r.key)
        .json(&json!({"model": "dall-e-3", "prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "unknown_url"
    );
}

#[tokio::test]
async fn streams_pass_through_chunk_by_chunk_and_are_charged_their_usage() {
    let r = rig(1_000_000, json!({}), 1, false).await.unwrap();
    let resp = r.post(0, "/v1/chat/completions", chat(true)).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = resp.text().await.unwrap();
    let datas: Vec<&str> = text.lines().filter(|l| l.starts_with("data: ")).collect();
    assert_eq!(*datas.last().unwrap(), "data: [DONE]");
    // The gateway asked the upstream for usage (include_usage) to meter the stream; this client did
    // not, so it gets no usage-only chunk (every chunk it sees has a choice).
    for d in &datas[..datas.len() - 1] {
        let v: Value = serde_json::from_str(&d[6..]).unwrap();
        assert!(!v["choices"].as_array().unwrap().is_empty(), "{d}");
    }
    let unasked = r.ledger_tokens().await;
    assert!(unasked > 0, "the stream was metered all the same");
    // A client that asks for usage gets it: the last event before [DONE] carries it.
    let mut asked = chat(true);
    asked["stream_options"] = json!({"include_usage": true});
    let text = r
        .post(0, "/v1/chat/completions", asked)
        .await
        .text()
        .await
        .unwrap();
    let datas: Vec<&str> = text.lines().filter(|l| l.starts_with("data: ")).collect();
    let usage: Value = serde_json::from_str(&datas[datas.len() - 2][6..]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    let reported = usage["usage"]["total_tokens"].as_i64().unwrap();
    assert_eq!(r.ledger_tokens().await, unasked + reported);
    // A responses stream reports usage in response.completed.
    let resp = r
        .post(
            0,
            "/v1/responses",
            json!({"model": "gpt-4o", "input": "a b c", "stream": true}),
        )
        .await;
    let text = resp.text().await.unwrap();
    let done = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v["type"] == "response.completed")
        .unwrap();
    let reported2 = done["response"]["usage"]["total_tokens"].as_i64().unwrap();
    assert_eq!(r.ledger_tokens().await, unasked + reported + reported2);
}

#[tokio::test]
async fn a_stream_without_usage_or_cut_off_is_charged_its_reservation_never_zero() {
    let r = rig(1_000_000, json!({}), 1, false).await.unwrap();
    let body = chat(true);
    let reservation = reservation_of(&body);
    r.faults(json!({"noUsage": true})).await;
    let text = r
        .post(0, "/v1/chat/completions", body.clone())
        .await
        .text()
        .await
        .unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(r.ledger_tokens().await, reservation);
    // The upstream breaks the stream off: charged the reservation.
    r.faults(json!({"cutAfter": 2})).await;
    let resp = r.post(0, "/v1/chat/completions", body.clone()).await;
    assert!(
        resp.text().await.is_err(),
        "the client sees the stream break off"
    );
    assert_eq!(r.ledger_tokens().await, 2 * reservation);
    r.faults(json!({})).await;
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_is_charged() {
    let r = rig(1_000_000, json!({}), 1, false).await.unwrap();
    r.faults(json!({})).await;
    // A slow stream: the client reads one chunk and goes away.
    let _sim = r
        .own_upstream(|c| {
            c.openai_chunk_delay_ms = 200;
        })
        .await;
    let body = chat(true);
    let reservation = reservation_of(&body);
    let resp = r.post(0, "/v1/chat/completions", body).await;
    let mut chunks = resp.bytes_stream();
    let first = chunks.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    drop(chunks);
    assert_eq!(
        r.charged().await,
        reservation,
        "a disconnect is charged the reservation"
    );
}

/// A client that goes away while the upstream works on its request is charged the reservation (the
/// upstream may well have served it), and the slice's reservation does not stay held.
#[tokio::test]
async fn a_client_that_leaves_before_the_answer_is_charged_its_reservation() {
    let r = rig(1_000_000, json!({}), 1, false).await.unwrap();
    r.faults(json!({})).await;
    let _sim = r
        .own_upstream(|c| {
            c.openai_latency_ms = 1500;
        })
        .await;
    let body = chat(false);
    let reservation = reservation_of(&body);
    let gone = tokio::time::timeout(
        Duration::from_millis(300),
        r.post(0, "/v1/chat/completions", body),
    )
    .await;
    assert!(gone.is_err(), "the client left before the answer");
    assert_eq!(
        r.charged().await,
        reservation,
        "a client gone is charged the reservation"
    );
}

/// N concurrent requests on a budget that fits only M of them, over two gateway processes sharing the
/// ledger: at most M succeed, and the ledger holds exactly what the upstream reported.
async fn overspend(stream: bool, postgres: bool) {
    // Each request reserves its body's bytes plus its max_tokens, and uses 4 + 16 tokens (the
    // simulator's prompt words and answer): the budget fits `fits` of them.
    let body = chat(stream);
    let reserved = reservation_of(&body) as u64;
    let (used, fits) = (20, 12);
    let Some(r) = rig(used * fits, json!({}), 2, postgres).await else {
        return;
    };
    assert!(reserved > used && reserved < used * fits);
    let n = 40;
    let results = futures::future::join_all((0..n).map(|i| {
        let r = &r;
        let body = body.clone();
        async move {
            let resp = r.post(i % 2, "/v1/chat/completions", body).await;
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            (status, text)
        }
    }))
    .await;
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<&String> = results
        .iter()
        .filter(|(s, _)| *s == 429)
        .map(|x| &x.1)
        .collect();
    assert_eq!(ok + refused.len(), n, "{results:?}");
    assert!(
        ok as u64 <= fits,
        "{ok} requests served on a budget that fits {fits}"
    );
    assert!(ok >= 1, "at least one request fits");
    // Refused as exhausted, or (while tokens remain, fewer than a request reserves) as asking more
    // than is left.
    for text in &refused {
        assert!(
            text.contains("TokenBudget demo/bot is exhausted until")
                || text.contains("\"budget_insufficient\""),
            "{text}"
        );
    }
    let served = r.sim_state().await;
    let reported =
        served["inputTokens"].as_i64().unwrap() + served["outputTokens"].as_i64().unwrap();
    assert_eq!(served["requests"].as_i64().unwrap(), ok as i64);
    assert_eq!(
        r.ledger_tokens().await,
        reported,
        "the ledger agrees to the token"
    );
    assert!(reported as u64 <= used * fits);
    // Every slice goes back: the period's granted equals what was used.
    for (gw, _) in &r.gws {
        gw.housekeep(true).await;
    }
    let now = jiff::Timestamp::now().as_second();
    let start = quartermaster::budget::period::calendar(
        quartermaster::crd::token_budget::BudgetPeriod::Monthly,
        &jiff::tz::TimeZone::UTC,
        now,
    )
    .unwrap()
    .start;
    let p = r
        .ledger
        .budget_period(&r.uid(), start)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.granted, reported);
}

#[tokio::test]
async fn concurrent_requests_never_overspend_across_two_gateways_sqlite() {
    overspend(false, false).await;
}

#[tokio::test]
async fn concurrent_requests_never_overspend_across_two_gateways_postgres() {
    overspend(false, true).await;
}

#[tokio::test]
async fn concurrent_streams_never_overspend_across_two_gateways_postgres() {
    overspend(true, true).await;
}

#[tokio::test]
async fn a_fresh_key_under_a_burst_takes_few_slices_and_serves_within_its_budget() {
    let r = rig(10_000_000, json!({}), 1, false).await.unwrap();
    let results =
        futures::future::join_all((0..100).map(|_| r.post(0, "/v1/chat/completions", chat(false))))
            .await;
    assert!(results.iter().all(|x| x.status() == 200));
    assert_eq!(r.sim_state().await["requests"], 100);
    // The burst waited for one slice instead of each request asking the ledger: a slice is an eighth of
    // what is left, so the replica holds far more than the burst used.
    let now = jiff::Timestamp::now().as_second();
    let start = quartermaster::budget::period::calendar(
        quartermaster::crd::token_budget::BudgetPeriod::Monthly,
        &jiff::tz::TimeZone::UTC,
        now,
    )
    .unwrap()
    .start;
    let p = r
        .ledger
        .budget_period(&r.uid(), start)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        p.granted,
        10_000_000 / 8,
        "one slice served the whole burst"
    );
}

#[tokio::test]
async fn failover_goes_to_the_next_upstream_before_any_byte_reached_the_client() {
    let r = rig(
        1_000_000,
        json!({"fallbackProviderConfigRefs": [{"name": "backup"}]}),
        1,
        false,
    )
    .await
    .unwrap();
    let (b, _) = (r.budget.clone(), ());
    let mut b2 = b.clone();
    b2.spec.fallback_provider_config_refs = vec![ProviderConfigReference {
        name: "backup".into(),
    }];
    r.gws[0].0.directory.put_budget(&b2);
    // The primary cannot be reached at all: a closed port.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let pc = provider(
        "primary",
        &format!("http://127.0.0.1:{closed}/v1"),
        &["gpt-4o-mini"],
    );
    r.gws[0]
        .0
        .directory
        .put_upstream(Upstream::of(&pc, "sk".into()).unwrap());
    let resp = r.post(0, "/v1/chat/completions", chat(false)).await;
    assert_eq!(resp.status(), 200);
    // A 500, then a 429: the backup (same simulator, which answers the third call) serves.
    let pc = provider("primary", &format!("{}/v1", r.sim.url), &["gpt-4o-mini"]);
    r.gws[0]
        .0
        .directory
        .put_upstream(Upstream::of(&pc, "sk".into()).unwrap());
    r.faults(json!({"status": 500, "count": 1})).await;
    assert_eq!(
        r.post(0, "/v1/chat/completions", chat(false))
            .await
            .status(),
        200
    );
    r.faults(json!({"status": 429, "count": 1})).await;
    let resp = r.post(0, "/v1/chat/completions", chat(true)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    // Both fail: 502 in OpenAI's shape, and nothing charged for it.
    let before = r.ledger_tokens().await;
    r.faults(json!({"status": 503, "count": 2})).await;
    let resp = r.post(0, "/v1/chat/completions", chat(false)).await;
    assert_eq!(resp.status(), 502);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["code"], "upstream_unavailable");
    assert_eq!(r.ledger_tokens().await, before);
    let m = r.gws[0].0.metrics.render();
    assert!(
        m.contains("quartermaster_gateway_failovers_total{upstream=\"primary\"}"),
        "{m}"
    );
}

#[tokio::test]
async fn refusals_are_in_openais_shape() {
    let r = rig(1_000_000, json!({"models": ["gpt-4o-mini"]}), 1, false)
        .await
        .unwrap();
    let mut b = r.budget.clone();
    b.spec.models = vec!["gpt-4o-mini".into(), "unpriced-model".into()];
    r.gws[0].0.directory.put_budget(&b);
    let call = |key: Option<&str>, body: Value| {
        let mut req = client()
            .post(format!("{}/v1/chat/completions", r.gws[0].1))
            .json(&body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let (s, e) = call(None, chat(false)).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let (s, _) = call(Some("qm-not-a-key"), chat(false)).await;
    assert_eq!(s, 401);
    let (s, e) = call(Some(&r.key), json!({"model": "gpt-4o", "messages": []})).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (403, Some("model_not_allowed"))
    );
    // Allowed, but no upstream prices it: refused, never served free.
    let (s, e) = call(
        Some(&r.key),
        json!({"model": "unpriced-model", "messages": []}),
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    let (s, _) = call(Some(&r.key), json!(["not", "an", "object"])).await;
    assert_eq!(s, 400);
    // Blocked by its Project (status says why).
    let mut blocked = b.clone();
    blocked.status.as_mut().unwrap().blocked = Some("Project \"acme\" has no credit left".into());
    r.gws[0].0.directory.put_budget(&blocked);
    let (s, e) = call(Some(&r.key), chat(false)).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (429, Some("budget_blocked"))
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no credit left")
    );
    // A key removed from the spec stops working at once.
    let mut removed = b.clone();
    removed.spec.api_keys.clear();
    r.gws[0].0.directory.put_budget(&removed);
    assert_eq!(call(Some(&r.key), chat(false)).await.0, 401);
    assert_eq!(r.sim_state().await["requests"], 0);
}

#[tokio::test]
async fn rate_limits_per_key_answer_429_with_retry_after() {
    let r = rig(
        1_000_000,
        json!({"rateLimits": {"requestsPerMinute": 3}}),
        1,
        false,
    )
    .await
    .unwrap();
    let mut codes = Vec::new();
    for _ in 0..5 {
        let resp = r.post(0, "/v1/chat/completions", chat(false)).await;
        codes.push(resp.status().as_u16());
        if resp.status() == 429 {
            assert!(resp.headers().contains_key("retry-after"));
            let e: Value = resp.json().await.unwrap();
            assert_eq!(e["error"]["code"], "rate_limit_exceeded");
        }
    }
    assert_eq!(codes, [200, 200, 200, 429, 429]);
}

#[tokio::test]
async fn a_throttled_budget_keeps_serving_slowly_and_bills_the_overage() {
    let body = chat(false);
    let per_request = reservation_of(&body) as u64;
    let r = rig(
        per_request,
        json!({"onExhausted": "Throttle", "throttleRequestsPerMinute": 2}),
        1,
        false,
    )
    .await
    .unwrap();
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(
            r.post(0, "/v1/chat/completions", body.clone())
                .await
                .status()
                .as_u16(),
        );
    }
    // One within the allocation, two throttled beyond it, then refused until the rate allows.
    assert_eq!(codes, [200, 200, 200, 429, 429]);
    let reported = {
        let s = r.sim_state().await;
        s["inputTokens"].as_i64().unwrap() + s["outputTokens"].as_i64().unwrap()
    };
    assert_eq!(r.ledger_tokens().await, reported);
}

/// A throttled budget's pace holds across replicas: two gateways on one PostgreSQL ledger serve its
/// `throttleRequestsPerMinute` once between them.
#[tokio::test]
async fn a_throttled_budgets_pace_holds_across_two_gateways_postgres() {
    let body = chat(false);
    let per_request = reservation_of(&body) as u64;
    let Some(r) = rig(
        per_request,
        json!({"onExhausted": "Throttle", "throttleRequestsPerMinute": 2}),
        2,
        true,
    )
    .await
    else {
        return;
    };
    let mut codes = Vec::new();
    for i in 0..6 {
        let resp = r.post(i % 2, "/v1/chat/completions", body.clone()).await;
        codes.push(resp.status().as_u16());
    }
    // One within the allocation, two at the throttled pace over both replicas, then refused.
    assert_eq!(codes, [200, 200, 200, 429, 429, 429]);
}

/// The requests the gateway forwards are valid against OpenAI's own API document (Prism refuses what is
/// not): the model as the upstream knows it, the output limit the gateway adds, and `stream_options` on
/// a stream. What the upstream refuses reaches the client as it said it, and costs nothing.
#[tokio::test]
async fn forwarded_requests_match_openais_api_document() {
    let Some(specs) = common::prism::specs_dir() else {
        return;
    };
    let prism =
        common::prism::Prism::start(&specs.join("openai"), "openapi.chat-subset.prism.yaml");
    let r = rig(1_000_000, json!({}), 1, false).await.unwrap();
    let pc = provider(
        "primary",
        &prism.url,
        &["gpt-4o-mini", "text-embedding-3-small"],
    );
    r.gws[0]
        .0
        .directory
        .put_upstream(Upstream::of(&pc, "sk-prism".into()).unwrap());
    for (path, body) in [
        ("/v1/chat/completions", chat(false)),
        ("/v1/chat/completions", chat(true)),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "max_completion_tokens": 7, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/completions",
            json!({"model": "gpt-4o-mini", "prompt": "one two three"}),
        ),
        (
            "/v1/embeddings",
            json!({"model": "text-embedding-3-small", "input": "embed these"}),
        ),
    ] {
        let resp = r.post(0, path, body.clone()).await;
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 200, "{path} {body}: {text}");
    }
    let before = r.ledger_tokens().await;
    assert!(before > 0);
    // Schema-invalid (messages must be an array): Prism's 4xx is passed through, nothing is charged.
    let resp = r
        .post(
            0,
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "messages": "not a list"}),
        )
        .await;
    assert!(resp.status().is_client_error(), "{}", resp.status());
    assert_eq!(r.ledger_tokens().await, before);
}

/// At a period boundary the new period gets its own allocation, a request admitted before it settles in
/// the period it was admitted in, and no period is charged more than its allocation.
#[tokio::test]
async fn a_period_boundary_resets_the_allocation_and_never_mixes_periods() {
    use quartermaster::gateway::directory::BudgetView;
    use quartermaster::gateway::enforce::{Enforcer, Refusal};
    use quartermaster::gateway::usage::Usage;
    use quartermaster::ledger::metering::requests::Outcome;
    let dir = tempfile::tempdir().unwrap();
    let (ledger, _) = common::db::sqlite(&dir).await;
    let (mut b, _) = budget(100, json!({"period": "Daily", "timeZone": "Asia/Kolkata"}));
    b.metadata.uid = Some("daily-budget".into());
    let view = Arc::new(BudgetView::of(&b));
    let pc = provider("primary", "http://127.0.0.1:1/v1", &["m"]);
    let model = Upstream::of(&pc, "k".into()).unwrap().models["m"].clone();
    let e = Enforcer::new(ledger.clone(), "gw-test", 8, 2);
    let key: Arc<str> = "prod".into();
    // Kolkata's day starts at 18:30 UTC: 18:29:50 is the old day, 18:30:10 the new one.
    let day = jiff::Timestamp::now().as_second() / 86_400 * 86_400;
    let (before, after) = (
        (day + 18 * 3600 + 1790) as f64,
        (day + 18 * 3600 + 1810) as f64,
    );
    let first = e
        .reserve_at(&view, &key, 60, 10, &model, before)
        .await
        .unwrap();
    let refused = e
        .reserve_at(&view, &key, 60, 10, &model, before + 1.0)
        .await
        .unwrap_err();
    // 40 of the day's 100 are left: not exhausted, but fewer than the request reserves.
    assert_eq!(
        refused,
        Refusal::Insufficient {
            needed: 60,
            left: 40
        }
    );
    let rest = e
        .reserve_at(&view, &key, 40, 10, &model, before + 1.0)
        .await
        .unwrap();
    let refused = e
        .reserve_at(&view, &key, 60, 10, &model, before + 1.0)
        .await
        .unwrap_err();
    assert!(matches!(refused, Refusal::Exhausted { reset, .. } if reset == day + 18 * 3600 + 1800));
    e.cancel(rest);
    // The new day: a fresh allocation, while the first request is still in flight.
    let second = e
        .reserve_at(&view, &key, 60, 10, &model, after)
        .await
        .unwrap();
    assert_ne!(first.window, second.window);
    e.settle(
        first,
        Usage {
            input: 10,
            output: 40,
        },
        Outcome::Completed,
    );
    e.settle(
        second,
        Usage {
            input: 10,
            output: 20,
        },
        Outcome::Completed,
    );
    e.flush().await.unwrap();
    e.give_back(true).await.unwrap();
    let old = ledger
        .consumed(
            "daily-budget",
            day + 18 * 3600 + 1800 - 86_400,
            day + 18 * 3600 + 1800,
        )
        .await
        .unwrap();
    let new = ledger
        .consumed(
            "daily-budget",
            day + 18 * 3600 + 1800,
            day + 18 * 3600 + 1800 + 86_400,
        )
        .await
        .unwrap();
    assert_eq!(
        (old.tokens, new.tokens),
        (50, 30),
        "each request in the period it was admitted in"
    );
    let p_old = ledger
        .budget_period("daily-budget", day + 18 * 3600 + 1800 - 86_400)
        .await
        .unwrap()
        .unwrap();
    let p_new = ledger
        .budget_period("daily-budget", day + 18 * 3600 + 1800)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (p_old.granted, p_new.granted),
        (50, 30),
        "unused slices went back to their own period"
    );
    assert!(p_old.granted <= 100 && p_new.granted <= 100);
}

/// A request dropped while its replica takes a slice from the ledger (its client gone) strands
/// nothing: the lease runs to its end, the replica holds what was granted, and gives it back.
#[tokio::test]
async fn a_request_dropped_while_its_slice_is_leased_strands_nothing() {
    use quartermaster::gateway::directory::BudgetView;
    use quartermaster::gateway::enforce::Enforcer;
    let dir = tempfile::tempdir().unwrap();
    let (ledger, _) = common::db::sqlite(&dir).await;
    let (mut b, _) = budget(1000, json!({}));
    b.metadata.uid = Some("dropped-budget".into());
    let view = Arc::new(BudgetView::of(&b));
    let pc = provider("primary", "http://127.0.0.1:1/v1", &["m"]);
    let model = Upstream::of(&pc, "k".into()).unwrap().models["m"].clone();
    let e = Enforcer::new(ledger.clone(), "gw-test", 8, 2);
    let key: Arc<str> = "prod".into();
    let start = view
        .window(jiff::Timestamp::now().as_second())
        .unwrap()
        .start;
    // Polled once: it has asked the ledger for a slice and waits for the answer; then it is dropped.
    let mut request = Box::pin(e.reserve(&view, &key, 60, 10, &model));
    assert!(futures::poll!(&mut request).is_pending());
    drop(request);
    let granted = common::eventually(Duration::from_secs(10), "the lease commits", || async {
        let p = ledger.budget_period("dropped-budget", start).await.ok()??;
        (p.granted > 0).then_some(p.granted)
    })
    .await;
    let returned = std::sync::atomic::AtomicI64::new(0);
    common::eventually(
        Duration::from_secs(10),
        "the granted slice is held and given back",
        || async {
            let back = e.give_back(true).await.ok()?;
            returned.fetch_add(back, std::sync::atomic::Ordering::SeqCst);
            let p = ledger.budget_period("dropped-budget", start).await.ok()??;
            (p.granted == 0).then_some(())
        },
    )
    .await;
    assert_eq!(returned.into_inner(), granted);
}

/// What the simulator at `url` served: (requests, input + output tokens).
async fn served_by(url: &str) -> (i64, i64) {
    let s: Value = client()
        .get(format!("{url}/_sim/openai/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        s["requests"].as_i64().unwrap(),
        s["inputTokens"].as_i64().unwrap() + s["outputTokens"].as_i64().unwrap(),
    )
}

/// Every field that multiplies or bounds output is reserved as the upstream reads it: `n` (an upstream
/// that honours it), and limits the gateway cannot hold a loose upstream to are refused, not replaced.
#[tokio::test]
async fn the_reservation_bounds_what_an_upstream_honouring_n_and_loose_numbers_can_bill() {
    let r = rig(1_000, json!({"defaultMaxTokens": 4096}), 1, false)
        .await
        .unwrap();
    let up = r
        .own_upstream(|c| c.openai_completion_tokens = 10_000)
        .await;
    let msg = json!([{"role": "user", "content": "hello"}]);
    // 100 tokens × 20 choices cannot fit a budget of 1,000: refused before anything is proxied, with
    // what is left and no Retry-After (a smaller request may pass now).
    let resp = r
        .post(
            0,
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "max_tokens": 100, "n": 20, "messages": msg}),
        )
        .await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_none());
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["code"], "budget_insufficient", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1000 left"),
        "{e}"
    );
    assert_eq!(served_by(&up.url).await.0, 0);
    // Values no upstream can be held to are refused naming the field: nothing proxied or charged.
    for (path, body, field) in [
        (
            "/v1/chat/completions",
            json!({"max_tokens": -5}),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            json!({"max_tokens": 5.0}),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            json!({"max_tokens": "5"}),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            json!({"max_tokens": 18446744073709551615u64}),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            json!({"max_completion_tokens": "5000"}),
            "max_completion_tokens",
        ),
        ("/v1/chat/completions", json!({"n": 129}), "n"),
        ("/v1/completions", json!({"best_of": 2, "n": 3}), "best_of"),
        (
            "/v1/responses",
            json!({"max_output_tokens": "5"}),
            "max_output_tokens",
        ),
    ] {
        let mut body = body;
        body["model"] = json!("gpt-4o-mini");
        body["messages"] = msg.clone();
        body["prompt"] = json!("hello");
        let resp = r.post(0, path, body.clone()).await;
        assert_eq!(resp.status(), 400, "{body}");
        let e: Value = resp.json().await.unwrap();
        assert_eq!(e["error"]["type"], "invalid_request_error", "{body}");
        assert_eq!(e["error"]["param"], field, "{body}");
    }
    // Text no parser takes is the client's error, not an exhausted budget.
    for raw in [
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"a \ud800 b"}]}"#
            .to_string(),
        format!(
            r#"{{"model":"gpt-4o-mini","messages":{}{}}}"#,
            "[".repeat(300),
            "]".repeat(300)
        ),
    ] {
        let resp = client()
            .post(format!("{}/v1/chat/completions", r.gws[0].1))
            .bearer_auth(&r.key)
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
    }
    assert_eq!(served_by(&up.url).await.0, 0);
    assert_eq!(r.ledger_tokens().await, 0);
    // 100 × 5 fits: served, and the upstream billed every choice within the reservation.
    let resp = r
        .post(
            0,
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "max_tokens": 100, "n": 5, "messages": msg}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let (_, billed) = served_by(&up.url).await;
    assert!(billed > 500, "{billed}");
    // No limit given: the default goes up explicitly, so a loose upstream cannot pass it either; a
    // request larger than what is left is refused, a smaller one then served.
    let resp = r
        .post(
            0,
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "messages": msg}),
        )
        .await;
    assert_eq!(resp.status(), 429);
    let resp = r
        .post(
            0,
            "/v1/completions",
            json!({"model": "gpt-4o-mini", "prompt": "hi", "max_tokens": 40, "n": 2, "best_of": 4}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let (requests, billed) = served_by(&up.url).await;
    assert_eq!(requests, 2);
    assert_eq!(
        r.ledger_tokens().await,
        billed,
        "the ledger equals what the upstream billed"
    );
    assert!(billed <= 1_000, "{billed} of 1,000");
}

/// An upstream that bills more than the limit it was sent: the excess is on the ledger record every
/// replica's admission reads before anyone can ask again, so two gateways and a third started midway
/// stop at the allocation plus one request's overrun, and a fresh one admits nothing once it is over.
#[tokio::test]
async fn an_overrun_is_on_the_ledger_before_any_replica_admits_again_postgres() {
    let Some(mut r) = rig(1_000, json!({}), 2, true).await else {
        return;
    };
    r.faults(json!({"overrun": 300})).await;
    let body = chat(false);
    let reserved = reservation_of(&body);
    let mut statuses = Vec::new();
    for i in 0..12 {
        if i == 3 {
            let third = gateway(&r.ledger, &r.budget, &r.sim.url, 2).await;
            r.gws.push(third);
        }
        let resp = r
            .post(i % r.gws.len(), "/v1/chat/completions", body.clone())
            .await;
        statuses.push(resp.status().as_u16());
    }
    let (requests, billed) = served_by(&r.sim.url).await;
    assert!(requests >= 2, "{statuses:?}");
    let per_request = billed / requests;
    let overrun = per_request - reserved;
    assert!(overrun > 200, "{per_request} used of {reserved} reserved");
    assert!(
        billed <= 1_000 + overrun,
        "{billed} billed on a budget of 1,000 (one overrun: {overrun}); {statuses:?}"
    );
    assert_eq!(
        r.ledger_tokens().await,
        billed,
        "every token billed is charged"
    );
    // A replica started now, with nothing in memory, admits nothing either.
    let fresh = gateway(&r.ledger, &r.budget, &r.sim.url, 3).await;
    let resp = client()
        .post(format!("{}/v1/chat/completions", fresh.1))
        .bearer_auth(&r.key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(served_by(&r.sim.url).await.0, requests);
}

/// Serves gateway `gw`'s admin routes on a port of its own; returns its URL.
async fn admin(gw: &Arc<Gateway>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(gw.clone().serve_admin(listener, futures::future::pending()));
    url
}

/// A tenant with a key sees no other tenant and cannot grow the gateway's metrics: `/metrics` is on
/// the admin address only, and its model label is a configured model's name or `other`.
#[tokio::test]
async fn metrics_are_on_the_admin_address_only_and_labelled_from_configuration() {
    let r = rig(1_000_000, json!({}), 1, false).await.unwrap();
    let on_client = client()
        .get(format!("{}/metrics", r.gws[0].1))
        .send()
        .await
        .unwrap();
    assert_eq!(on_client.status(), 404);
    for path in ["/healthz", "/readyz"] {
        let bare = client()
            .get(format!("{}{path}", r.gws[0].1))
            .send()
            .await
            .unwrap();
        assert_eq!(bare.status(), 200, "{path}");
    }
    for i in 0..5 {
        let body = json!({"model": format!("tenant-chosen-{i}"), "messages": []});
        assert_eq!(r.post(0, "/v1/chat/completions", body).await.status(), 404);
    }
    let bad = json!({"model": "tenant-chosen-x", "messages": [], "max_tokens": -1});
    assert_eq!(r.post(0, "/v1/chat/completions", bad).await.status(), 404);
    assert_eq!(
        r.post(0, "/v1/chat/completions", chat(false))
            .await
            .status(),
        200
    );
    let admin = admin(&r.gws[0].0).await;
    let text = client()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("tenant-chosen"), "{text}");
    assert!(
        text.contains(r#"quartermaster_gateway_requests_total{budget="bot",code="404",model="other",namespace="demo"} 6"#),
        "{text}"
    );
    assert!(text.contains(r#"model="gpt-4o-mini""#), "{text}");
    let health = client()
        .get(format!("{admin}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let not_admin = client()
        .post(format!("{admin}/v1/chat/completions"))
        .bearer_auth(&r.key)
        .json(&chat(false))
        .send()
        .await
        .unwrap();
    assert_eq!(not_admin.status(), 404, "the admin address proxies nothing");
}

/// The key is read from the head before any body byte (an unknown key is 401 at once, its body never
/// awaited), a known key's body must arrive within the deadline, and `Bearer` is case-insensitive.
#[tokio::test]
async fn the_key_is_checked_before_the_body_and_the_body_has_a_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let ledger = common::db::sqlite(&dir).await.0;
    let sim = common::start_sim(|_| {}).await;
    let (b, key) = budget(1_000_000, json!({}));
    let cfg = GatewayConfig {
        body_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let gw = Gateway::new(cfg, ledger, "gw-doors");
    gw.directory.put_budget(&b);
    let pc = provider("primary", &format!("{}/v1", sim.url), &["gpt-4o-mini"]);
    gw.directory
        .put_upstream(Upstream::of(&pc, "sk-upstream".into()).unwrap());
    gw.set_ready(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(gw.clone().serve(listener, futures::future::pending()));
    let head = |auth: &str| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\n\
             content-type: application/json\r\ncontent-length: 1000000\r\n\r\n{{\"model\":"
        )
    };
    let answer = |auth: String| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(head(&auth).as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let started = std::time::Instant::now();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer before the body")
            .unwrap();
        (
            String::from_utf8_lossy(&buf[..n]).to_string(),
            started.elapsed(),
        )
    };
    // An unknown key: 401 while the promised megabyte has not come.
    let (text, took) = answer("Bearer qm-unknown".into()).await;
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(took < Duration::from_millis(400), "{took:?}");
    // A known key whose body stalls: 408 after the deadline.
    let (text, took) = answer(format!("Bearer {key}")).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(took >= Duration::from_millis(400), "{took:?}");
    // The scheme is case-insensitive.
    for scheme in ["bearer", "BEARER"] {
        let resp = client()
            .post(format!("http://{addr}/v1/chat/completions"))
            .header("authorization", format!("{scheme} {key}"))
            .json(&chat(false))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{scheme}");
    }
    assert_eq!(
        served_by(&sim.url).await.0,
        2,
        "only the complete requests were proxied"
    );
}

/// An upstream refusing the platform's credentials, or quoting them, is the platform's problem: the
/// client gets a 502 that names no key; a refusal the client can fix passes through.
#[tokio::test]
async fn upstream_answers_about_the_platforms_credentials_become_a_generic_502() {
    let r = rig(1_000_000, json!({}), 1, false).await.unwrap();
    for status in [401, 403, 400] {
        r.faults(json!({"echoAuth": status})).await;
        let resp = r.post(0, "/v1/chat/completions", chat(false)).await;
        assert_eq!(resp.status(), 502, "{status}");
        let text = resp.text().await.unwrap();
        assert!(!text.contains("sk-upstream"), "{text}");
        assert!(text.contains("upstream_error"), "{text}");
    }
    // A refusal the client can fix passes through as the upstream wrote it.
    r.faults(json!({"status": 400, "count": 1})).await;
    let resp = r.post(0, "/v1/chat/completions", chat(false)).await;
    assert_eq!(resp.status(), 400);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["message"], "simulated upstream fault");
    assert_eq!(r.ledger_tokens().await, 0, "no refusal is charged");
}

/// How each request ended is counted: completed, client aborted (a stream left, a request abandoned
/// before its answer), upstream error, refused — as a metric label, and per usage row for those charged.
#[tokio::test]
async fn each_requests_outcome_is_a_metric_label_and_counted_in_its_usage_row() {
    let r = rig(1_000_000, json!({}), 1, false).await.unwrap();
    assert_eq!(
        r.post(0, "/v1/chat/completions", chat(false))
            .await
            .status(),
        200
    );
    let refused = json!({"model": "gpt-4o-mini", "messages": [], "n": 0});
    assert_eq!(
        r.post(0, "/v1/chat/completions", refused).await.status(),
        400
    );
    // Both upstreams fail: an upstream error, nothing charged.
    r.faults(json!({"status": 500, "count": 2})).await;
    assert_eq!(
        r.post(0, "/v1/chat/completions", chat(false))
            .await
            .status(),
        502
    );
    // The upstream breaks a stream off: charged, an upstream error.
    r.faults(json!({"cutAfter": 2})).await;
    let _ = r
        .post(0, "/v1/chat/completions", chat(true))
        .await
        .text()
        .await;
    r.faults(json!({})).await;
    // A slow upstream: one client leaves mid-stream, another before its answer.
    let _sim = r
        .own_upstream(|c| {
            c.openai_chunk_delay_ms = 300;
            c.openai_latency_ms = 600;
        })
        .await;
    let resp = r.post(0, "/v1/chat/completions", chat(true)).await;
    let mut chunks = resp.bytes_stream();
    drop(chunks.next().await);
    drop(chunks);
    let gone = tokio::time::timeout(
        Duration::from_millis(200),
        r.post(0, "/v1/chat/completions", chat(false)),
    )
    .await;
    assert!(gone.is_err());
    let admin = admin(&r.gws[0].0).await;
    let want = [
        ("completed", 1),
        ("refused", 1),
        ("upstream_error", 2),
        ("client_aborted", 2),
    ];
    let total = |text: &str, outcome: &str| -> i64 {
        text.lines()
            .filter(|l| l.starts_with("quartermaster_gateway_request_outcomes_total{"))
            .filter(|l| l.contains(&format!("outcome=\"{outcome}\"")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<i64>().unwrap())
            .sum()
    };
    let mut text = String::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = client()
            .get(format!("{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if want.iter().all(|(o, n)| total(&text, o) == *n) {
            break;
        }
    }
    for (outcome, n) in want {
        assert_eq!(total(&text, outcome), n, "{outcome}:\n{text}");
    }
    // The charged ones are counted in their usage rows, per outcome (refusals charge nothing).
    r.gws[0].0.housekeep(false).await;
    let Ledger::Sqlite(p) = &r.ledger else {
        unreachable!()
    };
    let attrs: Vec<(String,)> =
        sqlx::query_as("SELECT attributes FROM usage_events WHERE meter = 'llm_input_tokens'")
            .fetch_all(p)
            .await
            .unwrap();
    let mut counted = std::collections::BTreeMap::<String, i64>::new();
    for (a,) in attrs {
        let v: Value = serde_json::from_str(&a).unwrap();
        for (k, n) in v["outcomes"].as_object().into_iter().flatten() {
            *counted.entry(k.clone()).or_default() += n.as_i64().unwrap();
        }
    }
    assert_eq!(
        counted,
        [
            ("client_aborted", 2),
            ("completed", 1),
            ("upstream_error", 1)
        ]
        .into_iter()
        .map(|(k, n)| (k.to_string(), n))
        .collect()
    );
    // Those not charged are counted on the llm_requests meter, per outcome, never priced.
    let rows: Vec<(i64, i64, String)> = sqlx::query_as(
        "SELECT quantity, amount_nanos, attributes FROM usage_events WHERE meter = 'llm_requests'",
    )
    .fetch_all(p)
    .await
    .unwrap();
    let mut uncharged = std::collections::BTreeMap::<String, i64>::new();
    for (quantity, amount, a) in &rows {
        assert_eq!(*amount, 0, "never priced");
        let v: Value = serde_json::from_str(a).unwrap();
        let mut sum = 0;
        for (k, n) in v["outcomes"].as_object().into_iter().flatten() {
            *uncharged.entry(k.clone()).or_default() += n.as_i64().unwrap();
            sum += n.as_i64().unwrap();
        }
        assert_eq!(*quantity, sum, "{v}");
    }
    assert_eq!(
        uncharged,
        [("refused", 1), ("upstream_error", 1)]
            .into_iter()
            .map(|(k, n)| (k.to_string(), n))
            .collect()
    );
}

/// A key's requests-per-minute limit holds across replicas: two gateways on one PostgreSQL ledger
/// together serve it once, not once each, and refuse the rest with 429 and `Retry-After`.
#[tokio::test]
async fn rate_limits_per_key_hold_across_two_gateways_postgres() {
    let Some(r) = rig(
        1_000_000,
        json!({"rateLimits": {"requestsPerMinute": 4, "tokensPerMinute": 100000}}),
        2,
        true,
    )
    .await
    else {
        return;
    };
    let mut codes = Vec::new();
    for i in 0..8 {
        let resp = r.post(i % 2, "/v1/chat/completions", chat(false)).await;
        codes.push(resp.status().as_u16());
        if resp.status() == 429 {
            assert!(resp.headers().contains_key("retry-after"));
            let e: Value = resp.json().await.unwrap();
            assert_eq!(e["error"]["code"], "rate_limit_exceeded", "{e}");
        }
    }
    assert_eq!(
        codes.iter().filter(|c| **c == 200).count(),
        4,
        "4 a minute over both replicas: {codes:?}"
    );
    // A replica that gives its unused units back lets the other serve them.
    for (gw, _) in &r.gws {
        gw.housekeep(true).await;
    }
    assert_eq!(served_by(&r.sim.url).await.0, 4);
}
