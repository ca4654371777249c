-- Holder and license ids are close to random, so a B-tree on each of them in
-- audit_records cost more than the rest of an append put together (measured:
-- 6 indexes 24k rows/s, 2 indexes 95k rows/s on the 2-core machine). They move
-- to a derived index that a background task fills in large batches, off the
-- durable path. Searches combine it with a scan of the not-yet-indexed tail,
-- so results are always complete. This table is not part of the tamper-evident
-- log and can be rebuilt from it at any time.
DROP INDEX audit_records_holder;
DROP INDEX audit_records_license;

CREATE TABLE audit_subject_index (
    subject  TEXT NOT NULL,   -- 'h:<holder id>' or 'l:<license identifier>'
    seq      INTEGER NOT NULL,
    PRIMARY KEY (subject, seq)
);

CREATE TABLE audit_index_state (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    indexed_upto  INTEGER NOT NULL
);
INSERT INTO audit_index_state (id, indexed_upto) VALUES (1, 0);
