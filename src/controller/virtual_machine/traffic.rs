//! Server figures gathered per account: every `traffic_interval` (start to start), each compute
//! account's servers that VMs hold are asked, one after another, for their outbound transfer this month
//! (one call each; the last month's too while a VM's status still counts it, for its final figure) and,
//! for the VMs that opt in (`spec.metrics`, or their Project's `spec.vmMetrics`), for their load. The
//! figures are kept in memory ([`Traffic`]); a VM whose transfer moved is woken to meter it
//! ([`transfer`](super::transfer)), and the opted-in load is exported as Prometheus series labelled by
//! the VM's UID (never a tenant's name).
//!
//! **Rate.** A round spends at most half of the account's client-side rate limit (the other half is the
//! reconciles'): calls are spaced `2 / rate` seconds apart. At DigitalOcean's 5,000 calls an hour,
//! 10,000 droplets take about 5.5 hours a round; the interval then only says how soon a round starts
//! again. An account without a stated limit (an endpoint override) is paced by its own 429s.
//!
//! **The account's vendor cost.** After a round, the account's pooled overage (its servers' transfer
//! beyond their summed allowances) is recorded as the vendor's cost, so margins stay true: a counter
//! whose cursor is the ledger itself ([`Ledger::held_total`](crate::ledger::Ledger::held_total)).
//!
//! Runs only while this replica leads. Reading is not changing: a suspended account is read too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::cloud::{ComputeProvider, Month, ServerMetrics};
use crate::controller::Context;
use crate::controller::provider_config::is_compute;
use crate::crd::{Project, ProviderConfig, VirtualMachine};

/// What was last read of one VM's server.
#[derive(Clone, Debug, PartialEq)]
pub struct Figures {
    /// The server these figures are of.
    pub server_id: String,
    /// When they were read (unix seconds).
    pub read_at: i64,
    /// Outbound transfer per month, bytes, oldest first: the month the VM's status counts, when it is
    /// an earlier one (its final figure), then this month.
    pub months: Vec<(Month, i64)>,
    /// The monthly allowance of the server's size, bytes, when the vendor states one.
    pub allowance_bytes: Option<i64>,
    /// The server's load, for VMs that opt in and vendors that report it.
    pub metrics: Option<ServerMetrics>,
    /// The tenant's price per GB beyond the allowance ([`tenant_price`](super::transfer::tenant_price)).
    pub price: Option<crate::ledger::metering::Price>,
}

/// The latest figures per VM UID (a [`KindState`](crate::controller::runtime::state::KindState) of
/// the VM kind): deleted VMs are forgotten, with their series.
#[derive(Default)]
pub struct Traffic {
    figures: Mutex<HashMap<String, Figures>>,
}

impl crate::controller::runtime::state::KindState for Traffic {
    fn forget(&self, _key: &str, uid: Option<&str>) {
        if let Some(uid) = uid {
            lock(&self.figures).remove(uid);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Traffic {
    /// The figures last read for VM `uid`.
    pub fn figures(&self, uid: &str) -> Option<Figures> {
        lock(&self.figures).get(uid).cloned()
    }

    /// Keeps `f` for VM `uid`; true when its transfer differs from what was kept before.
    pub fn keep(&self, uid: &str, f: Figures) -> bool {
        let mut m = lock(&self.figures);
        let moved = m.get(uid).is_none_or(|old| old.months != f.months);
        m.insert(uid.to_string(), f);
        moved
    }

    /// The figures of every VM whose load was read (the opted-in ones), by UID.
    pub fn loads(&self) -> Vec<(String, Figures)> {
        lock(&self.figures)
            .iter()
            .filter(|(_, f)| f.metrics.is_some())
            .map(|(uid, f)| (uid.clone(), f.clone()))
            .collect()
    }
}

/// Gathers every compute account's figures every `traffic_interval`. Never returns (it ends with the
/// controllers).
pub async fn run(ctx: Arc<Context>) {
    let period = ctx.config.traffic_interval;
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let started = std::time::Instant::now();
        match gather_all(&ctx).await {
            Ok(()) => {
                ctx.metrics
                    .traffic_round_seconds
                    .set(started.elapsed().as_secs_f64());
                ctx.metrics.traffic_rounds.inc();
            }
            Err(e) => {
                tracing::warn!(error = %e, "gathering server figures failed; trying again next interval")
            }
        }
    }
}

/// One round over every compute account; the accounts side by side, each account's servers one after
/// another.
pub async fn gather_all(ctx: &Arc<Context>) -> Result<(), super::Error> {
    let caches = ctx.caches()?;
    let vms = caches.store::<VirtualMachine>()?.state();
    let projects = caches.store::<Project>()?;
    let rounds = caches
        .store::<ProviderConfig>()?
        .state()
        .into_iter()
        .filter(|pc| is_compute(pc.spec.type_) && pc.metadata.deletion_timestamp.is_none())
        .map(|pc| {
            let name = pc.name_any();
            let mine: Vec<Arc<VirtualMachine>> = vms
                .iter()
                .filter(|vm| holds_server_of(vm, &name))
                .cloned()
                .collect();
            let opted: Vec<bool> = mine.iter().map(|vm| opted_in(vm, projects)).collect();
            async move {
                if let Err(e) = gather_account(ctx, &pc, &mine, &opted).await {
                    let message = e.to_string();
                    if ctx.first_warning(&format!("traffic/{name}"), &message) {
                        tracing::warn!(provider_config = %name, error = %message, "cannot read the account's server figures; transfer is metered from the next round that can");
                    }
                } else {
                    ctx.first_warning(&format!("traffic/{name}"), "");
                }
            }
        });
    futures::future::join_all(rounds).await;
    Ok(())
}

/// Whether `vm` holds a server in account `pc`.
fn holds_server_of(vm: &VirtualMachine, pc: &str) -> bool {
    vm.status
        .as_ref()
        .is_some_and(|s| s.external_id.is_some() && s.provider_config.as_deref() == Some(pc))
}

/// Whether `vm`'s load is exported: its own `spec.metrics`, or its Project's `spec.vmMetrics`.
pub fn opted_in(vm: &VirtualMachine, projects: &kube::runtime::reflector::Store<Project>) -> bool {
    vm.spec.metrics
        || vm.spec.project_ref.as_ref().is_some_and(|p| {
            let key =
                ObjectRef::<Project>::new(&p.name).within(&vm.namespace().unwrap_or_default());
            projects.get(&key).is_some_and(|p| p.spec.vm_metrics)
        })
}

/// One account's round: each server's transfer (and opted-in load), paced to half the account's rate;
/// then the account's pooled overage as vendor cost.
async fn gather_account(
    ctx: &Arc<Context>,
    pc: &ProviderConfig,
    vms: &[Arc<VirtualMachine>],
    opted: &[bool],
) -> Result<(), super::Error> {
    if vms.is_empty() {
        return Ok(());
    }
    let resolved = ctx.providers.account_for_reading(ctx, pc).await?;
    let provider = ctx.providers.compute(ctx, &resolved).await?;
    let catalog = super::read::catalog(ctx, &resolved, &*provider).await.ok();
    // Half the stated rate; 20 calls a second where none is stated (an endpoint override, Linode).
    let rate = resolved
        .account
        .rate_limit
        .map_or(40, |(rps, _)| rps.max(1));
    let gap = Some(Duration::from_secs_f64(2.0 / f64::from(rate)));
    // One time for the whole round: every server's figures belong to the same month.
    let now = jiff::Timestamp::now().as_second();
    let price = super::transfer::tenant_price(pc, &*provider);
    let traffic = ctx.state::<Traffic>();
    let mut pool = Pool::default();
    for (vm, &metrics) in vms.iter().zip(opted) {
        let Some(uid) = vm.uid() else { continue };
        let st = vm.status.as_ref();
        let id = st.and_then(|s| s.external_id.clone()).unwrap_or_default();
        let allowance = catalog.as_ref().and_then(|c| {
            let size = st.and_then(|s| s.size.clone())?;
            c.size(&size)?.transfer_bytes
        });
        let counted = st
            .and_then(|s| s.transfer.as_ref())
            .and_then(|t| Month::parse(&t.month));
        let read = read_server(&*provider, &id, counted, allowance, metrics, gap, now).await?;
        let Some(mut f) = read else {
            continue;
        };
        f.price = price.clone();
        ctx.metrics.traffic_reads.inc();
        pool.add(&f);
        // Woken only for news: more transfer than its status shows, a new month, or a first figure.
        let news = news(vm, &f);
        traffic.keep(&uid, f);
        if news {
            ctx.wake(ObjectRef::from_obj(&**vm));
        }
    }
    // Where the vendor states the account's own overage (Linode), it is the pool's figure this month.
    pace(gap).await;
    match provider.account_overage().await {
        Ok(Some(bytes)) => pool.stated(Month::of(now), bytes),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(provider_config = %pc.name_any(), error = %e, "cannot read the account's own transfer figure; its pool is summed from its servers")
        }
    }
    super::transfer::record_pool_cost(ctx, pc, &*provider, &pool, now).await
}

/// Whether `f` is news to `vm`'s status: a first figure, another month, or more transfer than it shows.
fn news(vm: &VirtualMachine, f: &Figures) -> bool {
    let Some(&(month, bytes)) = f.months.last() else {
        return false;
    };
    match vm.status.as_ref().and_then(|s| s.transfer.as_ref()) {
        None => true,
        Some(t) => t.month != month.to_string() || bytes > t.outbound_bytes || f.months.len() > 1,
    }
}

/// One server's figures as of `now`; `None` when its vendor reports no transfer for it (Contabo, or a
/// server it does not know).
pub(super) async fn read_server(
    provider: &dyn ComputeProvider,
    id: &str,
    counted: Option<Month>,
    allowance_bytes: Option<i64>,
    metrics: bool,
    gap: Option<Duration>,
    now: i64,
) -> Result<Option<Figures>, super::Error> {
    let this = Month::of(now);
    let mut months = Vec::new();
    for month in counted.filter(|m| *m < this).into_iter().chain([this]) {
        pace(gap).await;
        let read = provider
            .transfer(id, month, now)
            .await
            .map_err(super::Error::vendor("read a server's transfer"))?;
        match read {
            Some(bytes) => months.push((month, bytes)),
            None => return Ok(None),
        }
    }
    let metrics = if metrics {
        pace(gap).await;
        // Opted in: exported even where the vendor reports no load (its transfer, at least).
        let load = provider
            .metrics(id, now)
            .await
            .map_err(super::Error::vendor("read a server's metrics"))?;
        // The calls it made beyond the first are paced after it.
        for _ in 1..provider.metrics_calls() {
            pace(gap).await;
        }
        Some(load.unwrap_or_default())
    } else {
        None
    };
    Ok(Some(Figures {
        server_id: id.to_string(),
        read_at: now,
        months,
        allowance_bytes,
        metrics,
        price: None,
    }))
}

async fn pace(gap: Option<Duration>) {
    if let Some(gap) = gap {
        tokio::time::sleep(gap).await;
    }
}

/// An account's transfer per month over the servers a round read, and their summed allowances.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pool {
    /// Per month: outbound bytes of the servers read, and their allowances.
    pub months: std::collections::BTreeMap<Month, (i64, i64)>,
    /// A server's allowance was not known this round (its size not in the catalog, or the catalog
    /// not read): the pool's overage cannot be told, and nothing is recorded for it.
    pub unknown: bool,
    /// The vendor's own figure of the account's overage in a month, which stands over the sum.
    pub stated: Option<(Month, i64)>,
}

impl Pool {
    fn add(&mut self, f: &Figures) {
        let Some(allowance) = f.allowance_bytes else {
            self.unknown = true;
            return;
        };
        for &(month, bytes) in &f.months {
            let m = self.months.entry(month).or_default();
            m.0 += bytes;
            m.1 += allowance;
        }
    }

    /// Records the vendor's own figure of `month`'s overage.
    pub fn stated(&mut self, month: Month, bytes: i64) {
        self.stated = Some((month, bytes.max(0)));
    }

    /// Transfer beyond the pooled allowance in each month, bytes: the vendor's own figure where it
    /// states one, else the sum over the servers read (nothing when an allowance was not known).
    pub fn overages(&self) -> Vec<(Month, i64)> {
        let summed = self
            .months
            .iter()
            .filter(|_| !self.unknown)
            .map(|(m, (out, allowance))| (*m, (out - allowance).max(0)));
        let Some((month, bytes)) = self.stated else {
            return summed.collect();
        };
        summed
            .filter(|(m, _)| *m != month)
            .chain([(month, bytes)])
            .collect()
    }
}

/// The opted-in VMs' figures as Prometheus series, labelled by the VM's UID only (a tenant's names
/// never become labels), built from [`Traffic`] at each scrape: a VM that is deleted or opts out is
/// gone from the next scrape.
pub struct Series {
    traffic: Arc<Traffic>,
    cpu: prometheus::GaugeVec,
    memory: prometheus::GaugeVec,
    disk: prometheus::GaugeVec,
    network: prometheus::GaugeVec,
    transfer: prometheus::GaugeVec,
}

impl Series {
    /// The series of `traffic`.
    pub fn new(traffic: Arc<Traffic>) -> Self {
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            prometheus::GaugeVec::new(prometheus::Opts::new(name, help), labels)
                .expect("valid metric")
        };
        Self {
            traffic,
            cpu: gauge(
                "quartermaster_vm_cpu_percent",
                "CPU used by an opted-in VM's server, percent of its vCPUs (vendor monitoring).",
                &["vm_uid"],
            ),
            memory: gauge(
                "quartermaster_vm_memory_bytes",
                "Memory of an opted-in VM's server, used and total (vendor monitoring).",
                &["vm_uid", "state"],
            ),
            disk: gauge(
                "quartermaster_vm_disk_bytes",
                "Root filesystem of an opted-in VM's server, used and total (vendor monitoring).",
                &["vm_uid", "state"],
            ),
            network: gauge(
                "quartermaster_vm_network_bits_per_second",
                "Public traffic of an opted-in VM's server, inbound and outbound (vendor monitoring).",
                &["vm_uid", "direction"],
            ),
            transfer: gauge(
                "quartermaster_vm_transfer_month_bytes",
                "Outbound transfer of an opted-in VM's server this month, as its vendor counts it.",
                &["vm_uid"],
            ),
        }
    }

    fn families(&self) -> [&prometheus::GaugeVec; 5] {
        [
            &self.cpu,
            &self.memory,
            &self.disk,
            &self.network,
            &self.transfer,
        ]
    }
}

impl prometheus::core::Collector for Series {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.families().into_iter().flat_map(|g| g.desc()).collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        for g in self.families() {
            g.reset();
        }
        let set = |g: &prometheus::GaugeVec, labels: &[&str], v: Option<f64>| {
            if let Some(v) = v {
                g.with_label_values(labels).set(v);
            }
        };
        for (uid, f) in self.traffic.loads() {
            let u = uid.as_str();
            let m = f.metrics.unwrap_or_default();
            set(&self.cpu, &[u], m.cpu_percent);
            set(&self.memory, &[u, "used"], m.memory_used_bytes);
            set(&self.memory, &[u, "total"], m.memory_total_bytes);
            set(&self.disk, &[u, "used"], m.disk_used_bytes);
            set(&self.disk, &[u, "total"], m.disk_total_bytes);
            set(&self.network, &[u, "inbound"], m.network_in_bps);
            set(&self.network, &[u, "outbound"], m.network_out_bps);
            set(
                &self.transfer,
                &[u],
                f.months.last().map(|&(_, b)| b as f64),
            );
        }
        self.families()
            .into_iter()
            .flat_map(|g| g.collect())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(months: &[(Month, i64)], allowance: Option<i64>) -> Figures {
        Figures {
            server_id: "1".into(),
            read_at: 0,
            months: months.to_vec(),
            allowance_bytes: allowance,
            metrics: None,
            price: None,
        }
    }

    #[test]
    fn the_pool_sums_each_month_and_yields_to_an_unknown_allowance_or_the_vendors_own_figure() {
        let (nov, dec) = (
            Month::parse("2026-11").unwrap(),
            Month::parse("2026-12").unwrap(),
        );
        let mut pool = Pool::default();
        pool.add(&figures(&[(nov, 900), (dec, 700)], Some(1000)));
        pool.add(&figures(&[(dec, 1800)], Some(1000)));
        // December: 2,500 sent of 2,000 pooled; November: only one server's final figure, within.
        assert_eq!(pool.overages(), vec![(nov, 0), (dec, 500)]);
        // The vendor's own figure for a month stands over the sum.
        let mut stated = pool.clone();
        stated.stated(dec, 350);
        assert_eq!(stated.overages(), vec![(nov, 0), (dec, 350)]);
        // A server whose allowance is unknown: no sum can be told (only a stated figure).
        pool.add(&figures(&[(dec, 5)], None));
        assert_eq!(pool.overages(), Vec::new());
        pool.stated(dec, 350);
        assert_eq!(pool.overages(), vec![(dec, 350)]);
    }
}
