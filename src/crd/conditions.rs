//! kstatus-style conditions shared by every kind: the `Condition` type, the condition types and reasons
//! (PascalCase constants, all in one place), and the pure helper that merges freshly computed conditions
//! into the previous ones.
//!
//! # Guarantees
//! - `lastTransitionTime` moves only when a condition's `status` flips, so writing the same desired
//!   conditions twice yields byte-identical status (and the controller skips the write).
//! - `Ready`, `Reconciling` and `Stalled` are always present on a reconciled object, each `True` or `False`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition type: the object is fully reconciled and usable.
pub const READY: &str = "Ready";
/// Condition type: the controller is working towards the desired state (kstatus "InProgress").
pub const RECONCILING: &str = "Reconciling";
/// Condition type: the controller cannot make progress without a change from the user (kstatus "Failed").
pub const STALLED: &str = "Stalled";
/// Condition type: reconciliation is paused by the `quartermaster.dev/paused` annotation.
pub const PAUSED: &str = "Paused";

/// Condition reasons (PascalCase, stable: alerts and scripts match on them).
pub mod reason {
    /// Everything declared is in place.
    pub const RECONCILED: &str = "Reconciled";
    /// Work is in progress.
    pub const PROGRESSING: &str = "Progressing";
    /// A transient error occurred; the controller retries with backoff.
    pub const RETRYING: &str = "Retrying";
    /// The referenced credentials Secret or key does not exist.
    pub const MISSING_SECRET: &str = "MissingSecret";
    /// The vendor refused the credentials.
    pub const INVALID_CREDENTIALS: &str = "InvalidCredentials";
    /// The vendor could not be reached (or answered with a server error).
    pub const UNREACHABLE: &str = "Unreachable";
    /// The ProviderConfig is suspended by its `spec.suspended` flag.
    pub const SUSPENDED: &str = "Suspended";
    /// The spec is invalid in a way the API server could not check.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The `quartermaster.dev/paused` annotation is set.
    pub const PAUSED: &str = "Paused";
    /// Not paused.
    pub const NOT_PAUSED: &str = "NotPaused";
    /// The object is being deleted.
    pub const DELETING: &str = "Deleting";
    /// Placeholder reason for an abnormal-true condition that is currently false.
    pub const AS_EXPECTED: &str = "AsExpected";
    /// No controller implements this kind yet.
    pub const NOT_IMPLEMENTED: &str = "NotImplemented";
    /// The vendor refused a request (a 4xx other than 401/403/429); its message follows.
    pub const VENDOR_REJECTED: &str = "VendorRejected";
    /// The vendor reports the object in an error state.
    pub const VENDOR_FAILED: &str = "VendorFailed";
    /// The controller hit a bug while reconciling this object (a panic, contained to this object).
    pub const INTERNAL_ERROR: &str = "InternalError";
    /// The object itself is malformed (e.g. it has no UID).
    pub const INVALID_OBJECT: &str = "InvalidObject";
    /// The referenced ProviderConfig does not exist.
    pub const PROVIDER_CONFIG_NOT_FOUND: &str = "ProviderConfigNotFound";
    /// The object's namespace is not in the ProviderConfig's `allowedNamespaces`.
    pub const PROVIDER_CONFIG_NOT_ALLOWED: &str = "ProviderConfigNotAllowed";
    /// The referenced ProviderConfig is suspended: the object waits.
    pub const PROVIDER_CONFIG_SUSPENDED: &str = "ProviderConfigSuspended";
    /// The referenced ProviderConfig's type does not fit this kind.
    pub const PROVIDER_CONFIG_WRONG_TYPE: &str = "ProviderConfigWrongType";
    /// The referenced Project does not exist.
    pub const PROJECT_NOT_FOUND: &str = "ProjectNotFound";
    /// The ProviderConfig requires every VM through it to belong to a Project (`spec.requireProject`).
    pub const PROJECT_REQUIRED: &str = "ProjectRequired";
    /// A Project limit (`maxVirtualMachines`, `maxMonthlySpend`) would be exceeded.
    pub const LIMIT_EXCEEDED: &str = "LimitExceeded";
    /// A price is in another currency than the Project's.
    pub const CURRENCY_MISMATCH: &str = "CurrencyMismatch";
    /// A VM waits for its Project to make the VPC it joins (`spec.projectVPC`); a Project waits for
    /// the VMs still in a VPC it is to delete.
    pub const WAITING_FOR_VPC: &str = "WaitingForVPC";
    /// A field that is fixed once the vendor object exists was changed.
    pub const IMMUTABLE_FIELD_CHANGED: &str = "ImmutableFieldChanged";
    /// The adopted or recorded vendor object does not exist.
    pub const EXTERNAL_NOT_FOUND: &str = "ExternalNotFound";
    /// The vendor object belongs to another object (it carries another ownership tag).
    pub const OWNED_BY_ANOTHER: &str = "OwnedByAnother";
    /// Adopting an untagged vendor object is not allowed for this namespace by the ProviderConfig.
    pub const ADOPTION_NOT_ALLOWED: &str = "AdoptionNotAllowed";
    /// Releasing a server (`deletionPolicy: Orphan`) is not allowed for this namespace by the
    /// ProviderConfig.
    pub const RELEASE_NOT_ALLOWED: &str = "ReleaseNotAllowed";
    /// The vendor cannot do what the spec asks.
    pub const UNSUPPORTED: &str = "Unsupported";
    /// Stopped as declared.
    pub const STOPPED: &str = "Stopped";
    /// Stopped (or stopping) because the Project has no credit left.
    pub const CREDIT_EXHAUSTED: &str = "CreditExhausted";
    /// The Project's month-to-date cost reached its `limits.maxMonthlySpend`: its TokenBudgets serve
    /// nothing more this month.
    pub const SPEND_LIMIT_REACHED: &str = "SpendLimitReached";
    /// The server runs but no price is known for its size: its time is recorded unpriced.
    pub const UNPRICED: &str = "Unpriced";
    /// The credentials Secret is being deleted but kept for the objects that still need it.
    pub const CREDENTIALS_IN_USE: &str = "CredentialsInUse";
    /// Powering on.
    pub const STARTING: &str = "Starting";
    /// Powering off.
    pub const STOPPING: &str = "Stopping";
    /// Rebooting for a restart request.
    pub const RESTARTING: &str = "Restarting";
    /// Changing size.
    pub const RESIZING: &str = "Resizing";
    /// Waiting for the vendor to finish creating the object.
    pub const PROVISIONING: &str = "Provisioning";
    /// A change was sent to the vendor, which applies it later; waiting to see it applied.
    pub const CHANGE_PENDING: &str = "ChangePending";
    /// A change sent to the vendor did not show within the allowed time.
    pub const CHANGE_NOT_APPLIED: &str = "ChangeNotApplied";
    /// The ProviderConfig does not let this namespace claim this SIM.
    pub const SIM_NOT_ALLOWED: &str = "SimNotAllowed";
    /// Another object claimed the same vendor resource first.
    pub const CLAIMED_BY_ANOTHER: &str = "ClaimedByAnother";
    /// A quota top-up was ordered and the quota does not show it yet.
    pub const TOP_UP_PENDING: &str = "TopUpPending";
    /// A quota top-up was ordered and never showed in the quota: check the vendor's orders.
    pub const TOP_UP_UNCONFIRMED: &str = "TopUpUnconfirmed";
    /// A change waits for a vendor's per-object limit (Stripe: updates an hour, invoices a minute).
    pub const RATE_LIMITED: &str = "RateLimited";
    /// A Subscription names a plan its ProviderConfig does not declare.
    pub const UNKNOWN_PLAN: &str = "UnknownPlan";
    /// The customer's payment failed or is due (Stripe: incomplete, past_due, unpaid).
    pub const PAYMENT_FAILED: &str = "PaymentFailed";
    /// The Stripe subscription is paused.
    pub const SUBSCRIPTION_PAUSED: &str = "SubscriptionPaused";
    /// The Stripe subscription ended for good (canceled, incomplete_expired).
    pub const SUBSCRIPTION_ENDED: &str = "SubscriptionEnded";
    /// A Project's Subscription does not entitle it (not active, trialing, or past due within grace).
    pub const SUBSCRIPTION_INACTIVE: &str = "SubscriptionInactive";
}

/// Event reasons (PascalCase) for Events that are not a change of the overall state.
pub mod event {
    /// The vendor object was created.
    pub const CREATED: &str = "Created";
    /// An untagged vendor object was adopted and tagged as this object's.
    pub const ADOPTED: &str = "Adopted";
    /// Power-on requested.
    pub const POWERING_ON: &str = "PoweringOn";
    /// Power-off requested.
    pub const POWERING_OFF: &str = "PoweringOff";
    /// Reboot requested.
    pub const RESTARTING: &str = "Restarting";
    /// Resize requested.
    pub const RESIZING: &str = "Resizing";
    /// The vendor refused a resize.
    pub const RESIZE_REFUSED: &str = "ResizeRefused";
    /// A restart request arrived while the VM was not running: acknowledged, not queued.
    pub const RESTART_SKIPPED: &str = "RestartSkipped";
    /// More than one vendor object carries this object's ownership tag.
    pub const DUPLICATE_FOUND: &str = "DuplicateFound";
    /// Intent was recorded but no vendor object was found: creating again.
    pub const RECREATING: &str = "Recreating";
    /// The object moved to another Project; usage so far stays with the old one.
    pub const PROJECT_CHANGED: &str = "ProjectChanged";
    /// Cleanup finished and the finalizer was removed.
    pub const DELETED: &str = "Deleted";
    /// The vendor object was left in place on deletion.
    pub const ORPHANED: &str = "Orphaned";
    /// A change was sent to the vendor (applied by it later).
    pub const CHANGE_REQUESTED: &str = "ChangeRequested";
    /// A SIM was disabled at the vendor on deletion.
    pub const DISABLED: &str = "Disabled";
    /// A quota top-up was ordered.
    pub const TOP_UP_ORDERED: &str = "TopUpOrdered";
    /// An SMS was sent.
    pub const SMS_SENT: &str = "SmsSent";
    /// A SIM's data or SMS quota is 80 % or 100 % used (once per quota period).
    pub const QUOTA_THRESHOLD_REACHED: &str = "QuotaThresholdReached";
    /// The vendor queued a connectivity reset of a SIM.
    pub const CONNECTIVITY_RESET: &str = "ConnectivityReset";
    /// A connectivity reset was refused, or its answer was lost (not sent again).
    pub const CONNECTIVITY_RESET_FAILED: &str = "ConnectivityResetFailed";
    /// An ordered quota top-up shows in the quota (and was billed).
    pub const TOP_UP_CONFIRMED: &str = "TopUpConfirmed";
    /// The quota is under its threshold but this month's automatic top-ups are used up.
    pub const TOP_UP_LIMIT_REACHED: &str = "TopUpLimitReached";
    /// An annotation could not be used (its default applies).
    pub const INVALID_ANNOTATION: &str = "InvalidAnnotation";
    /// A reconcile panicked; the panic was contained to this object.
    pub const INTERNAL_ERROR: &str = "InternalError";
}

/// Status of a condition, as in Kubernetes' metav1.Condition.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// The controller cannot tell.
    Unknown,
}

impl ConditionStatus {
    /// `True` for `true`, `False` for `false`.
    pub fn from_bool(b: bool) -> Self {
        if b { Self::True } else { Self::False }
    }
}

/// One observation of the object's state, in the shape of Kubernetes' metav1.Condition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of the condition: `Ready`, `Reconciling`, `Stalled`, `Paused` or a kind-specific type.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 316))]
    pub type_: String,
    /// Status of the condition: True, False or Unknown.
    pub status: ConditionStatus,
    /// Machine-readable reason for the condition's last transition, in PascalCase.
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
    /// Human-readable explanation; never contains secret values.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 32768), transform = remove_default)]
    pub message: String,
    /// RFC 3339 time when the condition's status last changed.
    #[schemars(extend("format" = "date-time"))]
    pub last_transition_time: String,
    /// The object's `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

// NB: kube-apiserver 1.20 turns an empty string into null, both in a CRD schema's `default` and in a
// server-side apply body; so an empty message is neither defaulted nor sent.
fn remove_default(schema: &mut schemars::Schema) {
    schema.remove("default");
}

/// A condition as a reconciler wants it, before timestamps and generation are filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredCondition {
    /// Condition type.
    pub type_: &'static str,
    /// Desired status.
    pub status: ConditionStatus,
    /// PascalCase reason.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
}

impl DesiredCondition {
    /// A condition with the given type, status, reason and message.
    pub fn new(
        type_: &'static str,
        status: ConditionStatus,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// The three kstatus conditions for one overall state of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Converged: Ready=True, Reconciling=False, Stalled=False.
    Ready { reason: String, message: String },
    /// Working on it: Ready=False, Reconciling=True, Stalled=False.
    Progressing { reason: String, message: String },
    /// Cannot progress until the user changes something: Ready=False, Reconciling=False, Stalled=True.
    Stalled { reason: String, message: String },
    /// Deliberately not ready (e.g. suspended): Ready=False, Reconciling=False, Stalled=False.
    NotReady { reason: String, message: String },
}

impl Health {
    /// Ready with the `Reconciled` reason.
    pub fn ready(message: impl Into<String>) -> Self {
        Self::Ready {
            reason: reason::RECONCILED.into(),
            message: message.into(),
        }
    }
    /// Progressing with the given reason.
    pub fn progressing(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Progressing {
            reason: reason.into(),
            message: message.into(),
        }
    }
    /// Stalled with the given reason.
    pub fn stalled(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Stalled {
            reason: reason.into(),
            message: message.into(),
        }
    }
    /// Not ready (and not working on it) with the given reason.
    pub fn not_ready(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self::NotReady {
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// The reason of the overall state (the reason of the condition that explains it).
    pub fn reason(&self) -> &str {
        match self {
            Self::Ready { reason, .. }
            | Self::Progressing { reason, .. }
            | Self::Stalled { reason, .. }
            | Self::NotReady { reason, .. } => reason,
        }
    }

    /// The same state with `note` (if any) added to its message.
    pub fn noted(self, note: Option<String>) -> Self {
        let Some(note) = note else {
            return self;
        };
        let join = |m: String| format!("{m}; {note}");
        match self {
            Self::Ready { reason, message } => Self::Ready {
                reason,
                message: join(message),
            },
            Self::Progressing { reason, message } => Self::Progressing {
                reason,
                message: join(message),
            },
            Self::Stalled { reason, message } => Self::Stalled {
                reason,
                message: join(message),
            },
            Self::NotReady { reason, message } => Self::NotReady {
                reason,
                message: join(message),
            },
        }
    }

    /// The message of the overall state.
    pub fn message(&self) -> &str {
        match self {
            Self::Ready { message, .. }
            | Self::Progressing { message, .. }
            | Self::Stalled { message, .. }
            | Self::NotReady { message, .. } => message,
        }
    }

    /// `Ready`, `Reconciling` and `Stalled` for this state.
    pub fn conditions(&self) -> Vec<DesiredCondition> {
        use ConditionStatus::{False, True};
        let (r, m) = (self.reason(), self.message());
        let (ready, reconciling, stalled) = match self {
            Self::Ready { .. } => (True, False, False),
            Self::Progressing { .. } => (False, True, False),
            Self::Stalled { .. } => (False, False, True),
            Self::NotReady { .. } => (False, False, False),
        };
        let quiet = |s: ConditionStatus| {
            if s == True {
                (r.to_string(), m.to_string())
            } else {
                (reason::AS_EXPECTED.to_string(), String::new())
            }
        };
        let (rr, rm) = quiet(reconciling);
        let (sr, sm) = quiet(stalled);
        vec![
            DesiredCondition::new(READY, ready, r, m),
            DesiredCondition::new(RECONCILING, reconciling, rr, rm),
            DesiredCondition::new(STALLED, stalled, sr, sm),
        ]
    }
}

/// Merges `desired` into `previous`: conditions of the desired types are replaced, keeping their
/// `lastTransitionTime` when the status did not flip; conditions of other types are kept as they were.
/// The result is ordered: desired ones first (in the given order), then the others.
pub fn merge_conditions(
    previous: &[Condition],
    desired: &[DesiredCondition],
    generation: Option<i64>,
    now: &str,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = desired
        .iter()
        .map(|d| {
            let old = previous.iter().find(|c| c.type_ == d.type_);
            let last_transition_time = match old {
                Some(o) if o.status == d.status => o.last_transition_time.clone(),
                _ => now.to_string(),
            };
            Condition {
                type_: d.type_.to_string(),
                status: d.status,
                reason: d.reason.clone(),
                message: truncate(&d.message, 32768),
                last_transition_time,
                observed_generation: generation,
            }
        })
        .collect();
    out.extend(
        previous
            .iter()
            .filter(|c| !desired.iter().any(|d| d.type_ == c.type_))
            .cloned(),
    );
    out
}

/// Finds a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_on_flip() {
        let first = merge_conditions(
            &[],
            &Health::progressing("Creating", "x").conditions(),
            Some(1),
            "t1",
        );
        assert_eq!(find(&first, READY).unwrap().last_transition_time, "t1");
        // same status, new message: time kept
        let second = merge_conditions(
            &first,
            &Health::progressing("Creating", "y").conditions(),
            Some(2),
            "t2",
        );
        let ready = find(&second, READY).unwrap();
        assert_eq!(ready.last_transition_time, "t1");
        assert_eq!(ready.message, "y");
        assert_eq!(ready.observed_generation, Some(2));
        // flip: time moves for Ready and Reconciling, not for Stalled
        let third = merge_conditions(&second, &Health::ready("ok").conditions(), Some(2), "t3");
        assert_eq!(find(&third, READY).unwrap().last_transition_time, "t3");
        assert_eq!(
            find(&third, RECONCILING).unwrap().last_transition_time,
            "t3"
        );
        assert_eq!(find(&third, STALLED).unwrap().last_transition_time, "t1");
    }

    #[test]
    fn idempotent_merge_is_identical() {
        let d = Health::stalled(reason::MISSING_SECRET, "secret x missing").conditions();
        let a = merge_conditions(&[], &d, Some(3), "t1");
        let b = merge_conditions(&a, &d, Some(3), "t2");
        assert_eq!(a, b);
    }

    #[test]
    fn other_types_are_kept() {
        let paused = DesiredCondition::new(PAUSED, ConditionStatus::True, reason::PAUSED, "");
        let a = merge_conditions(&[], &[paused], Some(1), "t1");
        let b = merge_conditions(&a, &Health::ready("").conditions(), Some(1), "t2");
        assert_eq!(b.len(), 4);
        assert_eq!(find(&b, PAUSED).unwrap().status, ConditionStatus::True);
    }

    #[test]
    fn health_maps_to_kstatus() {
        let c = Health::stalled("MissingSecret", "m").conditions();
        let s: Vec<_> = c.iter().map(|c| (c.type_, c.status)).collect();
        assert_eq!(
            s,
            vec![
                (READY, ConditionStatus::False),
                (RECONCILING, ConditionStatus::False),
                (STALLED, ConditionStatus::True)
            ]
        );
        assert_eq!(c[0].reason, "MissingSecret");
        assert_eq!(c[1].reason, reason::AS_EXPECTED);
    }

    #[test]
    fn long_messages_are_truncated_on_char_boundary() {
        let msg = "é".repeat(20000);
        let d = vec![DesiredCondition::new(
            READY,
            ConditionStatus::False,
            "X",
            msg,
        )];
        let c = merge_conditions(&[], &d, None, "t");
        assert!(c[0].message.len() <= 32768);
    }
}
