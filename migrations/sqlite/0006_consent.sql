-- Consent flows: holders' accounts and sessions, pushed and decoupled
-- authorization requests, authorization codes, consents, refresh tokens,
-- show-a-license codes and DPoP proof ids. Every secret handed out (session
-- ids, codes, refresh tokens, request handles) is stored as a SHA-256 digest
-- only: a copy of the database gives no usable credential. Times of
-- expiry are unix seconds (compared on every use); others are RFC 3339 text.

-- Entities that must use sender-constrained tokens (RFC 9449 client metadata
-- dpop_bound_access_tokens).
ALTER TABLE entities ADD COLUMN dpop_bound INTEGER NOT NULL DEFAULT 0;

-- Holders' local accounts. password_hash is an argon2id PHC string. After
-- repeated failures the account is locked until locked_until.
CREATE TABLE holder_accounts (
    holder_id      TEXT PRIMARY KEY REFERENCES holders (id),
    password_hash  TEXT NOT NULL,
    failed_logins  INTEGER NOT NULL,
    locked_until   INTEGER NOT NULL,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);

CREATE TABLE holder_sessions (
    digest      BLOB PRIMARY KEY,
    holder_id   TEXT NOT NULL REFERENCES holders (id),
    expires_at  INTEGER NOT NULL,
    created_at  TEXT NOT NULL
);

-- Pushed (RFC 9126) and backchannel (CIBA) authorization requests. details is
-- the validated authorization_details (RFC 9396). status: pushed -> opened
-- (the holder's browser arrived) -> decided; CIBA: pending -> approved / denied
-- -> redeemed. holder_id is bound when the holder is known.
CREATE TABLE authorization_requests (
    digest           BLOB PRIMARY KEY,
    kind             TEXT NOT NULL CHECK (kind IN ('par', 'ciba')),
    client_id        TEXT NOT NULL REFERENCES clients (client_id),
    redirect_uri     TEXT,
    state            TEXT,
    code_challenge   TEXT,
    details          TEXT NOT NULL,
    holder_id        TEXT REFERENCES holders (id),
    binding_message  TEXT,
    status           TEXT NOT NULL CHECK (status IN ('pushed', 'opened', 'decided', 'pending', 'approved', 'denied', 'redeemed')),
    consent_id       TEXT,
    public_id        TEXT NOT NULL UNIQUE,
    poll_interval    INTEGER NOT NULL,
    next_poll_at     INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    created_at       TEXT NOT NULL
);
CREATE INDEX authorization_requests_holder ON authorization_requests (holder_id, status);

-- Consents (授权). details: the granted authorization_details with the
-- licenses they cover. status is active or revoked; expired and used up are
-- computed from expires_at and the retrieval counter on every use.
CREATE TABLE consents (
    id               TEXT PRIMARY KEY,
    holder_id        TEXT NOT NULL REFERENCES holders (id),
    client_id        TEXT NOT NULL REFERENCES clients (client_id),
    purpose          TEXT NOT NULL,
    flow             TEXT NOT NULL,
    details          TEXT NOT NULL,
    max_retrievals   INTEGER NOT NULL,
    retrievals       INTEGER NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    status_reason    TEXT,
    expires_at       INTEGER NOT NULL,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE INDEX consents_holder ON consents (holder_id, created_at);
CREATE INDEX consents_client ON consents (client_id, created_at);

-- Authorization codes (single use, at most 60 s).
CREATE TABLE authorization_codes (
    digest          BLOB PRIMARY KEY,
    client_id       TEXT NOT NULL,
    redirect_uri    TEXT NOT NULL,
    code_challenge  TEXT NOT NULL,
    consent_id      TEXT NOT NULL REFERENCES consents (id),
    expires_at      INTEGER NOT NULL,
    used_at         TEXT
);

-- Refresh tokens: bound to the client (and DPoP key thumbprint), never
-- outliving their consent, not rotated.
CREATE TABLE refresh_tokens (
    digest      BLOB PRIMARY KEY,
    consent_id  TEXT NOT NULL REFERENCES consents (id),
    client_id   TEXT NOT NULL,
    dpop_jkt    TEXT,
    expires_at  INTEGER NOT NULL,
    revoked_at  TEXT,
    created_at  TEXT NOT NULL
);
CREATE INDEX refresh_tokens_consent ON refresh_tokens (consent_id);

-- Show-a-license (亮证) one-time codes.
CREATE TABLE show_codes (
    digest      BLOB PRIMARY KEY,
    holder_id   TEXT NOT NULL REFERENCES holders (id),
    license_id  TEXT NOT NULL REFERENCES licenses (id),
    fields      TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     TEXT,
    created_at  TEXT NOT NULL
);

-- jti of DPoP proofs already seen (replay protection), pruned after expiry.
CREATE TABLE dpop_proofs (
    jti         TEXT PRIMARY KEY,
    expires_at  INTEGER NOT NULL
);
