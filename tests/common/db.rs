//! A fresh ledger database per test: a new PostgreSQL database on the server `scripts/test` started
//! (`QM_TEST_DATABASE_URL`, its admin URL), migrated. Without that variable the PostgreSQL half is
//! skipped loudly, and fails when `CI` is set (CI always runs with PostgreSQL).

use quartermaster::ledger::Ledger;

/// A migrated ledger on a new PostgreSQL database, and its URL; `None` (after a loud message) when no
/// PostgreSQL was given outside CI.
pub async fn fresh_postgres() -> Option<(Ledger, String)> {
    let Ok(admin) = std::env::var("QM_TEST_DATABASE_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "QM_TEST_DATABASE_URL is not set and CI is set: CI always runs with PostgreSQL (scripts/test)"
        );
        eprintln!(
            "\n*** SKIPPED the PostgreSQL half: QM_TEST_DATABASE_URL is not set (scripts/test sets it) ***\n"
        );
        return None;
    };
    let name = format!("qm_{:08x}", rand::random::<u32>());
    let l = Ledger::connect(Some(&admin), std::path::Path::new(""))
        .await
        .unwrap();
    if let Ledger::Postgres(p) = &l {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(p)
            .await
            .unwrap();
    }
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    let l = Ledger::connect(Some(&url), std::path::Path::new(""))
        .await
        .unwrap();
    l.migrate().await.unwrap();
    Some((l, url))
}

/// A migrated SQLite ledger in `dir`, and its URL.
pub async fn sqlite(dir: &tempfile::TempDir) -> (Ledger, String) {
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let l = Ledger::connect(Some(&url), std::path::Path::new(""))
        .await
        .unwrap();
    l.migrate().await.unwrap();
    (l, url)
}

/// PostgreSQL when the test script provides one, else SQLite in `dir`.
pub async fn fresh_ledger(dir: &tempfile::TempDir) -> (Ledger, String) {
    match fresh_postgres().await {
        Some(pg) => pg,
        None => sqlite(dir).await,
    }
}
