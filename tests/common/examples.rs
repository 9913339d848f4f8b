//! The examples as a user applies them, made a test's own: its namespace, unique ProviderConfig names
//! pointing at its simulator, and its label (the controller under test reconciles only labelled
//! objects).

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::Value;

/// Every kind the controller reconciles.
pub const KINDS: [&str; 7] = [
    "ProviderConfig",
    "Project",
    "VirtualMachine",
    "SimCard",
    "SimMessage",
    "Subscription",
    "TokenBudget",
];

/// The examples (except the Namespace), made this test's.
pub fn examples(ns: &str, id: &str, sim: &str) -> Vec<Value> {
    let pcs = ["digitalocean-sim", "onence-sim", "stripe-sim", "openai-sim"];
    fn walk(v: &mut Value, f: &dyn Fn(&str) -> Option<String>) {
        match v {
            Value::String(s) => {
                if let Some(n) = f(s) {
                    *s = n;
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, f)),
            Value::Object(o) => o.values_mut().for_each(|x| walk(x, f)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(super::root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        for mut d in super::read_yaml_docs(&f) {
            if d["kind"] == "Namespace" {
                continue;
            }
            walk(&mut d, &|s: &str| {
                if s == "demo" {
                    Some(ns.to_string())
                } else if pcs.contains(&s) {
                    Some(format!("{s}-{id}"))
                } else {
                    s.strip_prefix("http://127.0.0.1:18089")
                        .map(|rest| format!("{sim}{rest}"))
                }
            });
            d["metadata"]["labels"]["qm-test"] = id.into();
            out.push(d);
        }
    }
    out
}

fn resource(d: &Value) -> (ApiResource, bool) {
    let (group, version) = match d["apiVersion"].as_str().unwrap().split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), d["apiVersion"].as_str().unwrap().to_string()),
    };
    let kind = d["kind"].as_str().unwrap().to_string();
    let plural = match kind.as_str() {
        "Secret" => "secrets".to_string(),
        k => match k.to_lowercase().strip_suffix('y') {
            Some(stem) => format!("{stem}ies"),
            None => format!("{}s", k.to_lowercase()),
        },
    };
    let ar = ApiResource {
        api_version: d["apiVersion"].as_str().unwrap().to_string(),
        group,
        version,
        kind: kind.clone(),
        plural,
    };
    (ar, kind == "ProviderConfig")
}

pub fn api(client: &kube::Client, d: &Value) -> Api<DynamicObject> {
    let (ar, cluster) = resource(d);
    if cluster {
        Api::all_with(client.clone(), &ar)
    } else {
        Api::namespaced_with(
            client.clone(),
            d["metadata"]["namespace"].as_str().unwrap(),
            &ar,
        )
    }
}

pub async fn apply_all(client: &kube::Client, docs: &[Value]) {
    let pp = PatchParams::apply("gitops-test").force();
    for d in docs {
        let name = d["metadata"]["name"].as_str().unwrap();
        api(client, d)
            .patch(name, &pp, &Patch::Apply(d))
            .await
            .unwrap();
    }
}

/// `Ready=True` with `observedGeneration` equal to the object's generation (what `kubectl wait` and
/// kstatus read as settled).
pub fn settled(o: &DynamicObject) -> bool {
    let st = &o.data["status"];
    st["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
        && st["observedGeneration"].as_i64() == o.metadata.generation
}

/// Waits up to `wait` until the object of `d` is gone.
pub async fn wait_gone(client: &kube::Client, d: &Value, wait: std::time::Duration) {
    let name = d["metadata"]["name"].as_str().unwrap();
    super::eventually(wait, &format!("{} {name} gone", d["kind"]), || async {
        api(client, d)
            .get_opt(name)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
}

/// Condition `type_` of `o`'s status, as JSON.
pub fn condition<'a>(o: &'a DynamicObject, type_: &str) -> Option<&'a Value> {
    o.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Turns the simulator's outage (every vendor answers 503) on or off.
pub async fn outage(sim: &str, on: bool) {
    let r = reqwest::Client::new()
        .post(format!("{sim}/_sim/outage"))
        .json(&serde_json::json!({ "on": on }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
}
