-- Stripe webhook events, each handled once by its ID (Stripe delivers at least once, in any order).
CREATE TABLE stripe_events (
    event_id    TEXT PRIMARY KEY,
    event_type  TEXT NOT NULL,
    received_at BIGINT NOT NULL
);
