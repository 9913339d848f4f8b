-- Tenants are known by UID: a Project deleted and recreated under the same name starts empty.
-- Rows recorded before this migration have project_uid '' until their Project claims them (the first
-- reconcile of the Project of that namespace and name after the upgrade).
-- A month of a Project can be closed (closed_periods): usage that arrives later for it is booked on the
-- first day of the next open month as an adjustment (adjustment_for names the month it belongs to), so a
-- closed month's totals never change.
-- Credit entries carry a type (grant, payment, refund, adjustment) and an external reference.
ALTER TABLE usage_events ADD COLUMN project_uid TEXT NOT NULL DEFAULT '';
ALTER TABLE usage_events ADD COLUMN adjustment_for TEXT NOT NULL DEFAULT '';

CREATE TABLE usage_daily_v2 (
    namespace           TEXT   NOT NULL,
    project             TEXT   NOT NULL,
    project_uid         TEXT   NOT NULL,
    meter               TEXT   NOT NULL,
    object_uid          TEXT   NOT NULL,
    currency            TEXT   NOT NULL,
    day                 BIGINT NOT NULL,          -- unix seconds of 00:00 UTC of the day it is booked on
    adjustment_for      TEXT   NOT NULL,        -- '' or the closed month (YYYY-MM) the usage belongs to
    object_kind         TEXT   NOT NULL,
    object_name         TEXT   NOT NULL,
    quantity            BIGINT NOT NULL,
    amount_nanos        BIGINT NOT NULL,
    vendor_amount_nanos BIGINT NOT NULL,
    events              BIGINT NOT NULL,
    PRIMARY KEY (project_uid, namespace, project, day, meter, object_uid, currency, adjustment_for)
);
INSERT INTO usage_daily_v2 (namespace, project, project_uid, meter, object_uid, currency, day, adjustment_for,
    object_kind, object_name, quantity, amount_nanos, vendor_amount_nanos, events)
  SELECT namespace, project, '', meter, object_uid, currency, day, '', object_kind, object_name, quantity,
    amount_nanos, vendor_amount_nanos, events FROM usage_daily;
DROP TABLE usage_daily;
ALTER TABLE usage_daily_v2 RENAME TO usage_daily;
CREATE INDEX usage_daily_legacy ON usage_daily (namespace, project) WHERE project_uid = '';

ALTER TABLE credits ADD COLUMN project_uid TEXT NOT NULL DEFAULT '';
ALTER TABLE credits ADD COLUMN entry_type TEXT NOT NULL DEFAULT 'grant';
ALTER TABLE credits ADD COLUMN external_ref TEXT NOT NULL DEFAULT '';
CREATE INDEX credits_project_uid ON credits (project_uid);

CREATE TABLE closed_periods (
    project_uid TEXT   NOT NULL,
    period      TEXT   NOT NULL,                -- YYYY-MM
    closed_at   BIGINT NOT NULL,
    PRIMARY KEY (project_uid, period)
);
