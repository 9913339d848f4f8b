//! The Helm chart: `helm lint` and `helm template` pass, it installs on a real kube-apiserver, and its RBAC
//! is enough: a `quartermaster run` impersonating the chart's ServiceAccount takes the Lease, reconciles a
//! ProviderConfig to Ready and records Events.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use quartermaster::crd::ProviderConfig;
use quartermaster::crd::conditions::{self, ConditionStatus};

mod common;

fn helm() -> Option<PathBuf> {
    let kubectl = common::kubectl()?;
    let h = kubectl.with_file_name("helm");
    h.is_file().then_some(h)
}

/// helm, or `None` after a loud SKIPPED line (failing under CI, which always has it).
fn helm_or_skip() -> Option<PathBuf> {
    let helm = helm();
    if helm.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "no helm next to kubectl on PATH and CI is set: scripts/test installs both"
        );
        eprintln!(
            "\n*** SKIPPED: no helm next to kubectl on PATH (scripts/test installs both) ***\n"
        );
    }
    helm
}

/// A kubeconfig (in the returned folder) that acts as ServiceAccount `sa` by impersonation, and a client
/// using it.
async fn as_service_account(sa: &str) -> (tempfile::TempDir, PathBuf, kube::Client) {
    let mut kc: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(common::kubeconfig()).unwrap()).unwrap();
    for user in kc["users"].as_array_mut().unwrap() {
        user["user"]["as"] = sa.into();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, serde_json::to_string(&kc).unwrap()).unwrap();
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&path).unwrap(),
            &Default::default(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    (dir, path, client)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn chart_crds_match_the_code() {
    for crd in quartermaster::crd::all_crds() {
        let name = crd.metadata.name.clone().unwrap();
        let want = serde_saphyr::to_string(&crd).unwrap();
        let path = common::root()
            .join("charts/quartermaster/crds")
            .join(format!("{name}.yaml"));
        let got = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            want == got,
            "{} is stale; run `cargo run -- crds --out charts/quartermaster/crds`",
            path.display()
        );
    }
}

/// `helm template` of the chart with `--set` values: `Ok(rendered)` or `Err(stderr)`.
fn template(helm: &PathBuf, set: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new(helm);
    cmd.args(["template", "t"])
        .arg(common::root().join("charts/quartermaster"));
    for s in set {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn chart_never_runs_several_replicas_on_the_embedded_ledger() {
    let Some(helm) = helm_or_skip() else {
        return;
    };
    let replicas = |rendered: &str| {
        rendered
            .lines()
            .find_map(|l| l.trim().strip_prefix("replicas: "))
            .map(str::to_string)
    };
    // Defaults: a trial on SQLite, one replica.
    let trial = template(&helm, &[]).unwrap();
    assert_eq!(replicas(&trial).as_deref(), Some("1"), "{trial}");
    // PostgreSQL from a Secret: two replicas with leader election.
    let prod = template(&helm, &["ledger.databaseUrlSecret=qm-db"]).unwrap();
    assert_eq!(replicas(&prod).as_deref(), Some("2"), "{prod}");
    assert!(prod.contains("- name: DATABASE_URL"), "{prod}");
    // Two replicas, each with its own SQLite ledger: refused, saying what to set.
    let err = template(&helm, &["replicaCount=2"]).unwrap_err();
    assert!(err.contains("ledger.databaseUrlSecret"), "{err}");
    let scaled = template(&helm, &["replicaCount=3", "ledger.databaseUrlSecret=qm-db"]).unwrap();
    assert_eq!(replicas(&scaled).as_deref(), Some("3"));
    let off = template(&helm, &["replicaCount=0"]).unwrap();
    assert_eq!(
        replicas(&off).as_deref(),
        Some("0"),
        "scaled to zero stays zero"
    );
}

/// The webhook endpoints: the controller's flags name the Secrets, a Service reaches them, and an optional
/// Ingress exposes only `/webhooks/`.
#[test]
fn chart_wires_the_webhook_endpoints() {
    let Some(helm) = helm_or_skip() else {
        return;
    };
    let none = template(&helm, &[]).unwrap();
    assert!(
        !none.contains("-webhooks") && !none.contains("webhook-secret"),
        "{none}"
    );
    let on = template(
        &helm,
        &[
            "webhooks.stripeSecretName=stripe-hook",
            "webhooks.onenceSecretName=onence-hook",
            "webhooks.ingress.enabled=true",
            "webhooks.ingress.host=hooks.example.com",
            "webhooks.ingress.tlsSecretName=hooks-tls",
        ],
    )
    .unwrap();
    for want in [
        "- --stripe-webhook-secret=default/stripe-hook",
        "- --onence-streamer-secret=default/onence-hook",
        "name: t-quartermaster-webhooks",
        "kind: Ingress",
        "path: /webhooks/",
        "host: \"hooks.example.com\"",
        "secretName: hooks-tls",
    ] {
        assert!(on.contains(want), "{want} missing from:\n{on}");
    }
    assert!(
        !on.contains("path: /metrics"),
        "only the webhooks are exposed"
    );
    let no_ingress = template(&helm, &["webhooks.stripeSecretName=s"]).unwrap();
    assert!(
        no_ingress.contains("name: t-quartermaster-webhooks")
            && !no_ingress.contains("kind: Ingress")
    );
}

#[tokio::test]
async fn chart_installs_and_its_rbac_suffices_for_the_controller() {
    let Some(helm) = helm_or_skip() else {
        return;
    };
    let chart = common::root().join("charts/quartermaster");
    run(Command::new(&helm).arg("lint").arg(&chart));
    let rendered = run(Command::new(&helm).args(["template", "t"]).arg(&chart));
    for kind in [
        "Deployment",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ServiceAccount",
        "Service",
    ] {
        assert!(
            rendered.contains(&format!("kind: {kind}\n")),
            "chart renders no {kind}"
        );
    }
    // The allocator setting BENCHMARKS.md measured RSS with (see the chart's values).
    assert!(
        rendered.contains("- name: MALLOC_ARENA_MAX\n              value: \"2\"\n"),
        "chart does not cap malloc arenas:\n{rendered}"
    );

    let client = common::client().await;
    let ns = common::namespace(&client, "helm").await;
    let release = common::unique("qm");
    // Every component rendered (the Prometheus Operator kinds aside: this API server has no such CRDs)
    // is accepted by the API server: `helm template | kubectl apply --dry-run=server`.
    let everything = run(Command::new(&helm)
        .args(["template", &release, "--namespace", &ns])
        .args([
            "--set",
            "gateway.enabled=true",
            "--set",
            "gateway.autoscaling.enabled=true",
            "--set",
            "ledger.databaseUrlSecret=qm-db",
            "--set",
            "webhooks.stripeSecretName=stripe-webhook",
            "--set",
            "webhooks.onenceSecretName=onence-streamer",
            "--set",
            "webhooks.ingress.enabled=true",
            "--set",
            "webhooks.ingress.host=hooks.example.com",
            "--set",
            "networkPolicy.enabled=true",
        ])
        .arg(&chart));
    for kind in [
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Ingress",
        "NetworkPolicy",
    ] {
        assert!(
            everything.contains(&format!("kind: {kind}\n")),
            "renders no {kind}"
        );
    }
    // Every component is accepted by the API server.
    kubectl_apply(&everything, &["--dry-run=server"]);
    run(Command::new(&helm)
        .env("KUBECONFIG", common::kubeconfig())
        .args(["install", &release, "--namespace", &ns, "--wait=false"])
        .arg(&chart));

    // A kubeconfig that acts as the chart's ServiceAccount (impersonation), for a real controller run.
    let (_kc_dir, kc_path, as_controller) = as_service_account(&format!(
        "system:serviceaccount:{ns}:{release}-quartermaster"
    ))
    .await;

    let id = common::unique("helm");
    let sim = common::start_sim(|_| {}).await;
    // The controller as the chart runs it: its own process, with the chart's ServiceAccount's kubeconfig.
    let child = common::process::spawn_run(
        "helm-run",
        &kc_path,
        &[
            "--leader-namespace",
            &ns,
            "--label-selector",
            &format!("qm-test={id}"),
        ],
    );

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("token".into()),
                    ..Default::default()
                },
                string_data: Some([("token".to_string(), "FAKE".to_string())].into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let pcs: Api<ProviderConfig> = Api::all(client.clone());
    let pc: ProviderConfig = serde_json::from_value(serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
        "metadata": {"name": id, "labels": {"qm-test": id}},
        "spec": {"type": "digitalocean", "endpoint": sim.url, "credentialsSecretRef": {"name": "token", "namespace": ns}}
    }))
    .unwrap();
    pcs.create(&PostParams::default(), &pc).await.unwrap();
    let ready = common::eventually(
        Duration::from_secs(30),
        "ProviderConfig Ready under the chart's RBAC",
        || async {
            let st = pcs.get(&id).await.ok()?.status?;
            let c = conditions::find(&st.conditions, conditions::READY)?;
            (c.status == ConditionStatus::True).then_some(())
        },
    )
    .await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    assert!(
        leases
            .get_opt("quartermaster-leader")
            .await
            .unwrap()
            .is_some()
    );
    // Every kind under the chart's RBAC: the examples (their own ProviderConfigs, Secrets, a Project
    // deleted with Cascade) reach Ready, and the cascade deletes the Project's VM and SimCard.
    let mut docs = common::examples::examples(&ns, &id, &sim.url);
    for d in docs.iter_mut().filter(|d| d["kind"] == "Project") {
        d["spec"]["deletionPolicy"] = "Cascade".into();
    }
    common::examples::apply_all(&client, &docs).await;
    let ours: Vec<&serde_json::Value> = docs
        .iter()
        .filter(|d| common::examples::KINDS.contains(&d["kind"].as_str().unwrap()))
        .collect();
    for d in &ours {
        let name = d["metadata"]["name"].as_str().unwrap();
        common::eventually(
            Duration::from_secs(90),
            &format!("{} {name} Ready under the chart's RBAC", d["kind"]),
            || async {
                let o = common::examples::api(&client, d).get(name).await.ok()?;
                common::examples::settled(&o).then_some(())
            },
        )
        .await;
    }
    let projects: Api<quartermaster::crd::Project> = Api::namespaced(client.clone(), &ns);
    projects
        .delete("acme-iot", &Default::default())
        .await
        .unwrap();
    for kind in ["VirtualMachine", "SimCard", "Project"] {
        for d in ours.iter().filter(|d| d["kind"] == kind) {
            common::examples::wait_gone(&client, d, Duration::from_secs(90)).await;
        }
    }
    // No broader than that: no PUT of an object or its status, no deletion of what the controller
    // never deletes, no other kind of resource.
    let denied =
        |r: Result<(), kube::Error>| matches!(r, Err(kube::Error::Api(e)) if e.code == 403);
    let subs: Api<quartermaster::crd::Subscription> = Api::namespaced(as_controller.clone(), &ns);
    assert!(denied(
        subs.delete("acme-pro", &Default::default())
            .await
            .map(|_| ())
    ));
    let own_pc = pcs.get(&id).await.unwrap();
    let as_pcs: Api<ProviderConfig> = Api::all(as_controller.clone());
    assert!(denied(
        as_pcs
            .replace(&id, &PostParams::default(), &own_pc)
            .await
            .map(|_| ())
    ));
    assert!(denied(
        as_pcs
            .replace_status(&id, &PostParams::default(), &own_pc)
            .await
            .map(|_| ())
    ));
    let token = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("token")
        .await
        .unwrap();
    assert!(denied(
        Api::<Secret>::namespaced(as_controller.clone(), &ns)
            .replace("token", &PostParams::default(), &token)
            .await
            .map(|_| ())
    ));
    assert!(denied(
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(as_controller, &ns)
            .list(&Default::default())
            .await
            .map(|_| ())
    ));
    let log_path = child.log.clone();
    drop(child);
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(
        !log.contains("forbidden"),
        "the controller hit RBAC denials:\n{log}"
    );
    ready
}

#[test]
fn chart_runs_the_gateway_only_on_postgresql() {
    let Some(helm) = helm_or_skip() else {
        return;
    };
    let none = template(&helm, &[]).unwrap();
    assert!(!none.contains("quartermaster-gateway"));
    let err = template(&helm, &["gateway.enabled=true"]).unwrap_err();
    assert!(
        err.contains("gateway.enabled needs a PostgreSQL ledger"),
        "{err}"
    );
    let on = template(
        &helm,
        &[
            "gateway.enabled=true",
            "ledger.databaseUrlSecret=qm-db",
            "gateway.autoscaling.enabled=true",
        ],
    )
    .unwrap();
    for kind in ["HorizontalPodAutoscaler", "PodDisruptionBudget"] {
        assert!(on.contains(&format!("kind: {kind}\n")), "no {kind}:\n{on}");
    }
    assert!(on.contains("- gateway\n"), "{on}");
    assert!(on.contains("name: t-quartermaster-gateway"), "{on}");
    // With the autoscaler on, the Deployment leaves replicas to it.
    let gw_deploy = on
        .split("---")
        .find(|d| d.contains("kind: Deployment") && d.contains("-gateway"))
        .unwrap();
    assert!(!gw_deploy.contains("replicas:"), "{gw_deploy}");
}

/// The gateway as the chart runs it: with its own ServiceAccount's credentials it loads budgets and
/// upstreams (their credentials Secret included), and may not list or write Secrets.
#[tokio::test]
async fn the_gateways_rbac_suffices_and_is_read_only() {
    let Some(helm) = helm_or_skip() else {
        return;
    };
    let chart = common::root().join("charts/quartermaster");
    let client = common::client().await;
    let ns = common::namespace(&client, "helmgw").await;
    let release = common::unique("qm");
    run(Command::new(&helm)
        .env("KUBECONFIG", common::kubeconfig())
        .args(["install", &release, "--namespace", &ns, "--wait=false"])
        .args([
            "--set",
            "gateway.enabled=true",
            "--set",
            "ledger.databaseUrlSecret=qm-db",
        ])
        .arg(&chart));
    let (_kc_dir, _, as_gateway) = as_service_account(&format!(
        "system:serviceaccount:{ns}:{release}-quartermaster-gateway"
    ))
    .await;

    let id = common::unique("gw");
    common::secret(&client, &ns, "llm", "token", "sk-FAKE").await;
    let pcs: Api<ProviderConfig> = Api::all(client.clone());
    let pc: ProviderConfig = serde_json::from_value(serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
        "metadata": {"name": id},
        "spec": {"type": "openai", "endpoint": "http://127.0.0.1:1/v1",
                 "credentialsSecretRef": {"name": "llm", "namespace": ns},
                 "models": [{"name": "m", "inputPerMillion": "1", "outputPerMillion": "2"}]}
    }))
    .unwrap();
    pcs.create(&PostParams::default(), &pc).await.unwrap();
    let budgets: Api<quartermaster::crd::TokenBudget> = Api::namespaced(client.clone(), &ns);
    let b: quartermaster::crd::TokenBudget = serde_json::from_value(serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "TokenBudget",
        "metadata": {"name": "bot"},
        "spec": {"tokens": 1000, "providerConfigRef": {"name": id}, "apiKeys": [{"name": "k"}]}
    }))
    .unwrap();
    budgets.create(&PostParams::default(), &b).await.unwrap();
    let key = quartermaster::budget::keys::generate();
    budgets
        .patch_status(
            "bot",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"status": {"apiKeys": [
                {"name": "k", "secretName": "bot-k", "sha256": quartermaster::budget::keys::hash(&key)}
            ]}})),
        )
        .await
        .unwrap();

    let ledger_dir = tempfile::tempdir().unwrap();
    let (ledger, _) = common::db::sqlite(&ledger_dir).await;
    let gw = quartermaster::gateway::Gateway::new(Default::default(), ledger, "helm-gw");
    tokio::spawn(quartermaster::gateway::watch::run(
        as_gateway.clone(),
        gw.clone(),
    ));
    common::eventually(
        Duration::from_secs(30),
        "the gateway loads the budget and its upstream",
        || async {
            let upstream = gw.directory.upstream(&id)?;
            (gw.directory
                .key(&quartermaster::budget::keys::hash(&key))
                .is_some()
                && upstream.api_key == "sk-FAKE")
                .then_some(())
        },
    )
    .await;
    // Read-only: no listing of Secrets, no writes.
    let secrets: Api<Secret> = Api::namespaced(as_gateway.clone(), &ns);
    assert!(
        matches!(secrets.list(&Default::default()).await, Err(kube::Error::Api(e)) if e.code == 403)
    );
    let denied = secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("x".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(denied, Err(kube::Error::Api(e)) if e.code == 403));
    let as_gw_budgets: Api<quartermaster::crd::TokenBudget> = Api::namespaced(as_gateway, &ns);
    assert!(matches!(
        as_gw_budgets.delete("bot", &Default::default()).await,
        Err(kube::Error::Api(e)) if e.code == 403
    ));
    pcs.delete(&id, &Default::default()).await.unwrap();
}

#[test]
fn chart_monitoring_and_network_policies_render_and_name_real_metrics() {
    let Some(helm) = helm_or_skip() else {
        return;
    };
    let all = template(
        &helm,
        &[
            "gateway.enabled=true",
            "ledger.databaseUrlSecret=qm-db",
            "monitoring.serviceMonitor.enabled=true",
            "monitoring.prometheusRule.enabled=true",
            "monitoring.grafanaDashboard.enabled=true",
            "networkPolicy.enabled=true",
        ],
    )
    .unwrap();
    for kind in [
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
        "NetworkPolicy",
    ] {
        assert!(all.contains(&format!("kind: {kind}\n")), "no {kind}");
    }
    for alert in [
        "QuartermasterReconcileErrors",
        "QuartermasterObjectsStalled",
        "QuartermasterProviderConfigUnreachable",
        "QuartermasterWebhookSignatureFailures",
        "QuartermasterLedgerWriteFailures",
        "QuartermasterTokenBudgetsExhausted",
    ] {
        assert!(
            all.contains(&format!("alert: {alert}\n")),
            "no alert {alert}"
        );
    }
    // Every metric the alerts and the dashboard use is one the code registers.
    let mut source = String::new();
    for dir in ["src", "src/gateway", "src/controller", "src/cloud"] {
        for e in std::fs::read_dir(common::root().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "rs") {
                source.push_str(&std::fs::read_to_string(p).unwrap());
            }
        }
    }
    let dashboard = std::fs::read_to_string(
        common::root().join("charts/quartermaster/dashboards/quartermaster.json"),
    )
    .unwrap();
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("the dashboard is JSON");
    let text = format!("{all}\n{dashboard}");
    let mut names: Vec<&str> = text
        .match_indices("quartermaster_")
        .map(|(i, _)| {
            let rest = &text[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|n| {
            n.ends_with("_total")
                || n.ends_with("_seconds_bucket")
                || n.contains("stalled")
                || n.contains("unreachable")
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 8, "{names:?}");
    for n in names {
        let base = n.trim_end_matches("_bucket");
        assert!(
            source.contains(&format!("\"{base}\"")),
            "{n} is not a metric the code registers"
        );
    }
    // Typos and wrong types in values are refused by values.schema.json.
    let err = template(&helm, &["gatway.enabled=true"]).unwrap_err();
    assert!(
        err.contains("additional properties 'gatway' not allowed"),
        "{err}"
    );
    let err = template(&helm, &["gateway.replicas=many"]).unwrap_err();
    assert!(err.contains("/gateway/replicas"), "{err}");
}

/// An upgrade from the chart as released before the gateway (tests/fixtures/chart-0.1.0) keeps live
/// objects and the controller's Deployment (its selector is unchanged), adds the gateway, and an
/// uninstall leaves the users' objects in place.
#[tokio::test]
async fn an_upgrade_from_the_previous_chart_loses_nothing() {
    let Some(helm) = helm_or_skip() else {
        return;
    };
    let old = common::root().join("tests/fixtures/chart-0.1.0");
    let new = common::root().join("charts/quartermaster");
    let client = common::client().await;
    let ns = common::namespace(&client, "upgrade").await;
    let release = common::unique("qm");
    let helm_in = |args: &[&str]| {
        let mut c = Command::new(&helm);
        c.env("KUBECONFIG", common::kubeconfig())
            .args(args)
            .args(["--namespace", &ns]);
        c
    };
    // The old chart ships the CRDs in crds/ (installed already here): skip them as an upgrade would.
    run(helm_in(&["install", &release, "--wait=false", "--skip-crds"]).arg(&old));
    let projects: Api<quartermaster::crd::Project> = Api::namespaced(client.clone(), &ns);
    let p: quartermaster::crd::Project = serde_json::from_value(serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "Project",
        "metadata": {"name": "kept"}, "spec": {"currency": "USD"}
    }))
    .unwrap();
    let uid = projects
        .create(&PostParams::default(), &p)
        .await
        .unwrap()
        .metadata
        .uid;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &ns);
    let controller = format!("{release}-quartermaster");
    let before = deployments.get(&controller).await.unwrap().metadata.uid;

    run(helm_in(&[
        "upgrade",
        &release,
        "--wait=false",
        "--set",
        "gateway.enabled=true",
        "--set",
        "ledger.databaseUrlSecret=qm-db",
    ])
    .arg(&new));
    let after = deployments.get(&controller).await.unwrap();
    assert_eq!(
        after.metadata.uid, before,
        "the controller's Deployment was replaced"
    );
    assert!(
        deployments
            .get_opt(&format!("{controller}-gateway"))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(projects.get("kept").await.unwrap().metadata.uid, uid);
    let history = run(&mut helm_in(&["history", &release, "-o", "json"]));
    assert!(history.contains("\"revision\":2"), "{history}");

    run(&mut helm_in(&["uninstall", &release]));
    assert_eq!(
        projects.get("kept").await.unwrap().metadata.uid,
        uid,
        "an uninstall leaves the users' objects"
    );
    common::eventually(
        Duration::from_secs(30),
        "the chart's Deployments gone",
        || async {
            deployments
                .get_opt(&controller)
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
}

/// The gateway's Service and NetworkPolicy expose only its client port; its admin port (`/metrics`,
/// whose labels name every tenant's budgets) is scraped from the pods, reachable only from the peers
/// `networkPolicy.gatewayAdminFrom` names.
#[test]
fn chart_exposes_only_the_gateways_client_port() {
    let Some(helm) = helm_or_skip() else {
        return;
    };
    let base = [
        "gateway.enabled=true",
        "ledger.databaseUrlSecret=qm-db",
        "monitoring.serviceMonitor.enabled=true",
        "networkPolicy.enabled=true",
    ];
    let docs = |extra: &[&str]| -> Vec<String> {
        let mut set: Vec<&str> = base.to_vec();
        set.extend_from_slice(extra);
        template(&helm, &set)
            .unwrap()
            .split("\n---")
            .filter(|d| d.contains("-gateway"))
            .map(str::to_string)
            .collect()
    };
    let all = docs(&[]);
    let find = |docs: &[String], kind: &str| -> String {
        docs.iter()
            .find(|d| d.contains(&format!("kind: {kind}\n")))
            .unwrap_or_else(|| panic!("no gateway {kind}"))
            .clone()
    };
    let service = find(&all, "Service");
    assert!(service.contains("targetPort: http"), "{service}");
    assert!(
        !service.contains("admin") && !service.contains("9091"),
        "{service}"
    );
    let deployment = find(&all, "Deployment");
    assert!(
        deployment.contains("- --admin-listen=0.0.0.0:9091"),
        "{deployment}"
    );
    assert!(
        deployment.contains("httpGet: {path: /readyz, port: admin}"),
        "{deployment}"
    );
    let policy = find(&all, "NetworkPolicy");
    assert!(
        policy.contains("port: 8090") && !policy.contains("9091"),
        "{policy}"
    );
    let monitor = find(&all, "PodMonitor");
    assert!(monitor.contains("port: admin"), "{monitor}");
    assert!(
        !all.iter()
            .any(|d| d.contains("kind: ServiceMonitor") && d.contains("-gateway")),
        "no ServiceMonitor for the gateway: no Service has its admin port"
    );
    let with_prometheus =
        docs(&["networkPolicy.gatewayAdminFrom[0].namespaceSelector.matchLabels.name=monitoring"]);
    let policy = find(&with_prometheus, "NetworkPolicy");
    assert!(
        policy.contains("port: 9091") && policy.contains("name: monitoring"),
        "{policy}"
    );
}

/// `kubectl apply -f - ARGS` of `yaml` as the admin; panics with kubectl's words when it is refused.
fn kubectl_apply(yaml: &str, args: &[&str]) {
    use std::io::Write as _;
    let mut apply = Command::new(common::kubectl().unwrap())
        .env("KUBECONFIG", common::kubeconfig())
        .args(["apply", "-f", "-"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    apply
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = apply.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply {args:?} refused:\n{yaml}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kind`'s API resource in group quartermaster.dev.
fn qm_resource(kind: &str, plural: &str) -> kube::api::ApiResource {
    kube::api::ApiResource {
        group: "quartermaster.dev".into(),
        version: "v1alpha1".into(),
        api_version: "quartermaster.dev/v1alpha1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// The status code of a refused call (0 when it succeeded or failed otherwise).
fn code<T>(r: Result<T, kube::Error>) -> u16 {
    match r {
        Err(kube::Error::Api(s)) => s.code,
        _ => 0,
    }
}

#[tokio::test]
async fn tenant_roles_grant_the_kinds_and_never_a_status() {
    use kube::api::{DynamicObject, Patch, PatchParams};
    let Some(helm) = helm_or_skip() else {
        return;
    };
    let release = common::unique("qmt");
    let chart = common::root().join("charts/quartermaster");
    let roles = run(Command::new(&helm)
        .args([
            "template",
            &release,
            "--show-only",
            "templates/tenant-roles.yaml",
        ])
        .arg(&chart));
    for aggregate in [
        "aggregate-to-edit",
        "aggregate-to-admin",
        "aggregate-to-view",
    ] {
        assert!(
            roles.contains(&format!("rbac.authorization.k8s.io/{aggregate}: \"true\"")),
            "{aggregate} missing:\n{roles}"
        );
    }
    let off = template(&helm, &["tenantRoles.enabled=false"]).unwrap();
    assert!(
        !off.contains("-tenant-edit"),
        "tenantRoles.enabled=false still renders them"
    );
    kubectl_apply(&roles, &[]);

    let admin = common::client().await;
    let ns = common::namespace(&admin, "tenant").await;
    // This API server runs no controller-manager (which aggregates ClusterRoles into `edit` and `view`),
    // so the tenants are bound to the chart's roles directly.
    for (user, role) in [("tenant-editor", "edit"), ("tenant-viewer", "view")] {
        kubectl_apply(
            &format!(
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {user}, namespace: {ns}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {release}-quartermaster-tenant-{role}}}\n\
             subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}]\n"
            ),
            &[],
        );
    }
    let (_d1, _, editor) = as_service_account("tenant-editor").await;
    let (_d2, _, viewer) = as_service_account("tenant-viewer").await;

    let vm = serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"providerConfigRef": {"name": "none"}, "region": "fra1", "size": "s-1vcpu-1gb",
            "image": "debian-12-x64"}
    });
    let vm: DynamicObject = serde_json::from_value(vm).unwrap();
    let vms = |c: &kube::Client| {
        Api::<DynamicObject>::namespaced_with(
            c.clone(),
            &ns,
            &qm_resource("VirtualMachine", "virtualmachines"),
        )
    };
    // The viewer reads and cannot create; the editor creates and changes.
    assert_eq!(
        code(vms(&viewer).create(&PostParams::default(), &vm).await),
        403
    );
    vms(&editor)
        .create(&PostParams::default(), &vm)
        .await
        .unwrap();
    let spec = Patch::Merge(serde_json::json!({"spec": {"size": "s-2vcpu-2gb"}}));
    vms(&editor)
        .patch("web", &PatchParams::default(), &spec)
        .await
        .unwrap();
    assert_eq!(
        vms(&viewer).get("web").await.unwrap().data["spec"]["size"],
        "s-2vcpu-2gb"
    );

    // Nobody but the controller writes a status: not the editor, not the viewer, for no kind.
    let status = Patch::Merge(serde_json::json!({"status": {"creditBalance": "1000000"}}));
    for (kind, plural) in [
        ("Project", "projects"),
        ("VirtualMachine", "virtualmachines"),
        ("SimCard", "simcards"),
        ("SimMessage", "simmessages"),
        ("Subscription", "subscriptions"),
        ("TokenBudget", "tokenbudgets"),
        ("VirtualMachineSnapshot", "virtualmachinesnapshots"),
        (
            "VirtualMachineSnapshotPolicy",
            "virtualmachinesnapshotpolicies",
        ),
    ] {
        let r = qm_resource(kind, plural);
        for (who, c) in [("editor", &editor), ("viewer", &viewer)] {
            let api = Api::<DynamicObject>::namespaced_with(c.clone(), &ns, &r);
            let got = code(
                api.patch_status("web", &PatchParams::default(), &status)
                    .await,
            );
            assert_eq!(got, 403, "the {who} patched {kind} status ({got})");
            assert_eq!(
                code(api.list(&Default::default()).await),
                0,
                "the {who} cannot list {kind}"
            );
        }
        // The admin's answer differs: the refusal above is the role's, not a missing object's.
        let api = Api::<DynamicObject>::namespaced_with(admin.clone(), &ns, &r);
        if kind != "VirtualMachine" {
            assert_eq!(
                code(
                    api.patch_status("web", &PatchParams::default(), &status)
                        .await
                ),
                404
            );
        }
    }
    // Projects (limits, spend cap, credit stop) are the platform's: the editor only reads them.
    let project: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "Project",
        "metadata": {"name": "mine", "namespace": ns}, "spec": {"currency": "USD"}
    }))
    .unwrap();
    let projects = Api::<DynamicObject>::namespaced_with(
        editor.clone(),
        &ns,
        &qm_resource("Project", "projects"),
    );
    assert_eq!(
        code(projects.create(&PostParams::default(), &project).await),
        403
    );
    // ProviderConfigs (cluster-scoped accounts) are not theirs to read.
    let pcs = Api::<DynamicObject>::all_with(
        editor.clone(),
        &qm_resource("ProviderConfig", "providerconfigs"),
    );
    assert_eq!(code(pcs.list(&Default::default()).await), 403);
}
