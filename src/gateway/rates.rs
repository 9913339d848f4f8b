//! Per-key rate limits (requests and tokens per minute) held across replicas: what this replica holds
//! of each key's shared buckets ([`crate::ledger::rate_buckets`]). A request takes its request and its
//! tokens from what is held, all in memory; a replica short of units takes a slice from the ledger's
//! bucket, and gives back what it held unused once idle.

use std::collections::HashMap;
use std::sync::Arc;

use super::directory::BudgetView;

/// Which limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limit {
    /// Requests per minute.
    Rpm,
    /// Tokens per minute.
    Tpm,
    /// Requests per minute a budget serves once exhausted (`onExhausted: Throttle`), over all its keys.
    Throttle,
}

impl Limit {
    /// Its name in the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rpm => "rpm",
            Self::Tpm => "tpm",
            Self::Throttle => "throttle",
        }
    }

    /// What a refusal says of it.
    pub fn what(self) -> &'static str {
        match self {
            Self::Rpm => "requests per minute",
            Self::Tpm => "tokens per minute",
            Self::Throttle => "requests per minute once exhausted",
        }
    }
}

/// Units one request needs of one limit.
#[derive(Clone, Debug)]
pub struct Want {
    /// The API key's name.
    pub key: Arc<str>,
    /// Which limit.
    pub limit: Limit,
    /// Its capacity a minute.
    pub capacity: i64,
    /// Units the request needs.
    pub n: i64,
}

/// What a request of key `key` reserving `tokens` needs of budget `b`'s limits (none when it has none).
pub fn wants(b: &BudgetView, key: &Arc<str>, tokens: i64) -> Vec<Want> {
    let mut w = Vec::new();
    if let Some(rpm) = b.rpm {
        w.push(Want {
            key: key.clone(),
            limit: Limit::Rpm,
            capacity: i64::from(rpm),
            n: 1,
        });
    }
    if let Some(tpm) = b.tpm {
        w.push(Want {
            key: key.clone(),
            limit: Limit::Tpm,
            capacity: i64::try_from(tpm).unwrap_or(i64::MAX),
            n: tokens,
        });
    }
    w
}

/// The one request an exhausted `Throttle` budget may serve at `rpm` a minute, over all its keys.
pub fn pace(rpm: u32) -> Want {
    Want {
        key: "".into(),
        limit: Limit::Throttle,
        capacity: i64::from(rpm),
        n: 1,
    }
}

#[derive(Clone, Copy, Debug)]
struct Held {
    units: i64,
    capacity: i64,
    last_use: i64,
}

/// Units this replica holds, per key and limit, and until when the ledger said a bucket is empty (a
/// request then is refused in memory, not by asking the ledger again).
#[derive(Debug, Default)]
pub struct Holds(
    HashMap<(Arc<str>, Limit), Held>,
    HashMap<(Arc<str>, Limit), f64>,
);

/// Units to give back to a key's bucket: (key, limit, capacity, units).
pub type GiveBack = (Arc<str>, Limit, i64, i64);

impl Holds {
    /// Takes every want from what is held if all fit (at `now`, unix seconds); otherwise takes nothing
    /// and says the first that is short, and by how much.
    pub fn take(&mut self, wants: &[Want], now: i64) -> Result<(), (usize, i64)> {
        for (i, w) in wants.iter().enumerate() {
            let held = self
                .0
                .get(&(w.key.clone(), w.limit))
                .filter(|h| h.capacity == w.capacity)
                .map_or(0, |h| h.units);
            if held < w.n {
                return Err((i, w.n - held));
            }
        }
        for w in wants {
            if let Some(h) = self.0.get_mut(&(w.key.clone(), w.limit)) {
                h.units -= w.n;
                h.last_use = now;
            }
        }
        Ok(())
    }

    /// When the first of `wants` this replica cannot serve from what it holds has a bucket the ledger
    /// said is empty until after `now` (unix seconds): its index and the seconds to wait.
    pub fn waiting(&self, wants: &[Want], now: f64) -> Option<(usize, f64)> {
        wants.iter().enumerate().find_map(|(i, w)| {
            let k = (w.key.clone(), w.limit);
            let held = self.0.get(&k).map_or(0, |h| h.units);
            let until = *self.1.get(&k)?;
            (held < w.n && until > now).then_some((i, until - now))
        })
    }

    /// Notes that `w`'s bucket has not enough until `until` (unix seconds).
    pub fn empty_until(&mut self, w: &Want, until: f64) {
        self.1.insert((w.key.clone(), w.limit), until);
    }

    /// Adds `n` units the ledger granted for `w`'s key and limit. Units held at another capacity (the
    /// spec changed) are dropped: the ledger's bucket is capped at the new capacity anyway.
    pub fn add(&mut self, w: &Want, n: i64, now: i64) {
        self.1.remove(&(w.key.clone(), w.limit));
        let h = self.0.entry((w.key.clone(), w.limit)).or_insert(Held {
            units: 0,
            capacity: w.capacity,
            last_use: now,
        });
        if h.capacity != w.capacity {
            *h = Held {
                units: 0,
                capacity: w.capacity,
                last_use: now,
            };
        }
        h.units += n;
        h.last_use = now;
    }

    /// Gives back to what is held the units a refused request took.
    pub fn give(&mut self, wants: &[Want]) {
        for w in wants {
            if let Some(h) = self.0.get_mut(&(w.key.clone(), w.limit)) {
                h.units += w.n;
            }
        }
    }

    /// Takes out the units held unused for `idle` seconds (or, with `all`, every unit) to give back.
    pub fn idle(&mut self, now: i64, idle: i64, all: bool) -> Vec<GiveBack> {
        let mut out = Vec::new();
        self.1.retain(|_, until| *until > now as f64);
        self.0.retain(|(key, limit), h| {
            if all || now - h.last_use >= idle {
                if h.units > 0 {
                    out.push((key.clone(), *limit, h.capacity, h.units));
                }
                return false;
            }
            true
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(limit: Limit, n: i64) -> Want {
        Want {
            key: "prod".into(),
            limit,
            capacity: 100,
            n,
        }
    }

    #[test]
    fn a_request_takes_all_its_units_or_none_and_idle_units_go_back() {
        let mut h = Holds::default();
        let ws = [want(Limit::Rpm, 1), want(Limit::Tpm, 30)];
        assert_eq!(h.take(&ws, 0), Err((0, 1)));
        h.add(&ws[0], 2, 0);
        assert_eq!(
            h.take(&ws, 0),
            Err((1, 30)),
            "nothing taken while one is short"
        );
        h.add(&ws[1], 40, 0);
        h.take(&ws, 1).unwrap();
        assert_eq!(h.take(&ws, 1), Err((1, 20)));
        // A request refused after taking its units (its budget) gives them back.
        h.give(&ws);
        h.take(&ws, 2).unwrap();
        // Idle for 2 s: what is held goes back, per limit.
        assert!(h.idle(3, 2, false).is_empty());
        let mut back = h.idle(4, 2, false);
        back.sort_by_key(|b| b.1.as_str());
        assert_eq!(
            back.iter().map(|b| (b.1, b.3)).collect::<Vec<_>>(),
            [(Limit::Rpm, 1), (Limit::Tpm, 10)]
        );
        assert!(h.idle(9, 2, true).is_empty(), "nothing held any more");
        // A bucket the ledger said is empty refuses in memory until then; a grant clears it.
        let one = [want(Limit::Rpm, 1)];
        h.empty_until(&one[0], 30.0);
        assert_eq!(h.waiting(&one, 20.0), Some((0, 10.0)));
        assert_eq!(h.waiting(&one, 31.0), None);
        h.add(&one[0], 1, 20);
        assert_eq!(h.waiting(&one, 20.0), None);
        // A changed capacity drops what was held at the old one.
        h.add(&ws[0], 5, 5);
        let mut other = want(Limit::Rpm, 1);
        other.capacity = 7;
        assert_eq!(h.take(std::slice::from_ref(&other), 5), Err((0, 1)));
    }
}
