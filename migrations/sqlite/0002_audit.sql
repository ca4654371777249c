-- The audit log (SQLite dialect; keep in step with migrations/postgres).
-- audit_records and audit_checkpoints are append-only: triggers refuse UPDATE
-- and DELETE, so not even licensegate's own connection can alter history.
-- Record hashes and the canonical encoding are documented in src/audit/mod.rs.

CREATE TABLE audit_records (
    seq           INTEGER PRIMARY KEY,
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
-- (and several broker processes on PostgreSQL) produce one gapless chain.
-- frontier holds the roots of the perfect Merkle subtrees over all records.
CREATE TABLE audit_head (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    seq       INTEGER NOT NULL,
    hash      TEXT NOT NULL,
    frontier  BLOB NOT NULL
);
INSERT INTO audit_head (id, seq, hash, frontier)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', X'');

-- Signed tree heads over the first tree_size records.
CREATE TABLE audit_checkpoints (
    tree_size  INTEGER PRIMARY KEY,
    origin     TEXT NOT NULL,
    root_hash  TEXT NOT NULL,
    time       TEXT NOT NULL,
    kid        TEXT NOT NULL,
    signature  TEXT NOT NULL
);

-- Results of integrity verifications (newest last).
CREATE TABLE audit_verifications (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    time         TEXT NOT NULL,
    ok           INTEGER NOT NULL,
    records      INTEGER NOT NULL,
    checkpoints  INTEGER NOT NULL,
    failure      TEXT
);

CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
CREATE TRIGGER audit_verifications_no_update BEFORE UPDATE ON audit_verifications
BEGIN SELECT RAISE(ABORT, 'audit verifications are append-only'); END;
CREATE TRIGGER audit_verifications_no_delete BEFORE DELETE ON audit_verifications
BEGIN SELECT RAISE(ABORT, 'audit verifications are append-only'); END;
