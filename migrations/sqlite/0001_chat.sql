-- The chat service's schema on SQLite: users with balances, their dialogs,
-- and the messages of each dialog. Mirrors migrations/postgres/0001_chat.sql
-- (same tables, columns, constraints and indexes); see migrations/README.md.
--
-- Times are INTEGER milliseconds since the Unix epoch; money is INTEGER
-- micro-units (1 unit = 1 000 000). SQLite's INTEGER is 64-bit, i.e. BIGINT.
-- STRICT tables refuse values of the wrong type, as PostgreSQL does.

-- A user, keyed by the id from the token (never generated here).
-- `INTEGER PRIMARY KEY` (not BIGINT) makes the id the rowid: no second index.
CREATE TABLE users (
    id             INTEGER PRIMARY KEY,
    name           TEXT,
    balance_micros INTEGER NOT NULL,          -- may go negative after a charge
    created_at     INTEGER NOT NULL
) STRICT;

-- A conversation owned by one user. Ids are generated (the rowid) and only
-- grow, since rows are never deleted.
CREATE TABLE dialogs (
    id         INTEGER PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users (id),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL             -- bumped by every new message
) STRICT;

-- "The dialogs of this user."
CREATE INDEX dialogs_user_id ON dialogs (user_id);

-- One message of a dialog. Ids grow with insertion order, which is the order
-- of the history.
CREATE TABLE messages (
    id              INTEGER PRIMARY KEY,
    dialog_id       INTEGER NOT NULL REFERENCES dialogs (id),
    sender          TEXT    NOT NULL CHECK (sender IN ('user', 'assistant', 'operator')),
    sender_id       INTEGER,                -- the user's or operator's id; NULL for the assistant
    body            TEXT    NOT NULL,
    tokens_used     INTEGER NOT NULL DEFAULT 0 CHECK (tokens_used >= 0),
    idempotency_key TEXT,                   -- the client's retry key, if it sent one
    created_at      INTEGER NOT NULL
) STRICT;

-- History pages: "messages of this dialog below this id, newest first".
CREATE INDEX messages_dialog_id_id ON messages (dialog_id, id);

-- One message per idempotency key and sender. Unique indexes treat NULLs as
-- distinct, so a sender without an id (the assistant) needs its own index.
CREATE UNIQUE INDEX messages_idempotency_with_sender_id
    ON messages (sender, sender_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND sender_id IS NOT NULL;
CREATE UNIQUE INDEX messages_idempotency_without_sender_id
    ON messages (sender, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND sender_id IS NULL;
