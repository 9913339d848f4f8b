//! The pure rules of a snapshot: what a VirtualMachine must hold before its server is snapshotted, and
//! what to do after the vendor was asked for the snapshot's mark.

use std::time::Duration;

use rust_decimal::Decimal;

use crate::cloud::{Snapshot, SnapshotLookup, SnapshotState};
use crate::controller::project::policy::ProjectState;
use crate::crd::conditions::{Health, reason};
use crate::crd::virtual_machine::{ManagementPolicy, VmPhase};
use crate::crd::{VirtualMachine, VirtualMachineSnapshotStatus};

/// How long after a request an empty lookup is still trusted to mean "not visible yet" rather than
/// "never made": a request is sent again only after it.
pub const SETTLE: Duration = Duration::from_secs(60);

/// Whether a snapshot whose storage costs `estimate` a month (`None`: the vendor does not price it)
/// fits Project `project`: its currency (unless it accepts others), and its `maxMonthlySpend` beside
/// `spend` (its VMs and its other snapshots a month, in its currency). Pure.
pub fn admit_storage(
    project: &ProjectState,
    spend: Decimal,
    estimate: Option<(Decimal, &str)>,
) -> Result<(), (&'static str, String)> {
    let name = &project.name;
    let limit = project
        .limits
        .max_monthly_spend
        .as_deref()
        .and_then(|m| m.parse::<Decimal>().ok());
    let Some((monthly, currency)) = estimate else {
        return match limit {
            Some(limit) => Err((
                reason::LIMIT_EXCEEDED,
                format!(
                    "the vendor's snapshot storage has no known price, and Project {name:?} limits monthly spend to {limit} {}: it cannot be admitted",
                    project.currency
                ),
            )),
            None => Ok(()),
        };
    };
    if currency != project.currency && !project.allow_other_currencies {
        return Err((
            reason::CURRENCY_MISMATCH,
            format!(
                "this snapshot's storage is priced in {currency} but Project {name:?} bills in {}; amounts in different currencies are never added together (set the Project's spec.allowOtherCurrencies to accept it)",
                project.currency
            ),
        ));
    }
    match limit {
        Some(limit) if currency == project.currency && spend + monthly > limit => Err((
            reason::LIMIT_EXCEEDED,
            format!(
                "Project {name:?} limits monthly spend to {limit} {currency}: its VMs and snapshots cost {spend} a month and this snapshot's storage would add up to {monthly}"
            ),
        )),
        _ => Ok(()),
    }
}

/// The server a new snapshot is taken of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The vendor's server ID.
    pub server_id: String,
    /// The ProviderConfig the server is in.
    pub provider_config: String,
    /// The VM's Project (name, UID), which the snapshot's storage is billed to.
    pub project: Option<(String, String)>,
}

/// Why no snapshot can be requested of `vm` now: a health to show (waiting or stalled), else the
/// server to snapshot.
pub fn source(vm: Option<&VirtualMachine>, name: &str) -> Result<Source, Health> {
    let Some(vm) = vm else {
        return Err(Health::not_ready(
            reason::INVALID_SPEC,
            format!("VirtualMachine {name:?} not found in this namespace; waiting for it"),
        ));
    };
    if vm.spec.management_policy == ManagementPolicy::ObserveOnly {
        return Err(Health::stalled(
            reason::UNSUPPORTED,
            format!(
                "VirtualMachine {name:?} is ObserveOnly: Quartermaster takes no action through its server, snapshots included"
            ),
        ));
    }
    if vm.metadata.deletion_timestamp.is_some() {
        return Err(Health::stalled(
            reason::INVALID_SPEC,
            format!("VirtualMachine {name:?} is being deleted; its server is not snapshotted"),
        ));
    }
    let st = vm.status.as_ref();
    let phase = st.and_then(|s| s.phase);
    if st.is_some_and(|s| s.external_id.is_some())
        && !matches!(phase, Some(VmPhase::Running | VmPhase::Stopped))
    {
        return Err(Health::not_ready(
            reason::PROGRESSING,
            format!(
                "VirtualMachine {name:?} is {}; its server is snapshotted once it is Running or Stopped",
                phase.map_or("not observed yet".to_string(), |p| format!("{p:?}"))
            ),
        ));
    }
    match (
        st.and_then(|s| s.external_id.clone()),
        st.and_then(|s| s.provider_config.clone()),
    ) {
        (Some(server_id), Some(provider_config)) => Ok(Source {
            server_id,
            provider_config,
            project: st.and_then(|s| {
                Some((
                    s.project.clone()?,
                    s.project_uid.clone().unwrap_or_default(),
                ))
            }),
        }),
        _ => Err(Health::not_ready(
            reason::PROGRESSING,
            format!("VirtualMachine {name:?} holds no server yet; waiting for it"),
        )),
    }
}

/// What to do after the vendor was asked for the snapshot's mark.
#[derive(Debug, PartialEq)]
pub enum AfterLookup {
    /// Record what the vendor reports.
    Record(Snapshot),
    /// Look again later: the request may still become visible.
    Wait,
    /// The earlier request never reached the vendor: request it (again).
    Request,
    /// The snapshot this object recorded is gone at the vendor.
    Gone,
}

/// The rule after a lookup. `requested_at` and `now` are Unix seconds; `requested_at` is `None` once
/// a refusal withdrew the request.
pub fn after_lookup(
    lookup: SnapshotLookup,
    recorded_id: Option<&str>,
    requested_at: Option<i64>,
    now: i64,
) -> AfterLookup {
    match lookup {
        SnapshotLookup::Found(s) => AfterLookup::Record(s),
        SnapshotLookup::InProgress => AfterLookup::Wait,
        // A list may lag behind the create that named it: within the settle time, look again.
        SnapshotLookup::Absent => match requested_at {
            Some(at) if now - at < SETTLE.as_secs() as i64 => AfterLookup::Wait,
            _ if recorded_id.is_some() => AfterLookup::Gone,
            _ => AfterLookup::Request,
        },
    }
}

/// Records what the vendor reports of the snapshot in `status`, and the health it gives.
pub fn record(status: &mut VirtualMachineSnapshotStatus, s: Snapshot) -> Health {
    status.snapshot_id = Some(s.id);
    if s.size_gb.is_some() {
        status.size_gigabytes = s.size_gb.map(|g| g.normalize().to_string());
    }
    if s.created_at.is_some() {
        status.created_at = s.created_at;
    }
    match s.state {
        SnapshotState::Available => {
            status.state = Some("Available".into());
            Health::ready("the snapshot is available")
        }
        SnapshotState::Pending => {
            status.state = Some("Pending".into());
            Health::progressing(reason::PROGRESSING, "the vendor is taking the snapshot")
        }
        SnapshotState::Failed(why) => {
            status.state = Some("Failed".into());
            Health::stalled(
                reason::VENDOR_FAILED,
                format!("the vendor failed to take the snapshot: {why}"),
            )
        }
    }
}

/// The storage window to bill from `from` (Unix seconds): whole hours up to `now` while the snapshot
/// is kept (one row an hour at most), everything up to `now` when it ends (`last`).
pub fn storage_window(from: i64, now: i64, last: bool) -> Option<(i64, i64)> {
    if last {
        return (now > from).then_some((from, now));
    }
    let hours = (now - from) / 3600;
    (hours >= 1).then_some((from, from + hours * 3600))
}

/// A size in GB (as status shows it) in whole megabytes, rounded up.
pub fn megabytes(size_gb: &str) -> Option<i64> {
    let gb: rust_decimal::Decimal = size_gb.parse().ok()?;
    let mb = (gb * rust_decimal::Decimal::from(1000)).ceil();
    i64::try_from(mb).ok().filter(|m| *m > 0)
}

/// Whether `spec` still names the VirtualMachine the snapshot was requested of.
pub fn same_source(status: &VirtualMachineSnapshotStatus, vm_name: &str) -> bool {
    status
        .virtual_machine
        .as_deref()
        .is_none_or(|recorded| recorded == vm_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_is_admitted_by_currency_and_monthly_spend_and_unpriced_storage_only_without_a_limit()
    {
        let project = |limit: Option<&str>, others: bool| ProjectState {
            name: "acme".into(),
            uid: "u".into(),
            currency: "USD".into(),
            allow_other_currencies: others,
            limits: crate::crd::project::ProjectLimits {
                max_monthly_spend: limit.map(str::to_string),
                ..Default::default()
            },
            credit_stop: None,
            new_block: None,
            occupancy: Default::default(),
        };
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        let usd = |m: &str| Some((d(m), "USD"));
        let reason_of = |r: Result<(), (&'static str, String)>| r.err().map(|e| e.0);
        // 10 spent a month: 1.50 more fits 12, 2.50 does not.
        assert_eq!(
            admit_storage(&project(Some("12"), false), d("10"), usd("1.5")),
            Ok(())
        );
        assert_eq!(
            reason_of(admit_storage(
                &project(Some("12"), false),
                d("10"),
                usd("2.5")
            )),
            Some(reason::LIMIT_EXCEEDED)
        );
        assert_eq!(
            admit_storage(&project(None, false), d("1000"), usd("2.5")),
            Ok(())
        );
        // Unpriced storage: only where no spend limit needs its price.
        assert_eq!(admit_storage(&project(None, false), d("0"), None), Ok(()));
        let unpriced = admit_storage(&project(Some("12"), false), d("0"), None).unwrap_err();
        assert_eq!(unpriced.0, reason::LIMIT_EXCEEDED);
        assert!(unpriced.1.contains("no known price"), "{}", unpriced.1);
        // Another currency: refused unless the Project accepts others (then not added to its spend).
        let eur = Some((d("2.5"), "EUR"));
        assert_eq!(
            reason_of(admit_storage(&project(Some("12"), false), d("10"), eur)),
            Some(reason::CURRENCY_MISMATCH)
        );
        assert_eq!(
            admit_storage(&project(Some("12"), true), d("10"), eur),
            Ok(())
        );
    }

    fn vm(status: serde_json::Value, policy: &str) -> VirtualMachine {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "web", "namespace": "t"},
            "spec": {"providerConfigRef": {"name": "do"}, "region": "fra1", "size": "s", "image": "i",
                     "managementPolicy": policy},
            "status": status,
        }))
        .unwrap()
    }

    fn snap(state: SnapshotState) -> Snapshot {
        Snapshot {
            id: "7".into(),
            name: "qm-snap-u".into(),
            state,
            size_gb: Some(rust_decimal::Decimal::new(250, 2)),
            created_at: Some("2026-12-05T00:00:00Z".into()),
        }
    }

    #[test]
    fn a_snapshot_needs_a_vm_that_holds_a_server_it_may_act_on() {
        let held =
            serde_json::json!({"externalID": "42", "providerConfig": "do", "phase": "Running"});
        assert_eq!(
            source(Some(&vm(held.clone(), "Full")), "web"),
            Ok(Source {
                server_id: "42".into(),
                provider_config: "do".into(),
                project: None,
            })
        );
        let waits = |h: Result<Source, Health>| matches!(h, Err(Health::NotReady { .. }));
        let stalls = |h: Result<Source, Health>| matches!(h, Err(Health::Stalled { .. }));
        assert!(waits(source(None, "web")), "a VM not there yet");
        assert!(waits(source(
            Some(&vm(serde_json::json!({}), "Full")),
            "web"
        )));
        assert!(stalls(source(Some(&vm(held, "ObserveOnly")), "web")));
        let new = serde_json::json!({"externalID": "42", "providerConfig": "do", "phase": "Provisioning"});
        assert!(
            waits(source(Some(&vm(new, "Full")), "web")),
            "a server being created"
        );
    }

    #[test]
    fn a_lookup_never_requests_twice_within_the_settle_time() {
        let found = SnapshotLookup::Found(snap(SnapshotState::Pending));
        assert!(matches!(
            after_lookup(found, None, Some(0), 1),
            AfterLookup::Record(_)
        ));
        let cases = [
            (
                SnapshotLookup::InProgress,
                None,
                Some(0),
                999,
                AfterLookup::Wait,
            ),
            (
                SnapshotLookup::Absent,
                None,
                Some(100),
                159,
                AfterLookup::Wait,
            ),
            (
                SnapshotLookup::Absent,
                None,
                Some(100),
                160,
                AfterLookup::Request,
            ),
            (SnapshotLookup::Absent, None, None, 0, AfterLookup::Request),
            (
                SnapshotLookup::Absent,
                Some("7"),
                Some(0),
                999,
                AfterLookup::Gone,
            ),
        ];
        for (lookup, id, at, now, want) in cases {
            assert_eq!(after_lookup(lookup, id, at, now), want, "at {now}");
        }
    }

    #[test]
    fn recording_keeps_what_was_learned_and_says_how_it_stands() {
        let mut st = VirtualMachineSnapshotStatus::default();
        assert!(matches!(
            record(&mut st, snap(SnapshotState::Pending)),
            Health::Progressing { .. }
        ));
        assert_eq!(st.size_gigabytes.as_deref(), Some("2.5"));
        let mut later = snap(SnapshotState::Available);
        later.size_gb = None;
        assert!(matches!(record(&mut st, later), Health::Ready { .. }));
        assert_eq!(st.size_gigabytes.as_deref(), Some("2.5"), "kept");
        assert_eq!(st.state.as_deref(), Some("Available"));
        assert!(matches!(
            record(&mut st, snap(SnapshotState::Failed("disk".into()))),
            Health::Stalled { .. }
        ));
    }

    #[test]
    fn storage_is_billed_in_whole_hours_and_to_the_second_at_the_end() {
        assert_eq!(storage_window(0, 3599, false), None);
        assert_eq!(storage_window(0, 7300, false), Some((0, 7200)));
        assert_eq!(storage_window(7200, 7300, true), Some((7200, 7300)));
        assert_eq!(storage_window(7300, 7300, true), None);
        assert_eq!(megabytes("2.5"), Some(2500));
        assert_eq!(megabytes("0.0014"), Some(2), "rounded up");
        assert_eq!(megabytes("0"), None);
    }

    #[test]
    fn the_source_is_fixed_once_requested() {
        let mut st = VirtualMachineSnapshotStatus::default();
        assert!(same_source(&st, "web"));
        st.virtual_machine = Some("web".into());
        assert!(same_source(&st, "web"));
        assert!(!same_source(&st, "db"));
    }
}
