//! Prometheus metrics of the controller process, registered in one registry that `/metrics` serves.
//!
//! Label values are bounded: `kind` is one of the six kinds, `category` an [`crate::controller::Error`]
//! category — never an error message.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// All metrics of the process.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles started, by kind.
    pub reconciles: IntCounterVec,
    /// Reconcile duration in seconds, by kind.
    pub reconcile_duration: HistogramVec,
    /// Reconcile errors, by kind and error category.
    pub reconcile_errors: IntCounterVec,
    /// Reconciles that panicked (contained to their object), by kind.
    pub reconcile_panics: IntCounterVec,
    /// VMs created again because recorded intent found no tagged server after a second look.
    pub recreates_after_intent: prometheus::IntCounter,
    /// Whole-account server listings (drift observation).
    pub account_listings: prometheus::IntCounter,
    /// Rounds of reading every account's server figures (transfer, opted-in load) completed.
    pub traffic_rounds: prometheus::IntCounter,
    /// Servers whose figures a round read.
    pub traffic_reads: prometheus::IntCounter,
    /// How long the last round took, seconds.
    pub traffic_round_seconds: prometheus::Gauge,
    /// Rounds of following the snapshots released to the platform.
    pub released_rounds: prometheus::IntCounter,
    /// Open releases the last of those rounds tried to follow (every account).
    pub released_followed: IntGauge,
    /// How long the last of those rounds took, seconds.
    pub released_round_seconds: prometheus::Gauge,
    /// Account listings that failed, per ProviderConfig (credentials unreadable or refused, vendor down).
    pub account_listing_failures: IntCounterVec,
    /// Start (unix seconds) of the oldest among the accounts' latest listings: now minus this is the age
    /// of the oldest observation of any listed server.
    pub oldest_listing: IntGauge,
    /// Usage records received from 1NCE's Data Streamer (new ones; re-sent ones are not counted).
    pub stream_records: prometheus::IntCounter,
    /// When the Data Streamer last delivered (unix seconds): now minus this is the gap in the stream.
    pub stream_last: IntGauge,
    /// Webhook requests refused for a bad signature or credentials, by vendor.
    pub webhook_refusals: IntCounterVec,
    /// Stripe webhook events handled, by type (redeliveries not counted).
    pub stripe_events: IntCounterVec,
    /// Ledger units reported to Stripe as billing meter events, by meter.
    pub stripe_usage_reported: IntCounterVec,
    /// Usage reports left unconfirmed past Stripe's deduplication window (not sent again).
    pub stripe_usage_unconfirmed: prometheus::IntCounter,
    /// TokenBudget status refreshes that read the ledger (a budget at rest reads nothing).
    pub budget_ledger_reads: prometheus::IntCounter,
    /// Status writes actually sent (skipped writes are not counted), by kind.
    pub status_writes: IntCounterVec,
    /// Reconciles that started from a watch cache older than this process's own last status write, and
    /// started from that write instead, by kind.
    pub stale_cache_starts: IntCounterVec,
    /// 1 while this process holds the leader lease.
    pub leader: IntGauge,
    /// Objects whose `Stalled` condition is True (the user must act), by kind; counted from the watch
    /// caches every 30 s by the leader.
    pub stalled: prometheus::IntGaugeVec,
    /// ProviderConfigs whose vendor could not be reached at their last check (`Unreachable`).
    pub unreachable: IntGauge,
    /// Usage events newly recorded in the ledger, by meter.
    pub usage_events: IntCounterVec,
    /// Usage recorded without a price (no price known for the server's size), in the meter's unit.
    pub unpriced_usage: IntCounterVec,
    /// Usage recorded for objects that belong to no Project, per meter (in the meter's unit).
    pub usage_without_project: IntCounterVec,
    /// Ledger write latency in seconds.
    pub ledger_write_duration: prometheus::Histogram,
    /// Usage events waiting for the ledger (computed but not yet accepted).
    pub ledger_buffer_depth: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "quartermaster_reconciles_total",
                "Reconciles started, by kind.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "quartermaster_reconcile_duration_seconds",
                "Reconcile duration, by kind.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["kind"],
        )
        .expect("valid metric");
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "quartermaster_reconcile_errors_total",
                "Reconcile errors, by kind and error category.",
            ),
            &["kind", "category"],
        )
        .expect("valid metric");
        let reconcile_panics = IntCounterVec::new(
            Opts::new(
                "quartermaster_reconcile_panics_total",
                "Reconciles that panicked; the panic was contained to the object, which is Stalled InternalError.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let traffic_rounds = prometheus::IntCounter::new(
            "quartermaster_traffic_rounds_total",
            "Rounds of reading every compute account's server figures (transfer, opted-in metrics) completed.",
        )
        .expect("valid metric");
        let traffic_reads = prometheus::IntCounter::new(
            "quartermaster_traffic_reads_total",
            "Servers whose transfer (and opted-in metrics) a round read.",
        )
        .expect("valid metric");
        let traffic_round_seconds = prometheus::Gauge::new(
            "quartermaster_traffic_round_seconds",
            "How long the last round of reading server figures took (it spends at most half of each account's rate limit).",
        )
        .expect("valid metric");
        let released_rounds = prometheus::IntCounter::new(
            "quartermaster_released_snapshot_rounds_total",
            "Rounds of following the snapshots released to the platform (their storage recorded as vendor cost) completed.",
        )
        .expect("valid metric");
        let released_followed = IntGauge::new(
            "quartermaster_released_snapshots_followed",
            "Open releases of snapshots to the platform that the last round tried to follow (every account, those whose account failed included).",
        )
        .expect("valid metric");
        let released_round_seconds = prometheus::Gauge::new(
            "quartermaster_released_snapshot_round_seconds",
            "How long the last round of following released snapshots took.",
        )
        .expect("valid metric");
        let account_listings = prometheus::IntCounter::new(
            "quartermaster_account_listings_total",
            "Whole-account server listings made to see drift at the vendor.",
        )
        .expect("valid metric");
        let account_listing_failures = IntCounterVec::new(
            Opts::new(
                "quartermaster_account_listing_failures_total",
                "Whole-account server listings that failed, per ProviderConfig (credentials unreadable or refused, vendor down); the other accounts are still listed.",
            ),
            &["provider_config"],
        )
        .expect("valid metric");
        let oldest_listing = IntGauge::new(
            "quartermaster_oldest_account_listing_timestamp_seconds",
            "Start (unix seconds) of the oldest among the accounts' latest server listings.",
        )
        .expect("valid metric");
        let stream_records = prometheus::IntCounter::new(
            "quartermaster_streamer_records_total",
            "Usage records received from 1NCE's Data Streamer (each counted once).",
        )
        .expect("valid metric");
        let stream_last = IntGauge::new(
            "quartermaster_streamer_last_delivery_timestamp_seconds",
            "When 1NCE's Data Streamer last delivered (unix seconds); a gap in the stream shows as its age.",
        )
        .expect("valid metric");
        let webhook_refusals = IntCounterVec::new(
            Opts::new(
                "quartermaster_webhook_refusals_total",
                "Webhook requests refused for a bad signature or bad credentials (answered 400 or 401, nothing done).",
            ),
            &["vendor"],
        )
        .expect("valid metric");
        let stripe_events = IntCounterVec::new(
            Opts::new(
                "quartermaster_stripe_events_total",
                "Stripe webhook events handled, by type (a redelivered event is counted once).",
            ),
            &["type"],
        )
        .expect("valid metric");
        let stripe_usage_reported = IntCounterVec::new(
            Opts::new(
                "quartermaster_stripe_usage_reported_total",
                "Ledger units reported to Stripe as billing meter events (each ledger row once), by meter.",
            ),
            &["meter"],
        )
        .expect("valid metric");
        let stripe_usage_unconfirmed = prometheus::IntCounter::new(
            "quartermaster_stripe_usage_unconfirmed_total",
            "Usage reports whose answer was lost longer ago than Stripe deduplicates identifiers: not sent again, to be checked by hand.",
        )
        .expect("valid metric");
        let budget_ledger_reads = prometheus::IntCounter::new(
            "quartermaster_budget_ledger_reads_total",
            "TokenBudget status refreshes that read the budget's usage from the ledger.",
        )
        .expect("valid metric");
        let recreates_after_intent = prometheus::IntCounter::new(
            "quartermaster_vm_recreates_after_intent_total",
            "VM creates after recorded intent found no tagged server on two looks (the earlier create never reached the vendor).",
        )
        .expect("valid metric");
        let status_writes = IntCounterVec::new(
            Opts::new(
                "quartermaster_status_writes_total",
                "Status patches sent (unchanged status is not written).",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let stale_cache_starts = IntCounterVec::new(
            Opts::new(
                "quartermaster_stale_cache_starts_total",
                "Reconciles whose watch cache was older than the controller's own last status write (they start from that write).",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let stalled = prometheus::IntGaugeVec::new(
            Opts::new(
                "quartermaster_objects_stalled",
                "Objects whose Stalled condition is True, by kind (counted every 30 s).",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let unreachable = IntGauge::new(
            "quartermaster_provider_configs_unreachable",
            "ProviderConfigs whose vendor could not be reached at their last check.",
        )
        .expect("valid metric");
        let leader = IntGauge::new(
            "quartermaster_leader",
            "1 while this process holds the leader lease.",
        )
        .expect("valid metric");
        let usage_events = IntCounterVec::new(
            Opts::new(
                "quartermaster_usage_events_recorded_total",
                "Usage events newly recorded, by meter.",
            ),
            &["meter"],
        )
        .expect("valid metric");
        let usage_without_project = IntCounterVec::new(
            Opts::new(
                "quartermaster_usage_without_project_total",
                "Usage recorded for objects that belong to no Project, in the meter's unit: billed to no tenant, reported by namespace (quartermaster usage --namespace). The platform's own vendor cost (pooled transfer overage, released snapshots) is not counted.",
            ),
            &["meter"],
        )
        .expect("valid metric");
        let unpriced_usage = IntCounterVec::new(
            Opts::new(
                "quartermaster_usage_unpriced_total",
                "Usage recorded with no known price (to be priced later), in the meter's unit, by meter.",
            ),
            &["meter"],
        )
        .expect("valid metric");
        let ledger_write_duration = prometheus::Histogram::with_opts(HistogramOpts::new(
            "quartermaster_ledger_write_duration_seconds",
            "Ledger write latency.",
        ))
        .expect("valid metric");
        let ledger_buffer_depth = IntGauge::new(
            "quartermaster_ledger_buffer_depth",
            "Usage events computed but not yet accepted by the ledger.",
        )
        .expect("valid metric");
        for c in [
            Box::new(usage_events.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(unpriced_usage.clone()),
            Box::new(usage_without_project.clone()),
            Box::new(ledger_write_duration.clone()),
            Box::new(ledger_buffer_depth.clone()),
            Box::new(reconciles.clone()),
            Box::new(reconcile_duration.clone()),
            Box::new(reconcile_errors.clone()),
            Box::new(reconcile_panics.clone()),
            Box::new(recreates_after_intent.clone()),
            Box::new(account_listings.clone()),
            Box::new(traffic_rounds.clone()),
            Box::new(traffic_reads.clone()),
            Box::new(traffic_round_seconds.clone()),
            Box::new(released_rounds.clone()),
            Box::new(released_followed.clone()),
            Box::new(released_round_seconds.clone()),
            Box::new(account_listing_failures.clone()),
            Box::new(oldest_listing.clone()),
            Box::new(stream_records.clone()),
            Box::new(stream_last.clone()),
            Box::new(webhook_refusals.clone()),
            Box::new(stripe_events.clone()),
            Box::new(stripe_usage_reported.clone()),
            Box::new(stripe_usage_unconfirmed.clone()),
            Box::new(budget_ledger_reads.clone()),
            Box::new(status_writes.clone()),
            Box::new(stale_cache_starts.clone()),
            Box::new(leader.clone()),
            Box::new(stalled.clone()),
            Box::new(unreachable.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self {
            registry,
            reconciles,
            reconcile_duration,
            reconcile_errors,
            reconcile_panics,
            recreates_after_intent,
            account_listings,
            traffic_rounds,
            traffic_reads,
            traffic_round_seconds,
            released_rounds,
            released_followed,
            released_round_seconds,
            account_listing_failures,
            oldest_listing,
            stream_records,
            stream_last,
            webhook_refusals,
            stripe_events,
            stripe_usage_reported,
            stripe_usage_unconfirmed,
            budget_ledger_reads,
            status_writes,
            stale_cache_starts,
            leader,
            stalled,
            unreachable,
            usage_events,
            unpriced_usage,
            usage_without_project,
            ledger_write_duration,
            ledger_buffer_depth,
        }
    }

    /// The registry, for components that add their own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# failed to encode metrics: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics() {
        let m = Metrics::new();
        m.reconciles.with_label_values(&["ProviderConfig"]).inc();
        m.reconcile_errors
            .with_label_values(&["ProviderConfig", "kube_api"])
            .inc();
        let text = m.render();
        assert!(text.contains("quartermaster_reconciles_total{kind=\"ProviderConfig\"} 1"));
        assert!(text.contains(
            "quartermaster_reconcile_errors_total{category=\"kube_api\",kind=\"ProviderConfig\"} 1"
        ));
    }
}
