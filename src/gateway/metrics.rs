//! The gateway's Prometheus metrics. Labels are the budget (`namespace`, `budget`), the model and the
//! upstream: bounded by the objects that exist, never by request content (a model no configuration
//! names is `other`).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

/// Every metric of the gateway process.
#[derive(Clone)]
pub struct GatewayMetrics {
    registry: Registry,
    /// Requests answered, by budget, model and HTTP status.
    pub requests: IntCounterVec,
    /// Tokens charged, by budget, model and direction (input, output).
    pub tokens: IntCounterVec,
    /// Requests by how they ended (completed, client_aborted, upstream_error, refused), by budget and
    /// model: one count per request, when it ends.
    pub outcomes: IntCounterVec,
    /// Time from sending a request upstream to its response headers, by upstream.
    pub upstream_latency: HistogramVec,
    /// Time the gateway itself adds to a request (everything but waiting for the upstream).
    pub added_latency: Histogram,
    /// Requests sent to the next upstream after one failed, by the upstream that failed.
    pub failovers: IntCounterVec,
    /// Ledger writes (usage flushes, slices) that failed.
    pub ledger_errors: IntCounterVec,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayMetrics {
    /// Registers every metric in a new registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let requests = counter(
            "quartermaster_gateway_requests_total",
            "Requests answered, by budget, model and HTTP status.",
            &["namespace", "budget", "model", "code"],
        );
        let tokens = counter(
            "quartermaster_gateway_tokens_total",
            "Tokens charged to budgets, by budget, model and direction.",
            &["namespace", "budget", "model", "direction"],
        );
        let outcomes = counter(
            "quartermaster_gateway_request_outcomes_total",
            "Requests by how they ended (completed, client_aborted, upstream_error, refused), by budget and model.",
            &["namespace", "budget", "model", "outcome"],
        );
        let failovers = counter(
            "quartermaster_gateway_failovers_total",
            "Requests sent to the next upstream after this one failed (connect error, timeout, 5xx, 429).",
            &["upstream"],
        );
        let ledger_errors = counter(
            "quartermaster_gateway_ledger_errors_total",
            "Ledger calls of the gateway that failed, by operation.",
            &["operation"],
        );
        let buckets = vec![
            0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
            0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        let upstream_latency = HistogramVec::new(
            HistogramOpts::new(
                "quartermaster_gateway_upstream_latency_seconds",
                "Time from sending a request upstream to its response headers.",
            )
            .buckets(buckets.clone()),
            &["upstream"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(upstream_latency.clone()))
            .expect("unique metric");
        let added_latency = Histogram::with_opts(
            HistogramOpts::new(
                "quartermaster_gateway_added_latency_seconds",
                "Time the gateway adds to a request: everything but waiting for the upstream.",
            )
            .buckets(buckets),
        )
        .expect("valid metric");
        registry
            .register(Box::new(added_latency.clone()))
            .expect("unique metric");
        Self {
            registry,
            requests,
            tokens,
            outcomes,
            upstream_latency,
            added_latency,
            failovers,
            ledger_errors,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}
