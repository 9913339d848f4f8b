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
    quantity        BIGINT NOT NULL,
    unit_price      TEXT   NOT NULL,             -- exact decimal, per price_quantity units
    price_quantity  BIGINT NOT NULL,
    currency        TEXT   NOT NULL,
    amount_nanos    BIGINT NOT NULL,
    window_start    BIGINT NOT NULL,             -- unix seconds, UTC
    window_end      BIGINT NOT NULL,
    recorded_at     BIGINT NOT NULL,
    attributes      TEXT   NOT NULL DEFAULT '{}'
);

-- Daily roll-up maintained in the same statement as the insert, so reports never scan raw events.
CREATE TABLE usage_daily (
    namespace    TEXT   NOT NULL,
    project      TEXT   NOT NULL,
    meter        TEXT   NOT NULL,
    object_uid   TEXT   NOT NULL,
    currency     TEXT   NOT NULL,
    day          BIGINT NOT NULL,                -- unix seconds of 00:00 UTC
    object_kind  TEXT   NOT NULL,
    object_name  TEXT   NOT NULL,
    quantity     BIGINT NOT NULL,
    amount_nanos BIGINT NOT NULL,
    events       BIGINT NOT NULL,
    PRIMARY KEY (namespace, project, day, meter, object_uid, currency)
);

CREATE TABLE credits (
    idempotency_key TEXT PRIMARY KEY,
    namespace       TEXT   NOT NULL,
    project         TEXT   NOT NULL,
    amount_nanos    BIGINT NOT NULL,             -- grants positive, deductions negative
    currency        TEXT   NOT NULL,
    reason          TEXT   NOT NULL,
    created_at      BIGINT NOT NULL
);
CREATE INDEX credits_project ON credits (namespace, project);
