//! Quartermaster: a Kubernetes operator that turns YAML into running, metered, billed infrastructure.
//!
//! Layers point one way: [`controller`] → vendor clients → [`crd`]. The binary (`src/main.rs`) is wiring.

pub mod controller;
pub mod crd;
pub mod metrics;
pub mod server;
pub mod telemetry;
