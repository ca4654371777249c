-- Actor, license type and action join holder and license in the derived
-- subject index ('a:<actor id>', 't:<license type>', 'v:<action>'), off the
-- durable path. Each batch of appends touched one index page per distinct
-- actor in it, so the actor index alone cost about as much as the rest of
-- an append (benches/audit.rs, 64 writers on the 2-core machine: 12.6-13.0k
-- records/s with it, 21-26k without; without the type and action indexes
-- too, 26-28k). The records already indexed get their new entries here;
-- the rest come with the indexer, as before.
DROP INDEX audit_records_actor;
DROP INDEX audit_records_type;
DROP INDEX audit_records_action;

INSERT INTO audit_subject_index (subject, seq)
SELECT subject, seq FROM (
    SELECT 'a:' || actor_id AS subject, seq FROM audit_records
     WHERE seq <= (SELECT indexed_upto FROM audit_index_state WHERE id = 1)
    UNION ALL
    SELECT 't:' || license_type AS subject, seq FROM audit_records
     WHERE seq <= (SELECT indexed_upto FROM audit_index_state WHERE id = 1) AND license_type IS NOT NULL
    UNION ALL
    SELECT 'v:' || action AS subject, seq FROM audit_records
     WHERE seq <= (SELECT indexed_upto FROM audit_index_state WHERE id = 1)
) AS s WHERE true ORDER BY subject, seq
ON CONFLICT DO NOTHING;
