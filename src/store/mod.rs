//! Storage: the only module that writes SQL.
//!
//! Both backends are driven through sqlx's `Any` driver with `$N` placeholders,
//! which SQLite and PostgreSQL both accept, so each query is written once; the
//! schema differs only in type names and lives in `migrations/sqlite` and
//! `migrations/postgres`.
//!
//! SQLite allows one writer at a time, and a deferred transaction that reads
//! then writes can fail with SQLITE_BUSY when another writer got in between.
//! So on SQLite writes go through a one-connection pool (writers queue in the
//! pool instead of failing) and reads through a separate pool (WAL lets them
//! run beside the writer). On PostgreSQL both are the same pool.

/// On SQLite, the rows of a batch that travels as one JSON array of arrays
/// (`$1`), as the CTE `r`: each row's `key` (its place) and `v`, the row
/// itself, to read its columns from with `v ->> i`. Materialized: inlined,
/// every `v ->> i` (and every further use of a column derived from it) read
/// `json_each`'s `value` again, which renders the element as JSON text and
/// parses it back each time (perf: about a third of the writer thread at 64
/// audit writers; callgrind: 674,687 instructions per retrieval with the
/// notifications' INSERT inlined, 658,218 materialized).
macro_rules! sqlite_batch_rows {
    () => {
        "r AS MATERIALIZED (SELECT key, value AS v FROM json_each($1))"
    };
}

pub mod audit;
pub mod cache;
pub mod catalog;
pub mod clients;
pub mod consent;
pub mod console;
pub mod entities;
pub mod licenses;
pub mod notify;
pub mod objections;
pub mod policies;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, UtcOffset};

use crate::config::Config;
use crate::error::{Error, Result};

/// Which database backs the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite (WAL).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// Connection pools to the database.
#[derive(Clone)]
pub struct Store {
    read: AnyPool,
    write: AnyPool,
    /// Writes to the audit log's derived subject index. On SQLite its own
    /// one-connection pool on its own file (see [`Store::connect`]); on
    /// PostgreSQL the one pool.
    index: AnyPool,
    backend: Backend,
    /// Set while a server checkpoints the WAL itself (see [`Store::checkpoint_wal`]).
    own_checkpoints: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Seldom-changed rows every resource call reads (see [`cache`]).
    cache: std::sync::Arc<cache::ReadCache>,
    /// The audit indexer's reads of the SQLite log (shared) and the WAL
    /// restart (exclusive) take turns: a read holds a snapshot of the WAL,
    /// and the indexer's take up to a few hundred milliseconds, so a restart
    /// that only waited for readers briefly kept failing while the indexer
    /// caught up, and the WAL grew without bound meanwhile.
    wal_readers: std::sync::Arc<tokio::sync::RwLock<()>>,
}

/// WAL frames (pages) past which [`Store::checkpoint_wal`] makes the WAL
/// start over: 16 MiB of 4 KiB pages.
pub const WAL_RESTART_FRAMES: i64 = 4096;

/// How often a server runs [`Store::checkpoint_wal`]: often enough that a
/// burst of large appends (100 MB/s in the WAL test) passes the restart
/// threshold by little before the next one.
pub const WAL_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// How long a SQLite connection waits for a lock (`PRAGMA busy_timeout`),
/// set on every connection and restored after a WAL restart's short wait.
const BUSY_TIMEOUT: &str = "PRAGMA busy_timeout = 5000";

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

impl Store {
    /// Connects to the configured database (creating the SQLite file and its
    /// directory when needed). Does not run migrations.
    pub async fn connect(config: &Config) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let acquire = Duration::from_secs(config.db_timeout);
        if config.is_postgres() {
            let lock_wait = config.db_timeout;
            let pool = AnyPoolOptions::new()
                .max_connections(config.db_max_connections)
                .acquire_timeout(acquire)
                .after_connect(move |conn, _meta| {
                    Box::pin(async move {
                        // A row lock (the audit head, a consent's budget) held by a
                        // node that hangs must not hold every other node's requests:
                        // a request waits for a lock as long as for a connection,
                        // then answers 503 (SQLSTATE 55P03).
                        conn.execute(format!("SET lock_timeout = '{lock_wait}s'").as_str())
                            .await?;
                        // A node that stops mid-transaction (frozen, cut off from the
                        // network) loses its session, and the locks it held, after a
                        // minute; licensegate never keeps a transaction open between
                        // statements for anything like that long.
                        conn.execute("SET idle_in_transaction_session_timeout = '60s'")
                            .await?;
                        Ok(())
                    })
                })
                .connect(&config.database_url)
                .await
                .map_err(|e| Error::Unavailable(format!("cannot connect to PostgreSQL: {e}")))?;
            return Ok(Store {
                read: pool.clone(),
                index: pool.clone(),
                write: pool,
                backend: Backend::Postgres,
                own_checkpoints: Default::default(),
                cache: std::sync::Arc::new(cache::ReadCache::new()),
                wal_readers: Default::default(),
            });
        }
        if !config.database_url.starts_with("sqlite:") {
            return Err(Error::BadRequest(format!(
                "unsupported database URL {}: use sqlite://FILE or postgres://…",
                crate::config::redact_url(&config.database_url)
            )));
        }
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            Error::internal(format!("cannot create {}: {e}", config.data_dir.display()))
        })?;
        let own_checkpoints = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let write = sqlite_pool(
            &config.database_url,
            1,
            acquire,
            SqliteRole::Writer(own_checkpoints.clone()),
        )
        .await?;
        // The audit log's subject index is derived data (the background
        // indexer rebuilds it from the records), kept in a database file of
        // its own: SQLite has one writer per file, and in the log's file each
        // indexer batch held that writer, and so every durable append, for
        // 130-290 ms per 20,000 records (benches/audit.rs). Readers attach it,
        // so searches join it by its unqualified table names.
        let log_file = sqlx::sqlite::SqliteConnectOptions::from_str(&config.database_url)
            .map_err(|e| Error::BadRequest(format!("invalid SQLite URL: {e}")))?
            .get_filename()
            .to_string_lossy()
            .into_owned();
        let index_file = format!("{log_file}{INDEX_FILE_SUFFIX}");
        let index = sqlite_pool(
            &format!("sqlite://{index_file}?mode=rwc"),
            1,
            acquire,
            SqliteRole::Index { log_file },
        )
        .await?;
        let read = sqlite_pool(
            &config.database_url,
            config.db_max_connections.min(8),
            acquire,
            SqliteRole::Reader { index_file },
        )
        .await?;
        Ok(Store {
            read,
            write,
            index,
            backend: Backend::Sqlite,
            own_checkpoints,
            cache: std::sync::Arc::new(cache::ReadCache::new()),
            wal_readers: Default::default(),
        })
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        let failed =
            |e: sqlx::migrate::MigrateError| Error::internal(format!("migration failed: {e}"));
        if self.backend == Backend::Sqlite {
            migrator.run(&self.write).await.map_err(failed)?;
            return self.prepare_sqlite_index().await;
        }
        // Nodes started together queue on the migration lock, and a migration
        // waits for running transactions, as long as that takes: not for
        // `lock_timeout`. Its own connection, closed afterwards, not pooled.
        let mut conn = self.write.acquire().await?.detach();
        conn.execute("SET lock_timeout = 0").await?;
        let migrated = migrator.run(&mut conn).await.map_err(failed);
        let _ = sqlx::Connection::close(conn).await;
        migrated
    }

    /// Creates the SQLite subject index's tables in their file, and starts
    /// the index over if it claims records the log does not have (the log's
    /// file was restored from an older copy, or replaced): its entries would
    /// hide the new records that take those sequence numbers.
    async fn prepare_sqlite_index(&self) -> Result<()> {
        // Statement by statement, outside a transaction: a transaction that
        // had read the index and then wrote to it would be refused at once
        // (SQLITE_BUSY, no waiting) whenever a running server's indexer had
        // written in between, as `licensegate audit verify` beside a busy
        // server was.
        self.index.execute(INDEX_SCHEMA).await?;
        const AHEAD: &str = "(SELECT indexed_upto FROM audit_index_state WHERE id = 1)
                              > (SELECT COALESCE(MAX(seq), 0) FROM log.audit_records)";
        let ahead: bool = col::<i64>(
            &sqlx::query(&format!("SELECT {AHEAD} AS ahead"))
                .fetch_one(&self.index)
                .await?,
            "ahead",
        )? != 0;
        if ahead {
            tracing::warn!("the audit subject index is ahead of the log; rebuilding it");
            // Write-locked from its start, and checked again under the lock.
            let mut tx = self.index.begin_with("BEGIN IMMEDIATE").await?;
            tx.execute(
                format!(
                    "DELETE FROM audit_subject_index WHERE {AHEAD};
                     UPDATE audit_index_state SET indexed_upto = 0 WHERE {AHEAD}"
                )
                .as_str(),
            )
            .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Pool for the audit log's subject index (see [`Store::connect`]).
    pub(crate) fn indexer(&self) -> &AnyPool {
        &self.index
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Pool for reads.
    pub fn reader(&self) -> &AnyPool {
        &self.read
    }

    /// Pool for writes.
    pub fn writer(&self) -> &AnyPool {
        &self.write
    }

    /// From now on the caller runs [`Store::checkpoint_wal`] regularly, so
    /// the SQLite writer stops checkpointing inside its commits (servers do;
    /// command-line tools keep SQLite's automatic checkpoints).
    pub async fn take_over_checkpoints(&self) -> Result<()> {
        if self.backend == Backend::Sqlite {
            self.own_checkpoints
                .store(true, std::sync::atomic::Ordering::Relaxed);
            // The writer pool's one connection, if already open.
            sqlx::query("PRAGMA wal_autocheckpoint = 0")
                .execute(&self.write)
                .await?;
        }
        Ok(())
    }

    /// Copies committed WAL pages into the SQLite database file without
    /// blocking the writer (PASSIVE); a no-op on PostgreSQL. Servers run it
    /// every [`WAL_CHECKPOINT_INTERVAL`].
    ///
    /// Under steady writes a passive checkpoint never quite catches up with
    /// the writer, so the WAL never starts over and grows without bound
    /// (1.4 GB after three minutes of `cargo bench --bench audit`; every
    /// commit then extends the file and every page read searches a larger
    /// WAL index). Past [`WAL_RESTART_FRAMES`] the writer's own connection,
    /// between two commits, copies back the little that is left and waits a
    /// moment for older readers (RESTART), so the next commit writes the WAL
    /// from its start again. The audit indexer's long reads of the log are
    /// not among those readers: they wait for the restart, and it for them.
    pub async fn checkpoint_wal(&self) -> Result<()> {
        if self.backend == Backend::Sqlite {
            // `main`: the readers' attached index checkpoints itself.
            let row = sqlx::query("PRAGMA main.wal_checkpoint(PASSIVE)")
                .fetch_one(&self.read)
                .await?;
            let frames: i64 = sqlx::Row::try_get(&row, 1)?;
            if frames > WAL_RESTART_FRAMES {
                // The indexer's read in progress ends first, and it starts
                // no other until the restart is done (the lock is fair).
                let _no_indexer = self.wal_readers.write().await;
                let mut conn = self.write.acquire().await?;
                // Appends wait while this runs: wait for readers briefly, not
                // for the usual busy timeout (a busy result is not an error;
                // the WAL then starts over after a later checkpoint).
                conn.execute("PRAGMA busy_timeout = 20").await?;
                let restarted = conn.execute("PRAGMA wal_checkpoint(RESTART)").await;
                if let Err(e) = conn.execute(BUSY_TIMEOUT).await {
                    // Left with the short timeout: closed, not reused.
                    conn.close_on_drop();
                    return Err(e.into());
                }
                restarted?;
            }
        }
        Ok(())
    }

    /// True when the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.read).await.is_ok()
    }

    /// Closes the pools, waiting for connections in use.
    pub async fn close(&self) {
        self.write.close().await;
        self.index.close().await;
        self.read.close().await;
    }
}

/// The subject index's WAL is checkpointed into its file every this many
/// pages (SQLite's default: 1,000), see [`sqlite_pool`].
const INDEX_AUTOCHECKPOINT: &str = "PRAGMA wal_autocheckpoint = 100";

/// Appended to the SQLite log's file name for its subject index's file.
pub const INDEX_FILE_SUFFIX: &str = ".audit-index";

/// The SQLite subject index's tables, in their own file (the PostgreSQL
/// migrations create the same in the one database). Only the indexer writes
/// them; nothing in them is evidence (records are), so no triggers.
const INDEX_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_subject_index (
    subject  TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    PRIMARY KEY (subject, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_index_state (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    indexed_upto  INTEGER NOT NULL
);
INSERT OR IGNORE INTO audit_index_state (id, indexed_upto) VALUES (1, 0);
";

/// What a SQLite pool is for.
#[derive(Clone)]
enum SqliteRole {
    /// The log's one writer; stops checkpointing once the flag is set.
    Writer(std::sync::Arc<std::sync::atomic::AtomicBool>),
    /// Readers, with the subject index's file attached.
    Reader { index_file: String },
    /// The subject index's one writer, with the log's file attached as `log`.
    Index { log_file: String },
}

async fn sqlite_pool(url: &str, max: u32, acquire: Duration, role: SqliteRole) -> Result<AnyPool> {
    AnyPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(acquire)
        // sqlx pings a pooled connection before lending it by default: for
        // SQLite a round trip to the connection's worker thread and back
        // that checks nothing (a file cannot drop a connection), paid by
        // every query (`perf`: 4.5% of the samples of the retrieval
        // benchmark, plus the thread wake-ups). A failing statement still
        // fails the request it belongs to.
        .test_before_acquire(false)
        .after_connect(move |conn, _meta| {
            let role = role.clone();
            Box::pin(async move {
                let own = matches!(&role, SqliteRole::Writer(f) if f.load(std::sync::atomic::Ordering::Relaxed));
                if own {
                    // While a server checkpoints the WAL beside the writer,
                    // the writer never does (an automatic checkpoint fsyncs
                    // the database file inside some unlucky commit).
                    conn.execute("PRAGMA wal_autocheckpoint = 0").await?;
                }
                // WAL: readers do not block the writer. synchronous=FULL: a
                // committed transaction survives power loss. foreign_keys is off
                // by default in SQLite.
                conn.execute("PRAGMA journal_mode = WAL").await?;
                if matches!(role, SqliteRole::Index { .. }) {
                    // Derived and rebuilt from the records: a commit lost to a
                    // power cut is indexed again (WAL keeps it consistent).
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    // Its checkpoints (each with two fsyncs) small and often,
                    // not 1,000 pages at once: the disk flushes whatever was
                    // written before an fsync, so a large one delayed the
                    // log's commits that fsynced beside it by tens of ms.
                    conn.execute(INDEX_AUTOCHECKPOINT).await?;
                } else {
                    conn.execute("PRAGMA synchronous = FULL").await?;
                }
                conn.execute("PRAGMA foreign_keys = ON").await?;
                conn.execute(BUSY_TIMEOUT).await?;
                // The audit log's indexes grow without bound; a larger page
                // cache and memory-mapped reads keep their upper levels out of
                // read() system calls (measured: benches/audit.rs).
                conn.execute("PRAGMA cache_size = -65536").await?;
                conn.execute("PRAGMA mmap_size = 1073741824").await?;
                // Statement journals of multi-row inserts in memory, not temp files.
                conn.execute("PRAGMA temp_store = MEMORY").await?;
                match &role {
                    SqliteRole::Reader { index_file } => {
                        sqlx::query("ATTACH DATABASE $1 AS audit_index")
                            .bind(index_file)
                            .execute(&mut *conn)
                            .await?;
                    }
                    SqliteRole::Index { log_file } => {
                        sqlx::query("ATTACH DATABASE $1 AS log")
                            .bind(log_file)
                            .execute(&mut *conn)
                            .await?;
                    }
                    SqliteRole::Writer(_) => {}
                }
                Ok(())
            })
        })
        .connect(url)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot open the SQLite database: {e}")))
}

/// Current time, UTC.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Unix time in whole milliseconds.
pub fn unix_millis(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Fixed-width RFC 3339 UTC timestamp, so text order is time order:
/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, with the microseconds truncated.
///
/// Written digit by digit: it is on every retrieval's path several times (the
/// record, the notice, the receipt), where `time`'s formatter took about
/// 3,800 instructions a call (`bench/instructions.sh`). Years outside
/// 0000-9999 go through that formatter, as before.
pub fn timestamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    let Ok(year) = u32::try_from(t.year()) else {
        return timestamp_formatted(t);
    };
    if year > 9999 {
        return timestamp_formatted(t);
    }
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut n: u32| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, u32::from(u8::from(t.month())));
    put(8, 2, u32::from(t.day()));
    put(11, 2, u32::from(t.hour()));
    put(14, 2, u32::from(t.minute()));
    put(17, 2, u32::from(t.second()));
    put(20, 6, t.microsecond());
    out.iter().map(|&b| char::from(b)).collect()
}

/// [`timestamp`] by `time`'s formatter.
fn timestamp_formatted(t: OffsetDateTime) -> String {
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    t.to_offset(UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Parses an RFC 3339 timestamp.
pub fn parse_timestamp(s: &str) -> Result<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|_| Error::BadRequest(format!("not an RFC 3339 time: {s:?}")))
}

/// Formats a date as `YYYY-MM-DD`.
pub fn date_string(d: Date) -> String {
    let fmt = format_description!("[year]-[month]-[day]");
    d.format(&fmt).unwrap_or_default()
}

/// Parses `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Result<Date> {
    let fmt = format_description!("[year]-[month]-[day]");
    Date::parse(s, &fmt).map_err(|_| Error::BadRequest(format!("not a date YYYY-MM-DD: {s:?}")))
}

/// Reads a column, turning a decoding problem into an internal error.
pub(crate) fn col<'r, T>(row: &'r AnyRow, name: &str) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    use sqlx::Row;
    row.try_get(name).map_err(Error::from)
}

/// A value bound to a [`Statement`].
#[derive(Debug, Clone)]
pub enum Bind {
    /// Text.
    Text(String),
    /// An integer.
    Int(i64),
    /// Bytes.
    Bytes(Vec<u8>),
    /// NULL (as text).
    Null,
}

/// One SQL statement with its values, built here in `store/` and run later
/// inside another transaction (the audit log's group commit).
#[derive(Debug, Clone)]
pub struct Statement {
    /// The SQL (`$N` placeholders).
    pub sql: &'static str,
    /// The values.
    pub binds: Vec<Bind>,
}

/// A query with its values bound.
type BoundQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

fn bind_all<'q>(mut q: BoundQuery<'q>, binds: impl IntoIterator<Item = Bind>) -> BoundQuery<'q> {
    for b in binds {
        q = match b {
            Bind::Text(v) => q.bind(v),
            Bind::Int(v) => q.bind(v),
            Bind::Bytes(v) => q.bind(v),
            Bind::Null => q.bind(Option::<String>::None),
        };
    }
    q
}

/// A [`Statement`] whose number of changed rows is checked.
#[derive(Debug, Clone)]
pub struct Write {
    /// The statement.
    pub statement: Statement,
    /// The rows it must change (none: not checked).
    pub changes: Option<u64>,
    /// Named in the error when it changes another number of rows.
    pub what: &'static str,
}

impl Store {
    /// Runs a statement on a connection inside the caller's transaction;
    /// returns the number of rows it changed.
    pub async fn execute_in(conn: &mut sqlx::AnyConnection, s: &Statement) -> Result<u64> {
        Self::execute_values(conn, s.sql, s.binds.iter().cloned()).await
    }

    /// [`Store::execute_in`] with the values moved into the query.
    async fn execute_values(
        conn: &mut sqlx::AnyConnection,
        sql: &'static str,
        binds: impl IntoIterator<Item = Bind>,
    ) -> Result<u64> {
        Ok(bind_all(sqlx::query(sql), binds)
            .execute(&mut *conn)
            .await?
            .rows_affected())
    }

    /// Runs `writes` in order in the caller's transaction and checks the rows
    /// each changed: on SQLite in one call to the connection's thread (see
    /// [`Script`]), on PostgreSQL one by one.
    pub async fn run_writes(conn: &mut sqlx::AnyConnection, writes: Vec<Write>) -> Result<()> {
        // The values are moved into the query, not copied: the records of a
        // group commit travel as one large JSON text.
        if !is_sqlite(conn) {
            for w in writes {
                let n = Self::execute_values(conn, w.statement.sql, w.statement.binds).await?;
                check_changes(w.changes, w.what, n)?;
            }
            return Ok(());
        }
        let mut script = Script::default();
        let mut checks = Vec::with_capacity(writes.len());
        for w in writes {
            script.push(w.statement.sql, w.statement.binds);
            checks.push((w.changes, w.what));
        }
        let results = script.run(conn).await?;
        for ((changes, what), r) in checks.into_iter().zip(&results) {
            check_changes(changes, what, r.changes)?;
        }
        Ok(())
    }
}

fn check_changes(expected: Option<u64>, what: &str, n: u64) -> Result<()> {
    match expected {
        Some(expected) if expected != n => Err(Error::internal(format!(
            "{what}: {n} rows changed, {expected} expected"
        ))),
        _ => Ok(()),
    }
}

/// Whether a connection is SQLite's.
pub(crate) fn is_sqlite(conn: &sqlx::AnyConnection) -> bool {
    conn.backend_name().eq_ignore_ascii_case("sqlite")
}

/// Several SQLite statements sent as one query, so that they run in one call
/// to the connection's thread instead of a round trip each (SQLite only:
/// PostgreSQL prepares one statement per query). SQLite runs the statements
/// of a query string in order and stops at the first that fails; the `$N`
/// placeholders of a query string number its values as a whole, so each
/// statement's are renumbered after the values of those before it. The text
/// of the statements must hold no `$` other than placeholders.
#[derive(Debug, Default)]
pub struct Script {
    sql: String,
    binds: Vec<Bind>,
    statements: usize,
}

/// What one statement of a [`Script`] returned.
#[derive(Default)]
pub struct ScriptResult {
    /// Its rows.
    pub rows: Vec<AnyRow>,
    /// The rows it changed (for a statement that is not an INSERT, UPDATE or
    /// DELETE, SQLite reports the last such statement's).
    pub changes: u64,
}

impl Script {
    /// Adds one statement (with `$1`… numbering its own values).
    pub fn push(&mut self, sql: &str, binds: impl IntoIterator<Item = Bind>) -> &mut Self {
        let offset = self.binds.len();
        if !self.sql.is_empty() {
            self.sql.push_str(";\n");
        }
        let mut rest = sql;
        while let Some(at) = rest.find('$') {
            self.sql.push_str(&rest[..=at]);
            rest = &rest[at + 1..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            match rest[..digits].parse::<usize>() {
                Ok(n) => self.sql.push_str(&(n + offset).to_string()),
                Err(_) => self.sql.push_str(&rest[..digits]),
            }
            rest = &rest[digits..];
        }
        self.sql.push_str(rest);
        self.binds.extend(binds);
        self.statements += 1;
        self
    }

    /// Runs the statements in order; the result of each, in order. An error
    /// means that a statement failed, and none after it ran.
    pub async fn run(self, conn: &mut sqlx::AnyConnection) -> Result<Vec<ScriptResult>> {
        use futures_util::StreamExt;
        let mut results = Vec::with_capacity(self.statements);
        let mut current = ScriptResult::default();
        let query = bind_all(sqlx::query(&self.sql), self.binds);
        let mut stream = conn.fetch_many(query);
        while let Some(item) = stream.next().await {
            match item? {
                sqlx::Either::Right(row) => current.rows.push(row),
                sqlx::Either::Left(done) => {
                    current.changes = done.rows_affected();
                    results.push(std::mem::take(&mut current));
                }
            }
        }
        if results.len() != self.statements {
            return Err(Error::internal(format!(
                "a script of {} statements returned {} results",
                self.statements,
                results.len()
            )));
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::{Connection, Row};

    async fn memory() -> sqlx::AnyConnection {
        sqlx::any::install_default_drivers();
        sqlx::AnyConnection::connect("sqlite::memory:")
            .await
            .unwrap()
    }

    /// The same with the table `t` of these columns.
    async fn memory_with_t(columns: &str) -> sqlx::AnyConnection {
        let mut c = memory().await;
        sqlx::query(&format!("CREATE TABLE t ({columns})"))
            .execute(&mut c)
            .await
            .unwrap();
        c
    }

    #[test]
    fn timestamps_are_written_as_times_formatter_writes_them() {
        let mut seen = 0;
        // From the first year `time` has (-9999) to its last (9999), in
        // uneven steps of about 90 days that hit every field's digits, with
        // microseconds and nanoseconds below them.
        let mut unix: i128 = -377_705_116_800_000_000_000; // -9999-01-01
        while unix < 253_402_300_800_000_000_000 {
            let t = OffsetDateTime::from_unix_timestamp_nanos(unix).unwrap();
            assert_eq!(timestamp(t), timestamp_formatted(t), "{t}");
            unix += 7_777_777_777_777_777 + unix.rem_euclid(1_000_003);
            seen += 1;
        }
        assert!(seen > 80_000, "{seen}");
        // In another offset, it is still written in UTC.
        let t = time::macros::datetime!(2026-12-05 00:30:00.1234567 +08:00);
        assert_eq!(timestamp(t), "2026-12-04T16:30:00.123456Z");
        assert_eq!(timestamp(t), timestamp_formatted(t));
    }

    #[test]
    fn a_script_numbers_each_statements_values_after_those_before() {
        let mut s = Script::default();
        s.push(
            "INSERT INTO t VALUES ($1, $2)",
            [Bind::Int(1), Bind::Int(2)],
        )
        .push("SELECT json_extract(x, '$.a'), $2, $1, $10 FROM t", [])
        .push("UPDATE t SET a = $1", [Bind::Int(3)]);
        assert_eq!(
            s.sql,
            "INSERT INTO t VALUES ($1, $2);\nSELECT json_extract(x, '$.a'), $4, $3, $12 FROM t;\nUPDATE t SET a = $3"
        );
        assert_eq!(s.binds.len(), 3);
        assert_eq!(s.statements, 3);
    }

    #[tokio::test]
    async fn a_script_runs_in_order_and_answers_each_statement() {
        let mut c = memory().await;
        let mut s = Script::default();
        s.push("CREATE TABLE t (a INTEGER, b TEXT)", [])
            .push(
                "INSERT INTO t VALUES ($1, $2), ($1 + 1, $2)",
                [Bind::Int(1), Bind::Text("x".into())],
            )
            .push(
                "INSERT INTO t VALUES ($2, $1)",
                [Bind::Text("y".into()), Bind::Int(7)],
            )
            .push("SELECT a, b FROM t WHERE a > $1 ORDER BY a", [Bind::Int(1)]);
        let results = s.run(&mut c).await.unwrap();
        assert_eq!(results.len(), 4);
        assert_eq!(results[1].changes, 2);
        assert_eq!(results[2].changes, 1);
        let rows: Vec<(i64, String)> = results[3]
            .rows
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(rows, [(2, "x".to_owned()), (7, "y".to_owned())]);
    }

    #[tokio::test]
    async fn a_script_stops_at_the_statement_that_fails() {
        let mut c = memory_with_t("a INTEGER PRIMARY KEY").await;
        let mut s = Script::default();
        s.push("INSERT INTO t VALUES ($1)", [Bind::Int(1)])
            .push("INSERT INTO t VALUES ($1)", [Bind::Int(1)])
            .push("INSERT INTO t VALUES ($1)", [Bind::Int(2)]);
        assert!(s.run(&mut c).await.is_err());
        let rows: Vec<i64> = sqlx::query_scalar("SELECT a FROM t")
            .fetch_all(&mut c)
            .await
            .unwrap();
        assert_eq!(rows, [1], "the statement after the failing one did not run");
    }

    #[tokio::test]
    async fn writes_that_change_other_rows_than_expected_are_refused() {
        let mut c = memory_with_t("a INTEGER").await;
        let write = |sql, changes| Write {
            statement: Statement { sql, binds: vec![] },
            changes: Some(changes),
            what: "t",
        };
        Store::run_writes(
            &mut c,
            vec![
                write("INSERT INTO t VALUES (1), (2)", 2),
                write("UPDATE t SET a = 3", 2),
            ],
        )
        .await
        .unwrap();
        let e = Store::run_writes(&mut c, vec![write("UPDATE t SET a = 4 WHERE a = 1", 1)])
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("t: 0 rows changed, 1 expected"),
            "{e}"
        );
    }
}
