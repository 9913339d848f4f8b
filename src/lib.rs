//! Quartermaster: a Kubernetes operator that turns YAML into running, metered, billed infrastructure.
//!
//! Layers point one way: [`controller`] → vendor clients → [`crd`]. The binary (`src/main.rs`) is wiring.

pub mod bench;
pub mod body_limit;
pub mod budget;
pub mod cloud;
pub mod controller;
pub mod crd;
pub mod fast_map;
pub mod gateway;
pub mod http;
pub mod kube_client;
pub mod ledger;
pub mod metrics;
pub mod output;
pub mod redact;
pub mod server;
pub mod sim;
pub mod telemetry;
pub mod webhooks;

/// Installs the process-wide rustls crypto provider (ring), once. Safe to call many times.
///
/// NB: with more than one provider compiled in, rustls cannot pick one and panics when a client is built.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
