//! The ledger's record of snapshots released to the platform (a VirtualMachineSnapshot deleted with
//! `deletionPolicy: Retain`): the vendor goes on charging for them, so each is followed, per account,
//! until the vendor no longer holds it (see `controller::virtual_machine_snapshot::released`). One row
//! per released object, written with the release; `metered_until` is where its vendor cost has been
//! recorded up to. When the vendor no longer holds it, `gone_at` is written before the last window (so
//! a crash cannot move the end of its cost), and `closed_at` once that window is recorded.

use super::store::{Ledger, LedgerError, db, on_pool};

/// A snapshot released to the platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleasedSnapshot {
    /// The VirtualMachineSnapshot's UID (its mark at the vendor is derived from it).
    pub object_uid: String,
    /// The account's ProviderConfig UID.
    pub provider_config_uid: String,
    /// The ProviderConfig's name at the release.
    pub provider_config: String,
    /// The object's namespace.
    pub namespace: String,
    /// The object's name.
    pub name: String,
    /// The vendor's snapshot ID.
    pub snapshot_id: String,
    /// The server it was taken of.
    pub server_id: String,
    /// Its size in megabytes as last reported (0: the vendor reports none).
    pub size_mb: i64,
    /// Where the platform's cost starts: the tenant was billed until then (Unix seconds).
    pub released_at: i64,
    /// Where its vendor cost has been recorded up to (Unix seconds).
    pub metered_until: i64,
    /// When the vendor was found not to hold it any more: the end of its cost.
    pub gone_at: Option<i64>,
}

type Row = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    Option<i64>,
);

/// The columns a [`Row`] reads, in its order.
macro_rules! columns {
    () => {
        "object_uid, provider_config_uid, provider_config, namespace, name, snapshot_id, server_id, \
         size_mb, released_at, metered_until, gone_at"
    };
}

fn from_row(r: Row) -> ReleasedSnapshot {
    ReleasedSnapshot {
        object_uid: r.0,
        provider_config_uid: r.1,
        provider_config: r.2,
        namespace: r.3,
        name: r.4,
        snapshot_id: r.5,
        server_id: r.6,
        size_mb: r.7,
        released_at: r.8,
        metered_until: r.9,
        gone_at: r.10,
    }
}

impl Ledger {
    /// Records the release of `r` (its metering starts at `released_at`); a retry records nothing more.
    pub async fn open_release(&self, r: &ReleasedSnapshot) -> Result<(), LedgerError> {
        let sql = "INSERT INTO released_snapshots (object_uid, provider_config_uid, provider_config, \
                   namespace, name, snapshot_id, server_id, size_mb, released_at, metered_until) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (object_uid) DO NOTHING";
        on_pool!(self, p => sqlx::query(sql)
            .bind(&r.object_uid)
            .bind(&r.provider_config_uid)
            .bind(&r.provider_config)
            .bind(&r.namespace)
            .bind(&r.name)
            .bind(&r.snapshot_id)
            .bind(&r.server_id)
            .bind(r.size_mb)
            .bind(r.released_at)
            .bind(r.metered_until)
            .execute(p)
            .await
            .map_err(db("recording a released snapshot"))?
            .rows_affected());
        Ok(())
    }

    /// The release of object `object_uid`, if it was released (open or closed).
    pub async fn release_of(
        &self,
        object_uid: &str,
    ) -> Result<Option<ReleasedSnapshot>, LedgerError> {
        let sql = concat!(
            "SELECT ",
            columns!(),
            " FROM released_snapshots WHERE object_uid = $1"
        );
        let row: Option<Row> = on_pool!(self, p => sqlx::query_as(sql)
            .bind(object_uid)
            .fetch_optional(p)
            .await
            .map_err(db("reading a released snapshot"))?);
        Ok(row.map(from_row))
    }

    /// The releases in account `provider_config_uid` not closed yet, oldest release first.
    pub async fn open_releases(
        &self,
        provider_config_uid: &str,
    ) -> Result<Vec<ReleasedSnapshot>, LedgerError> {
        let sql = concat!(
            "SELECT ",
            columns!(),
            " FROM released_snapshots WHERE provider_config_uid = $1 AND closed_at IS NULL \
             ORDER BY released_at, object_uid"
        );
        let rows: Vec<Row> = on_pool!(self, p => sqlx::query_as(sql)
            .bind(provider_config_uid)
            .fetch_all(p)
            .await
            .map_err(db("reading released snapshots"))?);
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// Records that the vendor no longer holds released snapshot `object_uid` as of `at`; a time
    /// recorded before stands. Returns the time that stands.
    pub async fn mark_gone(&self, object_uid: &str, at: i64) -> Result<i64, LedgerError> {
        let sql = "UPDATE released_snapshots SET gone_at = COALESCE(gone_at, $2) \
                   WHERE object_uid = $1 AND closed_at IS NULL";
        on_pool!(self, p => sqlx::query(sql)
            .bind(object_uid)
            .bind(at)
            .execute(p)
            .await
            .map_err(db("marking a released snapshot gone"))?
            .rows_affected());
        Ok(self
            .release_of(object_uid)
            .await?
            .and_then(|r| r.gone_at)
            .unwrap_or(at))
    }

    /// Moves released snapshot `object_uid`'s metering on to `metered_until` (never back) with its
    /// latest `size_mb`, and closes it (`closed_at`) once its last window is recorded.
    pub async fn advance_release(
        &self,
        object_uid: &str,
        metered_until: i64,
        size_mb: i64,
        closed_at: Option<i64>,
    ) -> Result<(), LedgerError> {
        let sql = "UPDATE released_snapshots SET \
                   metered_until = CASE WHEN metered_until > $2 THEN metered_until ELSE $2 END, \
                   size_mb = $3, closed_at = $4 WHERE object_uid = $1 AND closed_at IS NULL";
        on_pool!(self, p => sqlx::query(sql)
            .bind(object_uid)
            .bind(metered_until)
            .bind(size_mb)
            .bind(closed_at)
            .execute(p)
            .await
            .map_err(db("advancing a released snapshot"))?
            .rows_affected());
        Ok(())
    }
}
