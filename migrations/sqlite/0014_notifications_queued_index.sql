-- Only the queue is ever looked up by status (the dispatcher's oldest
-- queued notifications first). The index on (status, created_at) held an
-- entry for every notification ever queued, and moving one on rewrote its
-- entry; this one holds the queue alone, in the dispatcher's order: a
-- retrieval's notification adds an entry and its dispatch removes it.
DROP INDEX notifications_status;
CREATE INDEX notifications_queued ON notifications (created_at, id) WHERE status = 'queued';
