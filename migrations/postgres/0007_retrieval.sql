-- Notifications to holders (an outbox): every retrieval and verification of
-- a holder's license queues one, in the same transaction as its audit
-- record; a delivery worker (later) sends them and moves them on.
CREATE TABLE notifications (
    id          TEXT PRIMARY KEY,
    holder_id   TEXT NOT NULL REFERENCES holders (id),
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('queued', 'sent', 'failed', 'dead')),
    attempts    BIGINT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX notifications_status ON notifications (status, created_at);
CREATE INDEX notifications_holder ON notifications (holder_id, created_at);
