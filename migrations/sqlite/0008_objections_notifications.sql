-- Objections (异议), notification delivery, and the regulators' console
-- accounts.

-- An objection to a license's data, by its holder or by an entity that read
-- it. due_on is 5 working days after filing (weekends and configured public
-- holidays do not count); the issuing unit answers by correcting the license
-- (new_identifier is the version that made) or rejecting with a reason.
CREATE TABLE objections (
    id              TEXT PRIMARY KEY,
    license_id      TEXT NOT NULL REFERENCES licenses (id),
    identifier      TEXT NOT NULL,
    issuer_id       TEXT NOT NULL,
    holder_id       TEXT NOT NULL REFERENCES holders (id),
    objector_kind   TEXT NOT NULL CHECK (objector_kind IN ('holder', 'entity')),
    objector_id     TEXT NOT NULL,
    fields          TEXT NOT NULL,
    reason          TEXT NOT NULL,
    evidence        TEXT,
    status          TEXT NOT NULL CHECK (status IN ('open', 'corrected', 'rejected')),
    resolution      TEXT,
    new_identifier  TEXT,
    filed_at        TEXT NOT NULL,
    due_on          TEXT NOT NULL,
    resolved_at     TEXT
);
CREATE INDEX objections_issuer ON objections (issuer_id, status, due_on);
CREATE INDEX objections_holder ON objections (holder_id, filed_at);
CREATE INDEX objections_due ON objections (status, due_on);

-- The outbox, now addressed to holders or entities. dedupe_key makes
-- scheduled notices (expiry reminders, consent reminders) idempotent: a
-- second run of the daily job inserts nothing. status: queued -> dispatched
-- (one delivery per subscribed webhook endpoint) or suppressed (the holder
-- turned this kind off).
CREATE TABLE notifications_next (
    id              TEXT PRIMARY KEY,
    recipient_kind  TEXT NOT NULL CHECK (recipient_kind IN ('holder', 'entity')),
    recipient_id    TEXT NOT NULL,
    kind            TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('queued', 'dispatched', 'suppressed')),
    dedupe_key      TEXT UNIQUE,
    created_at      TEXT NOT NULL
);
INSERT INTO notifications_next (id, recipient_kind, recipient_id, kind, payload, status, created_at)
    SELECT id, 'holder', holder_id, kind, payload,
           CASE status WHEN 'queued' THEN 'queued' ELSE 'dispatched' END, created_at
    FROM notifications;
DROP TABLE notifications;
ALTER TABLE notifications_next RENAME TO notifications;
CREATE INDEX notifications_status ON notifications (status, created_at);
CREATE INDEX notifications_recipient ON notifications (recipient_kind, recipient_id, created_at);

-- Which kinds a holder does not want (a row with enabled = 0 turns one off;
-- everything is on by default).
CREATE TABLE notification_preferences (
    holder_id  TEXT NOT NULL REFERENCES holders (id),
    kind       TEXT NOT NULL,
    enabled    INTEGER NOT NULL,
    PRIMARY KEY (holder_id, kind)
);

-- Webhook endpoints the operator registered (the city's SMS or app gateway,
-- an entity's receiver). kinds is a JSON array of notification kinds, empty
-- for all. The signing secret is sealed with the master key.
CREATE TABLE webhook_endpoints (
    id          TEXT PRIMARY KEY,
    url         TEXT NOT NULL,
    recipients  TEXT NOT NULL CHECK (recipients IN ('holder', 'entity', 'all')),
    kinds       TEXT NOT NULL,
    secret      BLOB NOT NULL,
    active      INTEGER NOT NULL,
    created_at  TEXT NOT NULL
);

-- One delivery of a notification to an endpoint. A failed attempt is
-- retried at next_attempt_at (exponential backoff); after the last attempt
-- the delivery is dead and waits for an operator. lease_until keeps two
-- workers (two nodes) from sending the same delivery at once.
CREATE TABLE deliveries (
    id               TEXT PRIMARY KEY,
    notification_id  TEXT NOT NULL REFERENCES notifications (id),
    endpoint_id      TEXT NOT NULL REFERENCES webhook_endpoints (id),
    status           TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts         INTEGER NOT NULL,
    next_attempt_at  INTEGER NOT NULL,
    lease_until      INTEGER NOT NULL,
    last_error       TEXT,
    delivered_at     TEXT,
    created_at       TEXT NOT NULL,
    UNIQUE (notification_id, endpoint_id)
);
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);

-- Regulators' console accounts (people: argon2id passwords, lock after
-- repeated failures, like holders') and their sessions (SHA-256 of the id).
CREATE TABLE console_accounts (
    username       TEXT PRIMARY KEY,
    display_name   TEXT NOT NULL,
    role           TEXT NOT NULL CHECK (role IN ('regulator')),
    password_hash  TEXT NOT NULL,
    failed_logins  INTEGER NOT NULL,
    locked_until   INTEGER NOT NULL,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);
CREATE TABLE console_sessions (
    digest      BLOB PRIMARY KEY,
    username    TEXT NOT NULL REFERENCES console_accounts (username),
    expires_at  INTEGER NOT NULL,
    created_at  TEXT NOT NULL
);
