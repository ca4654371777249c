//! SQL for the audit log. The log tables accept INSERT only (triggers refuse
//! the rest), so this module has no UPDATE or DELETE on them.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Connection, Executor};

use super::{col, Bind, Statement, Store, Write};
use crate::audit::merkle::Frontier;
use crate::audit::{unhex32, AuditRecord, Head, RecordText};
use crate::error::{Error, Result};

/// A signed checkpoint as stored.
#[derive(Debug, Clone)]
pub struct CheckpointRow {
    /// Number of records covered.
    pub tree_size: i64,
    /// The broker that signed it.
    pub origin: String,
    /// Merkle root (hex).
    pub root_hash: String,
    /// When it was signed.
    pub time: String,
    /// Signing key id.
    pub kid: String,
    /// Signature (base64url).
    pub signature: String,
}

/// A verification result as stored.
#[derive(Debug, Clone)]
pub struct VerificationRow {
    /// When.
    pub time: String,
    /// Whether everything verified.
    pub ok: bool,
    /// Records checked.
    pub records: i64,
    /// Checkpoints checked.
    pub checkpoints: i64,
    /// The first failure.
    pub failure: Option<String>,
}

/// Search filters over the audit log.
#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    /// From this time (inclusive, RFC 3339).
    pub from: Option<String>,
    /// Until this time (exclusive).
    pub to: Option<String>,
    /// Actor id (entity, client, holder).
    pub actor: Option<String>,
    /// Holder.
    pub holder: Option<String>,
    /// License identifier.
    pub license: Option<String>,
    /// License type.
    pub license_type: Option<String>,
    /// Action.
    pub action: Option<String>,
    /// Outcome.
    pub outcome: Option<String>,
    /// Only records after this sequence number (cursor).
    pub after: Option<i64>,
    /// Only records up to this sequence number.
    pub until_seq: Option<i64>,
    /// Newest first (the page ends `limit` records back from the newest
    /// match; page on with `until_seq`).
    pub newest_first: bool,
}

macro_rules! after_seq {
    () => {
        "time, actor_kind, actor_id, action, outcome, holder, license, license_type, consent, purpose, reason, request_id, client_addr, prev_hash, hash"
    };
}
/// Every column of `audit_records`, in encoding order.
pub(crate) const COLUMNS: &str = concat!("seq, ", after_seq!());
/// [`COLUMNS`] but the first.
const AFTER_SEQ: &str = after_seq!();

/// The derived subject index's entries: each prefix and the column after it,
/// in the order a search picks the filter it walks the index for (the most
/// selective first). Migrations sqlite/0012 and postgres/0011 added the last
/// three to records indexed before them.
const SUBJECTS: [(&str, &str); 5] = [
    ("h:", "holder"),
    ("l:", "license"),
    ("a:", "actor_id"),
    ("t:", "license_type"),
    ("v:", "action"),
];

/// Decodes a row selected with [`COLUMNS`], by position (verification reads
/// every record, and looking columns up by name costs more than the hashing).
pub(crate) fn record_from_row(row: &AnyRow) -> Result<AuditRecord> {
    use sqlx::Row;
    Ok(AuditRecord {
        seq: row.try_get(0)?,
        time: row.try_get(1)?,
        actor_kind: row.try_get(2)?,
        actor_id: row.try_get(3)?,
        action: row.try_get(4)?,
        outcome: row.try_get(5)?,
        holder: row.try_get(6)?,
        license: row.try_get(7)?,
        license_type: row.try_get(8)?,
        consent: row.try_get(9)?,
        purpose: row.try_get(10)?,
        reason: row.try_get(11)?,
        request_id: row.try_get(12)?,
        client_addr: row.try_get(13)?,
        prev_hash: row.try_get(14)?,
        hash: row.try_get(15)?,
    })
}

fn checkpoint_from_row(row: &AnyRow) -> Result<CheckpointRow> {
    Ok(CheckpointRow {
        tree_size: col(row, "tree_size")?,
        origin: col(row, "origin")?,
        root_hash: col(row, "root_hash")?,
        time: col(row, "time")?,
        kid: col(row, "kid")?,
        signature: col(row, "signature")?,
    })
}

fn head_from_row(row: &AnyRow) -> Result<Head> {
    let seq: i64 = col(row, "seq")?;
    let hash: String = col(row, "hash")?;
    let frontier: Vec<u8> = col(row, "frontier")?;
    Ok(Head {
        seq,
        hash: unhex32(&hash).ok_or_else(|| Error::internal("audit head hash is malformed"))?,
        frontier: Frontier::from_parts(u64::try_from(seq).unwrap_or(0), &frontier)
            .ok_or_else(|| Error::internal("audit head frontier is malformed"))?,
    })
}

/// The batch INSERT and the move of the chain head: every record of a batch
/// travels as one JSON array parameter and the database unpacks it, so a
/// batch of any size is one statement with one bind (binding 16 parameters
/// per row through the driver cost more than the insert itself; measured
/// with benches/audit.rs). On SQLite the rows are materialized first
/// (`sqlite_batch_rows!`), and the head moves in a second statement (run in
/// the same call, see [`super::Script`]); PostgreSQL moves the head in the
/// INSERT's own statement, and only when every row went in.
fn append_sql(sqlite: bool) -> &'static str {
    static SQLITE: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| build_append_sql(true));
    static POSTGRES: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| build_append_sql(false));
    if sqlite {
        &SQLITE
    } else {
        &POSTGRES
    }
}

/// Locks the chain head and reads it, in one statement: the no-op UPDATE
/// takes the row lock on PostgreSQL and the write lock on SQLite, RETURNING
/// reads the head.
const LOCK_HEAD: &str =
    "UPDATE audit_head SET seq = seq WHERE id = 1 RETURNING seq, hash, frontier";

/// The move of the chain head on SQLite, after the INSERT of [`append_sql`].
const MOVE_HEAD_SQLITE: &str =
    "UPDATE audit_head SET seq = $1, hash = $2, frontier = $3 WHERE id = 1";

fn build_append_sql(sqlite: bool) -> String {
    let cols = (0..16)
        .map(|i| match (sqlite, i) {
            (true, _) => format!("v ->> {i}"),
            (false, 0) => "(r ->> 0)::bigint".to_owned(),
            (false, _) => format!("r ->> {i}"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    if sqlite {
        format!(
            concat!(
                "WITH ",
                sqlite_batch_rows!(),
                " INSERT INTO audit_records ({columns}) SELECT {cols} FROM r ORDER BY key"
            ),
            columns = COLUMNS,
            cols = cols
        )
    } else {
        format!(
            "WITH ins AS (INSERT INTO audit_records ({COLUMNS}) SELECT {cols} \
               FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS t(r, n) ORDER BY n RETURNING 1) \
             UPDATE audit_head SET seq = $2, hash = $3, frontier = $4 WHERE id = 1 AND (SELECT COUNT(*) FROM ins) = $5"
        )
    }
}

/// Decodes a page of [`Store::audit_page_json`].
pub fn decode_page_json(text: &str) -> Result<Vec<AuditRecord>> {
    let rows: Vec<RecordText> = serde_json::from_str(text).map_err(Error::internal)?;
    Ok(rows.iter().map(|r| AuditRecord::from(r.view())).collect())
}

/// Records as one JSON array of arrays in [`COLUMNS`] order (how batches are
/// inserted), written straight from the records (no `serde_json::Value` per
/// record on the append path).
pub(crate) fn records_json(records: &[AuditRecord]) -> Result<String> {
    let rows: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r.seq,
                &r.time,
                &r.actor_kind,
                &r.actor_id,
                &r.action,
                &r.outcome,
                &r.holder,
                &r.license,
                &r.license_type,
                &r.consent,
                &r.purpose,
                &r.reason,
                &r.request_id,
                &r.client_addr,
                &r.prev_hash,
                &r.hash,
            )
        })
        .collect();
    serde_json::to_string(&rows).map_err(Error::internal)
}

/// The subject index's entries of the records with `$1 < seq <= $2`, built
/// in the database (nothing crosses the driver); the caller sorts them so
/// that a batch walks the index once from left to right.
fn subject_entries_sql() -> String {
    SUBJECTS
        .iter()
        .map(|(prefix, column)| {
            format!(
                "SELECT '{prefix}' || {column} AS subject, seq FROM audit_records
                  WHERE seq > $1 AND seq <= $2 AND {column} IS NOT NULL"
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// The last record of the next index batch: at most `max` records after `upto`.
async fn next_index_batch_end(
    conn: &mut AnyConnection,
    upto: i64,
    max: i64,
) -> Result<Option<i64>> {
    col(
        &sqlx::query(
            "SELECT MAX(seq) AS last FROM (SELECT seq FROM audit_records WHERE seq > $1 ORDER BY seq LIMIT $2) AS w",
        )
        .bind(upto)
        .bind(max)
        .fetch_one(&mut *conn)
        .await?,
        "last",
    )
}

impl Store {
    /// Locks the chain head for this transaction and reads it. The no-op
    /// UPDATE takes the row lock on PostgreSQL and the write lock on SQLite
    /// before anything is read, so two appenders never see the same head.
    pub async fn lock_audit_head(conn: &mut AnyConnection) -> Result<Head> {
        let row = sqlx::query(LOCK_HEAD).fetch_one(&mut *conn).await?;
        head_from_row(&row)
    }

    /// Begins a SQLite group commit on the writer's connection, in one call
    /// to its thread: `BEGIN IMMEDIATE` (the write lock), the chain head
    /// locked and read, and the budgets of `budgets` read (see
    /// [`Store::budgets_statement`]). The caller ends the transaction.
    pub async fn begin_group_commit_sqlite(
        conn: &mut AnyConnection,
        budgets: Statement,
    ) -> Result<(Head, super::consent::Budgets)> {
        let mut script = super::Script::default();
        script
            .push("BEGIN IMMEDIATE", [])
            .push(LOCK_HEAD, [])
            .push(budgets.sql, budgets.binds);
        let results = script.run(conn).await?;
        let head = results[1]
            .rows
            .first()
            .ok_or_else(|| Error::internal("the audit head is missing"))?;
        Ok((
            head_from_row(head)?,
            Self::budgets_from_rows(&results[2].rows)?,
        ))
    }

    /// Inserts chained records and moves the chain head to `head`, their last.
    pub async fn append_audit_records(
        conn: &mut AnyConnection,
        records: &[AuditRecord],
        head: &Head,
    ) -> Result<()> {
        let writes = Self::append_writes(super::is_sqlite(conn), records, head)?;
        Self::run_writes(conn, writes).await
    }

    /// The statements of [`Store::append_audit_records`].
    pub fn append_writes(sqlite: bool, records: &[AuditRecord], head: &Head) -> Result<Vec<Write>> {
        const WHAT: &str = "the audit batch was not inserted whole";
        let payload = Bind::Text(records_json(records)?);
        let n = records.len() as i64;
        let moved = [
            Bind::Int(head.seq),
            Bind::Text(crate::audit::hex(&head.hash)),
            Bind::Bytes(head.frontier.to_bytes()),
        ];
        let write = |sql, binds, changes| Write {
            statement: Statement { sql, binds },
            changes: Some(changes),
            what: WHAT,
        };
        Ok(if sqlite {
            vec![
                write(append_sql(true), vec![payload], n as u64),
                write(MOVE_HEAD_SQLITE, moved.to_vec(), 1),
            ]
        } else {
            let mut binds = vec![payload];
            binds.extend(moved);
            binds.push(Bind::Int(n));
            vec![write(append_sql(false), binds, 1)]
        })
    }

    /// The chain head as committed.
    pub async fn audit_head(&self) -> Result<Head> {
        let row = sqlx::query("SELECT seq, hash, frontier FROM audit_head WHERE id = 1")
            .fetch_one(self.reader())
            .await?;
        head_from_row(&row)
    }

    /// Records matching `f`, in sequence order, at most `limit`.
    ///
    /// Holder, license, actor, license type and action filters go through
    /// `audit_subject_index` for the records it covers and scan the short
    /// tail it does not cover yet.
    pub async fn audit_records(&self, f: &AuditFilter, limit: i64) -> Result<Vec<AuditRecord>> {
        let conds = "($1 IS NULL OR time >= $1) AND ($2 IS NULL OR time < $2) AND ($3 IS NULL OR actor_id = $3)
               AND ($4 IS NULL OR holder = $4) AND ($5 IS NULL OR license = $5) AND ($6 IS NULL OR license_type = $6)
               AND ($7 IS NULL OR action = $7) AND ($8 IS NULL OR outcome = $8)
               AND ($9 IS NULL OR seq > $9) AND ($10 IS NULL OR seq <= $10)";
        // The most selective subject filter goes through the index; the
        // others are checked on the records it leads to.
        let subject = SUBJECTS
            .iter()
            .zip([&f.holder, &f.license, &f.actor, &f.license_type, &f.action])
            .find_map(|((prefix, _), v)| v.as_ref().map(|v| format!("{prefix}{v}")));
        let order = if f.newest_first { "DESC" } else { "ASC" };
        let sql = match subject {
            None => format!(
                "SELECT {COLUMNS} FROM audit_records WHERE {conds} ORDER BY seq {order} LIMIT $11"
            ),
            // Walks the subject's index entries in sequence order from the
            // cursor (so a page stops after `limit` of them, however common
            // the subject), merged with the tail the index has not reached.
            Some(_) => format!(
                "SELECT iseq AS seq, {AFTER_SEQ} FROM (
                    SELECT seq AS iseq FROM audit_subject_index
                     WHERE subject = $12 AND seq > COALESCE($9, 0) AND seq <= $13 AND seq <= COALESCE($10, $13)
                 ) AS i JOIN audit_records ON seq = iseq WHERE {conds}
                 UNION ALL
                 SELECT {COLUMNS} FROM audit_records WHERE {conds} AND seq > $13
                 ORDER BY seq {order} LIMIT $11"
            ),
        };
        let mut q = sqlx::query(&sql)
            .bind(&f.from)
            .bind(&f.to)
            .bind(&f.actor)
            .bind(&f.holder)
            .bind(&f.license)
            .bind(&f.license_type)
            .bind(&f.action)
            .bind(&f.outcome)
            .bind(f.after)
            .bind(f.until_seq)
            .bind(limit);
        if let Some(subject) = subject {
            let upto: i64 = col(
                &sqlx::query("SELECT indexed_upto FROM audit_index_state WHERE id = 1")
                    .fetch_one(self.reader())
                    .await?,
                "indexed_upto",
            )?;
            q = q.bind(subject).bind(upto);
        }
        q.fetch_all(self.reader())
            .await?
            .iter()
            .map(record_from_row)
            .collect()
    }

    /// Adds up to `max` not yet indexed records to `audit_subject_index`;
    /// returns how many records it covered. Several nodes (or processes) may
    /// run this: on PostgreSQL the state row lock makes them take turns, on
    /// SQLite the state's compare-and-set drops the batch of the one that
    /// lost the race.
    pub async fn index_audit_subjects(&self, max: i64) -> Result<i64> {
        if self.backend() == super::Backend::Sqlite {
            return self.index_audit_subjects_sqlite(max).await;
        }
        let mut tx = self.indexer().begin().await?;
        // The no-op UPDATE takes the state row's lock before reading it.
        let upto: i64 = col(
            &sqlx::query(
                "UPDATE audit_index_state SET indexed_upto = indexed_upto WHERE id = 1 RETURNING indexed_upto",
            )
            .fetch_one(&mut *tx)
            .await?,
            "indexed_upto",
        )?;
        let Some(last) = next_index_batch_end(&mut tx, upto, max).await? else {
            return Ok(0);
        };
        sqlx::query(&format!(
            "INSERT INTO audit_subject_index (subject, seq)
             SELECT subject, seq FROM ({}) AS s WHERE true ORDER BY subject, seq
             ON CONFLICT DO NOTHING",
            subject_entries_sql()
        ))
        .bind(upto)
        .bind(last)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE audit_index_state SET indexed_upto = $1 WHERE id = 1")
            .bind(last)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(last - upto)
    }

    /// On SQLite the index is a file of its own with the log's attached (see
    /// [`Store::connect`]). A transaction that reads the attached log holds a
    /// snapshot of its WAL until it ends, which keeps the log's WAL from
    /// starting over (`Store::checkpoint_wal`), so the log is read in one
    /// short statement into a temporary table, and only then is the sorted
    /// batch inserted in the index's own transaction.
    async fn index_audit_subjects_sqlite(&self, max: i64) -> Result<i64> {
        let mut conn = self.indexer().acquire().await?;
        // Reads of the log wait for a WAL restart (see `Store::checkpoint_wal`).
        let reading = self.wal_readers.read().await;
        let upto: i64 = col(
            &sqlx::query("SELECT indexed_upto FROM audit_index_state WHERE id = 1")
                .fetch_one(&mut *conn)
                .await?,
            "indexed_upto",
        )?;
        let Some(last) = next_index_batch_end(&mut conn, upto, max).await? else {
            return Ok(0);
        };
        conn.execute("DROP TABLE IF EXISTS temp.audit_index_batch")
            .await?;
        sqlx::query(&format!(
            "CREATE TEMP TABLE audit_index_batch AS SELECT subject, seq FROM ({})",
            subject_entries_sql()
        ))
        .bind(upto)
        .bind(last)
        .execute(&mut *conn)
        .await?;
        drop(reading);
        let mut tx = (*conn).begin().await?;
        let won = sqlx::query(
            "UPDATE audit_index_state SET indexed_upto = $2 WHERE id = 1 AND indexed_upto = $1",
        )
        .bind(upto)
        .bind(last)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if won {
            sqlx::query(
                "INSERT INTO audit_subject_index (subject, seq)
                 SELECT subject, seq FROM temp.audit_index_batch WHERE true ORDER BY subject, seq
                 ON CONFLICT DO NOTHING",
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        conn.execute("DROP TABLE temp.audit_index_batch").await?;
        Ok(if won { last - upto } else { 0 })
    }

    /// Every record with `after < seq <= until`, in order, unfiltered.
    pub async fn audit_range(&self, after: i64, until: i64) -> Result<Vec<AuditRecord>> {
        decode_page_json(&self.audit_page_json(after, until).await?)
    }

    /// The records with `after < seq <= until` as one JSON array of arrays,
    /// built by the database: one value crosses the driver per page instead of
    /// one per record (the fast path for verification).
    pub async fn audit_page_json(&self, after: i64, until: i64) -> Result<String> {
        let sql = match self.backend() {
            super::Backend::Sqlite => format!(
                // json_array in the aggregate itself: passed through a subquery its
                // result would lose its JSON subtype and be parsed again.
                "SELECT COALESCE(json_group_array(json_array({COLUMNS})), '[]') AS page FROM
                   (SELECT {COLUMNS} FROM audit_records WHERE seq > $1 AND seq <= $2 ORDER BY seq)"
            ),
            super::Backend::Postgres => format!(
                "SELECT COALESCE(json_agg(json_build_array({COLUMNS}) ORDER BY seq), '[]')::text AS page
                 FROM audit_records WHERE seq > $1 AND seq <= $2"
            ),
        };
        let row = sqlx::query(&sql)
            .bind(after)
            .bind(until)
            .fetch_one(self.reader())
            .await?;
        col(&row, "page")
    }

    /// The chain hashes of records 1..=until, in order (Merkle leaves).
    pub async fn audit_hashes(&self, until: i64) -> Result<Vec<String>> {
        sqlx::query("SELECT hash FROM audit_records WHERE seq <= $1 ORDER BY seq")
            .bind(until)
            .fetch_all(self.reader())
            .await?
            .iter()
            .map(|r| col(r, "hash"))
            .collect()
    }

    /// Stores a checkpoint; false if one of that size exists already.
    pub async fn insert_checkpoint(&self, c: &CheckpointRow) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO audit_checkpoints (tree_size, origin, root_hash, time, kid, signature) VALUES ($1, $6, $2, $3, $4, $5)
             ON CONFLICT (tree_size) DO NOTHING",
        )
        .bind(c.tree_size)
        .bind(&c.root_hash)
        .bind(&c.time)
        .bind(&c.kid)
        .bind(&c.signature)
        .bind(&c.origin)
        .execute(self.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The checkpoint covering exactly `tree_size` records.
    pub async fn checkpoint(&self, tree_size: i64) -> Result<Option<CheckpointRow>> {
        sqlx::query("SELECT * FROM audit_checkpoints WHERE tree_size = $1")
            .bind(tree_size)
            .fetch_optional(self.reader())
            .await?
            .as_ref()
            .map(checkpoint_from_row)
            .transpose()
    }

    /// The largest checkpoint.
    pub async fn latest_checkpoint(&self) -> Result<Option<CheckpointRow>> {
        sqlx::query("SELECT * FROM audit_checkpoints ORDER BY tree_size DESC LIMIT 1")
            .fetch_optional(self.reader())
            .await?
            .as_ref()
            .map(checkpoint_from_row)
            .transpose()
    }

    /// Every checkpoint, smallest first.
    pub async fn checkpoints(&self) -> Result<Vec<CheckpointRow>> {
        sqlx::query("SELECT * FROM audit_checkpoints ORDER BY tree_size")
            .fetch_all(self.reader())
            .await?
            .iter()
            .map(checkpoint_from_row)
            .collect()
    }

    /// Records the result of a verification.
    pub async fn insert_verification(&self, v: &VerificationRow) -> Result<()> {
        sqlx::query("INSERT INTO audit_verifications (time, ok, records, checkpoints, failure) VALUES ($1, $2, $3, $4, $5)")
            .bind(&v.time)
            .bind(i64::from(v.ok))
            .bind(v.records)
            .bind(v.checkpoints)
            .bind(&v.failure)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    /// The last verification result.
    pub async fn latest_verification(&self) -> Result<Option<VerificationRow>> {
        let row = sqlx::query("SELECT * FROM audit_verifications ORDER BY id DESC LIMIT 1")
            .fetch_optional(self.reader())
            .await?;
        row.map(|r| {
            Ok(VerificationRow {
                time: col(&r, "time")?,
                ok: col::<i64>(&r, "ok")? == 1,
                records: col(&r, "records")?,
                checkpoints: col(&r, "checkpoints")?,
                failure: col(&r, "failure")?,
            })
        })
        .transpose()
    }
}
