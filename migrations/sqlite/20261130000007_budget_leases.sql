-- TokenBudget periods: the allocation of one budget's period and how much of it the gateway replicas
-- hold (`granted`: what they have served plus the slices they still hold). A replica takes a slice with
-- a guarded update (granted never passes allocation, bar Throttle's billed overage) and returns what it
-- did not use; the hot path stays in each replica's memory.
CREATE TABLE budget_periods (
    budget_uid   TEXT   NOT NULL,
    period_start BIGINT NOT NULL,
    allocation   BIGINT NOT NULL,
    granted      BIGINT NOT NULL,
    overage      BIGINT NOT NULL DEFAULT 0,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (budget_uid, period_start)
);
CREATE INDEX budget_periods_updated ON budget_periods (updated_at);
-- A budget's consumed figure is read from its usage rows.
CREATE INDEX usage_events_object_window ON usage_events (object_uid, window_start);
-- When a gateway last wrote usage of a budget: the controller refreshes the status of budgets with
-- activity since it last looked (one query per interval), not of all of them.
CREATE TABLE budget_activity (
    budget_uid TEXT PRIMARY KEY,
    at         BIGINT NOT NULL
);
CREATE INDEX budget_activity_at ON budget_activity (at);
