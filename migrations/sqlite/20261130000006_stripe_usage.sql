-- Usage reported to Stripe as billing meter events: one row per ledger usage row, written before the
-- call ('sending') and marked 'sent' after Stripe's answer. Stripe deduplicates an identifier for about
-- 24 hours; this table is the long-term record that a row was reported.
CREATE TABLE stripe_usage_reports (
    usage_key    TEXT PRIMARY KEY,
    project_uid  TEXT   NOT NULL,
    meter        TEXT   NOT NULL,
    quantity     BIGINT NOT NULL,
    value        TEXT   NOT NULL,
    customer     TEXT   NOT NULL,
    event_name   TEXT   NOT NULL,
    identifier   TEXT   NOT NULL,
    event_time   BIGINT NOT NULL,
    state        TEXT   NOT NULL,
    attempted_at BIGINT NOT NULL,
    sent_at      BIGINT
);
CREATE INDEX stripe_usage_reports_project ON stripe_usage_reports (project_uid, meter, state);
