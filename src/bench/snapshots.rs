//! `quartermaster bench snapshots`: N VirtualMachineSnapshots, one of each of N VirtualMachines on one
//! DigitalOcean account of `quartermaster sim`, then a resync of all of them — figures, never a
//! pass/fail. The VMs are made first (not measured); then the snapshots are created and measured (vendor
//! calls and status writes per snapshot until Ready); then a change of the account's ProviderConfig wakes
//! every snapshot: an available snapshot asks the vendor nothing and writes nothing.

use std::path::PathBuf;
use std::time::Duration;

use futures::{FutureExt, StreamExt, TryStreamExt};
use kube::api::{Api, PostParams};

use super::BoxError;
use super::fleet::{self, Fleet};
use crate::crd::{VirtualMachine, VirtualMachineSnapshot};

/// Benchmark settings.
#[derive(Clone, Debug, clap::Args)]
pub struct SnapshotBench {
    /// Number of VirtualMachineSnapshots (and VirtualMachines).
    #[arg(long, default_value_t = 1000)]
    pub snapshots: usize,
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
            controller_args: Vec::new(),
            after: None,
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
    fleet::print_common(&f);
    Ok(())
}
