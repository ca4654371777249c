-- The derived holder/license index is only ever looked up by its key, so it
-- is stored in its key's own B-tree (WITHOUT ROWID): one B-tree insert per
-- entry instead of two (a rowid table plus the primary key's index).
CREATE TABLE audit_subject_index_keyed (
    subject  TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    PRIMARY KEY (subject, seq)
) WITHOUT ROWID;
INSERT INTO audit_subject_index_keyed (subject, seq) SELECT subject, seq FROM audit_subject_index;
DROP TABLE audit_subject_index;
ALTER TABLE audit_subject_index_keyed RENAME TO audit_subject_index;
