//! `quartermaster bench subscriptions`: N Subscriptions on one Stripe account of `quartermaster sim`,
//! then a resync of all of them at Stripe's 25 requests a second — figures, never a pass/fail.
//!
//! The Subscriptions are created with the account's client limit raised (`--create-rate`; each first
//! reconcile makes a customer and a subscription, ~5 calls). Then the ProviderConfig's `rateLimit` is set
//! to 25 a second, which wakes every Subscription of the account: that resync is measured — vendor
//! calls (one listing of the account's subscriptions serves them all), its duration, Kubernetes writes,
//! the controller's RSS.

use std::path::PathBuf;

use super::BoxError;
use super::fleet::{self, Fleet};
use crate::crd::Subscription;

/// Benchmark settings.
#[derive(Clone, Debug, clap::Args)]
pub struct SubscriptionBench {
    /// Number of Subscriptions.
    #[arg(long, default_value_t = 1000)]
    pub subs: usize,
    /// The account's client rate limit while the Subscriptions are created, requests a second.
    #[arg(long, default_value_t = 1000)]
    pub create_rate: u32,
    /// The settings every fleet benchmark shares.
    #[command(flatten)]
    pub fleet: fleet::FleetArgs,
}

/// Runs the benchmark and prints its figures; `exe` is the `quartermaster` binary.
pub async fn subscriptions(b: SubscriptionBench, exe: PathBuf) -> Result<(), BoxError> {
    let n = b.subs;
    println!(
        "# quartermaster bench subscriptions --subs {n} (created at {} requests a second)",
        b.create_rate
    );
    let create_rate = b.create_rate;
    let f = fleet::run::<Subscription>(
        Fleet {
            what: "subs",
            n,
            args: b.fleet,
            sim_args: Some(Vec::new()),
            secret: serde_json::json!({
                "metadata": {"name": "stripe"},
                "stringData": {"secretKey": "sk_test_bench"}
            }),
            // The resync: the account's limit set to Stripe's 25 a second wakes every Subscription.
            provider_config: Box::new(move |ns, sim_url, step| {
                let rate = if step == 0 { create_rate } else { 25 };
                serde_json::json!({
                    "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
                    "metadata": {"name": ns},
                    "spec": {"type": "stripe", "endpoint": sim_url, "allowedNamespaces": [ns],
                             "rateLimit": {"requestsPerSecond": rate, "burst": rate},
                             "plans": [{"name": "basic", "priceID": "price_basic"}],
                             "credentialsSecretRef": {"name": "stripe", "namespace": ns, "key": "secretKey"}}
                })
            }),
            object: Box::new(|i, pc| {
                serde_json::json!({
                    "apiVersion": "quartermaster.dev/v1alpha1", "kind": "Subscription",
                    "metadata": {"name": format!("sub-{i:05}")},
                    "spec": {"plan": "basic", "providerConfigRef": {"name": pc}}
                })
            }),
            prepare: None,
            controller_args: Vec::new(),
            after: None,
        },
        exe,
    )
    .await?;
    println!();
    println!("| measurement | result |");
    println!("|---|---|");
    println!("| Subscriptions | {n} |");
    println!(
        "| all created and Ready (client limit {create_rate} a second) | {:.1} s (Ready seen at {:.1} s) |",
        f.created.as_secs_f64(),
        f.ready.as_secs_f64()
    );
    println!(
        "| vendor calls while creating, per Subscription | {:.2} |",
        f.create_calls as f64 / n as f64
    );
    println!(
        "| resync of every Subscription at Stripe's 25 requests a second: duration | {:.1} s |",
        f.resync.as_secs_f64()
    );
    println!(
        "| vendor calls in that resync (subscription listing pages of 100) | {} |",
        f.calls
    );
    println!(
        "| Subscription status writes in that resync / per Subscription | {} / {:.3} |",
        f.writes,
        f.writes as f64 / n as f64
    );
    fleet::print_common(&f);
    Ok(())
}
