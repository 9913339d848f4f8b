//! The ledger's side of TokenBudget enforcement: each budget period's allocation and how much of it the
//! gateway replicas hold, taken in slices with a guarded update so that, across any number of replicas
//! and restarts, leases never pass the allocation (overruns are recorded beyond it); and a budget's consumed figure, read from its
//! usage rows (so it equals the ledger's by construction).
//!
//! # Guarantees
//! - [`Ledger::lease`] is a compare-and-swap on `granted`: two replicas racing for the last tokens
//!   cannot both get them, on PostgreSQL and on SQLite alike; it grants nothing past the allocation.
//! - Tokens an upstream used beyond what a replica held ([`Ledger::record_overrun`]) raise `granted`
//!   past the allocation if need be: every replica, one started later included, then sees a budget
//!   with that much less left (none, when it is over).
//! - A slice a replica held when it died stays granted (never handed out twice): what it served but had
//!   not flushed to the ledger yet is covered by it.

use super::store::{Ledger, LedgerError, db, on_pool};

/// One budget period as the ledger holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BudgetPeriod {
    /// Tokens allowed in the period.
    pub allocation: i64,
    /// Tokens served or held in slices by gateway replicas.
    pub granted: i64,
    /// Tokens granted beyond the allocation (`onExhausted: Throttle`).
    pub overage: i64,
}

/// What a budget's usage rows of one period hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Consumed {
    /// Input plus output tokens.
    pub tokens: i64,
    /// The tenant's amount per currency, nano-units (unpriced rows count tokens only).
    pub amounts: Vec<(String, i64)>,
}

const LLM_METERS: (&str, &str) = ("llm_input_tokens", "llm_output_tokens");

impl Ledger {
    /// Takes a slice of budget `uid`'s period starting `period_start`, whose allocation is `allocation`
    /// (recorded, or updated when the budget's spec changed): at least `min` tokens, and up to
    /// `1/share` of what is left, so replicas near the end of a budget hold small slices. Returns what
    /// was granted: 0 when fewer than `min` tokens are left.
    pub async fn lease(
        &self,
        uid: &str,
        period_start: i64,
        allocation: i64,
        min: i64,
        share: i64,
    ) -> Result<i64, LedgerError> {
        let now = jiff::Timestamp::now().as_second();
        self.open_period(uid, period_start, allocation, now).await?;
        for _ in 0..64 {
            let Some(p) = self.budget_period(uid, period_start).await? else {
                return Ok(0);
            };
            let left = allocation - p.granted;
            let amount = min.max(left / share.max(1)).min(left);
            if amount < min.max(1) {
                // Keep the recorded allocation current even when nothing is granted.
                if p.allocation != allocation {
                    self.cas(uid, period_start, allocation, p.granted, p.granted, now)
                        .await?;
                }
                return Ok(0);
            }
            if self
                .cas(
                    uid,
                    period_start,
                    allocation,
                    p.granted,
                    p.granted + amount,
                    now,
                )
                .await?
            {
                return Ok(amount);
            }
        }
        Err(LedgerError::Conflict(
            "budget period contended: 64 guarded updates lost in a row".into(),
        ))
    }

    /// Grants `n` tokens beyond the allocation (billed overage of a throttled budget).
    pub async fn grant_overage(
        &self,
        uid: &str,
        period_start: i64,
        allocation: i64,
        n: i64,
    ) -> Result<(), LedgerError> {
        let now = jiff::Timestamp::now().as_second();
        self.open_period(uid, period_start, allocation, now).await?;
        let sql = "UPDATE budget_periods SET granted = granted + $3, overage = overage + $3, \
                   updated_at = $4 WHERE budget_uid = $1 AND period_start = $2";
        on_pool!(self, p => sqlx::query(sql)
            .bind(uid)
            .bind(period_start)
            .bind(n)
            .bind(now)
            .execute(p)
            .await
            .map_err(db("granting budget overage"))?
            .rows_affected());
        Ok(())
    }

    /// Records `n` tokens that requests of budget `uid` used beyond the slices that admitted them (an
    /// upstream that billed more than the limit it was sent): `granted` grows by `n`, past the allocation
    /// if need be, so no replica is granted them again.
    pub async fn record_overrun(
        &self,
        uid: &str,
        period_start: i64,
        n: i64,
    ) -> Result<(), LedgerError> {
        if n <= 0 {
            return Ok(());
        }
        self.add_granted(uid, period_start, n, "recording a budget overrun")
            .await
    }

    /// Returns `n` unused tokens of a slice.
    pub async fn release(&self, uid: &str, period_start: i64, n: i64) -> Result<(), LedgerError> {
        if n <= 0 {
            return Ok(());
        }
        self.add_granted(uid, period_start, -n, "returning a budget slice")
            .await
    }

    /// Adds `delta` to what budget `uid`'s period starting `period_start` has granted.
    async fn add_granted(
        &self,
        uid: &str,
        period_start: i64,
        delta: i64,
        step: &'static str,
    ) -> Result<(), LedgerError> {
        let now = jiff::Timestamp::now().as_second();
        let sql = "UPDATE budget_periods SET granted = granted + $3, updated_at = $4 \
                   WHERE budget_uid = $1 AND period_start = $2";
        on_pool!(self, p => sqlx::query(sql)
            .bind(uid)
            .bind(period_start)
            .bind(delta)
            .bind(now)
            .execute(p)
            .await
            .map_err(db(step))?
            .rows_affected());
        Ok(())
    }

    /// Budget `uid`'s period starting `period_start`, if any replica has taken from it.
    pub async fn budget_period(
        &self,
        uid: &str,
        period_start: i64,
    ) -> Result<Option<BudgetPeriod>, LedgerError> {
        let sql = "SELECT allocation, granted, overage FROM budget_periods \
                   WHERE budget_uid = $1 AND period_start = $2";
        let row: Option<(i64, i64, i64)> = on_pool!(self, p => sqlx::query_as(sql)
            .bind(uid)
            .bind(period_start)
            .fetch_optional(p)
            .await
            .map_err(db("reading a budget period"))?);
        Ok(row.map(|(allocation, granted, overage)| BudgetPeriod {
            allocation,
            granted,
            overage,
        }))
    }

    /// The LLM tokens and amounts recorded for object `uid` with windows starting in `[from, to)`.
    pub async fn consumed(&self, uid: &str, from: i64, to: i64) -> Result<Consumed, LedgerError> {
        let sql = "SELECT currency, CAST(COALESCE(SUM(quantity), 0) AS BIGINT), CAST(COALESCE(SUM(amount_nanos), 0) AS BIGINT) \
                   FROM usage_events WHERE object_uid = $1 AND window_start >= $2 AND window_start < $3 \
                   AND meter IN ($4, $5) GROUP BY currency ORDER BY currency";
        let rows: Vec<(String, i64, i64)> = on_pool!(self, p => sqlx::query_as(sql)
            .bind(uid)
            .bind(from)
            .bind(to)
            .bind(LLM_METERS.0)
            .bind(LLM_METERS.1)
            .fetch_all(p)
            .await
            .map_err(db("reading a budget's usage"))?);
        Ok(Consumed {
            tokens: rows.iter().map(|r| r.1).sum(),
            amounts: rows
                .into_iter()
                .filter(|r| !r.0.is_empty())
                .map(|r| (r.0, r.2))
                .collect(),
        })
    }

    /// Records that usage of budgets `uids` was just written (the gateway, after each flush).
    pub async fn touch_budgets(&self, uids: &[&str]) -> Result<(), LedgerError> {
        let now = jiff::Timestamp::now().as_second();
        for chunk in uids.chunks(500) {
            let mut sql = String::from("INSERT INTO budget_activity (budget_uid, at) VALUES ");
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("(${}, ${})", 2 * i + 1, 2 * i + 2));
            }
            sql.push_str(" ON CONFLICT (budget_uid) DO UPDATE SET at = excluded.at");
            on_pool!(self, p => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                for uid in chunk {
                    q = q.bind(*uid).bind(now);
                }
                q.execute(p).await.map_err(db("recording budget activity"))?.rows_affected()
            });
        }
        Ok(())
    }

    /// Budgets whose usage was written or whose slices moved at or after `since` (unix seconds), with
    /// the latest such time.
    pub async fn budgets_active_since(
        &self,
        since: i64,
    ) -> Result<Vec<(String, i64)>, LedgerError> {
        let sql = "SELECT budget_uid, at FROM budget_activity WHERE at >= $1 \
                   UNION ALL SELECT budget_uid, updated_at FROM budget_periods WHERE updated_at >= $1";
        Ok(on_pool!(self, p => sqlx::query_as(sql)
            .bind(since)
            .fetch_all(p)
            .await
            .map_err(db("reading budget activity"))?))
    }

    async fn open_period(
        &self,
        uid: &str,
        period_start: i64,
        allocation: i64,
        now: i64,
    ) -> Result<(), LedgerError> {
        let sql = "INSERT INTO budget_periods (budget_uid, period_start, allocation, granted, updated_at) \
                   VALUES ($1, $2, $3, 0, $4) ON CONFLICT (budget_uid, period_start) DO NOTHING";
        on_pool!(self, p => sqlx::query(sql)
            .bind(uid)
            .bind(period_start)
            .bind(allocation)
            .bind(now)
            .execute(p)
            .await
            .map_err(db("opening a budget period"))?
            .rows_affected());
        Ok(())
    }

    async fn cas(
        &self,
        uid: &str,
        period_start: i64,
        allocation: i64,
        old: i64,
        new: i64,
        now: i64,
    ) -> Result<bool, LedgerError> {
        let sql = "UPDATE budget_periods SET granted = $4, allocation = $5, updated_at = $6 \
                   WHERE budget_uid = $1 AND period_start = $2 AND granted = $3";
        let done = on_pool!(self, p => sqlx::query(sql)
            .bind(uid)
            .bind(period_start)
            .bind(old)
            .bind(new)
            .bind(allocation)
            .bind(now)
            .execute(p)
            .await
            .map_err(db("taking a budget slice"))?
            .rows_affected());
        Ok(done == 1)
    }
}
