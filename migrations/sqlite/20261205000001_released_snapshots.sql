-- Snapshots released to the platform (a VirtualMachineSnapshot deleted with `deletionPolicy: Retain`):
-- their storage goes on costing the account. One row per released object, written with its release;
-- a per-account round asks the vendor whether the snapshot is still there and records its storage as
-- vendor cost (usage rows of the ProviderConfig) up to `metered_until`. Once the vendor no longer holds
-- it, `gone_at` is written first (the end of its cost, so a crash cannot move it), then the last window,
-- then `closed_at`.
CREATE TABLE released_snapshots (
    object_uid          TEXT   PRIMARY KEY,   -- the VirtualMachineSnapshot's UID (its mark)
    provider_config_uid TEXT   NOT NULL,
    provider_config     TEXT   NOT NULL,      -- its name at the release
    namespace           TEXT   NOT NULL,
    name                TEXT   NOT NULL,
    snapshot_id         TEXT   NOT NULL,
    server_id           TEXT   NOT NULL,
    size_mb             BIGINT NOT NULL,      -- 0: the vendor reported no size
    released_at         BIGINT NOT NULL,      -- the platform's cost starts here (the tenant paid until then)
    metered_until       BIGINT NOT NULL,
    gone_at             BIGINT,               -- when the vendor was found not to hold it any more
    closed_at           BIGINT                -- when its last window was recorded
);
CREATE INDEX released_snapshots_open ON released_snapshots (provider_config_uid) WHERE closed_at IS NULL;
