//! Test harness for tests against a real kube-apiserver.
//!
//! - `scripts/test` starts one control plane for the whole run and exports `QM_TEST_KUBECONFIG`; every test
//!   process (nextest runs one per test) connects to it.
//! - A test run alone (no `QM_TEST_KUBECONFIG`) starts its own control plane on free ports with
//!   `scripts/k8s/start.sh`, and a reaper stops it by pid once the test process exits.
//! - The CRDs are server-side applied once per process (idempotent) and awaited until Established.
//! - Each test gets its own namespace; cluster-scoped objects carry a unique name.
#![allow(dead_code)]

pub mod db;
pub mod echo;
pub mod env;
pub mod examples;
pub mod linode;
pub mod prism;
pub mod process;
pub mod vultr;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::sync::OnceCell;

static KUBECONFIG: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
static CRDS: OnceCell<()> = OnceCell::const_new();

/// Project root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A short random suffix for unique names.
pub fn unique(prefix: &str) -> String {
    let n: u32 = rand::random();
    format!("{prefix}-{:06x}", n & 0xff_ffff)
}

/// Path of the kubeconfig of the control plane this test uses (starting one if needed).
pub fn kubeconfig() -> PathBuf {
    KUBECONFIG
        .get_or_init(|| {
            if let Ok(p) = std::env::var("QM_TEST_KUBECONFIG") {
                return PathBuf::from(p);
            }
            start_private_control_plane()
        })
        .clone()
}

fn find_k8s_bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("QM_K8S_BIN_DIR") {
        return PathBuf::from(d);
    }
    let cache = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache"))
        .join("quartermaster");
    std::fs::read_dir(&cache)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("k8s-"))
                && p.join("kube-apiserver").exists()
        })
        .unwrap_or_else(|| {
            panic!(
                "no kube-apiserver found: run `scripts/k8s/install.sh` (or ./scripts/test) first"
            )
        })
}

fn start_private_control_plane() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("qm-test-cp"));
    std::fs::create_dir_all(&dir).unwrap();
    eprintln!(
        "QM_TEST_KUBECONFIG not set: starting a private control plane in {}",
        dir.display()
    );
    let status = Command::new(root().join("scripts/k8s/start.sh"))
        .arg(&dir)
        .env("QM_K8S_BIN_DIR", find_k8s_bin_dir())
        .env("API_PORT", process::free_port().to_string())
        .env("ETCD_PORT", process::free_port().to_string())
        .env("ETCD_PEER_PORT", process::free_port().to_string())
        .status()
        .expect("run scripts/k8s/start.sh");
    assert!(status.success(), "scripts/k8s/start.sh failed");
    // Reaper: stops the control plane (by recorded pid) once this test process is gone.
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; '{stop}' '{dir}'; rm -rf '{dir}'",
        pid = std::process::id(),
        stop = root().join("scripts/k8s/stop.sh").display(),
        dir = dir.display()
    );
    // The outer shell exits at once (and is waited for); the reaper lives on in its own session.
    let status = Command::new("bash")
        .args([
            "-c",
            r#"setsid bash -c "$1" </dev/null >/dev/null 2>&1 &"#,
            "reaper",
            &script,
        ])
        .status()
        .expect("spawn reaper");
    assert!(status.success());
    dir.join("kubeconfig")
}

/// A client for the test control plane, with the CRDs installed.
/// The test API server's client configuration.
pub async fn kube_config() -> Config {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let path = kubeconfig();
    let kc = Kubeconfig::read_from(&path).expect("read kubeconfig");
    Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig")
}

pub async fn client() -> Client {
    let client = Client::try_from(kube_config().await).expect("client");
    CRDS.get_or_init(|| install_crds(client.clone())).await;
    client
}

async fn install_crds(client: Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    for crd in quartermaster::crd::all_crds() {
        let name = crd.metadata.name.clone().unwrap();
        api.patch(
            &name,
            &PatchParams::apply("quartermaster-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("install CRD {name}: {e}"));
    }
    for crd in quartermaster::crd::all_crds() {
        let name = crd.metadata.name.clone().unwrap();
        let cond = kube::runtime::conditions::is_crd_established();
        tokio::time::timeout(
            Duration::from_secs(30),
            kube::runtime::wait::await_condition(api.clone(), &name, cond),
        )
        .await
        .expect("CRD established in time")
        .expect("watch CRD");
    }
}

/// Creates a fresh namespace `qm-<prefix>-<random>` and returns its name.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = unique(&format!("qm-{prefix}"));
    let api: Api<Namespace> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .expect("create namespace");
    name
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads every YAML document in `path` as JSON values (empty documents skipped).
pub fn read_yaml_docs(path: &Path) -> Vec<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// `kubectl` from PATH, if there is one that works.
pub fn kubectl() -> Option<PathBuf> {
    let dirs = std::env::var_os("QM_TOOLS_DIR")
        .into_iter()
        .chain(std::env::var_os("PATH"));
    for d in dirs.flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>()) {
        let candidate = d.join("kubectl");
        if candidate.is_file()
            && Command::new(&candidate)
                .args(["version", "--client"])
                .output()
                .is_ok_and(|o| o.status.success())
        {
            return Some(candidate);
        }
    }
    None
}

/// Starts the controllers in this process, restricted to objects labelled `qm-test=<id>`, with short
/// polling and backoff. Dropping the returned sender stops them.
pub fn start_controller(
    client: kube::Client,
    id: &str,
) -> (
    quartermaster::metrics::Metrics,
    tokio::sync::oneshot::Sender<()>,
) {
    start_controller_with(client, id, None)
}

/// [`start_controller`] with a usage ledger.
pub fn start_controller_with(
    client: kube::Client,
    id: &str,
    ledger: Option<quartermaster::ledger::Ledger>,
) -> (
    quartermaster::metrics::Metrics,
    tokio::sync::oneshot::Sender<()>,
) {
    start_controller_cfg(client, id, ledger, |_| {})
}

/// [`start_controller_with`] with settings adjusted by `tweak`.
pub fn start_controller_cfg(
    client: kube::Client,
    id: &str,
    ledger: Option<quartermaster::ledger::Ledger>,
    tweak: impl FnOnce(&mut quartermaster::controller::ControllerConfig),
) -> (
    quartermaster::metrics::Metrics,
    tokio::sync::oneshot::Sender<()>,
) {
    start_controller_full(client, id, ledger, tweak, |_| {})
}

/// [`start_controller_cfg`] that also hands the controller's context to `with_ctx` before it runs (to
/// serve webhooks that wake its objects, say).
pub fn start_controller_full(
    client: kube::Client,
    id: &str,
    ledger: Option<quartermaster::ledger::Ledger>,
    tweak: impl FnOnce(&mut quartermaster::controller::ControllerConfig),
    with_ctx: impl FnOnce(std::sync::Arc<quartermaster::controller::Context>) + Send + 'static,
) -> (
    quartermaster::metrics::Metrics,
    tokio::sync::oneshot::Sender<()>,
) {
    use futures::FutureExt;
    use quartermaster::controller::{self, Context, ControllerConfig};
    let metrics = quartermaster::metrics::Metrics::new();
    let mut config = ControllerConfig {
        label_selector: Some(format!("qm-test={id}")),
        backoff_base: Duration::from_millis(200),
        backoff_cap: Duration::from_secs(2),
        poll_interval: Duration::from_millis(500),
        vendor_timeout: Duration::from_secs(10),
        listing_lag: Duration::from_millis(200),
        observe_interval: Duration::from_secs(1),
        ..Default::default()
    };
    tweak(&mut config);
    let kube_metrics = quartermaster::kube_client::KubeMetrics::register(metrics.registry());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = rx.map(|_| ()).shared();
    let (m, id) = (metrics.clone(), id.to_string());
    drop(client);
    tokio::spawn(async move {
        // The controller gets its own client (same API server), so its requests are counted by verb.
        let counted = quartermaster::kube_client::client(
            kube_config().await,
            Default::default(),
            Some(kube_metrics),
        )
        .expect("client");
        let mut ctx = Context::new(counted, m, config, Some(format!("test-{id}")));
        if let Some(l) = ledger {
            ctx = ctx.with_ledger(l);
        }
        let ctx = std::sync::Arc::new(ctx);
        with_ctx(ctx.clone());
        controller::run(
            ctx,
            std::sync::Arc::new(quartermaster::server::Readiness::default()),
            shutdown,
        )
        .await
    });
    (metrics, tx)
}

/// A running in-process `quartermaster sim` (fast transitions); its state file lives in `dir`.
pub struct SimHandle {
    /// Base URL.
    pub url: String,
    /// Holds the state folder.
    pub dir: tempfile::TempDir,
}

/// Starts a simulator; `tweak` adjusts its settings.
pub async fn start_sim(tweak: impl FnOnce(&mut quartermaster::sim::SimConfig)) -> SimHandle {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = quartermaster::sim::SimConfig::fast(dir.path().join("sim.json"));
    tweak(&mut cfg);
    let sim = quartermaster::sim::Sim::bind(cfg).await.unwrap();
    let url = format!("http://{}", sim.addr().unwrap());
    tokio::spawn(sim.serve(futures::future::pending()));
    SimHandle { url, dir }
}

impl SimHandle {
    /// Creates a droplet directly at the simulator (as someone using the vendor's console would), with
    /// `tags`; returns its ID.
    pub async fn create_droplet(&self, name: &str, tags: &[&str]) -> String {
        quartermaster::install_crypto_provider();
        let v: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/v2/droplets", self.url))
            .bearer_auth("test")
            .json(
                &serde_json::json!({"name": name, "region": "fra1", "size": "s-1vcpu-1gb",
                                      "image": "debian-12-x64", "tags": tags}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["droplet"]["id"].as_u64().expect("droplet id").to_string()
    }

    /// Revokes `token` at the simulator: every later call with it gets 401 (a rotated vendor token).
    pub async fn revoke_token(&self, token: &str) {
        quartermaster::install_crypto_provider();
        let r = reqwest::Client::new()
            .post(format!("{}/_sim/revoke-token", self.url))
            .json(&serde_json::json!({"token": token}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "revoke: {}", r.status());
    }

    /// Every droplet the simulator holds, as JSON.
    pub async fn droplets(&self) -> Vec<serde_json::Value> {
        quartermaster::install_crypto_provider();
        let v: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/v2/droplets?per_page=200", self.url))
            .bearer_auth("test")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["droplets"].as_array().cloned().unwrap_or_default()
    }
}

/// Creates (or replaces) a Secret `name` with `key=value` in `ns`.
pub async fn secret(client: &kube::Client, ns: &str, name: &str, key: &str, value: &str) {
    use k8s_openapi::api::core::v1::Secret;
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
        "stringData": {key: value}
    });
    api.patch(
        name,
        &PatchParams::apply("quartermaster-tests").force(),
        &Patch::Apply(&s),
    )
    .await
    .unwrap();
}

/// Applies a ProviderConfig `name` of type digitalocean at `endpoint`, credentials in `ns`/`do-token`.
pub async fn do_provider_config(
    client: &kube::Client,
    id: &str,
    name: &str,
    ns: &str,
    endpoint: &str,
    allowed: &[&str],
) {
    let pcs: Api<quartermaster::crd::ProviderConfig> = Api::all(client.clone());
    let pc = serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
        "metadata": {"name": name, "labels": {"qm-test": id}},
        "spec": {
            "type": "digitalocean", "endpoint": endpoint,
            "credentialsSecretRef": {"name": "do-token", "namespace": ns, "key": "token"},
            "allowedNamespaces": allowed,
        }
    });
    pcs.patch(
        name,
        &PatchParams::apply("quartermaster-tests").force(),
        &Patch::Apply(&pc),
    )
    .await
    .unwrap();
}

/// Serves `app` on a free port of 127.0.0.1 for the rest of the test; its base URL.
pub async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    format!("http://{addr}")
}

/// `app` with every request it does not route (an unknown path, or a known one with another method)
/// recorded in `log` as `METHOD URI` and answered 404 with `body`: a mock's record of calls it was not
/// built for.
pub fn recording_unrouted(
    app: axum::Router,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    body: serde_json::Value,
) -> axum::Router {
    let answer = move |req: axum::extract::Request| {
        let (log, body) = (log.clone(), body.clone());
        async move {
            log.lock()
                .unwrap()
                .push(format!("{} {}", req.method(), req.uri()));
            (axum::http::StatusCode::NOT_FOUND, axum::Json(body))
        }
    };
    app.fallback(answer.clone())
        .method_not_allowed_fallback(answer)
}

/// The UID of Project `ns/name`, once it exists.
pub async fn project_uid(client: &kube::Client, ns: &str, name: &str) -> String {
    let projects: kube::Api<quartermaster::crd::Project> =
        kube::Api::namespaced(client.clone(), ns);
    eventually(
        Duration::from_secs(30),
        &format!("Project {ns}/{name} exists"),
        || async { projects.get_opt(name).await.ok()??.metadata.uid },
    )
    .await
}

/// A USD credit grant of `nanos` for the Project `ns/name` with `uid`.
pub fn grant(
    key: &str,
    ns: &str,
    name: &str,
    uid: &str,
    nanos: i64,
) -> quartermaster::ledger::CreditEntry {
    quartermaster::ledger::CreditEntry {
        key: key.into(),
        namespace: ns.into(),
        project: name.into(),
        project_uid: uid.into(),
        kind: quartermaster::ledger::CreditType::Grant,
        amount_nanos: nanos,
        currency: "USD".into(),
        reason: "test".into(),
        external_ref: String::new(),
    }
}
