//! `quartermaster catalog sizes|images|regions --provider-config NAME [--output table|json]` against the
//! simulator through a real ProviderConfig and Secret.

mod common;

#[tokio::test]
async fn catalog_lists_sizes_images_and_regions() {
    let client = common::client().await;
    let ns = common::namespace(&client, "cat").await;
    let id = common::unique("cat");
    let sim = common::start_sim(|_| {}).await;
    common::secret(&client, &ns, "do-token", "token", "t").await;
    common::do_provider_config(&client, &id, &id, &ns, &sim.url, &[]).await;
    let id1 = id.clone();
    let run = move |args: &[&str]| {
        let out = common::process::quartermaster()
            .arg("catalog")
            .args(args)
            .args(["--provider-config", &id1])
            .env("KUBECONFIG", common::kubeconfig())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The blocking child process must not stall the simulator running on this runtime.
    let (ok, table, err) = tokio::task::spawn_blocking(move || run(&["sizes"]))
        .await
        .unwrap();
    assert!(ok, "{err}");
    assert!(table.starts_with("SLUG"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("s-1vcpu-1gb") && l.contains("0.00893")),
        "{table}"
    );

    let id2 = id.clone();
    let out = tokio::task::spawn_blocking(move || {
        common::process::quartermaster()
            .args([
                "catalog",
                "images",
                "--output",
                "json",
                "--provider-config",
                &id2,
            ])
            .env("KUBECONFIG", common::kubeconfig())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let images: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = images
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"distribution") && kinds.contains(&"application"),
        "{kinds:?}"
    );

    let out = common::process::quartermaster()
        .args(["catalog", "regions", "--provider-config", "no-such-config"])
        .env("KUBECONFIG", common::kubeconfig())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("ProviderConfig \"no-such-config\" not found")
    );
}
