//! `quartermaster bench reconcile`: converges N VirtualMachines against a running API server and prints
//! figures — never a pass/fail. It starts `quartermaster sim` (zero delays, optional latency) and the
//! controller (`quartermaster run`, default settings, embedded SQLite ledger) as child processes, applies
//! N VMs in one Project, and reports: time until all are Ready, Kubernetes reads and writes per VM (from
//! the API server's own `/metrics`, minus the benchmark's own requests, and from the controller's
//! `quartermaster_kube_requests_total`), vendor calls per VM (the simulator's counters), writes during a
//! quiet period afterwards, the controller's peak RSS, and — in the same run — the raw limit: a plain
//! client creating N objects of a bare CRD and patching each status once.
//!
//! `scripts/bench reconcile` starts a throwaway API server and runs this against it.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::runtime::{WatchStreamExt, watcher};

use crate::crd::conditions::{self, ConditionStatus};
use crate::crd::{Project, ProviderConfig, VirtualMachine};
use crate::kube_client::{KubeLimits, KubeMetrics};

pub mod fleet;
pub mod gateway;
pub mod proxies;
pub mod simcards;
pub mod snapshots;
pub mod subscriptions;
pub mod token_budgets;
pub mod traffic;

/// Benchmark settings.
#[derive(Clone, Debug, clap::Args)]
pub struct ReconcileBench {
    /// Number of VirtualMachines.
    #[arg(long, default_value_t = 1000)]
    pub vms: usize,
    /// Latency the simulator adds to every vendor call, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub vendor_latency_ms: u64,
    /// Seconds to watch for writes after all VMs are Ready (target: none).
    #[arg(long, default_value_t = 60)]
    pub quiet_secs: u64,
    /// Requests the benchmark's own client keeps in flight while applying objects.
    #[arg(long, default_value_t = 64)]
    pub apply_concurrency: usize,
    /// Give up waiting for Ready after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout_secs: u64,
    /// After the quiet period, put DigitalOcean's documented rate limit (1 request a second, a burst of
    /// 180) on the account for this many seconds and print the vendor calls per minute and the oldest
    /// observation age (0: skip).
    #[arg(long, default_value_t = 0)]
    pub rate_limited_secs: u64,
    /// Folder for the simulator state, the ledger and the logs (default: a new temporary folder).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Extra arguments for `quartermaster run` (e.g. `--vm-concurrency=256`), space-separated.
    #[arg(long, default_value = "")]
    pub controller_args: String,
    /// `MALLOC_ARENA_MAX` for the controller, as the Helm chart sets it (`mallocArenaMax`); empty for
    /// glibc's default.
    #[arg(long, default_value = "2")]
    pub malloc_arena_max: String,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The benchmarks `quartermaster bench` runs (each prints its figures; see BENCHMARKS.md).
#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Converge N VirtualMachines on the API server of KUBECONFIG (a throwaway one: see
    /// `scripts/bench reconcile`), with `quartermaster sim` and the controller started as children.
    Reconcile(ReconcileBench),
    /// Claim N SimCards on a simulated 1NCE account, then measure a resync of all of them at 1NCE's
    /// 10 requests a second (see `scripts/bench simcards`).
    Simcards(simcards::SimBench),
    /// Create N Subscriptions on one Stripe account of the simulator, then measure a resync of all of
    /// them at Stripe's 25 requests a second (see `scripts/bench subscriptions`).
    Subscriptions(subscriptions::SubscriptionBench),
    /// The LLM gateway's added latency (p50, p99), CPU per request, highest sustained rate and streaming
    /// delays, against the simulator's upstream, each proxy its own process (see `scripts/bench gateway`).
    Gateway(gateway::GatewayBench),
    /// One proxy of the gateway benchmark, as its own process (started by `bench gateway`).
    #[command(hide = true)]
    Proxy(proxies::ProxyArgs),
    /// Create N TokenBudgets (one API key each), then measure a resync of all of them (see
    /// `scripts/bench tokenbudgets`).
    Tokenbudgets(token_budgets::BudgetBench),
    /// Take N VirtualMachineSnapshots (one of each of N VirtualMachines made first), then measure a
    /// resync of all of them (see `scripts/bench snapshots`).
    Snapshots(snapshots::SnapshotBench),
    /// N VirtualMachines on one account, then rounds of reading their outbound transfer (and opted-in
    /// metrics) at the account's rate limit (see `scripts/bench traffic`).
    Traffic(traffic::TrafficBench),
}

/// Runs one benchmark; `exe` is this binary (started again as the controller, the simulator or a proxy).
pub async fn run(cmd: BenchCommand, exe: PathBuf) -> Result<(), BoxError> {
    match cmd {
        BenchCommand::Reconcile(b) => reconcile(b, exe).await,
        BenchCommand::Simcards(b) => simcards::simcards(b, exe).await,
        BenchCommand::Subscriptions(b) => subscriptions::subscriptions(b, exe).await,
        BenchCommand::Gateway(b) => gateway::run(b, exe).await,
        BenchCommand::Proxy(p) => proxies::proxy(p).await,
        BenchCommand::Tokenbudgets(b) => token_budgets::token_budgets(b, exe).await,
        BenchCommand::Snapshots(b) => snapshots::snapshots(b, exe).await,
        BenchCommand::Traffic(b) => traffic::traffic(b, exe).await,
    }
}

/// Wait between the last VM Ready and the quiet period.
const SETTLE: Duration = Duration::from_secs(5);

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(
    exe: &Path,
    args: &[String],
    log: &Path,
    env: &[(&str, String)],
) -> Result<Proc, BoxError> {
    let out = std::fs::File::create(log)?;
    let mut c = Command::new(exe);
    c.args(args)
        .stdout(Stdio::from(out.try_clone()?))
        .stderr(Stdio::from(out));
    for (k, v) in env {
        c.env(k, v);
    }
    Ok(Proc(c.spawn()?))
}

/// Applies every CRD (server-side), then creates the benchmark's namespace `qm-bench-<what>-<pid>` and
/// returns its name.
async fn crds_and_namespace(client: &kube::Client, what: &str) -> Result<String, BoxError> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let ssa = PatchParams::apply("quartermaster-bench").force();
    for crd in crate::crd::all_crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(&name, &ssa, &Patch::Apply(&crd)).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ns = format!("qm-bench-{what}-{}", std::process::id());
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?,
        )
        .await?;
    Ok(ns)
}

/// `quartermaster run` on its defaults as a child process (no leader election, its SQLite ledger and
/// log in `work`, `MALLOC_ARENA_MAX=2` as the chart sets it), once its metrics answer: the process and
/// its metrics URL.
async fn spawn_controller(
    exe: &Path,
    work: &Path,
    http: &reqwest::Client,
    extra: &[String],
) -> Result<(Proc, String), BoxError> {
    let http_port = free_port()?;
    let metrics_url = format!("http://127.0.0.1:{http_port}/metrics");
    let mut args = vec![
        "run".into(),
        "--http-addr".into(),
        format!("127.0.0.1:{http_port}"),
        "--leader-elect=false".into(),
    ];
    args.extend(extra.iter().cloned());
    let controller = spawn(
        exe,
        &args,
        &work.join("controller.log"),
        &[
            (
                "QM_LEDGER_PATH",
                work.join("ledger.db").display().to_string(),
            ),
            ("MALLOC_ARENA_MAX", "2".into()),
        ],
    )?;
    wait_for(&metrics_url, http).await?;
    Ok((controller, metrics_url))
}

/// Requests the API server counted, by verb (its `apiserver_request_total`).
async fn apiserver_requests(client: &kube::Client) -> Result<BTreeMap<String, f64>, BoxError> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    let mut by_verb = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let verb = labels
            .split(',')
            .find_map(|l| l.trim_start_matches('{').strip_prefix("verb=\""))
            .map(|v| v.trim_end_matches(['"', '}']).to_string())
            .unwrap_or_default();
        *by_verb.entry(verb).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    Ok(by_verb)
}

const READ_VERBS: &[&str] = &["GET", "LIST", "WATCH"];

/// (reads, writes) from an `apiserver_request_total` difference.
fn reads_writes(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> (f64, f64) {
    let mut r = 0.0;
    let mut w = 0.0;
    for (verb, v) in after {
        let d = v - before.get(verb).copied().unwrap_or(0.0);
        if READ_VERBS.contains(&verb.as_str()) {
            r += d;
        } else {
            w += d;
        }
    }
    (r, w)
}

/// The controller's counters whose lines start with one of `prefixes` (name and labels → value).
async fn controller_counters(
    http: &reqwest::Client,
    url: &str,
    prefixes: &[&str],
) -> Result<BTreeMap<String, u64>, BoxError> {
    let text = http.get(url).send().await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
        .filter_map(|l| {
            let (labels, v) = l.rsplit_once(' ')?;
            Some((labels.to_string(), v.parse::<f64>().ok()? as u64))
        })
        .collect())
}

/// The controller's counters the benchmark breaks down: Kubernetes requests by verb and resource, and
/// reconciles (and their errors) by kind.
const BREAKDOWN: &[&str] = &[
    "quartermaster_kube_requests_total{",
    "quartermaster_reconciles_total{",
    "quartermaster_reconcile_errors_total{",
];

/// (reads, writes) the controller reports sending, from its counters (`quartermaster_kube_requests_total`).
fn controller_requests(counters: &BTreeMap<String, u64>) -> (u64, u64) {
    let (mut r, mut w) = (0, 0);
    for (labels, v) in counters
        .iter()
        .filter(|(l, _)| l.starts_with("quartermaster_kube_requests_total{"))
    {
        if ["verb=\"get\"", "verb=\"list\"", "verb=\"watch\""]
            .iter()
            .any(|x| labels.contains(x))
        {
            r += v;
        } else {
            w += v;
        }
    }
    (r, w)
}

/// The benchmark's own reads and writes so far.
fn own_requests(m: &KubeMetrics) -> (f64, f64) {
    const RESOURCES: &[&str] = &[
        "virtualmachines",
        "projects",
        "providerconfigs",
        "secrets",
        "namespaces",
        "customresourcedefinitions",
        "other",
    ];
    let sum = |verbs: &[&str]| -> f64 {
        verbs
            .iter()
            .flat_map(|v| RESOURCES.iter().map(move |r| m.count(v, r)))
            .sum::<u64>() as f64
    };
    (
        sum(&["get", "list", "watch"]),
        sum(&["create", "update", "patch", "delete"]),
    )
}

/// CPU seconds a process used so far (user + system).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at its closing parenthesis.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line (11 and 12 after the name).
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds used so far by every thread of process `pid`, at nanosecond resolution (the sum of
/// the first field of each `/proc/PID/task/TID/schedstat`); 0 if it cannot be read.
fn task_cpu_secs(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

async fn sim_calls(
    http: &reqwest::Client,
    url: &str,
) -> Result<crate::sim::StatsSnapshot, BoxError> {
    Ok(http
        .get(format!("{url}/_sim/stats"))
        .send()
        .await?
        .json()
        .await?)
}

/// Runs the benchmark and prints its figures; `exe` is the `quartermaster` binary to start children from.
pub async fn reconcile(b: ReconcileBench, exe: PathBuf) -> Result<(), BoxError> {
    let config = kube::Config::infer().await?;
    let own = KubeMetrics::register(&prometheus::Registry::new());
    let client =
        crate::kube_client::client(config, KubeLimits { qps: 0, burst: 0 }, Some(own.clone()))?;
    let work = match &b.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => std::env::temp_dir().join(format!("qm-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work)?;
    let n = b.vms;
    println!(
        "# quartermaster bench reconcile --vms {n} (vendor latency {} ms, controller args {:?}, MALLOC_ARENA_MAX {:?})",
        b.vendor_latency_ms, b.controller_args, b.malloc_arena_max
    );
    println!("work dir: {}", work.display());

    // The simulator: zero delays.
    let sim_port = free_port()?;
    let sim_url = format!("http://127.0.0.1:{sim_port}");
    let _sim = spawn(
        &exe,
        &[
            "sim".into(),
            "--listen".into(),
            format!("127.0.0.1:{sim_port}"),
            "--state".into(),
            work.join("sim.json").display().to_string(),
            "--provision-secs=0".into(),
            "--power-secs=0".into(),
            "--resize-secs=0".into(),
            "--delete-secs=0".into(),
            format!("--latency-ms={}", b.vendor_latency_ms),
        ],
        &work.join("sim.log"),
        &[],
    )?;
    let http = reqwest::Client::new();
    wait_for(&format!("{sim_url}/_sim/stats"), &http).await?;

    // CRDs, namespace, credentials, ProviderConfig, Project.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let ssa = PatchParams::apply("quartermaster-bench").force();
    for crd in crate::crd::all_crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(&name, &ssa, &Patch::Apply(&crd)).await?;
    }
    crds.patch(
        "benchwidgets.bench.quartermaster.dev",
        &ssa,
        &Patch::Apply(&bare_crd()),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ns = format!("qm-bench-{}", std::process::id());
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?,
    )
    .await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "do-token"}, "stringData": {"token": "bench-token"}
            }))?,
        )
        .await?;
    let pcs: Api<ProviderConfig> = Api::all(client.clone());
    let pc_name = ns.clone();
    pcs.patch(
        &pc_name,
        &ssa,
        &Patch::Apply(serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
            "metadata": {"name": pc_name},
            "spec": {"type": "digitalocean", "endpoint": sim_url,
                     "credentialsSecretRef": {"name": "do-token", "namespace": ns, "key": "token"}}
        })),
    )
    .await?;
    let projects: Api<Project> = Api::namespaced(client.clone(), &ns);
    projects
        .patch(
            "bench",
            &ssa,
            &Patch::Apply(serde_json::json!({
                "apiVersion": "quartermaster.dev/v1alpha1", "kind": "Project",
                "metadata": {"name": "bench"},
                "spec": {"currency": "USD", "limits": {"maxVirtualMachines": n}}
            })),
        )
        .await?;

    // The controller, on its defaults.
    let http_port = free_port()?;
    let metrics_url = format!("http://127.0.0.1:{http_port}/metrics");
    let mut args = vec![
        "run".to_string(),
        "--http-addr".into(),
        format!("127.0.0.1:{http_port}"),
        "--leader-elect=false".into(),
    ];
    args.extend(b.controller_args.split_whitespace().map(str::to_string));
    let mut env = vec![(
        "QM_LEDGER_PATH",
        work.join("ledger.db").display().to_string(),
    )];
    if !b.malloc_arena_max.is_empty() {
        env.push(("MALLOC_ARENA_MAX", b.malloc_arena_max.clone()));
    }
    let controller = spawn(&exe, &args, &work.join("controller.log"), &env)?;
    let pid = controller.0.id();
    wait_for(&metrics_url, &http).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Apply N VMs and wait until all are Ready.
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &ns);
    let api_before = apiserver_requests(&client).await?;
    let own_before = own_requests(&own);
    let breakdown_before = controller_counters(&http, &metrics_url, BREAKDOWN).await?;
    let ctl_before = controller_requests(&breakdown_before);
    let sim_before = sim_calls(&http, &sim_url).await?;
    let started = Instant::now();
    let ready = tokio::spawn(wait_ready(vms.clone(), n, started));
    futures::stream::iter(0..n)
        .map(|i| {
            let vms = vms.clone();
            let pc = pc_name.clone();
            async move {
                let vm: VirtualMachine = serde_json::from_value(serde_json::json!({
                    "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachine",
                    "metadata": {"name": format!("vm-{i:05}")},
                    "spec": {"providerConfigRef": {"name": pc}, "projectRef": {"name": "bench"},
                             "region": "fra1", "size": "s-1vcpu-1gb", "image": "debian-12-x64"}
                }))?;
                vms.create(&PostParams::default(), &vm).await?;
                Ok::<_, BoxError>(())
            }
        })
        .buffer_unordered(b.apply_concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    let applied = started.elapsed();
    let all_ready = tokio::time::timeout(Duration::from_secs(b.timeout_secs), ready)
        .await
        .map_err(|_| format!("not all {n} VMs were Ready after {} s", b.timeout_secs))???;
    let api_after = apiserver_requests(&client).await?;
    let own_after = own_requests(&own);
    let breakdown_after = controller_counters(&http, &metrics_url, BREAKDOWN).await?;
    let ctl_after = controller_requests(&breakdown_after);
    let sim_after = sim_calls(&http, &sim_url).await?;
    let (peak_converge, _) = rss_kib(pid);
    let (ctl_cpu, sim_cpu) = (cpu_secs(pid), cpu_secs(_sim.0.id()));

    // A quiet period: nothing changes, nothing should be written. It starts a few seconds after the last
    // VM is Ready, so the Project's debounced recount of its members (part of converging) is not in it.
    tokio::time::sleep(SETTLE).await;
    let (_, quiet_api_before) = reads_writes(&BTreeMap::new(), &apiserver_requests(&client).await?);
    let quiet_own_before = own_requests(&own).1;
    let quiet_breakdown_before = controller_counters(&http, &metrics_url, BREAKDOWN).await?;
    let quiet_ctl_before = controller_requests(&quiet_breakdown_before);
    tokio::time::sleep(Duration::from_secs(b.quiet_secs)).await;
    let (_, quiet_api_after) = reads_writes(&BTreeMap::new(), &apiserver_requests(&client).await?);
    let quiet_own_after = own_requests(&own).1;
    let quiet_breakdown_after = controller_counters(&http, &metrics_url, BREAKDOWN).await?;
    let quiet_ctl_after = controller_requests(&quiet_breakdown_after);
    let limited = if b.rate_limited_secs > 0 {
        Some(
            rate_limited(
                &pcs,
                &pc_name,
                &http,
                &sim_url,
                &metrics_url,
                b.rate_limited_secs,
            )
            .await?,
        )
    } else {
        None
    };
    let (peak, rss) = rss_kib(pid);
    drop(controller);

    // The raw limit, same API server, same run (controller stopped).
    let raw = raw_limit(&client, &ns, n, b.apply_concurrency).await?;

    let (api_r, api_w) = reads_writes(&api_before, &api_after);
    let (own_r, own_w) = (own_after.0 - own_before.0, own_after.1 - own_before.1);
    let per = |x: f64| x / n as f64;
    let vendor =
        |f: fn(&crate::sim::StatsSnapshot) -> u64| per((f(&sim_after) - f(&sim_before)) as f64);
    println!();
    println!("| measurement | result |");
    println!("|---|---|");
    println!("| VMs | {n} |");
    println!(
        "| time to apply all (benchmark client, {} in flight) | {:.1} s |",
        b.apply_concurrency,
        applied.as_secs_f64()
    );
    println!(
        "| **time until all Ready** (from the first apply) | **{:.1} s** |",
        all_ready.as_secs_f64()
    );
    println!(
        "| Kubernetes reads per VM (API server, minus the benchmark's own) | {:.2} |",
        per(api_r - own_r)
    );
    println!(
        "| Kubernetes writes per VM (API server, minus the benchmark's own) | {:.2} |",
        per(api_w - own_w)
    );
    println!(
        "| controller's own count: reads / writes per VM | {:.2} / {:.2} |",
        per((ctl_after.0 - ctl_before.0) as f64),
        per((ctl_after.1 - ctl_before.1) as f64)
    );
    println!(
        "| vendor calls per VM: reads / creates+actions / deletes | {:.2} / {:.2} / {:.2} |",
        vendor(|s| s.get),
        vendor(|s| s.post),
        vendor(|s| s.delete)
    );
    println!(
        "| writes during {} quiet seconds, from {} s after the last Ready (API server / controller's count) | {} / {} |",
        b.quiet_secs,
        SETTLE.as_secs(),
        (quiet_api_after - quiet_api_before) - (quiet_own_after - quiet_own_before),
        quiet_ctl_after.1 - quiet_ctl_before.1
    );
    println!(
        "| controller peak RSS (while converging / overall) , RSS at the end | {} MB / {} MB, {} MB |",
        peak_converge / 1024,
        peak / 1024,
        rss / 1024
    );
    println!(
        "| CPU used while converging: controller / simulator | {ctl_cpu:.1} s / {sim_cpu:.1} s |"
    );
    println!(
        "| raw limit: create {n} bare objects + patch each status once ({} in flight) | {:.1} s |",
        b.apply_concurrency,
        raw.as_secs_f64()
    );
    if let Some(l) = limited {
        println!(
            "| with DigitalOcean's documented limit on (1/s, burst 180) for {} s: vendor calls per minute / account listings / oldest observation age at worst | {:.1} / {} / {} s |",
            b.rate_limited_secs, l.calls_per_minute, l.listings, l.oldest_age_secs
        );
    }
    println!();
    println!("Controller requests and reconciles per VM while converging:");
    for (labels, v) in &breakdown_after {
        let d = v - breakdown_before.get(labels).copied().unwrap_or(0);
        if d > 0 {
            println!("  {labels}: {:.2}", per(d as f64));
        }
    }
    println!("Controller requests and reconciles during the quiet period:");
    for (labels, v) in &quiet_breakdown_after {
        let d = v - quiet_breakdown_before.get(labels).copied().unwrap_or(0);
        if d > 0 {
            println!("  {labels}: {d}");
        }
    }
    println!("(namespace {ns} is left behind; the API server is throwaway)");
    Ok(())
}

/// What the rate-limited period showed.
struct Limited {
    calls_per_minute: f64,
    listings: u64,
    oldest_age_secs: i64,
}

/// Puts DigitalOcean's documented limit on the account for `secs` and watches the vendor calls and the
/// age of the oldest observation (from the controller's oldest account listing, sampled every second).
async fn rate_limited(
    pcs: &Api<ProviderConfig>,
    pc_name: &str,
    http: &reqwest::Client,
    sim_url: &str,
    metrics_url: &str,
    secs: u64,
) -> Result<Limited, BoxError> {
    pcs.patch(
        pc_name,
        &PatchParams::default(),
        &Patch::Merge(
            serde_json::json!({"spec": {"rateLimit": {"requestsPerSecond": 1, "burst": 180}}}),
        ),
    )
    .await?;
    let total = |s: &crate::sim::StatsSnapshot| s.get + s.post + s.delete + s.other;
    let listings = |c: &BTreeMap<String, u64>| {
        c.get("quartermaster_account_listings_total")
            .copied()
            .unwrap_or(0)
    };
    const GAUGES: &[&str] = &[
        "quartermaster_account_listings_total",
        "quartermaster_oldest_account_listing_timestamp_seconds",
    ];
    let before = total(&sim_calls(http, sim_url).await?);
    let listed_before = listings(&controller_counters(http, metrics_url, GAUGES).await?);
    let started = Instant::now();
    let mut oldest_age_secs = 0;
    let mut last = BTreeMap::new();
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        last = controller_counters(http, metrics_url, GAUGES).await?;
        let at = last
            .get("quartermaster_oldest_account_listing_timestamp_seconds")
            .copied()
            .unwrap_or(0);
        if at > 0 {
            let age = jiff::Timestamp::now().as_second() - i64::try_from(at).unwrap_or(0);
            oldest_age_secs = oldest_age_secs.max(age);
        }
    }
    let calls = total(&sim_calls(http, sim_url).await?) - before;
    Ok(Limited {
        calls_per_minute: calls as f64 * 60.0 / started.elapsed().as_secs_f64(),
        listings: listings(&last) - listed_before,
        oldest_age_secs,
    })
}

/// Waits until `url` answers.
async fn wait_for(url: &str, http: &reqwest::Client) -> Result<(), BoxError> {
    for _ in 0..300 {
        if http.get(url).send().await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{url} did not answer").into())
}

/// Watches until `n` VMs are Ready at their current generation; the time since `started`.
async fn wait_ready(
    vms: Api<VirtualMachine>,
    n: usize,
    started: Instant,
) -> Result<Duration, BoxError> {
    let mut ready = HashSet::new();
    let mut stream = watcher(vms, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(vm) = stream.try_next().await? {
        let name = vm.metadata.name.clone().unwrap_or_default();
        let is_ready = vm.status.as_ref().is_some_and(|s| {
            s.observed_generation == vm.metadata.generation
                && conditions::find(&s.conditions, conditions::READY)
                    .is_some_and(|c| c.status == ConditionStatus::True)
        });
        if is_ready {
            ready.insert(name);
            if ready.len() >= n {
                return Ok(started.elapsed());
            }
        } else {
            ready.remove(&name);
        }
    }
    Err("the watch ended".into())
}

/// A bare namespaced CRD with a status subresource (the raw-limit baseline).
fn bare_crd() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "benchwidgets.bench.quartermaster.dev"},
        "spec": {
            "group": "bench.quartermaster.dev", "scope": "Namespaced",
            "names": {"plural": "benchwidgets", "singular": "benchwidget", "kind": "BenchWidget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]
        }
    })
}

/// Creates `n` bare objects and patches each one's status once; the time it took.
async fn raw_limit(
    client: &kube::Client,
    ns: &str,
    n: usize,
    in_flight: usize,
) -> Result<Duration, BoxError> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("bench.quartermaster.dev", "v1", "BenchWidget"),
        "benchwidgets",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let name = format!("w-{i:05}");
                let obj: DynamicObject = serde_json::from_value(serde_json::json!({
                    "apiVersion": "bench.quartermaster.dev/v1", "kind": "BenchWidget",
                    "metadata": {"name": name}, "spec": {"size": "s-1vcpu-1gb"}
                }))?;
                api.create(&PostParams::default(), &obj).await?;
                api.patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"status": {"phase": "Ready"}})),
                )
                .await?;
                Ok::<_, BoxError>(())
            }
        })
        .buffer_unordered(in_flight)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(started.elapsed())
}

/// Every API call the simulator served.
pub(crate) fn total(s: &crate::sim::StatsSnapshot) -> u64 {
    s.get + s.post + s.delete + s.other
}

/// The sum of the counters whose name starts with `prefix`.
pub(crate) fn count(counters: &std::collections::BTreeMap<String, u64>, prefix: &str) -> u64 {
    counters
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

/// Waits until `n` objects of `api` are Ready at their generation (polling a list every 2 s).
pub(crate) async fn wait_all_ready<K>(
    api: &kube::Api<K>,
    n: usize,
    timeout: Duration,
) -> Result<Duration, BoxError>
where
    K: crate::controller::runtime::framework::Managed,
{
    use crate::crd::ObjectStatus;
    let started = std::time::Instant::now();
    loop {
        let list = api.list(&Default::default()).await?;
        let ready = list
            .items
            .iter()
            .filter(|o| {
                o.status().is_some_and(|st| {
                    st.observed_generation() == o.meta().generation
                        && crate::crd::conditions::find(
                            st.conditions(),
                            crate::crd::conditions::READY,
                        )
                        .is_some_and(|c| c.status == crate::crd::conditions::ConditionStatus::True)
                })
            })
            .count();
        if ready >= n {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            return Err(format!(
                "{ready} of {n} {} Ready after {} s",
                K::KIND,
                timeout.as_secs()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
