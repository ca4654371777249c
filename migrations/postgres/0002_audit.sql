-- The audit log (PostgreSQL dialect; keep in step with migrations/sqlite).
-- audit_records and audit_checkpoints are append-only: triggers refuse UPDATE,
-- DELETE and TRUNCATE, so not even licensegate's own connection can alter history.
-- Record hashes and the canonical encoding are documented in src/audit/mod.rs.

CREATE TABLE audit_records (
    seq           BIGINT PRIMARY KEY,
    time          TEXT NOT NULL,
    actor_kind    TEXT NOT NULL,
    actor_id      TEXT NOT NULL,
    action        TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    holder        TEXT,
    license       TEXT,
    license_type  TEXT,
    consent       TEXT,
    purpose       TEXT,
    reason        TEXT,
    request_id    TEXT,
    client_addr   TEXT,
    prev_hash     TEXT NOT NULL,
    hash          TEXT NOT NULL
);
CREATE INDEX audit_records_time ON audit_records (time, seq);
CREATE INDEX audit_records_actor ON audit_records (actor_id, seq);
CREATE INDEX audit_records_holder ON audit_records (holder, seq);
CREATE INDEX audit_records_license ON audit_records (license, seq);
CREATE INDEX audit_records_type ON audit_records (license_type, seq);
CREATE INDEX audit_records_action ON audit_records (action, seq);

-- The chain head: one row, locked by every append so that concurrent writers
-- and several broker processes produce one gapless chain.
CREATE TABLE audit_head (
    id        BIGINT PRIMARY KEY CHECK (id = 1),
    seq       BIGINT NOT NULL,
    hash      TEXT NOT NULL,
    frontier  BYTEA NOT NULL
);
INSERT INTO audit_head (id, seq, hash, frontier)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', '\x');

CREATE TABLE audit_checkpoints (
    tree_size  BIGINT PRIMARY KEY,
    origin     TEXT NOT NULL,
    root_hash  TEXT NOT NULL,
    time       TEXT NOT NULL,
    kid        TEXT NOT NULL,
    signature  TEXT NOT NULL
);

CREATE TABLE audit_verifications (
    id           BIGSERIAL PRIMARY KEY,
    time         TEXT NOT NULL,
    ok           BIGINT NOT NULL,
    records      BIGINT NOT NULL,
    checkpoints  BIGINT NOT NULL,
    failure      TEXT
);

CREATE FUNCTION licensegate_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER audit_records_append_only BEFORE UPDATE OR DELETE ON audit_records
    FOR EACH ROW EXECUTE FUNCTION licensegate_append_only();
CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records
    FOR EACH STATEMENT EXECUTE FUNCTION licensegate_append_only();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION licensegate_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION licensegate_append_only();
CREATE TRIGGER audit_verifications_append_only BEFORE UPDATE OR DELETE ON audit_verifications
    FOR EACH ROW EXECUTE FUNCTION licensegate_append_only();
