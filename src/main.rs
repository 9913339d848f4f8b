//! The `quartermaster` binary: command-line parsing and wiring only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use futures::FutureExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use quartermaster::ledger::store::ProjectRef;

use quartermaster::controller::runtime::leader::{LeaderElector, LeaseTimings};
use quartermaster::controller::{self, Context, ControllerConfig};
use quartermaster::crd;
use quartermaster::metrics::Metrics;
use quartermaster::server::{self, Readiness, Role};
use quartermaster::telemetry::{self, LogFormat};

/// mimalloc instead of the C library's allocator: a gateway request allocates some 90 times and frees
/// as often, and glibc's malloc and free were a fifth of its instructions (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "quartermaster",
    version,
    about = "Kubernetes operator for metered, billed infrastructure"
)]
struct Cli {
    /// Log format (filter with RUST_LOG, default info).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "json",
        env = "QM_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(flatten)]
    db: DbArgs,
    #[command(subcommand)]
    command: Command,
}

/// Where the usage ledger lives.
#[derive(clap::Args)]
struct DbArgs {
    /// PostgreSQL (`postgres://…`) or SQLite (`sqlite://…`) URL of the usage ledger; without it, an embedded
    /// SQLite file (see --ledger-path).
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The embedded SQLite ledger file used when no --database-url is given.
    #[arg(long, global = true, env = "QM_LEDGER_PATH")]
    ledger_path: Option<PathBuf>,
}

impl DbArgs {
    /// The migrated ledger and the UID of a project it has records of (`uid` if given, else the one it
    /// recorded most recently for that name; else a clear "unknown project" error).
    async fn ledger_for(
        &self,
        ns: &str,
        name: &str,
        uid: Option<String>,
    ) -> Result<(quartermaster::ledger::Ledger, String), Box<dyn std::error::Error>> {
        let l = self.ledger().await?;
        l.migrate().await?;
        let uid = match uid {
            Some(u) => u,
            None => l.project_uid_of(ns, name).await?.ok_or_else(|| {
                format!("unknown project {ns}/{name}: the ledger has no usage or credit for it")
            })?,
        };
        Ok((l, uid))
    }

    async fn ledger(&self) -> Result<quartermaster::ledger::Ledger, Box<dyn std::error::Error>> {
        let default = self.ledger_path.clone().unwrap_or_else(|| {
            let base = std::env::var_os("XDG_DATA_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".local/share")
                });
            base.join("quartermaster/ledger.db")
        });
        let l = quartermaster::ledger::Ledger::connect(self.database_url.as_deref(), &default)
            .await
            .map_err(|e| format!("cannot open the usage ledger: {e}"))?;
        Ok(l)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers and the metrics/health HTTP server.
    Run(RunArgs),
    /// Print every CRD as multi-document YAML, or write one file per kind with --out.
    Crds {
        /// Folder to write `<plural>.quartermaster.dev.yaml` files into.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run the vendor simulator (DigitalOcean API subset) on a loopback address.
    Sim(quartermaster::sim::SimConfig),
    /// Run the OpenAI-compatible LLM gateway: TokenBudget keys, budgets held across replicas through
    /// the ledger (PostgreSQL when more than one replica runs), usage metered to the ledger.
    Gateway(quartermaster::gateway::GatewayConfig),
    /// Apply the usage ledger's database migrations.
    Migrate,
    /// Usage of a project for a month, grouped by meter, object or day, with the tenant's amount, the
    /// vendor's cost and the margin.
    Usage {
        /// The project, as NAMESPACE/NAME.
        #[arg(
            long,
            required_unless_present = "namespace",
            conflicts_with = "namespace"
        )]
        project: Option<String>,
        /// Instead of a Project: the usage in this namespace billed to no Project (VMs and SIMs without
        /// `projectRef`, where their ProviderConfig does not require one).
        #[arg(long, conflicts_with = "project_uid")]
        namespace: Option<String>,
        /// The Project's UID, for a Project deleted and recreated under the same name (default: the
        /// one the ledger recorded most recently).
        #[arg(long = "project-uid")]
        project_uid: Option<String>,
        /// The month, YYYY-MM (default: the current month, UTC).
        #[arg(long)]
        period: Option<String>,
        /// Grouping.
        #[arg(long, value_enum, default_value = "meter")]
        by: quartermaster::ledger::store::GroupBy,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        output: quartermaster::output::Format,
    },
    /// An invoice (JSON) of a project for a month: line items per meter and object, and totals; a draft
    /// until `--finalize` closes the month.
    Invoice {
        /// The project, as NAMESPACE/NAME.
        #[arg(long)]
        project: String,
        /// The Project's UID (default: the one the ledger recorded most recently for that name).
        #[arg(long = "project-uid")]
        project_uid: Option<String>,
        /// The month, YYYY-MM (default: the current month, UTC).
        #[arg(long)]
        period: Option<String>,
        /// Close the month (it must have ended): its totals never change again, and usage that arrives
        /// later for it is booked on the next open month as an adjustment naming it.
        #[arg(long)]
        finalize: bool,
    },
    /// Credit grants and balances.
    #[command(subcommand)]
    Credits(Credits),
    /// SMS that devices sent (forwarded by 1NCE to `POST /webhooks/onence/sms`).
    #[command(subcommand)]
    Sms(Sms),
    /// Benchmarks that print figures (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(quartermaster::bench::BenchCommand),
    /// Recent Stripe invoices of a Subscription (read from Stripe through its ProviderConfig).
    Invoices {
        /// The Subscription, as NAMESPACE/NAME.
        #[arg(long)]
        subscription: String,
        /// How many, newest first.
        #[arg(long, default_value_t = 12)]
        limit: u32,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// List a compute vendor's sizes (with prices), images or regions through a ProviderConfig.
    Catalog {
        /// What to list.
        #[arg(value_enum)]
        what: CatalogKind,
        /// The ProviderConfig whose account to ask.
        #[arg(long)]
        provider_config: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Subcommand)]
enum Sms {
    /// The SMS a SimCard's device sent since the SimCard was created (read through KUBECONFIG: the
    /// SimCard must exist and hold its SIM), oldest first.
    List {
        /// The SimCard, as NAMESPACE/NAME.
        #[arg(long)]
        simcard: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        output: quartermaster::output::Format,
    },
}

#[derive(Subcommand)]
enum Credits {
    /// Record a credit entry of a Project that exists (looked up through KUBECONFIG: credit belongs to
    /// its UID, so a Project recreated under the same name starts empty).
    Grant {
        /// The project, as NAMESPACE/NAME.
        #[arg(long)]
        project: String,
        /// Amount, a positive decimal (e.g. 50 or 12.50); an adjustment may be negative.
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
        /// What the entry is: a grant or a payment adds to the balance, a refund takes from it, an
        /// adjustment does either.
        #[arg(long = "type", value_enum, default_value = "grant")]
        kind: quartermaster::ledger::CreditType,
        /// A reference outside Quartermaster (a payment or invoice ID).
        #[arg(long = "external-ref", default_value = "")]
        external_ref: String,
        /// Currency (ISO 4217).
        #[arg(long, default_value = "USD")]
        currency: String,
        /// Why (shown in reports).
        #[arg(long)]
        reason: String,
        /// Idempotency key: running the command again with the same key grants once, so a script
        /// retried after a network error cannot grant twice. Without it every run is a new grant.
        #[arg(long = "idempotency-key", visible_alias = "key")]
        key: Option<String>,
    },
    /// Credit balance of a project: credit entries minus usage.
    Balance {
        /// The project, as NAMESPACE/NAME.
        #[arg(long)]
        project: String,
        /// The Project's UID (default: the one the ledger recorded most recently for that name).
        #[arg(long = "project-uid")]
        project_uid: Option<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CatalogKind {
    Sizes,
    Images,
    Regions,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of the /metrics, /healthz and /readyz server.
    #[arg(long, default_value = "0.0.0.0:8080", env = "QM_HTTP_ADDR")]
    http_addr: SocketAddr,
    /// Take the leader Lease before reconciling (disable only when exactly one replica runs).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "QM_LEADER_ELECT")]
    leader_elect: bool,
    /// Namespace of the leader Lease (default: POD_NAMESPACE, else "default").
    #[arg(long, env = "QM_LEADER_NAMESPACE")]
    leader_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, default_value = "quartermaster-leader", env = "QM_LEADER_NAME")]
    leader_name: String,
    /// Identity in the Lease (default: POD_NAME or hostname, plus the process id).
    #[arg(long, env = "QM_LEADER_IDENTITY")]
    leader_identity: Option<String>,
    /// Lease duration, in seconds.
    #[arg(long, default_value_t = 15)]
    lease_duration_secs: u64,
    /// Renew deadline, in seconds (less than the lease duration).
    #[arg(long, default_value_t = 10)]
    renew_deadline_secs: u64,
    /// Interval between lease attempts, in seconds.
    #[arg(long, default_value_t = 2)]
    retry_period_secs: u64,
    /// Periodic resync of healthy objects, in seconds.
    #[arg(long, default_value_t = 600)]
    resync_secs: u64,
    /// How often an object with vendor work in progress is looked at again, in seconds.
    #[arg(long, default_value_t = 5)]
    poll_interval_secs: u64,
    /// How often each compute account is listed (paged, one listing for all its VMs; start to start)
    /// to see drift at the vendor: a server gone, powered off or resized wakes its VM within this
    /// interval plus the listing's own time (~3 s for 10,000 servers), so under a minute by default.
    #[arg(long, default_value_t = 55)]
    observe_interval_secs: u64,
    /// How often a SimCard at rest reads its quotas and daily usage SIM by SIM, in seconds; between
    /// such reads its account's SIM listing serves it, unless the listing shows its quota moved.
    #[arg(long, default_value_t = 3600)]
    sim_usage_interval_secs: u64,
    /// The shortest interval a VirtualMachineSnapshotPolicy's schedule may have, in seconds: each slot
    /// is a billable snapshot and costs the shared account's rate limit.
    #[arg(long, default_value_t = 3600)]
    min_snapshot_interval_secs: u64,
    /// How often each server's outbound transfer (and, for VMs that opt in, its metrics) is read from
    /// its vendor, in seconds, start to start. A round takes at most half of each account's rate limit,
    /// so a large account's round may take longer than this. Snapshots released to the platform are
    /// followed (as vendor cost) at the same interval.
    #[arg(long, default_value_t = 3600)]
    traffic_interval_secs: u64,
    /// How often a TokenBudget's status (consumed, reserved, remaining, cost) is refreshed from the
    /// ledger, in seconds. Enforcement does not wait for it: the gateway holds budgets itself.
    #[arg(long, default_value_t = 30)]
    budget_status_interval_secs: u64,
    /// Serve `POST /webhooks/onence/usage` for 1NCE's Data Streamer, with HTTP Basic credentials from
    /// this Secret (`NAMESPACE/NAME`, keys `username` and `password`; read at start).
    #[arg(long)]
    onence_streamer_secret: Option<String>,
    /// Serve `POST /webhooks/stripe` for Stripe's events, verified with the signing secrets in this
    /// Secret (`NAMESPACE/NAME`, key `secret`: one `whsec_…`, or several separated by spaces during a
    /// rotation; read at start).
    #[arg(long)]
    stripe_webhook_secret: Option<String>,
    /// How far a Stripe signature's timestamp may be from now, in seconds.
    #[arg(long, default_value_t = quartermaster::cloud::stripe_signature::DEFAULT_TOLERANCE)]
    stripe_webhook_tolerance_secs: i64,
    /// Do not apply ledger migrations at start (run `quartermaster migrate` yourself).
    #[arg(long)]
    no_migrate: bool,
    /// Reconcile only objects matching this label selector (e.g. for sharding). Related objects
    /// (ProviderConfigs, Projects) must match it too.
    #[arg(long, env = "QM_LABEL_SELECTOR")]
    label_selector: Option<String>,
    /// VirtualMachine reconciles that run at once (default 128; same as `--concurrency VirtualMachine=N`).
    #[arg(long, env = "QM_VM_CONCURRENCY")]
    vm_concurrency: Option<u16>,
    /// Project reconciles that run at once (default 4; same as `--concurrency Project=N`).
    #[arg(long, env = "QM_PROJECT_CONCURRENCY")]
    project_concurrency: Option<u16>,
    /// ProviderConfig reconciles that run at once (default 4; same as `--concurrency ProviderConfig=N`).
    #[arg(long, env = "QM_PROVIDER_CONFIG_CONCURRENCY")]
    provider_config_concurrency: Option<u16>,
    /// Reconciles of one kind that run at once, as `Kind=N` (repeatable; 0: unbounded). Each kind has
    /// its own default: VirtualMachine 128, SimCard and Subscription 16, TokenBudget 8, the others 4.
    #[arg(long = "concurrency", value_name = "KIND=N", value_parser = parse_concurrency)]
    concurrency: Vec<(String, u16)>,
    /// Client-side limit on Kubernetes API requests per second (0: none), so a large fleet cannot starve
    /// kubectl and other controllers.
    #[arg(long, default_value_t = 2000, env = "QM_KUBE_QPS")]
    kube_qps: u32,
    /// Kubernetes API requests that may start at once after a quiet period.
    #[arg(long, default_value_t = 4000, env = "QM_KUBE_BURST")]
    kube_burst: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    // NB: exactly one rustls crypto provider is compiled in (ring); install it before any client exists.
    quartermaster::install_crypto_provider();
    match cli.command {
        Command::Crds { out } => match write_crds(out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => block_on("run", run(args, cli.db)),
        Command::Migrate => block_on("migrate", async move {
            let l = cli.db.ledger().await?;
            l.migrate().await?;
            println!("ledger migrated ({})", l.kind());
            Ok(())
        }),
        Command::Usage {
            project,
            namespace,
            project_uid,
            period,
            by,
            output,
        } => block_on("usage", async move {
            let (ns, name, period, from, to) = match (&project, &namespace) {
                (Some(p), _) => project_period(p, period)?,
                // No Project: that namespace's rows billed to none (name and UID empty).
                (None, ns) => {
                    let ns = ns.clone().unwrap_or_default();
                    let (_, _, period, from, to) = project_period(&format!("{ns}/x"), period)?;
                    (ns, String::new(), period, from, to)
                }
            };
            let (l, uid) = if name.is_empty() {
                let l = cli.db.ledger().await?;
                l.migrate().await?;
                (l, String::new())
            } else {
                cli.db.ledger_for(&ns, &name, project_uid).await?
            };
            let me = ProjectRef {
                namespace: &ns,
                name: &name,
                uid: &uid,
            };
            let rows = l.usage(&me, from, to, by).await?;
            if rows.is_empty() && matches!(output, quartermaster::output::Format::Table) {
                eprintln!("no usage for {ns}/{name} in {period}");
            }
            print!("{}", quartermaster::output::render(&rows, output));
            if matches!(output, quartermaster::output::Format::Table) {
                // Revenue (payments received in the month) beside the vendor's cost, per currency.
                let payments = l.payments(&me, from, to).await?;
                let costs = quartermaster::ledger::report::cost_totals(&rows);
                let rev = quartermaster::ledger::report::revenue(&payments, &costs);
                for (c, v) in rev.as_object().into_iter().flatten() {
                    println!(
                        "{c}: revenue (payments) {}, vendor cost {}, margin {}",
                        v["payments"].as_str().unwrap_or_default(),
                        v["vendorCost"].as_str().unwrap_or_default(),
                        v["margin"].as_str().unwrap_or_default()
                    );
                }
            }
            Ok(())
        }),
        Command::Invoice {
            project,
            project_uid,
            period,
            finalize,
        } => block_on("invoice", async move {
            let (ns, name, period, from, to) = project_period(&project, period)?;
            let (l, uid) = cli.db.ledger_for(&ns, &name, project_uid).await?;
            let me = ProjectRef {
                namespace: &ns,
                name: &name,
                uid: &uid,
            };
            if finalize && quartermaster::ledger::report::close_month(&l, &me, &period, to).await? {
                eprintln!(
                    "closed {period} for {ns}/{name}: later usage for it is booked on the next open month"
                );
            }
            let inv = quartermaster::ledger::report::project_invoice(&l, &me, &period, (from, to))
                .await?;
            println!("{}", serde_json::to_string_pretty(&inv)?);
            Ok(())
        }),
        Command::Credits(c) => block_on("credits", credits(c, cli.db)),
        Command::Sms(Sms::List { simcard, output }) => {
            block_on("sms", sms_list(simcard, output, cli.db))
        }
        Command::Bench(b) => block_on("bench", async move {
            let exe = std::env::current_exe()?;
            quartermaster::bench::run(b, exe)
                .await
                .map_err(|e| -> Box<dyn std::error::Error> { e.to_string().into() })
        }),
        Command::Catalog {
            what,
            provider_config,
            output,
        } => block_on("catalog", catalog(what, provider_config, output)),
        Command::Invoices {
            subscription,
            limit,
            output,
        } => block_on("invoices", invoices(subscription, limit, output)),
        Command::Gateway(cfg) => block_on("gateway", gateway(cfg, cli.db)),
        Command::Sim(cfg) => block_on("sim", async move {
            let sim = quartermaster::sim::Sim::bind(cfg).await?;
            sim.serve(shutdown_signal()).await?;
            Ok(())
        }),
    }
}

/// Runs `fut` on a multi-threaded runtime; errors are logged and become a failing exit code.
fn block_on(
    what: &str,
    fut: impl std::future::Future<Output = Result<(), Box<dyn std::error::Error>>>,
) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "quartermaster {what} failed");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_crds(out: Option<PathBuf>) -> Result<(), String> {
    let crds = crd::all_crds();
    match out {
        None => {
            for c in &crds {
                let yaml =
                    serde_saphyr::to_string(c).map_err(|e| format!("failed to render CRD: {e}"))?;
                print!("---\n{yaml}");
            }
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("failed to create {}: {e}", dir.display()))?;
            for c in &crds {
                let yaml =
                    serde_saphyr::to_string(c).map_err(|e| format!("failed to render CRD: {e}"))?;
                let name = c.metadata.name.clone().unwrap_or_default();
                let path = dir.join(format!("{name}.yaml"));
                std::fs::write(&path, yaml)
                    .map_err(|e| format!("failed to write {}: {e}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Prints the SMS a SimCard's device sent: only those of its SIM since the SimCard was created (a SIM
/// claimed before by another tenant keeps that tenant's messages to itself).
async fn sms_list(
    simcard: String,
    output: quartermaster::output::Format,
    db: DbArgs,
) -> Result<(), Box<dyn std::error::Error>> {
    let (ns, name) = quartermaster::ledger::parse_project(&simcard)
        .map_err(|e| e.replace("project", "SimCard"))?;
    let client = kube::Client::try_default().await.map_err(|e| {
        format!("looking SimCard {ns}/{name} up needs the cluster (KUBECONFIG): {e}")
    })?;
    let card = kube::Api::<quartermaster::crd::SimCard>::namespaced(client, &ns)
        .get_opt(&name)
        .await
        .map_err(|e| format!("failed to look SimCard {ns}/{name} up: {e}"))?
        .ok_or_else(|| format!("SimCard {ns}/{name} not found"))?;
    let iccid = card
        .status
        .as_ref()
        .and_then(|s| s.claimed_iccid.clone())
        .ok_or_else(|| format!("SimCard {ns}/{name} holds no SIM (see its conditions)"))?;
    let since = card
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_second());
    let ledger = db.ledger().await?;
    let messages = ledger.inbound_sms(&iccid, since).await?;
    match output {
        quartermaster::output::Format::Json => {
            println!("{}", serde_json::to_string_pretty(&messages)?)
        }
        quartermaster::output::Format::Csv => {
            let mut rows = vec![vec![
                "received".into(),
                "submitted".into(),
                "payload".into(),
            ]];
            rows.extend(messages.iter().map(|m| {
                vec![
                    m.received_at.to_string(),
                    m.submitted.clone(),
                    m.payload.clone(),
                ]
            }));
            print!("{}", quartermaster::output::csv(&rows));
        }
        quartermaster::output::Format::Table => {
            let mut rows = vec![vec![
                "RECEIVED".to_string(),
                "SUBMITTED".into(),
                "PAYLOAD".into(),
            ]];
            rows.extend(messages.iter().map(|m| {
                vec![
                    jiff::Timestamp::from_second(m.received_at)
                        .map(|t| t.to_string())
                        .unwrap_or_default(),
                    m.submitted.clone(),
                    m.payload.clone(),
                ]
            }));
            print!("{}", quartermaster::output::table(&rows));
        }
    }
    Ok(())
}

/// The UID of Project `ns/name`, which must exist (read through KUBECONFIG).
async fn existing_project(ns: &str, name: &str) -> Result<String, Box<dyn std::error::Error>> {
    let client = kube::Client::try_default().await.map_err(|e| {
        format!("credit belongs to a Project that exists, and looking {ns}/{name} up needs the cluster (KUBECONFIG): {e}")
    })?;
    let projects: kube::Api<quartermaster::crd::Project> = kube::Api::namespaced(client, ns);
    let p = projects
        .get_opt(name)
        .await
        .map_err(|e| format!("failed to look Project {ns}/{name} up: {e}"))?
        .ok_or_else(|| {
            format!(
                "Project {ns}/{name} not found: credit is recorded only for a Project that exists"
            )
        })?;
    Ok(kube::ResourceExt::uid(&p).unwrap_or_default())
}

fn project_period(
    project: &str,
    period: Option<String>,
) -> Result<(String, String, String, i64, i64), String> {
    let (ns, name) = quartermaster::ledger::parse_project(project)?;
    let period = period
        .unwrap_or_else(|| quartermaster::ledger::period_of(jiff::Timestamp::now().as_second()));
    let (from, to) = quartermaster::ledger::parse_period(&period)?;
    Ok((ns, name, period, from, to))
}

async fn credits(c: Credits, db: DbArgs) -> Result<(), Box<dyn std::error::Error>> {
    use quartermaster::ledger::{CreditEntry, format_amount, parse_amount, parse_project};
    match c {
        Credits::Grant {
            project,
            amount,
            kind,
            external_ref,
            currency,
            reason,
            key,
        } => {
            let (ns, name) = parse_project(&project)?;
            let nanos = kind.signed(parse_amount(&amount)?)?;
            if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
                return Err(format!(
                    "bad currency {currency:?}: expected an ISO 4217 code such as USD"
                )
                .into());
            }
            quartermaster::install_crypto_provider();
            let uid = existing_project(&ns, &name).await?;
            let key = key.unwrap_or_else(|| format!("{}/{}", kind.as_str(), uuid::Uuid::new_v4()));
            let l = db.ledger().await?;
            l.migrate().await?;
            let entry = CreditEntry {
                key: key.clone(),
                namespace: ns.clone(),
                project: name.clone(),
                project_uid: uid.clone(),
                kind,
                amount_nanos: nanos,
                currency: currency.clone(),
                reason,
                external_ref,
            };
            let new = l.credit(&entry).await?;
            let me = ProjectRef {
                namespace: &ns,
                name: &name,
                uid: &uid,
            };
            let (granted, used) = l.balance(&me, &currency).await?;
            if new {
                println!(
                    "recorded {} {} {currency} for {ns}/{name}; balance {}",
                    kind.as_str(),
                    format_amount(nanos),
                    format_amount(granted - used)
                );
            } else {
                println!(
                    "entry {key:?} was already recorded; balance {} {currency}",
                    format_amount(granted - used)
                );
            }
        }
        Credits::Balance {
            project,
            project_uid,
        } => {
            let (ns, name) = parse_project(&project)?;
            let (l, uid) = db.ledger_for(&ns, &name, project_uid).await?;
            let me = ProjectRef {
                namespace: &ns,
                name: &name,
                uid: &uid,
            };
            let balances = l.balances(&me).await?;
            if balances.is_empty() {
                println!("project {ns}/{name}: no credit or usage recorded");
            }
            // One line per currency: amounts in different currencies are never added together.
            for (currency, granted, used) in balances {
                println!(
                    "project {ns}/{name}: credited {}, used {}, balance {} {currency}",
                    format_amount(granted),
                    format_amount(used),
                    format_amount(granted - used)
                );
            }
        }
    }
    Ok(())
}

/// The controllers' shared context: the ledger (migrated unless `--no-migrate`) and the settings.
/// `Kind=N`, for `--concurrency`.
fn parse_concurrency(s: &str) -> Result<(String, u16), String> {
    let (kind, n) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KIND=N"))?;
    let n = n
        .parse()
        .map_err(|_| format!("{n:?} is not a number of reconciles (0-65535)"))?;
    let kinds: Vec<&str> = controller::KINDS.iter().map(|k| k.kind).collect();
    if !kinds.contains(&kind) {
        return Err(format!(
            "{kind:?} is not a kind; one of {}",
            kinds.join(", ")
        ));
    }
    Ok((kind.to_string(), n))
}

/// The per-kind concurrency the flags set.
fn concurrency(args: &RunArgs) -> controller::Concurrency {
    let named = [
        ("VirtualMachine", args.vm_concurrency),
        ("Project", args.project_concurrency),
        ("ProviderConfig", args.provider_config_concurrency),
    ];
    let mut c = controller::Concurrency::default();
    for (kind, n) in named
        .into_iter()
        .filter_map(|(k, n)| Some((k.to_string(), n?)))
    {
        c = c.set(&kind, n);
    }
    for (kind, n) in &args.concurrency {
        c = c.set(kind, *n);
    }
    c
}

async fn controller_context(
    args: &RunArgs,
    db: DbArgs,
    client: kube::Client,
    metrics: Metrics,
    identity: &str,
) -> Result<Arc<Context>, Box<dyn std::error::Error>> {
    let ledger = db.ledger().await?;
    if !args.no_migrate {
        ledger
            .migrate()
            .await
            .map_err(|e| format!("cannot migrate the usage ledger: {e}"))?;
    }
    tracing::info!(database = ledger.kind(), "usage ledger ready");
    Ok(Arc::new(
        Context::new(
            client,
            metrics,
            ControllerConfig {
                resync_interval: Duration::from_secs(args.resync_secs.max(1)),
                label_selector: args.label_selector.clone(),
                poll_interval: Duration::from_secs(args.poll_interval_secs.max(1)),
                observe_interval: Duration::from_secs(args.observe_interval_secs.max(1)),
                sim_usage_interval: Duration::from_secs(args.sim_usage_interval_secs.max(1)),
                min_snapshot_interval: Duration::from_secs(args.min_snapshot_interval_secs),
                traffic_interval: Duration::from_secs(args.traffic_interval_secs.max(1)),
                budget_status_interval: Duration::from_secs(
                    args.budget_status_interval_secs.max(1),
                ),
                concurrency: concurrency(args),
                ..Default::default()
            },
            Some(identity.to_string()),
        )
        .with_ledger(ledger),
    ))
}

/// The webhook routes `--onence-streamer-secret` and `--stripe-webhook-secret` ask for (every replica
/// serves them; only the leader wakes Subscriptions, see `quartermaster::webhooks`).
async fn webhooks(
    args: &RunArgs,
    client: &kube::Client,
    ctx: &Arc<Context>,
) -> Result<Option<axum::Router>, Box<dyn std::error::Error>> {
    let streamer = match &args.onence_streamer_secret {
        None => None,
        Some(r) => {
            let ledger = ctx
                .ledger
                .clone()
                .ok_or("--onence-streamer-secret needs the usage ledger")?;
            let secret = read_secret(client, r, "--onence-streamer-secret").await?;
            Some(Arc::new(quartermaster::webhooks::Streamer::new(
                ledger,
                &secret_field(&secret, r, "username")?,
                &secret_field(&secret, r, "password")?,
                ctx.metrics.clone(),
            )))
        }
    };
    let stripe = match &args.stripe_webhook_secret {
        None => None,
        Some(r) => {
            let ledger = ctx
                .ledger
                .clone()
                .ok_or("--stripe-webhook-secret needs the usage ledger")?;
            let secret = read_secret(client, r, "--stripe-webhook-secret").await?;
            // Several secrets (a rotation) separated by whitespace or commas.
            let secrets: Vec<Vec<u8>> = secret_field(&secret, r, "secret")?
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter(|s| !s.is_empty())
                .map(|s| s.as_bytes().to_vec())
                .collect();
            let waker = ctx.clone();
            Some(Arc::new(quartermaster::webhooks::StripeHook::new(
                ledger,
                secrets,
                args.stripe_webhook_tolerance_secs,
                ctx.metrics.clone(),
                Box::new(move |hint| controller::subscription::stripe_event(&waker, hint)),
            )))
        }
    };
    if streamer.is_none() && stripe.is_none() {
        return Ok(None);
    }
    Ok(Some(quartermaster::webhooks::router(streamer, stripe)))
}

/// The Secret `NAMESPACE/NAME` a flag names.
async fn read_secret(
    client: &kube::Client,
    r: &str,
    flag: &str,
) -> Result<k8s_openapi::api::core::v1::Secret, String> {
    let (ns, name) = r
        .split_once('/')
        .ok_or_else(|| format!("{flag} {r:?}: expected NAMESPACE/NAME"))?;
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .map_err(|e| format!("reading the Secret {r} ({flag}): {e}"))
}

/// A non-empty key of a Secret, trimmed.
fn secret_field(
    secret: &k8s_openapi::api::core::v1::Secret,
    r: &str,
    k: &str,
) -> Result<String, String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(k))
        .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("the Secret {r} has no non-empty key {k:?}"))
}

/// The leader elector for `--leader-elect` (namespace from the flag, else the pod's, else `default`).
fn leader_elector(args: &RunArgs, client: kube::Client, identity: &str) -> LeaderElector {
    let ns = args
        .leader_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "default".into());
    let timings = LeaseTimings {
        lease_duration: Duration::from_secs(args.lease_duration_secs.max(1)),
        renew_deadline: Duration::from_secs(args.renew_deadline_secs.max(1)),
        retry_period: Duration::from_secs(args.retry_period_secs.max(1)),
    };
    LeaderElector::new(
        Api::<Lease>::namespaced(client, &ns),
        &args.leader_name,
        identity,
        timings,
    )
}

/// `quartermaster gateway`: watches budgets and upstreams, serves until a shutdown signal, then
/// flushes usage and gives its budget slices back.
async fn gateway(
    cfg: quartermaster::gateway::GatewayConfig,
    db: DbArgs,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = kube::Client::try_default().await.map_err(|e| {
        format!(
            "the gateway reads TokenBudgets and ProviderConfigs from the cluster (KUBECONFIG): {e}"
        )
    })?;
    let ledger = db.ledger().await?;
    ledger.migrate().await?;
    let instance = format!(
        "{}-{}",
        std::env::var("POD_NAME").unwrap_or_else(|_| "gateway".into()),
        uuid::Uuid::new_v4().simple()
    );
    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    let admin = tokio::net::TcpListener::bind(cfg.admin_listen).await?;
    let gw = quartermaster::gateway::Gateway::new(cfg, ledger, &instance);
    let feed = tokio::spawn(quartermaster::gateway::watch::run(client, gw.clone()));
    let admin = tokio::spawn(
        gw.clone()
            .serve_admin(admin, futures::future::pending::<()>()),
    );
    let served = gw.serve(listener, shutdown_signal()).await;
    feed.abort();
    admin.abort();
    served?;
    Ok(())
}

async fn run(args: RunArgs, db: DbArgs) -> Result<(), Box<dyn std::error::Error>> {
    let metrics = Metrics::new();
    let config = kube::Config::infer().await.map_err(|e| {
        format!("failed to find a Kubernetes configuration (kubeconfig or in-cluster config): {e}")
    })?;
    let client = quartermaster::kube_client::client(
        config,
        quartermaster::kube_client::KubeLimits {
            qps: args.kube_qps,
            burst: args.kube_burst,
        },
        Some(quartermaster::kube_client::KubeMetrics::register(
            metrics.registry(),
        )),
    )
    .map_err(|e| format!("failed to build a Kubernetes client: {e}"))?;
    let health = Arc::new(Readiness::default());
    let shutdown = shutdown_signal().shared();

    let identity = args.leader_identity.clone().unwrap_or_else(|| {
        let host = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "quartermaster".into());
        format!("{host}-{}", std::process::id())
    });
    let ctx = controller_context(&args, db, client.clone(), metrics.clone(), &identity).await?;
    let hooks = webhooks(&args, &client, &ctx).await?;
    let http = tokio::spawn(server::serve(
        args.http_addr,
        metrics.clone(),
        health.clone(),
        hooks,
        shutdown.clone(),
    ));

    let mut elector = None;
    if args.leader_elect {
        let mut e = leader_elector(&args, client.clone(), &identity);
        health.set_role(Role::Standby);
        tokio::select! {
            _ = e.acquire() => {}
            _ = shutdown.clone() => {
                tracing::info!("shutdown requested while standby");
                health.set_role(Role::Stopping);
                let _ = http.await;
                return Ok(());
            }
        }
        elector = Some(e);
    }
    health.set_role(Role::Leader);
    metrics.leader.set(1);

    let controllers = controller::run(ctx.clone(), health.clone(), shutdown.clone());
    let outcome: Result<(), Box<dyn std::error::Error>> = match elector.as_mut() {
        Some(e) => {
            tokio::select! {
                _ = controllers => Ok(()),
                lost = e.keep_renewing() => Err(Box::new(lost)),
            }
        }
        None => {
            controllers.await;
            Ok(())
        }
    };
    health.set_role(Role::Stopping);
    metrics.leader.set(0);
    if outcome.is_ok()
        && let Some(e) = &elector
        && let Err(err) = e.release().await
    {
        tracing::warn!(error = %err, "failed to release the leader lease; a standby takes over once it expires");
    }
    if outcome.is_ok() {
        let _ = http.await;
    }
    outcome
}

async fn invoices(
    subscription: String,
    limit: u32,
    output: Output,
) -> Result<(), Box<dyn std::error::Error>> {
    let (ns, name) = subscription
        .split_once('/')
        .ok_or_else(|| format!("--subscription {subscription:?}: expected NAMESPACE/NAME"))?;
    let client = kube::Client::try_default().await.map_err(|e| {
        format!("failed to build a Kubernetes client (kubeconfig or in-cluster config): {e}")
    })?;
    let ctx = Context::new(client, Metrics::new(), ControllerConfig::default(), None);
    let list = controller::subscription::recent_invoices(&ctx, ns, name, limit).await?;
    use controller::subscription::revenue::display_amount;
    if matches!(output, Output::Json) {
        let v: Vec<serde_json::Value> = list
            .iter()
            .map(|i| {
                serde_json::json!({"id": i.id, "status": i.status, "created": i.created,
                "amountDue": display_amount(i.amount_due, &i.currency),
                "amountPaid": display_amount(i.amount_paid, &i.currency),
                "currency": i.currency.to_ascii_uppercase(), "hostedInvoiceURL": i.hosted_invoice_url})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let head = ["ID", "CREATED", "STATUS", "DUE", "PAID", "CURRENCY"].map(String::from);
    let rows: Vec<Vec<String>> = std::iter::once(head.to_vec())
        .chain(list.iter().map(|i| {
            vec![
                i.id.clone(),
                jiff::Timestamp::from_second(i.created)
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
                i.status.clone().unwrap_or_default(),
                display_amount(i.amount_due, &i.currency),
                display_amount(i.amount_paid, &i.currency),
                i.currency.to_ascii_uppercase(),
            ]
        }))
        .collect();
    print!("{}", quartermaster::output::table(&rows));
    Ok(())
}

async fn catalog(
    what: CatalogKind,
    name: String,
    output: Output,
) -> Result<(), Box<dyn std::error::Error>> {
    use quartermaster::cloud::{self, catalog::Catalog};
    let client = kube::Client::try_default().await.map_err(|e| {
        format!("failed to build a Kubernetes client (kubeconfig or in-cluster config): {e}")
    })?;
    let ctx = Context::new(client, Metrics::new(), ControllerConfig::default(), None);
    let pcs: Api<crd::ProviderConfig> = Api::all(ctx.client.clone());
    let pc = pcs
        .get_opt(&name)
        .await
        .map_err(|e| format!("failed to read ProviderConfig {name:?}: {e}"))?
        .ok_or_else(|| format!("ProviderConfig {name:?} not found"))?;
    let resolved = controller::vendor::account_for(&ctx, pc)
        .await?
        .ok_or_else(|| format!("ProviderConfig {name:?} is suspended"))?;
    let provider = cloud::connect(&resolved.account, Default::default(), None)?;
    let c = match what {
        CatalogKind::Sizes => Catalog {
            sizes: provider.sizes().await?,
            ..Default::default()
        },
        CatalogKind::Images => Catalog {
            images: provider.images().await?,
            ..Default::default()
        },
        CatalogKind::Regions => Catalog {
            regions: provider.regions().await?,
            ..Default::default()
        },
    };
    let json = match what {
        CatalogKind::Sizes => serde_json::to_string_pretty(&c.sizes)?,
        CatalogKind::Images => serde_json::to_string_pretty(&c.images)?,
        CatalogKind::Regions => serde_json::to_string_pretty(&c.regions)?,
    };
    if matches!(output, Output::Json) {
        println!("{json}");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = match what {
        CatalogKind::Sizes => std::iter::once(
            [
                "SLUG",
                "VCPUS",
                "MEMORY MB",
                "DISK GB",
                "HOURLY",
                "MONTHLY",
                "CURRENCY",
            ]
            .map(String::from)
            .to_vec(),
        )
        .chain(c.sizes.iter().map(|s| {
            vec![
                s.slug.clone(),
                s.vcpus.to_string(),
                s.memory_mb.to_string(),
                s.disk_gb.to_string(),
                s.price_hourly.to_string(),
                s.price_monthly.to_string(),
                s.currency.clone(),
            ]
        }))
        .collect(),
        CatalogKind::Images => std::iter::once(["SLUG", "NAME", "KIND"].map(String::from).to_vec())
            .chain(
                c.images
                    .iter()
                    .map(|i| vec![i.slug.clone(), i.name.clone(), i.kind.clone()]),
            )
            .collect(),
        CatalogKind::Regions => {
            std::iter::once(["SLUG", "NAME", "AVAILABLE"].map(String::from).to_vec())
                .chain(
                    c.regions
                        .iter()
                        .map(|r| vec![r.slug.clone(), r.name.clone(), r.available.to_string()]),
                )
                .collect()
        }
    };
    print!("{}", quartermaster::output::table(&rows));
    Ok(())
}
