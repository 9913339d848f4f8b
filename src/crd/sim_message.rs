//! `SimMessage`: one SMS to the device of a SimCard, sent exactly once. Declarative, so sending is
//! allowed by RBAC like everything else and needs no 1NCE credentials in the sender's hands.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, LocalObjectReference, impl_object_status};

/// An SMS to the device of a SimCard, sent once. Its spec is immutable once sent: to send again,
/// create another SimMessage.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "quartermaster.dev",
    version = "v1alpha1",
    kind = "SimMessage",
    namespaced,
    doc = "An SMS to the device of a SimCard, sent exactly once.",
    status = "SimMessageStatus",
    shortname = "simmsg",
    category = "quartermaster",
    printcolumn(
        name = "SimCard",
        type_ = "string",
        json_path = ".spec.simCardRef.name"
    ),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Sent", type_ = "date", json_path = ".status.sentAt"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SimMessageSpec {
    /// The SimCard (same namespace) whose device receives the message.
    pub sim_card_ref: LocalObjectReference,
    /// The text, at most 160 characters (one SMS).
    #[schemars(length(min = 1, max = 160))]
    pub payload: String,
}

/// Observed state of a SimMessage.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-map-type" = "atomic"))]
pub struct SimMessageStatus {
    /// The `metadata.generation` the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// kstatus conditions: Ready, Reconciling, Stalled.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// `Pending` until 1NCE accepted the message, then `Sent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The SIM it went to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iccid: Option<String>,
    /// When the last attempt to send began (RFC 3339), recorded before the call: after a crash or a lost
    /// answer, 1NCE's list of the SIM's messages is read before any new attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempted_at: Option<String>,
    /// When 1NCE accepted it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<String>,
    /// The generation that was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_generation: Option<i64>,
}
impl_object_status!(SimMessageStatus);
