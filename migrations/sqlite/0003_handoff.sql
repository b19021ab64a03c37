-- The handoff service's schema on SQLite: dialogs handed to a human operator,
-- from the request through the queue and the assignment to the end. Mirrors
-- migrations/postgres/0003_handoff.sql (same table, columns, constraints and
-- indexes); see migrations/README.md.
--
-- The handoff service owns this table; it shares the database (and this
-- folder's numbering) with the chat and notification services, whose tables
-- it never touches — hence no foreign key to `dialogs`.
-- Times are INTEGER milliseconds since the Unix epoch (64-bit, i.e. BIGINT),
-- set by the service.

-- One request for a human operator, and what became of it. A row is written
-- before any event about it goes out, and the service reloads the queued and
-- assigned rows when it starts, so a restart loses no handoff.
--
-- States: `queued` (waiting; no operator) → `assigned` (an operator holds it)
-- → `completed`; `assigned` → `queued` again when it is taken back (the
-- operator went offline or never replied); `queued` → `returned` when it
-- waited too long and went back to the assistant; `queued` → `completed` when
-- an admin or service ends it before anyone took it.
CREATE TABLE handoffs (
    id             INTEGER PRIMARY KEY,
    dialog_id      INTEGER NOT NULL,       -- the chat service's dialog
    user_id        INTEGER NOT NULL,       -- the dialog's owner
    operator_id    INTEGER,                -- the operator holding it; NULL unless assigned (or completed by them)
    operator_name  TEXT,                   -- their display name at assignment
    priority       TEXT    NOT NULL CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    reason         TEXT    NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('queued', 'assigned', 'completed', 'returned')),
    requested_at   INTEGER NOT NULL,       -- when it was asked for; FIFO order inside a priority
    requeued_at    INTEGER,                -- last time it was taken back: it then goes to the front of its priority
    assigned_at    INTEGER,                -- when the current operator got it
    first_reply_at INTEGER,                -- when that operator first replied (stops the no-reply timer)
    completed_at   INTEGER,                -- when it was completed or returned
    resolution     TEXT,                   -- the operator's words, or `returned_to_assistant`
    -- An assigned handoff has an operator and a time; a queued one neither;
    -- only finished handoffs have an end.
    CHECK (state <> 'assigned' OR (operator_id IS NOT NULL AND assigned_at IS NOT NULL)),
    CHECK (state <> 'queued' OR (operator_id IS NULL AND assigned_at IS NULL AND first_reply_at IS NULL)),
    CHECK ((completed_at IS NOT NULL) = (state IN ('completed', 'returned')))
) STRICT;

-- A dialog has at most one active (queued or assigned) handoff; a second
-- request is refused (`handoff_exists`) even from another replica. Also
-- serves the reload at start-up ("every queued and assigned handoff").
CREATE UNIQUE INDEX handoffs_one_active_per_dialog
    ON handoffs (dialog_id) WHERE state IN ('queued', 'assigned');

-- The average handling time: "the last 20 completed handoffs, newest first".
CREATE INDEX handoffs_completed_at
    ON handoffs (completed_at) WHERE state = 'completed';
