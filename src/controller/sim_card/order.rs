//! Carrying out [`super::top_up`]'s decisions: the record written before the order, the order sent
//! once, its confirmation billed, Events for each.

use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::top_up::{self, TopUp};
use super::{Claimed, Observed, subject};
use crate::cloud::onence::Quota;
use crate::controller::runtime::framework::{Progress, now, persist, publish};
use crate::controller::{Context, Error};
use crate::crd::conditions::{Health, event, reason};
use crate::crd::sim_card::{QuotaPolicy, TopUpRecord};
use crate::crd::{SimCard, SimCardStatus};
use crate::ledger::{Meter, UsageEvent};

/// Runs the top-up policy of both quotas; `Some` health when a top-up is pending or unconfirmed. While
/// the Project's credit stop holds (`stopped`), no new order is sent (an order already sent is still
/// confirmed and billed).
pub(super) async fn top_ups(
    obj: &SimCard,
    ctx: &Context,
    c: &Claimed,
    o: &Observed,
    progress: &mut Progress<SimCardStatus>,
    stopped: bool,
) -> Result<Option<Health>, Error> {
    let Some((data, sms)) = &o.quotas else {
        return Ok(None);
    };
    let mut health = None;
    for (kind, policy, quota) in [
        ("data", obj.spec.data_quota.as_ref(), data),
        ("sms", obj.spec.sms_quota.as_ref(), sms),
    ] {
        let policy = policy.filter(|_| !stopped);
        if let Some(h) = one(obj, ctx, c, (kind, policy, quota), progress).await? {
            if matches!(h, Health::Stalled { .. }) {
                return Ok(Some(h));
            }
            health = Some(h);
        }
    }
    Ok(health)
}

fn record_of<'a>(status: &'a SimCardStatus, kind: &str) -> Option<&'a TopUpRecord> {
    status.top_ups.iter().find(|r| r.quota == kind)
}

fn upsert(status: &mut SimCardStatus, r: TopUpRecord) {
    status.top_ups.retain(|x| x.quota != r.quota);
    status.top_ups.push(r);
    status.top_ups.sort_by(|a, b| a.quota.cmp(&b.quota));
}

async fn one(
    obj: &SimCard,
    ctx: &Context,
    c: &Claimed,
    (kind, policy, quota): (&str, Option<&QuotaPolicy>, &Quota),
    progress: &mut Progress<SimCardStatus>,
) -> Result<Option<Health>, Error> {
    let now_ts = jiff::Timestamp::now();
    let month = now_ts
        .to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%Y-%m")
        .to_string();
    let record = record_of(&progress.status, kind).cloned();
    let waited = record
        .as_ref()
        .and_then(|r| r.requested_at.parse::<jiff::Timestamp>().ok())
        .map_or(0, |t| now_ts.as_second() - t.as_second());
    let timeout = i64::from(obj.spec.change_timeout_seconds);
    let pending = || {
        Health::progressing(
            reason::TOP_UP_PENDING,
            format!(
                "a {kind} top-up of SIM {} was ordered; waiting to see it in the quota",
                c.iccid
            ),
        )
    };
    match top_up::decide(policy, quota, record.as_ref(), &month, (waited, timeout)) {
        TopUp::Nothing => Ok(None),
        TopUp::Wait => Ok(Some(pending())),
        TopUp::Unconfirmed => Ok(Some(Health::stalled(
            reason::TOP_UP_UNCONFIRMED,
            format!(
                "a {kind} top-up of SIM {} was ordered {waited} s ago and the quota never showed it; check the orders at 1NCE (it is never ordered twice)",
                c.iccid
            ),
        ))),
        TopUp::Capped => {
            if ctx.first_warning(
                &format!("topup/{}/{kind}", obj.uid().unwrap_or_default()),
                &month,
            ) {
                publish(ctx, obj, EventType::Warning, event::TOP_UP_LIMIT_REACHED, &format!(
                    "the {kind} quota of SIM {} is under its threshold and this month's automatic top-ups are used up (maxTopUpsPerMonth)",
                    c.iccid
                )).await;
            }
            Ok(None)
        }
        TopUp::Confirmed => {
            let Some(r) = record else { return Ok(None) };
            bill(obj, ctx, c, &r, &progress.status).await?;
            upsert(
                &mut progress.status,
                TopUpRecord {
                    confirmed: true,
                    ..r
                },
            );
            publish(
                ctx,
                obj,
                EventType::Normal,
                event::TOP_UP_CONFIRMED,
                &format!(
                    "the {kind} top-up of SIM {} shows in the quota ({} left)",
                    c.iccid, quota.remaining
                ),
            )
            .await;
            Ok(None)
        }
        TopUp::Order { based_on } => {
            if c.suspended {
                return Ok(None);
            }
            order(obj, ctx, c, kind, based_on, progress).await
        }
    }
}

/// Records the order in status (written now), then sends it once.
async fn order(
    obj: &SimCard,
    ctx: &Context,
    c: &Claimed,
    kind: &str,
    based_on: String,
    progress: &mut Progress<SimCardStatus>,
) -> Result<Option<Health>, Error> {
    // The cache may lag this controller's own last write: the live object is the record of orders sent.
    let api: Api<SimCard> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let live = api
        .get_status(&obj.name_any())
        .await
        .map_err(Error::kube("reading the SimCard before ordering a top-up"))?;
    if let Some(r) = live
        .status
        .as_ref()
        .and_then(|s| record_of(s, kind))
        .filter(|r| r.based_on == based_on)
    {
        upsert(&mut progress.status, r.clone());
        return Ok(None);
    }
    let month = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%Y-%m")
        .to_string();
    let r = top_up::record(
        kind,
        based_on,
        record_of(&progress.status, kind),
        &month,
        now(),
    );
    upsert(&mut progress.status, r.clone());
    persist(ctx, obj, progress).await?;
    match c.client.top_up(&c.iccid).await {
        Ok(location) => {
            publish(
                ctx,
                obj,
                EventType::Normal,
                event::TOP_UP_ORDERED,
                &format!(
                    "ordered a {kind} top-up of SIM {} ({})",
                    c.iccid,
                    location.as_deref().unwrap_or("no order reference")
                ),
            )
            .await;
            Ok(Some(Health::progressing(
                reason::TOP_UP_PENDING,
                format!(
                    "a {kind} top-up of SIM {} was ordered; waiting to see it in the quota",
                    c.iccid
                ),
            )))
        }
        // Refused: no order exists; not sent again for this crossing.
        Err(e) if !e.is_transient() => {
            upsert(&mut progress.status, TopUpRecord { refused: true, ..r });
            Err(Error::vendor("order a top-up")(e))
        }
        // The answer was lost: the order may exist. Never sent again; the quota will tell.
        Err(e) => Ok(Some(Health::progressing(
            reason::TOP_UP_PENDING,
            format!(
                "the answer to a {kind} top-up order of SIM {} was lost ({e}); waiting to see it in the quota, never ordering twice",
                c.iccid
            ),
        ))),
    }
}

/// The confirmed top-up's cost into the ledger (idempotent on the order's record).
async fn bill(
    obj: &SimCard,
    ctx: &Context,
    c: &Claimed,
    r: &TopUpRecord,
    status: &SimCardStatus,
) -> Result<(), Error> {
    let s = subject(obj, status);
    let at = r
        .requested_at
        .parse::<jiff::Timestamp>()
        .map_or_else(|_| jiff::Timestamp::now().as_second(), |t| t.as_second());
    let (unit_price, vendor_unit_price, currency) = match &c.top_up_price {
        Some(p) => (p.tenant, p.vendor, p.currency.clone()),
        None => Default::default(),
    };
    let event = UsageEvent {
        key: format!("simcard/{}/sim_top_ups/{}/{}", s.uid, r.quota, r.based_on),
        namespace: s.namespace,
        project: s.project,
        project_uid: s.project_uid,
        object_kind: s.kind,
        object_name: s.name,
        object_uid: s.uid,
        meter: Meter::SimTopUps,
        quantity: 1,
        unit_price,
        vendor_unit_price,
        price_quantity: 1,
        currency: currency.clone(),
        window_start: at,
        window_end: at,
        attributes: if currency.is_empty() {
            serde_json::json!({"quota": r.quota, "unpriced": true})
        } else {
            serde_json::json!({"quota": r.quota})
        },
    };
    ctx.record_usage(&[event]).await.map_err(Error::Ledger)
}
