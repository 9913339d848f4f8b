//! SimCards on the real local API server against `quartermaster sim`'s 1NCE subset: the claim rules, the
//! asynchronous enable/disable round trip with a 409 in between, label and IMEI lock, usage into the
//! ledger once, and deletion with Disable and Orphan.

mod common;

use std::time::Duration;

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use quartermaster::crd::conditions::{self, ConditionStatus};
use quartermaster::crd::{ProviderConfig, SimCard};
use quartermaster::ledger::store::{GroupBy, ProjectRef};

const WAIT: Duration = Duration::from_secs(60);
const FIRST: u64 = quartermaster::sim::onence::FIRST_ICCID;

struct SimEnv {
    client: kube::Client,
    ns: String,
    id: String,
    pc: String,
    sim: common::SimHandle,
    ledger: quartermaster::ledger::Ledger,
    ledger_url: String,
    metrics: quartermaster::metrics::Metrics,
    _db: tempfile::TempDir,
    _stop: Option<tokio::sync::oneshot::Sender<()>>,
}

fn iccid(i: u64) -> String {
    (FIRST + i).to_string()
}

/// A namespace, the simulator, a `onence` ProviderConfig with `sim_claims`, and a controller with a
/// SQLite ledger.
async fn sim_env(prefix: &str, sim_claims: serde_json::Value) -> SimEnv {
    sim_env_with(prefix, sim_claims, serde_json::json!({}), 0).await
}

/// Reads quotas and usage SIM by SIM on every reconcile (as after each usage interval).
const ALWAYS: Duration = Duration::ZERO;

/// [`sim_env`] with more ProviderConfig spec (`extra`) and a simulator that holds each top-up's answer
/// `top_up_latency_ms` (the controller gives up on vendor calls after 1 s).
async fn sim_env_with(
    prefix: &str,
    sim_claims: serde_json::Value,
    extra: serde_json::Value,
    top_up_latency_ms: u64,
) -> SimEnv {
    sim_env_cfg(prefix, sim_claims, extra, top_up_latency_ms, ALWAYS, 1).await
}

async fn sim_env_cfg(
    prefix: &str,
    sim_claims: serde_json::Value,
    extra: serde_json::Value,
    top_up_latency_ms: u64,
    usage_interval: Duration,
    apply_secs: u64,
) -> SimEnv {
    sim_env_full(
        prefix,
        sim_claims,
        extra,
        (top_up_latency_ms, usage_interval, apply_secs),
        None,
    )
    .await
}

/// [`sim_env_cfg`] with a resync interval (`None`: the controller's default).
async fn sim_env_full(
    prefix: &str,
    sim_claims: serde_json::Value,
    extra: serde_json::Value,
    (top_up_latency_ms, usage_interval, apply_secs): (u64, Duration, u64),
    resync: Option<Duration>,
) -> SimEnv {
    let client = common::client().await;
    let ns = common::namespace(&client, prefix).await;
    let id = common::unique(prefix);
    let sim = common::start_sim(|c| {
        c.onence_sims = 5;
        c.onence_apply_secs = apply_secs;
        c.onence_top_up_latency_ms = top_up_latency_ms;
        c.onence_sms_latency_ms = top_up_latency_ms;
    })
    .await;
    common::secret(
        &client,
        &ns,
        "onence",
        "credentials",
        r#"{"clientId":"12345-api","clientSecret":"s3cr3t"}"#,
    )
    .await;
    let pc = format!("{id}-iot");
    let claims = sim_claims.to_string().replace("NS", &ns);
    let pcs: Api<ProviderConfig> = Api::all(client.clone());
    let mut spec = serde_json::json!({"type": "onence", "endpoint": sim.url,
             "credentialsSecretRef": {"name": "onence", "namespace": ns, "key": "credentials"},
             "simClaims": serde_json::from_str::<serde_json::Value>(&claims).unwrap()});
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let doc = serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
        "metadata": {"name": pc, "labels": {"qm-test": id}}, "spec": spec,
    });
    pcs.patch(
        &pc,
        &PatchParams::apply("quartermaster-tests").force(),
        &Patch::Apply(&doc),
    )
    .await
    .unwrap();
    let db = tempfile::tempdir().unwrap();
    let (ledger, ledger_url) = common::db::sqlite(&db).await;
    let (metrics, stop) =
        common::start_controller_cfg(client.clone(), &id, Some(ledger.clone()), |c| {
            c.vendor_timeout = Duration::from_secs(1);
            c.sim_usage_interval = usage_interval;
            if let Some(r) = resync {
                c.resync_interval = r;
            }
        });
    SimEnv {
        client,
        ns,
        id,
        pc,
        sim,
        ledger,
        ledger_url,
        metrics,
        _db: db,
        _stop: Some(stop),
    }
}

impl SimEnv {
    fn sims(&self) -> Api<SimCard> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn apply(&self, name: &str, spec: serde_json::Value) {
        let mut s = serde_json::json!({"providerConfigRef": {"name": self.pc}});
        s.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        let doc = serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "SimCard",
            "metadata": {"name": name, "labels": {"qm-test": self.id}}, "spec": s});
        self.sims()
            .patch(
                name,
                &PatchParams::apply("quartermaster-tests").force(),
                &Patch::Apply(&doc),
            )
            .await
            .unwrap();
    }

    async fn wait(&self, name: &str, type_: &str, reason: &str) -> SimCard {
        self.wait_for(name, type_, ConditionStatus::True, reason)
            .await
    }

    async fn wait_for(
        &self,
        name: &str,
        type_: &str,
        status: ConditionStatus,
        reason: &str,
    ) -> SimCard {
        let sims = self.sims();
        common::eventually(WAIT, &format!("{name} {type_} {reason}"), || async {
            let s = sims.get(name).await.ok()?;
            let st = s.status.as_ref()?;
            let c = conditions::find(&st.conditions, type_)?;
            (c.status == status
                && c.reason == reason
                && st.observed_generation == s.metadata.generation)
                .then_some(s)
        })
        .await
    }

    fn client_1nce(&self) -> quartermaster::cloud::onence::OneNce {
        quartermaster::cloud::onence::OneNce::new(
            quartermaster::http::HttpClient::new("1nce", Default::default()),
            quartermaster::cloud::onence::Endpoints::at(Some(&self.sim.url)),
            r#"{"clientId":"t","clientSecret":"t"}"#,
        )
    }

    /// PUT calls the simulator served so far.
    async fn puts(&self) -> u64 {
        self.stats().await["other"].as_u64().unwrap()
    }

    /// API calls the simulator served so far.
    async fn calls(&self) -> u64 {
        let v = self.stats().await;
        ["get", "post", "delete", "other"]
            .iter()
            .map(|k| v[k].as_u64().unwrap())
            .sum()
    }

    async fn stats(&self) -> serde_json::Value {
        reqwest::get(format!("{}/_sim/stats", self.sim.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn at_vendor(&self, i: u64) -> serde_json::Value {
        let s = self.client_1nce().sim(&iccid(i)).await.unwrap().unwrap();
        serde_json::json!({"status": s.status, "label": s.label, "imei_lock": s.imei_lock})
    }
}

impl SimEnv {
    /// Applies Project `name` with `spec` in this environment's namespace; the namespace's Projects.
    async fn project(
        &self,
        name: &str,
        spec: serde_json::Value,
    ) -> Api<quartermaster::crd::Project> {
        let projects: Api<quartermaster::crd::Project> =
            Api::namespaced(self.client.clone(), &self.ns);
        let doc = serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "Project",
            "metadata": {"name": name, "labels": {"qm-test": self.id}}, "spec": spec});
        projects
            .patch(
                name,
                &PatchParams::apply("quartermaster-tests").force(),
                &Patch::Apply(&doc),
            )
            .await
            .unwrap();
        projects
    }

    /// What the ledger billed this namespace (no Project) this month for `meter`: (quantity, amount).
    async fn billed(&self, meter: &str) -> (i64, i64) {
        let (from, to) = quartermaster::ledger::parse_period(&quartermaster::ledger::period_of(
            jiff::Timestamp::now().as_second(),
        ))
        .unwrap();
        let rows = self
            .ledger
            .usage(
                &ProjectRef {
                    namespace: &self.ns,
                    name: "",
                    uid: "",
                },
                from,
                to,
                GroupBy::Meter,
            )
            .await
            .unwrap();
        rows.iter()
            .filter(|r| r.meter == meter)
            .fold((0, 0), |(q, a), r| (q + r.quantity, a + r.amount_nanos))
    }
}

#[tokio::test]
async fn a_sim_is_claimed_changed_asynchronously_and_disabled_on_deletion() {
    let e = sim_env(
        "simlife",
        serde_json::json!([{"namespaces": ["NS"], "ranges": [{"first": iccid(0), "last": iccid(2)}]}]),
    )
    .await;
    let luhn = format!(
        "{}{}",
        iccid(0),
        quartermaster::controller::sim_card::claim::luhn_digit(&iccid(0))
    );
    e.apply(
        "tracker",
        serde_json::json!({"iccid": luhn, "label": "truck-1"}),
    )
    .await;
    // The label differs at first: a change is sent, then seen applied.
    let s = e.wait("tracker", conditions::READY, "Reconciled").await;
    let st = s.status.unwrap();
    assert_eq!(st.claimed_iccid.as_deref(), Some(iccid(0).as_str()));
    assert_eq!(st.label.as_deref(), Some("truck-1"));
    assert!(st.imsi.is_some() && st.ip_address.is_some(), "{st:?}");
    assert_eq!(st.data_quota_remaining_bytes, Some(500_000_000));
    assert_eq!(st.connectivity.as_deref(), Some("ONLINE"));
    assert!(st.data_quota_expiry.is_some() && st.sms_quota_expiry.is_some());
    assert!(st.pending_change.is_none());
    assert_eq!(e.at_vendor(0).await["label"], "truck-1");

    // Someone changes the SIM in 1NCE's portal; while that is pending, the spec asks to disable it with
    // the IMEI lock on: the SimCard's request meets a 409, waits (never stalls), and sends its change
    // once the portal's is applied.
    let puts_before = e.puts().await;
    e.client_1nce()
        .change(
            &iccid(0),
            &quartermaster::cloud::onence::SimChange {
                enabled: true,
                label: Some("portal".into()),
                imei_lock: None,
            },
        )
        .await
        .unwrap();
    e.apply(
        "tracker",
        serde_json::json!({"iccid": luhn, "label": "truck-1", "enabled": false, "imeiLock": true}),
    )
    .await;
    e.wait("tracker", conditions::RECONCILING, "ChangePending")
        .await;
    let s = e.wait("tracker", conditions::READY, "Reconciled").await;
    assert!(
        e.puts().await - puts_before >= 3,
        "the SimCard's change never met the portal's pending one (no 409)"
    );
    assert_eq!(s.status.unwrap().state.as_deref(), Some("Disabled"));
    let v = e.at_vendor(0).await;
    assert_eq!(
        (v["status"].as_str(), v["imei_lock"].as_bool()),
        (Some("Disabled"), Some(true))
    );

    // Enable again, then delete with the default policy: the SIM ends disabled at 1NCE.
    e.apply(
        "tracker",
        serde_json::json!({"iccid": luhn, "label": "truck-1"}),
    )
    .await;
    e.wait("tracker", conditions::READY, "Reconciled").await;
    assert_eq!(e.at_vendor(0).await["status"], "Enabled");
    e.sims()
        .delete("tracker", &DeleteParams::default())
        .await
        .unwrap();
    common::eventually(WAIT, "tracker deleted", || async {
        e.sims()
            .get_opt("tracker")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert_eq!(e.at_vendor(0).await["status"], "Disabled");

    // Orphan leaves it as it is.
    e.apply(
        "kept",
        serde_json::json!({"iccid": iccid(1), "deletionPolicy": "Orphan"}),
    )
    .await;
    e.wait("kept", conditions::READY, "Reconciled").await;
    e.sims()
        .delete("kept", &DeleteParams::default())
        .await
        .unwrap();
    common::eventually(WAIT, "kept deleted", || async {
        e.sims()
            .get_opt("kept")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert_eq!(e.at_vendor(1).await["status"], "Enabled");
}

#[tokio::test]
async fn claims_outside_the_allowance_or_twice_touch_nothing() {
    let e = sim_env(
        "simclaim",
        serde_json::json!([{"namespaces": ["NS"], "iccids": [iccid(0)]}]),
    )
    .await;
    // Not in the allowance: Stalled SimNotAllowed, and nothing changed at 1NCE.
    e.apply(
        "grab",
        serde_json::json!({"iccid": iccid(3), "enabled": false}),
    )
    .await;
    e.wait("grab", conditions::STALLED, "SimNotAllowed").await;
    assert_eq!(e.at_vendor(3).await["status"], "Enabled");
    // A bad Luhn digit says what is wrong.
    e.apply(
        "typo",
        serde_json::json!({"iccid": format!("{}{}", iccid(0), 
        (quartermaster::controller::sim_card::claim::luhn_digit(&iccid(0)) + 1) % 10)}),
    )
    .await;
    let s = e.wait("typo", conditions::STALLED, "InvalidSpec").await;
    let msg = conditions::find(&s.status.unwrap().conditions, conditions::STALLED)
        .unwrap()
        .message
        .clone();
    assert!(msg.contains("Luhn"), "{msg}");
    e.sims()
        .delete("typo", &DeleteParams::default())
        .await
        .unwrap();

    // Two claims of one SIM: the older wins; the younger touches nothing, also after being re-created.
    e.apply(
        "first",
        serde_json::json!({"iccid": iccid(0), "label": "mine"}),
    )
    .await;
    e.wait("first", conditions::READY, "Reconciled").await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // a later creation second
    for _ in 0..2 {
        e.apply(
            "second",
            serde_json::json!({"iccid": iccid(0), "enabled": false, "label": "theirs"}),
        )
        .await;
        e.wait("second", conditions::STALLED, "ClaimedByAnother")
            .await;
        e.sims()
            .delete("second", &DeleteParams::default())
            .await
            .unwrap();
        common::eventually(WAIT, "second deleted", || async {
            e.sims()
                .get_opt("second")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await;
    }
    let v = e.at_vendor(0).await;
    assert_eq!(
        (v["status"].as_str(), v["label"].as_str()),
        (Some("Enabled"), Some("mine"))
    );
}

#[tokio::test]
async fn usage_reaches_the_ledger_once_with_the_vendors_cost() {
    let e = sim_env(
        "simuse",
        serde_json::json!([{"namespaces": ["NS"], "iccids": [iccid(0)]}]),
    )
    .await;
    e.apply("meter", serde_json::json!({"iccid": iccid(0)}))
        .await;
    e.wait("meter", conditions::READY, "Reconciled").await;
    let http = reqwest::Client::new();
    let traffic = |bytes: i64, sms: i64| {
        let (http, url) = (
            http.clone(),
            format!("{}/_sim/1nce/sims/{}/traffic", e.sim.url, iccid(0)),
        );
        async move {
            http.post(url)
                .json(&serde_json::json!({"bytes": bytes, "sms": sms}))
                .send()
                .await
                .unwrap();
        }
    };
    traffic(1_500_000, 3).await;
    // Each change of the SimCard reconciles it: the day's growing figure is billed by increments.
    for (i, (bytes, sms)) in [(0, 0), (2_000_000, 1), (0, 0)].into_iter().enumerate() {
        traffic(bytes, sms).await;
        e.apply(
            "meter",
            serde_json::json!({"iccid": iccid(0), "label": format!("pass-{i}")}),
        )
        .await;
        e.wait("meter", conditions::READY, "Reconciled").await;
    }
    let s = e.sims().get("meter").await.unwrap();
    let st = s.status.unwrap();
    assert_eq!(st.month_to_date_data_bytes, Some(3_500_000));
    assert_eq!(st.month_to_date_sms, Some(4));
    assert_eq!(e.billed("sim_data_bytes").await.0, 3_500_000);
    assert_eq!(e.billed("sim_sms").await.0, 4);
    // The simulator prices 1 EUR a MB: 3.5 MB.
    assert_eq!(
        quartermaster::ledger::format_amount(e.billed("sim_data_bytes").await.1),
        "3.50"
    );
    // The counter meter's rows are counted like every other metering path's.
    for meter in ["sim_data_bytes", "sim_sms"] {
        assert!(
            e.metrics.usage_events.with_label_values(&[meter]).get() >= 2,
            "{meter}: {}",
            e.metrics.render()
        );
    }
}

/// Another object's hour of usage in Project `prepaid` (UID `uid`) at `hourly` USD: spends its credit.
async fn spend(e: &SimEnv, uid: &str, hourly: &str) {
    let now = jiff::Timestamp::now().as_second();
    e.ledger
        .record(&[quartermaster::ledger::UsageEvent {
            key: format!("other/{}", e.id),
            namespace: e.ns.clone(),
            project: "prepaid".into(),
            project_uid: uid.into(),
            object_kind: "VirtualMachine".into(),
            object_name: "other".into(),
            object_uid: "other-uid".into(),
            meter: quartermaster::ledger::Meter::VmSeconds,
            quantity: 3600,
            unit_price: hourly.parse().unwrap(),
            vendor_unit_price: hourly.parse().unwrap(),
            price_quantity: 3600,
            currency: "USD".into(),
            window_start: now - 3600,
            window_end: now,
            attributes: serde_json::json!({}),
        }])
        .await
        .unwrap();
}

/// Traffic at the simulator on SIM `i`.
async fn traffic(e: &SimEnv, i: u64, bytes: i64) {
    reqwest::Client::new()
        .post(format!("{}/_sim/1nce/sims/{}/traffic", e.sim.url, iccid(i)))
        .json(&serde_json::json!({"bytes": bytes}))
        .send()
        .await
        .unwrap();
}

async fn orders(e: &SimEnv) -> usize {
    let v: Vec<serde_json::Value> = reqwest::get(format!("{}/_sim/1nce/orders", e.sim.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v.len()
}

/// The quota falls under its threshold: exactly one top-up per crossing, also when the order's answer
/// is lost (the simulator holds it past the controller's timeout: the order exists, the controller
/// does not know); billed once at the ProviderConfig's price; the monthly limit holds.
#[tokio::test]
async fn auto_top_up_orders_exactly_once_per_crossing() {
    let e = sim_env_with(
        "simtopup",
        serde_json::json!([{"namespaces": ["NS"], "iccids": [iccid(0)]}]),
        serde_json::json!({"topUpPrice": {"amount": "10", "currency": "EUR"}}),
        2500,
    )
    .await;
    let spec = |pass: u32| {
        serde_json::json!({"iccid": iccid(0), "label": format!("pass-{pass}"),
            "dataQuota": {"autoTopUp": true, "thresholdPercent": 20, "maxTopUpsPerMonth": 2}})
    };
    e.apply("meter", spec(0)).await;
    e.wait("meter", conditions::READY, "Reconciled").await;
    assert_eq!(orders(&e).await, 0);
    // 450 of 500 MB used: 10 % left, under 20 %.
    traffic(&e, 0, 450_000_000).await;
    e.apply("meter", spec(1)).await;
    // The order's answer comes after the controller gave up: it waits for the quota, never re-orders.
    let s = e.wait("meter", conditions::READY, "Reconciled").await;
    let st = s.status.unwrap();
    assert_eq!(orders(&e).await, 1);
    assert_eq!(st.top_ups.len(), 1);
    assert!(st.top_ups[0].confirmed, "{:?}", st.top_ups);
    assert_eq!(st.data_quota_remaining_bytes, Some(550_000_000));
    // More reconciles of the same quota state order nothing.
    e.apply("meter", spec(2)).await;
    e.wait("meter", conditions::READY, "Reconciled").await;
    assert_eq!(orders(&e).await, 1);
    // A second crossing: a second order. A third: the monthly limit (2) holds.
    traffic(&e, 0, 500_000_000).await;
    e.apply("meter", spec(3)).await;
    common::eventually(WAIT, "the second top-up confirmed", || async {
        let s = e.sims().get("meter").await.ok()?;
        let r = s.status?.top_ups.first()?.clone();
        (r.confirmed && r.top_ups_this_month == 2).then_some(())
    })
    .await;
    e.wait("meter", conditions::READY, "Reconciled").await;
    traffic(&e, 0, 540_000_000).await;
    e.apply("meter", spec(4)).await;
    e.wait("meter", conditions::READY, "Reconciled").await;
    assert_eq!(orders(&e).await, 2);
    let (orders, amount) = e.billed("sim_top_ups").await;
    assert_eq!(orders, 2);
    assert_eq!(quartermaster::ledger::format_amount(amount), "20.00");
}

/// SimCards at rest are served by their account's SIM listing: a resync of every SimCard with nothing
/// changed costs no vendor call (the listing is kept for half the resync interval) and writes no status.
#[tokio::test]
async fn simcards_at_rest_read_the_accounts_listing_and_write_nothing() {
    let e = sim_env_cfg(
        "simrest",
        serde_json::json!([{"namespaces": ["NS"], "ranges": [{"first": iccid(0), "last": iccid(4)}]}]),
        serde_json::json!({}),
        0,
        Duration::from_secs(3600),
        1,
    )
    .await;
    for i in 0..3 {
        e.apply(&format!("s{i}"), serde_json::json!({"iccid": iccid(i)}))
            .await;
    }
    for i in 0..3 {
        e.wait(&format!("s{i}"), conditions::READY, "Reconciled")
            .await;
    }
    let reconciles = || e.metrics.reconciles.with_label_values(&["SimCard"]).get();
    let writes = || {
        e.metrics
            .status_writes
            .with_label_values(&["SimCard"])
            .get()
    };
    // Let the first reconciles' own status writes settle.
    common::eventually(WAIT, "the SimCards settled", || async {
        let before = reconciles();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        (reconciles() == before).then_some(())
    })
    .await;
    let (calls, written, before) = (e.calls().await, writes(), reconciles());
    for i in 0..3 {
        e.sims()
            .patch(
                &format!("s{i}"),
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"labels": {"touched": "yes"}}})),
            )
            .await
            .unwrap();
    }
    common::eventually(WAIT, "three resyncs", || async {
        (reconciles() >= before + 3).then_some(())
    })
    .await;
    assert_eq!(e.calls().await - calls, 0, "a SimCard at rest called 1NCE");
    assert_eq!(writes() - written, 0, "a quiet resync wrote status");
}

/// A Project's money policy reaches its SimCards: `limits.maxSimCards` refuses the youngest (touching
/// nothing), the credit stop disables the SIMs and lifting it enables them again.
#[tokio::test]
async fn the_projects_limit_and_credit_stop_hold_for_sims() {
    let e = sim_env(
        "simmoney",
        serde_json::json!([{"namespaces": ["NS"], "ranges": [{"first": iccid(0), "last": iccid(4)}]}]),
    )
    .await;
    let projects = e
        .project(
            "prepaid",
            serde_json::json!({"onCreditExhausted": "Stop", "limits": {"maxSimCards": 1}}),
        )
        .await;
    let uid = common::project_uid(&e.client, &e.ns, "prepaid").await;
    let grant = |key: &str, nanos| common::grant(key, &e.ns, "prepaid", &uid, nanos);
    assert!(e.ledger.credit(&grant("g1", 1_000_000_000)).await.unwrap());
    common::eventually(WAIT, "the project shows its credit", || async {
        let st = projects.get("prepaid").await.ok()?.status?;
        (st.credit_balance.as_deref() == Some("1.00")).then_some(())
    })
    .await;
    let spec = |i: u64, extra: serde_json::Value| {
        let mut s = serde_json::json!({"iccid": iccid(i), "projectRef": {"name": "prepaid"}});
        s.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        s
    };
    e.apply("a", spec(0, serde_json::json!({}))).await;
    e.wait("a", conditions::READY, "Reconciled").await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // a later creation second
    e.apply("b", spec(1, serde_json::json!({"enabled": false})))
        .await;
    e.wait("b", conditions::STALLED, "LimitExceeded").await;
    assert_eq!(e.at_vendor(1).await["status"], "Enabled");

    // The credit runs out: the SIM is disabled (its spec still says enabled).
    spend(&e, &uid, "5").await;
    let touch = |n: &str| serde_json::json!({"metadata": {"labels": {"touch": n}}});
    projects
        .patch(
            "prepaid",
            &PatchParams::default(),
            &Patch::Merge(touch("1")),
        )
        .await
        .unwrap();
    e.wait_for(
        "a",
        conditions::READY,
        ConditionStatus::False,
        "CreditExhausted",
    )
    .await;
    common::eventually(WAIT, "the SIM disabled at 1NCE", || async {
        (e.at_vendor(0).await["status"] == "Disabled").then_some(())
    })
    .await;
    assert!(e.sims().get("a").await.unwrap().spec.enabled);
    // No new billable order while the credit stop holds, even under the top-up threshold.
    traffic(&e, 0, 480_000_000).await;
    e.apply(
        "a",
        spec(
            0,
            serde_json::json!({"dataQuota": {"autoTopUp": true, "thresholdPercent": 20}}),
        ),
    )
    .await;
    e.wait_for(
        "a",
        conditions::READY,
        ConditionStatus::False,
        "CreditExhausted",
    )
    .await;
    assert_eq!(
        orders(&e).await,
        0,
        "a top-up was ordered under the credit stop"
    );

    // Credit granted: enabled again.
    assert!(e.ledger.credit(&grant("g2", 10_000_000_000)).await.unwrap());
    projects
        .patch(
            "prepaid",
            &PatchParams::default(),
            &Patch::Merge(touch("2")),
        )
        .await
        .unwrap();
    e.wait("a", conditions::READY, "Reconciled").await;
    assert_eq!(e.at_vendor(0).await["status"], "Enabled");
}

/// 1NCE's Data Streamer and polling together never count a byte twice: a day is billed at the larger of
/// the streamed sum and the polled figure; a re-sent request is kept once; wrong credentials are refused.
#[tokio::test]
async fn streamed_and_polled_usage_never_count_a_byte_twice() {
    let e = sim_env(
        "simstream",
        serde_json::json!([{"namespaces": ["NS"], "iccids": [iccid(0)]}]),
    )
    .await;
    let hook = quartermaster::webhooks::router(
        Some(std::sync::Arc::new(quartermaster::webhooks::Streamer::new(
            e.ledger.clone(),
            "streamer",
            "s3cret",
            quartermaster::metrics::Metrics::new(),
        ))),
        None,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/webhooks/onence/usage",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, hook).await.unwrap() });

    e.apply("meter", serde_json::json!({"iccid": iccid(0)}))
        .await;
    e.wait("meter", conditions::READY, "Reconciled").await;
    traffic(&e, 0, 1_000_000).await;
    let today = jiff::Timestamp::now().to_string();
    let records = serde_json::json!([
        {"id": "r1", "start_timestamp": today, "sim": {"iccid": iccid(0)},
         "traffic_type": {"id": 5}, "volume": {"total": "0.6"}},
        {"id": "r2", "start_timestamp": today, "sim": {"iccid": iccid(0)},
         "traffic_type": {"id": 5}, "volume": {"total": "0.7"}}
    ]);
    let http = reqwest::Client::new();
    let post = |user: &str| {
        http.post(&url)
            .basic_auth(user, Some("s3cret"))
            .json(&records)
            .send()
    };
    assert_eq!(post("intruder").await.unwrap().status(), 401);
    for _ in 0..2 {
        assert_eq!(post("streamer").await.unwrap().status(), 200);
    }
    let bad = http
        .post(&url)
        .basic_auth("streamer", Some("s3cret"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let billed = async || e.billed("sim_data_bytes").await.0;
    // The stream (1.3 MB) is ahead of the polled day (1.0 MB): 1.3 MB billed.
    e.apply(
        "meter",
        serde_json::json!({"iccid": iccid(0), "label": "a"}),
    )
    .await;
    e.wait("meter", conditions::READY, "Reconciled").await;
    assert_eq!(billed().await, 1_300_000);
    // Polling catches up and passes it (2.0 MB): 2.0 MB in all, not 3.3.
    traffic(&e, 0, 1_000_000).await;
    e.apply(
        "meter",
        serde_json::json!({"iccid": iccid(0), "label": "b"}),
    )
    .await;
    e.wait("meter", conditions::READY, "Reconciled").await;
    assert_eq!(billed().await, 2_000_000);
}

/// A SimMessage is sent exactly once: the simulator holds the answer past the controller's timeout (the
/// message exists, the controller does not know), and the controller finds it in 1NCE's list instead of
/// sending it again; a sent message edited later stalls instead of being sent again.
#[tokio::test]
async fn a_sim_message_is_sent_exactly_once_even_when_its_answer_is_lost() {
    let e = sim_env_with(
        "simsms",
        serde_json::json!([{"namespaces": ["NS"], "iccids": [iccid(0)]}]),
        serde_json::json!({}),
        2500,
    )
    .await;
    e.apply("tracker", serde_json::json!({"iccid": iccid(0)}))
        .await;
    e.wait("tracker", conditions::READY, "Reconciled").await;
    let messages: Api<quartermaster::crd::SimMessage> = Api::namespaced(e.client.clone(), &e.ns);
    let doc = |payload: &str| {
        serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "SimMessage",
            "metadata": {"name": "wake", "labels": {"qm-test": e.id}},
            "spec": {"simCardRef": {"name": "tracker"}, "payload": payload}})
    };
    let ssa = PatchParams::apply("quartermaster-tests").force();
    messages
        .patch("wake", &ssa, &Patch::Apply(doc("WAKEUP")))
        .await
        .unwrap();
    let m = common::eventually(WAIT, "the message sent", || async {
        let m = messages.get("wake").await.ok()?;
        let st = m.status.as_ref()?;
        let c = conditions::find(&st.conditions, conditions::READY)?;
        (c.status == ConditionStatus::True).then_some(m)
    })
    .await;
    assert_eq!(m.status.unwrap().state.as_deref(), Some("Sent"));
    let sent = || async {
        let v: Vec<serde_json::Value> = reqwest::get(format!("{}/_sim/1nce/messages", e.sim.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.len()
    };
    assert_eq!(sent().await, 1);
    // An edit after sending is refused, not sent.
    messages
        .patch("wake", &ssa, &Patch::Apply(doc("AGAIN")))
        .await
        .unwrap();
    common::eventually(WAIT, "the edit refused", || async {
        let m = messages.get("wake").await.ok()?;
        let st = m.status.as_ref()?;
        let c = conditions::find(&st.conditions, conditions::STALLED)?;
        (c.status == ConditionStatus::True && st.observed_generation == m.metadata.generation)
            .then_some(())
    })
    .await;
    assert_eq!(sent().await, 1);
}

/// An SMS a device sent, forwarded twice by 1NCE (it re-sends until answered 200): stored once, counted
/// once in the SIM's usage, and listed by `quartermaster sms list` for the SimCard that holds the SIM.
#[tokio::test]
async fn an_inbound_sms_delivered_twice_is_stored_and_counted_once() {
    let e = sim_env(
        "siminbox",
        serde_json::json!([{"namespaces": ["NS"], "iccids": [iccid(0)]}]),
    )
    .await;
    let hook = quartermaster::webhooks::router(
        Some(std::sync::Arc::new(quartermaster::webhooks::Streamer::new(
            e.ledger.clone(),
            "forwarder",
            "pw",
            quartermaster::metrics::Metrics::new(),
        ))),
        None,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/webhooks/onence/sms",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, hook).await.unwrap() });
    e.apply("tracker", serde_json::json!({"iccid": iccid(0)}))
        .await;
    e.wait("tracker", conditions::READY, "Reconciled").await;
    let sms = serde_json::json!({"id": 4711, "iccid": format!("{}7", iccid(0)),
        "submit_date": "2026-11-30T06:00:00Z", "payload": "TEMP=21.5"});
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let r = http
            .post(&url)
            .basic_auth("forwarder", Some("pw"))
            .json(&sms)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let kept = e.ledger.inbound_sms(&iccid(0), 0).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].payload, "TEMP=21.5");
    // Counted once in the SIM's usage.
    e.apply(
        "tracker",
        serde_json::json!({"iccid": iccid(0), "label": "x"}),
    )
    .await;
    e.wait("tracker", conditions::READY, "Reconciled").await;
    assert_eq!(e.billed("sim_sms").await.0, 1);
    // Listed for the SimCard.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_quartermaster"))
        .args([
            "sms",
            "list",
            "--simcard",
            &format!("{}/tracker", e.ns),
            "--output",
            "json",
        ])
        .env("KUBECONFIG", common::kubeconfig())
        .env("DATABASE_URL", &e.ledger_url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["payload"], "TEMP=21.5");
}

/// 1NCE's refusals stall with its words (an expired SIM answers 422), and the account's ProviderConfig
/// shows its credential check.
#[tokio::test]
async fn an_expired_sim_stalls_with_1nces_words_and_the_account_is_verified() {
    let e = sim_env(
        "simrefuse",
        serde_json::json!([{"namespaces": ["NS"], "ranges": [{"first": iccid(0), "last": iccid(4)}]}]),
    )
    .await;
    let pcs: Api<ProviderConfig> = Api::all(e.client.clone());
    common::eventually(WAIT, "the onence ProviderConfig verified", || async {
        let st = pcs.get(&e.pc).await.ok()?.status?;
        let c = conditions::find(&st.conditions, conditions::READY)?;
        (c.status == ConditionStatus::True && st.credentials_verified == Some(true)).then_some(())
    })
    .await;
    reqwest::Client::new()
        .post(format!("{}/_sim/1nce/sims/{}/expire", e.sim.url, iccid(2)))
        .send()
        .await
        .unwrap();
    e.apply(
        "old",
        serde_json::json!({"iccid": iccid(2), "enabled": false}),
    )
    .await;
    let s = e.wait("old", conditions::STALLED, "VendorRejected").await;
    let msg = conditions::find(&s.status.unwrap().conditions, conditions::STALLED)
        .unwrap()
        .message
        .clone();
    assert!(msg.contains("expired"), "{msg}");
}

/// 1NCE never applies the change (the simulator takes an hour): after `changeTimeoutSeconds` the SimCard
/// stalls `ChangeNotApplied`, having sent the change once.
#[tokio::test]
async fn a_change_never_applied_stalls_after_its_timeout() {
    let e = sim_env_cfg(
        "simslow",
        serde_json::json!([{"namespaces": ["NS"], "iccids": [iccid(0)]}]),
        serde_json::json!({}),
        0,
        ALWAYS,
        3600,
    )
    .await;
    let puts = e.puts().await;
    e.apply(
        "slow",
        serde_json::json!({"iccid": iccid(0), "label": "never", "changeTimeoutSeconds": 10}),
    )
    .await;
    e.wait("slow", conditions::RECONCILING, "ChangePending")
        .await;
    let s = common::eventually(
        Duration::from_secs(40),
        "slow Stalled ChangeNotApplied",
        || async {
            let s = e.sims().get("slow").await.ok()?;
            let c = conditions::find(&s.status.as_ref()?.conditions, conditions::STALLED)?.clone();
            (c.status == ConditionStatus::True && c.reason == "ChangeNotApplied").then_some(c)
        },
    )
    .await;
    assert!(s.message.contains("label"), "{}", s.message);
    assert_eq!(
        e.puts().await - puts,
        1,
        "the change was sent more than once"
    );
}

/// What the ledger billed Project `name` (UID `uid`) this month for `meter`: the quantity.
async fn billed_to(e: &SimEnv, name: &str, uid: &str, meter: &str) -> i64 {
    let (from, to) = quartermaster::ledger::parse_period(&quartermaster::ledger::period_of(
        jiff::Timestamp::now().as_second(),
    ))
    .unwrap();
    let me = ProjectRef {
        namespace: &e.ns,
        name,
        uid,
    };
    let rows = e.ledger.usage(&me, from, to, GroupBy::Meter).await.unwrap();
    rows.iter()
        .filter(|r| r.meter == meter)
        .map(|r| r.quantity)
        .sum()
}

/// No edit stops a SIM's meter or lifts its credit stop: pointed at a Project that does not exist, a
/// SimCard stays billed to its Project and metered, and that Project's credit stop still disables the
/// SIM; removing projectRef is refused while the stop holds.
#[tokio::test]
async fn no_refusal_stops_a_sims_meter_or_its_credit_stop() {
    let e = sim_env(
        "simescape",
        serde_json::json!([{"namespaces": ["NS"], "ranges": [{"first": iccid(0), "last": iccid(4)}]}]),
    )
    .await;
    let projects = e
        .project("prepaid", serde_json::json!({"onCreditExhausted": "Stop"}))
        .await;
    let uid = common::project_uid(&e.client, &e.ns, "prepaid").await;
    assert!(
        e.ledger
            .credit(&common::grant(
                "g1",
                &e.ns,
                "prepaid",
                &uid,
                100_000_000_000
            ))
            .await
            .unwrap()
    );
    let spec = |project: &str, label: &str| serde_json::json!({"iccid": iccid(0), "projectRef": {"name": project}, "label": label});
    e.apply("a", spec("prepaid", "l0")).await;
    e.wait("a", conditions::READY, "Reconciled").await;
    // Pointed at a Project that does not exist: Stalled, and still metered to prepaid.
    e.apply("a", spec("nowhere", "l1")).await;
    e.wait("a", conditions::STALLED, "ProjectNotFound").await;
    let before = billed_to(&e, "prepaid", &uid, "sim_data_bytes").await;
    traffic(&e, 0, 2_000_000).await;
    e.apply("a", spec("nowhere", "l2")).await;
    e.wait("a", conditions::STALLED, "ProjectNotFound").await;
    let after = billed_to(&e, "prepaid", &uid, "sim_data_bytes").await;
    assert!(
        after >= before + 2_000_000,
        "metered {before} → {after} while stalled"
    );

    // The credit runs out: the stalled SimCard's SIM is disabled all the same.
    spend(&e, &uid, "500").await;
    let touch = serde_json::json!({"metadata": {"labels": {"touch": "1"}}});
    projects
        .patch("prepaid", &PatchParams::default(), &Patch::Merge(touch))
        .await
        .unwrap();
    common::eventually(WAIT, "the stalled SimCard's SIM disabled", || async {
        (e.at_vendor(0).await["status"] == "Disabled").then_some(())
    })
    .await;
    // Removing projectRef is no way out: refused, and the SIM stays disabled.
    e.apply("a", serde_json::json!({"iccid": iccid(0), "label": "l3"}))
        .await;
    let s = e.wait("a", conditions::STALLED, "CreditExhausted").await;
    let st = s.status.unwrap();
    let c = conditions::find(&st.conditions, conditions::STALLED).unwrap();
    assert!(c.message.contains("cannot leave"), "{}", c.message);
    assert_eq!(st.project.as_deref(), Some("prepaid"));
    assert_eq!(e.at_vendor(0).await["status"], "Disabled");
}

/// A claim from a namespace that may not claim the SIM blocks no one, however old it is.
#[tokio::test]
async fn a_refused_claim_blocks_no_one() {
    let e = sim_env(
        "simsquat",
        serde_json::json!([{"namespaces": ["NS"], "iccids": [iccid(2)]}]),
    )
    .await;
    // Another tenant names the SIM first.
    let other = common::namespace(&e.client, "squatter").await;
    let squat = serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "SimCard",
        "metadata": {"name": "squat", "labels": {"qm-test": e.id}},
        "spec": {"iccid": iccid(2), "providerConfigRef": {"name": e.pc}, "enabled": false}});
    Api::<SimCard>::namespaced(e.client.clone(), &other)
        .patch(
            "squat",
            &PatchParams::apply("quartermaster-tests").force(),
            &Patch::Apply(&squat),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await; // a later creation second
    e.apply(
        "mine",
        serde_json::json!({"iccid": iccid(2), "label": "owner"}),
    )
    .await;
    e.wait("mine", conditions::READY, "Reconciled").await;
    assert_eq!(e.at_vendor(2).await["label"], "owner");
    let squatter = Api::<SimCard>::namespaced(e.client.clone(), &other);
    common::eventually(WAIT, "the squatter refused", || async {
        let st = squatter.get("squat").await.ok()?.status?;
        let c = conditions::find(&st.conditions, conditions::STALLED)?;
        (c.reason == "SimNotAllowed").then_some(())
    })
    .await;
    assert_eq!(e.at_vendor(2).await["status"], "Enabled");
}

/// A ProviderConfig and its Secret are held while a SimCard holds a SIM through them; deleting the
/// SimCard then disables the SIM, and only then do they go.
#[tokio::test]
async fn a_sims_account_is_held_until_its_sim_is_disabled() {
    let e = sim_env(
        "simhold",
        serde_json::json!([{"namespaces": ["NS"], "iccids": [iccid(1)]}]),
    )
    .await;
    e.apply("held", serde_json::json!({"iccid": iccid(1)}))
        .await;
    e.wait("held", conditions::READY, "Reconciled").await;
    let pcs: Api<ProviderConfig> = Api::all(e.client.clone());
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(e.client.clone(), &e.ns);
    common::eventually(
        WAIT,
        "the Secret carries the credentials finalizer",
        || async {
            let s = secrets.get("onence").await.ok()?;
            s.metadata
                .finalizers?
                .iter()
                .any(|f| f == "quartermaster.dev/credentials-in-use")
                .then_some(())
        },
    )
    .await;
    pcs.delete(&e.pc, &DeleteParams::default()).await.unwrap();
    secrets
        .delete("onence", &DeleteParams::default())
        .await
        .unwrap();
    common::eventually(
        WAIT,
        "the ProviderConfig says the SimCard uses it",
        || async {
            let st = pcs.get(&e.pc).await.ok()?.status?;
            let c = conditions::find(&st.conditions, conditions::RECONCILING)?;
            (c.message.contains("in use") && c.message.contains("SimCard")).then_some(())
        },
    )
    .await;
    assert!(secrets.get_opt("onence").await.unwrap().is_some());
    e.sims()
        .delete("held", &DeleteParams::default())
        .await
        .unwrap();
    common::eventually(WAIT, "the SIM disabled and the SimCard gone", || async {
        (e.sims().get_opt("held").await.unwrap().is_none()
            && e.at_vendor(1).await["status"] == "Disabled")
            .then_some(())
    })
    .await;
    common::eventually(WAIT, "the ProviderConfig and its Secret gone", || async {
        (pcs.get_opt(&e.pc).await.unwrap().is_none()
            && secrets.get_opt("onence").await.unwrap().is_none())
        .then_some(())
    })
    .await;
}

/// The usage a reconcile meters can exhaust the credit: no top-up is ordered in that same reconcile
/// (the stop is re-read from the ledger after the usage, not from the Project's older status).
#[tokio::test]
async fn no_top_up_is_ordered_with_the_credit_its_own_usage_exhausted() {
    let e = sim_env_with(
        "simlast",
        serde_json::json!([{"namespaces": ["NS"], "iccids": [iccid(0)]}]),
        serde_json::json!({"topUpPrice": {"amount": "10", "currency": "EUR"}}),
        0,
    )
    .await;
    let projects = e
        .project(
            "tight",
            serde_json::json!({"currency": "EUR", "onCreditExhausted": "Stop"}),
        )
        .await;
    let uid = common::project_uid(&e.client, &e.ns, "tight").await;
    let mut grant = common::grant("g1", &e.ns, "tight", &uid, 50_000_000_000);
    grant.currency = "EUR".into();
    assert!(e.ledger.credit(&grant).await.unwrap());
    common::eventually(WAIT, "the project shows its credit", || async {
        let st = projects.get("tight").await.ok()?.status?;
        (st.credit_balance.as_deref() == Some("50.00")).then_some(())
    })
    .await;
    let spec = |pass: u32| {
        serde_json::json!({"iccid": iccid(0), "label": format!("pass-{pass}"), "projectRef": {"name": "tight"},
            "dataQuota": {"autoTopUp": true, "thresholdPercent": 20}})
    };
    e.apply("a", spec(0)).await;
    e.wait("a", conditions::READY, "Reconciled").await;
    // 450 MB at 1 EUR a MB: under the threshold, and far beyond the 50 EUR of credit.
    traffic(&e, 0, 450_000_000).await;
    e.apply("a", spec(1)).await;
    common::eventually(WAIT, "the SimCard read its usage", || async {
        let st = e.sims().get("a").await.ok()?.status?;
        (st.month_to_date_data_bytes? >= 450_000_000).then_some(())
    })
    .await;
    e.wait_for(
        "a",
        conditions::READY,
        ConditionStatus::False,
        "CreditExhausted",
    )
    .await;
    assert_eq!(
        orders(&e).await,
        0,
        "a top-up was ordered with exhausted credit"
    );
}

/// A SimCard stalled by 1NCE's refusal (an expired SIM's 422) is still metered: its SIM's traffic is
/// billed at each resync, with no edit of the object.
#[tokio::test]
async fn a_stalled_simcard_is_still_metered() {
    let e = sim_env_full(
        "simstallmeter",
        serde_json::json!([{"namespaces": ["NS"], "iccids": [iccid(3)]}]),
        serde_json::json!({}),
        (0, ALWAYS, 1),
        Some(Duration::from_secs(2)),
    )
    .await;
    reqwest::Client::new()
        .post(format!("{}/_sim/1nce/sims/{}/expire", e.sim.url, iccid(3)))
        .send()
        .await
        .unwrap();
    e.apply(
        "old",
        serde_json::json!({"iccid": iccid(3), "enabled": false}),
    )
    .await;
    e.wait("old", conditions::STALLED, "VendorRejected").await;
    traffic(&e, 3, 80_000_000).await;
    common::eventually(WAIT, "the stalled SIM's traffic billed", || async {
        (e.billed("sim_data_bytes").await.0 >= 80_000_000).then_some(())
    })
    .await;
}

/// A namespace that loses access to the account its SIM is in: the SimCard says so, its SIM is still
/// metered, and deleting it still disables the SIM.
#[tokio::test]
async fn a_namespace_that_lost_its_account_still_meters_and_disables_its_sim() {
    let e = sim_env(
        "simaccess",
        serde_json::json!([{"namespaces": ["NS"], "iccids": [iccid(4)]}]),
    )
    .await;
    e.apply(
        "mine",
        serde_json::json!({"iccid": iccid(4), "label": "l0"}),
    )
    .await;
    e.wait("mine", conditions::READY, "Reconciled").await;
    let pcs: Api<ProviderConfig> = Api::all(e.client.clone());
    let elsewhere = serde_json::json!({"spec": {"allowedNamespaces": ["someone-else"]}});
    pcs.patch(&e.pc, &PatchParams::default(), &Patch::Merge(&elsewhere))
        .await
        .unwrap();
    e.wait("mine", conditions::STALLED, "ProviderConfigNotAllowed")
        .await;
    let before = e.billed("sim_data_bytes").await.0;
    traffic(&e, 4, 3_000_000).await;
    e.apply(
        "mine",
        serde_json::json!({"iccid": iccid(4), "label": "l1"}),
    )
    .await;
    common::eventually(WAIT, "still metered", || async {
        (e.billed("sim_data_bytes").await.0 >= before + 3_000_000).then_some(())
    })
    .await;
    assert_eq!(
        e.at_vendor(4).await["label"],
        "l0",
        "changed through a refused account"
    );
    e.sims()
        .delete("mine", &DeleteParams::default())
        .await
        .unwrap();
    common::eventually(WAIT, "the SIM disabled and the SimCard gone", || async {
        (e.sims().get_opt("mine").await.unwrap().is_none()
            && e.at_vendor(4).await["status"] == "Disabled")
            .then_some(())
    })
    .await;
}

/// The connectivity resets the simulator queued for SIM `i`.
async fn resets(e: &SimEnv, i: u64) -> usize {
    let all: Vec<serde_json::Value> = reqwest::get(format!("{}/_sim/1nce/resets", e.sim.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    all.iter().filter(|r| r["iccid"] == iccid(i)).count()
}

async fn ask_reset(e: &SimEnv, name: &str, value: &str) {
    let ann = serde_json::json!({"metadata": {"annotations": {"quartermaster.dev/reset-connectivity": value}}});
    e.sims()
        .patch(name, &PatchParams::default(), &Patch::Merge(&ann))
        .await
        .unwrap();
}

/// The reset annotation: one reset per distinct value, acknowledged in status once 1NCE queued it,
/// never sent again for the same value (however often the SimCard is reconciled), and a refusal
/// recorded with 1NCE's words.
#[tokio::test]
async fn a_connectivity_reset_is_sent_once_per_request() {
    let e = sim_env(
        "simreset",
        serde_json::json!([{"namespaces": ["NS"], "iccids": [iccid(1)]}]),
    )
    .await;
    e.apply("dev", serde_json::json!({"iccid": iccid(1)})).await;
    e.wait("dev", conditions::READY, "Reconciled").await;
    assert_eq!(resets(&e, 1).await, 0);
    let accepted = |value: &'static str| {
        let sims = e.sims();
        async move {
            common::eventually(WAIT, &format!("reset {value} accepted"), || async {
                let r = sims.get("dev").await.ok()?.status?.connectivity_reset?;
                (r.requested == value && r.accepted_at.is_some()).then_some(r)
            })
            .await
        }
    };
    ask_reset(&e, "dev", "2026-12-05T00:00:00Z").await;
    accepted("2026-12-05T00:00:00Z").await;
    assert_eq!(resets(&e, 1).await, 1);
    // Reconciled again (a label change, a resync): the same request is not sent again.
    for i in 0..3 {
        e.apply(
            "dev",
            serde_json::json!({"iccid": iccid(1), "label": format!("l{i}")}),
        )
        .await;
        e.wait("dev", conditions::READY, "Reconciled").await;
    }
    assert_eq!(resets(&e, 1).await, 1);
    ask_reset(&e, "dev", "2026-12-05T01:00:00Z").await;
    accepted("2026-12-05T01:00:00Z").await;
    assert_eq!(resets(&e, 1).await, 2);
    // An expired SIM: 1NCE refuses; the refusal is recorded, not retried.
    reqwest::Client::new()
        .post(format!("{}/_sim/1nce/sims/{}/expire", e.sim.url, iccid(1)))
        .send()
        .await
        .unwrap();
    ask_reset(&e, "dev", "2026-12-05T02:00:00Z").await;
    let sims = e.sims();
    let refused = common::eventually(WAIT, "the refusal recorded", || async {
        let r = sims.get("dev").await.ok()?.status?.connectivity_reset?;
        (r.requested == "2026-12-05T02:00:00Z")
            .then_some(r)
            .filter(|r| r.refused.is_some())
    })
    .await;
    assert!(refused.refused.unwrap().contains("expired"));
    assert!(refused.accepted_at.is_none());
    assert_eq!(resets(&e, 1).await, 2);
}

/// How many times `reason` was reported in the namespace (repeats of one Event count in its series).
async fn reported(e: &SimEnv, reason: &str) -> i32 {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(e.client.clone(), &e.ns);
    events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|ev| ev.reason.as_deref() == Some(reason))
        .map(|ev| ev.series.as_ref().map_or(1, |s| s.count))
        .sum()
}

/// Reconciles SimCard `q` by changing its label, and waits until it is Ready.
async fn warn_reconcile(e: &SimEnv, label: &str) {
    e.apply("q", serde_json::json!({"iccid": iccid(1), "label": label}))
        .await;
    e.wait("q", conditions::READY, "Reconciled").await;
}

/// Data quota warnings at 80 % and 100 % used: an Event each, once per quota period, however often
/// the SimCard is reconciled.
#[tokio::test]
async fn quota_warnings_come_once_per_quota_period() {
    let e = sim_env_full(
        "simwarn",
        serde_json::json!([{"namespaces": ["NS"], "iccids": [iccid(1)]}]),
        serde_json::json!({}),
        (0, ALWAYS, 0),
        None,
    )
    .await;
    warn_reconcile(&e, "l0").await;
    assert_eq!(reported(&e, "QuotaThresholdReached").await, 0);
    // 400 of the 500 MB: 80 % used.
    traffic(&e, 1, 400_000_000).await;
    warn_reconcile(&e, "l1").await;
    common::eventually(WAIT, "the 80 % warning", || async {
        (reported(&e, "QuotaThresholdReached").await == 1).then_some(())
    })
    .await;
    for label in ["l2", "l3"] {
        warn_reconcile(&e, label).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        reported(&e, "QuotaThresholdReached").await,
        1,
        "warned twice"
    );
    let st = e.sims().get("q").await.unwrap().status.unwrap();
    assert_eq!(st.quota_warnings.len(), 1, "{:?}", st.quota_warnings);
    // Used up: the 100 % warning, once.
    traffic(&e, 1, 100_000_000).await;
    warn_reconcile(&e, "l4").await;
    common::eventually(WAIT, "the 100 % warning", || async {
        (reported(&e, "QuotaThresholdReached").await == 2).then_some(())
    })
    .await;
    warn_reconcile(&e, "l5").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(reported(&e, "QuotaThresholdReached").await, 2);
}

async fn add_events(e: &SimEnv, i: u64, events: serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/_sim/1nce/sims/{}/events", e.sim.url, iccid(i)))
        .json(&events)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
}

/// 1NCE's network events become Events once each (by 1NCE's event ID), at most ten a read with the
/// rest counted, and the last network and country seen show in status.
#[tokio::test]
async fn network_events_are_published_once_and_show_where_the_sim_was_seen() {
    let e = sim_env_full(
        "simnet",
        serde_json::json!([{"namespaces": ["NS"], "iccids": [iccid(1)]}]),
        serde_json::json!({}),
        (0, ALWAYS, 0),
        None,
    )
    .await;
    warn_reconcile(&e, "n0").await;
    assert_eq!(reported(&e, "NetworkEvent").await, 0);
    add_events(
        &e,
        1,
        serde_json::json!([
            {"type": "Update location", "network": "Vodafone.de", "country": "Germany"},
            {"type": "Update location", "network": "Orange F", "country": "France", "alert": true},
        ]),
    )
    .await;
    warn_reconcile(&e, "n1").await;
    common::eventually(WAIT, "two network events", || async {
        (reported(&e, "NetworkEvent").await == 2).then_some(())
    })
    .await;
    let net = e
        .sims()
        .get("q")
        .await
        .unwrap()
        .status
        .unwrap()
        .network
        .unwrap();
    assert_eq!(
        (
            net.name.as_deref(),
            net.country.as_deref(),
            net.event.as_deref()
        ),
        (Some("Orange F"), Some("France"), Some("Update location"))
    );
    assert!(net.last_event_id.is_some() && net.seen_at.is_some());
    for label in ["n2", "n3"] {
        warn_reconcile(&e, label).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(reported(&e, "NetworkEvent").await, 2, "published twice");
    // A flood of fifteen: the newest ten and one line counting the rest.
    let flood: Vec<_> = (0..15)
        .map(|n| serde_json::json!({"type": "Update location", "network": format!("net-{n}"), "country": "Austria"}))
        .collect();
    add_events(&e, 1, serde_json::Value::Array(flood)).await;
    warn_reconcile(&e, "n4").await;
    common::eventually(WAIT, "ten more and a summary", || async {
        (reported(&e, "NetworkEvent").await == 13).then_some(())
    })
    .await;
    let net = e
        .sims()
        .get("q")
        .await
        .unwrap()
        .status
        .unwrap()
        .network
        .unwrap();
    assert_eq!(net.name.as_deref(), Some("net-14"));
    // More than a page (50) at once, served oldest first: the first and the last page are read, so
    // the newest are still found.
    let r = reqwest::Client::new()
        .post(format!("{}/_sim/1nce/events-order", e.sim.url))
        .json(&serde_json::json!({"oldestFirst": true}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let many: Vec<_> = (0..60)
        .map(|n| serde_json::json!({"type": "Update location", "network": format!("far-{n}"), "country": "Chile"}))
        .collect();
    add_events(&e, 1, serde_json::Value::Array(many)).await;
    warn_reconcile(&e, "n5").await;
    common::eventually(WAIT, "ten more and a summary again", || async {
        (reported(&e, "NetworkEvent").await == 24).then_some(())
    })
    .await;
    let st = e.sims().get("q").await.unwrap().status.unwrap();
    assert_eq!(
        st.network.unwrap().name.as_deref(),
        Some("far-59"),
        "the newest of the lot"
    );
}
