//! The ledger's side of per-key rate limits (requests and tokens per minute) held across gateway
//! replicas: one token bucket per budget, key and limit, refilled continuously at its capacity a
//! minute. A replica takes units from it in slices with a guarded update (a compare-and-swap on the
//! bucket's level and time, as budget periods' leases), serves from what it holds in memory, and gives
//! back what it did not use: N replicas together allow the limit once, not N times.
//!
//! # Guarantees
//! - Two replicas racing for the last units cannot both get them, on PostgreSQL and on SQLite alike.
//! - A bucket never holds more than its capacity, and refills at capacity / 60 a second.
//! - Units a replica held when it died are lost to the bucket until it refills (never handed out
//!   twice).

use super::store::{Ledger, LedgerError, db, on_pool};

/// What taking units from a bucket gave.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Taken {
    /// This many units (at least the number asked for).
    Got(i64),
    /// Not enough units: seconds until there will be.
    Wait(f64),
}

/// A bucket: whose, which key, which limit, and its capacity a minute.
#[derive(Clone, Copy, Debug)]
pub struct Bucket<'a> {
    /// The budget's UID.
    pub budget_uid: &'a str,
    /// The API key's name.
    pub key: &'a str,
    /// `rpm` or `tpm`.
    pub limit: &'a str,
    /// Units a minute (and the most it holds).
    pub capacity: i64,
}

const MILLI: i64 = 1000;

/// The bucket's level (milli-units) at `now_ms`, refilled from `level` at `at_ms`.
fn refilled(capacity: i64, level: i64, at_ms: i64, now_ms: i64) -> i64 {
    let cap = capacity.saturating_mul(MILLI);
    // capacity × 1000 milli-units per 60,000 ms: capacity / 60 milli-units a millisecond.
    let gained = i128::from((now_ms - at_ms).max(0)) * i128::from(capacity) / 60;
    (i128::from(level) + gained).min(i128::from(cap)) as i64
}

impl Ledger {
    /// Takes at least `min` units of bucket `b` at `now_ms` (unix milliseconds), and up to `1/share` of
    /// what it holds, so a replica's slice is small when the bucket runs low.
    pub async fn take_rate(
        &self,
        b: Bucket<'_>,
        min: i64,
        share: i64,
        now_ms: i64,
    ) -> Result<Taken, LedgerError> {
        self.open_bucket(b, now_ms).await?;
        for _ in 0..64 {
            let (level, at) = self.bucket(b).await?;
            let now = refilled(b.capacity, level, at, now_ms);
            let need = min.saturating_mul(MILLI);
            if now < need {
                let per_ms = b.capacity as f64 / 60.0;
                return Ok(Taken::Wait(
                    ((need - now) as f64 / per_ms / 1000.0).max(0.001),
                ));
            }
            let units = (min.max(now / MILLI / share.max(1))).min(now / MILLI);
            if self
                .cas_bucket(
                    b,
                    (level, at),
                    (now - units.saturating_mul(MILLI), now_ms.max(at)),
                )
                .await?
            {
                return Ok(Taken::Got(units));
            }
        }
        Err(LedgerError::Conflict(
            "rate bucket contended: 64 guarded updates lost in a row".into(),
        ))
    }

    /// Gives back `n` units of bucket `b` that a replica took and did not use.
    pub async fn give_rate(&self, b: Bucket<'_>, n: i64, now_ms: i64) -> Result<(), LedgerError> {
        if n <= 0 {
            return Ok(());
        }
        for _ in 0..64 {
            let (level, at) = self.bucket(b).await?;
            let now = refilled(b.capacity, level, at, now_ms);
            let back = now
                .saturating_add(n.saturating_mul(MILLI))
                .min(b.capacity.saturating_mul(MILLI));
            if self
                .cas_bucket(b, (level, at), (back, now_ms.max(at)))
                .await?
            {
                return Ok(());
            }
        }
        Err(LedgerError::Conflict(
            "rate bucket contended: 64 guarded updates lost in a row".into(),
        ))
    }

    async fn open_bucket(&self, b: Bucket<'_>, now_ms: i64) -> Result<(), LedgerError> {
        let sql = "INSERT INTO rate_buckets (budget_uid, key_name, lim, level_milli, at_ms) \
                   VALUES ($1, $2, $3, $4, $5) ON CONFLICT (budget_uid, key_name, lim) DO NOTHING";
        on_pool!(self, p => sqlx::query(sql)
            .bind(b.budget_uid)
            .bind(b.key)
            .bind(b.limit)
            .bind(b.capacity.saturating_mul(MILLI))
            .bind(now_ms)
            .execute(p)
            .await
            .map_err(db("opening a rate bucket"))?
            .rows_affected());
        Ok(())
    }

    async fn bucket(&self, b: Bucket<'_>) -> Result<(i64, i64), LedgerError> {
        let sql = "SELECT level_milli, at_ms FROM rate_buckets \
                   WHERE budget_uid = $1 AND key_name = $2 AND lim = $3";
        let row: (i64, i64) = on_pool!(self, p => sqlx::query_as(sql)
            .bind(b.budget_uid)
            .bind(b.key)
            .bind(b.limit)
            .fetch_one(p)
            .await
            .map_err(db("reading a rate bucket"))?);
        Ok(row)
    }

    async fn cas_bucket(
        &self,
        b: Bucket<'_>,
        (level, at): (i64, i64),
        (new_level, new_at): (i64, i64),
    ) -> Result<bool, LedgerError> {
        let sql = "UPDATE rate_buckets SET level_milli = $6, at_ms = $7 \
                   WHERE budget_uid = $1 AND key_name = $2 AND lim = $3 AND level_milli = $4 AND at_ms = $5";
        let done = on_pool!(self, p => sqlx::query(sql)
            .bind(b.budget_uid)
            .bind(b.key)
            .bind(b.limit)
            .bind(level)
            .bind(at)
            .bind(new_level)
            .bind(new_at)
            .execute(p)
            .await
            .map_err(db("taking from a rate bucket"))?
            .rows_affected());
        Ok(done == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_at_its_capacity_a_minute_and_never_past_it() {
        // 60 a minute: one a second, 1,000 milli-units.
        assert_eq!(refilled(60, 0, 0, 1_000), 1_000);
        assert_eq!(refilled(60, 0, 0, 30_000), 30_000);
        assert_eq!(refilled(60, 59_500, 0, 10_000), 60_000, "capped");
        assert_eq!(refilled(3, 0, 0, 20_000), 1_000, "3 a minute: one per 20 s");
        assert_eq!(refilled(3, 500, 10, 5), 500, "time never runs back");
    }
}
