//! The SimCard reconciler: claims an existing 1NCE SIM by ICCID (SIMs are bought, not created), keeps
//! its state, label and IMEI lock as the spec says, reports what 1NCE knows of it, and meters its usage.
//!
//! Order of a reconcile: the ICCID's form, the ProviderConfig (type `onence`, the namespace allowed),
//! the claim ([`claim`]: allowed by `simClaims`, and this object the oldest claim of that SIM) — a
//! refusal touches nothing at 1NCE. Then the SIM is read, its usage metered ([`usage`]), and a
//! difference from the spec sent as one change; 1NCE applies changes later, so the SimCard is
//! `Reconciling` `ChangePending` until the SIM shows it, and `Stalled` `ChangeNotApplied` after
//! `spec.changeTimeoutSeconds`. A 409 (another change pending at 1NCE) waits; a 422 (an expired SIM)
//! stalls with 1NCE's words.
//!
//! Paused: the SIM is still read and metered, never changed. Deleted: usage is metered a last time,
//! then `Disable` disables the SIM (and waits until 1NCE shows it) or `Orphan` leaves it; cleanup acts
//! only on a SIM whose claim this object still holds.

pub mod billing;
pub mod claim;
pub mod decide;
pub mod network;
mod order;
pub mod reset;
pub mod top_up;
pub mod usage;
mod wire;

pub use wire::wire;

/// The SimCard kind, as the runtime runs it.
pub const WIRE: crate::controller::runtime::Wire =
    crate::controller::runtime::Wire::of::<SimCard>(wire);

crate::controller::runtime::framework::managed_namespaced!(SimCard, SimCardStatus);

use decide::{describe, detail_due, matches, wanted};
use order::top_ups;

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::runtime::framework::{
    Cleanup, Outcome, PausedOutcome, Progress, Reconciler, now, publish, save_then_warn,
};
use super::{Context, Error, vendor};
use crate::cloud::onence::{Change, OneNce, Quota, Sim, SimChange};
use crate::crd::conditions::{Health, event, reason};
use crate::crd::sim_card::{PendingSimChange, SimDeletionPolicy};
use crate::crd::{ProviderType, SimCard, SimCardStatus};
use crate::ledger::metering::{Price, Subject};

/// How often a Stalled claim looks again (the winning claim may go away).
const CLAIM_RECHECK: Duration = Duration::from_secs(60);

/// Reconciles SimCards.
pub struct SimCardReconciler;

/// A SIM this object may act on.
struct Claimed {
    iccid: String,
    /// The ProviderConfig's name and its client's fingerprint (for the account's SIM listing).
    pc: String,
    fingerprint: u64,
    client: Arc<OneNce>,
    suspended: bool,
    /// The ProviderConfig requires a Project for every SimCard through it.
    require_project: bool,
    /// Why the ProviderConfig no longer lets this namespace use the account (the SIM is still
    /// metered, its credit stop still applies, nothing else is changed).
    access_refused: Option<String>,
    markup: rust_decimal::Decimal,
    /// One top-up's price (the ProviderConfig's `topUpPrice` with its markup), when declared.
    top_up_price: Option<Price>,
}

/// What 1NCE reports of a claimed SIM; its quotas (data, SMS) when they were read.
struct Observed {
    sim: Sim,
    quotas: Option<(Quota, Quota)>,
    /// The SIM came from the account's listing (it may be up to half a resync interval old).
    listed: bool,
}

/// Why a SimCard may not touch its SIM, or the claim it holds.
enum Claim {
    Held(Claimed),
    Refused(Outcome),
}

async fn claim(obj: &SimCard, ctx: &Context) -> Result<Claim, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let iccid =
        claim::normalize(&obj.spec.iccid).map_err(|m| Error::permanent(reason::INVALID_SPEC, m))?;
    let pc_name = &obj.spec.provider_config_ref.name;
    // A SimCard that holds its SIM keeps metering (and cleaning up) it after its namespace lost
    // access to the account; the refusal is said, nothing else is done through it.
    let holds = obj
        .status
        .as_ref()
        .is_some_and(|s| s.claimed_iccid.is_some());
    let (resolved, access_refused) = if holds {
        vendor::resolve_holding(ctx, pc_name, &ns).await?
    } else {
        (vendor::resolve_any(ctx, pc_name, &ns).await?, None)
    };
    if resolved.config.spec.type_ != ProviderType::Onence {
        return Err(Error::permanent(
            reason::PROVIDER_CONFIG_WRONG_TYPE,
            format!(
                "ProviderConfig {pc_name:?} is of type {}; a SimCard needs one of type onence",
                resolved.config.spec.type_.as_str()
            ),
        ));
    }
    if !claim::allowed(&resolved.config, &ns, &iccid) {
        return Ok(Claim::Refused(Outcome::new(Health::stalled(
            reason::SIM_NOT_ALLOWED,
            format!(
                "ProviderConfig {pc_name:?} does not let namespace {ns:?} claim SIM {iccid} (spec.simClaims)"
            ),
        ))));
    }
    let all = ctx.caches()?.store::<SimCard>()?.state();
    if let Some(w) = claim::winner(&all, &resolved.config, &iccid).filter(|w| w.uid() != obj.uid())
    {
        return Ok(Claim::Refused(
            Outcome::new(Health::stalled(
                reason::CLAIMED_BY_ANOTHER,
                format!(
                    "SIM {iccid} is claimed by an older SimCard ({}); this one touches nothing",
                    if w.namespace() == obj.namespace() {
                        w.name_any()
                    } else {
                        "in another namespace".to_string()
                    }
                ),
            ))
            .requeue_after(CLAIM_RECHECK),
        ));
    }
    let client = ctx.providers.onence(ctx, &resolved).await?;
    let markup = resolved.config.spec.markup();
    let top_up_price = resolved.config.spec.top_up_price.as_ref().and_then(|m| {
        let amount = m.amount.parse().ok()?;
        Some(Price::with_markup(amount, &m.currency, markup))
    });
    Ok(Claim::Held(Claimed {
        iccid,
        pc: pc_name.clone(),
        fingerprint: resolved.fingerprint,
        client,
        suspended: resolved.config.spec.suspended,
        require_project: resolved.config.spec.require_project,
        access_refused,
        markup,
        top_up_price,
    }))
}

/// The SIM a SimCard holds its claim on, with its account's client, for another kind acting on it
/// (a SimMessage); `None` when the claim does not hold, `Some((iccid, client, suspended))` otherwise.
pub(crate) async fn claimed(
    sim: &SimCard,
    ctx: &Context,
) -> Result<Option<(String, Arc<OneNce>, bool)>, Error> {
    Ok(match claim(sim, ctx).await? {
        // A namespace that lost access to the account sends nothing through it.
        Claim::Held(c) if c.access_refused.is_none() => Some((c.iccid, c.client, c.suspended)),
        Claim::Held(_) | Claim::Refused(_) => None,
    })
}

/// What 1NCE reports of the SIM, into status.
fn observed(status: &mut SimCardStatus, sim: &Sim) {
    status.imsi = sim.imsi.clone();
    status.msisdn = sim.msisdn.clone();
    status.ip_address = sim.ip_address.clone();
    status.state = Some(sim.status.clone());
    status.label = sim.label.clone().filter(|l| !l.is_empty());
    status.imei_lock = Some(sim.imei_lock);
}

/// Reads the SIM into status: from the account's listing when `fresh` is false (else by itself), and
/// its quotas and usage SIM by SIM when due ([`detail_due`]), metering the usage. `Ok(None)`: 1NCE does
/// not know the SIM.
async fn observe(
    obj: &SimCard,
    ctx: &Context,
    c: &Claimed,
    status: &mut SimCardStatus,
    fresh: bool,
) -> Result<Option<Observed>, Error> {
    let changed_at = status
        .changed_at
        .as_deref()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map_or(0, |t| t.as_second());
    let listed = if fresh {
        None
    } else {
        let max_age = ctx.config.resync_interval / 2;
        let listing = ctx
            .state::<crate::controller::runtime::listings::Listings<Sim>>()
            .get(&c.pc, c.fingerprint, max_age, || async {
                Ok(c.client
                    .list_sims()
                    .await?
                    .into_iter()
                    .map(|s| (s.iccid.clone(), s))
                    .collect())
            })
            .await
            .map_err(Error::vendor("list the account's SIMs"))?;
        // A listing from before this object's own last change does not show the SIM as it is.
        (listing.at > changed_at)
            .then(|| listing.items.get(&c.iccid).cloned())
            .flatten()
    };
    let from_listing = listed.is_some();
    let sim = match listed {
        Some(s) => s,
        None => match c
            .client
            .sim(&c.iccid)
            .await
            .map_err(Error::vendor("read the SIM"))?
        {
            Some(s) => s,
            None => return Ok(None),
        },
    };
    observed(status, &sim);
    let streamed = streamed(ctx, c, status).await?;
    let stream_ahead = usage::ahead(&status.usage_cursors, &streamed);
    if from_listing
        && !stream_ahead
        && !detail_due(
            obj,
            status,
            &sim,
            ctx.config.sim_usage_interval,
            jiff::Timestamp::now(),
        )
    {
        return Ok(Some(Observed {
            sim,
            quotas: None,
            listed: true,
        }));
    }
    let data = c
        .client
        .quota(&c.iccid, false)
        .await
        .map_err(Error::vendor("read the data quota"))?;
    status.data_quota_remaining_bytes = u64::try_from(data.remaining).ok();
    status.data_quota_total_bytes = u64::try_from(data.total).ok();
    status.data_quota_expiry = data.expiry.clone();
    let sms = c
        .client
        .quota(&c.iccid, true)
        .await
        .map_err(Error::vendor("read the SMS quota"))?;
    status.sms_quota_remaining = u64::try_from(sms.remaining).ok();
    status.sms_quota_total = u64::try_from(sms.total).ok();
    status.sms_quota_expiry = sms.expiry.clone();
    status.data_quota_level = sim.data_quota_level;
    status.sms_quota_level = sim.sms_quota_level;
    status.connectivity = c
        .client
        .connectivity(&c.iccid)
        .await
        .map_err(Error::vendor("read the SIM's connectivity"))?;
    meter(obj, ctx, c, status, &streamed).await?;
    status.usage_read_at = Some(now());
    Ok(Some(Observed {
        sim,
        quotas: Some((data, sms)),
        listed: from_listing,
    }))
}

/// Meters the SIM's usage since the cursors in status (or from today, the first time).
async fn meter(
    obj: &SimCard,
    ctx: &Context,
    c: &Claimed,
    status: &mut SimCardStatus,
    streamed: &usage::Streamed,
) -> Result<(), Error> {
    let now = jiff::Timestamp::now();
    let today = now.to_zoned(jiff::tz::TimeZone::UTC).date();
    let month = today.strftime("%Y-%m").to_string();
    let first_of_month = format!("{month}-01");
    let oldest = status
        .usage_cursors
        .iter()
        .map(|c| c.epoch.clone())
        .min()
        .unwrap_or_else(|| first_of_month.clone())
        .min(first_of_month);
    // 1NCE keeps six months.
    let floor = today
        .checked_sub(jiff::Span::new().days(180))
        .map(|d| d.to_string())
        .unwrap_or_default();
    let from = oldest.max(floor);
    let today = today.to_string();
    let polled = c
        .client
        .usage(&c.iccid, &from, &today)
        .await
        .map_err(Error::vendor("read the SIM's usage"))?;
    let days = usage::merge(&polled, streamed);
    let (bytes, sms) = usage::month_to_date(&days, &month);
    status.month_to_date_data_bytes = Some(bytes);
    status.month_to_date_sms = Some(sms);
    let Some(ledger) = &ctx.ledger else {
        return Ok(());
    };
    if status.usage_cursors.is_empty() {
        // No cursor starts metering at today's figure: only for a SimCard that truly has none, never
        // because the cache lags this controller's own last status write (that would drop usage).
        status.usage_cursors = live_status(obj, ctx)
            .await?
            .map(|s| s.usage_cursors)
            .unwrap_or_default();
    }
    let subject = subject(obj, status);
    let started = std::time::Instant::now();
    let (cursors, recorded) = usage::settle(
        ledger,
        &subject,
        &status.usage_cursors,
        &days,
        (&today, now.as_second()),
        c.markup,
    )
    .await
    // A ledger outage is an outage: Reconciling, retried, counted as `ledger_unavailable`.
    .map_err(Error::Ledger)?;
    ctx.recorded_usage(started.elapsed(), &recorded);
    status.usage_cursors = cursors;
    Ok(())
}

/// What 1NCE's Data Streamer delivered for this SIM since the oldest cursor (nothing without a ledger).
async fn streamed(
    ctx: &Context,
    c: &Claimed,
    status: &SimCardStatus,
) -> Result<Vec<(String, String, i64)>, Error> {
    let (Some(ledger), Some(from)) = (
        &ctx.ledger,
        status.usage_cursors.iter().map(|c| c.epoch.clone()).min(),
    ) else {
        return Ok(Vec::new());
    };
    ledger
        .streamed(&c.iccid, &from)
        .await
        .map_err(Error::Ledger)
}

/// The SimCard's status as the API server holds it now (the cache may lag this controller's writes).
async fn live_status(obj: &SimCard, ctx: &Context) -> Result<Option<SimCardStatus>, Error> {
    let api: kube::Api<SimCard> =
        kube::Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    Ok(api
        .get_status(&obj.name_any())
        .await
        .map_err(Error::kube("reading the SimCard's status"))?
        .status)
}

/// Who is billed for this SimCard.
fn subject(obj: &SimCard, status: &SimCardStatus) -> Subject {
    Subject {
        namespace: obj.namespace().unwrap_or_default(),
        project: status.project.clone().unwrap_or_default(),
        project_uid: status.project_uid.clone().unwrap_or_default(),
        kind: "SimCard".into(),
        name: obj.name_any(),
        uid: obj.uid().unwrap_or_default(),
    }
}

/// Warns (an Event) when a quota just read is 80 % or 100 % used, once per quota period: the warning is
/// saved in status before it is sent, so a failed write never repeats it.
async fn warn_quotas(
    obj: &SimCard,
    ctx: &Context,
    c: &Claimed,
    progress: &mut Progress<SimCardStatus>,
) -> Result<(), Error> {
    let new = decide::quota_warnings(&progress.status);
    if new.is_empty() {
        return Ok(());
    }
    let st = &mut progress.status;
    // A quota's warnings of earlier periods are no longer needed to suppress anything.
    st.quota_warnings.retain(|w| {
        new.iter()
            .all(|n| n.quota != w.quota || n.period == w.period)
    });
    st.quota_warnings.extend(new.iter().cloned());
    let notes: Vec<String> = new
        .iter()
        .map(|w| {
            let what = if w.quota == "sms" { "SMS" } else { "data" };
            format!("SIM {}'s {what} quota is {}% used", c.iccid, w.percent)
        })
        .collect();
    save_then_warn(ctx, obj, progress, event::QUOTA_THRESHOLD_REACHED, &notes).await
}

/// Sends the spec's state to 1NCE when the SIM differs, and says how far it is.
async fn converge(
    obj: &SimCard,
    ctx: &Context,
    c: &Claimed,
    sim: &Sim,
    status: &mut SimCardStatus,
    stop: Option<&crate::controller::project::policy::MoneyStop>,
) -> Result<Outcome, Error> {
    let want = wanted(obj, stop.is_some());
    if matches(sim, &want) {
        if status.pending_change.take().is_some() {
            status.changed_at = Some(now());
        }
        if let Some(why) = stop {
            return Ok(Outcome::new(Health::not_ready(
                why.reason,
                format!("SIM {} is disabled: {}", c.iccid, why.message),
            )));
        }
        return Ok(Outcome::new(Health::ready(format!(
            "SIM {} is {}",
            c.iccid,
            describe(&want)
        ))));
    }
    if c.suspended {
        return Ok(Outcome::new(Health::not_ready(
            reason::PROVIDER_CONFIG_SUSPENDED,
            format!(
                "ProviderConfig {:?} is suspended: the SIM is still read and metered, not changed",
                obj.spec.provider_config_ref.name
            ),
        )));
    }
    let poll = ctx.config.poll_interval;
    let same = |p: &PendingSimChange| {
        PendingSimChange {
            requested_at: String::new(),
            ..p.clone()
        } == want
    };
    // The cache may lag this controller's own last status write: before sending, the live object says
    // whether this change was sent already (a record lost to a stale write would resend it for ever).
    if !status.pending_change.as_ref().is_some_and(&same)
        && let Some(p) = live_status(obj, ctx)
            .await?
            .and_then(|s| s.pending_change)
            .filter(|p| same(p))
    {
        status.pending_change = Some(p);
    }
    if let Some(p) = status.pending_change.as_ref().filter(|p| same(p)) {
        let now = jiff::Timestamp::now().as_second();
        if let Some(waited) = decide::timed_out(p, now, obj.spec.change_timeout_seconds) {
            return Ok(Outcome::new(Health::stalled(
                reason::CHANGE_NOT_APPLIED,
                format!(
                    "1NCE has not applied the change ({}) sent {waited} s ago (spec.changeTimeoutSeconds: {})",
                    describe(&want),
                    obj.spec.change_timeout_seconds
                ),
            )));
        }
        return Ok(
            pending(format!("waiting for 1NCE to apply: {}", describe(&want))).requeue_after(poll),
        );
    }
    let change = SimChange {
        enabled: want.enabled,
        label: want.label.clone(),
        imei_lock: Some(want.imei_lock),
    };
    match c
        .client
        .change(&c.iccid, &change)
        .await
        .map_err(Error::vendor("change the SIM"))?
    {
        Change::Queued => {
            status.pending_change = Some(PendingSimChange {
                requested_at: now(),
                ..want.clone()
            });
            status.changed_at = Some(now());
            publish(
                ctx,
                obj,
                EventType::Normal,
                event::CHANGE_REQUESTED,
                &format!("asked 1NCE to make SIM {} {}", c.iccid, describe(&want)),
            )
            .await;
            Ok(pending(format!("1NCE is applying: {}", describe(&want))).requeue_after(poll))
        }
        Change::Pending => Ok(pending(
            "another change of this SIM is still pending at 1NCE; trying again".into(),
        )
        .requeue_after(poll)),
    }
}

fn pending(message: String) -> Outcome {
    Outcome::new(Health::progressing(reason::CHANGE_PENDING, message))
}

fn not_found(c: &Claimed) -> Error {
    Error::permanent(
        reason::EXTERNAL_NOT_FOUND,
        format!(
            "1NCE reports no SIM {} in this account (or not this account's)",
            c.iccid
        ),
    )
}

impl Reconciler<SimCard> for SimCardReconciler {
    fn account(obj: &SimCard) -> Option<String> {
        Some(obj.spec.provider_config_ref.name.clone())
    }

    async fn apply(
        &self,
        obj: Arc<SimCard>,
        ctx: Arc<Context>,
        progress: &mut Progress<SimCardStatus>,
    ) -> Result<Outcome, Error> {
        let c = match claim(&obj, &ctx).await? {
            Claim::Held(c) => c,
            Claim::Refused(outcome) => {
                progress.status.claimed_iccid = None;
                return Ok(outcome);
            }
        };
        held(&obj, &ctx, &c, progress).await
    }

    async fn observe(
        &self,
        obj: Arc<SimCard>,
        ctx: Arc<Context>,
        progress: &mut Progress<SimCardStatus>,
    ) -> Result<Option<PausedOutcome>, Error> {
        let Claim::Held(c) = claim(&obj, &ctx).await? else {
            return Ok(None);
        };
        let b = billing::billing(&obj, &ctx, &mut progress.status, c.require_project)?;
        let Some(o) = observe(&obj, &ctx, &c, &mut progress.status, false).await? else {
            return Ok(None);
        };
        // Pause suspends the user's changes, not the Project's money policy: the credit stop applies.
        let health = match &b.stop {
            Some(why) => {
                let note = under_credit_stop(&c, &o.sim, why, &mut progress.status).await?;
                Some(Health::not_ready(why.reason, note))
            }
            None => None,
        };
        Ok(Some(PausedOutcome {
            health,
            requeue_after: Some(ctx.config.resync_interval),
        }))
    }

    async fn cleanup(
        &self,
        obj: Arc<SimCard>,
        ctx: Arc<Context>,
        progress: &mut Progress<SimCardStatus>,
    ) -> Result<Cleanup, Error> {
        cleanup(obj, ctx, progress).await
    }
}

/// A claimed SIM: billed and metered first, whatever the SimCard is refused after (its Project, a
/// vendor's refusal), then the credit stop, top-ups and the spec's state.
async fn held(
    obj: &Arc<SimCard>,
    ctx: &Arc<Context>,
    c: &Claimed,
    progress: &mut Progress<SimCardStatus>,
) -> Result<Outcome, Error> {
    progress.status.claimed_iccid = Some(c.iccid.clone());
    let b = billing::billing(obj, ctx, &mut progress.status, c.require_project)?;
    let fresh = progress.status.pending_change.is_some();
    let Some(o) = observe(obj, ctx, c, &mut progress.status, fresh).await? else {
        return Err(not_found(c));
    };
    let refusal = match (&c.access_refused, b.refusal) {
        (Some(why), _) => Some(Error::permanent(
            reason::PROVIDER_CONFIG_NOT_ALLOWED,
            format!(
                "{why}: the SIM this SimCard holds there is still read and metered, nothing else is changed"
            ),
        )),
        (None, r) => r,
    };
    if let Some(Error::Permanent { reason, message }) = refusal {
        // Refused where it points: still billed where it was, and under that Project's stop.
        let note = match &b.stop {
            Some(why) => {
                let n = under_credit_stop(c, &o.sim, why, &mut progress.status).await?;
                format!("; {n}")
            }
            None => String::new(),
        };
        return Err(Error::permanent(reason, format!("{message}{note}")));
    }
    reset::requested(obj, ctx, c, progress).await?;
    if o.quotas.is_some() {
        warn_quotas(obj, ctx, c, progress).await?;
        // Informational: a failed read neither stalls the SimCard nor holds back its top-ups and state.
        if let Err(e) = network::read(obj, ctx, c, progress).await {
            tracing::warn!(simcard = %obj.name_any(), error = %e, "reading the SIM's network events failed; read again with the next quotas");
        }
    }
    let stop = b.stop;
    // The usage just metered may have exhausted the credit: no top-up is ordered then.
    let auto = |q: Option<&crate::crd::sim_card::QuotaPolicy>| q.is_some_and(|q| q.auto_top_up);
    let may_order = o.quotas.is_some()
        && (auto(obj.spec.data_quota.as_ref()) || auto(obj.spec.sms_quota.as_ref()));
    let exhausted =
        stop.is_some() || (may_order && billing::exhausted_now(obj, ctx, &progress.status).await?);
    let topping = top_ups(obj, ctx, c, &o, progress, exhausted).await?;
    // The listing may predate a change made elsewhere: a difference is confirmed by the SIM itself.
    let sim = if o.listed && !matches(&o.sim, &wanted(obj, stop.is_some())) {
        match c
            .client
            .sim(&c.iccid)
            .await
            .map_err(Error::vendor("read the SIM"))?
        {
            Some(s) => {
                observed(&mut progress.status, &s);
                s
            }
            None => return Err(not_found(c)),
        }
    } else {
        o.sim.clone()
    };
    let outcome = converge(obj, ctx, c, &sim, &mut progress.status, stop.as_ref()).await?;
    let mut outcome = match topping {
        Some(h)
            if matches!(h, Health::Stalled { .. })
                || matches!(outcome.health, Health::Ready { .. }) =>
        {
            Outcome::new(h).requeue_after(ctx.config.poll_interval)
        }
        _ => outcome,
    };
    // A claimed SIM costs money whatever the SimCard's state: a Stalled one is still looked at (and
    // metered) every resync interval, not only on the user's next change.
    outcome.resync_at_most = Some(ctx.config.resync_interval);
    Ok(outcome)
}

/// What the credit stop of the Project a SIM is billed to does while the SimCard does not converge
/// (paused, refused where it points): an enabled SIM is disabled (not through a suspended account);
/// returns what the condition says of it.
async fn under_credit_stop(
    c: &Claimed,
    sim: &Sim,
    why: &crate::controller::project::policy::MoneyStop,
    status: &mut SimCardStatus,
) -> Result<String, Error> {
    if sim.status != "Enabled" {
        return Ok(format!("SIM {} is disabled: {}", c.iccid, why.message));
    }
    if c.suspended {
        return Ok(format!(
            "under the credit stop ({}), SIM {} is not disabled while its ProviderConfig is suspended; its usage is still metered",
            why.message, c.iccid
        ));
    }
    let off = SimChange {
        enabled: false,
        label: None,
        imei_lock: None,
    };
    c.client
        .change(&c.iccid, &off)
        .await
        .map_err(Error::vendor("disable the SIM"))?;
    status.changed_at = Some(now());
    Ok(format!("disabling SIM {}: {}", c.iccid, why.message))
}

/// Deletion: meter a last time, then disable the SIM (`Disable`) or leave it (`Orphan`).
async fn cleanup(
    obj: Arc<SimCard>,
    ctx: Arc<Context>,
    progress: &mut Progress<SimCardStatus>,
) -> Result<Cleanup, Error> {
    if progress.status.claimed_iccid.is_none() {
        return Ok(Cleanup::Done);
    }
    // The claim must still hold (an admin may have withdrawn it, or another SimCard holds it):
    // otherwise release, touching nothing. An account that cannot be reached (its ProviderConfig or
    // Secret gone) is not "nothing to do": the SIM is still enabled and billed, so deletion waits.
    let c = match claim(&obj, &ctx).await {
        Ok(Claim::Held(c)) => c,
        Ok(Claim::Refused(_)) => return Ok(Cleanup::Done),
        Err(Error::Permanent { .. }) if obj.spec.deletion_policy == SimDeletionPolicy::Orphan => {
            return Ok(Cleanup::Done);
        }
        Err(Error::Permanent { reason, message }) => {
            return Err(Error::permanent(
                reason,
                format!(
                    "{message}; SIM {} may still be enabled and billed at 1NCE: deletion waits until its account can be used to disable it, or deletionPolicy is Orphan",
                    obj.spec.iccid
                ),
            ));
        }
        Err(e) => return Err(e),
    };
    let Some(Observed { sim, .. }) = observe(&obj, &ctx, &c, &mut progress.status, true).await?
    else {
        return Ok(Cleanup::Done);
    };
    if obj.spec.deletion_policy == SimDeletionPolicy::Orphan {
        publish(
            &ctx,
            &*obj,
            EventType::Normal,
            event::ORPHANED,
            &format!("SIM {} left as it is (deletionPolicy Orphan)", c.iccid),
        )
        .await;
        return Ok(Cleanup::Done);
    }
    if sim.status == "Disabled" {
        publish(
            &ctx,
            &*obj,
            EventType::Normal,
            event::DISABLED,
            &format!("SIM {} is disabled at 1NCE", c.iccid),
        )
        .await;
        return Ok(Cleanup::Done);
    }
    if c.suspended {
        return Err(Error::Waiting {
            reason: reason::PROVIDER_CONFIG_SUSPENDED,
            message: "the ProviderConfig is suspended; the SIM is disabled once it is not".into(),
        });
    }
    let off = SimChange {
        enabled: false,
        label: None,
        imei_lock: None,
    };
    let answer = c
        .client
        .change(&c.iccid, &off)
        .await
        .map_err(Error::vendor("disable the SIM"))?;
    Ok(Cleanup::Wait {
        message: match answer {
            Change::Queued => format!("1NCE is disabling SIM {}", c.iccid),
            Change::Pending => format!(
                "another change of SIM {} is pending at 1NCE; disabling it afterwards",
                c.iccid
            ),
        },
        requeue_after: ctx.config.poll_interval,
    })
}
