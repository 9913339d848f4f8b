//! How VirtualMachineSnapshotPolicies are woken, beyond their own changes and their next slot:
//!
//! | change | wakes |
//! |---|---|
//! | one of its snapshots becomes available, or goes | the policy (retention) |
//!
//! Up to 4 reconcile at once by default.

use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use super::{LABEL_POLICY, SnapshotPolicyReconciler};
use crate::controller::runtime::Wiring;
use crate::controller::runtime::wake::{Memo, hash_of};
use crate::crd::{VirtualMachineSnapshot, VirtualMachineSnapshotPolicy};

/// Wires the VirtualMachineSnapshotPolicy controller.
pub fn wire(w: &mut Wiring) {
    let c = w.controller::<VirtualMachineSnapshotPolicy>(4, Duration::ZERO);
    let (snaps, memo) = (
        w.store::<VirtualMachineSnapshot>(),
        Memo::<VirtualMachineSnapshot>::default(),
    );
    let c = c.watches_shared_stream(w.changes::<VirtualMachineSnapshot>(), move |s| {
        let Some(policy) = s.labels().get(LABEL_POLICY) else {
            return Vec::new();
        };
        let state = hash_of((
            s.status.as_ref().and_then(|st| st.state.clone()),
            s.metadata.deletion_timestamp.is_some(),
        ));
        if !memo.changed_in(&*s, state, &snaps) {
            return Vec::new();
        }
        let ns = s.namespace().unwrap_or_default();
        vec![ObjectRef::<VirtualMachineSnapshotPolicy>::new(policy).within(&ns)]
    });
    w.run(c, SnapshotPolicyReconciler);
}
