-- The notification service's schema on SQLite: the history of gateway
-- connections, the raw material of connection analytics. Mirrors
-- migrations/postgres/0002_notification.sql (same table, columns, constraints
-- and index); see migrations/README.md.
--
-- The notification service owns this table; it shares the database (and this
-- folder's numbering) with the chat service, whose tables it never touches.
-- Times are INTEGER milliseconds since the Unix epoch (64-bit, i.e. BIGINT).

-- One connection opened or closed at a gateway, as the gateway reported it
-- (`chatai.v1.Notification/RecordConnections`). Append-only. Ids grow with
-- insertion order.
CREATE TABLE connection_events (
    id            INTEGER PRIMARY KEY,
    connection_id TEXT    NOT NULL,        -- the gateway's name for the connection, e.g. `gw1:42`
    gateway_id    TEXT    NOT NULL,
    role          TEXT    NOT NULL CHECK (role IN ('user', 'operator', 'admin')),
    principal_id  INTEGER NOT NULL,        -- the user's, operator's or admin's id
    kind          TEXT    NOT NULL CHECK (kind IN ('connect', 'disconnect')),
    at_ms         INTEGER NOT NULL,        -- when it happened, by the gateway's clock
    duration_ms   INTEGER CHECK (duration_ms >= 0),                -- disconnects: how long it was open
    close_code    INTEGER CHECK (close_code BETWEEN 1 AND 65535),  -- disconnects: NULL when none was sent
    -- Only a disconnect has a duration or a close code.
    CHECK (kind = 'disconnect' OR (duration_ms IS NULL AND close_code IS NULL))
) STRICT;

-- "Connection events since this time, oldest first" (the store's read, and
-- any time-window analytics or retention job after it).
CREATE INDEX connection_events_at_ms ON connection_events (at_ms);
