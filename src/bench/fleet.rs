//! The harness every per-kind fleet benchmark shares: N objects of one kind on one account, then a
//! resync of all of them, woken by a change of the account's ProviderConfig. It measures; each kind's
//! benchmark says what to create and prints its own table.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::Value;

use super::{
    BoxError, apiserver_requests, controller_counters, count, cpu_secs, crds_and_namespace,
    free_port, reads_writes, rss_kib, sim_calls, spawn, spawn_controller, total, wait_all_ready,
    wait_for,
};
use crate::controller::runtime::framework::Managed;
use crate::crd::ProviderConfig;
use crate::kube_client::{KubeLimits, KubeMetrics};

/// Makes the ProviderConfig named after the namespace: given the namespace, the simulator's URL and the
/// step (0 while creating, 1 for the resync: the change that wakes every object).
pub type MakeProviderConfig = Box<dyn Fn(&str, &str, u8) -> Value>;

/// Makes object `i`, given the ProviderConfig's name.
pub type MakeObject = Box<dyn Fn(usize, &str) -> Value + Send + Sync>;

/// Makes what the fleet's objects need before they are created (e.g. a snapshot's VirtualMachines),
/// given the API client, the namespace and the ProviderConfig's name, and waits until it is ready.
pub type Prepare = Box<
    dyn Fn(kube::Client, String) -> futures::future::BoxFuture<'static, Result<(), BoxError>>
        + Send
        + Sync,
>;

/// Where a fleet runs, for what a benchmark measures after the harness: the simulator's and the
/// controller's metrics URLs and the namespace.
#[derive(Clone, Debug)]
pub struct Running {
    /// The simulator's base URL.
    pub sim_url: String,
    /// The controller's `/metrics`.
    pub metrics_url: String,
    /// The namespace (and ProviderConfig) name.
    pub ns: String,
}

/// Measures more once the harness is done, while the simulator and controller still run; returns the
/// table rows to print.
pub type After = Box<
    dyn Fn(Running) -> futures::future::BoxFuture<'static, Result<Vec<String>, BoxError>>
        + Send
        + Sync,
>;

/// Settings every fleet benchmark shares.
#[derive(Clone, Debug, clap::Args)]
pub struct FleetArgs {
    /// Requests the benchmark's own client keeps in flight while applying objects.
    #[arg(long, default_value_t = 64)]
    pub apply_concurrency: usize,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub timeout_secs: u64,
    /// Folder for the simulator, the ledger and the logs (default: a new temporary folder).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

/// What one kind's benchmark creates.
pub struct Fleet {
    /// Names the namespace and the work folder (`qm-bench-<what>-<pid>`).
    pub what: &'static str,
    /// How many objects.
    pub n: usize,
    /// The shared settings.
    pub args: FleetArgs,
    /// The simulator's arguments after `--listen` and `--state` (None: no simulator).
    pub sim_args: Option<Vec<String>>,
    /// The credentials Secret (`metadata.name`, `stringData`), made in the namespace.
    pub secret: Value,
    /// The account's ProviderConfig, before and for the resync.
    pub provider_config: MakeProviderConfig,
    /// The objects.
    pub object: MakeObject,
    /// What the objects need, made first (not measured).
    pub prepare: Option<Prepare>,
    /// The controller's arguments after `run` and its address.
    pub controller_args: Vec<String>,
    /// What the benchmark measures after the harness (its rows are in [`Figures::after`]).
    pub after: Option<After>,
}

/// What the harness measured.
pub struct Figures {
    /// From the first create to every object Ready, and when the last poll saw them Ready.
    pub created: Duration,
    /// When every object was seen Ready.
    pub ready: Duration,
    /// Vendor calls while creating.
    pub create_calls: u64,
    /// The controller's peak RSS while creating, KiB.
    pub peak_create: u64,
    /// The resync's duration.
    pub resync: Duration,
    /// Vendor calls in the resync.
    pub calls: u64,
    /// The kind's status writes in the resync.
    pub writes: u64,
    /// API server writes in the resync (all).
    pub api_writes: f64,
    /// The controller's CPU in the resync, seconds.
    pub cpu: f64,
    /// The controller's peak and final RSS, KiB.
    pub rss: (u64, u64),
    /// The controller's counters before and after the resync.
    pub counters: (BTreeMap<String, u64>, BTreeMap<String, u64>),
    /// The rows [`Fleet::after`] returned.
    pub after: Vec<String>,
}

/// Runs the fleet benchmark of kind `K`; `exe` is the `quartermaster` binary.
pub async fn run<K: Managed>(f: Fleet, exe: PathBuf) -> Result<Figures, BoxError> {
    let config = kube::Config::infer().await?;
    let own = KubeMetrics::register(&prometheus::Registry::new());
    let client = crate::kube_client::client(config, KubeLimits { qps: 0, burst: 0 }, Some(own))?;
    let work = f.args.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("qm-bench-{}-{}", f.what, std::process::id()))
    });
    std::fs::create_dir_all(&work)?;
    let http = reqwest::Client::new();
    let (_sim, sim_url) = match &f.sim_args {
        Some(args) => {
            let port = free_port()?;
            let mut all = vec![
                "sim".into(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--state".into(),
                work.join("sim.json").display().to_string(),
            ];
            all.extend(args.iter().cloned());
            let sim = spawn(&exe, &all, &work.join("sim.log"), &[])?;
            let url = format!("http://127.0.0.1:{port}");
            wait_for(&format!("{url}/_sim/stats"), &http).await?;
            (Some(sim), url)
        }
        None => (None, String::new()),
    };
    let vendor_calls = || async {
        match f.sim_args {
            Some(_) => Ok::<_, BoxError>(total(&sim_calls(&http, &sim_url).await?)),
            None => Ok(0),
        }
    };

    let ssa = PatchParams::apply("quartermaster-bench").force();
    let ns = crds_and_namespace(&client, f.what).await?;
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &serde_json::from_value(f.secret)?)
        .await?;
    let pcs: Api<ProviderConfig> = Api::all(client.clone());
    let pc = |step| Patch::Apply((f.provider_config)(&ns, &sim_url, step));
    pcs.patch(&ns, &ssa, &pc(0)).await?;

    let (controller, metrics_url) =
        spawn_controller(&exe, &work, &http, &f.controller_args).await?;
    let pid = controller.0.id();

    // What the objects need is made first; its vendor calls are not the objects'.
    let prepared_calls = match &f.prepare {
        Some(prepare) => {
            prepare(client.clone(), ns.clone()).await?;
            vendor_calls().await?
        }
        None => 0,
    };
    let objects: Api<K> = K::api(client.clone(), Some(&ns));
    let started = Instant::now();
    futures::stream::iter(0..f.n)
        .map(|i| {
            let (objects, object, ns) = (objects.clone(), &f.object, &ns);
            async move {
                let o: K = serde_json::from_value(object(i, ns))?;
                objects.create(&PostParams::default(), &o).await?;
                Ok::<_, BoxError>(())
            }
        })
        .buffer_unordered(f.args.apply_concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    let timeout = Duration::from_secs(f.args.timeout_secs);
    let ready = wait_all_ready(&objects, f.n, timeout).await?;
    let created = started.elapsed();
    let (peak_create, _) = rss_kib(pid);
    let create_calls = vendor_calls().await? - prepared_calls;
    tokio::time::sleep(Duration::from_secs(5)).await;

    let reconciles = format!("quartermaster_reconciles_total{{kind=\"{}\"}}", K::KIND);
    let before = controller_counters(&http, &metrics_url, &["quartermaster_"]).await?;
    let api_before = apiserver_requests(&client).await?;
    let calls_before = vendor_calls().await?;
    let cpu_before = cpu_secs(pid);
    let resync_started = Instant::now();
    pcs.patch(&ns, &ssa, &pc(1)).await?;
    let deadline = Instant::now() + timeout;
    loop {
        let now =
            controller_counters(&http, &metrics_url, &["quartermaster_reconciles_total"]).await?;
        if count(&now, &reconciles) >= count(&before, &reconciles) + f.n as u64 {
            break;
        }
        if Instant::now() > deadline {
            return Err("the resync did not finish".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let resync = resync_started.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = controller_counters(&http, &metrics_url, &["quartermaster_"]).await?;
    let (_, api_writes) = reads_writes(&api_before, &apiserver_requests(&client).await?);
    let writes_of = format!("quartermaster_status_writes_total{{kind=\"{}\"}}", K::KIND);
    let calls = vendor_calls().await? - calls_before;
    let cpu = cpu_secs(pid) - cpu_before;
    let rss = rss_kib(pid);
    let after_rows = match &f.after {
        Some(after) => {
            after(Running {
                sim_url: sim_url.clone(),
                metrics_url: metrics_url.clone(),
                ns: ns.clone(),
            })
            .await?
        }
        None => Vec::new(),
    };
    Ok(Figures {
        created,
        ready,
        create_calls,
        peak_create,
        resync,
        calls,
        writes: count(&after, &writes_of) - count(&before, &writes_of),
        api_writes,
        cpu,
        rss,
        counters: (before, after),
        after: after_rows,
    })
}

/// The rows every fleet benchmark prints after its own: the resync's API server writes, CPU, and the
/// controller's memory.
pub fn print_common(f: &Figures) {
    println!(
        "| API server writes in that resync (all, incl. the ProviderConfig's own) | {:.0} |",
        f.api_writes
    );
    println!("| controller CPU in that resync | {:.1} s |", f.cpu);
    println!(
        "| controller peak RSS while creating / overall, RSS at the end | {} MB / {} MB, {} MB |",
        f.peak_create / 1024,
        f.rss.0 / 1024,
        f.rss.1 / 1024
    );
}
