//! `quartermaster sim` as a process: its state survives a restart, transitions follow the clock, and it
//! refuses what DigitalOcean refuses (resize while running, unknown sizes, a missing token).

use std::process::Stdio;
use std::time::Duration;

mod common;
use common::process::{Proc, free_port, quartermaster};

fn start(state: &std::path::Path, port: u16) -> Proc {
    Proc::spawn(
        quartermaster()
            .args([
                "sim",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--provision-secs",
                "1",
            ])
            .arg("--state")
            .arg(state)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

#[tokio::test]
async fn state_survives_restarts_and_the_state_machine_holds() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("sim.json");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    quartermaster::install_crypto_provider();
    let http = reqwest::Client::new();
    let sim = start(&state, port);
    common::eventually(Duration::from_secs(20), "sim up", || async {
        http.get(format!("{url}/v2/account"))
            .bearer_auth("t")
            .send()
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let no_token = http.get(format!("{url}/v2/account")).send().await.unwrap();
    assert_eq!(no_token.status(), 401);

    let body = serde_json::json!({"name": "a", "region": "fra1", "size": "s-1vcpu-1gb", "image": "debian-12-x64", "tags": ["t1"]});
    let created: serde_json::Value = http
        .post(format!("{url}/v2/droplets"))
        .bearer_auth("t")
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["droplet"]["status"], "new");
    let id = created["droplet"]["id"].as_u64().unwrap();
    let bad = serde_json::json!({"name": "b", "region": "fra1", "size": "huge", "image": "debian-12-x64"});
    assert_eq!(
        http.post(format!("{url}/v2/droplets"))
            .bearer_auth("t")
            .json(&bad)
            .send()
            .await
            .unwrap()
            .status(),
        422
    );

    // Restart the simulator: the droplet is still there and becomes active on schedule.
    drop(sim);
    let _sim = start(&state, port);
    let droplet = common::eventually(
        Duration::from_secs(20),
        "droplet active after restart",
        || async {
            let v: serde_json::Value = http
                .get(format!("{url}/v2/droplets/{id}"))
                .bearer_auth("t")
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (v["droplet"]["status"] == "active").then_some(v)
        },
    )
    .await;
    assert_eq!(droplet["droplet"]["tags"][0], "t1");

    // Resize while running is refused, as DigitalOcean does.
    let r = http
        .post(format!("{url}/v2/droplets/{id}/actions"))
        .bearer_auth("t")
        .json(&serde_json::json!({"type": "resize", "size": "s-2vcpu-2gb"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let listed: serde_json::Value = http
        .get(format!("{url}/v2/droplets?tag_name=t1"))
        .bearer_auth("t")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["droplets"].as_array().unwrap().len(), 1);
}
