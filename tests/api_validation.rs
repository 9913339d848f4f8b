//! On a real kube-apiserver: every example is accepted, every file in `tests/invalid/` is rejected with 422
//! and a message naming the field (its `# expect:` header).

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, Scope};

mod common;

async fn apply_doc(
    client: &kube::Client,
    discovery: &Discovery,
    ns: &str,
    mut doc: serde_json::Value,
) -> Result<(), kube::Error> {
    let api_version = doc["apiVersion"].as_str().unwrap().to_string();
    let kind = doc["kind"].as_str().unwrap().to_string();
    let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
    let gvk = GroupVersionKind::gvk(group, version, &kind);
    let (ar, caps) = discovery
        .resolve_gvk(&gvk)
        .unwrap_or_else(|| panic!("unknown kind {api_version} {kind}"));
    let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
        doc["metadata"]["namespace"] = ns.into();
        Api::namespaced_with(client.clone(), ns, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    };
    let name = doc["metadata"]["name"].as_str().unwrap().to_string();
    api.patch(
        &name,
        &PatchParams::apply("quartermaster-tests").force(),
        &Patch::Apply(&doc),
    )
    .await
    .map(|_| ())
}

#[tokio::test]
async fn every_example_is_accepted() {
    let client = common::client().await;
    let ns = common::namespace(&client, "examples").await;
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let mut files: Vec<_> = std::fs::read_dir(common::root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut kinds = std::collections::BTreeSet::new();
    for f in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        for doc in common::read_yaml_docs(f) {
            if doc["kind"] == "Namespace" {
                continue; // each test uses its own namespace instead of the examples' `demo`
            }
            kinds.insert(doc["kind"].as_str().unwrap().to_string());
            apply_doc(&client, &discovery, &ns, doc)
                .await
                .unwrap_or_else(|e| panic!("{} was rejected: {e}", f.display()));
        }
    }
    for k in [
        "ProviderConfig",
        "Project",
        "VirtualMachine",
        "SimCard",
        "SimMessage",
        "Subscription",
        "TokenBudget",
    ] {
        assert!(kinds.contains(k), "examples/ has no {k}");
    }
}

#[tokio::test]
async fn invalid_objects_are_rejected_with_the_field_named() {
    let client = common::client().await;
    let ns = common::namespace(&client, "invalid").await;
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let mut files: Vec<_> = std::fs::read_dir(common::root().join("tests/invalid"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "expected a set of invalid objects");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect: <field>` header", f.display()))
            .trim()
            .to_string();
        let doc = common::read_yaml_docs(&f).remove(0);
        match apply_doc(&client, &discovery, &ns, doc).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{}: {}", f.display(), s.message);
                assert!(
                    s.message.contains(&expect),
                    "{}: message does not name {expect:?}: {}",
                    f.display(),
                    s.message
                );
            }
            other => panic!("{} was not rejected: {other:?}", f.display()),
        }
    }
}
