//! Leader election between two real `quartermaster run` processes on a real kube-apiserver: one leads, the
//! other stands by (and is ready); when the leader dies the standby takes over within the lease duration
//! and reconciles; SIGTERM releases the lease at once.

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::PostParams;
use quartermaster::crd::ProviderConfig;
use quartermaster::crd::conditions::{self, ConditionStatus};

mod common;

const LEASE_SECS: u64 = 4;

struct Replica {
    run: common::process::Controller,
    identity: String,
}

fn spawn(identity: &str, ns: &str, lease: &str, selector: &str) -> Replica {
    let run = common::process::spawn_run(
        identity,
        &common::kubeconfig(),
        &[
            "--leader-namespace",
            ns,
            "--leader-name",
            lease,
            "--leader-identity",
            identity,
            "--lease-duration-secs",
            &LEASE_SECS.to_string(),
            "--renew-deadline-secs",
            "3",
            "--retry-period-secs",
            "1",
            "--label-selector",
            selector,
        ],
    );
    Replica {
        run,
        identity: identity.to_string(),
    }
}

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases
        .get_opt(name)
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

/// GET http://127.0.0.1:port/path with a plain TCP client (status code, body).
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

#[tokio::test]
async fn standby_takes_over_when_the_leader_dies_and_sigterm_releases() {
    let client = common::client().await;
    let ns = common::namespace(&client, "leader").await;
    let id = common::unique("lead");
    let selector = format!("qm-test={id}");
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let wait = Duration::from_secs(30);

    let mut a = spawn(&format!("{id}-a"), &ns, &id, &selector);
    common::eventually(wait, "replica a to lead", || async {
        (holder(&leases, &id).await? == a.identity).then_some(())
    })
    .await;
    let b = spawn(&format!("{id}-b"), &ns, &id, &selector);
    // b is up, ready as a standby, and a still leads.
    let (code, body) = common::eventually(wait, "replica b /readyz", || {
        http_get(b.run.port, "/readyz")
    })
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("standby"), "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        holder(&leases, &id).await.as_deref(),
        Some(a.identity.as_str())
    );
    let metrics = common::eventually(wait, "replica a /metrics", || {
        http_get(a.run.port, "/metrics")
    })
    .await
    .1;
    assert!(metrics.contains("quartermaster_leader 1"), "{metrics}");

    // The leader dies without releasing (SIGKILL): b takes over within the lease duration (+ one retry).
    a.run.proc.0.kill().unwrap();
    a.run.proc.0.wait().unwrap();
    let died = Instant::now();
    common::eventually(wait, "replica b to take over", || async {
        (holder(&leases, &id).await? == b.identity).then_some(())
    })
    .await;
    let took = died.elapsed();
    assert!(
        took <= Duration::from_secs(LEASE_SECS + 3),
        "takeover took {took:?}, lease is {LEASE_SECS}s"
    );

    // b reconciles: a ProviderConfig in its shard goes through the controller (MissingSecret: no Secret).
    let pcs: Api<ProviderConfig> = Api::all(client.clone());
    let pc: ProviderConfig = serde_json::from_value(serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
        "metadata": {"name": id, "labels": {"qm-test": id}},
        "spec": {"type": "linode", "credentialsSecretRef": {"name": "absent", "namespace": ns}}
    }))
    .unwrap();
    pcs.create(&PostParams::default(), &pc).await.unwrap();
    common::eventually(wait, "the new leader to reconcile", || async {
        let st = pcs.get(&id).await.ok()?.status?;
        (conditions::find(&st.conditions, conditions::STALLED)?.status == ConditionStatus::True)
            .then_some(())
    })
    .await;

    // SIGTERM: b shuts down cleanly and clears the holder so nobody waits for expiry.
    let status = Command::new("kill")
        .args(["-TERM", &b.run.proc.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut b = b;
    let exit = tokio::task::spawn_blocking(move || {
        let r = b.run.proc.0.wait();
        (r, b)
    })
    .await
    .unwrap();
    assert!(
        exit.0.unwrap().success(),
        "replica b did not exit cleanly on SIGTERM"
    );
    assert_eq!(holder(&leases, &id).await, None, "lease was not released");
}
