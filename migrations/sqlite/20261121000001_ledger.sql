-- Usage ledger: one row per billable window, keyed by a deterministic idempotency key.
-- Money is exact: amounts in integer nano-units (1e-9 of the currency), prices as decimal text.
CREATE TABLE usage_events (
    idempotency_key TEXT PRIMARY KEY,
    namespace       TEXT   NOT NULL,
    project         TEXT   NOT NULL DEFAULT '',  -- '' = not in a project
    object_kind     TEXT   NOT NULL,
    object_name     TEXT   NOT NULL,
    object_uid      TEXT   NOT NULL,
    meter           TEXT   NOT NULL,
    quantity        INTEGER NOT NULL,
    unit_price      TEXT   NOT NULL,             -- exact decimal, per price_quantity units
    price_quantity  INTEGER NOT NULL,
    currency        TEXT   NOT NULL,
    amount_nanos    INTEGER NOT NULL,
    window_start    INTEGER NOT NULL,             -- unix seconds, UTC
    window_end      INTEGER NOT NULL,
    recorded_at     INTEGER NOT NULL,
    attributes      TEXT   NOT NULL DEFAULT '{}'
);

-- Daily roll-up maintained in the same statement as the insert, so reports never scan raw events.
CREATE TABLE usage_daily (
    namespace    TEXT   NOT NULL,
    project      TEXT   NOT NULL,
    meter        TEXT   NOT NULL,
    object_uid   TEXT   NOT NULL,
    currency     TEXT   NOT NULL,
    day          INTEGER NOT NULL,                -- unix seconds of 00:00 UTC
    object_kind  TEXT   NOT NULL,
    object_name  TEXT   NOT NULL,
    quantity     INTEGER NOT NULL,
    amount_nanos INTEGER NOT NULL,
    events       INTEGER NOT NULL,
    PRIMARY KEY (namespace, project, day, meter, object_uid, currency)
);

CREATE TABLE credits (
    idempotency_key TEXT PRIMARY KEY,
    namespace       TEXT   NOT NULL,
    project         TEXT   NOT NULL,
    amount_nanos    INTEGER NOT NULL,             -- grants positive, deductions negative
    currency        TEXT   NOT NULL,
    reason          TEXT   NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX credits_project ON credits (namespace, project);
