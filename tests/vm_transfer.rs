//! A VM's outbound transfer, end to end on a real kube-apiserver with `quartermaster sim` and the
//! ledger: the vendor's monthly figure is metered through the counter meter (within the allowance at no
//! charge, beyond it billed to the Project at the vendor's overage price), the account's pooled overage
//! is recorded once as vendor cost, 80 % and 100 % of the allowance are announced once each, rounds that
//! read the same figure bill nothing again, and an opted-in VM's load is exported by UID.

use kube::ResourceExt;
use quartermaster::ledger::store::{GroupBy, ProjectRef};
use rust_decimal::Decimal;

mod common;

use common::env::{Env, WAIT, env_with};

/// DigitalOcean's 1 "TB" (1,000 GiB): the simulator's sizes include it each month.
const TIB: i64 = 1000 << 30;

async fn set_transfer(e: &Env, id: &str, bytes: i64) {
    let r = reqwest::Client::new()
        .post(format!("{}/_sim/droplets/{id}/transfer", e.sim.url))
        .json(&serde_json::json!({ "bytes": bytes }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "set transfer: {}", r.status());
}

/// Transfer rows (quantity, tenant amount, vendor cost) of `who` (`Kind/name`) in `project`.
async fn transfer_rows(
    l: &quartermaster::ledger::Ledger,
    project: &ProjectRef<'_>,
    who: &str,
) -> (i64, i64, i64) {
    let now = jiff::Timestamp::now().as_second();
    l.usage(project, now - 40 * 86_400, now + 86_400, GroupBy::Object)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.key == who && r.meter == "transfer_bytes")
        .fold((0, 0, 0), |a, r| {
            (a.0 + r.quantity, a.1 + r.amount_nanos, a.2 + r.cost_nanos)
        })
}

async fn transfer_events(e: &Env, name: &str) -> Vec<String> {
    e.events_of(name)
        .await
        .into_iter()
        .filter(|(r, _)| r == "TransferThresholdReached")
        .map(|(_, note)| note)
        .collect()
}

/// A controller with the ledger reading transfer every `interval` seconds, Project `acme` (USD) and
/// VM `web` in it (`spec` merged in), Ready; the ledger's folder must outlive the test.
async fn metered_vm(
    prefix: &str,
    interval: u64,
    spec: serde_json::Value,
    dir: &tempfile::TempDir,
) -> (
    Env,
    quartermaster::ledger::Ledger,
    quartermaster::crd::VirtualMachine,
) {
    let (l, _) = common::db::fresh_ledger(dir).await;
    let e = env_with(prefix, |_| {})
        .await
        .with_controller(Some(l.clone()), |c| {
            c.traffic_interval = std::time::Duration::from_secs(interval);
        });
    e.apply_project("acme", serde_json::json!({"currency": "USD"}))
        .await;
    let mut spec = spec;
    spec["projectRef"] = serde_json::json!({"name": "acme"});
    e.apply_vm("web", serde_json::json!({ "spec": spec })).await;
    let vm = e.wait_ready("web").await;
    (e, l, vm)
}

/// Project `acme`'s UID.
async fn acme_uid(e: &Env) -> String {
    kube::api::Api::<quartermaster::crd::Project>::namespaced(e.client.clone(), &e.ns)
        .get("acme")
        .await
        .unwrap()
        .uid()
        .unwrap()
}

#[tokio::test]
async fn transfer_beyond_the_allowance_is_billed_once_and_announced_once() {
    let dir = tempfile::tempdir().unwrap();
    let spec = serde_json::json!({"metrics": true, "monitoring": true});
    let (e, l, vm) = metered_vm("vmxfer", 1, spec, &dir).await;
    let (uid, id) = (
        vm.uid().unwrap(),
        vm.status.as_ref().unwrap().external_id.clone().unwrap(),
    );
    let vms = e.vms();
    let transfer_of = |want: i64| {
        let vms = vms.clone();
        async move {
            common::eventually(WAIT, "the VM's transfer in status", || async {
                let t = vms.get("web").await.ok()?.status?.transfer?;
                (t.outbound_bytes == want).then_some(t)
            })
            .await
        }
    };

    // 85 % of the allowance: recorded as included, nothing billed, the 80 % warning once.
    let first = (TIB * 85 + 99) / 100;
    set_transfer(&e, &id, first).await;
    let t = transfer_of(first).await;
    assert_eq!(t.allowance_bytes, Some(TIB));
    assert_eq!(t.used_percent, Some(85));
    assert_eq!((t.included_billed, t.overage_billed), (first, 0));
    let project_uid = acme_uid(&e).await;
    let acme = ProjectRef {
        namespace: &e.ns,
        name: "acme",
        uid: &project_uid,
    };
    common::eventually(WAIT, "the 80 % warning", || async {
        (transfer_events(&e, "web").await.len() == 1).then_some(())
    })
    .await;
    let vm_row = transfer_rows(&l, &acme, "VirtualMachine/web").await;
    assert_eq!(vm_row, (first, 0, 0), "included transfer is free");

    // 1.2 TiB: 0.2 TiB beyond the allowance, billed at DigitalOcean's US$0.01 per GiB.
    let second = TIB * 6 / 5;
    set_transfer(&e, &id, second).await;
    let t = transfer_of(second).await;
    let overage = second - TIB;
    assert_eq!((t.included_billed, t.overage_billed), (TIB, overage));
    assert_eq!(t.warned, vec![80, 100]);
    // Several more rounds read the same figure: nothing is billed or announced again.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let (quantity, amount, cost) = transfer_rows(&l, &acme, "VirtualMachine/web").await;
    assert_eq!(quantity, second);
    let gib = Decimal::from(overage) / Decimal::from(1u64 << 30);
    let want = (gib * Decimal::new(1, 2) * Decimal::from(1_000_000_000)).round();
    assert!(
        (Decimal::from(amount) - want).abs() <= Decimal::from(2),
        "billed {amount} nanos, want {want}"
    );
    assert_eq!(
        cost, 0,
        "the VM's rows carry no vendor cost (the pool's do)"
    );
    let notes = transfer_events(&e, "web").await;
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes.iter().any(|n| n.contains("100 %")), "{notes:?}");

    // The account's pooled overage (one server) as vendor cost, once, with no tenant amount.
    let platform = ProjectRef {
        namespace: "",
        name: "",
        uid: "",
    };
    let pool = transfer_rows(&l, &platform, &format!("ProviderConfig/{}", e.pc)).await;
    assert_eq!(pool.0, overage);
    assert_eq!(pool.1, 0);
    assert!(
        (Decimal::from(pool.2) - want).abs() <= Decimal::from(2),
        "{pool:?}"
    );

    // The opted-in VM's load, labelled by its UID only.
    let text = e.metrics.as_ref().unwrap().render();
    for series in [
        format!("quartermaster_vm_cpu_percent{{vm_uid=\"{uid}\"}} 25"),
        format!("quartermaster_vm_transfer_month_bytes{{vm_uid=\"{uid}\"}} {second}"),
        format!("quartermaster_vm_memory_bytes{{state=\"total\",vm_uid=\"{uid}\"}} 1073741824"),
    ] {
        assert!(text.contains(&series), "{series} not in:\n{text}");
    }
    assert!(!text.contains(&e.ns), "a tenant's namespace became a label");
}

/// A VM being deleted has its server's transfer read once more before the server goes: what it sent
/// since the last round (here: no round read it at all) is billed, beyond the allowance included.
#[tokio::test]
async fn a_deleted_vms_last_transfer_is_read_and_billed_before_its_server_goes() {
    let dir = tempfile::tempdir().unwrap();
    // Rounds far apart: only the read at deletion sees the figure.
    let (e, l, vm) = metered_vm("vmxferdel", 3600, serde_json::json!({}), &dir).await;
    let id = vm.status.as_ref().unwrap().external_id.clone().unwrap();
    assert!(
        vm.status.unwrap().transfer.is_none(),
        "no round read it yet"
    );
    let sent = TIB + 5_000_000_000;
    set_transfer(&e, &id, sent).await;
    e.vms().delete("web", &Default::default()).await.unwrap();
    e.wait_gone("web").await;
    let project_uid = acme_uid(&e).await;
    let acme = ProjectRef {
        namespace: &e.ns,
        name: "acme",
        uid: &project_uid,
    };
    let (quantity, amount, _) = transfer_rows(&l, &acme, "VirtualMachine/web").await;
    assert_eq!(
        quantity, sent,
        "the whole month's transfer is in the ledger"
    );
    assert!(amount > 0, "5 GB beyond the allowance are billed");
}
