//! Usage billed through Stripe: a plan's `metered` prices name ledger meters; the Project's ledger rows
//! of those meters are reported to Stripe as billing meter events, each row exactly once.
//!
//! - The meter event's `identifier` is derived from the ledger row's idempotency key, and the ledger
//!   keeps the record of what was reported ([`crate::ledger::stripe_usage`]): the report is written
//!   (`sending`) before the call and marked `sent` after Stripe's answer.
//! - A crash or lost answer between the two leaves it `sending`: it is sent again with the same
//!   identifier, which Stripe deduplicates — but only for about 24 hours, so one older than 23 hours is
//!   not sent again blindly: it is counted (`quartermaster_stripe_usage_unconfirmed_total`) and logged.
//! - A refusal (4xx but 429) forgets the intent (Stripe recorded nothing) and stalls the Subscription
//!   with Stripe's words; outages leave it for the next attempt.
//! - Late usage for a closed month is a ledger adjustment row like any other: it is reported when it
//!   arrives. Rows recorded before the Subscription existed are not reported.

use kube::ResourceExt;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};

use super::super::{Context, Error};
use crate::cloud::stripe::Stripe;
use crate::crd::Subscription;
use crate::crd::provider_config::MeteredPrice;
use crate::ledger::stripe_usage::UsageReport;

/// Rows reported per meter and reconcile.
const BATCH: i64 = 500;
/// How long after an attempt its identifier is still safe to send again (Stripe keeps ~24 h).
const RESEND_WINDOW: i64 = 23 * 3600;
/// Stripe takes meter events up to 35 days old.
const OLDEST_EVENT: i64 = 34 * 86_400;

/// The meter event identifier of a ledger row (at most 100 characters, as Stripe allows).
pub fn identifier(usage_key: &str) -> String {
    let d = Sha256::digest(usage_key.as_bytes());
    let hex: String = d.iter().take(20).map(|b| format!("{b:02x}")).collect();
    format!("qm-{hex}")
}

/// Ledger units as the reported value (over the price's divisor), exact.
pub fn value(quantity: i64, divisor: u64) -> String {
    (Decimal::from(quantity) / Decimal::from(divisor.max(1)))
        .normalize()
        .to_string()
}

/// What one reconcile reported.
#[derive(Debug, Default)]
pub struct Reported {
    /// Rows accepted by Stripe.
    pub rows: u64,
}

/// Reports the Project's unreported usage of the plan's metered prices to `customer`.
pub async fn report(
    ctx: &Context,
    obj: &Subscription,
    client: &Stripe,
    customer: &str,
    metered: &[MeteredPrice],
) -> Result<Reported, Error> {
    let mut done = Reported::default();
    let (Some(ledger), Some(_)) = (&ctx.ledger, &obj.spec.project_ref) else {
        return Ok(done);
    };
    if metered.is_empty() {
        return Ok(done);
    }
    let Some(project) = super::project_of(ctx, obj)? else {
        return Ok(done);
    };
    let uid = project.uid().unwrap_or_default();
    let now = jiff::Timestamp::now().as_second();
    for r in ledger.reports_in_flight(&uid).await? {
        if r.customer != customer {
            continue;
        }
        if now - r.attempted_at > RESEND_WINDOW {
            ctx.metrics.stripe_usage_unconfirmed.inc();
            tracing::warn!(usage_key = %r.usage_key, identifier = %r.identifier, "a usage report's answer was lost longer ago than Stripe deduplicates: not sent again; check Stripe's meter events");
            continue;
        }
        send(ctx, client, &r).await?;
        done.rows += 1;
    }
    let since = obj
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(now, |t| t.0.as_second());
    for m in metered {
        for (key, meter, quantity, window_end) in
            ledger.unreported(&uid, &m.meter, since, BATCH).await?
        {
            let r = UsageReport {
                identifier: identifier(&key),
                usage_key: key,
                project_uid: uid.clone(),
                meter,
                quantity,
                value: value(quantity, m.divisor),
                customer: customer.to_string(),
                event_name: m.event_name.clone(),
                event_time: window_end.clamp(now - OLDEST_EVENT, now),
                attempted_at: now,
            };
            ledger.report_intent(&r).await?;
            send(ctx, client, &r).await?;
            done.rows += 1;
        }
    }
    Ok(done)
}

/// One meter event, then its record marked sent (or forgotten if Stripe refused it).
async fn send(ctx: &Context, client: &Stripe, r: &UsageReport) -> Result<(), Error> {
    let ledger = ctx.ledger.as_ref().expect("checked by the caller");
    match client
        .meter_event(
            &r.event_name,
            &r.customer,
            &r.value,
            &r.identifier,
            r.event_time,
        )
        .await
    {
        Ok(()) => {
            ledger.report_sent(&r.usage_key).await?;
            ctx.metrics
                .stripe_usage_reported
                .with_label_values(&[&r.meter])
                .inc_by(u64::try_from(r.quantity).unwrap_or(0));
            Ok(())
        }
        Err(e) if !e.is_transient() => {
            ledger.report_refused(&r.usage_key).await?;
            Err(Error::vendor("report usage to Stripe")(e))
        }
        Err(e) => Err(Error::vendor("report usage to Stripe")(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_stable_short_and_distinct_and_values_exact() {
        let a = identifier("vm/uid/1700000000");
        assert_eq!(a, identifier("vm/uid/1700000000"));
        assert_ne!(a, identifier("vm/uid/1700003600"));
        assert!(a.len() <= 100);
        assert_eq!(value(5400, 3600), "1.5");
        assert_eq!(value(-1800, 3600), "-0.5");
        assert_eq!(value(7, 1), "7");
        assert_eq!(value(1, 3), "0.3333333333333333333333333333");
    }
}
