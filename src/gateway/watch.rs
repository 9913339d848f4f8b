//! Feeds the [`Directory`] from the API server: TokenBudgets (keys, allocation, period, blocks) and
//! ProviderConfigs of type `openai` with their credentials. Off the hot path: a request reads only the
//! directory.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use super::Gateway;
use super::directory::{Directory, Upstream};
use crate::crd::provider_config::ProviderType;
use crate::crd::{ProviderConfig, TokenBudget};

/// How often upstream credentials are read again (a rotated Secret takes effect within this).
pub const CREDENTIALS_REFRESH: Duration = Duration::from_secs(30);

/// Watches budgets and upstreams into `gw`'s directory until the watches end; marks the gateway ready
/// once both were listed.
pub async fn run(client: Client, gw: Arc<Gateway>) {
    let budgets = budgets(client.clone(), gw.directory.clone());
    let upstreams = upstreams(client, gw.clone());
    futures::future::join(budgets, upstreams).await;
}

async fn budgets(client: Client, dir: Arc<Directory>) {
    let api: Api<TokenBudget> = Api::all(client);
    let mut relisted: Option<HashSet<String>> = None;
    let mut known: HashSet<String> = HashSet::new();
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(ev) = events.next().await {
        match ev {
            Ok(watcher::Event::Apply(b)) => {
                known.insert(b.uid().unwrap_or_default());
                dir.put_budget(&b);
            }
            Ok(watcher::Event::Delete(b)) => {
                let uid = b.uid().unwrap_or_default();
                known.remove(&uid);
                dir.remove_budget(&uid);
            }
            Ok(watcher::Event::Init) => relisted = Some(HashSet::new()),
            Ok(watcher::Event::InitApply(b)) => {
                let uid = b.uid().unwrap_or_default();
                if let Some(seen) = relisted.as_mut() {
                    seen.insert(uid.clone());
                }
                known.insert(uid);
                dir.put_budget(&b);
            }
            Ok(watcher::Event::InitDone) => {
                // Budgets deleted while the watch was down are gone from the new list.
                if let Some(seen) = relisted.take() {
                    for uid in known.difference(&seen).cloned().collect::<Vec<_>>() {
                        known.remove(&uid);
                        dir.remove_budget(&uid);
                    }
                }
                tracing::info!(budgets = dir.budgets(), "gateway budgets loaded");
            }
            Err(e) => tracing::warn!(error = %e, "TokenBudget watch failed; retrying"),
        }
    }
}

/// Reads the API key of ProviderConfig `pc` (its credentials Secret).
async fn upstream_of(client: &Client, pc: &ProviderConfig) -> Option<Upstream> {
    if pc.spec.type_ != ProviderType::Openai {
        return None;
    }
    let r = &pc.spec.credentials_secret_ref;
    let api: Api<Secret> = Api::namespaced(client.clone(), &r.namespace);
    let key = match api.get_opt(&r.name).await {
        Ok(Some(s)) => s
            .data
            .and_then(|d| {
                d.get(&r.key)
                    .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
            })
            .unwrap_or_default(),
        Ok(None) => String::new(),
        Err(e) => {
            tracing::warn!(provider_config = %pc.name_any(), error = %e, "reading upstream credentials failed");
            return None;
        }
    };
    Upstream::of(pc, key)
}

async fn upstreams(client: Client, gw: Arc<Gateway>) {
    let api: Api<ProviderConfig> = Api::all(client.clone());
    let mut pcs: std::collections::BTreeMap<String, ProviderConfig> = Default::default();
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut refresh = tokio::time::interval(CREDENTIALS_REFRESH);
    loop {
        tokio::select! {
            ev = events.next() => {
                let Some(ev) = ev else { return };
                match ev {
                    Ok(watcher::Event::Apply(pc) | watcher::Event::InitApply(pc)) => {
                        put(&client, &gw.directory, &pc).await;
                        pcs.insert(pc.name_any(), pc);
                    }
                    Ok(watcher::Event::Delete(pc)) => {
                        gw.directory.remove_upstream(&pc.name_any());
                        pcs.remove(&pc.name_any());
                    }
                    Ok(watcher::Event::Init) => {}
                    Ok(watcher::Event::InitDone) => gw.set_ready(true),
                    Err(e) => tracing::warn!(error = %e, "ProviderConfig watch failed; retrying"),
                }
            }
            _ = refresh.tick() => {
                for pc in pcs.values() {
                    put(&client, &gw.directory, pc).await;
                }
            }
        }
    }
}

async fn put(client: &Client, dir: &Directory, pc: &ProviderConfig) {
    match upstream_of(client, pc).await {
        Some(u) => dir.put_upstream(u),
        None if pc.spec.type_ == ProviderType::Openai => {}
        None => dir.remove_upstream(&pc.name_any()),
    }
}
