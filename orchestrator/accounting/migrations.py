"""The accounting database's schema as numbered steps; a database at version n runs n+1.. in order.

A released step is never edited: a change to the schema is a new step appended here, with a test
that upgrades a database written at every earlier version and keeps its rows.
"""

from __future__ import annotations

# Version 1: owners and their keys. `meta.keys_version` grows with every change to a key, so
# that the gateway notices a new or revoked key without re-reading the table each request.
V1 = """
CREATE TABLE owners (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('student', 'service')),
    created_at REAL NOT NULL
);
CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES owners(name),
    label TEXT NOT NULL DEFAULT '',
    secret_sha256 TEXT NOT NULL UNIQUE,
    hint TEXT NOT NULL,
    models TEXT,
    rpm INTEGER,
    tpm INTEGER,
    max_concurrent INTEGER,
    max_tokens INTEGER,
    quota_tokens INTEGER,
    quota_period TEXT,
    created_at REAL NOT NULL,
    rotated_at REAL,
    revoked_at REAL
);
CREATE INDEX keys_owner ON keys(owner);
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta (name, value) VALUES ('keys_version', 0);
"""

# Version 2: usage. `usage_daily` is the durable roll-up (per UTC day, owner, key and model);
# `requests` holds one row per request from admission on, so that a request the gateway was
# serving when it died stays visible as `lost` instead of vanishing. `unmetered` counts answers
# that ended without the engine's usage (a client gone mid-stream): `charged_tokens`, what the
# quota was charged, then holds the request's reservation. Counters are NOT NULL
# DEFAULT 0: a sum over a fresh row must never be NULL.
V2 = """
CREATE TABLE usage_daily (
    day TEXT NOT NULL,
    owner TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    duration_s REAL NOT NULL DEFAULT 0,
    ttft_s REAL NOT NULL DEFAULT 0,
    ttft_count INTEGER NOT NULL DEFAULT 0,
    lost INTEGER NOT NULL DEFAULT 0,
    unmetered INTEGER NOT NULL DEFAULT 0,
    charged_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, owner, key_id, model)
);
CREATE INDEX usage_daily_owner ON usage_daily(owner, day);
CREATE TABLE requests (
    id TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('in_flight', 'done', 'lost')),
    started_at REAL NOT NULL,
    finished_at REAL,
    owner TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    route TEXT,
    client TEXT,
    status INTEGER,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    charged_tokens INTEGER NOT NULL DEFAULT 0,
    ttft_s REAL,
    duration_s REAL,
    streamed INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE INDEX requests_state ON requests(state);
CREATE INDEX requests_started ON requests(started_at);
CREATE INDEX requests_finished ON requests(finished_at);
"""

# Version 3: the request log. `requests` gains the id the client and the engine saw (the
# X-Request-Id header, the client's own or the gateway's) and the OpenTelemetry trace id when
# tracing is on; indexes serve the log's filters (owner, model, status, each newest first) and
# its pruning by age.
V3 = """
ALTER TABLE requests ADD COLUMN request_id TEXT;
ALTER TABLE requests ADD COLUMN trace_id TEXT;
CREATE INDEX requests_owner_started ON requests(owner, started_at);
CREATE INDEX requests_model_started ON requests(model, started_at);
CREATE INDEX requests_status_started ON requests(status, started_at);
"""

STEPS: tuple[str, ...] = (V1, V2, V3)
LATEST = len(STEPS)
