-- SMS from devices, forwarded by 1NCE (which re-sends until it gets 200): each kept once by its ID.
CREATE TABLE inbound_sms (
    message_id  TEXT PRIMARY KEY,
    iccid       TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    submitted   TEXT NOT NULL,
    payload     TEXT NOT NULL
);
CREATE INDEX inbound_sms_iccid ON inbound_sms (iccid, received_at);
