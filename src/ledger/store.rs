//! The ledger's storage: PostgreSQL (production) or SQLite (embedded default), behind one [`Ledger`].
//! Queries are checked at run time (one code path per dialect) because the same statements must serve
//! both databases; migrations are embedded in the binary.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
// NB: the only dynamic SQL is `usage`'s grouping expression, picked from a fixed set (never user text).
use sqlx::{AssertSqlSafe, Row, migrate::Migrator};

use super::periods::{self, Booking};
use super::{CreditEntry, CreditType, UsageEvent};

static PG_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Rows per insert statement.
pub const BATCH: usize = 20000;

/// Why a ledger call failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database URL is malformed or of an unsupported kind.
    #[error("bad database URL: {0}")]
    Url(String),
    /// The database could not be reached or refused the statement.
    #[error("ledger database error while {step}: {source}")]
    Db {
        /// What was being done.
        step: &'static str,
        /// The driver error (never contains the password: URLs are not echoed).
        #[source]
        source: sqlx::Error,
    },
    /// A meter's state and the ledger's rows did not agree after several attempts.
    #[error("ledger conflict: {0}")]
    Conflict(String),
    /// Migrations failed.
    #[error("ledger migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub(super) fn db(step: &'static str) -> impl FnOnce(sqlx::Error) -> LedgerError {
    move |source| LedgerError::Db { step, source }
}

/// Runs the same statement-building code on either pool (the two arms differ only in the driver type).
macro_rules! on_pool {
    ($ledger:expr, $p:ident => $body:expr) => {
        match $ledger {
            Ledger::Postgres($p) => $body,
            Ledger::Sqlite($p) => $body,
        }
    };
}
pub(super) use on_pool;

/// A connected ledger.
#[derive(Clone, Debug)]
pub enum Ledger {
    /// PostgreSQL.
    Postgres(PgPool),
    /// SQLite.
    Sqlite(SqlitePool),
}

/// One usage record pushed by a vendor's stream (1NCE's Data Streamer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamRecord {
    /// The vendor's record ID: a record re-sent is kept once.
    pub record_id: String,
    /// The SIM (19 digits).
    pub iccid: String,
    /// The day it belongs to (`YYYY-MM-DD`, UTC, from its start).
    pub day: String,
    /// `sim_data_bytes` or `sim_sms`.
    pub meter: super::Meter,
    /// Bytes or messages.
    pub quantity: i64,
}

/// An SMS a device sent, forwarded by the vendor.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct InboundSms {
    /// The vendor's message ID: a message forwarded again is kept once.
    pub message_id: String,
    /// The SIM (19 digits).
    pub iccid: String,
    /// When it reached Quartermaster (unix seconds).
    pub received_at: i64,
    /// When the device sent it, as the vendor says.
    pub submitted: String,
    /// The text.
    pub payload: String,
}

/// One line of an aggregated report.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UsageRow {
    /// The grouping key (meter, object or day).
    pub key: String,
    /// Meter.
    pub meter: String,
    /// Summed quantity.
    pub quantity: i64,
    /// Summed amount the tenant pays, nano-units.
    pub amount_nanos: i64,
    /// Summed vendor cost, nano-units (the margin is the difference).
    pub cost_nanos: i64,
    /// Currency.
    pub currency: String,
}

/// A Project as the ledger knows it: its UID (the tenant) with its namespace and name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProjectRef<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// UID ('' for rows from before the ledger knew UIDs, not claimed yet).
    pub uid: &'a str,
}

/// How a report groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupBy {
    /// Per meter.
    Meter,
    /// Per object (kind/name) and meter.
    Object,
    /// Per day and meter.
    Day,
}

impl Ledger {
    /// Connects: `postgres://…` or `sqlite://…`; `None` means the embedded SQLite file `default_path`.
    pub async fn connect(
        url: Option<&str>,
        default_path: &std::path::Path,
    ) -> Result<Self, LedgerError> {
        crate::install_crypto_provider();
        match url {
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                let pool = PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect(u)
                    .await
                    .map_err(db("connecting to PostgreSQL"))?;
                Ok(Self::Postgres(pool))
            }
            Some(u) if u.starts_with("sqlite:") => {
                let opts: SqliteConnectOptions = u
                    .parse()
                    .map_err(|e: sqlx::Error| LedgerError::Url(e.to_string()))?;
                Self::sqlite(opts.create_if_missing(true)).await
            }
            Some(_) => Err(LedgerError::Url(
                "expected postgres://… or sqlite://…".into(),
            )),
            None => {
                if let Some(dir) = default_path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    let _ = std::fs::create_dir_all(dir);
                }
                Self::sqlite(
                    SqliteConnectOptions::new()
                        .filename(default_path)
                        .create_if_missing(true),
                )
                .await
            }
        }
    }

    async fn sqlite(opts: SqliteConnectOptions) -> Result<Self, LedgerError> {
        let opts = opts
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(db("opening the SQLite ledger"))?;
        Ok(Self::Sqlite(pool))
    }

    /// Applies pending migrations. On PostgreSQL concurrent runs (the controller and the gateway
    /// starting together) take turns on sqlx's advisory lock; SQLite has none, so a run that lost the
    /// race (its migration failed and rolled back) tries again and finds the work done.
    pub async fn migrate(&self) -> Result<(), LedgerError> {
        match self {
            Self::Postgres(p) => PG_MIGRATIONS.run(p).await?,
            Self::Sqlite(p) => {
                let mut attempt = 0;
                loop {
                    match SQLITE_MIGRATIONS.run(p).await {
                        Ok(()) => break,
                        Err(e) if attempt >= 10 => return Err(e.into()),
                        Err(_) => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Which database this is.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Sqlite(_) => "sqlite",
        }
    }

    /// Records events idempotently, in batches. Returns how many were new.
    pub async fn record(&self, events: &[UsageEvent]) -> Result<u64, LedgerError> {
        let mut inserted = 0;
        for chunk in events.chunks(BATCH) {
            inserted += match self {
                Self::Postgres(p) => record_pg(p, chunk).await?,
                Self::Sqlite(p) => record_sqlite(p, chunk).await?,
            };
        }
        Ok(inserted)
    }

    /// What the event recorded under `key` holds: its quantity and window end (`None`: no such event).
    /// A meter whose replays may carry a larger quantity under the same key asks this after recording.
    pub async fn held(&self, key: &str) -> Result<Option<(i64, i64)>, LedgerError> {
        let sql = "SELECT quantity, window_end FROM usage_events WHERE idempotency_key = $1";
        let row: Option<(i64, i64)> = on_pool!(self, p => sqlx::query_as(sql)
            .bind(key)
            .fetch_optional(p)
            .await
            .map_err(db("reading an event"))?);
        Ok(row)
    }

    /// The quantities recorded under keys starting with `prefix`, summed (0: none): where a counter whose
    /// cursor lives in the ledger itself stands.
    pub async fn held_total(&self, prefix: &str) -> Result<i64, LedgerError> {
        let sql = "SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM usage_events \
                   WHERE idempotency_key LIKE $1 ESCAPE '\\'";
        // The prefix is matched as it is: a key's `_` or `%` is no wildcard.
        let pattern = format!(
            "{}%",
            prefix
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let total: (i64,) = on_pool!(self, p => sqlx::query_as(sql)
            .bind(pattern)
            .fetch_one(p)
            .await
            .map_err(db("summing events"))?);
        Ok(total.0)
    }

    /// Keeps Stripe webhook event `id`; false when it was kept before (a redelivery).
    pub async fn record_stripe_event(&self, id: &str, kind: &str) -> Result<bool, LedgerError> {
        let now = jiff::Timestamp::now().as_second();
        let sql = "INSERT INTO stripe_events (event_id, event_type, received_at) VALUES ($1, $2, $3) \
                   ON CONFLICT (event_id) DO NOTHING";
        let n = on_pool!(self, p => sqlx::query(sql)
            .bind(id)
            .bind(kind)
            .bind(now)
            .execute(p)
            .await
            .map_err(db("keeping a Stripe event"))?
            .rows_affected());
        Ok(n == 1)
    }

    /// Keeps streamed usage records, each once (by record ID). Returns how many were new.
    pub async fn record_streamed(&self, records: &[StreamRecord]) -> Result<u64, LedgerError> {
        let now = jiff::Timestamp::now().as_second();
        let sql = "INSERT INTO stream_records (record_id, iccid, day, meter, quantity, received_at) \
                   VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (record_id) DO NOTHING";
        let mut n = 0;
        for r in records {
            n += on_pool!(self, p => sqlx::query(sql)
                .bind(&r.record_id)
                .bind(&r.iccid)
                .bind(&r.day)
                .bind(r.meter.as_str())
                .bind(r.quantity)
                .bind(now)
                .execute(p)
                .await
                .map_err(db("keeping streamed usage"))?
                .rows_affected());
        }
        Ok(n)
    }

    /// Streamed usage of SIM `iccid` (19 digits) from day `from` (`YYYY-MM-DD`) on: (day, meter, sum).
    pub async fn streamed(
        &self,
        iccid: &str,
        from: &str,
    ) -> Result<Vec<(String, String, i64)>, LedgerError> {
        let cast = if matches!(self, Self::Postgres(_)) {
            "::BIGINT"
        } else {
            ""
        };
        let sql = format!(
            "SELECT day, meter, SUM(quantity){cast} FROM stream_records WHERE iccid = $1 AND day >= $2 \
             GROUP BY day, meter ORDER BY day, meter"
        );
        let rows: Vec<(String, String, i64)> = on_pool!(self, p => sqlx::query_as(AssertSqlSafe(sql.clone()))
            .bind(iccid)
            .bind(from)
            .fetch_all(p)
            .await
            .map_err(db("reading streamed usage"))?);
        Ok(rows)
    }

    /// Keeps an SMS a device sent (once by its ID). Returns false when it was kept before.
    pub async fn record_inbound_sms(&self, m: &InboundSms) -> Result<bool, LedgerError> {
        let sql = "INSERT INTO inbound_sms (message_id, iccid, received_at, submitted, payload) \
                   VALUES ($1, $2, $3, $4, $5) ON CONFLICT (message_id) DO NOTHING";
        let n = on_pool!(self, p => sqlx::query(sql)
            .bind(&m.message_id)
            .bind(&m.iccid)
            .bind(m.received_at)
            .bind(&m.submitted)
            .bind(&m.payload)
            .execute(p)
            .await
            .map_err(db("keeping an inbound SMS"))?
            .rows_affected());
        Ok(n > 0)
    }

    /// The SMS SIM `iccid` sent since `since` (unix seconds), oldest first.
    pub async fn inbound_sms(
        &self,
        iccid: &str,
        since: i64,
    ) -> Result<Vec<InboundSms>, LedgerError> {
        let sql = "SELECT message_id, iccid, received_at, submitted, payload FROM inbound_sms \
                   WHERE iccid = $1 AND received_at >= $2 ORDER BY received_at, message_id";
        let rows: Vec<(String, String, i64, String, String)> = on_pool!(self, p => sqlx::query_as(sql)
            .bind(iccid)
            .bind(since)
            .fetch_all(p)
            .await
            .map_err(db("reading inbound SMS"))?);
        Ok(rows
            .into_iter()
            .map(
                |(message_id, iccid, received_at, submitted, payload)| InboundSms {
                    message_id,
                    iccid,
                    received_at,
                    submitted,
                    payload,
                },
            )
            .collect())
    }

    /// Records a credit entry. Idempotent on its key; returns false when the key was already recorded.
    pub async fn credit(&self, c: &CreditEntry) -> Result<bool, LedgerError> {
        let now = jiff::Timestamp::now().as_second();
        let sql = "INSERT INTO credits (idempotency_key, namespace, project, amount_nanos, currency, reason, created_at, \
                   project_uid, entry_type, external_ref) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (idempotency_key) DO NOTHING";
        let n = on_pool!(self, p => sqlx::query(sql)
            .bind(&c.key)
            .bind(&c.namespace)
            .bind(&c.project)
            .bind(c.amount_nanos)
            .bind(&c.currency)
            .bind(&c.reason)
            .bind(now)
            .bind(&c.project_uid)
            .bind(c.kind.as_str())
            .bind(&c.external_ref)
            .execute(p)
            .await
            .map_err(db("recording a credit"))?
            .rows_affected());
        Ok(n == 1)
    }

    /// Payments (credit entries of type payment) of a Project recorded in `[from, to)`: (currency, sum).
    pub async fn payments(
        &self,
        project: &ProjectRef<'_>,
        from: i64,
        to: i64,
    ) -> Result<Vec<(String, i64)>, LedgerError> {
        let sql = "SELECT currency, CAST(SUM(amount_nanos) AS BIGINT) FROM credits \
                   WHERE project_uid = $1 AND namespace = $2 AND project = $3 AND entry_type = 'payment' \
                   AND created_at >= $4 AND created_at < $5 GROUP BY currency ORDER BY currency";
        Ok(on_pool!(self, p => sqlx::query_as(sql)
            .bind(project.uid)
            .bind(project.namespace)
            .bind(project.name)
            .bind(from)
            .bind(to)
            .fetch_all(p)
            .await
            .map_err(db("summing payments"))?))
    }

    /// A Project's credit entries (grants, payments, refunds, adjustments), oldest first.
    pub async fn credits(&self, project: &ProjectRef<'_>) -> Result<Vec<CreditEntry>, LedgerError> {
        let sql = "SELECT idempotency_key, amount_nanos, currency, reason, entry_type, external_ref \
                   FROM credits WHERE project_uid = $1 AND namespace = $2 AND project = $3 \
                   ORDER BY created_at, idempotency_key";
        type Row = (String, i64, String, String, String, String);
        let rows: Vec<Row> = on_pool!(self, p => sqlx::query_as(sql)
            .bind(project.uid)
            .bind(project.namespace)
            .bind(project.name)
            .fetch_all(p)
            .await
            .map_err(db("reading credits"))?);
        Ok(rows
            .into_iter()
            .map(
                |(key, amount_nanos, currency, reason, kind, external_ref)| CreditEntry {
                    key,
                    namespace: project.namespace.to_string(),
                    project: project.name.to_string(),
                    project_uid: project.uid.to_string(),
                    kind: match kind.as_str() {
                        "payment" => CreditType::Payment,
                        "refund" => CreditType::Refund,
                        "adjustment" => CreditType::Adjustment,
                        _ => CreditType::Grant,
                    },
                    amount_nanos,
                    currency,
                    reason,
                    external_ref,
                },
            )
            .collect())
    }

    /// (credits, usage) of a Project in one currency, nano-units, all time. Amounts in other currencies
    /// are never added in. A Project is its UID (with its namespace and name; an empty UID reads the rows
    /// recorded before the ledger knew UIDs that no Project claimed yet).
    pub async fn balance(
        &self,
        project: &ProjectRef<'_>,
        currency: &str,
    ) -> Result<(i64, i64), LedgerError> {
        Ok(self
            .balances(project)
            .await?
            .into_iter()
            .find(|(c, _, _)| c == currency)
            .map(|(_, granted, used)| (granted, used))
            .unwrap_or((0, 0)))
    }

    /// (currency, credits, usage) of a Project for every currency it has amounts in, nano-units, all
    /// time, ordered by currency.
    pub async fn balances(
        &self,
        project: &ProjectRef<'_>,
    ) -> Result<Vec<(String, i64, i64)>, LedgerError> {
        // NB: CAST(... AS BIGINT) keeps PostgreSQL's SUM (NUMERIC) and SQLite's SUM (INTEGER) one type.
        let sql = "SELECT currency, CAST(SUM(granted) AS BIGINT), CAST(SUM(used) AS BIGINT) FROM ( \
                     SELECT currency, amount_nanos AS granted, 0 AS used FROM credits \
                       WHERE project_uid = $1 AND namespace = $2 AND project = $3 \
                     UNION ALL \
                     SELECT currency, 0 AS granted, amount_nanos AS used FROM usage_daily \
                       WHERE project_uid = $1 AND namespace = $2 AND project = $3 \
                   ) amounts GROUP BY currency ORDER BY currency";
        let rows: Vec<(String, i64, i64)> = on_pool!(self, p => sqlx::query_as(sql)
            .bind(project.uid)
            .bind(project.namespace)
            .bind(project.name)
            .fetch_all(p)
            .await
            .map_err(db("summing credits and usage"))?);
        Ok(rows)
    }

    /// The UID of the Project `namespace/name` the ledger knows most recently (the newest credit or usage
    /// recorded for that name); `Some("")` when it knows only rows from before it knew UIDs; `None`
    /// when it knows nothing of that name.
    pub async fn project_uid_of(
        &self,
        namespace: &str,
        project: &str,
    ) -> Result<Option<String>, LedgerError> {
        let sql = "SELECT project_uid FROM ( \
                     SELECT project_uid, created_at AS t FROM credits WHERE namespace = $1 AND project = $2 \
                     UNION ALL \
                     SELECT project_uid, recorded_at AS t FROM usage_events WHERE namespace = $1 AND project = $2 \
                   ) known ORDER BY (project_uid <> '') DESC, t DESC LIMIT 1";
        let uid: Option<String> = on_pool!(self, p => sqlx::query_scalar(sql)
            .bind(namespace)
            .bind(project)
            .fetch_optional(p)
            .await
            .map_err(db("looking up the project"))?);
        Ok(uid)
    }

    /// Gives the rows recorded for `namespace/name` before the ledger knew UIDs to the Project with
    /// `uid` (the Project of that name at the upgrade). Idempotent; returns how many rows moved.
    pub async fn claim_legacy(&self, project: &ProjectRef<'_>) -> Result<u64, LedgerError> {
        if project.uid.is_empty() {
            return Ok(0);
        }
        // NB: `WHERE true` lets SQLite parse an upsert from a SELECT.
        let fold = "INSERT INTO usage_daily (project_uid, namespace, project, day, meter, object_uid, currency, \
                    adjustment_for, object_kind, object_name, quantity, amount_nanos, vendor_amount_nanos, events) \
                    SELECT $1, namespace, project, day, meter, object_uid, currency, adjustment_for, object_kind, \
                      object_name, quantity, amount_nanos, vendor_amount_nanos, events FROM usage_daily \
                    WHERE project_uid = '' AND namespace = $2 AND project = $3 AND true \
                    ON CONFLICT (project_uid, namespace, project, day, meter, object_uid, currency, adjustment_for) \
                    DO UPDATE SET quantity = usage_daily.quantity + excluded.quantity, \
                      amount_nanos = usage_daily.amount_nanos + excluded.amount_nanos, \
                      vendor_amount_nanos = usage_daily.vendor_amount_nanos + excluded.vendor_amount_nanos, \
                      events = usage_daily.events + excluded.events";
        let drop =
            "DELETE FROM usage_daily WHERE project_uid = '' AND namespace = $1 AND project = $2";
        let credits = "UPDATE credits SET project_uid = $1 WHERE project_uid = '' AND namespace = $2 AND project = $3";
        let n = on_pool!(self, p => {
            let mut tx = p.begin().await.map_err(db("starting a transaction"))?;
            let moved = sqlx::query(fold)
                .bind(project.uid).bind(project.namespace).bind(project.name)
                .execute(&mut *tx).await.map_err(db("claiming usage"))?.rows_affected();
            sqlx::query(drop)
                .bind(project.namespace).bind(project.name)
                .execute(&mut *tx).await.map_err(db("claiming usage"))?;
            let c = sqlx::query(credits)
                .bind(project.uid).bind(project.namespace).bind(project.name)
                .execute(&mut *tx).await.map_err(db("claiming credits"))?.rows_affected();
            tx.commit().await.map_err(db("claiming legacy rows"))?;
            moved + c
        });
        Ok(n)
    }

    /// Closes a Project's month: usage that arrives later for it is booked on the next open month, as
    /// an adjustment naming this one. Returns false when it was closed already.
    pub async fn close_period(&self, project_uid: &str, period: &str) -> Result<bool, LedgerError> {
        let now = jiff::Timestamp::now().as_second();
        let sql = "INSERT INTO closed_periods (project_uid, period, closed_at) VALUES ($1, $2, $3) \
                   ON CONFLICT (project_uid, period) DO NOTHING";
        let n = on_pool!(self, p => sqlx::query(sql)
            .bind(project_uid)
            .bind(period)
            .bind(now)
            .execute(p)
            .await
            .map_err(db("closing a month"))?
            .rows_affected());
        Ok(n == 1)
    }

    /// Whether a Project's month is closed.
    pub async fn is_closed(&self, project_uid: &str, period: &str) -> Result<bool, LedgerError> {
        let sql = "SELECT COUNT(*) FROM closed_periods WHERE project_uid = $1 AND period = $2";
        let n: i64 = on_pool!(self, p => sqlx::query_scalar(sql)
            .bind(project_uid)
            .bind(period)
            .fetch_one(p)
            .await
            .map_err(db("reading closed months"))?);
        Ok(n > 0)
    }

    /// Usage of a Project booked in [from, to) (unix seconds; whole days), grouped. Usage of a closed
    /// month that arrived after it closed is booked in the next open month, on a line of its own whose key
    /// ends with `(adjustment for YYYY-MM)`.
    pub async fn usage(
        &self,
        project: &ProjectRef<'_>,
        from: i64,
        to: i64,
        by: GroupBy,
    ) -> Result<Vec<UsageRow>, LedgerError> {
        let base = match by {
            GroupBy::Meter => "meter",
            GroupBy::Object => "object_kind || '/' || object_name",
            GroupBy::Day => "CAST(day AS TEXT)",
        };
        let key = format!(
            "{base} || CASE WHEN adjustment_for = '' THEN '' ELSE ' (adjustment for ' || adjustment_for || ')' END"
        );
        let cast = if matches!(self, Self::Postgres(_)) {
            "::BIGINT"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {key} AS k, meter, SUM(quantity){cast} AS q, SUM(amount_nanos){cast} AS a, currency, \
             SUM(vendor_amount_nanos){cast} AS v \
             FROM usage_daily WHERE project_uid = $5 AND namespace = $1 AND project = $2 AND day >= $3 AND day < $4 \
             GROUP BY {key}, meter, currency ORDER BY 1, 2"
        );
        let rows: Vec<(String, String, i64, i64, String, i64)> = on_pool!(self, p => sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(project.namespace)
            .bind(project.name)
            .bind(from)
            .bind(to)
            .bind(project.uid)
            .fetch_all(p)
            .await
            .map_err(db("reading usage"))?
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
            .collect());
        Ok(rows
            .into_iter()
            .map(
                |(k, meter, quantity, amount_nanos, currency, cost_nanos)| UsageRow {
                    key: if by == GroupBy::Day { day_label(&k) } else { k },
                    meter,
                    quantity,
                    amount_nanos,
                    cost_nanos,
                    currency,
                },
            )
            .collect())
    }

    /// Number of raw usage events (for tests and benchmarks).
    pub async fn event_count(&self) -> Result<i64, LedgerError> {
        let sql = "SELECT COUNT(*) FROM usage_events";
        Ok(
            on_pool!(self, p => sqlx::query_scalar(sql).fetch_one(p).await.map_err(db("counting events"))?),
        )
    }
}

/// `<unix day>[ (adjustment for …)]` as `YYYY-MM-DD[ (adjustment for …)]`.
fn day_label(key: &str) -> String {
    let (unix, rest) = key.split_once(' ').map_or((key, ""), |(d, r)| (d, r));
    let day = unix
        .parse::<i64>()
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date().to_string())
        .unwrap_or_else(|| unix.to_string());
    if rest.is_empty() {
        day
    } else {
        format!("{day} {rest}")
    }
}

/// The months closed for each Project UID among `uids`.
fn closed_map(rows: Vec<(String, String)>) -> HashMap<String, BTreeSet<String>> {
    let mut m: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (uid, period) in rows {
        m.entry(uid).or_default().insert(period);
    }
    m
}

/// Where each event is booked (see [`periods`]).
fn bookings(events: &[UsageEvent], closed: &HashMap<String, BTreeSet<String>>) -> Vec<Booking> {
    let none = BTreeSet::new();
    events
        .iter()
        .map(|e| {
            let c = if e.project_uid.is_empty() {
                &none
            } else {
                closed.get(&e.project_uid).unwrap_or(&none)
            };
            periods::booking(e.window_start, c)
        })
        .collect()
}

fn uids(events: &[UsageEvent]) -> Vec<String> {
    let set: BTreeSet<&str> = events.iter().map(|e| e.project_uid.as_str()).collect();
    set.into_iter().map(str::to_string).collect()
}

/// One transaction per batch: the batch's Projects' closed months are read under a SHARE lock (a month
/// cannot close meanwhile: closing takes ROW EXCLUSIVE), then one statement inserts the new events and
/// folds exactly those into the daily roll-up, each on the day it is booked.
async fn record_pg(pool: &PgPool, events: &[UsageEvent]) -> Result<u64, LedgerError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match record_pg_once(pool, events).await {
            Ok(n) => return Ok(n),
            // Two writers folding into the same roll-up rows in one instant: retry the whole batch.
            Err(sqlx::Error::Database(e))
                if attempt < 5 && matches!(e.code().as_deref(), Some("40P01" | "40001")) =>
            {
                continue;
            }
            Err(e) => return Err(db("recording usage")(e)),
        }
    }
}

async fn record_pg_once(pool: &PgPool, events: &[UsageEvent]) -> Result<u64, sqlx::Error> {
    let now = jiff::Timestamp::now().as_second();
    let started = Instant::now();
    let mut tx = pool.begin().await?;
    sqlx::query("LOCK TABLE closed_periods IN SHARE MODE")
        .execute(&mut *tx)
        .await?;
    let closed: Vec<(String, String)> = sqlx::query_as(
        "SELECT project_uid, period FROM closed_periods WHERE project_uid = ANY($1)",
    )
    .bind(uids(events))
    .fetch_all(&mut *tx)
    .await?;
    let booked = bookings(events, &closed_map(closed));
    let col = |f: &dyn Fn(&UsageEvent) -> String| events.iter().map(f).collect::<Vec<String>>();
    let num = |f: &dyn Fn(&UsageEvent) -> i64| events.iter().map(f).collect::<Vec<i64>>();
    let sql = "WITH ins AS ( \
        INSERT INTO usage_events (idempotency_key, namespace, project, object_kind, object_name, object_uid, meter, \
            quantity, unit_price, price_quantity, currency, amount_nanos, window_start, window_end, recorded_at, attributes, \
            vendor_unit_price, vendor_amount_nanos, project_uid, adjustment_for) \
        SELECT k, ns, pr, ok, onm, ou, m, q, up, pq, c, a, ws, we, $15, at, vup, va, pu, adj \
        FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[], \
                    $9::text[], $10::bigint[], $11::text[], $12::bigint[], $13::bigint[], $14::bigint[], $16::text[], \
                    $17::text[], $18::bigint[], $19::text[], $20::text[], $21::bigint[]) \
             AS t(k, ns, pr, ok, onm, ou, m, q, up, pq, c, a, ws, we, at, vup, va, pu, adj, bd) \
        ON CONFLICT (idempotency_key) DO NOTHING \
        RETURNING idempotency_key, namespace, project, project_uid, meter, object_uid, object_kind, object_name, currency, \
            quantity, amount_nanos, vendor_amount_nanos, adjustment_for), \
      booked AS ( \
        SELECT ins.*, t.bd AS day FROM ins JOIN (SELECT DISTINCT ON (k) k, bd FROM UNNEST($1::text[], $21::bigint[]) AS u(k, bd)) t \
          ON t.k = ins.idempotency_key), \
      agg AS ( \
        SELECT project_uid, namespace, project, day, meter, object_uid, currency, adjustment_for, \
               MAX(object_kind) AS object_kind, MAX(object_name) AS object_name, \
               SUM(quantity)::BIGINT AS quantity, SUM(amount_nanos)::BIGINT AS amount_nanos, \
               SUM(vendor_amount_nanos)::BIGINT AS vendor_amount_nanos, COUNT(*) AS events \
        FROM booked GROUP BY 1, 2, 3, 4, 5, 6, 7, 8 ORDER BY 1, 2, 3, 4, 5, 6, 7, 8), \
      up AS ( \
        INSERT INTO usage_daily (project_uid, namespace, project, day, meter, object_uid, currency, adjustment_for, \
            object_kind, object_name, quantity, amount_nanos, vendor_amount_nanos, events) \
        SELECT project_uid, namespace, project, day, meter, object_uid, currency, adjustment_for, object_kind, object_name, \
            quantity, amount_nanos, vendor_amount_nanos, events FROM agg \
        ON CONFLICT (project_uid, namespace, project, day, meter, object_uid, currency, adjustment_for) DO UPDATE SET \
          quantity = usage_daily.quantity + excluded.quantity, \
          amount_nanos = usage_daily.amount_nanos + excluded.amount_nanos, \
          vendor_amount_nanos = usage_daily.vendor_amount_nanos + excluded.vendor_amount_nanos, \
          events = usage_daily.events + excluded.events) \
      SELECT COUNT(*) FROM ins";
    let n: i64 = sqlx::query_scalar(sql)
        .bind(col(&|e| e.key.clone()))
        .bind(col(&|e| e.namespace.clone()))
        .bind(col(&|e| e.project.clone()))
        .bind(col(&|e| e.object_kind.clone()))
        .bind(col(&|e| e.object_name.clone()))
        .bind(col(&|e| e.object_uid.clone()))
        .bind(col(&|e| e.meter.as_str().to_string()))
        .bind(num(&|e| e.quantity))
        .bind(col(&|e| e.unit_price.to_string()))
        .bind(num(&|e| e.price_quantity))
        .bind(col(&|e| e.currency.clone()))
        .bind(num(&|e| e.amount_nanos()))
        .bind(num(&|e| e.window_start))
        .bind(num(&|e| e.window_end))
        .bind(now)
        .bind(col(&|e| e.attributes.to_string()))
        .bind(col(&|e| e.vendor_unit_price.to_string()))
        .bind(num(&|e| e.vendor_amount_nanos()))
        .bind(col(&|e| e.project_uid.clone()))
        .bind(
            booked
                .iter()
                .map(|b| b.adjustment_for.clone())
                .collect::<Vec<_>>(),
        )
        .bind(booked.iter().map(|b| b.day).collect::<Vec<_>>())
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::trace!(rows = events.len(), inserted = n, elapsed = ?started.elapsed(), "ledger batch");
    Ok(u64::try_from(n).unwrap_or(0))
}

async fn record_sqlite(pool: &SqlitePool, events: &[UsageEvent]) -> Result<u64, LedgerError> {
    let now = jiff::Timestamp::now().as_second();
    // NB: SQLite has one writer at a time; the transaction takes the write lock at once (IMMEDIATE,
    // waiting up to the busy timeout), so reading the closed months in it keeps a close from slipping in
    // between, and a read lock never has to be upgraded (which SQLite refuses at once under contention).
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(db("starting a transaction"))?;
    let mut closed = Vec::new();
    for uid in uids(events) {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT project_uid, period FROM closed_periods WHERE project_uid = $1")
                .bind(uid)
                .fetch_all(&mut *tx)
                .await
                .map_err(db("reading closed months"))?;
        closed.extend(rows);
    }
    let booked = bookings(events, &closed_map(closed));
    let mut inserted = 0;
    for (e, b) in events.iter().zip(&booked) {
        let amount = e.amount_nanos();
        let cost = e.vendor_amount_nanos();
        let n = sqlx::query(
            "INSERT INTO usage_events (idempotency_key, namespace, project, object_kind, object_name, object_uid, meter, \
             quantity, unit_price, price_quantity, currency, amount_nanos, window_start, window_end, recorded_at, attributes, \
             vendor_unit_price, vendor_amount_nanos, project_uid, adjustment_for) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) \
             ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(&e.key)
        .bind(&e.namespace)
        .bind(&e.project)
        .bind(&e.object_kind)
        .bind(&e.object_name)
        .bind(&e.object_uid)
        .bind(e.meter.as_str())
        .bind(e.quantity)
        .bind(e.unit_price.to_string())
        .bind(e.price_quantity)
        .bind(&e.currency)
        .bind(amount)
        .bind(e.window_start)
        .bind(e.window_end)
        .bind(now)
        .bind(e.attributes.to_string())
        .bind(e.vendor_unit_price.to_string())
        .bind(cost)
        .bind(&e.project_uid)
        .bind(&b.adjustment_for)
        .execute(&mut *tx)
        .await
        .map_err(db("recording usage"))?
        .rows_affected();
        if n == 1 {
            inserted += 1;
            sqlx::query(
                "INSERT INTO usage_daily (project_uid, namespace, project, day, meter, object_uid, currency, adjustment_for, \
                 object_kind, object_name, quantity, amount_nanos, vendor_amount_nanos, events) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 1) \
                 ON CONFLICT (project_uid, namespace, project, day, meter, object_uid, currency, adjustment_for) DO UPDATE SET \
                   quantity = usage_daily.quantity + excluded.quantity, amount_nanos = usage_daily.amount_nanos + excluded.amount_nanos, \
                   vendor_amount_nanos = usage_daily.vendor_amount_nanos + excluded.vendor_amount_nanos, \
                   events = usage_daily.events + 1",
            )
            .bind(&e.project_uid)
            .bind(&e.namespace)
            .bind(&e.project)
            .bind(b.day)
            .bind(e.meter.as_str())
            .bind(&e.object_uid)
            .bind(&e.currency)
            .bind(&b.adjustment_for)
            .bind(&e.object_kind)
            .bind(&e.object_name)
            .bind(e.quantity)
            .bind(amount)
            .bind(cost)
            .execute(&mut *tx)
            .await
            .map_err(db("updating the daily roll-up"))?;
        }
    }
    tx.commit().await.map_err(db("committing usage"))?;
    Ok(inserted)
}
