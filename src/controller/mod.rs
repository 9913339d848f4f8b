//! Controllers: the kind-free [`runtime`] and one folder per kind. Each kind is wired with one line in
//! [`KINDS`]; [`run`] starts them all and returns when they have shut down.

pub mod project;
pub mod provider_config;
pub mod runtime;
pub mod sim_card;
pub mod sim_message;
pub mod snapshot_policy;
pub mod subscription;
pub mod token_budget;
pub mod vendor;
pub mod virtual_machine;
pub mod virtual_machine_snapshot;

use std::future::Future;
use std::sync::Arc;

pub use runtime::{Concurrency, Context, ControllerConfig, Error, Wire, backoff_delay};

use crate::server::Readiness;

/// Every kind this process reconciles, by its wiring.
pub const KINDS: &[Wire] = &[
    provider_config::WIRE,
    virtual_machine::WIRE,
    project::WIRE,
    sim_card::WIRE,
    sim_message::WIRE,
    subscription::WIRE,
    token_budget::WIRE,
    virtual_machine_snapshot::WIRE,
    snapshot_policy::WIRE,
];

/// Runs the controller of every kind until `shutdown` resolves; marks `health` synced once every cache
/// is filled.
pub async fn run(
    ctx: Arc<Context>,
    health: Arc<Readiness>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    runtime::run(ctx, health, shutdown, KINDS).await
}
