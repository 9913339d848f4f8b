//! Subscriptions on the real local API server against `quartermaster sim`'s Stripe subset, with the sim's
//! signed webhooks going to the controller's `/webhooks/stripe`: create → active with revenue in the
//! ledger, a plan change with proration, cancel at the period's end, an unknown plan, a failed payment
//! and its recovery, a crash between Stripe's answer and the status write, deletion policies, and the
//! webhook endpoint's refusals and deduplication.

mod common;

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use quartermaster::crd::conditions::{self, ConditionStatus};
use quartermaster::crd::{ProviderConfig, Subscription};

const WAIT: Duration = Duration::from_secs(60);
const SECRET: &str = "whsec_test_secret";
const MONTH: i64 = 30 * 86_400;

struct StripeEnv {
    client: kube::Client,
    ns: String,
    id: String,
    pc: String,
    sim: common::SimHandle,
    ledger: quartermaster::ledger::Ledger,
    ledger_url: String,
    metrics: quartermaster::metrics::Metrics,
    hook_url: String,
    _db: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// A namespace, the simulator (webhooks to an endpoint served for the controller), a `stripe`
/// ProviderConfig with plans basic and pro, a Project, and (when `controller`) the controller.
async fn stripe_env(prefix: &str, controller: bool) -> StripeEnv {
    let client = common::client().await;
    let ns = common::namespace(&client, prefix).await;
    let id = common::unique(prefix);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/webhooks/stripe", listener.local_addr().unwrap());
    let url = hook_url.clone();
    let sim = common::start_sim(move |c| {
        c.stripe_webhook_url = Some(url);
        c.stripe_webhook_secret = Some(SECRET.into());
    })
    .await;
    common::secret(&client, &ns, "stripe", "secretKey", "sk_test_123").await;
    let pc = format!("{id}-stripe");
    let doc = serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
        "metadata": {"name": pc, "labels": {"qm-test": id}},
        "spec": {"type": "stripe", "endpoint": sim.url,
                 "credentialsSecretRef": {"name": "stripe", "namespace": ns, "key": "secretKey"},
                 "plans": [{"name": "basic", "priceID": "price_basic"},
                           {"name": "pro", "priceID": "price_pro",
                            "metered": [{"meter": "vm_seconds", "priceID": "price_vm_hours",
                                         "eventName": "vm_hours", "divisor": 3600}]}]},
    });
    Api::<ProviderConfig>::all(client.clone())
        .patch(
            &pc,
            &PatchParams::apply("quartermaster-tests").force(),
            &Patch::Apply(&doc),
        )
        .await
        .unwrap();
    let projects: Api<quartermaster::crd::Project> = Api::namespaced(client.clone(), &ns);
    let project = serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "Project",
        "metadata": {"name": "acme", "labels": {"qm-test": id}}, "spec": {"currency": "USD"},
    });
    projects
        .patch(
            "acme",
            &PatchParams::apply("quartermaster-tests").force(),
            &Patch::Apply(&project),
        )
        .await
        .unwrap();
    let db = tempfile::tempdir().unwrap();
    let (ledger, ledger_url) = common::db::sqlite(&db).await;
    let mut e = StripeEnv {
        client,
        ns,
        id,
        pc,
        sim,
        ledger,
        ledger_url,
        metrics: quartermaster::metrics::Metrics::new(),
        hook_url,
        _db: db,
        stop: None,
    };
    if controller {
        e.start_controller(listener);
    }
    e
}

impl StripeEnv {
    /// Starts the controller, serving its Stripe webhook endpoint on `listener`.
    fn start_controller(&mut self, listener: tokio::net::TcpListener) {
        let ledger = self.ledger.clone();
        let (metrics, stop) = common::start_controller_full(
            self.client.clone(),
            &self.id,
            Some(self.ledger.clone()),
            |c| {
                c.vendor_timeout = Duration::from_secs(2);
                c.stripe_usage_interval = Duration::from_secs(1);
            },
            move |ctx| {
                let waker = ctx.clone();
                let hook = quartermaster::webhooks::StripeHook::new(
                    ledger,
                    vec![SECRET.as_bytes().to_vec()],
                    300,
                    ctx.metrics.clone(),
                    Box::new(move |h| {
                        quartermaster::controller::subscription::stripe_event(&waker, h)
                    }),
                );
                let router = quartermaster::webhooks::router(None, Some(Arc::new(hook)));
                tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
            },
        );
        self.metrics = metrics;
        self.stop = Some(stop);
    }

    /// A Stripe client of the simulated account (as an earlier attempt or another tool would use).
    fn stripe(&self) -> quartermaster::cloud::stripe::Stripe {
        quartermaster::cloud::stripe::Stripe::new(
            quartermaster::http::HttpClient::new("stripe", Default::default()),
            Some(&self.sim.url),
            "sk_test_123",
        )
    }

    /// The webhook endpoint's listener again, for a controller started later.
    async fn hook_listener(&self) -> tokio::net::TcpListener {
        let addr = self
            .hook_url
            .trim_start_matches("http://")
            .trim_end_matches("/webhooks/stripe");
        tokio::net::TcpListener::bind(addr).await.unwrap()
    }

    fn subs(&self) -> Api<Subscription> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn apply(&self, name: &str, spec: serde_json::Value) {
        let mut s = serde_json::json!({"providerConfigRef": {"name": self.pc},
                                        "projectRef": {"name": "acme"}});
        common::env::merge(&mut s, spec);
        let doc = serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "Subscription",
            "metadata": {"name": name, "labels": {"qm-test": self.id}}, "spec": s});
        self.subs()
            .patch(
                name,
                &PatchParams::apply("quartermaster-tests").force(),
                &Patch::Apply(&doc),
            )
            .await
            .unwrap();
    }

    async fn wait(&self, name: &str, type_: &str, reason: &str) -> Subscription {
        let subs = self.subs();
        common::eventually(WAIT, &format!("{name} {type_} {reason}"), || async {
            let s = subs.get(name).await.ok()?;
            let st = s.status.as_ref()?;
            let c = conditions::find(&st.conditions, type_)?;
            (c.status == ConditionStatus::True
                && c.reason == reason
                && st.observed_generation == s.metadata.generation)
                .then_some(s)
        })
        .await
    }

    /// Waits until the object's Stripe status is `status`.
    async fn wait_stripe(&self, name: &str, status: &str) -> Subscription {
        let subs = self.subs();
        common::eventually(WAIT, &format!("{name} Stripe status {status}"), || async {
            let s = subs.get(name).await.ok()?;
            (s.status.as_ref()?.stripe_status.as_deref() == Some(status)).then_some(s)
        })
        .await
    }

    async fn state(&self) -> serde_json::Value {
        reqwest::get(format!("{}/_sim/stripe/state", self.sim.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn control(&self, path: &str, body: serde_json::Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/_sim/stripe/{path}", self.sim.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }

    /// The sim's customers and subscriptions that carry `uid`.
    async fn owned(&self, uid: &str) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
        let s = self.state().await;
        let of = |k: &str| {
            s[k].as_array()
                .unwrap()
                .iter()
                .filter(|o| o["metadata"]["quartermaster_uid"] == uid)
                .cloned()
                .collect::<Vec<_>>()
        };
        (of("customers"), of("subscriptions"))
    }

    /// `quartermaster ARGS` against this environment's API server and ledger: its stdout as JSON.
    async fn cli(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.cli_text(args).await).unwrap()
    }

    /// `quartermaster ARGS`: its stdout.
    async fn cli_text(&self, args: &[&str]) -> String {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let url = self.ledger_url.clone();
        // A blocking child process must not stall the simulator running on this runtime.
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_quartermaster"))
                .args(&args)
                .env("KUBECONFIG", common::kubeconfig())
                .env("DATABASE_URL", url)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    async fn payments(&self) -> Vec<(String, i64)> {
        let uid = common::project_uid(&self.client, &self.ns, "acme").await;
        let p = quartermaster::ledger::store::ProjectRef {
            namespace: &self.ns,
            name: "acme",
            uid: &uid,
        };
        self.ledger
            .credits(&p)
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.external_ref, c.amount_nanos))
            .collect()
    }
}

/// Create → active (one customer, one subscription, the paid invoice credited once as revenue), a plan
/// change invoiced with proration, cancel at the period's end, and the period's end seen through the
/// webhook: canceled, terminal, never recreated.
#[tokio::test]
async fn create_change_plan_and_cancel_at_period_end() {
    let e = stripe_env("stripesub", true).await;
    // Each apply sends the whole spec (server-side apply drops what the manager leaves out).
    let spec = |plan: &str, cancel: bool| {
        serde_json::json!({"plan": plan, "customer": {"email": "billing@acme.example"},
                           "prorationBehavior": "AlwaysInvoice", "cancelAtPeriodEnd": cancel})
    };
    e.apply("team", spec("basic", false)).await;
    let s = e.wait("team", conditions::READY, "Reconciled").await;
    let st = s.status.clone().unwrap();
    assert_eq!(st.stripe_status.as_deref(), Some("active"));
    assert_eq!(st.plan.as_deref(), Some("basic"));
    let inv = st.latest_invoice.clone().unwrap();
    assert_eq!(
        (inv.status.as_deref(), inv.amount_due.as_deref()),
        (Some("paid"), Some("10.00"))
    );
    let uid = s.metadata.uid.clone().unwrap();
    let (customers, subs) = e.owned(&uid).await;
    assert_eq!((customers.len(), subs.len()), (1, 1));
    assert_eq!(customers[0]["email"], "billing@acme.example");
    assert_eq!(st.customer_id.as_deref(), customers[0]["id"].as_str());
    assert_eq!(st.subscription_id.as_deref(), subs[0]["id"].as_str());
    assert_eq!(
        e.payments().await,
        [(inv.id.clone().unwrap(), 10_000_000_000)]
    );

    // Plan change: the item moves to the pro price, invoiced now with proration.
    e.apply("team", spec("pro", false)).await;
    common::eventually(WAIT, "the subscription on price_pro", || async {
        let (_, subs) = e.owned(&uid).await;
        (subs[0]["items"]["data"][0]["price"]["id"] == "price_pro").then_some(())
    })
    .await;
    let s = e.wait("team", conditions::READY, "Reconciled").await;
    assert_eq!(s.status.as_ref().unwrap().plan.as_deref(), Some("pro"));
    // The pro plan's metered price was added beside it.
    let (_, subs) = e.owned(&uid).await;
    let prices: Vec<&str> = subs[0]["items"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["price"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(prices, ["price_pro", "price_vm_hours"]);
    let payments = common::eventually(WAIT, "the proration paid and credited", || async {
        let p = e.payments().await;
        (p.len() == 2).then_some(p)
    })
    .await;
    assert!(
        payments[1].1 > 39_000_000_000 && payments[1].1 <= 40_000_000_000,
        "about 40.00 prorated over the rest of the month: {payments:?}"
    );

    // Cancel at the period's end: shown, then ended by Stripe when the period ends.
    e.apply("team", spec("pro", true)).await;
    let s = common::eventually(WAIT, "cancelAtPeriodEnd in status", || async {
        let s = e.subs().get("team").await.ok()?;
        let st = s.status.as_ref()?;
        (st.cancel_at_period_end && st.ends_at.is_some()).then_some(s)
    })
    .await;
    assert_eq!(
        s.status.as_ref().unwrap().ends_at,
        s.status.as_ref().unwrap().current_period_end
    );
    e.control("advance", serde_json::json!({"seconds": MONTH + 60}))
        .await;
    // The webhook wakes the object long before its resync.
    e.wait("team", conditions::STALLED, "SubscriptionEnded")
        .await;
    let (customers, subs) = e.owned(&uid).await;
    assert_eq!((customers.len(), subs.len()), (1, 1), "never recreated");
    assert_eq!(subs[0]["status"], "canceled");
    let handled = e
        .metrics
        .stripe_events
        .with_label_values(&["customer.subscription.deleted"])
        .get();
    assert_eq!(handled, 1);
}

/// An unknown plan stalls with the plans the ProviderConfig knows, and touches nothing at Stripe.
#[tokio::test]
async fn an_unknown_plan_stalls_with_the_known_ones() {
    let e = stripe_env("stripeplan", true).await;
    e.apply("gold", serde_json::json!({"plan": "gold"})).await;
    let s = e.wait("gold", conditions::STALLED, "UnknownPlan").await;
    let c = conditions::find(&s.status.as_ref().unwrap().conditions, conditions::STALLED).unwrap();
    assert!(c.message.contains("basic, pro"), "{}", c.message);
    let state = e.state().await;
    assert!(state["customers"].as_array().unwrap().is_empty());
}

/// A failed renewal makes the subscription past_due (Ready=False PaymentFailed, when it became so
/// recorded); paying recovers it. Both seen through webhooks.
#[tokio::test]
async fn a_failed_payment_and_its_recovery() {
    let e = stripe_env("stripedue", true).await;
    e.apply("team", serde_json::json!({"plan": "basic"})).await;
    let s = e.wait("team", conditions::READY, "Reconciled").await;
    let customer = s.status.unwrap().customer_id.unwrap();
    e.control(
        &format!("customers/{customer}/payments"),
        serde_json::json!({"fail": true}),
    )
    .await;
    e.control("advance", serde_json::json!({"seconds": MONTH + 60}))
        .await;
    let s = e.wait_stripe("team", "past_due").await;
    let st = s.status.unwrap();
    assert!(st.past_due_since.is_some());
    let ready = conditions::find(&st.conditions, conditions::READY).unwrap();
    assert_eq!(
        (ready.status, ready.reason.as_str()),
        (ConditionStatus::False, "PaymentFailed")
    );
    assert_eq!(
        st.latest_invoice.unwrap().status.as_deref(),
        Some("open"),
        "the renewal's invoice is open"
    );
    e.control(
        &format!("customers/{customer}/payments"),
        serde_json::json!({"fail": false}),
    )
    .await;
    let s = e.wait("team", conditions::READY, "Reconciled").await;
    let st = s.status.unwrap();
    assert_eq!(st.stripe_status.as_deref(), Some("active"));
    assert!(st.past_due_since.is_none());
    // Two paid invoices (creation and the recovered renewal), each credited once.
    let p = common::eventually(WAIT, "both payments credited", || async {
        let p = e.payments().await;
        (p.len() == 2).then_some(p)
    })
    .await;
    assert!(p.iter().all(|(_, n)| *n == 10_000_000_000), "{p:?}");
}

/// The controller killed between Stripe's answers and the status write: what the earlier attempt made
/// (a customer and a subscription tagged with the object's UID) is found, not made again.
#[tokio::test]
async fn a_crash_before_the_status_write_leaves_one_customer_and_one_subscription() {
    let mut e = stripe_env("stripecrash", false).await;
    e.apply("team", serde_json::json!({"plan": "basic"})).await;
    let uid = common::eventually(WAIT, "the object's UID", || async {
        e.subs().get("team").await.ok()?.metadata.uid
    })
    .await;
    // The earlier attempt, as the controller makes it.
    let stripe = e.stripe();
    let c = stripe
        .create_customer(&uid, &format!("{}/team", e.ns))
        .await
        .unwrap();
    let sub = stripe
        .create_subscription(&uid, &c.id, &[("price_basic".into(), Some(1))], None)
        .await
        .unwrap();
    let listener = e.hook_listener().await;
    e.start_controller(listener);
    let s = e.wait("team", conditions::READY, "Reconciled").await;
    let st = s.status.unwrap();
    assert_eq!(st.customer_id.as_deref(), Some(c.id.as_str()));
    assert_eq!(st.subscription_id.as_deref(), Some(sub.id.as_str()));
    let (customers, subs) = e.owned(&uid).await;
    assert_eq!((customers.len(), subs.len()), (1, 1));
}

/// Deletion: `Cancel` cancels now; `CancelAtPeriodEnd` keeps the object Terminating with its end date
/// until the period ends.
#[tokio::test]
async fn deletion_cancels_now_or_at_the_periods_end() {
    let e = stripe_env("stripedel", true).await;
    e.apply("now", serde_json::json!({"plan": "basic"})).await;
    e.apply(
        "later",
        serde_json::json!({"plan": "basic", "deletionPolicy": "CancelAtPeriodEnd"}),
    )
    .await;
    let now = e.wait("now", conditions::READY, "Reconciled").await;
    let later = e.wait("later", conditions::READY, "Reconciled").await;
    for n in ["now", "later"] {
        e.subs().delete(n, &DeleteParams::default()).await.unwrap();
    }
    common::eventually(WAIT, "'now' gone", || async {
        e.subs().get_opt("now").await.ok()?.is_none().then_some(())
    })
    .await;
    let (_, subs) = e.owned(now.metadata.uid.as_deref().unwrap()).await;
    assert_eq!(subs[0]["status"], "canceled");
    let s = common::eventually(WAIT, "'later' Terminating with its end", || async {
        let s = e.subs().get_opt("later").await.ok()??;
        let st = s.status.as_ref()?;
        (st.cancel_at_period_end && st.ends_at.is_some()).then_some(s)
    })
    .await;
    assert!(s.metadata.deletion_timestamp.is_some());
    let (_, subs) = e.owned(later.metadata.uid.as_deref().unwrap()).await;
    assert_eq!(subs[0]["status"], "active", "still running until its end");
    e.control("advance", serde_json::json!({"seconds": MONTH + 60}))
        .await;
    common::eventually(WAIT, "'later' gone after its period", || async {
        e.subs()
            .get_opt("later")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
}

/// The endpoint: a bad signature, a stale one or an altered body is refused with no side effect; an
/// event is handled once however often it is delivered; unknown types are accepted and ignored.
#[tokio::test]
async fn the_webhook_endpoint_refuses_bad_signatures_and_handles_an_event_once() {
    let e = stripe_env("stripehook", true).await;
    e.wait_provider_ready().await;
    let http = reqwest::Client::new();
    let send = |body: String, t: i64, secret: &str| {
        let sig =
            quartermaster::cloud::stripe_signature::sign(secret.as_bytes(), t, body.as_bytes());
        http.post(&e.hook_url)
            .header("stripe-signature", format!("t={t},v1={sig}"))
            .body(body)
            .send()
    };
    let now = jiff::Timestamp::now().as_second();
    let event = |id: &str, kind: &str| {
        serde_json::json!({"id": id, "type": kind,
            "data": {"object": {"id": "sub_x", "customer": "cus_x", "metadata": {}}}})
        .to_string()
    };
    let body = event("evt_test_1", "customer.subscription.updated");
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        status(send(body.clone(), now, "whsec_wrong").await.unwrap()),
        400
    );
    assert_eq!(
        status(send(body.clone(), now - 3600, SECRET).await.unwrap()),
        400
    );
    let sig = quartermaster::cloud::stripe_signature::sign(SECRET.as_bytes(), now, body.as_bytes());
    let altered = body.replace("sub_x", "sub_y");
    let r = http
        .post(&e.hook_url)
        .header("stripe-signature", format!("t={now},v1={sig}"))
        .body(altered)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .post(&e.hook_url)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "no signature");
    let refused = e
        .metrics
        .webhook_refusals
        .with_label_values(&["stripe"])
        .get();
    assert_eq!(refused, 4);
    // Valid: handled once, then recognised as a redelivery.
    for expect in ["handled", "already handled"] {
        let r = send(body.clone(), now, SECRET).await.unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(text.contains(expect), "{text}");
    }
    let r = send(event("evt_test_2", "charge.refunded"), now, SECRET)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("ignored"));
    let handled = e
        .metrics
        .stripe_events
        .with_label_values(&["customer.subscription.updated"])
        .get();
    assert_eq!(handled, 1);
}

impl StripeEnv {
    /// The controller is running (its ProviderConfig verified), so webhooks are handled, not deferred.
    async fn wait_provider_ready(&self) {
        let pcs: Api<ProviderConfig> = Api::all(self.client.clone());
        common::eventually(WAIT, "the Stripe ProviderConfig Ready", || async {
            let pc = pcs.get(&self.pc).await.ok()?;
            let st = pc.status?;
            let c = conditions::find(&st.conditions, conditions::READY)?;
            (c.status == ConditionStatus::True).then_some(())
        })
        .await;
    }
}

/// The entitlement gate: a payment failure makes the subscription past_due; within the grace period
/// nothing changes; after it the Project is `SubscriptionInactive` and (`onEntitlementLost: Stop`) its
/// VM is stopped and its SIM disabled, their specs untouched; the invoice paid, both come back.
#[tokio::test]
async fn a_lost_entitlement_stops_the_projects_vm_and_sim_until_paid() {
    use quartermaster::crd::{Project, SimCard, VirtualMachine};
    let e = stripe_env("stripegate", true).await;
    let sim_url = e.sim.url.clone();
    common::secret(&e.client, &e.ns, "do-token", "token", "t").await;
    let do_pc = format!("{}-do", e.id);
    common::do_provider_config(&e.client, &e.id, &do_pc, &e.ns, &sim_url, &[]).await;
    common::secret(
        &e.client,
        &e.ns,
        "onence",
        "credentials",
        r#"{"clientId":"1","clientSecret":"s"}"#,
    )
    .await;
    let iccid = quartermaster::sim::onence::FIRST_ICCID.to_string();
    let iot_pc = format!("{}-iot", e.id);
    let doc = serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
        "metadata": {"name": iot_pc, "labels": {"qm-test": e.id}},
        "spec": {"type": "onence", "endpoint": sim_url,
                 "credentialsSecretRef": {"name": "onence", "namespace": e.ns, "key": "credentials"},
                 "simClaims": [{"namespaces": [e.ns], "iccids": [iccid]}]},
    });
    let ssa = PatchParams::apply("quartermaster-tests").force();
    Api::<ProviderConfig>::all(e.client.clone())
        .patch(&iot_pc, &ssa, &Patch::Apply(&doc))
        .await
        .unwrap();
    let project = serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "Project",
        "metadata": {"name": "acme", "labels": {"qm-test": e.id}},
        "spec": {"currency": "USD", "subscriptionRef": {"name": "team"},
                 "onEntitlementLost": "Stop", "pastDueGraceSeconds": 4},
    });
    let projects: Api<Project> = Api::namespaced(e.client.clone(), &e.ns);
    projects
        .patch("acme", &ssa, &Patch::Apply(&project))
        .await
        .unwrap();
    e.apply("team", serde_json::json!({"plan": "basic"})).await;
    let s = e.wait("team", conditions::READY, "Reconciled").await;
    let customer = s.status.unwrap().customer_id.unwrap();
    let vms: Api<VirtualMachine> = Api::namespaced(e.client.clone(), &e.ns);
    let vm = serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": "web", "labels": {"qm-test": e.id}},
        "spec": {"providerConfigRef": {"name": do_pc}, "projectRef": {"name": "acme"},
                 "region": "fra1", "size": "s-1vcpu-1gb", "image": "debian-12-x64"},
    });
    vms.patch("web", &ssa, &Patch::Apply(&vm)).await.unwrap();
    let sims: Api<SimCard> = Api::namespaced(e.client.clone(), &e.ns);
    let card = serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "SimCard",
        "metadata": {"name": "tracker", "labels": {"qm-test": e.id}},
        "spec": {"providerConfigRef": {"name": iot_pc}, "projectRef": {"name": "acme"},
                 "iccid": iccid},
    });
    sims.patch("tracker", &ssa, &Patch::Apply(&card))
        .await
        .unwrap();
    let ready = |reason: &'static str, want: ConditionStatus| {
        let (vms, sims) = (vms.clone(), sims.clone());
        async move {
            common::eventually(
                WAIT,
                &format!("VM and SIM Ready={want:?} {reason}"),
                || async {
                    let v = vms.get("web").await.ok()?;
                    let s = sims.get("tracker").await.ok()?;
                    let c1 = conditions::find(&v.status?.conditions, conditions::READY)?.clone();
                    let c2 = conditions::find(&s.status?.conditions, conditions::READY)?.clone();
                    (c1.status == want
                        && c1.reason == reason
                        && c2.status == want
                        && c2.reason == reason)
                        .then_some(())
                },
            )
            .await
        }
    };
    ready("Reconciled", ConditionStatus::True).await;

    e.control(
        &format!("customers/{customer}/payments"),
        serde_json::json!({"fail": true}),
    )
    .await;
    e.control("advance", serde_json::json!({"seconds": MONTH + 60}))
        .await;
    e.wait_stripe("team", "past_due").await;
    // Within grace: still entitled.
    let p = common::eventually(WAIT, "the Project in its grace period", || async {
        let p = projects.get("acme").await.ok()?;
        let en = p.status.as_ref()?.entitlement.clone()?;
        (en.entitled && en.grace_ends_at.is_some()).then_some(p)
    })
    .await;
    assert!(
        conditions::find(&p.status.unwrap().conditions, conditions::READY)
            .is_some_and(|c| c.status == ConditionStatus::True)
    );
    // Grace over: stopped and disabled, specs as written.
    ready("SubscriptionInactive", ConditionStatus::False).await;
    let p = projects.get("acme").await.unwrap();
    let c = conditions::find(&p.status.as_ref().unwrap().conditions, conditions::READY).unwrap();
    assert_eq!(c.reason, "SubscriptionInactive");
    let s = reqwest::get(format!("{sim_url}/_sim/stats")).await.unwrap();
    assert!(s.status().is_success());
    let droplets: serde_json::Value = reqwest::Client::new()
        .get(format!("{sim_url}/v2/droplets"))
        .bearer_auth("t")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(droplets["droplets"][0]["status"], "off");
    let v = vms.get("web").await.unwrap();
    assert_eq!(
        v.spec.run_strategy,
        Default::default(),
        "runStrategy untouched"
    );
    assert!(
        sims.get("tracker").await.unwrap().spec.enabled,
        "enabled untouched"
    );

    // Paid: entitled again, both back.
    e.control(
        &format!("customers/{customer}/payments"),
        serde_json::json!({"fail": false}),
    )
    .await;
    ready("Reconciled", ConditionStatus::True).await;
}

/// A VM-seconds usage row of Project `uid`.
fn usage(key: &str, ns: &str, uid: &str, seconds: i64) -> quartermaster::ledger::UsageEvent {
    let now = jiff::Timestamp::now().as_second();
    quartermaster::ledger::UsageEvent {
        key: key.into(),
        namespace: ns.into(),
        project: "acme".into(),
        project_uid: uid.into(),
        object_kind: "VirtualMachine".into(),
        object_name: "web".into(),
        object_uid: "vm-uid".into(),
        meter: quartermaster::ledger::Meter::VmSeconds,
        quantity: seconds,
        unit_price: "0.01".parse().unwrap(),
        vendor_unit_price: "0.01".parse().unwrap(),
        price_quantity: 3600,
        currency: "USD".into(),
        window_start: now - seconds,
        window_end: now,
        attributes: serde_json::json!({}),
    }
}

/// Usage of a plan's metered meters reaches Stripe as meter events, each ledger row once: across a
/// lost answer (the report left `sending`, Stripe already holding its identifier) and across a
/// controller restart; the ledger's reported totals match.
#[tokio::test]
async fn usage_is_reported_to_stripe_once_across_a_lost_answer_and_a_restart() {
    let mut e = stripe_env("stripeuse", true).await;
    e.apply("team", serde_json::json!({"plan": "pro"})).await;
    let s = e.wait("team", conditions::READY, "Reconciled").await;
    let customer = s.status.unwrap().customer_id.unwrap();
    let uid = common::project_uid(&e.client, &e.ns, "acme").await;
    let rows = [("u1", 3600), ("u2", 1800), ("u3", 5400)];
    let events: Vec<_> = rows
        .iter()
        .map(|(k, q)| usage(k, &e.ns, &uid, *q))
        .collect();
    e.ledger.record(&events).await.unwrap();
    let url = format!("{}/_sim/stripe/meter-events", e.sim.url);
    let meter_events = || async {
        let v: Vec<serde_json::Value> = reqwest::get(&url).await.unwrap().json().await.unwrap();
        v
    };
    let got = common::eventually(WAIT, "three meter events", || async {
        let v = meter_events().await;
        (v.len() == 3).then_some(v)
    })
    .await;
    for (k, value) in [("u1", "1"), ("u2", "0.5"), ("u3", "1.5")] {
        let id = quartermaster::controller::subscription::usage::identifier(k);
        let ev = got
            .iter()
            .find(|m| m["identifier"] == id.as_str())
            .expect(k);
        assert_eq!(ev["payload"]["value"], value);
        assert_eq!(ev["payload"]["stripe_customer_id"], customer.as_str());
        assert_eq!(ev["event_name"], "vm_hours");
    }
    // A lost answer: the report recorded, Stripe holding the event, the ledger not told.
    let lost = usage("u4", &e.ns, &uid, 7200);
    e.ledger.record(std::slice::from_ref(&lost)).await.unwrap();
    let id4 = quartermaster::controller::subscription::usage::identifier("u4");
    let now = jiff::Timestamp::now().as_second();
    e.ledger
        .report_intent(&quartermaster::ledger::stripe_usage::UsageReport {
            usage_key: "u4".into(),
            project_uid: uid.clone(),
            meter: "vm_seconds".into(),
            quantity: 7200,
            value: "2".into(),
            customer: customer.clone(),
            event_name: "vm_hours".into(),
            identifier: id4.clone(),
            event_time: now,
            attempted_at: now,
        })
        .await
        .unwrap();
    let stripe = e.stripe();
    stripe
        .meter_event("vm_hours", &customer, "2", &id4, now)
        .await
        .unwrap();
    common::eventually(WAIT, "the lost report confirmed", || async {
        let t = e.ledger.reported_totals(&uid, 0, i64::MAX).await.ok()?;
        (t == [("vm_seconds".to_string(), 18_000, 18_000)]).then_some(())
    })
    .await;
    assert_eq!(
        meter_events().await.len(),
        4,
        "Stripe keeps one event per identifier"
    );
    let inv = e
        .cli(&["invoice", "--project", &format!("{}/acme", e.ns)])
        .await;
    assert_eq!(
        inv["reportedToStripe"],
        serde_json::json!([{"meter": "vm_seconds", "reported": 18000, "recorded": 18000}])
    );
    assert_eq!(
        inv["revenue"]["USD"]["payments"], "50.00",
        "the pro plan's first invoice: {inv}"
    );
    // A restart reports nothing again.
    e.stop.take();
    let posts = e.state().await["meterEventPosts"].as_u64().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    e.start_controller(listener);
    // The new controller has looked at the Subscription several times (every usage interval).
    let m = e.metrics.clone();
    common::eventually(WAIT, "three reconciles by the new controller", || async {
        (m.reconciles.with_label_values(&["Subscription"]).get() >= 3).then_some(())
    })
    .await;
    assert_eq!(e.state().await["meterEventPosts"].as_u64().unwrap(), posts);
    assert_eq!(meter_events().await.len(), 4);
}

/// Attaching an existing customer by ID: refused where the ProviderConfig does not let the namespace;
/// allowed where it does (the customer is then tagged as this object's); a second object naming the same
/// customer is refused (one customer, one object: the oldest).
#[tokio::test]
async fn an_existing_customer_is_attached_only_where_allowed_and_by_one_object() {
    let e = stripe_env("stripeattach", true).await;
    let stripe = e.stripe();
    // A customer made outside Quartermaster (no owner tag): the create of another "object".
    let c = stripe
        .create_customer("00000000-0000-0000-0000-0000000000aa", "billing-console")
        .await
        .unwrap();
    // Drop its owner tag, as a customer created in Stripe's console would have none.
    reqwest::Client::new()
        .post(format!("{}/v1/customers/{}", e.sim.url, c.id))
        .bearer_auth("sk_test_123")
        .form(&[("metadata[quartermaster_uid]", "")])
        .send()
        .await
        .unwrap();
    e.apply(
        "first",
        serde_json::json!({"plan": "basic", "customerID": c.id}),
    )
    .await;
    e.wait("first", conditions::STALLED, "AdoptionNotAllowed")
        .await;
    // The platform admin allows this namespace to attach customers.
    let pcs: Api<ProviderConfig> = Api::all(e.client.clone());
    pcs.patch(
        &e.pc,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"adoption": {"allowedNamespaces": [e.ns]}}})),
    )
    .await
    .unwrap();
    let s = e.wait("first", conditions::READY, "Reconciled").await;
    assert_eq!(
        s.status.as_ref().unwrap().customer_id.as_deref(),
        Some(c.id.as_str())
    );
    let uid = s.metadata.uid.clone().unwrap();
    let state = e.state().await;
    let tagged = state["customers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == c.id.as_str())
        .unwrap()["metadata"]["quartermaster_uid"]
        .clone();
    assert_eq!(
        tagged,
        uid.as_str(),
        "the attached customer is now this object's"
    );
    e.apply(
        "second",
        serde_json::json!({"plan": "basic", "customerID": c.id}),
    )
    .await;
    e.wait("second", conditions::STALLED, "ClaimedByAnother")
        .await;
    let (_, subs) = e.owned(&uid).await;
    assert_eq!(subs.len(), 1);
}

/// A first payment that fails leaves the subscription `incomplete` (`Ready=False` `PaymentFailed`); 23
/// hours later Stripe ends it (`incomplete_expired`): terminal, `Stalled`, nothing created again.
#[tokio::test]
async fn an_incomplete_subscription_expires_for_good() {
    let mut e = stripe_env("stripeexpire", false).await;
    e.apply("team", serde_json::json!({"plan": "basic"})).await;
    let uid = common::eventually(WAIT, "the object's UID", || async {
        e.subs().get("team").await.ok()?.metadata.uid
    })
    .await;
    // Its customer exists and cannot pay before the subscription is made.
    let stripe = e.stripe();
    let c = stripe
        .create_customer(&uid, &format!("{}/team", e.ns))
        .await
        .unwrap();
    e.control(
        &format!("customers/{}/payments", c.id),
        serde_json::json!({"fail": true}),
    )
    .await;
    let listener = e.hook_listener().await;
    e.start_controller(listener);
    let s = e.wait_stripe("team", "incomplete").await;
    let ready = conditions::find(&s.status.unwrap().conditions, conditions::READY)
        .unwrap()
        .clone();
    assert_eq!(ready.reason, "PaymentFailed");
    e.control("advance", serde_json::json!({"seconds": 24 * 3600}))
        .await;
    e.wait("team", conditions::STALLED, "SubscriptionEnded")
        .await;
    let (customers, subs) = e.owned(&uid).await;
    assert_eq!((customers.len(), subs.len()), (1, 1));
    assert_eq!(subs[0]["status"], "incomplete_expired");
}

/// Webhooks delivered late, newest first and twice each: every event is handled once, and the object
/// ends on Stripe's current state (read back), not on the last event's copy.
#[tokio::test]
async fn out_of_order_and_duplicate_webhooks_end_on_stripes_state() {
    let e = stripe_env("stripeorder", true).await;
    e.apply("team", serde_json::json!({"plan": "basic"})).await;
    let s = e.wait("team", conditions::READY, "Reconciled").await;
    let customer = s.status.unwrap().customer_id.unwrap();
    e.control(
        "webhooks",
        serde_json::json!({"hold": true, "duplicate": true}),
    )
    .await;
    // past_due, then paid again: the newest event says active, the oldest past_due.
    e.control(
        &format!("customers/{customer}/payments"),
        serde_json::json!({"fail": true}),
    )
    .await;
    e.control("advance", serde_json::json!({"seconds": MONTH + 60}))
        .await;
    e.control(
        &format!("customers/{customer}/payments"),
        serde_json::json!({"fail": false}),
    )
    .await;
    let r = reqwest::Client::new()
        .post(format!(
            "{}/_sim/stripe/webhooks/flush?reverse=true",
            e.sim.url
        ))
        .send()
        .await
        .unwrap();
    let held = r.json::<serde_json::Value>().await.unwrap()["delivered"]
        .as_u64()
        .unwrap();
    assert!(held >= 5, "{held} events held");
    // Every event handled once (each was delivered twice).
    let m = e.metrics.clone();
    common::eventually(WAIT, "each held event handled once", || async {
        let handled: u64 = quartermaster::cloud::stripe_event::STRIPE_EVENTS
            .iter()
            .map(|t| m.stripe_events.with_label_values(&[t]).get())
            .sum();
        // The events before the hold were handled as they came: count only the total's growth.
        (handled >= held).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // let the duplicates arrive
    let s = e.wait("team", conditions::READY, "Reconciled").await;
    assert_eq!(s.status.unwrap().stripe_status.as_deref(), Some("active"));
    let events: Vec<serde_json::Value> = reqwest::get(format!("{}/_sim/stripe/events", e.sim.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let relevant = events
        .iter()
        .filter(|ev| {
            quartermaster::cloud::stripe_event::STRIPE_EVENTS
                .contains(&ev["type"].as_str().unwrap_or_default())
        })
        .count() as u64;
    let handled: u64 = quartermaster::cloud::stripe_event::STRIPE_EVENTS
        .iter()
        .map(|t| m.stripe_events.with_label_values(&[t]).get())
        .sum();
    assert_eq!(
        handled, relevant,
        "each event once, however often delivered"
    );
}

/// A customer the controller created for a subscription Stripe refused is reused when the object is
/// fixed (one customer, holding the subscription), and deleted with an object that never held one.
#[tokio::test]
async fn a_customer_made_for_a_refused_subscription_is_reused_and_removed_with_its_object() {
    let e = stripe_env("stripecus", true).await;
    for name in ["fixed", "dropped"] {
        e.apply(name, serde_json::json!({"priceID": "price_nope"}))
            .await;
    }
    let mut uids = Vec::new();
    for name in ["fixed", "dropped"] {
        let s = e.wait(name, conditions::STALLED, "VendorRejected").await;
        let c =
            conditions::find(&s.status.as_ref().unwrap().conditions, conditions::STALLED).unwrap();
        assert!(c.message.contains("No such price"), "{}", c.message);
        let uid = s.metadata.uid.clone().unwrap();
        assert_eq!(e.owned(&uid).await.0.len(), 1, "{name}: one customer");
        uids.push(uid);
    }
    // Fixed: the same customer holds the subscription.
    let fix = serde_json::json!({"spec": {"priceID": null, "plan": "basic"}});
    e.subs()
        .patch("fixed", &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .unwrap();
    let s = e.wait("fixed", conditions::READY, "Reconciled").await;
    let (customers, subs) = e.owned(&uids[0]).await;
    assert_eq!((customers.len(), subs.len()), (1, 1));
    assert_eq!(
        customers[0]["id"].as_str(),
        s.status.unwrap().customer_id.as_deref()
    );
    // Deleted without ever holding one: its customer goes with it.
    e.subs()
        .delete("dropped", &Default::default())
        .await
        .unwrap();
    common::eventually(WAIT, "dropped gone", || async {
        e.subs()
            .get_opt("dropped")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert_eq!(
        e.owned(&uids[1]).await.0.len(),
        0,
        "the unused customer was deleted"
    );
    // One that held a subscription keeps its customer (its invoices live there).
    e.subs().delete("fixed", &Default::default()).await.unwrap();
    common::eventually(WAIT, "fixed gone", || async {
        e.subs()
            .get_opt("fixed")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert_eq!(e.owned(&uids[0]).await.0.len(), 1);
}

/// A Stripe ProviderConfig is held while a Subscription holds a customer through it: deleting it
/// waits, and the Subscription's deletion still cancels at Stripe.
#[tokio::test]
async fn the_stripe_account_is_held_while_a_subscription_charges_through_it() {
    let e = stripe_env("stripehold", true).await;
    e.apply("team", serde_json::json!({"plan": "basic"})).await;
    let s = e.wait("team", conditions::READY, "Reconciled").await;
    let sub_id = s.status.unwrap().subscription_id.unwrap();
    let pcs: Api<ProviderConfig> = Api::all(e.client.clone());
    pcs.delete(&e.pc, &Default::default()).await.unwrap();
    common::eventually(
        WAIT,
        "the ProviderConfig says the Subscription uses it",
        || async {
            let st = pcs.get(&e.pc).await.ok()?.status?;
            let c = conditions::find(&st.conditions, conditions::RECONCILING)?;
            (c.message.contains("in use") && c.message.contains("Subscription")).then_some(())
        },
    )
    .await;
    e.subs().delete("team", &Default::default()).await.unwrap();
    common::eventually(
        WAIT,
        "canceled at Stripe, then the account released",
        || async {
            let canceled = e.stripe().subscription(&sub_id).await.ok()??.status == "canceled";
            (canceled && pcs.get_opt(&e.pc).await.unwrap().is_none()).then_some(())
        },
    )
    .await;
}
