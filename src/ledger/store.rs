//! The ledger's storage: PostgreSQL (production) or SQLite (embedded default), behind one [`Ledger`].
//! Queries are checked at run time (one code path per dialect) because the same statements must serve
//! both databases; migrations are embedded in the binary.

use std::time::{Duration, Instant};

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
// NB: the only dynamic SQL is `usage`'s grouping expression, picked from a fixed set (never user text).
use sqlx::{AssertSqlSafe, Row, migrate::Migrator};

use super::UsageEvent;

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
    /// Migrations failed.
    #[error("ledger migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

fn db(step: &'static str) -> impl FnOnce(sqlx::Error) -> LedgerError {
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

/// A connected ledger.
#[derive(Clone, Debug)]
pub enum Ledger {
    /// PostgreSQL.
    Postgres(PgPool),
    /// SQLite.
    Sqlite(SqlitePool),
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

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), LedgerError> {
        match self {
            Self::Postgres(p) => PG_MIGRATIONS.run(p).await?,
            Self::Sqlite(p) => SQLITE_MIGRATIONS.run(p).await?,
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

    /// Records a credit grant (positive) or deduction (negative). Idempotent on `key`; returns false when
    /// the key was already recorded.
    pub async fn credit(
        &self,
        key: &str,
        namespace: &str,
        project: &str,
        amount_nanos: i64,
        currency: &str,
        reason: &str,
    ) -> Result<bool, LedgerError> {
        let now = jiff::Timestamp::now().as_second();
        let sql = "INSERT INTO credits (idempotency_key, namespace, project, amount_nanos, currency, reason, created_at) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (idempotency_key) DO NOTHING";
        let n = on_pool!(self, p => sqlx::query(sql)
            .bind(key)
            .bind(namespace)
            .bind(project)
            .bind(amount_nanos)
            .bind(currency)
            .bind(reason)
            .bind(now)
            .execute(p)
            .await
            .map_err(db("recording a credit"))?
            .rows_affected());
        Ok(n == 1)
    }

    /// (credits granted, usage) of a project in one currency, nano-units, all time. Amounts in other
    /// currencies are never added in.
    pub async fn balance(
        &self,
        namespace: &str,
        project: &str,
        currency: &str,
    ) -> Result<(i64, i64), LedgerError> {
        Ok(self
            .balances(namespace, project)
            .await?
            .into_iter()
            .find(|(c, _, _)| c == currency)
            .map(|(_, granted, used)| (granted, used))
            .unwrap_or((0, 0)))
    }

    /// (currency, credits granted, usage) of a project for every currency it has amounts in, nano-units,
    /// all time, ordered by currency.
    pub async fn balances(
        &self,
        namespace: &str,
        project: &str,
    ) -> Result<Vec<(String, i64, i64)>, LedgerError> {
        // NB: CAST(... AS BIGINT) keeps PostgreSQL's SUM (NUMERIC) and SQLite's SUM (INTEGER) one type.
        let sql = "SELECT currency, CAST(SUM(granted) AS BIGINT), CAST(SUM(used) AS BIGINT) FROM ( \
                     SELECT currency, amount_nanos AS granted, 0 AS used FROM credits \
                       WHERE namespace = $1 AND project = $2 \
                     UNION ALL \
                     SELECT currency, 0 AS granted, amount_nanos AS used FROM usage_daily \
                       WHERE namespace = $1 AND project = $2 \
                   ) amounts GROUP BY currency ORDER BY currency";
        let rows: Vec<(String, i64, i64)> = on_pool!(self, p => sqlx::query_as(sql)
            .bind(namespace)
            .bind(project)
            .fetch_all(p)
            .await
            .map_err(db("summing credits and usage"))?);
        Ok(rows)
    }

    /// Whether anything (usage or credit) was ever recorded for the project.
    pub async fn knows(&self, namespace: &str, project: &str) -> Result<bool, LedgerError> {
        let sql = "SELECT (SELECT COUNT(*) FROM usage_daily WHERE namespace = $1 AND project = $2) \
                        + (SELECT COUNT(*) FROM credits WHERE namespace = $1 AND project = $2)";
        let n: i64 = on_pool!(self, p => sqlx::query_scalar(sql)
            .bind(namespace)
            .bind(project)
            .fetch_one(p)
            .await
            .map_err(db("looking up the project"))?);
        Ok(n > 0)
    }

    /// Usage of a project in [from, to) (unix seconds; whole days), grouped.
    pub async fn usage(
        &self,
        namespace: &str,
        project: &str,
        from: i64,
        to: i64,
        by: GroupBy,
    ) -> Result<Vec<UsageRow>, LedgerError> {
        let key = match by {
            GroupBy::Meter => "meter",
            GroupBy::Object => "object_kind || '/' || object_name",
            GroupBy::Day => "CAST(day AS TEXT)",
        };
        let cast = if matches!(self, Self::Postgres(_)) {
            "::BIGINT"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {key} AS k, meter, SUM(quantity){cast} AS q, SUM(amount_nanos){cast} AS a, currency, \
             SUM(vendor_amount_nanos){cast} AS v \
             FROM usage_daily WHERE namespace = $1 AND project = $2 AND day >= $3 AND day < $4 \
             GROUP BY {key}, meter, currency ORDER BY 1, 2"
        );
        let rows: Vec<(String, String, i64, i64, String, i64)> = on_pool!(self, p => sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(namespace)
            .bind(project)
            .bind(from)
            .bind(to)
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

fn day_label(unix: &str) -> String {
    unix.parse::<i64>()
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date().to_string())
        .unwrap_or_else(|| unix.to_string())
}

/// One statement per batch: insert the new events and fold exactly those into the daily roll-up.
async fn record_pg(pool: &PgPool, events: &[UsageEvent]) -> Result<u64, LedgerError> {
    let now = jiff::Timestamp::now().as_second();
    let col = |f: &dyn Fn(&UsageEvent) -> String| events.iter().map(f).collect::<Vec<String>>();
    let num = |f: &dyn Fn(&UsageEvent) -> i64| events.iter().map(f).collect::<Vec<i64>>();
    let sql = "WITH ins AS ( \
        INSERT INTO usage_events (idempotency_key, namespace, project, object_kind, object_name, object_uid, meter, \
            quantity, unit_price, price_quantity, currency, amount_nanos, window_start, window_end, recorded_at, attributes, \
            vendor_unit_price, vendor_amount_nanos) \
        SELECT k, ns, pr, ok, onm, ou, m, q, up, pq, c, a, ws, we, $15, at, vup, va \
        FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[], \
                    $9::text[], $10::bigint[], $11::text[], $12::bigint[], $13::bigint[], $14::bigint[], $16::text[], \
                    $17::text[], $18::bigint[]) \
             AS t(k, ns, pr, ok, onm, ou, m, q, up, pq, c, a, ws, we, at, vup, va) \
        ON CONFLICT (idempotency_key) DO NOTHING \
        RETURNING namespace, project, meter, object_uid, object_kind, object_name, currency, quantity, amount_nanos, \
            vendor_amount_nanos, window_start), \
      agg AS ( \
        SELECT namespace, project, window_start - (window_start % 86400) AS day, meter, object_uid, currency, \
               MAX(object_kind) AS object_kind, MAX(object_name) AS object_name, \
               SUM(quantity)::BIGINT AS quantity, SUM(amount_nanos)::BIGINT AS amount_nanos, \
               SUM(vendor_amount_nanos)::BIGINT AS vendor_amount_nanos, COUNT(*) AS events \
        FROM ins GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6), \
      up AS ( \
        INSERT INTO usage_daily (namespace, project, day, meter, object_uid, currency, object_kind, object_name, quantity, \
            amount_nanos, vendor_amount_nanos, events) \
        SELECT namespace, project, day, meter, object_uid, currency, object_kind, object_name, quantity, amount_nanos, \
            vendor_amount_nanos, events FROM agg \
        ON CONFLICT (namespace, project, day, meter, object_uid, currency) DO UPDATE SET \
          quantity = usage_daily.quantity + excluded.quantity, \
          amount_nanos = usage_daily.amount_nanos + excluded.amount_nanos, \
          vendor_amount_nanos = usage_daily.vendor_amount_nanos + excluded.vendor_amount_nanos, \
          events = usage_daily.events + excluded.events) \
      SELECT COUNT(*) FROM ins";
    let mut attempt = 0;
    loop {
        attempt += 1;
        let started = Instant::now();
        let r: Result<i64, sqlx::Error> = sqlx::query_scalar(sql)
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
            .fetch_one(pool)
            .await;
        match r {
            Ok(n) => {
                tracing::trace!(rows = events.len(), inserted = n, elapsed = ?started.elapsed(), "ledger batch");
                return Ok(u64::try_from(n).unwrap_or(0));
            }
            // Two writers folding into the same roll-up rows in one instant: retry the whole statement.
            Err(sqlx::Error::Database(e))
                if attempt < 5 && matches!(e.code().as_deref(), Some("40P01" | "40001")) =>
            {
                continue;
            }
            Err(e) => return Err(db("recording usage")(e)),
        }
    }
}

async fn record_sqlite(pool: &SqlitePool, events: &[UsageEvent]) -> Result<u64, LedgerError> {
    let now = jiff::Timestamp::now().as_second();
    let mut tx = pool.begin().await.map_err(db("starting a transaction"))?;
    let mut inserted = 0;
    for e in events {
        let amount = e.amount_nanos();
        let cost = e.vendor_amount_nanos();
        let n = sqlx::query(
            "INSERT INTO usage_events (idempotency_key, namespace, project, object_kind, object_name, object_uid, meter, \
             quantity, unit_price, price_quantity, currency, amount_nanos, window_start, window_end, recorded_at, attributes, \
             vendor_unit_price, vendor_amount_nanos) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
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
        .execute(&mut *tx)
        .await
        .map_err(db("recording usage"))?
        .rows_affected();
        if n == 1 {
            inserted += 1;
            sqlx::query(
                "INSERT INTO usage_daily (namespace, project, day, meter, object_uid, currency, object_kind, object_name, quantity, \
                 amount_nanos, vendor_amount_nanos, events) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 1) \
                 ON CONFLICT (namespace, project, day, meter, object_uid, currency) DO UPDATE SET \
                   quantity = usage_daily.quantity + excluded.quantity, amount_nanos = usage_daily.amount_nanos + excluded.amount_nanos, \
                   vendor_amount_nanos = usage_daily.vendor_amount_nanos + excluded.vendor_amount_nanos, \
                   events = usage_daily.events + 1",
            )
            .bind(&e.namespace)
            .bind(&e.project)
            .bind(e.window_start - e.window_start.rem_euclid(86400))
            .bind(e.meter.as_str())
            .bind(&e.object_uid)
            .bind(&e.currency)
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
