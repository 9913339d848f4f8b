//! A Project's own VPCs on the real API server with `quartermaster sim`: made once (an earlier
//! attempt's found by name, not made again), joined by its VMs with `spec.projectVPC`, kept while a VM
//! is in it, and deleted when its entry goes or the Project is deleted.

mod common;

use common::env::{Env, WAIT};
use kube::api::{Api, DeleteParams};
use quartermaster::crd::Project;
use quartermaster::crd::conditions::{self, ConditionStatus};

/// The simulator's VPCs.
async fn vpcs(e: &Env) -> Vec<serde_json::Value> {
    quartermaster::install_crypto_provider();
    let v: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/v2/vpcs?per_page=200", e.sim.url))
        .bearer_auth("sim-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["vpcs"].as_array().cloned().unwrap_or_default()
}

/// Waits until Project `name`'s `status.vpcs` satisfies `ok`; returns it.
async fn project_vpcs(
    e: &Env,
    name: &str,
    what: &str,
    ok: impl Fn(&[quartermaster::crd::project::ProjectVpcStatus]) -> bool,
) -> Vec<quartermaster::crd::project::ProjectVpcStatus> {
    let api: Api<Project> = Api::namespaced(e.client.clone(), &e.ns);
    common::eventually(WAIT, what, || async {
        let v = api.get(name).await.ok()?.status?.vpcs;
        ok(&v).then_some(v)
    })
    .await
}

#[tokio::test]
async fn a_projects_vpc_is_made_once_joined_by_its_vms_and_deleted_once_empty() {
    // A stall (the vendor refusing a deletion) is looked at again every 2 s.
    let e = common::env::env_with("pvpc", |_| {})
        .await
        .with_controller(None, |c| {
            c.resync_interval = std::time::Duration::from_secs(2)
        });
    e.apply_project("acme", serde_json::json!({"currency": "USD"}))
        .await;
    let uid = common::project_uid(&e.client, &e.ns, "acme").await;
    // An earlier attempt's VPC (made, then the controller died before its status write): found by
    // its name, recorded, not made again.
    let name = quartermaster::cloud::vpc::vpc_name(&uid, "fra1");
    let earlier: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/v2/vpcs", e.sim.url))
        .bearer_auth("sim-token")
        .json(&serde_json::json!({"name": name, "region": "fra1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let earlier_id = earlier["vpc"]["id"].as_str().unwrap().to_string();
    let declared = |regions: &[&str]| {
        let vpcs: Vec<serde_json::Value> = regions
            .iter()
            .map(|r| serde_json::json!({"providerConfigRef": {"name": e.pc}, "region": r}))
            .collect();
        serde_json::json!({"currency": "USD", "vpcs": vpcs})
    };
    e.apply_project("acme", declared(&["fra1", "ams3"])).await;
    let recorded = project_vpcs(&e, "acme", "both VPCs recorded", |v| v.len() == 2).await;
    let fra = recorded.iter().find(|v| v.region == "fra1").unwrap();
    assert_eq!(
        fra.id, earlier_id,
        "the earlier attempt's VPC is the one recorded"
    );
    assert_eq!(vpcs(&e).await.len(), 2, "one made (ams3), none twice");

    // A member VM joins it; a VM in a region the Project has no VPC in is the user's to fix.
    let member = |region: &str| serde_json::json!({"spec": {"projectRef": {"name": "acme"}, "projectVPC": true, "region": region}});
    e.apply_vm("web", member("fra1")).await;
    let vm = e.wait_ready("web").await;
    let st = vm.status.unwrap();
    let droplet = e.droplet(st.external_id.as_deref().unwrap()).await.unwrap();
    assert_eq!(droplet["vpc_uuid"], earlier_id.as_str());
    assert_eq!(
        st.created_with.as_ref().and_then(|c| c.vpc_id.as_deref()),
        Some(earlier_id.as_str())
    );
    e.apply_vm("elsewhere", member("lon1")).await;
    let v = e
        .wait_vm(
            "elsewhere",
            conditions::STALLED,
            ConditionStatus::True,
            "InvalidSpec",
        )
        .await;
    let msg = conditions::find(&v.status.unwrap().conditions, conditions::STALLED)
        .unwrap()
        .message
        .clone();
    assert!(msg.contains("declares no VPC"), "{msg}");
    e.vms()
        .delete("elsewhere", &DeleteParams::default())
        .await
        .unwrap();

    // The fra1 entry goes while web is in it: its VPC waits; ams3's stays.
    e.apply_project("acme", declared(&["ams3"])).await;
    let api: Api<Project> = Api::namespaced(e.client.clone(), &e.ns);
    common::eventually(WAIT, "the removal waits for web", || async {
        let p = api.get("acme").await.ok()?;
        let c = conditions::find(&p.status?.conditions, conditions::RECONCILING)?.clone();
        (c.reason == "WaitingForVPC" && c.message.contains("web")).then_some(())
    })
    .await;
    assert_eq!(vpcs(&e).await.len(), 2);
    e.vms()
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    e.wait_gone("web").await;
    project_vpcs(&e, "acme", "fra1's VPC deleted", |v| v.len() == 1).await;
    let left = vpcs(&e).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_ne!(left[0]["id"], earlier_id.as_str());

    // The Project's deletion deletes the rest. A server Quartermaster does not know of in the VPC
    // makes DigitalOcean refuse (403): the Project stalls with its words, its credentials untouched,
    // until the server is gone.
    let ams = left[0]["id"].as_str().unwrap().to_string();
    let sim = reqwest::Client::new();
    let stray: serde_json::Value = sim
        .post(format!("{}/v2/droplets", e.sim.url))
        .bearer_auth("sim-token")
        .json(
            &serde_json::json!({"name": "stray", "region": "ams3", "size": "s-1vcpu-1gb",
            "image": "debian-12-x64", "vpc_uuid": ams}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stray = stray["droplet"]["id"].as_u64().unwrap();
    api.delete("acme", &DeleteParams::default()).await.unwrap();
    common::eventually(WAIT, "the refusal shown", || async {
        let p = api.get("acme").await.ok()?;
        let c = conditions::find(&p.status?.conditions, conditions::STALLED)?.clone();
        (c.reason == "VendorRejected" && c.message.contains("Can not delete VPC with members"))
            .then_some(())
    })
    .await;
    sim.delete(format!("{}/v2/droplets/{stray}", e.sim.url))
        .bearer_auth("sim-token")
        .send()
        .await
        .unwrap();
    common::eventually(WAIT, "the Project gone", || async {
        api.get_opt("acme").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(vpcs(&e).await.is_empty());
}

/// Two entries for one account and region are refused (one VPC each), and only one VPC is made.
#[tokio::test]
async fn a_second_vpc_entry_for_the_same_account_and_region_is_refused() {
    let e = common::env::env("pvpcdup", |_| {}, true).await;
    let entry = serde_json::json!({"providerConfigRef": {"name": e.pc}, "region": "fra1"});
    let mut other = entry.clone();
    other["ipRange"] = "10.20.0.0/16".into();
    e.apply_project(
        "acme",
        serde_json::json!({"currency": "USD", "vpcs": [entry, other]}),
    )
    .await;
    let api: Api<Project> = Api::namespaced(e.client.clone(), &e.ns);
    common::eventually(WAIT, "the second entry refused", || async {
        let p = api.get("acme").await.ok()?;
        let st = p.status?;
        let c = conditions::find(&st.conditions, conditions::STALLED)?.clone();
        (c.reason == "InvalidSpec" && c.message.contains("twice") && st.vpcs.len() == 1)
            .then_some(())
    })
    .await;
    assert_eq!(vpcs(&e).await.len(), 1);
}
