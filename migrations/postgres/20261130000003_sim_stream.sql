-- Usage records pushed by 1NCE's Data Streamer, each kept once (1NCE re-sends until it gets 200).
-- A SIM's day is metered at the larger of the streamed sum and the polled daily figure, so the two
-- sources never count a byte twice.
CREATE TABLE stream_records (
    record_id   TEXT PRIMARY KEY,
    iccid       TEXT NOT NULL,
    day         TEXT NOT NULL,
    meter       TEXT NOT NULL,
    quantity    BIGINT NOT NULL,
    received_at BIGINT NOT NULL
);
CREATE INDEX stream_records_iccid_day ON stream_records (iccid, day);
