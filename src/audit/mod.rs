//! The tamper-evident audit log: one append-only, hash-chained sequence of
//! records with signed Merkle checkpoints (RFC 9162 style).
//!
//! # Record hash (the canonical encoding)
//!
//! Each record's fields are encoded in this fixed order: `seq` (decimal),
//! `time`, `actor_kind`, `actor_id`, `action`, `outcome`, `holder`, `license`,
//! `license_type`, `consent`, `purpose`, `reason`, `request_id`,
//! `client_addr`. A present field is the byte `0x00`, its UTF-8 length as a
//! 4-byte big-endian integer, then its UTF-8 bytes; an absent one is the byte
//! `0xFF`. Then
//!
//! `hash = SHA-256(prev_hash || encoding)`, with `prev_hash` of record 1 = 32 zero bytes.
//!
//! The Merkle leaf of a record is its `hash` (see [`merkle`]).
//!
//! # Durability
//!
//! Appends go through one writer task per process that commits whatever has
//! queued up in one transaction (group commit); [`AuditLog::record`] returns
//! only after that transaction committed. Every batch locks the single
//! `audit_head` row first, so several processes on one PostgreSQL database
//! append to one chain, serialised on that row. Library changes append their
//! records inside their own transaction ([`append_in`]) so the change and its
//! record commit together.

pub mod archive;
pub mod checkpoint;
pub mod export;
pub mod merkle;
pub mod verify;

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};
use sqlx::AnyConnection;
use tokio::sync::{mpsc, oneshot};
use utoipa::ToSchema;

use crate::error::{Error, Result};
use crate::keys::sha256;
use crate::store::{is_sqlite, now, timestamp, Backend, Store, Write};
use merkle::{leaf_hash, Frontier, Hash};

/// Who did something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// A social entity (OAuth client with role entity).
    Entity,
    /// A holder.
    Holder,
    /// An issuing unit's client.
    Issuer,
    /// An operator.
    Operator,
    /// A regulator.
    Regulator,
    /// licensegate itself, or the command line.
    System,
    /// Someone not (yet) authenticated.
    Anonymous,
}

impl ActorKind {
    /// Wire and database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Entity => "entity",
            ActorKind::Holder => "holder",
            ActorKind::Issuer => "issuer",
            ActorKind::Operator => "operator",
            ActorKind::Regulator => "regulator",
            ActorKind::System => "system",
            ActorKind::Anonymous => "anonymous",
        }
    }

    /// The actor kind of a client role.
    pub fn of_role(role: crate::oauth::Role) -> Self {
        match role {
            crate::oauth::Role::Operator => ActorKind::Operator,
            crate::oauth::Role::Issuer => ActorKind::Issuer,
            crate::oauth::Role::Entity => ActorKind::Entity,
            crate::oauth::Role::Regulator => ActorKind::Regulator,
        }
    }
}

/// An authenticated (or claimed) actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// Kind.
    pub kind: ActorKind,
    /// Id: client id, holder id, or a name for the command line.
    pub id: String,
}

impl Actor {
    /// licensegate itself or its command line (`id` says which part).
    pub fn system(id: &str) -> Self {
        Actor {
            kind: ActorKind::System,
            id: id.to_owned(),
        }
    }

    /// A client acting in its role.
    pub fn client(role: crate::oauth::Role, client_id: &str) -> Self {
        Actor {
            kind: ActorKind::of_role(role),
            id: client_id.to_owned(),
        }
    }

    /// An event by this actor.
    pub fn event(&self, action: &str, outcome: Outcome) -> AuditEvent {
        AuditEvent::new(self.kind, self.id.clone(), action, outcome)
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done.
    Success,
    /// Refused (authentication, authorization, validation, state).
    Refused,
}

impl Outcome {
    /// Wire and database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Refused => "refused",
        }
    }
}

/// What a caller records; the log adds sequence number, time and hashes.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// Actor kind.
    pub actor_kind: ActorKind,
    /// Actor id (client id, holder id, "cli").
    pub actor_id: String,
    /// Action, e.g. `license.published`, `token.issued`, `access.denied`.
    pub action: String,
    /// Outcome.
    pub outcome: Outcome,
    /// Holder concerned.
    pub holder: Option<String>,
    /// License concerned (identifier of the version).
    pub license: Option<String>,
    /// License type concerned.
    pub license_type: Option<String>,
    /// Consent concerned.
    pub consent: Option<String>,
    /// Purpose (事由).
    pub purpose: Option<String>,
    /// Reason of a refusal, or the deciding policy.
    pub reason: Option<String>,
    /// Request id (filled from the current request when absent).
    pub request_id: Option<String>,
    /// Client address (filled from the current request when absent).
    pub client_addr: Option<String>,
}

impl AuditEvent {
    /// An event with the required parts; the rest is added with the builders.
    pub fn new(
        actor_kind: ActorKind,
        actor_id: impl Into<String>,
        action: &str,
        outcome: Outcome,
    ) -> Self {
        let meta = current_request();
        AuditEvent {
            actor_kind,
            actor_id: actor_id.into(),
            action: action.to_owned(),
            outcome,
            holder: None,
            license: None,
            license_type: None,
            consent: None,
            purpose: None,
            reason: None,
            request_id: meta.as_ref().map(|m| m.request_id.clone()),
            client_addr: meta.and_then(|m| m.client_addr),
        }
    }

    /// With the holder.
    pub fn holder(mut self, v: impl Into<String>) -> Self {
        self.holder = Some(v.into());
        self
    }

    /// With the license.
    pub fn license(mut self, v: impl Into<String>) -> Self {
        self.license = Some(v.into());
        self
    }

    /// With the license type.
    pub fn license_type(mut self, v: impl Into<String>) -> Self {
        self.license_type = Some(v.into());
        self
    }

    /// With the purpose.
    pub fn purpose(mut self, v: impl Into<String>) -> Self {
        self.purpose = Some(v.into());
        self
    }

    /// With a reason.
    pub fn reason(mut self, v: impl Into<String>) -> Self {
        self.reason = Some(v.into());
        self
    }
}

/// One record of the log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AuditRecord {
    /// Gapless sequence number, from 1.
    pub seq: i64,
    /// When (RFC 3339 UTC).
    pub time: String,
    /// Actor kind.
    pub actor_kind: String,
    /// Actor id.
    pub actor_id: String,
    /// Action.
    pub action: String,
    /// success or refused.
    pub outcome: String,
    /// Holder.
    pub holder: Option<String>,
    /// License identifier.
    pub license: Option<String>,
    /// License type.
    pub license_type: Option<String>,
    /// Consent.
    pub consent: Option<String>,
    /// Purpose.
    pub purpose: Option<String>,
    /// Reason or deciding policy.
    pub reason: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
    /// Client address.
    pub client_addr: Option<String>,
    /// Hash of the previous record (hex).
    pub prev_hash: String,
    /// This record's hash (hex).
    pub hash: String,
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    ::hex::encode(bytes)
}

/// Value of each hex digit; 0xFF for any other byte.
const HEX_DIGITS: [u8; 256] = {
    let mut t = [0xFF; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Parses lowercase or uppercase hex into 32 bytes. By table rather than
/// `hex::decode_to_slice`: verification parses two per record, and this took
/// half the time of that in the measurement behind benches/audit.rs.
pub fn unhex32(s: &str) -> Option<Hash> {
    let digits: &[u8; 64] = s.as_bytes().try_into().ok()?;
    let mut out = [0u8; 32];
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (hi, lo) = (HEX_DIGITS[pair[0] as usize], HEX_DIGITS[pair[1] as usize]);
        bad |= hi | lo;
        *o = (hi << 4) | (lo & 0x0F);
    }
    (bad & 0xF0 == 0).then_some(out)
}

impl AuditRecord {
    /// The record's fields, borrowed.
    pub fn view(&self) -> RecordRef<'_> {
        RecordRef {
            seq: self.seq,
            fields: [
                Some(&self.time),
                Some(&self.actor_kind),
                Some(&self.actor_id),
                Some(&self.action),
                Some(&self.outcome),
                self.holder.as_deref(),
                self.license.as_deref(),
                self.license_type.as_deref(),
                self.consent.as_deref(),
                self.purpose.as_deref(),
                self.reason.as_deref(),
                self.request_id.as_deref(),
                self.client_addr.as_deref(),
            ],
            prev_hash: &self.prev_hash,
            hash: &self.hash,
        }
    }

    /// The canonical encoding of the record's content (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.view().encode_into(&mut out);
        out
    }

    /// The hash this record must have after `prev`.
    pub fn compute_hash(&self, prev: &Hash) -> Hash {
        self.view().compute_hash(prev, &mut Vec::with_capacity(320))
    }
}

/// A record's content borrowed from wherever it was read (a row, a page of
/// the database, a line of an export): what is hashed and chained.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// Sequence number.
    pub seq: i64,
    /// The other hashed fields in canonical order: `time`, `actor_kind`,
    /// `actor_id`, `action`, `outcome`, `holder`, `license`, `license_type`,
    /// `consent`, `purpose`, `reason`, `request_id`, `client_addr`.
    pub fields: [Option<&'a str>; 13],
    /// The previous record's hash as stored (hex).
    pub prev_hash: &'a str,
    /// This record's hash as stored (hex).
    pub hash: &'a str,
}

impl RecordRef<'_> {
    /// Appends the canonical encoding (see the module docs) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // seq is a present field like the others: 0x00, length, decimal digits.
        out.push(0);
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        let _ = write!(out, "{}", self.seq); // writing to a Vec cannot fail
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        for f in self.fields {
            match f {
                None => out.push(0xFF),
                Some(s) => {
                    out.push(0);
                    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
            }
        }
    }

    /// The hash this record must have after `prev`; `scratch` is reused
    /// between calls (verification hashes every record).
    pub fn compute_hash(&self, prev: &Hash, scratch: &mut Vec<u8>) -> Hash {
        scratch.clear();
        scratch.extend_from_slice(prev);
        self.encode_into(scratch);
        sha256(&scratch[..])
    }
}

/// Text read from JSON: borrowed from the input unless it had escapes.
pub(crate) struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> std::result::Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        d.deserialize_str(Visitor).map(Text)
    }
}

/// A record as read from JSON (a page of [`crate::store::Store::audit_page_json`],
/// whose rows are arrays in column order, or an export line's object),
/// borrowing its text: the same fields as [`AuditRecord`] without an
/// allocation for each (verification reads every record).
#[derive(Deserialize)]
pub(crate) struct RecordText<'a> {
    seq: i64,
    #[serde(borrow)]
    time: Text<'a>,
    #[serde(borrow)]
    actor_kind: Text<'a>,
    #[serde(borrow)]
    actor_id: Text<'a>,
    #[serde(borrow)]
    action: Text<'a>,
    #[serde(borrow)]
    outcome: Text<'a>,
    #[serde(borrow)]
    holder: Option<Text<'a>>,
    #[serde(borrow)]
    license: Option<Text<'a>>,
    #[serde(borrow)]
    license_type: Option<Text<'a>>,
    #[serde(borrow)]
    consent: Option<Text<'a>>,
    #[serde(borrow)]
    purpose: Option<Text<'a>>,
    #[serde(borrow)]
    reason: Option<Text<'a>>,
    #[serde(borrow)]
    request_id: Option<Text<'a>>,
    #[serde(borrow)]
    client_addr: Option<Text<'a>>,
    #[serde(borrow)]
    prev_hash: Text<'a>,
    #[serde(borrow)]
    hash: Text<'a>,
}

impl Text<'_> {
    fn as_str(&self) -> &str {
        &self.0
    }
}

/// The text of an optional field.
fn opt<'a>(t: &'a Option<Text<'_>>) -> Option<&'a str> {
    t.as_ref().map(Text::as_str)
}

impl RecordText<'_> {
    /// The record's fields, borrowed.
    pub(crate) fn view(&self) -> RecordRef<'_> {
        RecordRef {
            seq: self.seq,
            fields: [
                Some(&self.time.0),
                Some(&self.actor_kind.0),
                Some(&self.actor_id.0),
                Some(&self.action.0),
                Some(&self.outcome.0),
                opt(&self.holder),
                opt(&self.license),
                opt(&self.license_type),
                opt(&self.consent),
                opt(&self.purpose),
                opt(&self.reason),
                opt(&self.request_id),
                opt(&self.client_addr),
            ],
            prev_hash: &self.prev_hash.0,
            hash: &self.hash.0,
        }
    }
}

impl From<RecordRef<'_>> for AuditRecord {
    fn from(r: RecordRef<'_>) -> Self {
        let text = |i: usize| r.fields[i].map(str::to_owned);
        let required = |i: usize| text(i).unwrap_or_default();
        AuditRecord {
            seq: r.seq,
            time: required(0),
            actor_kind: required(1),
            actor_id: required(2),
            action: required(3),
            outcome: required(4),
            holder: text(5),
            license: text(6),
            license_type: text(7),
            consent: text(8),
            purpose: text(9),
            reason: text(10),
            request_id: text(11),
            client_addr: text(12),
            prev_hash: r.prev_hash.to_owned(),
            hash: r.hash.to_owned(),
        }
    }
}

/// The head of the chain: last sequence number, its hash and the Merkle frontier.
#[derive(Debug, Clone)]
pub struct Head {
    /// Last sequence number (0 when empty).
    pub seq: i64,
    /// Hash of the last record (zeros when empty).
    pub hash: Hash,
    /// Merkle frontier over all records.
    pub frontier: Frontier,
}

/// Appends `events` inside the caller's transaction: locks the head, chains
/// the records, inserts them and moves the head. Returns the records.
pub async fn append_in(
    conn: &mut AnyConnection,
    events: Vec<AuditEvent>,
) -> Result<Vec<AuditRecord>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let head = Store::lock_audit_head(conn).await?;
    append_after(conn, head, events).await
}

/// Appends `events` after `head`, which the caller's transaction has locked.
async fn append_after(
    conn: &mut AnyConnection,
    head: Head,
    events: Vec<AuditEvent>,
) -> Result<Vec<AuditRecord>> {
    let (records, head) = chain(head, events);
    if !records.is_empty() {
        Store::append_audit_records(conn, &records, &head).await?;
    }
    Ok(records)
}

/// The records of `events` chained after `head`, and the head after them.
fn chain(mut head: Head, events: Vec<AuditEvent>) -> (Vec<AuditRecord>, Head) {
    if events.is_empty() {
        return (Vec::new(), head);
    }
    let time = timestamp(now());
    let mut records = Vec::with_capacity(events.len());
    let mut scratch = Vec::with_capacity(320);
    for e in events {
        let mut r = AuditRecord {
            seq: head.seq + 1,
            time: time.clone(),
            actor_kind: e.actor_kind.as_str().to_owned(),
            actor_id: e.actor_id,
            action: e.action,
            outcome: e.outcome.as_str().to_owned(),
            holder: e.holder,
            license: e.license,
            license_type: e.license_type,
            consent: e.consent,
            purpose: e.purpose,
            reason: e.reason.map(|r| truncate(r, 2000)),
            request_id: e.request_id,
            client_addr: e.client_addr,
            prev_hash: hex(&head.hash),
            hash: String::new(),
        };
        let h = r.view().compute_hash(&head.hash, &mut scratch);
        r.hash = hex(&h);
        head.frontier.push(leaf_hash(&h));
        head.seq = r.seq;
        head.hash = h;
        records.push(r);
    }
    (records, head)
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Changes committed in the same transaction as their audit records. If the
/// guard does not hold (a code already used, a budget already spent), nothing
/// else is done and the `refused` records are appended instead of the
/// intended ones.
#[derive(Debug, Clone)]
pub struct Guarded {
    /// What must hold for the change.
    pub guard: Guard,
    /// Run in order once the guard holds.
    pub then: Vec<crate::store::Statement>,
    /// Queued once the guard holds (the outbox); all the notifications of one
    /// commit go in with one statement.
    pub notifications: Vec<crate::store::notify::NotificationRow>,
    /// What is recorded when the guard does not hold.
    pub refused: Vec<AuditEvent>,
}

/// The condition of a [`Guarded`] change.
#[derive(Debug, Clone)]
pub enum Guard {
    /// None: the change is always made.
    Always,
    /// A statement that must change a row.
    Changes(crate::store::Statement),
    /// One retrieval spent from a consent's budget, while the consent is
    /// active, unexpired at `now_unix` and has budget left. The spends of one
    /// commit are decided in their order from one read of their consents and
    /// written with one statement, so concurrent reads never overspend.
    Spend {
        /// The consent.
        consent_id: String,
        /// The time of the read (unix seconds).
        now_unix: i64,
        /// What the call went by without reading it again, to be confirmed
        /// under the commit's lock; none when the call read it fresh.
        expect: Option<Expected>,
    },
}

/// What a retrieval went by when it did not read its token's state again
/// (`Store::kept_call`): the commit finds the token not revoked, the consent
/// active and unexpired, its entity active and the change generations the
/// same, or it records and spends nothing and answers [`Appended::stale`].
#[derive(Debug, Clone)]
pub struct Expected {
    /// The access token's id.
    pub jti: String,
    /// The change generations the call's reads went by.
    pub generations: crate::store::cache::Generations,
}

impl Guarded {
    /// A change under `guard`, with nothing to do yet.
    pub fn new(guard: Guard) -> Self {
        Guarded {
            guard,
            then: Vec::new(),
            notifications: Vec::new(),
            refused: Vec::new(),
        }
    }

    /// Notifications queued with the records, unconditionally.
    pub fn notify(notifications: Vec<crate::store::notify::NotificationRow>) -> Self {
        Guarded {
            notifications,
            ..Self::new(Guard::Always)
        }
    }
}

/// What an append did.
#[derive(Debug, Clone)]
pub struct Appended {
    /// Sequence numbers of the records appended, in order.
    pub seqs: Vec<i64>,
    /// What the commit decided for the call.
    pub decision: Decision,
}

/// What a group commit decided for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The guarded change was made (always, without a guard) and the call's
    /// records appended.
    Applied,
    /// The guard did not hold: nothing changed, the `refused` records were
    /// appended instead.
    Refused,
    /// The call went by a state that has changed since ([`Expected`]):
    /// nothing was recorded or changed, and it is to be decided again.
    Stale,
}

impl Appended {
    /// Whether the guarded change was made.
    pub fn applied(&self) -> bool {
        self.decision == Decision::Applied
    }
}

struct Pending {
    events: Vec<AuditEvent>,
    guard: Option<Guarded>,
    done: oneshot::Sender<Result<Appended>>,
}

/// Largest number of records committed in one transaction.
pub const MAX_BATCH: usize = 1024;

/// How the writer lets a batch fill up to the last one's size before it
/// commits (under steady load about as many callers come back with their next
/// record as the last commit answered).
#[derive(Clone, Copy)]
enum Linger {
    /// On a thread of its own (SQLite): gives its core to the request threads
    /// (`sched_yield`) until the batch is as large as the last one, for at
    /// most this long. An idle log commits at once (the last batch was one).
    Yield(std::time::Duration),
    /// On the request runtime (PostgreSQL): yields this many times to the
    /// tasks queued on its worker. No timer: an idle log commits at once.
    Tasks(usize),
}

/// The writer's linger on its own thread: measured on 2 cores at 10,000
/// retrievals/s offered, 100, 200 and 400 µs gave about the same latency
/// (p50 2.3-4.2 ms); 200 µs is less than a commit's time.
const LINGER_ON_THREAD: std::time::Duration = std::time::Duration::from_micros(200);

/// How many times the writer yields to the runtime's other tasks for a batch
/// to fill up.
const LINGER_YIELDS: usize = 16;

/// The audit log service: durable appends with group commit.
pub struct AuditLog {
    queue: mpsc::Sender<Pending>,
    store: Store,
}

impl AuditLog {
    /// Starts the writer: on SQLite on a thread of its own, on PostgreSQL as
    /// a task of the current runtime.
    ///
    /// A SQLite commit is three calls to the connection's own thread (see
    /// [`commit_batch_sqlite`]), and the writer runs between them. As a task
    /// of the request runtime it waited, at each of those steps, behind the
    /// requests queued on its worker, and held the log that much longer: on
    /// 2 cores at 10,000 retrievals/s offered, 1.57-1.72 ms per commit and a
    /// p50 of 5.0-6.3 ms, against 0.80-0.95 ms per commit and a p50 of
    /// 2.3-3.9 ms on a thread of its own (woken by the kernel as soon as its
    /// call returns). A PostgreSQL connection's socket is driven by the
    /// runtime that opened it, so there the writer stays a task.
    pub fn start(store: Store, metrics: &crate::telemetry::Metrics) -> Result<Arc<Self>> {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 8);
        let counters = WriterMetrics {
            records: metrics.audit_records.clone(),
            batch: metrics.audit_batch.clone(),
            failures: metrics.audit_failures.clone(),
            commit: metrics.audit_commit.clone(),
        };
        if store.backend() == Backend::Sqlite {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::internal(format!("the audit writer's runtime: {e}")))?;
            let s = store.clone();
            std::thread::Builder::new()
                .name("audit-writer".into())
                .spawn(move || {
                    runtime.block_on(writer(s, rx, counters, Linger::Yield(LINGER_ON_THREAD)))
                })
                .map_err(|e| Error::internal(format!("the audit writer's thread: {e}")))?;
        } else {
            tokio::spawn(writer(
                store.clone(),
                rx,
                counters,
                Linger::Tasks(LINGER_YIELDS),
            ));
        }
        Ok(Arc::new(AuditLog { queue: tx, store }))
    }

    async fn submit(&self, events: Vec<AuditEvent>, guard: Option<Guarded>) -> Result<Appended> {
        let refusal_if_applied = events.iter().any(|e| e.outcome == Outcome::Refused);
        let refusal_if_refused = guard.as_ref().is_some_and(|g| !g.refused.is_empty());
        let (done, wait) = oneshot::channel();
        self.queue
            .send(Pending {
                events,
                guard,
                done,
            })
            .await
            .map_err(|_| Error::Unavailable("the audit log is shutting down".into()))?;
        let appended = wait
            .await
            .map_err(|_| Error::Unavailable("the audit log writer stopped".into()))??;
        // By what was appended for the call.
        let refusal_recorded = match appended.decision {
            Decision::Applied => refusal_if_applied,
            Decision::Refused => refusal_if_refused,
            Decision::Stale => false,
        };
        if refusal_recorded {
            note_refusal_recorded();
        }
        Ok(appended)
    }

    /// Appends one record and waits until it is durable; returns its sequence number.
    pub async fn record(&self, event: AuditEvent) -> Result<i64> {
        let a = self.submit(vec![event], None).await?;
        a.seqs
            .first()
            .copied()
            .ok_or_else(|| Error::internal("an append returned no sequence number"))
    }

    /// Appends several records, consecutively in one commit; waits until they are durable.
    pub async fn record_all(&self, events: Vec<AuditEvent>) -> Result<Vec<i64>> {
        Ok(self.submit(events, None).await?.seqs)
    }

    /// Makes a guarded change and appends its records in one commit (see
    /// [`Guarded`]); waits until durable.
    pub async fn record_guarded(
        &self,
        events: Vec<AuditEvent>,
        guard: Guarded,
    ) -> Result<Appended> {
        self.submit(events, Some(guard)).await
    }

    /// The store behind the log.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

struct WriterMetrics {
    records: prometheus_client::metrics::counter::Counter,
    batch: prometheus_client::metrics::histogram::Histogram,
    failures: prometheus_client::metrics::counter::Counter,
    commit: prometheus_client::metrics::histogram::Histogram,
}

/// Takes what has queued, up to [`MAX_BATCH`]; whether the batch is as large
/// as `target`.
fn take_queued(rx: &mut mpsc::Receiver<Pending>, batch: &mut Vec<Pending>, target: usize) -> bool {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(p) => batch.push(p),
            Err(_) => break,
        }
    }
    batch.len() >= target
}

async fn writer(
    store: Store,
    mut rx: mpsc::Receiver<Pending>,
    metrics: WriterMetrics,
    linger: Linger,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    // How many callers the last commit answered: under steady load about as
    // many come back with their next record.
    let mut last_batch = 1;
    while let Some(first) = rx.recv().await {
        batch.push(first);
        // Let the callers that were just answered queue their next record, so
        // batches fill up under load instead of committing stragglers alone
        // (and the rest in the next commit, a whole fsync later).
        match linger {
            Linger::Yield(most) => {
                let until = std::time::Instant::now() + most;
                while !take_queued(&mut rx, &mut batch, last_batch)
                    && std::time::Instant::now() < until
                {
                    std::thread::yield_now();
                }
            }
            Linger::Tasks(n) => {
                for _ in 0..n {
                    tokio::task::yield_now().await;
                    if take_queued(&mut rx, &mut batch, last_batch) {
                        break;
                    }
                }
            }
        }
        last_batch = batch.len();
        let started = std::time::Instant::now();
        let mut result = commit_batch(&store, &batch).await;
        // A transaction PostgreSQL chose as a deadlock victim (or could not
        // serialize) was rolled back whole: the same batch can run again.
        for _ in 0..3 {
            match &result {
                Err(e) if e.is_retryable_conflict() => {
                    tracing::warn!(error = %e, records = batch.len(), "audit batch retried");
                    result = commit_batch(&store, &batch).await;
                }
                _ => break,
            }
        }
        metrics.commit.observe(started.elapsed().as_secs_f64());
        metrics.batch.observe(batch.len() as f64);
        match result {
            Ok(appended) => {
                metrics
                    .records
                    .inc_by(appended.iter().map(|a| a.seqs.len() as u64).sum());
                for (p, a) in batch.drain(..).zip(appended) {
                    let _ = p.done.send(Ok(a));
                }
            }
            Err(e) => {
                metrics.failures.inc_by(batch.len() as u64);
                tracing::error!(error = %e, records = batch.len(), "audit append failed");
                for p in batch.drain(..) {
                    let _ = p.done.send(Err(Error::Unavailable(
                        "the audit log is unavailable: it could not record this request, and nothing was done".into(),
                    )));
                }
            }
        }
    }
}

async fn commit_batch(store: &Store, batch: &[Pending]) -> Result<Vec<Appended>> {
    if store.backend() == Backend::Sqlite {
        return commit_batch_sqlite(store, batch).await;
    }
    let mut tx = store.writer().begin().await?;
    // The log's head first: batches of several nodes then queue on it instead
    // of taking the guards' row locks in different orders (a deadlock).
    let head = Store::lock_audit_head(&mut tx).await?;
    let (writes, appended) = apply_batch(&mut tx, batch, head, None).await?;
    Store::run_writes(&mut tx, writes).await?;
    tx.commit().await?;
    Ok(appended)
}

/// A group commit on SQLite, for a batch of retrievals in three calls to the
/// writer connection's thread: `BEGIN IMMEDIATE` with the head and the
/// budgets of the batch's first spends, then every write (see
/// [`crate::store::Script`]), then `COMMIT` once their changes are checked
/// (a guarded change that decides later ones adds its own calls). Each call
/// waits for that thread to get a core, so one call per statement (seven for
/// a batch of retrievals) stretched the writer's hold on the log: at 8,000
/// retrievals/s offered, 1.67-1.98 ms per commit against 1.23-1.56 ms.
async fn commit_batch_sqlite(store: &Store, batch: &[Pending]) -> Result<Vec<Appended>> {
    let mut conn = ManualTransaction {
        conn: store.writer().acquire().await?,
        released: false,
    };
    let c: &mut AnyConnection = &mut conn.conn;
    let done = async {
        let (ids, jtis) = first_spends(batch);
        let budgets = Store::budgets_statement(true, &ids, &jtis)?;
        let (head, budgets) = Store::begin_group_commit_sqlite(c, budgets).await?;
        let read = Prefetched { ids, jtis, budgets };
        let (writes, appended) = apply_batch(c, batch, head, Some(read)).await?;
        Store::run_writes(c, writes).await?;
        sqlx::query("COMMIT").execute(&mut *c).await?;
        Ok(appended)
    }
    .await;
    if done.is_err() {
        // Nothing of the batch stays. The connection goes back to the pool
        // once it is out of the transaction: rolled back now, or already
        // (SQLite rolls back by itself after some errors, such as a full
        // disk, and a BEGIN that failed began nothing). Otherwise it is
        // closed, which rolls back too.
        match sqlx::query("ROLLBACK").execute(&mut *c).await {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.message().contains("no transaction is active") => {}
            Err(e) => {
                tracing::error!(error = %e, "the audit writer's transaction could not be rolled back; closing its connection");
                return done;
            }
        }
    }
    conn.released = true;
    done
}

/// The writer's connection while a transaction begun by hand is open: closed
/// if dropped before it is marked released (the batch was interrupted, or its
/// transaction could not be ended), so that no later write runs inside it.
struct ManualTransaction {
    conn: sqlx::pool::PoolConnection<sqlx::Any>,
    released: bool,
}

impl Drop for ManualTransaction {
    fn drop(&mut self) {
        if !self.released {
            self.conn.close_on_drop();
        }
    }
}

/// The consents and token ids of the batch's spends that are decided first
/// (those before any guarded change that decides them), as
/// [`decide_spends`] reads them.
fn first_spends(batch: &[Pending]) -> (Vec<&str>, Vec<&str>) {
    spend_keys(
        batch
            .iter()
            .filter_map(|p| p.guard.as_ref())
            .take_while(|g| matches!(g.guard, Guard::Spend { .. }) || !decides_spends_before(g))
            .filter_map(|g| match &g.guard {
                Guard::Spend {
                    consent_id, expect, ..
                } => Some((consent_id.as_str(), expect.as_ref())),
                _ => None,
            }),
    )
}

/// Whether a guarded change (not a spend) has the spends queued before it
/// decided first: it might change their consents.
fn decides_spends_before(g: &Guarded) -> bool {
    matches!(g.guard, Guard::Changes(_)) || !g.then.is_empty()
}

/// The consents and the ids of the tokens that went by an earlier read of
/// these spends, sorted and without repeats.
fn spend_keys<'a>(
    spends: impl Iterator<Item = (&'a str, Option<&'a Expected>)>,
) -> (Vec<&'a str>, Vec<&'a str>) {
    let (mut ids, mut jtis) = (Vec::new(), Vec::new());
    for (consent, expect) in spends {
        ids.push(consent);
        jtis.extend(expect.map(|e| e.jti.as_str()));
    }
    for v in [&mut ids, &mut jtis] {
        v.sort_unstable();
        v.dedup();
    }
    (ids, jtis)
}

/// Budgets read when the transaction began, for the spends of `ids` and
/// `jtis`.
struct Prefetched<'a> {
    ids: Vec<&'a str>,
    jtis: Vec<&'a str>,
    budgets: crate::store::consent::Budgets,
}

/// Decides a batch after `head` in the transaction `tx`: runs the guarded
/// changes whose outcome decides later ones, and returns the writes left
/// (budgets spent last, the statements that follow them, the notifications
/// and the records) and what each caller gets.
async fn apply_batch(
    tx: &mut AnyConnection,
    batch: &[Pending],
    head: Head,
    mut read: Option<Prefetched<'_>>,
) -> Result<(Vec<Write>, Vec<Appended>)> {
    let sqlite = is_sqlite(tx);
    let mut decisions = vec![Decision::Applied; batch.len()];
    // Spends not yet decided: decided together, before any later statement
    // runs (it might change their consents).
    let mut spends = Vec::new();
    for (i, p) in batch.iter().enumerate() {
        let Some(g) = &p.guard else { continue };
        if let Guard::Spend {
            consent_id,
            now_unix,
            expect,
        } = &g.guard
        {
            spends.push(Spend {
                index: i,
                consent: consent_id.as_str(),
                now_unix: *now_unix,
                expect: expect.as_ref(),
            });
            continue;
        }
        if decides_spends_before(g) {
            let writes = decide_spends(tx, batch, &mut spends, &mut decisions, read.take()).await?;
            Store::run_writes(tx, writes).await?;
        }
        if let Guard::Changes(s) = &g.guard {
            if Store::execute_in(tx, s).await? == 0 {
                decisions[i] = Decision::Refused;
            }
        }
        if decisions[i] == Decision::Applied {
            for s in &g.then {
                Store::execute_in(tx, s).await?;
            }
        }
    }
    let mut writes = decide_spends(tx, batch, &mut spends, &mut decisions, read.take()).await?;
    let notifications: Vec<_> = batch
        .iter()
        .zip(&decisions)
        .filter(|(_, d)| **d == Decision::Applied)
        .filter_map(|(p, _)| p.guard.as_ref())
        .flat_map(|g| &g.notifications)
        .collect();
    if !notifications.is_empty() {
        writes.push(Store::notifications_write(sqlite, &notifications)?);
    }
    let mut events = Vec::new();
    let mut shapes = Vec::with_capacity(batch.len());
    for (p, &decision) in batch.iter().zip(&decisions) {
        let chosen: &[AuditEvent] = match (decision, &p.guard) {
            (Decision::Stale, _) => &[],
            (Decision::Refused, Some(g)) => &g.refused,
            _ => &p.events,
        };
        shapes.push((chosen.len(), decision));
        events.extend(chosen.iter().cloned());
    }
    let (records, head) = chain(head, events);
    if !records.is_empty() {
        writes.extend(Store::append_writes(sqlite, &records, &head)?);
    }
    let mut seqs = records.iter().map(|r| r.seq);
    let appended = shapes
        .into_iter()
        .map(|(n, decision)| Appended {
            seqs: seqs.by_ref().take(n).collect(),
            decision,
        })
        .collect();
    Ok((writes, appended))
}

/// A budget spend of a group commit, not yet decided.
struct Spend<'a> {
    /// Its place in the batch.
    index: usize,
    consent: &'a str,
    now_unix: i64,
    expect: Option<&'a Expected>,
}

/// Decides the budget spends `spends` in their order, from one read of their
/// consents (and of what the calls among them that went by an earlier read
/// expect; `read` when it was read for them already), and returns the writes
/// that follow: one statement for the budgets spent, then the statements of
/// the calls that were made.
async fn decide_spends(
    tx: &mut AnyConnection,
    batch: &[Pending],
    spends: &mut Vec<Spend<'_>>,
    decisions: &mut [Decision],
    read: Option<Prefetched<'_>>,
) -> Result<Vec<Write>> {
    if spends.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, jtis) = spend_keys(spends.iter().map(|s| (s.consent, s.expect)));
    let budgets = match read {
        Some(r) if r.ids == ids && r.jtis == jtis => r.budgets,
        _ => Store::lock_budgets_in(tx, &ids, &jtis).await?,
    };
    let mut spent: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    for s in spends.iter() {
        let budget = budgets.consents.get(s.consent);
        if let Some(e) = s.expect {
            let holds = budget.is_some_and(|b| b.client_active && b.open(s.now_unix))
                && !budgets.revoked.contains(&e.jti)
                && budgets.generations == e.generations;
            if !holds {
                decisions[s.index] = Decision::Stale;
                continue;
            }
        }
        let n = spent.entry(s.consent).or_default();
        if budget.is_some_and(|b| b.allows(*n, s.now_unix)) {
            *n += 1;
        } else {
            decisions[s.index] = Decision::Refused;
        }
    }
    let mut spent: Vec<(&str, i64)> = spent.into_iter().filter(|(_, n)| *n > 0).collect();
    spent.sort_unstable();
    let mut writes = Vec::new();
    if !spent.is_empty() {
        writes.push(Store::spend_write(
            is_sqlite(tx),
            &spent,
            &timestamp(now()),
        )?);
    }
    for s in spends.iter() {
        if decisions[s.index] == Decision::Applied {
            for st in batch[s.index].guard.iter().flat_map(|g| &g.then) {
                writes.push(Write {
                    statement: st.clone(),
                    changes: None,
                    what: "",
                });
            }
        }
    }
    spends.clear();
    Ok(writes)
}

/// Where the current request came from, for the records it causes.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    /// Request id (also returned as `x-request-id`).
    pub request_id: String,
    /// Peer address.
    pub client_addr: Option<String>,
    /// Set once a refusal of this request is on record with its details, so
    /// that the HTTP layer does not record it a second time.
    pub refusal_recorded: Arc<std::sync::atomic::AtomicBool>,
}

/// Notes that the current request's refusal is on record.
fn note_refusal_recorded() {
    if let Some(m) = current_request() {
        m.refusal_recorded
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

tokio::task_local! {
    static REQUEST: RequestMeta;
}

/// Runs `f` with `meta` as the current request.
pub async fn with_request<F: std::future::Future>(meta: RequestMeta, f: F) -> F::Output {
    REQUEST.scope(meta, f).await
}

/// The current request, if any.
pub fn current_request() -> Option<RequestMeta> {
    REQUEST.try_with(|m| m.clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AuditRecord {
        AuditRecord {
            seq: 1,
            time: "2026-01-01T00:00:00.000000Z".into(),
            actor_kind: "issuer".into(),
            actor_id: "iss_1".into(),
            action: "license.published".into(),
            outcome: "success".into(),
            holder: Some("h_1".into()),
            license: None,
            license_type: Some("JMSFZ".into()),
            consent: None,
            purpose: None,
            reason: None,
            request_id: None,
            client_addr: None,
            prev_hash: hex(&[0; 32]),
            hash: String::new(),
        }
    }

    #[test]
    fn encoding_is_the_documented_one() {
        let mut r = record();
        r.seq = 1234567;
        let mut expected = Vec::new();
        for f in [
            Some("1234567"),
            Some("2026-01-01T00:00:00.000000Z"),
            Some("issuer"),
            Some("iss_1"),
            Some("license.published"),
            Some("success"),
            Some("h_1"),
            None,
            Some("JMSFZ"),
            None,
            None,
            None,
            None,
            None,
        ] {
            match f {
                None => expected.push(0xFF),
                Some(s) => {
                    expected.push(0);
                    expected.extend_from_slice(&(s.len() as u32).to_be_bytes());
                    expected.extend_from_slice(s.as_bytes());
                }
            }
        }
        assert_eq!(r.encode(), expected);
        let prev = [7u8; 32];
        assert_eq!(
            r.compute_hash(&prev),
            sha256([&prev[..], &expected[..]].concat())
        );
        // The same record read elsewhere (a page, an export line) hashes the same.
        let mut scratch = b"left over".to_vec();
        assert_eq!(
            r.view().compute_hash(&prev, &mut scratch),
            r.compute_hash(&prev)
        );
    }

    #[test]
    fn encoding_distinguishes_absent_empty_and_shifted_fields() {
        let a = record();
        let mut b = record();
        b.license = Some(String::new());
        assert_ne!(a.encode(), b.encode());
        let mut c = record();
        c.holder = None;
        c.license = Some("h_1".into());
        assert_ne!(a.encode(), c.encode());
        assert_ne!(a.compute_hash(&[0; 32]), a.compute_hash(&[1; 32]));
        assert_eq!(unhex32(&hex(&[0xab; 32])), Some([0xab; 32]));
    }

    #[test]
    fn hex_round_trips_and_refuses_anything_else() {
        let bytes: Hash = std::array::from_fn(|i| (i * 37 + 5) as u8);
        let text = hex(&bytes);
        assert_eq!(text.len(), 64);
        assert_eq!(unhex32(&text), Some(bytes));
        assert_eq!(unhex32(&text.to_uppercase()), Some(bytes));
        assert_eq!(unhex32(&text[..62]), None);
        assert_eq!(unhex32(&format!("{text}00")), None);
        for bad in ['g', 'G', ' ', '-', '\0', 'é'] {
            let mut t = text[..63].to_owned();
            t.insert(10, bad);
            t.truncate(64);
            assert_eq!(unhex32(&t), None, "{bad:?}");
        }
    }

    fn pending(guard: Option<Guarded>) -> Pending {
        Pending {
            events: Vec::new(),
            guard,
            done: oneshot::channel().0,
        }
    }

    fn spend(consent: &str, jti: Option<&str>) -> Pending {
        pending(Some(Guarded::new(Guard::Spend {
            consent_id: consent.into(),
            now_unix: 0,
            expect: jti.map(|j| Expected {
                jti: j.into(),
                generations: Default::default(),
            }),
        })))
    }

    fn statement() -> crate::store::Statement {
        crate::store::Statement {
            sql: "UPDATE t SET a = 1",
            binds: Vec::new(),
        }
    }

    #[test]
    fn the_budgets_read_first_are_those_of_the_spends_before_any_other_change() {
        let changes = pending(Some(Guarded::new(Guard::Changes(statement()))));
        let mut then = Guarded::new(Guard::Always);
        then.then.push(statement());
        let batch = [
            spend("c2", Some("t1")),
            pending(None),
            spend("c1", None),
            pending(Some(Guarded::new(Guard::Always))),
            spend("c2", Some("t1")),
            // Decided after this change: read again then.
            changes,
            spend("c3", Some("t2")),
        ];
        assert_eq!(
            first_spends(&batch),
            (vec!["c1", "c2"], vec!["t1"]),
            "sorted, without repeats, up to the first guarded change"
        );
        // A change with statements of its own decides the spends before it too.
        let batch = [pending(Some(then)), spend("c1", Some("t1"))];
        assert_eq!(first_spends(&batch), (vec![], vec![]));
        // Spends whose own guard has statements are decided with the others.
        let mut with_then = Guarded::new(Guard::Spend {
            consent_id: "c1".into(),
            now_unix: 0,
            expect: None,
        });
        with_then.then.push(statement());
        let batch = [pending(Some(with_then)), spend("c2", None)];
        assert_eq!(first_spends(&batch), (vec!["c1", "c2"], vec![]));
    }
}
