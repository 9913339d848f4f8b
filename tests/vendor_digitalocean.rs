//! The DigitalOcean client against a Prism mock of DigitalOcean's own OpenAPI document: every request it
//! sends must validate (a 4xx from Prism fails the test), and the answers decode into our types.

use quartermaster::cloud::{self, Account, PowerAction, ServerSpec, ServerState};
use quartermaster::crd::ProviderType;
use quartermaster::http::RetryPolicy;

mod common;
use common::prism::{Prism, specs_dir};

#[tokio::test]
async fn digitalocean_client_requests_validate_against_the_spec() {
    let Some(specs) = specs_dir() else { return };
    let prism = Prism::start(&specs, "digitalocean/DigitalOcean-public.v2.yaml");
    let account = Account {
        provider: ProviderType::Digitalocean,
        endpoint: Some(prism.url.clone()),
        credentials: "dop_v1_fake".into(),
        rate_limit: Some((50, 10)),
    };
    let p = cloud::connect(&account, RetryPolicy::default(), None).unwrap();
    p.verify().await.expect("GET /v2/account");
    let spec = ServerSpec {
        name: "web-1".into(),
        region: "nyc3".into(),
        size: "s-1vcpu-1gb".into(),
        image: "ubuntu-20-04-x64".into(),
        ssh_keys: vec!["3b:16:bf:e4:8b:00:8b:b8:59:8c:a9:d3:f0:19:45:fa".into()],
        user_data: Some("#cloud-config\n".into()),
        tags: vec![
            cloud::uid_tag("0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa"),
            "web".into(),
        ],
        backups: false,
        ipv6: true,
        root_password: None,
        options: Default::default(),
    };
    let created = p.create(&spec).await.expect("POST /v2/droplets");
    // Vendor options DigitalOcean honours: a VPC and its monitoring agent.
    let with_options = ServerSpec {
        options: cloud::ServerOptions {
            vpc_id: Some("760e09ef-dc84-11e8-981e-3cfdfeaae000".into()),
            monitoring: true,
            ..Default::default()
        },
        ..spec.clone()
    };
    p.refuse_unsupported(&with_options).unwrap();
    p.create(&with_options)
        .await
        .expect("POST /v2/droplets with vpc_uuid and monitoring");
    // A firewall names its droplets from its own side, after the create.
    let firewall = ServerSpec {
        options: cloud::ServerOptions {
            firewall_id: Some("bb4b2611-3d72-467b-8602-280330ecd65c".into()),
            ..Default::default()
        },
        ..spec.clone()
    };
    p.refuse_unsupported(&firewall).unwrap();
    assert!(p.firewall_after_create());
    p.attach_firewall("3164444", "bb4b2611-3d72-467b-8602-280330ecd65c")
        .await
        .expect("POST /v2/firewalls/{id}/droplets");
    assert!(p.attach_firewall("3164444", "../x").await.is_err());
    assert!(!created.id.is_empty());
    assert!(matches!(
        created.state,
        ServerState::Provisioning | ServerState::Running | ServerState::Off
    ));
    let got = p
        .get(&created.id)
        .await
        .expect("GET /v2/droplets/{id}")
        .expect("droplet exists");
    assert!(!got.size.is_empty() && !got.region.is_empty());
    p.find_by_tag(&cloud::uid_tag("0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa"))
        .await
        .expect("GET /v2/droplets?tag_name=");
    // One listing of the whole account (drift observation).
    let listed = p
        .list_servers()
        .await
        .expect("GET /v2/droplets")
        .expect("DigitalOcean lists its droplets");
    assert!(!listed.is_empty());
    for a in [PowerAction::On, PowerAction::Off, PowerAction::Reboot] {
        p.power(&created.id, a)
            .await
            .unwrap_or_else(|e| panic!("power {a:?}: {e}"));
    }
    p.add_tag(
        &created.id,
        &cloud::uid_tag("0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa"),
    )
    .await
    .expect("POST /v2/tags and /v2/tags/{tag}/resources (adoption)");
    p.remove_tag(
        &created.id,
        &cloud::uid_tag("0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa"),
    )
    .await
    .expect("DELETE /v2/tags/{tag}/resources (release)");
    p.resize(&created.id, "s-2vcpu-2gb")
        .await
        .expect("resize action");
    p.delete(&created.id)
        .await
        .expect("DELETE /v2/droplets/{id}");
    let sizes = p.sizes().await.expect("GET /v2/sizes");
    assert!(
        sizes
            .iter()
            .all(|s| s.price_monthly > rust_decimal::Decimal::ZERO),
        "{sizes:?}"
    );
    assert!(!p.images().await.expect("GET /v2/images").is_empty());
    assert!(!p.regions().await.expect("GET /v2/regions").is_empty());
}

/// Snapshots: the `snapshot` droplet action, the droplet's snapshots, its actions, the account's
/// snapshots (once the droplet is gone) and their deletion.
#[tokio::test]
async fn digitalocean_snapshot_requests_validate_against_the_spec() {
    let Some(specs) = specs_dir() else { return };
    let prism = Prism::start(&specs, "digitalocean/DigitalOcean-public.v2.yaml");
    let account = Account {
        provider: ProviderType::Digitalocean,
        endpoint: Some(prism.url.clone()),
        credentials: "dop_v1_fake".into(),
        rate_limit: Some((50, 10)),
    };
    let p = cloud::connect(&account, RetryPolicy::default(), None).unwrap();
    let mark = cloud::snapshot_mark("0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa");
    let made = p
        .create_snapshot("3164444", &mark)
        .await
        .expect("POST /v2/droplets/{id}/actions type snapshot");
    assert_eq!(made, None, "DigitalOcean answers with the action only");
    // The mock's snapshots carry other names: the lookup reads the droplet's snapshots and actions.
    // The account's marked snapshots in one listing (the mock's carry other names).
    let marked = p
        .marked_snapshots()
        .await
        .expect("the account's snapshot listing");
    assert_eq!(marked, Some(Vec::new()), "nothing carries a mark");
    // A snapshot read by its ID (a release the listing lacks is confirmed gone this way).
    let by_id = p
        .snapshot("", "6372321")
        .await
        .expect("the snapshot read by its ID");
    assert!(
        by_id.is_some_and(|s| !s.id.is_empty()),
        "the mock's snapshot"
    );
    let found = p
        .find_snapshot("3164444", &mark, 0)
        .await
        .expect("GET /v2/droplets/{id}/snapshots and /actions");
    assert!(
        matches!(
            found,
            cloud::SnapshotLookup::Absent | cloud::SnapshotLookup::InProgress
        ),
        "{found:?}"
    );
    // The mock's own snapshot name is found, with its size and creation time.
    let v: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/v2/droplets/3164444/snapshots", prism.url))
        .bearer_auth("dop_v1_fake")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let name = v["snapshots"][0]["name"].as_str().expect("a snapshot name");
    match p.find_snapshot("3164444", name, 0).await.unwrap() {
        cloud::SnapshotLookup::Found(s) => {
            assert!(
                !s.id.is_empty() && s.size_gb.is_some() && s.created_at.is_some(),
                "{s:?}"
            );
        }
        other => panic!("the mock's snapshot {name:?} was not found: {other:?}"),
    }
    p.restore_snapshot("3164444", "6372321")
        .await
        .expect("POST /v2/droplets/{id}/actions type restore");
    p.delete_snapshot("3164444", "6372321")
        .await
        .expect("DELETE /v2/snapshots/{id}");
}

/// Transfer and metrics: the month's public outbound bandwidth samples, and the seven monitoring
/// series of a droplet; sizes carry their included transfer.
#[tokio::test]
async fn digitalocean_traffic_requests_validate_against_the_spec() {
    let Some(specs) = specs_dir() else { return };
    let prism = Prism::start(&specs, "digitalocean/DigitalOcean-public.v2.yaml");
    let account = Account {
        provider: ProviderType::Digitalocean,
        endpoint: Some(prism.url.clone()),
        credentials: "dop_v1_fake".into(),
        rate_limit: Some((50, 10)),
    };
    let p = cloud::connect(&account, RetryPolicy::default(), None).unwrap();
    let now = 1_764_892_800;
    let month = cloud::Month::of(now);
    let bytes = p
        .transfer("3164444", month, now)
        .await
        .expect("GET /v2/monitoring/metrics/droplet/bandwidth");
    assert!(bytes.is_some_and(|b| b >= 0), "{bytes:?}");
    let m = p
        .metrics("3164444", now)
        .await
        .expect("GET cpu, memory_*, filesystem_*, bandwidth")
        .expect("figures");
    assert!(
        m.memory_total_bytes.is_some() && m.disk_total_bytes.is_some(),
        "{m:?}"
    );
    assert!(m.network_out_bps.is_some(), "{m:?}");
    assert!(p.transfer_price().is_some());
    let sizes = p.sizes().await.expect("GET /v2/sizes");
    assert!(
        sizes
            .iter()
            .all(|s| s.transfer_bytes.is_some_and(|b| b > 0)),
        "{sizes:?}"
    );
    // Weekly backups: 20 % of the size's price.
    assert!(
        sizes
            .iter()
            .all(|s| s.backup_price == Some(cloud::backup_share(s.price_hourly, s.price_monthly))),
        "{sizes:?}"
    );
    // Not a droplet ID: nothing is asked.
    assert_eq!(p.transfer("web", month, now).await.unwrap(), None);
}

/// A Project's VPC: the account's VPCs listed (and matched by exact name), one created with its range,
/// and deleted.
#[tokio::test]
async fn digitalocean_vpc_requests_validate_against_the_spec() {
    let Some(specs) = specs_dir() else { return };
    let prism = Prism::start(&specs, "digitalocean/DigitalOcean-public.v2.yaml");
    let account = Account {
        provider: ProviderType::Digitalocean,
        endpoint: Some(prism.url.clone()),
        credentials: "dop_v1_fake".into(),
        rate_limit: None,
    };
    let p = cloud::connect(&account, RetryPolicy::default(), None).unwrap();
    let name = cloud::vpc::vpc_name("0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa", "nyc1");
    let found = p.find_vpcs(&name).await.expect("GET /v2/vpcs");
    assert!(
        found.is_empty(),
        "the mock's VPCs are named otherwise: {found:?}"
    );
    let made = p
        .create_vpc(&cloud::VpcSpec {
            name: name.clone(),
            region: "nyc1".into(),
            ip_range: Some("10.10.10.0/24".into()),
        })
        .await
        .expect("POST /v2/vpcs");
    assert!(!made.id.is_empty(), "{made:?}");
    p.delete_vpc(&made.id).await.expect("DELETE /v2/vpcs/{id}");
}
