-- Social entities (社会化用证主体) and their use lists (用证清单).
-- An entity applies (pending), an operator approves it with a filing number
-- (备案号) or rejects it; only an approved entity has an OAuth client, whose
-- client_id is the entity id. Suspension suspends that client at once.

CREATE TABLE entities (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    uscc           TEXT NOT NULL UNIQUE,
    sector         TEXT NOT NULL CHECK (sector IN ('bank', 'insurer', 'logistics', 'hospital', 'telecom', 'other')),
    contact        TEXT NOT NULL,
    redirect_uris  TEXT NOT NULL,
    jwks           TEXT,
    jwks_uri       TEXT,
    status         TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected', 'suspended')),
    filing_no      TEXT,
    reason         TEXT,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);

-- One scenario per (entity, purpose); spec is the JSON of policy::Scenario.
CREATE TABLE scenarios (
    entity_id   TEXT NOT NULL REFERENCES entities (id),
    purpose     TEXT NOT NULL,
    spec        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'withdrawn')),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (entity_id, purpose)
);

-- Credential rotation without downtime: the previous secret keeps working
-- until previous_secret_expires_at (unix seconds).
ALTER TABLE clients ADD COLUMN previous_secret_digest BYTEA;
ALTER TABLE clients ADD COLUMN previous_secret_expires_at BIGINT;

-- Keys published at a URI (private_key_jwt): fetched on registration and
-- again when an assertion names a key not seen yet.
ALTER TABLE clients ADD COLUMN jwks_uri TEXT;
