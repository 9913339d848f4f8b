//! `quartermaster bench tokenbudgets`: N TokenBudgets (one API key each) on one controller, then a
//! resync of all of them — figures, never a pass/fail.
//!
//! Creating makes one key Secret per budget and reads the (empty) ledger once per budget. Then the
//! upstream ProviderConfig is changed, which wakes every budget: that resync is measured — its
//! duration, status writes, ledger reads (a budget at rest reads nothing: one activity query serves
//! all), Kubernetes writes, the controller's CPU and RSS.

use std::path::PathBuf;

use super::fleet::{self, Fleet};
use super::{BoxError, count};
use crate::crd::TokenBudget;

/// Benchmark settings.
#[derive(Clone, Debug, clap::Args)]
pub struct BudgetBench {
    /// Number of TokenBudgets.
    #[arg(long, default_value_t = 1000)]
    pub budgets: usize,
    /// The settings every fleet benchmark shares.
    #[command(flatten)]
    pub fleet: fleet::FleetArgs,
}

/// Runs the benchmark and prints its figures; `exe` is the `quartermaster` binary.
pub async fn token_budgets(b: BudgetBench, exe: PathBuf) -> Result<(), BoxError> {
    let n = b.budgets;
    println!("# quartermaster bench tokenbudgets --budgets {n}");
    let f = fleet::run::<TokenBudget>(
        Fleet {
            what: "budgets",
            n,
            args: b.fleet,
            sim_args: None,
            secret: serde_json::json!({
                "metadata": {"name": "llm"}, "stringData": {"token": "sk-bench"}
            }),
            // The resync: a price change of the upstream wakes every budget.
            provider_config: Box::new(|ns, _, step| {
                let price = if step == 0 { "0.15" } else { "0.16" };
                serde_json::json!({
                    "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
                    "metadata": {"name": ns},
                    "spec": {"type": "openai", "endpoint": "http://127.0.0.1:1/v1", "allowedNamespaces": [ns],
                             "credentialsSecretRef": {"name": "llm", "namespace": ns},
                             "models": [{"name": "gpt-4o-mini", "inputPerMillion": price, "outputPerMillion": "0.60"}]}
                })
            }),
            object: Box::new(|i, pc| {
                serde_json::json!({
                    "apiVersion": "quartermaster.dev/v1alpha1", "kind": "TokenBudget",
                    "metadata": {"name": format!("tb-{i:05}")},
                    "spec": {"tokens": 1_000_000, "providerConfigRef": {"name": pc},
                             "apiKeys": [{"name": "prod"}], "alertThresholds": [80]}
                })
            }),
            prepare: None,
            controller_args: Vec::new(),
            after: None,
        },
        exe,
    )
    .await?;
    const WRITES: &str = "quartermaster_status_writes_total{kind=\"TokenBudget\"}";
    const READS: &str = "quartermaster_budget_ledger_reads_total";
    let (before, after) = &f.counters;
    println!();
    println!("| measurement | result |");
    println!("|---|---|");
    println!("| TokenBudgets (one API key Secret each) | {n} |");
    println!(
        "| all created and Ready | {:.1} s (Ready seen at {:.1} s) |",
        f.created.as_secs_f64(),
        f.ready.as_secs_f64()
    );
    println!(
        "| status writes / ledger reads while creating, per budget | {:.2} / {:.2} |",
        count(before, WRITES) as f64 / n as f64,
        count(before, READS) as f64 / n as f64
    );
    println!(
        "| resync of every budget (its ProviderConfig changed): duration | {:.1} s |",
        f.resync.as_secs_f64()
    );
    println!(
        "| status writes / ledger reads in that resync | {} / {} |",
        f.writes,
        count(after, READS) - count(before, READS)
    );
    fleet::print_common(&f);
    Ok(())
}
