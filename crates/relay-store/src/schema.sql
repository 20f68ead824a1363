-- relay's embedded store. One row per event (immutable), one per delivery (mutable state and the
-- work queue), an append-only attempt history, and dead letters.
CREATE TABLE IF NOT EXISTS events (
    id          TEXT PRIMARY KEY,
    payload     TEXT NOT NULL,      -- the event as received, compact JSON
    received_at INTEGER NOT NULL    -- unix ms
);

-- The console's event list, newest first, paged by (received_at, id).
CREATE INDEX IF NOT EXISTS events_received ON events(received_at, id);

CREATE TABLE IF NOT EXISTS deliveries (
    event_id     TEXT PRIMARY KEY REFERENCES events(id),
    status       TEXT NOT NULL,     -- queued | leased | delivered | dead
    attempts     INTEGER NOT NULL DEFAULT 0,  -- counted toward max attempts
    tries        INTEGER NOT NULL DEFAULT 0,  -- every attempt, rate-limited ones too
    due_at       INTEGER NOT NULL,  -- queued: next attempt; leased: lease expiry
    lease        INTEGER,           -- token of the current lease
    next_trigger TEXT NOT NULL DEFAULT 'scheduled',
    last_error   TEXT,
    updated_at   INTEGER NOT NULL,
    delivered_at INTEGER
);

-- The work queue: only waiting or leased rows, ordered by when they are due.
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(due_at)
    WHERE status IN ('queued', 'leased');
CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries(status, updated_at);

CREATE TABLE IF NOT EXISTS attempts (
    event_id    TEXT NOT NULL,
    n           INTEGER NOT NULL,   -- 1-based, per event
    trigger     TEXT NOT NULL,      -- scheduled | redrive
    started_at  INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    outcome     TEXT NOT NULL,      -- delivered | rate_limited | transient | permanent
    http_status INTEGER,
    detail      TEXT NOT NULL,
    PRIMARY KEY (event_id, n)
);

CREATE TABLE IF NOT EXISTS dead_letters (
    event_id      TEXT PRIMARY KEY,
    reason        TEXT NOT NULL,
    attempts      INTEGER NOT NULL,
    last_response TEXT,
    dead_at       INTEGER NOT NULL
);

-- Small facts a running relay publishes for other processes (the dispatcher's current rate).
CREATE TABLE IF NOT EXISTS meta (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,       -- JSON
    updated_at INTEGER NOT NULL
);

-- Events answered 2xx before their journal flush completed (the `deadline` durability policy):
-- when, and when the flush landed. Removed with the event.
CREATE TABLE IF NOT EXISTS early_acks (
    event_id   TEXT PRIMARY KEY,
    acked_at   INTEGER NOT NULL,
    flushed_at INTEGER
);
