//! `quartermaster bench snapshots`: N VirtualMachineSnapshots, one of each of N VirtualMachines on one
//! DigitalOcean account of `quartermaster sim`, then a resync of all of them — figures, never a
//! pass/fail. The VMs are made first (not measured); then the snapshots are created and measured (vendor
//! calls and status writes per snapshot until Ready); then a change of the account's ProviderConfig wakes
//! every snapshot: an available snapshot asks the vendor nothing and writes nothing. With `--released`,
//! every snapshot is then released to the platform and its VM deleted, and two rounds of following the
//! releases (one account listing each) are measured.

use std::path::PathBuf;
use std::time::Duration;

use std::time::Instant;

use futures::{FutureExt, StreamExt, TryStreamExt};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};

use super::BoxError;
use super::fleet::{self, Fleet, Running};
use crate::crd::{ProviderConfig, VirtualMachine, VirtualMachineSnapshot};

/// Benchmark settings.
#[derive(Clone, Debug, clap::Args)]
pub struct SnapshotBench {
    /// Number of VirtualMachineSnapshots (and VirtualMachines).
    #[arg(long, default_value_t = 1000)]
    pub snapshots: usize,
    /// Then release every snapshot to the platform (`Retain`, allowed) and delete the VMs, and measure
    /// two rounds of following the releases (`--traffic-interval-secs` 20 for the whole run).
    #[arg(long)]
    pub released: bool,
    /// The settings every fleet benchmark shares.
    #[command(flatten)]
    pub fleet: fleet::FleetArgs,
}

/// Makes `n` VMs in `ns` on ProviderConfig `ns` and waits until they are Ready.
fn vms(n: usize, concurrency: usize, timeout: Duration) -> fleet::Prepare {
    Box::new(move |client, ns| {
        async move {
            let api: Api<VirtualMachine> = Api::namespaced(client, &ns);
            futures::stream::iter(0..n)
                .map(|i| {
                    let (api, ns) = (api.clone(), ns.clone());
                    async move {
                        let vm: VirtualMachine = serde_json::from_value(serde_json::json!({
                            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachine",
                            "metadata": {"name": format!("vm-{i:05}")},
                            "spec": {"providerConfigRef": {"name": ns}, "region": "fra1",
                                     "size": "s-1vcpu-1gb", "image": "debian-12-x64"}
                        }))?;
                        api.create(&PostParams::default(), &vm).await?;
                        Ok::<_, BoxError>(())
                    }
                })
                .buffer_unordered(concurrency)
                .try_collect::<Vec<_>>()
                .await?;
            super::wait_all_ready(&api, n, timeout).await?;
            Ok(())
        }
        .boxed()
    })
}

/// Runs the benchmark and prints its figures; `exe` is the `quartermaster` binary.
pub async fn snapshots(b: SnapshotBench, exe: PathBuf) -> Result<(), BoxError> {
    let n = b.snapshots;
    println!("# quartermaster bench snapshots --snapshots {n}");
    let prepare = vms(
        n,
        b.fleet.apply_concurrency,
        Duration::from_secs(b.fleet.timeout_secs),
    );
    let f = fleet::run::<VirtualMachineSnapshot>(
        Fleet {
            what: "snapshots",
            n,
            args: b.fleet,
            sim_args: Some(vec![
                "--provision-secs=0".into(),
                "--power-secs=0".into(),
                "--snapshot-secs=0".into(),
            ]),
            secret: serde_json::json!({
                "metadata": {"name": "do-token"}, "stringData": {"token": "bench"}
            }),
            // The resync: a change of the account's rate limit wakes every snapshot held in it.
            provider_config: Box::new(|ns, sim_url, step| {
                let rate = if step == 0 { 1000 } else { 999 };
                serde_json::json!({
                    "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
                    "metadata": {"name": ns},
                    "spec": {"type": "digitalocean", "endpoint": sim_url, "allowedNamespaces": [ns],
                             "rateLimit": {"requestsPerSecond": rate, "burst": rate},
                             "credentialsSecretRef": {"name": "do-token", "namespace": ns, "key": "token"}}
                })
            }),
            object: Box::new(|i, _| {
                serde_json::json!({
                    "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachineSnapshot",
                    "metadata": {"name": format!("snap-{i:05}")},
                    "spec": {"virtualMachineRef": {"name": format!("vm-{i:05}")}}
                })
            }),
            prepare: Some(prepare),
            controller_args: if b.released {
                vec!["--traffic-interval-secs=20".into()]
            } else {
                Vec::new()
            },
            after: b
                .released
                .then(|| -> fleet::After { Box::new(move |r| released(r, n).boxed()) }),
        },
        exe,
    )
    .await?;
    let writes = |c: &std::collections::BTreeMap<String, u64>| {
        super::count(
            c,
            "quartermaster_status_writes_total{kind=\"VirtualMachineSnapshot\"}",
        )
    };
    println!();
    println!("| measurement | result |");
    println!("|---|---|");
    println!("| VirtualMachineSnapshots (one per VM) | {n} |");
    println!(
        "| all taken and Ready | {:.1} s (Ready seen at {:.1} s) |",
        f.created.as_secs_f64(),
        f.ready.as_secs_f64()
    );
    println!(
        "| vendor calls while taking them, per snapshot (the VMs' own calls excluded: made before) | {:.2} |",
        f.create_calls as f64 / n as f64
    );
    println!(
        "| snapshot status writes while taking them, per snapshot | {:.2} |",
        writes(&f.counters.0) as f64 / n as f64
    );
    println!(
        "| resync of every snapshot: duration | {:.1} s |",
        f.resync.as_secs_f64()
    );
    println!("| vendor calls in that resync | {} |", f.calls);
    println!(
        "| snapshot status writes in that resync / per snapshot | {} / {:.3} |",
        f.writes,
        f.writes as f64 / n as f64
    );
    for row in &f.after {
        println!("{row}");
    }
    fleet::print_common(&f);
    Ok(())
}

/// Every snapshot released to the platform and its VM deleted (so no other round asks the vendor
/// anything), then two rounds of following the releases, as table rows.
async fn released(r: Running, n: usize) -> Result<Vec<String>, BoxError> {
    let http = reqwest::Client::new();
    let client = kube::Client::try_default().await?;
    let merge = |v: serde_json::Value| Patch::Merge(v);
    Api::<ProviderConfig>::all(client.clone())
        .patch(
            &r.ns,
            &PatchParams::default(),
            &merge(serde_json::json!({"spec": {"release": {"allowedNamespaces": [r.ns]}}})),
        )
        .await?;
    let snaps: Api<VirtualMachineSnapshot> = Api::namespaced(client.clone(), &r.ns);
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let snaps = snaps.clone();
            async move {
                let name = format!("snap-{i:05}");
                let retain = serde_json::json!({"spec": {"deletionPolicy": "Retain"}});
                snaps
                    .patch(&name, &PatchParams::default(), &Patch::Merge(retain))
                    .await?;
                snaps.delete(&name, &DeleteParams::default()).await?;
                Ok::<_, BoxError>(())
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
    gone(&snaps).await?;
    let release_secs = started.elapsed().as_secs_f64();
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &r.ns);
    vms.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    gone(&vms).await?;
    // A round that started before every release is not measured.
    next_round(&r, &http).await?;
    let first = next_round(&r, &http).await?;
    let second = next_round(&r, &http).await?;
    let row = |what: &str, x: &(f64, i64, u64, u64)| {
        format!(
            "| {what}: duration / releases followed / vendor calls / usage rows written | {:.2} s / {} / {} / {} |",
            x.0, x.1, x.2, x.3
        )
    };
    Ok(vec![
        format!(
            "| every snapshot released (Retain, allowed): patched, deleted and gone | {release_secs:.1} s |"
        ),
        row("a round following the releases (their VMs deleted)", &first),
        row("the next round (nothing changed at the vendor)", &second),
    ])
}

/// Waits until `api` lists no object.
async fn gone<K>(api: &Api<K>) -> Result<(), BoxError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = Instant::now() + Duration::from_secs(3600);
    while !api
        .list(&ListParams::default().limit(1))
        .await?
        .items
        .is_empty()
    {
        if Instant::now() > deadline {
            return Err("objects did not go".into());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(())
}

/// Waits for the next round of following releases to end: its duration, releases followed, vendor
/// calls and usage rows written.
async fn next_round(r: &Running, http: &reqwest::Client) -> Result<(f64, i64, u64, u64), BoxError> {
    const ROUNDS: &str = "quartermaster_released_snapshot_rounds_total";
    const ROWS: &str = "quartermaster_usage_events_recorded_total";
    let before = super::controller_counters(http, &r.metrics_url, &[ROUNDS, ROWS]).await?;
    let calls_before = super::total(&super::sim_calls(http, &r.sim_url).await?);
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let now = super::controller_counters(http, &r.metrics_url, &[ROUNDS, ROWS]).await?;
        if super::count(&now, ROUNDS) > super::count(&before, ROUNDS) {
            let calls = super::total(&super::sim_calls(http, &r.sim_url).await?) - calls_before;
            let text = http.get(&r.metrics_url).send().await?.text().await?;
            let gauge = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            return Ok((
                gauge("quartermaster_released_snapshot_round_seconds "),
                gauge("quartermaster_released_snapshots_followed ") as i64,
                calls,
                super::count(&now, ROWS) - super::count(&before, ROWS),
            ));
        }
        if Instant::now() > deadline {
            return Err("no round ended".into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
