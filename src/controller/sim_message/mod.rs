//! The SimMessage reconciler: one SMS to the device of a SimCard, exactly once.
//!
//! The attempt is recorded in status before the call (`attemptedAt`); the call is never retried by the
//! client. After a crash or a lost answer, 1NCE's list of the SIM's messages is read first: a message
//! with the same text submitted since the attempt means it was sent; none after a minute means the
//! attempt never reached 1NCE, and only then is it sent again. A sent message is never sent again, and
//! an edit of a sent one stalls (`ImmutableFieldChanged`): create another SimMessage.

pub mod decide;

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use super::runtime::framework::{Cleanup, Outcome, Progress, Reconciler, now, persist, publish};
use super::{Context, Error};
use crate::cloud::onence::OneNce;
use crate::crd::conditions::{Health, event, reason};
use crate::crd::{SimMessage, SimMessageStatus};
use decide::Next;

crate::controller::runtime::framework::managed_namespaced!(SimMessage, SimMessageStatus);

/// The SimMessage kind, as the runtime runs it.
pub const WIRE: super::runtime::Wire = super::runtime::Wire::of::<SimMessage>(wire);

/// Wires the SimMessage controller: woken by its own changes only (a message is sent once; a SimCard's
/// change does not concern it once sent, and one waiting for its SimCard looks again every 30 s). Up
/// to 4 reconcile at once by default.
pub fn wire(w: &mut super::runtime::Wiring) {
    let c = w.controller::<SimMessage>(4, Duration::ZERO);
    w.run(c, SimMessageReconciler);
}

/// Reconciles SimMessages.
pub struct SimMessageReconciler;

/// Whether 1NCE lists a message with this text submitted since `attempted_at` (less 5 s of skew).
async fn listed(
    client: &OneNce,
    iccid: &str,
    payload: &str,
    attempted_at: &str,
) -> Result<bool, Error> {
    let since = attempted_at
        .parse::<jiff::Timestamp>()
        .map_or(0, |t| t.as_second() - 5);
    let sent = client
        .list_sms(iccid)
        .await
        .map_err(Error::vendor("list the SIM's messages"))?;
    Ok(sent.iter().any(|m| {
        m.payload == payload
            && m.submit_date
                .as_deref()
                .and_then(|d| d.parse::<jiff::Timestamp>().ok())
                .is_some_and(|d| d.as_second() >= since)
    }))
}

fn sent(status: &mut SimMessageStatus, generation: Option<i64>) -> Outcome {
    status.state = Some("Sent".into());
    status.sent_at = Some(now());
    status.sent_generation = generation;
    Outcome::new(Health::ready("sent"))
}

impl Reconciler<SimMessage> for SimMessageReconciler {
    async fn apply(
        &self,
        obj: Arc<SimMessage>,
        ctx: Arc<Context>,
        progress: &mut Progress<SimMessageStatus>,
    ) -> Result<Outcome, Error> {
        let st = &mut progress.status;
        if let Some(health) = decide::already_sent(st, obj.metadata.generation) {
            return Ok(Outcome::new(health));
        }
        let ns = obj.namespace().unwrap_or_default();
        let name = &obj.spec.sim_card_ref.name;
        let Some(card) = ctx
            .caches()?
            .store::<crate::crd::SimCard>()?
            .get(&ObjectRef::new(name).within(&ns))
        else {
            return Ok(Outcome::new(Health::not_ready(
                reason::INVALID_SPEC,
                format!("SimCard {name:?} not found in namespace {ns:?}; waiting for it"),
            ))
            .requeue_after(Duration::from_secs(30)));
        };
        let Some((iccid, client, suspended)) = super::sim_card::claimed(&card, &ctx).await? else {
            return Ok(Outcome::new(Health::not_ready(
                reason::SIM_NOT_ALLOWED,
                format!("SimCard {name:?} does not hold its SIM; nothing is sent"),
            ))
            .requeue_after(Duration::from_secs(30)));
        };
        if suspended {
            return Err(Error::Waiting {
                reason: reason::PROVIDER_CONFIG_SUSPENDED,
                message: "the SimCard's ProviderConfig is suspended; waiting".into(),
            });
        }
        st.iccid = Some(iccid.clone());
        // An earlier attempt: what did it do?
        let attempted = st.attempted_at.clone();
        let listed = match &attempted {
            Some(at) => listed(&client, &iccid, &obj.spec.payload, at).await?,
            None => false,
        };
        let at = attempted.map(|a| a.parse::<jiff::Timestamp>().map_or(0, |t| t.as_second()));
        match decide::after_attempt(at, listed, jiff::Timestamp::now().as_second()) {
            Next::Sent => return Ok(sent(st, obj.metadata.generation)),
            Next::Wait => {
                return Ok(Outcome::new(Health::progressing(
                    reason::PROGRESSING,
                    "an attempt's answer was lost; checking 1NCE's messages before sending again",
                ))
                .requeue_after(ctx.config.poll_interval));
            }
            Next::Send => {}
        }
        st.state = Some("Pending".into());
        st.attempted_at = Some(now());
        persist(&ctx, &*obj, progress).await?;
        let st = &mut progress.status;
        match client.send_sms(&iccid, &obj.spec.payload).await {
            Ok(()) => {
                publish(
                    &ctx,
                    &*obj,
                    EventType::Normal,
                    event::SMS_SENT,
                    &format!("sent to SIM {iccid}"),
                )
                .await;
                let mut o = sent(st, obj.metadata.generation);
                o.announced = true;
                Ok(o)
            }
            Err(e) if !e.is_transient() => Err(Error::vendor("send the SMS")(e)),
            Err(e) => Ok(Outcome::new(Health::progressing(
                reason::PROGRESSING,
                format!("the answer was lost ({e}); checking 1NCE's messages before sending again"),
            ))
            .requeue_after(ctx.config.poll_interval)),
        }
    }

    async fn cleanup(
        &self,
        _obj: Arc<SimMessage>,
        _ctx: Arc<Context>,
        _progress: &mut Progress<SimMessageStatus>,
    ) -> Result<Cleanup, Error> {
        // A sent SMS cannot be taken back; nothing to undo.
        Ok(Cleanup::Done)
    }
}
