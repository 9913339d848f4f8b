//! One run across every kind, against the simulator: the examples (a Project with a Subscription, two
//! VMs, a SimCard, a SimMessage and a TokenBudget used through the gateway); the Subscription's payment
//! fails and recovers (through signed webhooks); then the Project is deleted with Cascade and its
//! Subscription and TokenBudget with it. Checked: nothing left running at any simulated vendor (no
//! droplet, no live Stripe subscription, the SIM disabled at 1NCE), usage
//! recorded once (the gateway's tokens equal the upstream's), revenue and cost in the ledger's report,
//! and no secret in any Event or status of the run.

mod common;

use std::time::Duration;

use common::examples::{KINDS, api, apply_all, examples, settled, wait_gone};
use kube::api::{Api, DeleteParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);
const HOOK_SECRET: &str = "whsec_e2e_secret_never_shown";

async fn sim_json(sim: &str, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{sim}{path}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn sim_post(sim: &str, path: &str, body: Value) {
    let r = reqwest::Client::new()
        .post(format!("{sim}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
}

#[tokio::test]
async fn every_kind_end_to_end_from_creation_to_cascade() {
    quartermaster::install_crypto_provider();
    let client = common::client().await;
    let ns = common::namespace(&client, "e2e").await;
    let id = common::unique("e2e");
    // The controller and the gateway as the chart runs them: their own processes, logs kept for the
    // secret scan, one SQLite ledger file shared with this test's checks.
    let dir = tempfile::tempdir().unwrap();
    let (ledger, ledger_url) = common::db::sqlite(&dir).await;
    common::secret(&client, &ns, "stripe-webhook", "secret", HOOK_SECRET).await;
    let controller = common::process::spawn_run(
        "e2e",
        &common::kubeconfig(),
        &[
            "--leader-namespace",
            &ns,
            "--label-selector",
            &format!("qm-test={id}"),
            "--database-url",
            &ledger_url,
            "--budget-status-interval-secs",
            "1",
            "--stripe-webhook-secret",
            &format!("{ns}/stripe-webhook"),
        ],
    );
    let hook = format!("http://127.0.0.1:{}/webhooks/stripe", controller.port);
    let sim = common::start_sim(move |c| {
        c.stripe_webhook_url = Some(hook);
        c.stripe_webhook_secret = Some(HOOK_SECRET.into());
    })
    .await;

    // The examples, with a second VM and the Project deleted by Cascade.
    let mut docs = examples(&ns, &id, &sim.url);
    for d in docs.iter_mut().filter(|d| d["kind"] == "Project") {
        d["spec"]["deletionPolicy"] = "Cascade".into();
    }
    // The examples' webhook Secret carries the secret the sim signs with: the controller may read it
    // before or after they are applied (a slow start under load), and must refuse nothing either way.
    for d in docs
        .iter_mut()
        .filter(|d| d["kind"] == "Secret" && d["metadata"]["name"] == "stripe-webhook")
    {
        d["stringData"]["secret"] = HOOK_SECRET.into();
    }
    let vm = docs
        .iter()
        .find(|d| d["kind"] == "VirtualMachine")
        .unwrap()
        .clone();
    let mut vm2 = vm.clone();
    vm2["metadata"]["name"] = "web-2".into();
    vm2["spec"].as_object_mut().unwrap().remove("userData");
    vm2["spec"]
        .as_object_mut()
        .unwrap()
        .remove("userDataSecretRef");
    docs.push(vm2);
    apply_all(&client, &docs).await;

    let gw_port = common::process::free_port();
    let gw_log = std::env::temp_dir().join(format!("e2e-gateway-{gw_port}.log"));
    let _gateway_proc = common::process::Proc::spawn(
        common::process::quartermaster()
            .args([
                "gateway",
                "--listen",
                &format!("127.0.0.1:{gw_port}"),
                "--admin-listen",
                "127.0.0.1:0",
                "--flush-interval-ms",
                "100",
            ])
            .args(["--database-url", &ledger_url])
            .env("KUBECONFIG", common::kubeconfig())
            // Debug: the scan covers what an operator turning logging up would see.
            .env("RUST_LOG", "debug")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&gw_log).unwrap()),
    );
    let gateway = format!("http://127.0.0.1:{gw_port}");

    // Everything Ready.
    let ours: Vec<&Value> = docs
        .iter()
        .filter(|d| KINDS.contains(&d["kind"].as_str().unwrap()))
        .collect();
    for d in &ours {
        let name = d["metadata"]["name"].as_str().unwrap();
        common::eventually(WAIT, &format!("{} {name} Ready", d["kind"]), || async {
            let o = api(&client, d).get(name).await.ok()?;
            settled(&o).then_some(())
        })
        .await;
    }
    assert_eq!(sim.droplets().await.len(), 2);

    // The TokenBudget used through the gateway.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    let key = String::from_utf8(
        secrets.get("support-bot-prod").await.unwrap().data.unwrap()["apiKey"]
            .0
            .clone(),
    )
    .unwrap();
    let mut used = 0;
    for _ in 0..3 {
        let v: Value = common::eventually(WAIT, "the gateway serves the budget", || async {
            let r = reqwest::Client::new()
                .post(format!("{gateway}/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "status report"}]}))
                .send()
                .await
                .ok()?;
            if r.status() != 200 {
                return None;
            }
            r.json().await.ok()
        })
        .await;
        used += v["usage"]["total_tokens"].as_i64().unwrap();
    }
    let budgets: Api<quartermaster::crd::TokenBudget> = Api::namespaced(client.clone(), &ns);
    common::eventually(
        WAIT,
        "the budget's consumed equals the upstream's usage",
        || async {
            let b = budgets.get("support-bot").await.ok()?;
            (b.status?.consumed == Some(used as u64)).then_some(())
        },
    )
    .await;

    // The Subscription's payment fails at the end of its trial, then recovers.
    let subs: Api<quartermaster::crd::Subscription> = Api::namespaced(client.clone(), &ns);
    let customer = subs
        .get("acme-pro")
        .await
        .unwrap()
        .status
        .unwrap()
        .customer_id
        .unwrap();
    sim_post(
        &sim.url,
        &format!("/_sim/stripe/customers/{customer}/payments"),
        json!({"fail": true}),
    )
    .await;
    sim_post(
        &sim.url,
        "/_sim/stripe/advance",
        json!({"seconds": 15 * 86_400}),
    )
    .await;
    let mut past_due = false;
    for _ in 0..240 {
        let st = subs.get("acme-pro").await.unwrap().status.unwrap();
        if st.stripe_status.as_deref() == Some("past_due") {
            past_due = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if !past_due {
        let events = sim_json(&sim.url, "/_sim/stripe/events").await;
        let state = sim_json(&sim.url, "/_sim/stripe/state").await;
        panic!(
            "the Subscription never showed past_due: {:?}\nevents: {events}\nstate: {}",
            subs.get("acme-pro").await.unwrap().status,
            state["subscriptions"]
        );
    }
    sim_post(
        &sim.url,
        &format!("/_sim/stripe/customers/{customer}/payments"),
        json!({"fail": false}),
    )
    .await;
    common::eventually(WAIT, "the Subscription active again", || async {
        let st = subs.get("acme-pro").await.ok()?.status?;
        (st.stripe_status.as_deref() == Some("active")).then_some(())
    })
    .await;

    // Revenue (the recovered payment) and cost (the gateway's tokens at the vendor's price) in the ledger.
    let project_uid = common::project_uid(&client, &ns, "acme-iot").await;
    let now = jiff::Timestamp::now().as_second();
    let payments = common::eventually(WAIT, "the payment credited", || async {
        let p = ledger
            .payments(
                &quartermaster::ledger::store::ProjectRef {
                    namespace: &ns,
                    name: "acme-iot",
                    uid: &project_uid,
                },
                now - 40 * 86_400,
                now + 40 * 86_400,
            )
            .await
            .ok()?;
        (!p.is_empty()).then_some(p)
    })
    .await;
    assert!(!payments.is_empty());
    let rows = ledger
        .usage(
            &quartermaster::ledger::store::ProjectRef {
                namespace: &ns,
                name: "acme-iot",
                uid: &project_uid,
            },
            now - 40 * 86_400,
            now + 86_400,
            quartermaster::ledger::store::GroupBy::Meter,
        )
        .await
        .unwrap();
    let tokens: i64 = rows
        .iter()
        .filter(|r| r.meter.starts_with("llm_"))
        .map(|r| r.quantity)
        .sum();
    assert_eq!(tokens, used, "every token recorded once: {rows:?}");

    // Cascade: the Project takes its members (VMs, SimCard); the Subscription, the TokenBudget and the
    // SimMessage, which are not members, are deleted too.
    let projects: Api<quartermaster::crd::Project> = Api::namespaced(client.clone(), &ns);
    projects
        .delete("acme-iot", &DeleteParams::default())
        .await
        .unwrap();
    subs.delete("acme-pro", &DeleteParams::default())
        .await
        .unwrap();
    budgets
        .delete("support-bot", &DeleteParams::default())
        .await
        .unwrap();
    let messages: Api<quartermaster::crd::SimMessage> = Api::namespaced(client.clone(), &ns);
    messages
        .delete("tracker-0042-wake-up", &DeleteParams::default())
        .await
        .unwrap();
    for d in &ours {
        if d["kind"] == "ProviderConfig" {
            continue;
        }
        wait_gone(&client, d, WAIT).await;
    }
    // Nothing left running at any simulated vendor.
    let droplets = common::eventually(WAIT, "every droplet deleted", || async {
        let d = sim.droplets().await;
        d.is_empty().then_some(d)
    })
    .await;
    assert!(droplets.is_empty());
    // The SIM is disabled at 1NCE (SIMs are never deleted there: the SimCard's default policy).
    let iccid = docs.iter().find(|d| d["kind"] == "SimCard").unwrap()["spec"]["iccid"]
        .as_str()
        .unwrap()
        .to_string();
    let onence = quartermaster::cloud::onence::OneNce::new(
        quartermaster::http::HttpClient::new("1nce", Default::default()),
        quartermaster::cloud::onence::Endpoints::at(Some(&sim.url)),
        r#"{"clientId":"e2e","clientSecret":"e2e"}"#,
    );
    let at_1nce = onence.sim(&iccid).await.unwrap().unwrap();
    assert_eq!(at_1nce.status, "Disabled", "{at_1nce:?}");
    let state = sim_json(&sim.url, "/_sim/stripe/state").await;
    let subs_left = state["subscriptions"].as_array().unwrap();
    assert!(!subs_left.is_empty());
    assert!(
        subs_left.iter().all(|s| s["status"] == "canceled"),
        "a live Stripe subscription is left: {subs_left:?}"
    );

    // No secret in any Event or status of the run.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let mut seen =
        serde_json::to_string(&events.list(&Default::default()).await.unwrap().items).unwrap();
    for d in &ours {
        if d["kind"] == "ProviderConfig" {
            let name = d["metadata"]["name"].as_str().unwrap();
            seen.push_str(
                &serde_json::to_string(&api(&client, d).get(name).await.unwrap().data["status"])
                    .unwrap(),
            );
        }
    }
    for secret in [
        key.as_str(),
        HOOK_SECRET,
        "sk-FAKE_KEY_FOR_EXAMPLES_ONLY",
        "sk_test_FAKE_KEY_FOR_EXAMPLES_ONLY",
        "FAKE_PASSWORD_FOR_EXAMPLES_ONLY",
        "whsec_FAKE_SECRET_FOR_EXAMPLES_ONLY",
    ] {
        assert!(
            !seen.contains(secret),
            "a secret appears in an Event or a status"
        );
    }
    // Nor in any log line of the controller or the gateway.
    let logs = [controller.log.clone(), gw_log];
    drop(controller);
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.lines().count() > 3,
            "{} is nearly empty:\n{text}",
            log.display()
        );
        for secret in [
            key.as_str(),
            HOOK_SECRET,
            "sk-FAKE_KEY_FOR_EXAMPLES_ONLY",
            "sk_test_FAKE_KEY_FOR_EXAMPLES_ONLY",
            "FAKE_PASSWORD_FOR_EXAMPLES_ONLY",
        ] {
            assert!(
                !text.contains(secret),
                "a secret appears in {}",
                log.display()
            );
        }
    }
}
