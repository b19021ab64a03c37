-- The presence service's schema on PostgreSQL: the status each operator
-- chose. Mirrors migrations/sqlite/0004_presence.sql (same table, columns and
-- constraints); see migrations/README.md.
--
-- Only the chosen status is stored: connections, gateway leases and loads
-- are rebuilt from the gateways and the handoff service after a restart, but
-- an operator who chose `away` must not come back `available` (issue 9).
-- Times are BIGINT milliseconds since the Unix epoch.

-- One row per operator who ever chose a status; the latest choice wins
-- (`chatai.v1.Presence/SetStatus` upserts). Read whole at start: one row per
-- operator, a few thousand at most, so no index beyond the key.
CREATE TABLE operator_statuses (
    operator_id   BIGINT PRIMARY KEY,
    chosen_status TEXT   NOT NULL CHECK (chosen_status IN ('available', 'busy', 'away')),
    updated_at    BIGINT NOT NULL          -- when it was chosen, by the presence service's clock
);
