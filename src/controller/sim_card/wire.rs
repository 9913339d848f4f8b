//! How SimCards are woken, beyond their own changes: their ProviderConfig's change (its `simClaims` or
//! suspension decide what they may do), and their Project's spec (limits) or credit stop. Up to 16
//! reconcile at once by default.

use std::time::Duration;

use kube::ResourceExt;

use super::SimCardReconciler;
use crate::controller::project::members::SimIndex;
use crate::controller::project::wake::project_for_members;
use crate::controller::runtime::Wiring;
use crate::controller::runtime::wake::{Memo, referring};
use crate::crd::{Project, ProviderConfig, SimCard};

/// Wires the SimCard controller.
pub fn wire(w: &mut Wiring) {
    let sims = w.controller::<SimCard>(16, Duration::ZERO);
    let all = w.store::<SimCard>();
    let sims = sims.watches_shared_stream(w.changes::<ProviderConfig>(), move |pc| {
        let name = pc.name_any();
        referring(&all, |s| s.spec.provider_config_ref.name == name)
    });
    let (members, projects) = (w.ctx().state::<SimIndex>(), w.store::<Project>());
    let memo = Memo::<Project>::default();
    let sims = sims.watches_shared_stream(w.changes::<Project>(), move |p| {
        if memo.changed_in(&*p, project_for_members(&p), &projects) {
            members.members(&p.namespace().unwrap_or_default(), &p.name_any())
        } else {
            Vec::new()
        }
    });
    w.holds_accounts::<crate::crd::SimCard>(
        crate::controller::provider_config::credentials::sim_needs,
    );
    w.run(sims, SimCardReconciler);
}
