//! The Linode client against a Prism mock of Linode's own OpenAPI document: every request it sends must
//! validate (a 4xx from Prism fails the test), and the answers decode into our types.

mod common;
use common::prism::{Prism, specs_dir};

use quartermaster::cloud::{self, Account, CloudError, PowerAction, ServerSpec, ServerState};
use quartermaster::crd::ProviderType;
use quartermaster::http::RetryPolicy;

const SPEC: &str = "linode/openapi.yaml";

#[tokio::test]
async fn vendor_linode_client_requests_validate_against_the_spec() {
    let Some(specs) = specs_dir() else { return };
    let prism = Prism::start(&specs, SPEC);
    let account = Account {
        provider: ProviderType::Linode,
        endpoint: Some(prism.url.clone()),
        credentials: "linode-fake-token\n".into(),
        rate_limit: None,
    };
    let p = cloud::connect(&account, RetryPolicy::default(), None).unwrap();
    assert_eq!(p.vendor(), "linode");
    assert!(p.accepts_root_password(false) && p.accepts_root_password(true));
    assert!(!p.resize_needs_power_off());
    p.verify().await.expect("GET /v4/profile");

    let uid_tag = cloud::uid_tag("0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa");
    let mut spec = ServerSpec {
        // Not a valid Linode label as is (starts with a digit, has a space): the client fixes it.
        name: "1 web--server".into(),
        region: "us-east".into(),
        size: "g6-standard-2".into(),
        image: "linode/debian11".into(),
        ssh_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGvK0xJ1xW2I3Yq4m8bq0g2B8jm2s0p6u3s5r0JxYb5 me@example".into()],
        user_data: Some("#cloud-config\npackages: [nginx]\n".into()),
        tags: vec![uid_tag.clone(), "web".into()],
        backups: true,
        ipv6: true,
        root_password: None,
        options: Default::default(),
    };
    let created = p.create(&spec).await.expect("POST /v4/linode/instances");
    // Vendor options Linode honours: a firewall (a number) and a StackScript with its fields.
    let with_options = ServerSpec {
        options: cloud::ServerOptions {
            firewall_id: Some("9001".into()),
            stack_script: Some((10079, serde_json::json!({"db_password": "x"}))),
            ..Default::default()
        },
        ..spec.clone()
    };
    p.refuse_unsupported(&with_options).unwrap();
    p.create(&with_options)
        .await
        .expect("POST /v4/linode/instances with firewall_id and a StackScript");
    // A VPC: a `vpc` interface on one of the VPC's own subnets (the mock's VPC has one, 456), named or
    // not; a subnet that is not the VPC's is refused before the create.
    for subnet in [None, Some("456")] {
        let in_vpc = ServerSpec {
            options: cloud::ServerOptions {
                vpc_id: Some("111".into()),
                subnet_id: subnet.map(str::to_string),
                ..Default::default()
            },
            ..spec.clone()
        };
        p.refuse_unsupported(&in_vpc).unwrap();
        p.create(&in_vpc)
            .await
            .expect("GET /v4/vpcs/{vpcId}/subnets, POST /v4/linode/instances with interfaces");
    }
    let elsewhere = ServerSpec {
        options: cloud::ServerOptions {
            vpc_id: Some("111".into()),
            subnet_id: Some("999".into()),
            ..Default::default()
        },
        ..spec.clone()
    };
    // Checked before any intent is recorded, and again by the create itself.
    let err = p.check_create(&elsewhere).await.unwrap_err();
    assert!(
        matches!(&err, CloudError::Unsupported(m) if m.contains("999")),
        "{err}"
    );
    p.check_create(&spec)
        .await
        .expect("nothing to check without a VPC");
    let err = p.create(&elsewhere).await.unwrap_err();
    assert!(
        matches!(&err, CloudError::Unsupported(m) if m.contains("999")),
        "{err}"
    );
    for (opts, field) in [
        (
            cloud::ServerOptions {
                firewall_id: Some("not-a-number".into()),
                ..Default::default()
            },
            "spec.firewallID",
        ),
        (
            cloud::ServerOptions {
                vpc_id: Some("vpc".into()),
                ..Default::default()
            },
            "spec.vpcID",
        ),
        (
            cloud::ServerOptions {
                vpc_id: Some("111".into()),
                subnet_id: Some("a".into()),
                ..Default::default()
            },
            "spec.subnetID",
        ),
    ] {
        let why = p
            .refuse_unsupported(&ServerSpec {
                options: opts,
                ..spec.clone()
            })
            .unwrap_err();
        assert!(why.contains(field), "{why}");
    }
    assert!(!created.id.is_empty());
    assert!(
        created.id.bytes().all(|b| b.is_ascii_digit()),
        "{created:?}"
    );
    assert!(!created.size.is_empty() && !created.region.is_empty());
    assert!(
        created
            .public_ipv6
            .as_deref()
            .is_some_and(|v| !v.contains('/')),
        "{created:?}"
    );
    // With a caller-chosen password too.
    spec.root_password = Some("Another-Strong-Pass-9".into());
    spec.user_data = None;
    p.create(&spec).await.expect("POST with root_pass");

    let got = p
        .get(&created.id)
        .await
        .expect("GET /v4/linode/instances/{id}")
        .expect("instance exists");
    assert_eq!(got.state, ServerState::Running, "{got:?}");
    assert!(got.public_ipv4.is_some());
    assert_eq!(p.get("not-a-number").await.unwrap(), None);

    // The mock's instances carry other tags, so nothing matches; the point is that the call validates.
    let found = p
        .find_by_tag(&uid_tag)
        .await
        .expect("GET /v4/linode/instances");
    assert!(found.iter().all(|s| s.tags.contains(&uid_tag)));
    // One listing of the whole account (drift observation).
    let listed = p
        .list_servers()
        .await
        .expect("GET /v4/linode/instances")
        .expect("Linode lists its instances");
    assert!(!listed.is_empty());

    for a in [PowerAction::On, PowerAction::Off, PowerAction::Reboot] {
        p.power(&created.id, a)
            .await
            .unwrap_or_else(|e| panic!("power {a:?}: {e}"));
    }
    // Tags: the mock's instance has "example tag" and "another example"; each change PUTs the whole list.
    p.add_tag(&created.id, &uid_tag)
        .await
        .expect("GET + PUT /v4/linode/instances/{id} (adoption)");
    p.remove_tag(&created.id, "example tag")
        .await
        .expect("GET + PUT /v4/linode/instances/{id} (release)");
    p.resize(&created.id, "g6-standard-4")
        .await
        .expect("POST /v4/linode/instances/{id}/resize");
    p.delete(&created.id)
        .await
        .expect("DELETE /v4/linode/instances/{id}");

    let sizes = p.sizes().await.expect("GET /v4/linode/types");
    assert!(!sizes.is_empty());
    for s in &sizes {
        assert!(s.price_monthly > rust_decimal::Decimal::ZERO, "{s:?}");
        assert!(s.price_hourly > rust_decimal::Decimal::ZERO, "{s:?}");
        assert!(s.vcpus > 0 && s.memory_mb > 0 && s.disk_gb > 0, "{s:?}");
        assert_eq!(s.currency, "USD");
    }
    let images = p.images().await.expect("GET /v4/images");
    assert!(
        images.iter().any(|i| i.slug.starts_with("linode/")),
        "{images:?}"
    );
    let regions = p.regions().await.expect("GET /v4/regions");
    assert!(regions.iter().any(|r| r.available), "{regions:?}");
}

/// Proves the mock validates requests: a create without the required `region`, with a number for `type`,
/// is refused with a 4xx.
#[tokio::test]
async fn vendor_linode_mock_rejects_an_invalid_create() {
    let Some(specs) = specs_dir() else { return };
    quartermaster::install_crypto_provider();
    let prism = Prism::start(&specs, SPEC);
    let resp = reqwest::Client::new()
        .post(format!("{}/v4/linode/instances", prism.url))
        .bearer_auth("linode-fake-token")
        .json(&serde_json::json!({ "type": 5, "label": "1-bad" }))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error(), "{}", resp.status());
}

/// Snapshots: an image of the instance's disk (its disks listed first), the private images by label,
/// and deletion.
#[tokio::test]
async fn vendor_linode_snapshot_requests_validate_against_the_spec() {
    let Some(specs) = specs_dir() else { return };
    let prism = Prism::start(&specs, SPEC);
    let account = Account {
        provider: ProviderType::Linode,
        endpoint: Some(prism.url.clone()),
        credentials: "linode-fake-token\n".into(),
        rate_limit: None,
    };
    let p = cloud::connect(&account, RetryPolicy::default(), None).unwrap();
    let mark = cloud::snapshot_mark("0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa");
    let made = p
        .create_snapshot("123", &mark)
        .await
        .expect("GET /v4/linode/instances/{id}/disks, POST /v4/images")
        .expect("Linode names the image at once");
    assert!(!made.id.is_empty(), "{made:?}");
    // The account's marked snapshots in one listing (the mock's carry other names).
    let marked = p
        .marked_snapshots()
        .await
        .expect("the account's snapshot listing");
    assert_eq!(marked, Some(Vec::new()), "nothing carries a mark");
    let found = p
        .find_snapshot("123", &mark, 0)
        .await
        .expect("GET /v4/images");
    assert!(
        matches!(
            found,
            cloud::SnapshotLookup::Absent | cloud::SnapshotLookup::Found(_)
        ),
        "{found:?}"
    );
    p.delete_snapshot("123", "private/15")
        .await
        .expect("DELETE /v4/images/private/{n}");
}

/// Transfer of a month (`/transfer/{year}/{month}`) and the Linode's stats; types carry their transfer.
#[tokio::test]
async fn vendor_linode_traffic_requests_validate_against_the_spec() {
    let Some(specs) = specs_dir() else { return };
    let prism = Prism::start(&specs, SPEC);
    let account = Account {
        provider: ProviderType::Linode,
        endpoint: Some(prism.url.clone()),
        credentials: "linode-fake-token".into(),
        rate_limit: None,
    };
    let p = cloud::connect(&account, RetryPolicy::default(), None).unwrap();
    let now = 1_764_892_800;
    let bytes = p
        .transfer("123", cloud::Month::of(now), now)
        .await
        .expect("GET /v4/linode/instances/{id}/transfer/{year}/{month}");
    assert!(bytes.is_some_and(|b| b > 0), "{bytes:?}");
    let m = p
        .metrics("123", now)
        .await
        .expect("GET /v4/linode/instances/{id}/stats")
        .expect("figures");
    assert!(
        m.cpu_percent.is_some() && m.network_out_bps.is_some(),
        "{m:?}"
    );
    assert_eq!(m.memory_total_bytes, None, "Linode's stats have no memory");
    let sizes = p.sizes().await.expect("GET /v4/linode/types");
    assert!(
        sizes
            .iter()
            .any(|s| s.transfer_bytes.is_some_and(|b| b > 0)),
        "{sizes:?}"
    );
    // The Backup service's price per type (its `addons`), and whether a Linode has it on.
    assert!(sizes.iter().any(|s| s.backup_price.is_some()), "{sizes:?}");
    // The account's own overage figure (GB beyond its pool this month).
    let overage = p.account_overage().await.expect("GET /v4/account/transfer");
    assert!(overage.is_some_and(|b| b >= 0), "{overage:?}");
    let server = p.get("123").await.expect("GET /v4/linode/instances/{id}");
    assert!(
        server.is_some_and(|s| s.backups.is_some()),
        "backups.enabled is read"
    );
}

/// A Project's VPC: the account's VPCs listed (and matched by exact label), one created with its one
/// subnet, and deleted.
#[tokio::test]
async fn vendor_linode_vpc_requests_validate_against_the_spec() {
    let Some(specs) = specs_dir() else { return };
    let prism = Prism::start(&specs, SPEC);
    let account = Account {
        provider: ProviderType::Linode,
        endpoint: Some(prism.url.clone()),
        credentials: "linode-fake-token".into(),
        rate_limit: None,
    };
    let p = cloud::connect(&account, RetryPolicy::default(), None).unwrap();
    let found = p.find_vpcs("cool-vpc").await.expect("GET /v4/vpcs");
    assert_eq!(
        found.len(),
        1,
        "the mock's VPC, by its exact label: {found:?}"
    );
    assert_eq!(found[0].id, "123");
    assert!(p.find_vpcs("cool").await.unwrap().is_empty());
    let name = cloud::vpc::vpc_name("0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa", "us-east");
    for range in [None, Some("10.10.10.0/24".to_string())] {
        let made = p
            .create_vpc(&cloud::VpcSpec {
                name: name.clone(),
                region: "us-east".into(),
                ip_range: range,
            })
            .await
            .expect("POST /v4/vpcs with one subnet");
        assert!(!made.id.is_empty(), "{made:?}");
    }
    p.delete_vpc("123").await.expect("DELETE /v4/vpcs/{vpcId}");
}
