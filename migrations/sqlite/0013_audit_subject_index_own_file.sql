-- The derived subject index moves to a database file of its own (the log's
-- file name + '.audit-index', created by the server; see Store::connect):
-- SQLite has one writer per file, and here every indexer batch held the
-- log's writer, and so every durable append, for 130-290 ms per 20,000
-- records. The index is derived from the records: the background indexer
-- rebuilds it in the new file from the first record, and searches stay
-- complete meanwhile (they scan the records the index does not cover yet).
DROP TABLE audit_subject_index;
DROP TABLE audit_index_state;
