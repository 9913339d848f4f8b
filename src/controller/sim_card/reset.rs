//! Connectivity resets on request: the `quartermaster.dev/reset-connectivity` annotation asks for one
//! reset of the SIM per distinct value (like the VM's restart annotation), through 1NCE's
//! `POST /v1/sims/{iccid}/reset`.
//!
//! # Guarantees
//! - **At most once per value.** The value is recorded in `status.connectivityReset` before the call.
//!   1NCE keeps no record of resets to look an earlier attempt up by, so a call whose answer was lost (a
//!   timeout, a dropped connection) is marked `unconfirmed` and not sent again; only an answer that
//!   proves the reset was not queued (429, 5xx) lets it be tried again, at the next reconcile.
//! - A refusal (4xx, e.g. an expired SIM) is recorded with 1NCE's words and a Warning Event; the SimCard
//!   itself is not stalled by it.
//! - Nothing is sent while the object is paused or its ProviderConfig suspended, or to a SIM it may not
//!   change (it waits).

use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::Claimed;
use crate::cloud::CallFailure;
use crate::controller::runtime::framework::{Progress, now, persist, publish};
use crate::controller::{Context, Error};
use crate::crd::conditions::event;
use crate::crd::sim_card::ConnectivityReset;
use crate::crd::{ANNOTATION_RESET_CONNECTIVITY, SimCard, SimCardStatus};

/// The annotation's value when it asks for a reset not yet answered (`None`: nothing to do).
pub fn wanted<'a>(obj: &'a SimCard, status: &SimCardStatus) -> Option<&'a str> {
    let want = obj
        .annotations()
        .get(ANNOTATION_RESET_CONNECTIVITY)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())?;
    let done = status
        .connectivity_reset
        .as_ref()
        .is_some_and(|r| r.requested == want);
    (!done).then_some(want)
}

/// Sends the reset the annotation asks for, once (see the module's guarantees).
pub(super) async fn requested(
    obj: &SimCard,
    ctx: &Context,
    c: &Claimed,
    progress: &mut Progress<SimCardStatus>,
) -> Result<(), Error> {
    let Some(want) = wanted(obj, &progress.status) else {
        return Ok(());
    };
    if c.suspended {
        return Ok(());
    }
    let before = progress.status.connectivity_reset.clone();
    progress.status.connectivity_reset = Some(ConnectivityReset {
        requested: want.to_string(),
        accepted_at: None,
        unconfirmed: false,
        refused: None,
    });
    persist(ctx, obj, progress).await?;
    let result = c.client.reset_connectivity(&c.iccid).await;
    let r = progress
        .status
        .connectivity_reset
        .as_mut()
        .expect("recorded above");
    let (kind, reason, note) = match result {
        Ok(()) => {
            r.accepted_at = Some(now());
            let note = format!("1NCE queued a connectivity reset of SIM {}", c.iccid);
            (EventType::Normal, event::CONNECTIVITY_RESET, note)
        }
        Err(e) => match e.call_failure() {
            CallFailure::NotDone => {
                // Not queued: forget the attempt, so the next reconcile tries again.
                progress.status.connectivity_reset = before;
                return Err(Error::vendor("reset the SIM's connectivity")(e));
            }
            CallFailure::Refused => {
                r.refused = Some(e.to_string());
                let note = format!(
                    "1NCE refused the connectivity reset of SIM {}: {e}",
                    c.iccid
                );
                (EventType::Warning, event::CONNECTIVITY_RESET_FAILED, note)
            }
            CallFailure::Unknown => {
                r.unconfirmed = true;
                let note = format!(
                    "the connectivity reset of SIM {} got no answer ({e}); it is not sent again: set a new {ANNOTATION_RESET_CONNECTIVITY} value to ask again",
                    c.iccid
                );
                (EventType::Warning, event::CONNECTIVITY_RESET_FAILED, note)
            }
        },
    };
    publish(ctx, obj, kind, reason, &note).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(value: Option<&str>) -> SimCard {
        let mut c: SimCard = serde_json::from_value(serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "SimCard",
            "metadata": {"name": "s", "namespace": "ns"},
            "spec": {"iccid": "8988280666000000002", "providerConfigRef": {"name": "pc"}}
        }))
        .unwrap();
        if let Some(v) = value {
            c.annotations_mut()
                .insert(ANNOTATION_RESET_CONNECTIVITY.into(), v.into());
        }
        c
    }

    #[test]
    fn one_reset_per_distinct_value() {
        let mut st = SimCardStatus::default();
        assert_eq!(wanted(&card(None), &st), None);
        assert_eq!(wanted(&card(Some("  ")), &st), None);
        assert_eq!(wanted(&card(Some("t1")), &st), Some("t1"));
        st.connectivity_reset = Some(ConnectivityReset {
            requested: "t1".into(),
            accepted_at: None,
            unconfirmed: true,
            refused: None,
        });
        assert_eq!(
            wanted(&card(Some("t1")), &st),
            None,
            "an unconfirmed one is not sent again"
        );
        assert_eq!(wanted(&card(Some("t2")), &st), Some("t2"));
    }
}
