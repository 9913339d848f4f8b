//! The ledger's record of usage reported to Stripe as billing meter events: each ledger usage row is
//! reported once. Its report is written before the call (`sending`) and marked `sent` after Stripe's
//! answer; a report left `sending` (a crash, a lost answer) is sent again with the same identifier,
//! which Stripe deduplicates for about 24 hours — after that it is not sent again blindly but counted
//! as unconfirmed (see `controller::subscription::usage`).

use super::store::{Ledger, LedgerError, db, on_pool};

/// One ledger row's report to Stripe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageReport {
    /// The ledger row's idempotency key.
    pub usage_key: String,
    /// The Project's UID.
    pub project_uid: String,
    /// Ledger meter.
    pub meter: String,
    /// Ledger quantity.
    pub quantity: i64,
    /// The value reported (ledger quantity over the price's divisor, decimal text).
    pub value: String,
    /// Stripe customer.
    pub customer: String,
    /// Stripe meter event name.
    pub event_name: String,
    /// The meter event's identifier.
    pub identifier: String,
    /// The meter event's timestamp, unix seconds.
    pub event_time: i64,
    /// When it was (last) attempted.
    pub attempted_at: i64,
}

/// A ledger row not reported yet: (key, meter, quantity, window end).
pub type Unreported = (String, String, i64, i64);

impl Ledger {
    /// Rows of `meter` for Project `project_uid` recorded since `since` and never reported, oldest
    /// first, at most `limit`.
    pub async fn unreported(
        &self,
        project_uid: &str,
        meter: &str,
        since: i64,
        limit: i64,
    ) -> Result<Vec<Unreported>, LedgerError> {
        let sql = "SELECT e.idempotency_key, e.meter, e.quantity, e.window_end FROM usage_events e \
                   LEFT JOIN stripe_usage_reports r ON r.usage_key = e.idempotency_key \
                   WHERE e.project_uid = $1 AND e.meter = $2 AND e.recorded_at >= $3 \
                   AND r.usage_key IS NULL ORDER BY e.recorded_at, e.idempotency_key LIMIT $4";
        Ok(on_pool!(self, p => sqlx::query_as(sql)
            .bind(project_uid)
            .bind(meter)
            .bind(since)
            .bind(limit)
            .fetch_all(p)
            .await
            .map_err(db("reading unreported usage"))?))
    }

    /// Records the intent to report `r` (before the call); false when it was recorded before.
    pub async fn report_intent(&self, r: &UsageReport) -> Result<bool, LedgerError> {
        let sql = "INSERT INTO stripe_usage_reports (usage_key, project_uid, meter, quantity, value, \
                   customer, event_name, identifier, event_time, state, attempted_at) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'sending', $10) \
                   ON CONFLICT (usage_key) DO NOTHING";
        let n = on_pool!(self, p => sqlx::query(sql)
            .bind(&r.usage_key)
            .bind(&r.project_uid)
            .bind(&r.meter)
            .bind(r.quantity)
            .bind(&r.value)
            .bind(&r.customer)
            .bind(&r.event_name)
            .bind(&r.identifier)
            .bind(r.event_time)
            .bind(r.attempted_at)
            .execute(p)
            .await
            .map_err(db("recording a usage report"))?
            .rows_affected());
        Ok(n == 1)
    }

    /// Marks the report of `usage_key` as accepted by Stripe.
    pub async fn report_sent(&self, usage_key: &str) -> Result<(), LedgerError> {
        let now = jiff::Timestamp::now().as_second();
        let sql =
            "UPDATE stripe_usage_reports SET state = 'sent', sent_at = $2 WHERE usage_key = $1";
        on_pool!(self, p => sqlx::query(sql)
            .bind(usage_key)
            .bind(now)
            .execute(p)
            .await
            .map_err(db("marking a usage report sent"))?
            .rows_affected());
        Ok(())
    }

    /// Forgets the intent to report `usage_key` (Stripe refused the event: nothing was recorded there).
    pub async fn report_refused(&self, usage_key: &str) -> Result<(), LedgerError> {
        let sql = "DELETE FROM stripe_usage_reports WHERE usage_key = $1 AND state = 'sending'";
        on_pool!(self, p => sqlx::query(sql)
            .bind(usage_key)
            .execute(p)
            .await
            .map_err(db("forgetting a refused usage report"))?
            .rows_affected());
        Ok(())
    }

    /// Reports of Project `project_uid` still `sending` (attempted, answer not recorded).
    pub async fn reports_in_flight(
        &self,
        project_uid: &str,
    ) -> Result<Vec<UsageReport>, LedgerError> {
        let sql = "SELECT usage_key, project_uid, meter, quantity, value, customer, event_name, \
                   identifier, event_time, attempted_at FROM stripe_usage_reports \
                   WHERE project_uid = $1 AND state = 'sending' ORDER BY attempted_at, usage_key";
        type Row = (
            String,
            String,
            String,
            i64,
            String,
            String,
            String,
            String,
            i64,
            i64,
        );
        let rows: Vec<Row> = on_pool!(self, p => sqlx::query_as(sql)
            .bind(project_uid)
            .fetch_all(p)
            .await
            .map_err(db("reading usage reports in flight"))?);
        Ok(rows
            .into_iter()
            .map(|r| UsageReport {
                usage_key: r.0,
                project_uid: r.1,
                meter: r.2,
                quantity: r.3,
                value: r.4,
                customer: r.5,
                event_name: r.6,
                identifier: r.7,
                event_time: r.8,
                attempted_at: r.9,
            })
            .collect())
    }

    /// Per meter, for Project `project_uid` and usage rows whose window ends in `[from, to)`: the ledger's
    /// quantity of the rows reported to Stripe, and of all rows. (meter, reported, recorded).
    pub async fn reported_totals(
        &self,
        project_uid: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<(String, i64, i64)>, LedgerError> {
        let cast = if matches!(self, Self::Postgres(_)) {
            "::BIGINT"
        } else {
            ""
        };
        let sql = format!(
            "SELECT e.meter, SUM(CASE WHEN r.state = 'sent' THEN e.quantity ELSE 0 END){cast}, \
             SUM(e.quantity){cast} FROM usage_events e \
             LEFT JOIN stripe_usage_reports r ON r.usage_key = e.idempotency_key \
             WHERE e.project_uid = $1 AND e.window_end >= $2 AND e.window_end < $3 \
             GROUP BY e.meter ORDER BY e.meter"
        );
        Ok(on_pool!(self, p => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(project_uid)
            .bind(from)
            .bind(to)
            .fetch_all(p)
            .await
            .map_err(db("summing reported usage"))?))
    }
}
