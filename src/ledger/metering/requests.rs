//! The per-request meter (LLM tokens): each request's usage is added in memory, summed per object,
//! meter, price and UTC hour, and written to the ledger as one event per group and flush, so a busy
//! gateway makes one batched write per flush instead of one per request.
//!
//! # Guarantees
//! - A flush cuts a batch with keys `<kind>/<uid>/<meter>/<instance>/<batch>/<hour>.<n>`; until the ledger
//!   accepts it ([`Aggregator::accepted`]) every later [`Aggregator::cut`] returns the same batch with the
//!   same keys, so a retried write is counted once. Requests added meanwhile wait for the next batch.
//! - `instance` is unique per process start: two replicas, or a restart, never reuse a key.
//! - Groups never span an hour, so every event is booked in the month its requests happened.
//! - What a process holds in memory when it dies unflushed is lost: at most one flush interval of usage.
//!   Enforcement (budgets) must not rely on this meter; it records what was billed.

use std::hash::BuildHasher;

use crate::fast_map::{FastMap, FastState};

use super::{Price, Subject, usage_event};
use crate::ledger::{Meter, UsageEvent};

const HOUR: i64 = 3600;

#[derive(Clone, Debug)]
struct GroupKey {
    subject: Subject,
    meter: Meter,
    price: Option<Price>,
    hour: i64,
    /// A boundary inside the hour (a budget period starting at :30) the group never spans.
    from: i64,
    origin: Option<Origin>,
}

/// A group's key, borrowed: what a request is looked up by (hashed and compared) without copying.
#[derive(Clone, Copy, PartialEq)]
struct KeyRef<'a> {
    subject: &'a Subject,
    meter: Meter,
    price: Option<&'a Price>,
    hour: i64,
    from: i64,
    origin: Option<&'a Origin>,
}

impl GroupKey {
    fn borrowed(&self) -> KeyRef<'_> {
        KeyRef {
            subject: &self.subject,
            meter: self.meter,
            price: self.price.as_ref(),
            hour: self.hour,
            from: self.from,
            origin: self.origin.as_ref(),
        }
    }
}

/// Hashes only what tells groups apart in practice (the object's UID, the meter, the hour and the
/// model); equal keys hash alike, and the rest is compared on a match.
impl std::hash::Hash for KeyRef<'_> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.subject.uid.hash(h);
        self.meter.hash(h);
        self.from.hash(h);
        self.origin.map(|o| &o.model).hash(h);
    }
}

impl KeyRef<'_> {
    fn owned(self) -> GroupKey {
        GroupKey {
            subject: self.subject.clone(),
            meter: self.meter,
            price: self.price.cloned(),
            hour: self.hour,
            from: self.from,
            origin: self.origin.cloned(),
        }
    }
}

/// Where per-request usage came from (LLM requests: the model asked for and the upstream that served
/// it); recorded in the usage rows' attributes, and rows of different origins are never summed together.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The model, as the client named it.
    pub model: std::sync::Arc<str>,
    /// The upstream (ProviderConfig) that served it.
    pub upstream: std::sync::Arc<str>,
}

/// How a metered request ended; usage rows count their requests per outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Answered in full.
    Completed,
    /// The client went away before the answer ended (charged what the upstream reported, else the
    /// reservation).
    ClientAborted,
    /// The upstream failed, refused or broke off its answer.
    UpstreamError,
    /// The gateway refused it (budget, limits, a malformed request): nothing charged.
    Refused,
}

impl Outcome {
    /// Every outcome, in [`Outcome::index`] order.
    pub const ALL: [Outcome; 4] = [
        Self::Completed,
        Self::ClientAborted,
        Self::UpstreamError,
        Self::Refused,
    ];

    /// Its name in metrics and usage rows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::ClientAborted => "client_aborted",
            Self::UpstreamError => "upstream_error",
            Self::Refused => "refused",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Debug)]
struct Group {
    quantity: i64,
    requests: i64,
    /// Requests per [`Outcome`] (those added with one).
    outcomes: [i64; 4],
    first: i64,
    last: i64,
}

/// Per-request usage summed in memory until flushed.
#[derive(Debug)]
pub struct Aggregator {
    instance: String,
    batch: u64,
    /// The waiting groups, in the order they were first added.
    groups: Vec<(GroupKey, Group)>,
    /// Where each group is in `groups`, by its key's hash: a request finds its group without building
    /// (allocating) a key.
    index: FastMap<u64, Vec<usize>>,
    hasher: FastState,
    pending: Vec<UsageEvent>,
}

impl Aggregator {
    /// An empty aggregator; `instance` must be unique per process start (e.g. pod name + start time).
    pub fn new(instance: impl Into<String>) -> Self {
        Self {
            instance: instance.into(),
            batch: 0,
            groups: Vec::new(),
            index: FastMap::default(),
            hasher: FastState::default(),
            pending: Vec::new(),
        }
    }

    /// Adds one request's `quantity` of `meter` at `price`, made at `at` (unix seconds).
    pub fn add(
        &mut self,
        subject: &Subject,
        meter: Meter,
        quantity: i64,
        price: Option<&Price>,
        at: i64,
    ) {
        self.add_since(subject, meter, quantity, price, at, i64::MIN);
    }

    /// As [`Aggregator::add`], for a request of a period that began at `since` (≤ `at`): its group
    /// holds only requests made since then, so a period starting inside an hour (a time zone at
    /// half past) is never mixed with the period before.
    pub fn add_since(
        &mut self,
        subject: &Subject,
        meter: Meter,
        quantity: i64,
        price: Option<&Price>,
        at: i64,
        since: i64,
    ) {
        self.add_from(subject, meter, quantity, price, (at, since), None, None);
    }

    /// As [`Aggregator::add_since`] (`when` is `(at, since)`), for a request of `origin` that ended
    /// with `outcome`.
    #[allow(clippy::too_many_arguments)]
    pub fn add_from(
        &mut self,
        subject: &Subject,
        meter: Meter,
        quantity: i64,
        price: Option<&Price>,
        (at, since): (i64, i64),
        origin: Option<&Origin>,
        outcome: Option<Outcome>,
    ) {
        if quantity <= 0 {
            return;
        }
        let hour = at.div_euclid(HOUR) * HOUR;
        let key = KeyRef {
            subject,
            meter,
            price,
            hour,
            from: if since > hour && since <= at {
                since
            } else {
                hour
            },
            origin,
        };
        let slots = self.index.entry(self.hasher.hash_one(key)).or_default();
        let found = slots
            .iter()
            .copied()
            .find(|&i| self.groups[i].0.borrowed() == key);
        let i = found.unwrap_or_else(|| {
            let new = Group {
                quantity: 0,
                requests: 0,
                outcomes: [0; 4],
                first: at,
                last: at,
            };
            self.groups.push((key.owned(), new));
            slots.push(self.groups.len() - 1);
            self.groups.len() - 1
        });
        let g = &mut self.groups[i].1;
        g.quantity += quantity;
        g.requests += 1;
        if let Some(o) = outcome {
            g.outcomes[o.index()] += 1;
        }
        g.first = g.first.min(at);
        g.last = g.last.max(at);
    }

    /// Groups waiting for the next batch.
    pub fn waiting(&self) -> usize {
        self.groups.len()
    }

    /// The batch to write: the one not yet accepted, else a new one from every waiting group.
    pub fn cut(&mut self) -> &[UsageEvent] {
        if self.pending.is_empty() && !self.groups.is_empty() {
            self.batch += 1;
            self.index.clear();
            let mut groups = std::mem::take(&mut self.groups);
            groups.sort_by(|a, b| {
                let o = |k: &GroupKey| {
                    k.origin
                        .as_ref()
                        .map(|o| (o.model.clone(), o.upstream.clone()))
                };
                (&a.0.subject.uid, a.0.meter.as_str(), a.0.from, o(&a.0)).cmp(&(
                    &b.0.subject.uid,
                    b.0.meter.as_str(),
                    b.0.from,
                    o(&b.0),
                ))
            });
            self.pending = groups
                .into_iter()
                .enumerate()
                .map(|(i, (k, g))| self.event(i, &k, &g))
                .collect();
        }
        &self.pending
    }

    /// The ledger accepted the batch returned by [`Aggregator::cut`].
    pub fn accepted(&mut self) {
        self.pending.clear();
    }

    fn event(&self, i: usize, k: &GroupKey, g: &Group) -> UsageEvent {
        usage_event(
            &k.subject,
            format!(
                "{}/{}/{}/{}/{}/{}.{i}",
                k.subject.kind.to_ascii_lowercase(),
                k.subject.uid,
                k.meter.as_str(),
                self.instance,
                self.batch,
                k.hour,
            ),
            k.meter,
            g.quantity,
            k.price.as_ref(),
            (g.first, (g.last + 1).min(k.hour + HOUR)),
            {
                let mut attrs = match &k.origin {
                    Some(o) => serde_json::json!({
                        "requests": g.requests,
                        "model": &*o.model,
                        "upstream": &*o.upstream,
                    }),
                    None => serde_json::json!({ "requests": g.requests }),
                };
                let outcomes: serde_json::Map<String, serde_json::Value> = Outcome::ALL
                    .iter()
                    .filter(|o| g.outcomes[o.index()] > 0)
                    .map(|o| (o.as_str().to_string(), g.outcomes[o.index()].into()))
                    .collect();
                if !outcomes.is_empty() {
                    attrs["outcomes"] = outcomes.into();
                }
                attrs
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    fn subject(uid: &str) -> Subject {
        Subject {
            namespace: "demo".into(),
            project: "acme".into(),
            project_uid: "p".into(),
            kind: "TokenBudget".into(),
            name: uid.into(),
            uid: uid.into(),
        }
    }
    fn per_million(p: i64) -> Price {
        Price::with_markup(Decimal::from(p), "USD", Decimal::ZERO)
    }

    #[test]
    fn requests_are_summed_per_object_meter_price_and_hour() {
        let mut a = Aggregator::new("gw-1");
        let (b1, b2) = (subject("b1"), subject("b2"));
        let p = per_million(2);
        for t in [10, 20, 30] {
            a.add(&b1, Meter::LlmInputTokens, 1000, Some(&p), t);
        }
        a.add(&b1, Meter::LlmOutputTokens, 500, Some(&p), 40);
        a.add(&b2, Meter::LlmInputTokens, 7, Some(&p), 50);
        // The next hour is a group of its own.
        a.add(&b1, Meter::LlmInputTokens, 1, Some(&p), 3600);
        let batch = a.cut().to_vec();
        assert_eq!(batch.len(), 4);
        let first = &batch[0];
        assert_eq!(
            (first.quantity, first.window_start, first.window_end),
            (3000, 10, 31)
        );
        assert_eq!(first.attributes["requests"], 3);
        // 3,000 tokens at 2 per million.
        assert_eq!(first.amount_nanos(), 6_000_000);
        assert_eq!(batch.iter().map(|e| e.quantity).sum::<i64>(), 3508);
    }

    #[test]
    fn prices_and_origins_are_never_summed_together_and_a_cut_starts_new_groups() {
        let mut a = Aggregator::new("gw-1");
        let b = subject("b1");
        let (p2, p3) = (per_million(2), per_million(3));
        let origin = |model: &str, upstream: &str| Origin {
            model: model.into(),
            upstream: upstream.into(),
        };
        let (mini, big) = (origin("mini", "openrouter"), origin("big", "openrouter"));
        let other = origin("mini", "selfhosted");
        let add = |a: &mut Aggregator, n, p: &Price, o: &Origin, at| {
            a.add_from(
                &b,
                Meter::LlmInputTokens,
                n,
                Some(p),
                (at, 0),
                Some(o),
                Some(Outcome::Completed),
            );
        };
        add(&mut a, 1, &p2, &mini, 10);
        add(&mut a, 2, &p3, &mini, 11);
        add(&mut a, 4, &p2, &big, 12);
        add(&mut a, 8, &p2, &other, 13);
        add(&mut a, 16, &p2, &mini, 14);
        a.add(&b, Meter::LlmInputTokens, 32, Some(&p2), 15);
        assert_eq!(a.waiting(), 5);
        let mut got: Vec<_> = a
            .cut()
            .iter()
            .map(|e| (e.quantity, e.attributes["requests"].as_i64().unwrap()))
            .collect();
        got.sort();
        assert_eq!(got, [(2, 1), (4, 1), (8, 1), (17, 2), (32, 1)]);
        a.accepted();
        // Requests are counted per outcome in their row (no row per request).
        for outcome in [
            Outcome::Completed,
            Outcome::ClientAborted,
            Outcome::Completed,
        ] {
            a.add_from(
                &b,
                Meter::LlmInputTokens,
                5,
                Some(&p2),
                (16, 0),
                Some(&mini),
                Some(outcome),
            );
        }
        let row = &a.cut()[0];
        assert_eq!(row.attributes["requests"], 3);
        assert_eq!(
            row.attributes["outcomes"],
            serde_json::json!({"completed": 2, "client_aborted": 1})
        );
        a.accepted();
        // After a cut, the same key is a new group, counted from zero.
        add(&mut a, 64, &p2, &mini, 20);
        assert_eq!(a.waiting(), 1);
        assert_eq!(a.cut()[0].quantity, 64);
    }

    #[test]
    fn a_period_starting_inside_an_hour_is_never_mixed_with_the_one_before() {
        let mut a = Aggregator::new("gw-1");
        let b = subject("b1");
        // A budget period in Asia/Kolkata starts at 18:30 UTC.
        let (hour, since) = (18 * 3600, 18 * 3600 + 1800);
        a.add_since(
            &b,
            Meter::LlmInputTokens,
            5,
            None,
            hour + 100,
            hour - 86_400,
        );
        a.add_since(&b, Meter::LlmInputTokens, 7, None, since + 10, since);
        let batch = a.cut().to_vec();
        assert_eq!(batch.len(), 2);
        assert_eq!((batch[0].quantity, batch[0].window_start), (5, hour + 100));
        assert_eq!((batch[1].quantity, batch[1].window_start), (7, since + 10));
        assert_ne!(batch[0].key, batch[1].key);
    }

    #[test]
    fn a_batch_keeps_its_keys_until_accepted_and_later_requests_wait() {
        let mut a = Aggregator::new("gw-1");
        let b = subject("b1");
        a.add(&b, Meter::LlmInputTokens, 5, None, 10);
        let first = a.cut().to_vec();
        assert_eq!(first[0].attributes["unpriced"], true);
        a.add(&b, Meter::LlmInputTokens, 9, None, 11);
        // The write failed: the same batch comes back, unchanged.
        assert_eq!(a.cut(), first.as_slice());
        a.accepted();
        let second = a.cut().to_vec();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].quantity, 9);
        assert_ne!(second[0].key, first[0].key);
        a.accepted();
        assert!(a.cut().is_empty());
        // Another process never reuses a key.
        let mut other = Aggregator::new("gw-2");
        other.add(&b, Meter::LlmInputTokens, 5, None, 10);
        assert_ne!(other.cut()[0].key, first[0].key);
    }
}
