//! `quartermaster bench simcards`: N SimCards claimed on one 1NCE account of `quartermaster sim`, then a
//! resync of all of them at 1NCE's documented 10 requests a second — figures, never a pass/fail.
//!
//! The claims are made with the account's client limit raised (`--claim-rate`; 1NCE's own 10 a second
//! would make 10,000 first reads take ~50 minutes: each SimCard reads its quotas and usage once, 3 calls).
//! Then the ProviderConfig's `rateLimit` is set to 10 a second, which wakes every SimCard of the account:
//! that resync is measured — vendor calls, its duration, Kubernetes writes, the controller's RSS.

use std::path::PathBuf;

use super::BoxError;
use super::fleet::{self, Fleet};
use crate::crd::SimCard;

/// Benchmark settings.
#[derive(Clone, Debug, clap::Args)]
pub struct SimBench {
    /// Number of SimCards (and SIMs in the simulated account).
    #[arg(long, default_value_t = 1000)]
    pub sims: usize,
    /// The account's client rate limit while the SimCards are claimed, requests a second.
    #[arg(long, default_value_t = 1000)]
    pub claim_rate: u32,
    /// The settings every fleet benchmark shares.
    #[command(flatten)]
    pub fleet: fleet::FleetArgs,
}

/// Runs the benchmark and prints its figures; `exe` is the `quartermaster` binary.
pub async fn simcards(b: SimBench, exe: PathBuf) -> Result<(), BoxError> {
    let n = b.sims;
    println!(
        "# quartermaster bench simcards --sims {n} (claims at {} requests a second)",
        b.claim_rate
    );
    let claim_rate = b.claim_rate;
    let first = crate::sim::onence::FIRST_ICCID;
    let f = fleet::run::<SimCard>(
        Fleet {
            what: "sims",
            n,
            args: b.fleet,
            sim_args: Some(vec![
                format!("--onence-sims={n}"),
                "--onence-apply-secs=0".into(),
                "--onence-rate-limit=0".into(),
            ]),
            secret: serde_json::json!({
                "metadata": {"name": "onence"},
                "stringData": {"credentials": r#"{"clientId":"bench","clientSecret":"bench"}"#}
            }),
            // The resync: the account's limit set to 1NCE's 10 a second wakes every SimCard.
            provider_config: Box::new(move |ns, sim_url, step| {
                let rate = if step == 0 { claim_rate } else { 10 };
                serde_json::json!({
                    "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
                    "metadata": {"name": ns},
                    "spec": {"type": "onence", "endpoint": sim_url, "allowedNamespaces": [ns],
                             "rateLimit": {"requestsPerSecond": rate, "burst": rate},
                             "credentialsSecretRef": {"name": "onence", "namespace": ns, "key": "credentials"}}
                })
            }),
            object: Box::new(move |i, pc| {
                serde_json::json!({
                    "apiVersion": "quartermaster.dev/v1alpha1", "kind": "SimCard",
                    "metadata": {"name": format!("sim-{i:05}")},
                    "spec": {"iccid": (first + i as u64).to_string(), "providerConfigRef": {"name": pc}}
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
    println!("| SimCards | {n} |");
    println!(
        "| all claimed and Ready (client limit {claim_rate} a second) | {:.1} s (Ready seen at {:.1} s) |",
        f.created.as_secs_f64(),
        f.ready.as_secs_f64()
    );
    println!(
        "| vendor calls while claiming, per SIM | {:.2} |",
        f.create_calls as f64 / n as f64
    );
    println!(
        "| resync of every SimCard at 1NCE's 10 requests a second: duration | {:.1} s |",
        f.resync.as_secs_f64()
    );
    println!(
        "| vendor calls in that resync (SIM listing pages of 100, token) | {} |",
        f.calls
    );
    println!(
        "| SimCard status writes in that resync / per SIM | {} / {:.3} |",
        f.writes,
        f.writes as f64 / n as f64
    );
    fleet::print_common(&f);
    Ok(())
}
