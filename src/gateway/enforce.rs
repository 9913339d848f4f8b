//! Budget enforcement across replicas: each replica takes slices of a budget period from the ledger
//! (a guarded update, see [`crate::ledger::budgets`]) and admits a request only when its whole
//! reservation fits in what it holds, all in memory; a request settles with the upstream's usage (the
//! reservation when there is none: a stream without usage, a client gone), and its usage goes to the
//! per-request meter, flushed to the ledger off the hot path.
//!
//! # Guarantees
//! - Over all replicas, tokens served in a period never pass its allocation, as long as upstreams keep
//!   to the output limits the gateway sends ([`super::output`]). A request whose upstream used more
//!   than it reserved is charged what it used; the excess comes out of what this replica holds, and
//!   what that does not cover (an overrun) is written to the ledger's record of the period — the one
//!   every replica's admission reads — before this replica admits another request of the budget, and
//!   at the next housekeeping round. A budget whose record is over its allocation admits nothing
//!   until its reset, on any replica, one started later included. The period's total can pass the
//!   allocation only by what requests admitted before a replica saw the overrun used beyond their
//!   reservations (README: "Budgets").
//! - Per-key rate limits (RPM, TPM) hold across replicas the same way: each key's bucket lives in the
//!   ledger ([`crate::ledger::rate_buckets`]); a replica serves from units it took in slices and gives
//!   back what it left unused once idle ([`super::rates`]); so is `onExhausted: Throttle`'s pace.
//! - Enforcement never waits for a background job: a request that does not fit takes a slice itself.
//! - A request in flight across a period boundary settles in the period it was admitted in.
//! - Idle slices go back to the ledger after `idle` seconds, and all of them at shutdown; a replica that
//!   dies keeps its slice granted (never handed out twice): what it served unflushed is within it.

use crate::fast_map::FastMap;
use std::sync::{Arc, Mutex, RwLock};

use super::directory::{BudgetView, Model};
use super::rates::{self, Holds};
use super::usage::Usage;
use crate::budget::period::Window;
use crate::budget::slice::Slice;
use crate::ledger::metering::requests::{Aggregator, Outcome};
use crate::ledger::rate_buckets::{self, Taken};
use crate::ledger::{Ledger, Meter};

/// The smallest reservation a request makes (a prompt bound's 8 plus one output token): a budget with
/// less left is exhausted.
const SMALLEST_REQUEST: i64 = 9;

/// Why a request is not admitted.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// The period's allocation is used up; it resets at `reset` (unix seconds).
    Exhausted {
        /// When the next period starts.
        reset: i64,
        /// Seconds until a throttled budget may serve again (`None`: Block).
        retry_after: Option<f64>,
    },
    /// The request needs more than the period has left (`left` > 0 tokens: a smaller one may pass).
    Insufficient {
        /// Tokens the request reserves.
        needed: i64,
        /// Tokens left of the allocation: not granted to any replica, plus this replica's free share.
        left: i64,
    },
    /// A per-key rate limit (`what`: requests or tokens per minute).
    RateLimited {
        /// Which limit.
        what: &'static str,
        /// Seconds until it allows the request.
        retry_after: f64,
    },
    /// The request alone is larger than the per-key tokens-per-minute limit.
    TooLarge(i64),
    /// The budget has no period or allocation yet.
    NotReady(String),
    /// The ledger could not be reached to take a slice.
    Ledger(String),
}

/// Tokens held for one admitted request.
#[derive(Debug)]
pub struct Reservation {
    /// The budget.
    pub budget: Arc<BudgetView>,
    /// The period it was admitted in.
    pub window: Window,
    /// Tokens reserved: the prompt estimate plus the output limit.
    pub amount: i64,
    /// The prompt estimate (what a request settled at its reservation is charged as input).
    pub input_estimate: i64,
    /// When it was admitted (unix seconds): its usage is booked then.
    pub at: i64,
    /// The model's prices.
    pub model: Arc<Model>,
}

impl Reservation {
    /// The usage charged when the upstream reported none: the whole reservation.
    pub fn as_usage(&self) -> Usage {
        Usage {
            input: self.input_estimate,
            output: self.amount - self.input_estimate,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    current: Option<Slice>,
    /// Earlier periods with requests still in flight.
    previous: Vec<Slice>,
    /// What this replica holds of its keys' shared rate-limit buckets (and its `Throttle` pace's).
    rates: Holds,
    /// Tokens to give back to the ledger: (period start, tokens).
    to_release: Vec<(i64, i64)>,
    /// Tokens requests used beyond what this replica held, not yet written to the ledger: (period
    /// start, tokens). Already added to the slices' `granted`.
    overruns: Vec<(i64, i64)>,
}

impl Inner {
    fn roll(&mut self, window: Window) {
        match &self.current {
            Some(s) if s.window == window => {}
            _ => {
                if let Some(mut old) = self.current.take() {
                    let n = old.give_back();
                    self.to_release.push((old.window.start, n));
                    if old.reserved > 0 {
                        self.previous.push(old);
                    }
                }
                self.current = Some(Slice::new(window));
            }
        }
    }

    fn slice(&mut self, start: i64) -> Option<&mut Slice> {
        if self
            .current
            .as_ref()
            .is_some_and(|s| s.window.start == start)
        {
            return self.current.as_mut();
        }
        self.previous.iter_mut().find(|s| s.window.start == start)
    }
}

#[derive(Debug, Default)]
struct State {
    inner: Mutex<Inner>,
    leasing: tokio::sync::Mutex<()>,
}

impl State {
    fn pending_overruns(&self) -> bool {
        !self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .overruns
            .is_empty()
    }

    /// Writes the overruns it holds to `ledger` as budget `uid`'s, with its leasing lock held (so the
    /// writes are one at a time). Each stays pending until written: admission waits for it, and a
    /// failed write leaves it for the next admission or housekeeping round.
    async fn write_overruns(
        &self,
        ledger: &Ledger,
        uid: &str,
    ) -> Result<(), crate::ledger::LedgerError> {
        loop {
            let next = {
                let i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                i.overruns.first().copied()
            };
            let Some((start, n)) = next else {
                return Ok(());
            };
            ledger.record_overrun(uid, start, n).await?;
            // New overruns are only ever appended: the first is the one just written.
            self.inner
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .overruns
                .remove(0);
        }
    }

    /// Holds `got` tokens the ledger granted for `window`: on the current slice, or to be given back
    /// when the window has turned meanwhile.
    fn hold(&self, window: Window, got: i64) {
        let mut i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match i.current.as_mut() {
            Some(s) if s.window == window => s.grant(got),
            _ => i.to_release.push((window.start, got)),
        }
    }
}

/// Every budget's share held by this replica, and the usage meter.
pub struct Enforcer {
    ledger: Ledger,
    states: RwLock<FastMap<String, Arc<State>>>,
    meter: Mutex<Aggregator>,
    flushing: tokio::sync::Mutex<()>,
    /// A slice takes at most this fraction (1/share) of what is left of a period.
    share: i64,
    /// Seconds after which an idle slice is given back.
    idle: i64,
    /// The runtime the enforcer was made on, which holds the ledger's connections: the serving
    /// threads' own runtimes take slices through it (see [`Enforcer::on_io`]).
    io: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for Enforcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enforcer").finish_non_exhaustive()
    }
}

fn now_f() -> f64 {
    jiff::Timestamp::now().as_microsecond() as f64 / 1e6
}

impl Enforcer {
    /// An enforcer over `ledger`; `instance` is unique per process start (usage keys carry it).
    pub fn new(ledger: Ledger, instance: &str, share: i64, idle: i64) -> Self {
        Self {
            ledger,
            states: RwLock::default(),
            meter: Mutex::new(Aggregator::new(instance)),
            flushing: tokio::sync::Mutex::new(()),
            share: share.max(1),
            idle,
            io: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// Runs a ledger call on the runtime the enforcer was made on: a connection the pool opens for it
    /// then belongs to that runtime, never to a serving thread's, whose end (at shutdown) would take
    /// the connection, and the last flush, down with it.
    async fn on_io<T, F>(&self, call: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, crate::ledger::LedgerError>> + Send + 'static,
    {
        match &self.io {
            Some(io) => io.spawn(call).await.map_err(|e| e.to_string())?,
            None => call.await,
        }
        .map_err(|e| e.to_string())
    }

    fn state(&self, uid: &str) -> Arc<State> {
        if let Some(s) = self
            .states
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
        {
            return s.clone();
        }
        self.states
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(uid.to_string())
            .or_default()
            .clone()
    }

    /// Admits a request of key `key` needing `amount` tokens (`input_estimate` of them its prompt) at
    /// `model`'s prices, or says why not.
    pub async fn reserve(
        &self,
        budget: &Arc<BudgetView>,
        key: &Arc<str>,
        amount: i64,
        input_estimate: i64,
        model: &Arc<Model>,
    ) -> Result<Reservation, Refusal> {
        self.reserve_at(budget, key, amount, input_estimate, model, now_f())
            .await
    }

    /// [`Enforcer::reserve`] at time `now` (unix seconds): a period boundary can be crossed in a test.
    pub async fn reserve_at(
        &self,
        budget: &Arc<BudgetView>,
        key: &Arc<str>,
        amount: i64,
        input_estimate: i64,
        model: &Arc<Model>,
        now: f64,
    ) -> Result<Reservation, Refusal> {
        let secs = now as i64;
        let window = budget.window(secs).map_err(Refusal::NotReady)?;
        let allocation = budget.allocation.ok_or_else(|| {
            Refusal::NotReady(
                "its allocation is not known yet (see the TokenBudget's status)".into(),
            )
        })?;
        let state = self.state(&budget.subject.uid);
        if let Some(tpm) = budget.tpm
            && amount as f64 > tpm as f64
        {
            return Err(Refusal::TooLarge(amount));
        }
        let wants = rates::wants(budget, key, amount);
        if !wants.is_empty() {
            // Boxed: a budget without rate limits (most) does not carry this future's state.
            Box::pin(self.rate(&state, &budget.subject.uid, &wants, now)).await?;
        }
        let admitted = self
            .admit(&state, budget, window, allocation, amount, now)
            .await;
        if admitted.is_err() {
            state
                .inner
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .rates
                .give(&wants);
        }
        admitted?;
        Ok(Reservation {
            budget: budget.clone(),
            window,
            amount,
            input_estimate,
            at: secs,
            model: model.clone(),
        })
    }

    /// Takes `wants` (a request's share of its key's rate limits) from what this replica holds,
    /// taking slices of the key's shared buckets from the ledger when short; a bucket that has not
    /// enough refuses the request.
    async fn rate(
        &self,
        state: &Arc<State>,
        uid: &str,
        wants: &[rates::Want],
        now: f64,
    ) -> Result<(), Refusal> {
        if wants.is_empty() {
            return Ok(());
        }
        {
            let mut i = state.inner.lock().unwrap_or_else(|p| p.into_inner());
            if i.rates.take(wants, now as i64).is_ok() {
                return Ok(());
            }
            // Refused in memory while the ledger's bucket is known to be empty.
            if let Some((k, wait)) = i.rates.waiting(wants, now) {
                return Err(Refusal::RateLimited {
                    what: wants[k].limit.what(),
                    retry_after: wait,
                });
            }
        }
        let _one = state.leasing.lock().await;
        self.rate_leasing(state, uid, wants, now).await
    }

    /// [`Enforcer::rate`]'s slow path, with `state`'s leasing lock held: slices of the short buckets
    /// are taken until every want fits, or a bucket has not enough.
    async fn rate_leasing(
        &self,
        state: &Arc<State>,
        uid: &str,
        wants: &[rates::Want],
        now: f64,
    ) -> Result<(), Refusal> {
        for _ in 0..4 {
            let taken = state
                .inner
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .rates
                .take(wants, now as i64);
            let (w, short) = match taken {
                Ok(()) => return Ok(()),
                Err((i, short)) => (wants[i].clone(), short),
            };
            let (ledger, id, share, held) = (
                self.ledger.clone(),
                uid.to_string(),
                self.share,
                state.clone(),
            );
            let now_ms = (now * 1000.0) as i64;
            let want = w.clone();
            // Units granted are held here even if this request is gone by then.
            let taken = self
                .on_io(async move {
                    let bucket = rate_buckets::Bucket {
                        budget_uid: &id,
                        key: &want.key,
                        limit: want.limit.as_str(),
                        capacity: want.capacity,
                    };
                    let t = ledger.take_rate(bucket, short, share, now_ms).await?;
                    if let Taken::Got(n) = t {
                        held.inner
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .rates
                            .add(&want, n, now_ms / 1000);
                    }
                    Ok(t)
                })
                .await
                .map_err(Refusal::Ledger)?;
            if let Taken::Wait(wait) = taken {
                state
                    .inner
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .rates
                    .empty_until(&w, now + wait);
                return Err(Refusal::RateLimited {
                    what: w.limit.what(),
                    retry_after: wait,
                });
            }
        }
        Err(Refusal::Ledger(
            "could not take a slice of a rate limit after 4 attempts".into(),
        ))
    }

    async fn admit(
        &self,
        state: &Arc<State>,
        budget: &BudgetView,
        window: Window,
        allocation: i64,
        amount: i64,
        now: f64,
    ) -> Result<(), Refusal> {
        let secs = now as i64;
        let fits = |state: &State| {
            let mut i = state.inner.lock().unwrap_or_else(|p| p.into_inner());
            if !i.overruns.is_empty() {
                // An overrun goes to the ledger before this replica admits again.
                return Err(0);
            }
            i.roll(window);
            match i.current.as_mut() {
                Some(s) => s.reserve(amount, secs),
                None => Err(amount),
            }
        };
        for _ in 0..8 {
            let Err(_) = fits(state) else { return Ok(()) };
            // An overrun goes to the ledger first (its write holds the leasing lock itself).
            self.write_overruns(state, &budget.subject.uid)
                .await
                .map_err(Refusal::Ledger)?;
            // One slice request per budget at a time: a burst waits for it instead of each asking.
            let _one = state.leasing.lock().await;
            let deficit = match fits(state) {
                Ok(()) => return Ok(()),
                // An overrun settled meanwhile: written on the next turn.
                Err(0) => continue,
                Err(d) => d,
            };
            let uid = &budget.subject.uid;
            let (ledger, id, share) = (self.ledger.clone(), uid.clone(), self.share);
            let start = window.start;
            let held = state.clone();
            // What the ledger grants is held here even if this request is gone by then (the call
            // runs to its end on its own task): a granted slice is never lost to this replica.
            let got = self
                .on_io(async move {
                    let got = ledger.lease(&id, start, allocation, deficit, share).await?;
                    if got > 0 {
                        held.hold(window, got);
                    }
                    Ok(got)
                })
                .await
                .map_err(Refusal::Ledger)?;
            if got == 0 {
                let Some(rpm) = budget.throttle_rpm else {
                    return Err(self.short(state, uid, window, allocation, amount).await);
                };
                // The pace is held across replicas, as rate limits are (the leasing lock is held).
                let pace = [rates::pace(rpm)];
                let known = state
                    .inner
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .rates
                    .waiting(&pace, now);
                let paced = match known {
                    Some((_, wait)) => Err(Refusal::RateLimited {
                        what: pace[0].limit.what(),
                        retry_after: wait,
                    }),
                    None => Box::pin(self.rate_leasing(state, uid, &pace, now)).await,
                };
                match paced {
                    Ok(()) => {}
                    Err(Refusal::RateLimited { retry_after, .. }) => {
                        return Err(Refusal::Exhausted {
                            reset: window.end,
                            retry_after: Some(retry_after),
                        });
                    }
                    Err(e) => return Err(e),
                }
                let (ledger, id, held) = (self.ledger.clone(), uid.clone(), state.clone());
                self.on_io(async move {
                    ledger
                        .grant_overage(&id, start, allocation, deficit)
                        .await?;
                    held.hold(window, deficit);
                    Ok(())
                })
                .await
                .map_err(Refusal::Ledger)?;
            }
        }
        Err(Refusal::Ledger(
            "could not take a slice of the budget after 8 attempts".into(),
        ))
    }

    /// Writes the overruns `state` holds to the ledger, on the enforcer's own runtime and under
    /// `state`'s leasing lock, which the write holds itself: a request that goes away meanwhile neither
    /// loses one nor lets a second write start beside it. The caller must not hold that lock.
    async fn write_overruns(&self, state: &Arc<State>, uid: &str) -> Result<(), String> {
        if state.pending_overruns() {
            let (ledger, id, held) = (self.ledger.clone(), uid.to_string(), state.clone());
            self.on_io(async move {
                let _one = held.leasing.lock().await;
                held.write_overruns(&ledger, &id).await
            })
            .await?;
        }
        Ok(())
    }

    /// Why a request of `amount` tokens the ledger could not grant is refused: the budget is exhausted,
    /// or it has tokens left but fewer than the request needs.
    async fn short(
        &self,
        state: &State,
        uid: &str,
        window: Window,
        allocation: i64,
        amount: i64,
    ) -> Refusal {
        let (ledger, id, start) = (self.ledger.clone(), uid.to_string(), window.start);
        let ungranted = match self
            .on_io(async move { ledger.budget_period(&id, start).await })
            .await
        {
            Ok(p) => p.map_or(allocation, |p| allocation - p.granted).max(0),
            Err(e) => return Refusal::Ledger(e),
        };
        let free = {
            let i = state.inner.lock().unwrap_or_else(|p| p.into_inner());
            i.current
                .as_ref()
                .filter(|s| s.window == window)
                .map_or(0, |s| s.free().max(0))
        };
        match ungranted + free {
            left if left >= SMALLEST_REQUEST => Refusal::Insufficient {
                needed: amount,
                left,
            },
            _ => Refusal::Exhausted {
                reset: window.end,
                retry_after: None,
            },
        }
    }

    /// Settles a request with what it used; its usage goes to the meter. Returns whether it overran
    /// what this replica held: the overrun's ledger write has started (see [`Enforcer::overruns_written`]).
    pub fn settle(&self, r: Reservation, used: Usage, outcome: Outcome) -> bool {
        let state = self.state(&r.budget.subject.uid);
        let mut overran = false;
        {
            let mut i = state.inner.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = i.slice(r.window.start) {
                s.settle(r.amount, used.total());
                let overrun = -s.free();
                if overrun > 0 {
                    s.grant(overrun);
                    i.overruns.push((r.window.start, overrun));
                    overran = true;
                }
            }
            let done: Vec<Slice> = {
                let (keep, done) = std::mem::take(&mut i.previous)
                    .into_iter()
                    .partition(|s| s.reserved > 0);
                i.previous = keep;
                done
            };
            for mut s in done {
                let n = s.give_back();
                i.to_release.push((s.window.start, n));
            }
        }
        let mut m = self.meter.lock().unwrap_or_else(|p| p.into_inner());
        let s = &r.budget.subject;
        let (when, origin) = ((r.at, r.window.start), Some(&r.model.origin));
        m.add_from(
            s,
            Meter::LlmInputTokens,
            used.input,
            Some(&r.model.input),
            when,
            origin,
            Some(outcome),
        );
        m.add_from(
            s,
            Meter::LlmOutputTokens,
            used.output,
            Some(&r.model.output),
            when,
            origin,
            Some(outcome),
        );
        drop(m);
        if overran && let Some(io) = &self.io {
            let (ledger, uid) = (self.ledger.clone(), r.budget.subject.uid.clone());
            io.spawn(async move {
                let _one = state.leasing.lock().await;
                // A failed write stays pending: the next admission writes it, or refuses.
                let _ = state.write_overruns(&ledger, &uid).await;
            });
        }
        overran
    }

    /// Waits until budget `uid`'s overruns are written to the ledger (or a write failed: they stay
    /// pending, and this replica admits nothing of the budget before writing them).
    pub async fn overruns_written(&self, uid: &str) {
        let state = self.state(uid);
        let _ = self.write_overruns(&state, uid).await;
    }

    /// Counts a request of `budget` that was not charged (refused, or no upstream served it) with its
    /// `outcome`, on the ledger's `llm_requests` meter (one row per budget, model and hour, counting per
    /// outcome); `model` when the request got as far as naming one the gateway knows.
    pub fn uncharged(&self, budget: &BudgetView, model: Option<&Model>, outcome: Outcome) {
        let now = jiff::Timestamp::now().as_second();
        let mut m = self.meter.lock().unwrap_or_else(|p| p.into_inner());
        m.add_from(
            &budget.subject,
            Meter::LlmRequests,
            1,
            None,
            (now, i64::MIN),
            model.map(|m| &m.origin),
            Some(outcome),
        );
    }

    /// Releases a reservation whose request the upstream never served (nothing is charged).
    pub fn cancel(&self, r: Reservation) {
        let state = self.state(&r.budget.subject.uid);
        let mut i = state.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = i.slice(r.window.start) {
            s.settle(r.amount, 0);
        }
    }

    /// Writes the metered usage to the ledger (batched writes: the batch a failed write left, then what
    /// waits); returns the events written. One flush at a time.
    pub async fn flush(&self) -> Result<usize, crate::ledger::LedgerError> {
        let _one = self.flushing.lock().await;
        let mut written = 0;
        for _ in 0..2 {
            let batch = {
                let mut m = self.meter.lock().unwrap_or_else(|p| p.into_inner());
                m.cut().to_vec()
            };
            if batch.is_empty() {
                break;
            }
            self.ledger.record(&batch).await?;
            let mut uids: Vec<&str> = batch.iter().map(|e| e.object_uid.as_str()).collect();
            uids.sort_unstable();
            uids.dedup();
            self.ledger.touch_budgets(&uids).await?;
            self.meter
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .accepted();
            written += batch.len();
        }
        Ok(written)
    }

    /// Gives idle slices (or, with `all`, every slice) back to the ledger.
    pub async fn give_back(&self, all: bool) -> Result<i64, crate::ledger::LedgerError> {
        let now = jiff::Timestamp::now().as_second();
        let states: Vec<(String, Arc<State>)> = self
            .states
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut total = 0;
        for (uid, st) in states {
            if st.pending_overruns() {
                let _one = st.leasing.lock().await;
                st.write_overruns(&self.ledger, &uid).await?;
            }
            let rates_back = st
                .inner
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .rates
                .idle(now, self.idle, all);
            for (key, limit, capacity, n) in rates_back {
                let b = rate_buckets::Bucket {
                    budget_uid: &uid,
                    key: &key,
                    limit: limit.as_str(),
                    capacity,
                };
                // Not given back (an outage): the bucket refills them within a minute anyway.
                if let Err(e) = self.ledger.give_rate(b, n, now * 1000).await {
                    tracing::debug!(error = %e, "returning rate-limit units failed");
                }
            }
            let releases = {
                let mut i = st.inner.lock().unwrap_or_else(|p| p.into_inner());
                let idle = self.idle;
                if let Some(s) = i.current.as_mut()
                    && (all || now - s.last_use >= idle)
                {
                    let n = s.give_back();
                    let start = s.window.start;
                    i.to_release.push((start, n));
                }
                std::mem::take(&mut i.to_release)
            };
            for (start, n) in releases {
                if n <= 0 {
                    continue;
                }
                if let Err(e) = self.ledger.release(&uid, start, n).await {
                    // Kept to try again: a slice not given back only holds tokens, never spends them.
                    st.inner
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .to_release
                        .push((start, n));
                    return Err(e);
                }
                total += n;
            }
        }
        Ok(total)
    }
}
