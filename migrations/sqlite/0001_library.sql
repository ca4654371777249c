-- licensegate: the license library (SQLite dialect; keep in step with migrations/postgres).
-- Times are RFC 3339 UTC text with a fixed width (YYYY-MM-DDTHH:MM:SS.ffffffZ) so
-- that text order is time order on both backends; dates are YYYY-MM-DD.
-- Nothing in the library is ever deleted: licenses are superseded by new versions
-- and status changes are appended to license_events.

-- Issuing units (发证单位), keyed by their unified social credit code.
CREATE TABLE issuers (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    name_en     TEXT NOT NULL,
    region      TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

-- Ed25519 signing keys. owner is 'broker' or 'issuer:<uscc>'. The private key is
-- sealed with the master key (AES-256-GCM, bound to the kid). Retired keys stay
-- so that what they signed can still be verified.
CREATE TABLE signing_keys (
    kid             TEXT PRIMARY KEY,
    owner           TEXT NOT NULL,
    alg             TEXT NOT NULL,
    sealed_private  BLOB NOT NULL,
    public_jwk      TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    retired_at      TEXT
);
CREATE INDEX signing_keys_owner ON signing_keys (owner, created_at);

-- OAuth clients. Secrets are never stored: secret_digest is an HMAC keyed from
-- the master key. jwks holds public keys for private_key_jwt.
CREATE TABLE clients (
    client_id      TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    role           TEXT NOT NULL CHECK (role IN ('operator', 'issuer', 'entity', 'regulator')),
    issuer_id      TEXT REFERENCES issuers (id),
    secret_digest  BLOB,
    jwks           TEXT,
    status         TEXT NOT NULL CHECK (status IN ('active', 'suspended')),
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    CHECK (role <> 'issuer' OR issuer_id IS NOT NULL)
);

-- jti of client assertions already used (RFC 7523 replay protection); rows
-- past expires_at (unix seconds) are pruned.
CREATE TABLE used_assertions (
    jti         TEXT PRIMARY KEY,
    client_id   TEXT NOT NULL,
    expires_at  INTEGER NOT NULL
);

-- The catalog (证照目录). fields and validity are JSON documents validated by the
-- application; revision counts updates.
CREATE TABLE license_types (
    code         TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    name_en      TEXT NOT NULL,
    issuer_id    TEXT NOT NULL REFERENCES issuers (id),
    holder_kind  TEXT NOT NULL CHECK (holder_kind IN ('person', 'organisation')),
    level        TEXT NOT NULL CHECK (level IN ('national', 'municipal', 'district')),
    fields       TEXT NOT NULL,
    validity     TEXT NOT NULL,
    revision     INTEGER NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);

-- Holders (持证主体). Their identifiers are personal: stored sealed, found by a
-- keyed digest.
CREATE TABLE holders (
    id                 TEXT PRIMARY KEY,
    kind               TEXT NOT NULL CHECK (kind IN ('person', 'organisation')),
    identifier_digest  BLOB NOT NULL UNIQUE,
    sealed_identity    BLOB NOT NULL,
    created_at         TEXT NOT NULL
);

-- Next serial number per (type, issuer); a row lock serialises allocation on PostgreSQL.
CREATE TABLE serial_counters (
    license_type  TEXT NOT NULL,
    issuer_id     TEXT NOT NULL,
    next_serial   INTEGER NOT NULL,
    PRIMARY KEY (license_type, issuer_id)
);

-- One row per license; id is the identifier without version and check character.
CREATE TABLE licenses (
    id               TEXT PRIMARY KEY,
    license_type     TEXT NOT NULL REFERENCES license_types (code),
    issuer_id        TEXT NOT NULL REFERENCES issuers (id),
    holder_id        TEXT NOT NULL REFERENCES holders (id),
    current_version  INTEGER NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('valid', 'suspended', 'cancelled')),
    status_reason    TEXT,
    valid_from       TEXT NOT NULL,
    valid_until      TEXT,
    source_ref       TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    UNIQUE (issuer_id, source_ref)
);
CREATE INDEX licenses_holder ON licenses (holder_id);
CREATE INDEX licenses_issuer_type ON licenses (issuer_id, license_type, id);

-- Every version ever issued. Disclosures of public fields are kept in clear, the
-- others sealed (bound to the version identifier).
CREATE TABLE license_versions (
    license_id          TEXT NOT NULL REFERENCES licenses (id),
    version             INTEGER NOT NULL,
    identifier          TEXT NOT NULL UNIQUE,
    valid_from          TEXT NOT NULL,
    valid_until         TEXT,
    content_digest      TEXT NOT NULL,
    public_disclosures  TEXT NOT NULL,
    sealed_disclosures  BLOB NOT NULL,
    sd_jwt              TEXT NOT NULL,
    kid                 TEXT NOT NULL,
    created_at          TEXT NOT NULL,
    PRIMARY KEY (license_id, version)
);

-- The lifecycle of each license: published, updated, suspended, reinstated, cancelled.
CREATE TABLE license_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    license_id  TEXT NOT NULL REFERENCES licenses (id),
    version     INTEGER NOT NULL,
    action      TEXT NOT NULL,
    reason      TEXT,
    actor       TEXT NOT NULL,
    at          TEXT NOT NULL
);
CREATE INDEX license_events_license ON license_events (license_id, id);
