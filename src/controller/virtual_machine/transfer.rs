//! A VM's outbound transfer, metered from the vendor's figures ([`traffic`](super::traffic)) through
//! the counter meter, two counters a month:
//!
//! - **included** (epoch `<month>`): transfer up to the server's allowance, recorded at no charge;
//! - **overage** (epoch `<month>-over`): transfer beyond it, billed to the VM's Project at the
//!   ProviderConfig's transfer price with its markup. Its vendor cost is zero on the VM: the vendors
//!   pool allowances per account, so what the account actually pays is recorded once per account
//!   ([`record_pool_cost`]).
//!
//! A counter never goes back: a vendor figure below what was billed (DigitalOcean's integrated samples
//! move a little as they age) bills nothing and takes nothing back. The month the status counts is
//! finished with its final figure before the next begins; the cursor is in `status.transfer`, written
//! after the ledger took the events (a replay finds the same keys). At 80 % and 100 % of the allowance a
//! `TransferThresholdReached` Warning goes out once a month, saved in status first.

use kube::ResourceExt;

use super::traffic::{Figures, Pool, Traffic};
use crate::cloud::{ComputeProvider, Month};
use crate::controller::runtime::framework::{Progress, save_then_warn};
use crate::controller::{Context, Error};
use crate::crd::virtual_machine::{VirtualMachineStatus, VmTransfer};
use crate::crd::{ProviderConfig, VirtualMachine};
use crate::ledger::Meter;
use crate::ledger::metering::counter::{self, Cursor, Reading};
use crate::ledger::metering::{Price, Subject, marked_up};
use rust_decimal::Decimal;

/// The Event reason of an allowance threshold reached.
pub const TRANSFER_THRESHOLD: &str = "TransferThresholdReached";

/// The allowance thresholds announced, percent.
const THRESHOLDS: [u32; 2] = [80, 100];

/// The price per GB a tenant pays for transfer beyond the allowance: the ProviderConfig's
/// `transferPrice`, else the vendor's, with the markup; the vendor's cost on the VM is zero (see the
/// module). `None`: no price is known (the overage is recorded unpriced).
pub fn tenant_price(pc: &ProviderConfig, provider: &dyn ComputeProvider) -> Option<Price> {
    let (price, currency) = match &pc.spec.transfer_price {
        Some(m) => (m.amount.parse().ok()?, m.currency.clone()),
        None => provider.transfer_price().map(|(p, c)| (p, c.to_string()))?,
    };
    Some(Price {
        tenant: marked_up(price, pc.spec.markup()),
        vendor: Decimal::ZERO,
        currency,
    })
}

/// What a month's figure splits into: transfer within the allowance and beyond it, bytes.
pub fn split(bytes: i64, allowance: Option<i64>) -> (i64, i64) {
    match allowance {
        Some(a) => (bytes.min(a), (bytes - a).max(0)),
        None => (bytes, 0),
    }
}

/// The thresholds `outbound` of `allowance` reaches that `warned` does not hold yet.
pub fn thresholds_reached(outbound: i64, allowance: Option<i64>, warned: &[u32]) -> Vec<u32> {
    let Some(a) = allowance.filter(|a| *a > 0) else {
        return Vec::new();
    };
    THRESHOLDS
        .into_iter()
        .filter(|t| i128::from(outbound) * 100 >= i128::from(a) * i128::from(*t))
        .filter(|t| !warned.contains(t))
        .collect()
}

/// Meters the transfer the latest figures of VM `uid` show, into `progress.status.transfer`; announces
/// thresholds reached. Nothing to do without figures, or with figures of another server.
pub async fn meter(
    ctx: &Context,
    vm: &VirtualMachine,
    uid: &str,
    progress: &mut Progress<VirtualMachineStatus>,
) -> Result<(), Error> {
    let Some(f) = ctx.state::<Traffic>().figures(uid) else {
        return Ok(());
    };
    if progress.status.external_id.as_deref() != Some(f.server_id.as_str()) {
        return Ok(());
    }
    let subject = super::decide::subject(vm, uid, &progress.status);
    let start = vm.creation_timestamp().map_or(0, |t| t.0.as_second());
    let mut t = progress.status.transfer.clone();
    for &(month, bytes) in &f.months {
        t = Some(advance(ctx, &subject, t, &f, month, bytes, start).await?);
    }
    let Some(mut t) = t else { return Ok(()) };
    let notes: Vec<String> = thresholds_reached(t.outbound_bytes, t.allowance_bytes, &t.warned)
        .into_iter()
        .map(|p| {
            t.warned.push(p);
            note(&t, p, f.price.as_ref())
        })
        .collect();
    progress.status.transfer = Some(t);
    save_then_warn(ctx, vm, progress, TRANSFER_THRESHOLD, &notes).await
}

/// The status after billing `bytes` of `month` from `before` (a later month than `before`'s starts
/// new counters; an earlier one is ignored).
async fn advance(
    ctx: &Context,
    subject: &Subject,
    before: Option<VmTransfer>,
    f: &Figures,
    month: Month,
    bytes: i64,
    created: i64,
) -> Result<VmTransfer, Error> {
    let name = month.to_string();
    let prior = before.as_ref().filter(|t| t.month == name);
    if before
        .as_ref()
        .and_then(|t| Month::parse(&t.month))
        .is_some_and(|m| m > month)
    {
        return Ok(before.unwrap_or_default());
    }
    let at = f.read_at.min(month.end() - 1);
    let since = prior.map_or(month.start().max(created).min(at), |t| t.billed_at);
    let (included, overage) = split(bytes, f.allowance_bytes);
    let zero = f.price.as_ref().map(|p| Price {
        tenant: Decimal::ZERO,
        vendor: Decimal::ZERO,
        currency: p.currency.clone(),
    });
    let billed = (
        prior.map_or(0, |t| t.included_billed),
        prior.map_or(0, |t| t.overage_billed),
    );
    let inc = settle(
        ctx,
        subject,
        &name,
        billed.0,
        since,
        included,
        at,
        zero.as_ref(),
    )
    .await?;
    let over_epoch = format!("{name}-over");
    let over = settle(
        ctx,
        subject,
        &over_epoch,
        billed.1,
        since,
        overage,
        at,
        f.price.as_ref(),
    )
    .await?;
    let outbound = bytes.max(prior.map_or(0, |t| t.outbound_bytes));
    // The time of the figure status shows: a re-read of the same figure writes nothing.
    let read_at = match prior {
        Some(t) if bytes <= t.outbound_bytes => t.read_at.clone(),
        _ => jiff::Timestamp::from_second(f.read_at)
            .map(|t| t.to_string())
            .unwrap_or_default(),
    };
    Ok(VmTransfer {
        month: name,
        outbound_bytes: outbound,
        allowance_bytes: f.allowance_bytes,
        used_percent: f
            .allowance_bytes
            .filter(|a| *a > 0)
            .map(|a| i64::try_from(i128::from(outbound) * 100 / i128::from(a)).unwrap_or(i64::MAX)),
        read_at,
        included_billed: inc.billed,
        overage_billed: over.billed,
        billed_at: inc.at.max(over.at),
        warned: prior.map(|t| t.warned.clone()).unwrap_or_default(),
    })
}

/// One counter from `billed` (read at `since`) to `value` (read at `at`), never backwards.
#[allow(clippy::too_many_arguments)]
async fn settle(
    ctx: &Context,
    subject: &Subject,
    epoch: &str,
    billed: i64,
    since: i64,
    value: i64,
    at: i64,
    price: Option<&Price>,
) -> Result<Cursor, Error> {
    let cursor = Cursor {
        epoch: epoch.to_string(),
        billed,
        at: since,
        corrections: 0,
    };
    if value <= billed {
        return Ok(cursor);
    }
    let Some(ledger) = &ctx.ledger else {
        return Ok(Cursor {
            billed: value,
            at,
            ..cursor
        });
    };
    let reading = Reading {
        epoch: epoch.to_string(),
        value,
        at,
        epoch_start: since,
    };
    let started = std::time::Instant::now();
    let settled = counter::settle(
        ledger,
        subject,
        Meter::TransferBytes,
        Some(&cursor),
        &reading,
        price,
    )
    .await?;
    ctx.recorded_usage(started.elapsed(), &settled.recorded);
    Ok(settled.cursor)
}

/// Reads the server's transfer once more after the VM's deletion began and before its server is
/// released, so what it sent since the last round is billed too (once: a figure read after the
/// deletion began is not read again). A vendor that reports none, or a server already gone, is done.
pub async fn read_before_release(
    ctx: &Context,
    vm: &VirtualMachine,
    uid: &str,
    status: &VirtualMachineStatus,
) -> Result<(), Error> {
    let (Some(id), Some(pc_name), Some(since)) = (
        status.external_id.as_deref(),
        status.provider_config.as_deref(),
        vm.metadata
            .deletion_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
    ) else {
        return Ok(());
    };
    let traffic = ctx.state::<Traffic>();
    let before = traffic.figures(uid);
    if before.as_ref().is_some_and(|f| f.read_at >= since) {
        return Ok(());
    }
    let Some(pc) = ctx
        .caches()?
        .store::<ProviderConfig>()?
        .get(&kube::runtime::reflector::ObjectRef::new(pc_name))
    else {
        return Ok(());
    };
    let resolved = ctx.providers.account_for_reading(ctx, &pc).await?;
    let provider = ctx.providers.compute(ctx, &resolved).await?;
    let allowance = match before.as_ref().and_then(|f| f.allowance_bytes) {
        Some(a) => Some(a),
        None => super::read::catalog(ctx, &resolved, &*provider)
            .await
            .ok()
            .and_then(|c| c.size(status.size.as_deref()?)?.transfer_bytes),
    };
    let counted = status
        .transfer
        .as_ref()
        .and_then(|t| Month::parse(&t.month));
    let now = jiff::Timestamp::now().as_second();
    let read = match super::traffic::read_server(
        &*provider, id, counted, allowance, false, None, now,
    )
    .await
    {
        Ok(read) => read,
        // An outage: the deletion waits for the figure, as it waits to delete.
        Err(e @ Error::Vendor { .. }) if is_transient(&e) => return Err(e),
        // A refusal (a token without the monitoring scope, say): the last round's figure is billed.
        Err(e) => {
            tracing::warn!(vm = %vm.name_any(), error = %e, "cannot read the server's transfer before its deletion; what the last round read is billed");
            return Ok(());
        }
    };
    if let Some(mut f) = read {
        f.price = tenant_price(&pc, &*provider);
        f.metrics = before.and_then(|b| b.metrics);
        traffic.keep(uid, f);
    }
    Ok(())
}

fn is_transient(e: &Error) -> bool {
    matches!(e, Error::Vendor { source, .. } if source.is_transient())
}

/// The Warning's words for threshold `percent`.
fn note(t: &VmTransfer, percent: u32, price: Option<&Price>) -> String {
    let gb = |b: i64| format!("{:.1} GB", b as f64 / 1e9);
    let beyond = match price {
        Some(p) => format!(
            "transfer beyond it is billed at {} {} per GB",
            p.tenant.normalize(),
            p.currency
        ),
        None => "transfer beyond it is recorded unpriced".to_string(),
    };
    format!(
        "outbound transfer in {} reached {percent} % of the allowance ({} of {}); {beyond}",
        t.month,
        gb(t.outbound_bytes),
        gb(t.allowance_bytes.unwrap_or(0)),
    )
}

/// Records the account's pooled overage this month beyond what the ledger already holds for it, as
/// the vendor's cost (the tenant's amount zero, no Project): the ledger's own total is the cursor, so a
/// crash or a repeated round records nothing twice. A vendor without a transfer price records nothing.
pub async fn record_pool_cost(
    ctx: &Context,
    pc: &ProviderConfig,
    provider: &dyn ComputeProvider,
    pool: &Pool,
    now: i64,
) -> Result<(), Error> {
    if pool.unknown && pool.stated.is_none() {
        tracing::warn!(provider_config = %pc.name_any(), "a server's transfer allowance is not known this round: the account's pooled overage is not recorded until it is");
    }
    for (month, overage) in pool.overages() {
        record_month(ctx, pc, provider, month, overage, now).await?;
    }
    Ok(())
}

/// Records the account's pooled `overage` of `month` beyond what the ledger holds for it.
async fn record_month(
    ctx: &Context,
    pc: &ProviderConfig,
    provider: &dyn ComputeProvider,
    month: Month,
    overage: i64,
    now: i64,
) -> Result<(), Error> {
    let (Some(ledger), Some((price, currency))) = (&ctx.ledger, provider.transfer_price()) else {
        return Ok(());
    };
    let subject = Subject {
        namespace: String::new(),
        project: String::new(),
        project_uid: String::new(),
        kind: "ProviderConfig".into(),
        name: pc.name_any(),
        uid: pc.uid().unwrap_or_default(),
    };
    let prefix = format!(
        "providerconfig/{}/{}/{month}/",
        subject.uid,
        Meter::TransferBytes.as_str()
    );
    let held = ledger.held_total(&prefix).await?;
    let cursor = Cursor {
        epoch: month.to_string(),
        billed: held,
        at: month
            .start()
            .max(now - ctx.config.traffic_interval.as_secs() as i64),
        corrections: 0,
    };
    let reading = Reading {
        epoch: month.to_string(),
        value: overage,
        at: now.min(month.end() - 1),
        epoch_start: month.start(),
    };
    if reading.value <= held {
        return Ok(());
    }
    let vendor = Price {
        tenant: Decimal::ZERO,
        vendor: price,
        currency: currency.to_string(),
    };
    let step = counter::step(
        &subject,
        Meter::TransferBytes,
        Some(&cursor),
        &reading,
        Some(&vendor),
    );
    if let Some(mut event) = step.event {
        event.attributes["pooled"] = true.into();
        ledger.record(std::slice::from_ref(&event)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_splits_at_the_allowance_and_unknown_allowances_bill_nothing() {
        assert_eq!(split(700, Some(1000)), (700, 0));
        assert_eq!(split(1500, Some(1000)), (1000, 500));
        assert_eq!(split(1500, None), (1500, 0));
        assert_eq!(split(0, Some(0)), (0, 0));
    }

    #[test]
    fn each_threshold_is_announced_once_a_month() {
        let a = Some(1000);
        assert_eq!(thresholds_reached(799, a, &[]), Vec::<u32>::new());
        assert_eq!(thresholds_reached(800, a, &[]), vec![80]);
        assert_eq!(thresholds_reached(1200, a, &[]), vec![80, 100]);
        assert_eq!(thresholds_reached(1200, a, &[80]), vec![100]);
        assert_eq!(thresholds_reached(1200, a, &[80, 100]), Vec::<u32>::new());
        assert_eq!(thresholds_reached(1200, None, &[]), Vec::<u32>::new());
        assert_eq!(thresholds_reached(i64::MAX, Some(1), &[]), vec![80, 100]);
    }
}
