//! The Vultr client against a Prism mock of Vultr's own OpenAPI document: every request it sends must
//! validate (a 4xx from Prism fails the test), and the answers decode into our types.

mod common;
use common::prism::{Prism, specs_dir};

use quartermaster::cloud::{self, Account, PowerAction, ServerSpec};
use quartermaster::crd::ProviderType;
use quartermaster::http::RetryPolicy;

const SPEC: &str = "vultr/openapi.json";

#[tokio::test]
async fn vendor_vultr_client_requests_validate_against_the_spec() {
    let Some(specs) = specs_dir() else { return };
    let prism = Prism::start(&specs, SPEC);
    let account = Account {
        provider: ProviderType::Vultr,
        // The spec's paths have no `/v2`: the mock root stands in for https://api.vultr.com/v2.
        endpoint: Some(format!("{}/", prism.url)),
        credentials: "VULTR-FAKE-KEY".into(),
        rate_limit: Some((50, 10)),
    };
    let p = cloud::connect(&account, RetryPolicy::default(), None).unwrap();
    assert_eq!(p.vendor(), "vultr");
    assert!(!p.accepts_root_password(false) && !p.accepts_root_password(true));
    assert!(!p.resize_needs_power_off());
    p.verify().await.expect("GET /account");

    let uid_tag = cloud::uid_tag("0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa");
    let base = ServerSpec {
        name: "Web Server 1".into(),
        region: "ewr".into(),
        size: "vc2-1c-1gb".into(),
        image: "1743".into(),
        ssh_keys: vec!["cb676a46-66fd-4dfb-b839-443f2e6c0b60".into()],
        user_data: Some("#cloud-config\n".into()),
        tags: vec![uid_tag.clone(), "web".into()],
        backups: true,
        ipv6: true,
        root_password: None,
        options: Default::default(),
    };
    // Every image form: os_id, app_id, snapshot_id, image_id.
    let mut created = None;
    for image in [
        "1743",
        "app:1028",
        "snapshot:cb676a46-66fd-4dfb-b839-443f2e6c0b60",
        "openlitespeed-wordpress",
    ] {
        let spec = ServerSpec {
            image: image.into(),
            ..base.clone()
        };
        let s = p
            .create(&spec)
            .await
            .unwrap_or_else(|e| panic!("POST /instances with image {image}: {e}"));
        assert!(!s.id.is_empty());
        // The mock's answer carries a default_password: it must not leak into our types.
        assert!(!format!("{s:?}").contains("v5{Fkvb"), "{s:?}");
        created = Some(s);
    }
    let created = created.unwrap();
    // Vendor options Vultr honours: a VPC and a firewall group.
    let with_options = ServerSpec {
        options: cloud::ServerOptions {
            vpc_id: Some("cb676a46-66fd-4dfb-b839-443f2e6c0b60".into()),
            firewall_id: Some("cb676a46-66fd-4dfb-b839-443f2e6c0b60".into()),
            ..Default::default()
        },
        ..base.clone()
    };
    p.refuse_unsupported(&with_options).unwrap();
    let made = p
        .create(&with_options)
        .await
        .expect("POST /instances with attach_vpc and firewall_group_id");
    // The generated administrator password (a Windows server's RDP login) comes with the create's
    // answer, and no Debug output shows it.
    let password = made.initial_password.clone().expect("default_password");
    assert!(!password.0.is_empty());
    assert!(!format!("{made:?}").contains(&password.0), "{made:?}");
    let monitoring = ServerSpec {
        options: cloud::ServerOptions {
            monitoring: true,
            ..Default::default()
        },
        ..base.clone()
    };
    assert!(
        p.refuse_unsupported(&monitoring)
            .unwrap_err()
            .contains("vultr")
    );

    let got = p
        .get(&created.id)
        .await
        .expect("GET /instances/{id}")
        .expect("instance exists");
    assert!(!got.size.is_empty() && !got.region.is_empty(), "{got:?}");
    assert!(got.public_ipv4.is_some(), "{got:?}");

    // The mock's instances carry other tags, so nothing matches; the point is that the call validates.
    let found = p.find_by_tag(&uid_tag).await.expect("GET /instances?tag=");
    assert!(found.iter().all(|s| s.tags.contains(&uid_tag)));
    // One listing of the whole account (drift observation).
    let listed = p
        .list_servers()
        .await
        .expect("GET /instances")
        .expect("Vultr lists its instances");
    assert!(!listed.is_empty());

    for a in [PowerAction::On, PowerAction::Off, PowerAction::Reboot] {
        p.power(&created.id, a)
            .await
            .unwrap_or_else(|e| panic!("power {a:?}: {e}"));
    }
    // Tags: the mock's instance has "a tag" and "another"; each change PATCHes the whole list.
    p.add_tag(&created.id, &uid_tag)
        .await
        .expect("GET + PATCH /instances/{id} (adoption)");
    p.remove_tag(&created.id, "a tag")
        .await
        .expect("GET + PATCH /instances/{id} (release)");
    p.resize(&created.id, "vc2-2c-4gb")
        .await
        .expect("PATCH /instances/{id}");
    p.delete(&created.id).await.expect("DELETE /instances/{id}");

    let sizes = p.sizes().await.expect("GET /plans");
    assert!(!sizes.is_empty());
    for s in &sizes {
        assert!(s.price_monthly > rust_decimal::Decimal::ZERO, "{s:?}");
        assert!(s.price_hourly > rust_decimal::Decimal::ZERO, "{s:?}");
        assert!(s.price_hourly.scale() <= 6, "{s:?}");
    }
    let images = p.images().await.expect("GET /os + /applications");
    assert!(
        images.iter().any(|i| i.kind == "distribution"),
        "{images:?}"
    );
    assert!(
        images
            .iter()
            .any(|i| i.kind == "application" && i.slug.starts_with("app:")),
        "{images:?}"
    );
    assert!(!p.regions().await.expect("GET /regions").is_empty());
}

/// Proves the mock validates requests: a create without the required `plan` and with a string `os_id`
/// is refused with a 4xx.
#[tokio::test]
async fn vendor_vultr_mock_rejects_an_invalid_create() {
    let Some(specs) = specs_dir() else { return };
    quartermaster::install_crypto_provider();
    let prism = Prism::start(&specs, SPEC);
    let resp = reqwest::Client::new()
        .post(format!("{}/instances", prism.url))
        .bearer_auth("VULTR-FAKE-KEY")
        .json(&serde_json::json!({ "region": "ewr", "os_id": "ubuntu" }))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error(), "{}", resp.status());
}

/// Snapshots: `POST /snapshots`, the list filtered by description, and deletion.
#[tokio::test]
async fn vendor_vultr_snapshot_requests_validate_against_the_spec() {
    let Some(specs) = specs_dir() else { return };
    let prism = Prism::start(&specs, SPEC);
    let account = Account {
        provider: ProviderType::Vultr,
        endpoint: Some(format!("{}/", prism.url)),
        credentials: "VULTR-FAKE-KEY".into(),
        rate_limit: Some((50, 10)),
    };
    let p = cloud::connect(&account, RetryPolicy::default(), None).unwrap();
    let mark = cloud::snapshot_mark("0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa");
    let made = p
        .create_snapshot("cb676a46-66fd-4dfb-b839-443f2e6c0b60", &mark)
        .await
        .expect("POST /snapshots")
        .expect("Vultr names the snapshot at once");
    assert!(!made.id.is_empty(), "{made:?}");
    // The mock describes its snapshots otherwise: nothing carries our mark.
    // The account's marked snapshots in one listing (the mock's carry other names).
    let marked = p
        .marked_snapshots()
        .await
        .expect("the account's snapshot listing");
    assert_eq!(marked, Some(Vec::new()), "nothing carries a mark");
    // A snapshot read by its ID (a release the listing lacks is confirmed gone this way).
    let by_id = p
        .snapshot("", "cb676a46-66fd-4dfb-b839-443f2e6c0b60")
        .await
        .expect("the snapshot read by its ID");
    assert!(
        by_id.is_some_and(|s| !s.id.is_empty()),
        "the mock's snapshot"
    );
    let found = p
        .find_snapshot("cb676a46-66fd-4dfb-b839-443f2e6c0b60", &mark, 0)
        .await
        .expect("GET /snapshots?description=");
    assert_eq!(found, cloud::SnapshotLookup::Absent);
    p.restore_snapshot("cb676a46-66fd-4dfb-b839-443f2e6c0b60", &made.id)
        .await
        .expect("POST /instances/{id}/restore");
    p.delete_snapshot("", &made.id)
        .await
        .expect("DELETE /snapshots/{id}");
}

/// An instance's daily bandwidth (`/instances/{id}/bandwidth`); plans carry their bandwidth.
#[tokio::test]
async fn vendor_vultr_traffic_requests_validate_against_the_spec() {
    let Some(specs) = specs_dir() else { return };
    let prism = Prism::start(&specs, SPEC);
    let account = Account {
        provider: ProviderType::Vultr,
        endpoint: Some(format!("{}/", prism.url)),
        credentials: "VULTR-FAKE-KEY".into(),
        rate_limit: Some((50, 10)),
    };
    let p = cloud::connect(&account, RetryPolicy::default(), None).unwrap();
    // The document's example days are in July 2020.
    let july = cloud::Month::parse("2020-07").unwrap();
    let bytes = p
        .transfer("cb676a46-66fd-4dfb-b839-443f2e6c0b60", july, july.end())
        .await
        .expect("GET /instances/{id}/bandwidth");
    assert!(bytes.is_some(), "{bytes:?}");
    assert_eq!(
        p.metrics("cb676a46-66fd-4dfb-b839-443f2e6c0b60", 0)
            .await
            .unwrap(),
        None
    );
    let sizes = p.sizes().await.expect("GET /plans");
    assert!(
        sizes
            .iter()
            .any(|s| s.transfer_bytes.is_some_and(|b| b > 0)),
        "{sizes:?}"
    );
    assert!(sizes.iter().all(|s| s.backup_price.is_some()), "{sizes:?}");
}

/// A Project's VPC: the account's VPCs listed (and matched by exact description), one created with its
/// range, and deleted.
#[tokio::test]
async fn vendor_vultr_vpc_requests_validate_against_the_spec() {
    let Some(specs) = specs_dir() else { return };
    let prism = Prism::start(&specs, SPEC);
    let account = Account {
        provider: ProviderType::Vultr,
        endpoint: Some(format!("{}/", prism.url)),
        credentials: "VULTR-FAKE-KEY".into(),
        rate_limit: None,
    };
    let p = cloud::connect(&account, RetryPolicy::default(), None).unwrap();
    let found = p
        .find_vpcs("Example VPC Description")
        .await
        .expect("GET /vpcs");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].ip_range.as_deref(), Some("10.99.0.0/24"));
    let name = cloud::vpc::vpc_name("0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa", "ewr");
    assert!(p.find_vpcs(&name).await.unwrap().is_empty());
    let made = p
        .create_vpc(&cloud::VpcSpec {
            name,
            region: "ewr".into(),
            ip_range: Some("10.99.0.0/24".into()),
        })
        .await
        .expect("POST /vpcs");
    assert!(!made.id.is_empty(), "{made:?}");
    p.delete_vpc(&made.id).await.expect("DELETE /vpcs/{vpc-id}");
}
