//! Billing end to end on the real API server with the simulator: a running VM is metered into the ledger
//! (closed on deletion), the Project shows month-to-date cost and credit balance, credit exhaustion with
//! `onCreditExhausted: Stop` stops the Project's VMs (runStrategy left as written) and a grant restarts
//! them. Plus the `usage`, `invoice` and `credits` commands and their errors.

use std::str::FromStr;
use std::time::Duration;

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use quartermaster::crd::conditions::{self, ConditionStatus};
use quartermaster::crd::{Project, VirtualMachine};
use quartermaster::ledger::store::{GroupBy, ProjectRef};
use quartermaster::ledger::{Ledger, Meter, UsageEvent};
use rust_decimal::Decimal;

mod common;

const WAIT: Duration = Duration::from_secs(60);

/// One hour of another VM's usage in `project` (`(name, uid)`), ending now, at `hourly` per hour.
fn last_hour(key: String, ns: &str, project: (&str, &str), uid: &str, hourly: &str) -> UsageEvent {
    let now = jiff::Timestamp::now().as_second();
    UsageEvent {
        key,
        namespace: ns.to_string(),
        project: project.0.into(),
        project_uid: project.1.into(),
        object_kind: "VirtualMachine".into(),
        object_name: "other".into(),
        object_uid: uid.into(),
        meter: Meter::VmSeconds,
        quantity: 3600,
        unit_price: Decimal::from_str(hourly).unwrap(),
        vendor_unit_price: Decimal::from_str(hourly).unwrap(),
        price_quantity: 3600,
        currency: "USD".into(),
        window_start: now - 3600,
        window_end: now,
        attributes: serde_json::json!({}),
    }
}

/// VM `name`'s Ready condition, once it has one.
async fn ready_of(vms: &Api<VirtualMachine>, name: &str) -> Option<conditions::Condition> {
    let vm = vms.get(name).await.ok()?;
    conditions::find(&vm.status.as_ref()?.conditions, conditions::READY).cloned()
}

/// A VirtualMachine `name` in Project `project`, through ProviderConfig `pc`, labelled for test `id`.
fn vm_in(id: &str, name: &str, pc: &str, project: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": name, "labels": {"qm-test": id}},
        "spec": {"providerConfigRef": {"name": pc}, "projectRef": {"name": project},
                 "region": "fra1", "size": "s-1vcpu-1gb", "image": "debian-12-x64"}
    })
}

/// Project `name` labelled for test `id` with `onCreditExhausted: policy`; returns its UID.
async fn prepaid_project(
    client: &kube::Client,
    ns: &str,
    id: &str,
    name: &str,
    policy: &str,
) -> String {
    apply(
        client,
        ns,
        serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "Project",
            "metadata": {"name": name, "labels": {"qm-test": id}},
            "spec": {"onCreditExhausted": policy}
        }),
    )
    .await;
    common::project_uid(client, ns, name).await
}

async fn apply(client: &kube::Client, ns: &str, v: serde_json::Value) {
    let name = v["metadata"]["name"].as_str().unwrap().to_string();
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk(
                "quartermaster.dev",
                "v1alpha1",
                v["kind"].as_str().unwrap(),
            ),
            &format!("{}s", v["kind"].as_str().unwrap().to_lowercase()),
        ),
    );
    api.patch(
        &name,
        &PatchParams::apply("quartermaster-tests").force(),
        &Patch::Apply(&v),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn metering_credit_exhaustion_stops_vms_and_a_grant_restarts_them() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _) = common::db::fresh_ledger(&dir).await;
    let client = common::client().await;
    let ns = common::namespace(&client, "bill").await;
    let id = common::unique("bill");
    let sim = common::start_sim(|_| {}).await;
    common::secret(&client, &ns, "do-token", "token", "t").await;
    let pc = format!("{id}-do");
    common::do_provider_config(&client, &id, &pc, &ns, &sim.url, &[]).await;
    let (metrics, _stop) = common::start_controller_with(client.clone(), &id, Some(l.clone()));

    // A prepaid project with 1.00 of credit, and a VM in it.
    let prepaid = prepaid_project(&client, &ns, &id, "prepaid", "Stop").await;
    assert!(
        l.credit(&common::grant(
            "g1",
            &ns,
            "prepaid",
            &prepaid,
            1_000_000_000
        ))
        .await
        .unwrap()
    );
    apply(&client, &ns, vm_in(&id, "box", &pc, "prepaid")).await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &ns);
    let projects: Api<Project> = Api::namespaced(client.clone(), &ns);
    let vm = common::eventually(WAIT, "VM running with an open metering window", || async {
        let vm = vms.get("box").await.ok()?;
        let st = vm.status.clone()?;
        let ready =
            conditions::find(&st.conditions, conditions::READY)?.status == ConditionStatus::True;
        (ready && st.metering.is_some()).then_some(vm)
    })
    .await;
    let w = vm.status.unwrap().metering.unwrap();
    assert_eq!(
        (
            w.size.as_str(),
            w.hourly_price.as_str(),
            w.currency.as_str()
        ),
        ("s-1vcpu-1gb", "0.00893", "USD")
    );
    let p = common::eventually(
        WAIT,
        "project shows balance and month-to-date cost",
        || async {
            let st = projects.get("prepaid").await.ok()?.status?;
            (st.credit_balance.as_deref() == Some("1.00")).then_some(st)
        },
    )
    .await;
    assert_eq!(p.month_to_date_cost.as_deref(), Some("0.00"));
    assert_eq!(
        (
            p.month_to_date_cost_rounded.as_deref(),
            p.credit_balance_rounded.as_deref()
        ),
        (Some("0.00"), Some("1.00")),
        "the printer columns show the currency's precision"
    );

    // Usage beyond the credit (recorded by another meter): the VM is stopped, its runStrategy untouched.
    l.record(&[last_hour(
        format!("test/{id}/big"),
        &ns,
        ("prepaid", &prepaid),
        "other-uid",
        "1.5",
    )])
    .await
    .unwrap();
    let vm = common::eventually(WAIT, "VM stopped for lack of credit", || async {
        let vm = vms.get("box").await.ok()?;
        let st = vm.status.as_ref()?;
        let c = conditions::find(&st.conditions, conditions::READY)?.clone();
        let settled = conditions::find(&st.conditions, conditions::RECONCILING)?.status
            == ConditionStatus::False;
        (c.reason == "CreditExhausted" && c.status == ConditionStatus::False && settled)
            .then_some(vm)
    })
    .await;
    assert_eq!(
        format!("{:?}", vm.spec.run_strategy),
        "Always",
        "runStrategy was rewritten"
    );
    let ext = vm.status.as_ref().unwrap().external_id.clone().unwrap();
    let droplet = sim
        .droplets()
        .await
        .into_iter()
        .find(|d| d["id"].as_u64().map(|n| n.to_string()) == Some(ext.clone()))
        .unwrap();
    assert_eq!(droplet["status"], "off");
    let p = projects.get("prepaid").await.unwrap();
    let ready = conditions::find(&p.status.as_ref().unwrap().conditions, conditions::READY)
        .unwrap()
        .clone();
    assert_eq!(ready.reason, "CreditExhausted");
    assert!(p.status.unwrap().credit_balance.unwrap().starts_with('-'));

    // A VM added while the credit is exhausted is not created at all (a server costs from its first hour).
    let droplets_before = sim.droplets().await.len();
    apply(&client, &ns, vm_in(&id, "late", &pc, "prepaid")).await;
    common::eventually(WAIT, "new VM waits for credit", || async {
        let c = ready_of(&vms, "late").await?;
        (c.reason == "CreditExhausted" && c.message.starts_with("not created")).then_some(())
    })
    .await;
    assert_eq!(
        sim.droplets().await.len(),
        droplets_before,
        "a server was created without credit"
    );

    // Notify on another project: only a condition (and an Event); its VM keeps running.
    let notify = prepaid_project(&client, &ns, &id, "notify", "Notify").await;
    assert!(
        l.credit(&common::grant("n1", &ns, "notify", &notify, 1_000_000))
            .await
            .unwrap()
    );
    l.record(&[last_hour(
        format!("test/{id}/notify"),
        &ns,
        ("notify", &notify),
        "other-uid-2",
        "1",
    )])
    .await
    .unwrap();
    apply(&client, &ns, vm_in(&id, "keeps-running", &pc, "notify")).await;
    common::eventually(WAIT, "Notify project reports exhaustion", || async {
        let p = projects.get("notify").await.ok()?;
        let c = conditions::find(&p.status.as_ref()?.conditions, conditions::READY)?.clone();
        (c.reason == "CreditExhausted" && c.message.contains("Notify")).then_some(())
    })
    .await;
    common::eventually(WAIT, "its VM runs regardless", || async {
        let c = ready_of(&vms, "keeps-running").await?;
        (c.status == ConditionStatus::True && c.reason == "Reconciled").then_some(())
    })
    .await;

    // A grant resumes it.
    l.credit(&common::grant(
        "g2",
        &ns,
        "prepaid",
        &prepaid,
        100_000_000_000,
    ))
    .await
    .unwrap();
    for name in ["box", "late"] {
        common::eventually(WAIT, "VMs running after a grant", || async {
            let c = ready_of(&vms, name).await?;
            (c.status == ConditionStatus::True && c.reason == "Reconciled").then_some(())
        })
        .await;
    }

    // Deleting the VM closes its metering window: its running time is in the ledger.
    vms.delete("box", &DeleteParams::default()).await.unwrap();
    common::eventually(WAIT, "VM deleted", || async {
        vms.get_opt("box").await.ok()?.is_none().then_some(())
    })
    .await;
    let rows = l
        .usage(
            &ProjectRef {
                namespace: &ns,
                name: "prepaid",
                uid: &prepaid,
            },
            0,
            i64::MAX,
            GroupBy::Object,
        )
        .await
        .unwrap();
    let mine = rows
        .iter()
        .find(|r| r.key == "VirtualMachine/box")
        .expect("the VM's running time was metered");
    assert!(mine.quantity >= 1 && mine.meter == "vm_seconds", "{mine:?}");
    assert!(
        metrics
            .usage_events
            .with_label_values(&["vm_seconds"])
            .get()
            >= 1
    );
}

fn cli(db: &str, args: &[&str]) -> (bool, String, String) {
    let out = common::process::quartermaster()
        .env("KUBECONFIG", common::kubeconfig())
        .args(args)
        .args(["--database-url", db])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn usage_invoice_and_credits_commands() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("l.db").display());
    let (ok, out, err) = cli(&db, &["migrate"]);
    assert!(ok, "{err}");
    assert!(out.contains("sqlite"));
    let l = Ledger::connect(Some(&db), dir.path()).await.unwrap();
    // Credit is recorded only for a Project that exists (the CLI reads it through KUBECONFIG).
    let client = common::client().await;
    let ns = common::namespace(&client, "cli").await;
    apply(
        &client,
        &ns,
        serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "Project",
            "metadata": {"name": "acme"}, "spec": {}
        }),
    )
    .await;
    let acme_uid = common::project_uid(&client, &ns, "acme").await;
    let acme = format!("{ns}/acme");
    let (nov, _) = quartermaster::ledger::parse_period("2025-11").unwrap();
    let ev = |k: &str, name: &str, start: i64, price: &str| UsageEvent {
        key: k.into(),
        namespace: ns.clone(),
        project: "acme".into(),
        project_uid: acme_uid.clone(),
        object_kind: "VirtualMachine".into(),
        object_name: name.into(),
        object_uid: format!("{name}-uid"),
        meter: Meter::VmSeconds,
        quantity: 1800,
        unit_price: Decimal::from_str(price).unwrap(),
        vendor_unit_price: Decimal::from_str(price).unwrap(),
        price_quantity: 3600,
        currency: "USD".into(),
        window_start: start,
        window_end: start + 1800,
        attributes: serde_json::json!({}),
    };
    l.record(&[
        ev("a", "web", nov, "0.0119"),
        ev("b", "db", nov + 86400, "0.0238"),
    ])
    .await
    .unwrap();

    let (ok, out, err) = cli(
        &db,
        &[
            "credits",
            "grant",
            "--project",
            &acme,
            "--amount",
            "50",
            "--reason",
            "welcome",
            "--key",
            "k1",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("balance 49.98215"), "{out}");
    // No credit for a Project that does not exist (a typo would otherwise be credit nobody can use).
    let (ok, _, err) = cli(
        &db,
        &[
            "credits",
            "grant",
            "--project",
            &format!("{ns}/acmee"),
            "--amount",
            "5",
            "--reason",
            "typo",
        ],
    );
    assert!(!ok && err.contains("not found"), "{err}");
    let (ok, out, _) = cli(
        &db,
        &[
            "credits",
            "grant",
            "--project",
            &acme,
            "--amount",
            "50",
            "--reason",
            "welcome",
            "--idempotency-key",
            "k1",
        ],
    );
    assert!(
        ok && out.contains("already recorded"),
        "the same --idempotency-key grants once: {out}"
    );
    // A grant in another currency is never added to the USD balance.
    let (ok, _, err) = cli(
        &db,
        &[
            "credits",
            "grant",
            "--project",
            &acme,
            "--amount",
            "7",
            "--currency",
            "EUR",
            "--reason",
            "euro credit",
            "--idempotency-key",
            "k2",
        ],
    );
    assert!(ok, "{err}");
    let (ok, out, _) = cli(&db, &["credits", "balance", "--project", &acme]);
    assert!(
        ok && out.contains("credited 50.00, used 0.01785, balance 49.98215 USD"),
        "{out}"
    );
    assert!(
        out.contains("credited 7.00, used 0.00, balance 7.00 EUR"),
        "{out}"
    );

    let (ok, out, err) = cli(
        &db,
        &[
            "usage",
            "--project",
            &acme,
            "--period",
            "2025-11",
            "--by",
            "object",
            "--output",
            "csv",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "key,meter,quantity,amount,currency,cost,margin\nVirtualMachine/db,vm_seconds,1800,0.0119,USD,0.0119,0.00\nVirtualMachine/web,vm_seconds,1800,0.00595,USD,0.00595,0.00\n"
    );
    let (ok, out, _) = cli(
        &db,
        &[
            "usage",
            "--project",
            &acme,
            "--period",
            "2025-11",
            "--by",
            "day",
        ],
    );
    assert!(
        ok && out.contains("2025-11-01") && out.contains("2025-11-02") && out.contains("TOTAL"),
        "{out}"
    );
    let (ok, out, _) = cli(
        &db,
        &[
            "usage",
            "--project",
            &acme,
            "--period",
            "2025-11",
            "--output",
            "json",
        ],
    );
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(ok && j[0]["amount"] == "0.01785", "{out}");
    let (ok, out, _) = cli(&db, &["invoice", "--project", &acme, "--period", "2025-11"]);
    let inv: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(ok);
    assert_eq!(inv["totals"]["USD"], "0.01785");
    assert_eq!(inv["lineItems"].as_array().unwrap().len(), 2);
    assert_eq!(
        (&inv["status"], &inv["projectUID"]),
        (&"draft".into(), &acme_uid.clone().into())
    );

    // A refund is taken from the balance, with its external reference.
    let (ok, out, err) = cli(
        &db,
        &[
            "credits",
            "grant",
            "--project",
            &acme,
            "--type",
            "refund",
            "--amount",
            "10",
            "--external-ref",
            "re_1",
            "--reason",
            "goodwill back",
            "--key",
            "r1",
        ],
    );
    assert!(ok && out.contains("balance 39.98215"), "{out}{err}");

    // Finalized, November never changes: late usage for it goes to December as an adjustment.
    let (ok, out, err) = cli(
        &db,
        &[
            "invoice",
            "--project",
            &acme,
            "--period",
            "2025-11",
            "--finalize",
        ],
    );
    assert!(ok, "{err}");
    let inv: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&inv["status"], &inv["totals"]["USD"]),
        (&"final".into(), &"0.01785".into())
    );
    l.record(&[ev("c", "late", nov + 2 * 86400, "1")])
        .await
        .unwrap();
    let (_, out, _) = cli(&db, &["invoice", "--project", &acme, "--period", "2025-11"]);
    let inv: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(inv["totals"]["USD"], "0.01785", "a closed month changed");
    let (ok, out, _) = cli(
        &db,
        &[
            "usage",
            "--project",
            &acme,
            "--period",
            "2025-12",
            "--by",
            "object",
        ],
    );
    assert!(
        ok && out.contains("VirtualMachine/late (adjustment for 2025-11)"),
        "{out}"
    );
    let (ok, _, err) = cli(
        &db,
        &[
            "invoice",
            "--project",
            &acme,
            "--period",
            "2099-01",
            "--finalize",
        ],
    );
    assert!(!ok && err.contains("has not ended"), "{err}");

    // Clear errors.
    let (ok, _, err) = cli(&db, &["usage", "--project", "demo/nobody"]);
    assert!(!ok && err.contains("unknown project demo/nobody"), "{err}");
    let (ok, _, err) = cli(&db, &["usage", "--project", &acme, "--period", "2025-13"]);
    assert!(!ok && err.contains("bad period \"2025-13\""), "{err}");
    let (ok, _, err) = cli(&db, &["usage", "--project", "acme"]);
    assert!(!ok && err.contains("expected NAMESPACE/NAME"), "{err}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (ok, _, err) = cli(
        &format!("postgres://qm:hunter2@127.0.0.1:{port}/x"),
        &["usage", "--project", &acme],
    );
    assert!(!ok && err.contains("cannot open the usage ledger"), "{err}");
    assert!(
        !err.contains("hunter2"),
        "the database password leaked: {err}"
    );
}

#[tokio::test]
async fn a_ledger_outage_loses_nothing() {
    // Needs PostgreSQL (an outage is stopping its server); fails under CI without one.
    let Some((l, _)) = common::db::fresh_postgres().await else {
        return;
    };
    let Ledger::Postgres(pool) = &l else {
        unreachable!("QM_TEST_DATABASE_URL is PostgreSQL")
    };
    let client = common::client().await;
    let ns = common::namespace(&client, "outage").await;
    let id = common::unique("outage");
    let sim = common::start_sim(|_| {}).await;
    common::secret(&client, &ns, "do-token", "token", "t").await;
    let pc = format!("{id}-do");
    common::do_provider_config(&client, &id, &pc, &ns, &sim.url, &[]).await;
    let (metrics, _stop) = common::start_controller_with(client.clone(), &id, Some(l.clone()));
    apply(&client, &ns, serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": "vm", "labels": {"qm-test": id}},
        "spec": {"providerConfigRef": {"name": pc}, "region": "fra1", "size": "s-1vcpu-1gb", "image": "debian-12-x64"}
    }))
    .await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &ns);
    let since = common::eventually(WAIT, "metering window open", || async {
        Some(vms.get("vm").await.ok()?.status?.metering?.since)
    })
    .await;

    // Let some billable time accrue (windows are exact to the second).
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The ledger goes away; the VM is deleted meanwhile: deletion waits, nothing is dropped.
    sqlx::query("ALTER TABLE usage_events RENAME TO usage_events_offline")
        .execute(pool)
        .await
        .unwrap();
    vms.delete("vm", &DeleteParams::default()).await.unwrap();
    common::eventually(WAIT, "buffered usage reported", || async {
        (metrics.ledger_buffer_depth.get() >= 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        vms.get_opt("vm").await.unwrap().is_some(),
        "the VM went away with unrecorded usage"
    );

    // The ledger is back: the usage is recorded once, from the start of the window, and the VM goes.
    sqlx::query("ALTER TABLE usage_events_offline RENAME TO usage_events")
        .execute(pool)
        .await
        .unwrap();
    common::eventually(WAIT, "VM deleted after the ledger came back", || async {
        vms.get_opt("vm").await.ok()?.is_none().then_some(())
    })
    .await;
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT window_start, window_end FROM usage_events WHERE object_name = 'vm' AND namespace = $1 ORDER BY 1",
    )
    .bind(&ns)
    .fetch_all(pool)
    .await
    .unwrap();
    // One window, or two if an hour boundary fell inside: contiguous from the window's start.
    assert!(!rows.is_empty() && rows.len() <= 2, "{rows:?}");
    assert_eq!(rows[0].0, since);
    assert!(
        rows.windows(2).all(|w| w[0].1 == w[1].0),
        "gap between windows: {rows:?}"
    );
    assert!(
        rows.last().unwrap().1 - since >= 2,
        "the outage time was not billed: {rows:?}"
    );
    assert_eq!(metrics.ledger_buffer_depth.get(), 0);
}

/// The status condition `type_` of VM `name`: (status, reason, message).
async fn condition_of(
    vms: &Api<VirtualMachine>,
    name: &str,
    type_: &str,
) -> Option<(ConditionStatus, String, String)> {
    let vm = vms.get(name).await.ok()?;
    let c = conditions::find(&vm.status.as_ref()?.conditions, type_)?;
    Some((c.status, c.reason.clone(), c.message.clone()))
}

/// No edit is a way out of the credit stop: a VM whose move to a missing Project was refused, and one
/// whose projectRef was removed, stay under the stop of the Project they are billed to; the Project
/// counts what is stopped, keeps its balance current while it is being deleted, and a ProviderConfig
/// can require a Project for every VM.
#[tokio::test]
async fn no_edit_escapes_the_credit_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _) = common::db::fresh_ledger(&dir).await;
    let client = common::client().await;
    let ns = common::namespace(&client, "escape").await;
    let id = common::unique("escape");
    let sim = common::start_sim(|_| {}).await;
    common::secret(&client, &ns, "do-token", "token", "t").await;
    let pc = format!("{id}-do");
    common::do_provider_config(&client, &id, &pc, &ns, &sim.url, &[]).await;
    let (_metrics, _stop) = common::start_controller_with(client.clone(), &id, Some(l.clone()));
    let prepaid = prepaid_project(&client, &ns, &id, "prepaid", "Stop").await;
    l.credit(&common::grant(
        "g1",
        &ns,
        "prepaid",
        &prepaid,
        1_000_000_000,
    ))
    .await
    .unwrap();
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &ns);
    for name in ["moved", "left", "orphaned"] {
        apply(&client, &ns, vm_in(&id, name, &pc, "prepaid")).await;
    }
    for name in ["moved", "left", "orphaned"] {
        common::eventually(WAIT, "VMs running", || async {
            let (s, r, _) = condition_of(&vms, name, conditions::READY).await?;
            (s == ConditionStatus::True && r == "Reconciled").then_some(())
        })
        .await;
    }
    // Before the credit ends, the tenant points one VM at a Project that does not exist.
    let to_nowhere = serde_json::json!({"spec": {"projectRef": {"name": "nowhere"}}});
    vms.patch("moved", &PatchParams::default(), &Patch::Merge(&to_nowhere))
        .await
        .unwrap();
    common::eventually(WAIT, "moved Stalled ProjectNotFound", || async {
        let (s, r, _) = condition_of(&vms, "moved", conditions::STALLED).await?;
        (s == ConditionStatus::True && r == "ProjectNotFound").then_some(())
    })
    .await;
    // Another is deleted with deletionPolicy Orphan, which this namespace may not use: it waits.
    let orphan = serde_json::json!({"spec": {"deletionPolicy": "Orphan"}});
    vms.patch("orphaned", &PatchParams::default(), &Patch::Merge(&orphan))
        .await
        .unwrap();
    vms.delete("orphaned", &DeleteParams::default())
        .await
        .unwrap();
    common::eventually(WAIT, "orphaned Stalled ReleaseNotAllowed", || async {
        let (s, r, _) = condition_of(&vms, "orphaned", conditions::STALLED).await?;
        (s == ConditionStatus::True && r == "ReleaseNotAllowed").then_some(())
    })
    .await;
    // The credit ends.
    l.record(&[last_hour(
        format!("test/{id}/big"),
        &ns,
        ("prepaid", &prepaid),
        "other",
        "1.5",
    )])
    .await
    .unwrap();
    let droplet_state = |name: &'static str| {
        let (vms, sim) = (vms.clone(), &sim);
        async move {
            let ext = vms.get(name).await.ok()?.status?.external_id?;
            sim.droplets()
                .await
                .into_iter()
                .find(|d| d["id"].as_u64().map(|n| n.to_string()) == Some(ext.clone()))
                .map(|d| d["status"].as_str().unwrap_or_default().to_string())
        }
    };
    common::eventually(
        WAIT,
        "the refused move is stopped by the old Project's stop",
        || async {
            let (_, r, m) = condition_of(&vms, "moved", conditions::STALLED).await?;
            (r == "ProjectNotFound"
                && m.contains("under Project \"prepaid\"'s credit stop")
                && droplet_state("moved").await? == "off")
                .then_some(())
        },
    )
    .await;
    // A deletion waiting on a release is no way out either: the server is powered off.
    common::eventually(WAIT, "the waiting deletion's server stopped", || async {
        (droplet_state("orphaned").await? == "off").then_some(())
    })
    .await;
    // Removing projectRef now is no way out either: refused, and the server stays off.
    common::eventually(WAIT, "left stopped", || async {
        (droplet_state("left").await? == "off").then_some(())
    })
    .await;
    let unset = serde_json::json!({"spec": {"projectRef": null}});
    vms.patch("left", &PatchParams::default(), &Patch::Merge(&unset))
        .await
        .unwrap();
    common::eventually(WAIT, "left Stalled CreditExhausted", || async {
        let (s, r, m) = condition_of(&vms, "left", conditions::STALLED).await?;
        (s == ConditionStatus::True && r == "CreditExhausted" && m.contains("cannot leave"))
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(droplet_state("left").await.as_deref(), Some("off"));
    let vm = vms.get("left").await.unwrap();
    assert_eq!(
        vm.status.unwrap().project.as_deref(),
        Some("prepaid"),
        "still billed to prepaid"
    );
    // The Project says what is stopped.
    let projects: Api<Project> = Api::namespaced(client.clone(), &ns);
    let said = common::eventually(WAIT, "the Project counts what is stopped", || async {
        let p = projects.get("prepaid").await.ok()?;
        let c = conditions::find(&p.status.as_ref()?.conditions, conditions::READY)?;
        (c.message
            .contains("2 of 3 virtual machines stopped (1 being deleted)")
            && !c.message.contains("still running"))
        .then(|| c.message.clone())
    })
    .await;
    assert!(said.starts_with("credit exhausted"), "{said}");

    // Being deleted (Block: its members remain), the Project keeps its balance current.
    projects
        .delete("prepaid", &DeleteParams::default())
        .await
        .unwrap();
    l.credit(&common::grant(
        "g2",
        &ns,
        "prepaid",
        &prepaid,
        100_000_000_000,
    ))
    .await
    .unwrap();
    common::eventually(
        WAIT,
        "a Terminating Project's balance follows the grant",
        || async {
            let st = projects.get("prepaid").await.ok()?.status?;
            let balance: Decimal = st.credit_balance?.parse().ok()?;
            (balance > Decimal::from(90)).then_some(())
        },
    )
    .await;

    // A ProviderConfig that requires a Project: a VM without one is not created.
    let strict = format!("{id}-strict");
    common::do_provider_config(&client, &id, &strict, &ns, &sim.url, &[]).await;
    let pcs: Api<quartermaster::crd::ProviderConfig> = Api::all(client.clone());
    let require = serde_json::json!({"spec": {"requireProject": true}});
    pcs.patch(&strict, &PatchParams::default(), &Patch::Merge(&require))
        .await
        .unwrap();
    let before = sim.droplets().await.len();
    let mut lone = vm_in(&id, "lone", &strict, "x");
    lone["spec"].as_object_mut().unwrap().remove("projectRef");
    apply(&client, &ns, lone).await;
    common::eventually(WAIT, "lone Stalled ProjectRequired", || async {
        let (s, r, _) = condition_of(&vms, "lone", conditions::STALLED).await?;
        (s == ConditionStatus::True && r == "ProjectRequired").then_some(())
    })
    .await;
    assert_eq!(
        sim.droplets().await.len(),
        before,
        "a VM without a Project was created"
    );
}
