-- Per-key rate limits held across gateway replicas: one token bucket per budget, key and limit
-- (`rpm`, `tpm`), refilled continuously at its capacity a minute. `level_milli` is what is left in it
-- (thousandths of a request or token) as of `at_ms`; replicas take units from it in slices with a
-- guarded update and give back what they did not use, as they do with budget periods.
CREATE TABLE rate_buckets (
    budget_uid  TEXT   NOT NULL,
    key_name    TEXT   NOT NULL,
    lim         TEXT   NOT NULL,
    level_milli BIGINT NOT NULL,
    at_ms       BIGINT NOT NULL,
    PRIMARY KEY (budget_uid, key_name, lim)
);
CREATE INDEX rate_buckets_at ON rate_buckets (at_ms);
