//! Who pays for a SimCard's SIM, and whose credit stop reaches it. The SIM's usage is billed to the
//! Project in `status.project` (`spec.projectRef` once it admitted the SimCard). A refusal where the
//! SimCard points — a Project that does not exist, its `limits.maxSimCards`, a ProviderConfig that
//! requires a Project, leaving a Project under its credit stop — stalls it, but never stops its meter:
//! it stays billed where it was, and that Project's credit stop still disables the SIM.

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::controller::project::policy::{self, MoneyStop};
use crate::controller::{Context, Error};
use crate::crd::conditions::reason;
use crate::crd::{Project, SimCard, SimCardStatus};
use crate::ledger::store::ProjectRef;

/// What billing concluded: the credit stop that reaches the SIM, and why the SimCard is refused where
/// it points (it then stays billed where it was).
pub struct Billing {
    /// The credit stop of the Project the SIM is billed to, if it holds.
    pub stop: Option<MoneyStop>,
    /// Why `spec.projectRef` is refused, if it is.
    pub refusal: Option<Error>,
}

/// The Project the SIM is billed to and its credit stop: `spec.projectRef`'s when it admits the
/// SimCard (into status), else the one it was billed to before, with the refusal.
pub fn billing(
    obj: &SimCard,
    ctx: &Context,
    status: &mut SimCardStatus,
    require_project: bool,
) -> Result<Billing, Error> {
    match admit(obj, ctx, status, require_project) {
        Ok(stop) => Ok(Billing {
            stop,
            refusal: None,
        }),
        Err(e @ Error::Permanent { .. }) => Ok(Billing {
            stop: billed(obj, ctx, status)?.and_then(|p| policy::credit_stop(&p)),
            refusal: Some(e),
        }),
        Err(e) => Err(e),
    }
}

/// The Project the SIM is billed to now (`status.project`, the same Project by UID), from the cache.
fn billed(
    obj: &SimCard,
    ctx: &Context,
    status: &SimCardStatus,
) -> Result<Option<std::sync::Arc<Project>>, Error> {
    let Some(name) = &status.project else {
        return Ok(None);
    };
    let ns = obj.namespace().unwrap_or_default();
    let p = ctx
        .caches()?
        .store::<crate::crd::Project>()?
        .get(&ObjectRef::new(name).within(&ns));
    Ok(p.filter(|p| status.project_uid.is_none() || p.uid() == status.project_uid))
}

/// `spec.projectRef` admits the SimCard: into status, with its credit stop.
fn admit(
    obj: &SimCard,
    ctx: &Context,
    status: &mut SimCardStatus,
    require_project: bool,
) -> Result<Option<MoneyStop>, Error> {
    let Some(r) = &obj.spec.project_ref else {
        return leave(obj, ctx, status, require_project).map(|()| None);
    };
    let ns = obj.namespace().unwrap_or_default();
    let caches = ctx.caches()?;
    let p = caches
        .store::<crate::crd::Project>()?
        .get(&ObjectRef::new(&r.name).within(&ns))
        .ok_or_else(|| {
            Error::permanent(
                reason::PROJECT_NOT_FOUND,
                format!("Project {:?} not found in namespace {ns:?}", r.name),
            )
        })?;
    if let Some(max) = policy::effective_limits(&p).max_sim_cards {
        // Its rank among the Project's SimCards (the oldest first), counted without sorting them.
        let key = |s: &SimCard| (s.metadata.creation_timestamp.clone().map(|t| t.0), s.uid());
        let mine = key(obj);
        let (mut listed, mut older) = (false, 0usize);
        for m in ctx
            .state::<crate::controller::project::members::SimIndex>()
            .members(&ns, &r.name)
        {
            let Some(s) = caches.store::<crate::crd::SimCard>()?.get(&m) else {
                continue;
            };
            if s.uid() == obj.uid() {
                listed = true;
            } else if key(&s) < mine {
                older += 1;
            }
        }
        if !listed || older >= max as usize {
            return Err(Error::permanent(
                reason::LIMIT_EXCEEDED,
                format!(
                    "Project {:?} holds at most {max} SimCards (limits.maxSimCards) and older ones fill it",
                    r.name
                ),
            ));
        }
    }
    status.project = Some(r.name.clone());
    status.project_uid = p.uid();
    Ok(policy::credit_stop(&p))
}

/// No `projectRef`: admitted only where the ProviderConfig does not require a Project, and never out
/// of a credit stop.
fn leave(
    obj: &SimCard,
    ctx: &Context,
    status: &mut SimCardStatus,
    require_project: bool,
) -> Result<(), Error> {
    if require_project {
        return Err(Error::permanent(
            reason::PROJECT_REQUIRED,
            format!(
                "ProviderConfig {:?} requires every SimCard through it to belong to a Project (spec.requireProject): set spec.projectRef",
                obj.spec.provider_config_ref.name
            ),
        ));
    }
    if let Some(p) = billed(obj, ctx, status)?
        && let Some(stop) = policy::credit_stop(&p)
    {
        return Err(Error::permanent(
            stop.reason,
            format!(
                "spec.projectRef was removed, but the SimCard cannot leave Project {:?} while its credit stop holds ({})",
                p.name_any(),
                stop.message
            ),
        ));
    }
    status.project = None;
    status.project_uid = None;
    Ok(())
}

/// Whether the credit of the Project the SIM is billed to is exhausted by the ledger's own figures
/// (with `onCreditExhausted: Stop`): read after this reconcile metered the SIM's usage, before any
/// top-up is ordered, since the Project's status shows the balance only after its next reconcile.
pub async fn exhausted_now(
    obj: &SimCard,
    ctx: &Context,
    status: &SimCardStatus,
) -> Result<bool, Error> {
    let (Some(ledger), Some(p)) = (&ctx.ledger, billed(obj, ctx, status)?) else {
        return Ok(false);
    };
    if p.spec.on_credit_exhausted != crate::crd::project::CreditExhaustedPolicy::Stop {
        return Ok(false);
    }
    let (ns, name, uid) = (
        obj.namespace().unwrap_or_default(),
        p.name_any(),
        p.uid().unwrap_or_default(),
    );
    let me = ProjectRef {
        namespace: &ns,
        name: &name,
        uid: &uid,
    };
    let (granted, used) = ledger.balance(&me, &p.spec.currency).await?;
    Ok(granted > 0 && granted - used <= 0)
}
