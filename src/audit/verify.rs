//! Integrity verification of the audit log: the hash chain, the sequence,
//! and every checkpoint's root and signature. Works on the database or on an
//! exported JSONL file without any database, one record at a time.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::checkpoint::Checkpoint;
use super::merkle::{leaf_hash, Frontier, Hash};
use super::{hex, unhex32, AuditRecord, RecordRef, RecordText};
use crate::error::{Error, Result};
use crate::store::Store;

/// The outcome of a verification.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct VerifyReport {
    /// True when everything verified.
    pub ok: bool,
    /// Records checked.
    pub records: i64,
    /// Checkpoints checked.
    pub checkpoints: i64,
    /// The first record (or checkpoint size) that failed.
    pub failed_at: Option<i64>,
    /// What failed and why (changed, missing, reordered, bad signature…).
    pub failure: Option<String>,
    /// When it ran (RFC 3339).
    pub time: String,
}

/// Streaming verifier: feed records in order, then [`Verifier::finish`].
pub struct Verifier {
    expected: i64,
    prev: Hash,
    frontier: Frontier,
    checkpoints: BTreeMap<i64, Checkpoint>,
    keys: HashMap<String, Vec<u8>>,
    checked: i64,
    failure: Option<(i64, String)>,
    /// Reused by [`Verifier::push`] for each record's encoding.
    scratch: Vec<u8>,
}

impl Verifier {
    /// A verifier that checks `checkpoints` with the Ed25519 `keys` (kid → public key).
    pub fn new(checkpoints: Vec<Checkpoint>, keys: HashMap<String, Vec<u8>>) -> Self {
        Verifier {
            expected: 1,
            prev: [0; 32],
            frontier: Frontier::default(),
            checkpoints: checkpoints.into_iter().map(|c| (c.tree_size, c)).collect(),
            keys,
            checked: 0,
            failure: None,
            scratch: Vec::new(),
        }
    }

    pub(crate) fn fail(&mut self, at: i64, why: String) {
        if self.failure.is_none() {
            self.failure = Some((at, why));
        }
    }

    /// True once something failed (further records are not examined).
    pub fn failed(&self) -> bool {
        self.failure.is_some()
    }

    /// Checks the next record.
    pub fn push(&mut self, r: &AuditRecord) {
        let checked = Checked::new(r.view(), &mut self.scratch);
        self.push_checked(checked);
    }

    /// Checks the next record, whose own content was checked already (see
    /// [`Checked`]): its place in the sequence, the chain and the checkpoints.
    pub fn push_checked(&mut self, r: Checked) {
        if self.failed() {
            return;
        }
        if r.seq < self.expected {
            return self.fail(
                r.seq,
                format!(
                    "record {} is reordered: it appears after record {}",
                    r.seq,
                    self.expected - 1
                ),
            );
        }
        if r.seq > self.expected {
            return self.fail(
                self.expected,
                format!(
                    "record {} is missing (the next record is {})",
                    self.expected, r.seq
                ),
            );
        }
        let (stored, prev) = match r.own {
            Ok(h) => h,
            Err(why) => return self.fail(r.seq, why),
        };
        if prev != self.prev {
            return self.fail(
                r.seq,
                format!(
                    "record {} does not follow record {}: a record was removed, replaced or reordered",
                    r.seq,
                    r.seq - 1
                ),
            );
        }
        self.prev = stored;
        self.frontier.push(leaf_hash(&stored));
        self.expected += 1;
        let size = r.seq;
        if let Some(cp) = self.checkpoints.get(&size).cloned() {
            self.check_checkpoint(&cp);
        }
    }

    fn check_checkpoint(&mut self, cp: &Checkpoint) {
        self.checked += 1;
        if let Some(why) = signature_failure(cp, &self.keys) {
            return self.fail(cp.tree_size, why);
        }
        if hex(&self.frontier.root()) != cp.root_hash {
            self.fail(
                cp.tree_size,
                format!("checkpoint {}: its root does not match records 1-{} (a record was changed, removed or reordered)", cp.tree_size, cp.tree_size),
            );
        }
    }

    /// Ends the verification; `time` is when it ran.
    pub fn finish(mut self, time: String) -> VerifyReport {
        if !self.failed() {
            let records = self.expected - 1;
            if let Some((&size, _)) = self.checkpoints.range(records + 1..).next() {
                self.fail(
                    size.min(records + 1),
                    format!(
                        "checkpoint {size} covers records beyond {records}: record {} is missing",
                        records + 1
                    ),
                );
            }
        }
        VerifyReport {
            ok: self.failure.is_none(),
            records: self.expected - 1,
            checkpoints: self.checked,
            failed_at: self.failure.as_ref().map(|f| f.0),
            failure: self.failure.map(|f| f.1),
            time,
        }
    }
}

/// What can be checked of a record on its own, without the records before
/// it: so verification hashes many records at once, on every core, and then
/// chains them in order ([`Verifier::push_checked`]).
#[derive(Debug)]
pub struct Checked {
    seq: i64,
    /// Its own hash and its predecessor's, once its content matched its
    /// hash; otherwise why it is changed.
    own: std::result::Result<(Hash, Hash), String>,
}

impl Checked {
    /// Checks `r`'s content against its hash; `scratch` is reused between calls.
    pub fn new(r: RecordRef<'_>, scratch: &mut Vec<u8>) -> Self {
        let own = match (unhex32(r.hash), unhex32(r.prev_hash)) {
            (Some(stored), Some(prev)) if r.compute_hash(&prev, scratch) == stored => {
                Ok((stored, prev))
            }
            (Some(_), Some(_)) => Err(format!(
                "record {} is changed: its content does not match its hash",
                r.seq
            )),
            _ => Err(format!(
                "record {} is changed: its hashes are malformed",
                r.seq
            )),
        };
        Checked { seq: r.seq, own }
    }
}

/// `f` over `items` in order, spread over the machine's cores.
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T, &mut Vec<u8>) -> R + Sync) -> Vec<R> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let run = |part: &[T]| {
        let mut scratch = Vec::with_capacity(320);
        part.iter().map(|i| f(i, &mut scratch)).collect::<Vec<R>>()
    };
    if cores < 2 || items.len() < 2048 {
        return run(items);
    }
    let mut parts = items.chunks(items.len().div_ceil(cores.min(8)));
    let first = parts.next().unwrap_or_default();
    std::thread::scope(|scope| {
        let others: Vec<_> = parts.map(|p| scope.spawn(move || run(p))).collect();
        let mut out = run(first);
        for h in others {
            out.extend(h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        }
        out
    })
}

/// Why a checkpoint's signature does not verify with `keys`, if it does not.
fn signature_failure(cp: &Checkpoint, keys: &HashMap<String, Vec<u8>>) -> Option<String> {
    match keys.get(&cp.kid) {
        None => Some(format!(
            "checkpoint {}: bad signature (unknown key {})",
            cp.tree_size, cp.kid
        )),
        Some(key) if !cp.signature_valid(key) => {
            Some(format!("checkpoint {}: bad signature", cp.tree_size))
        }
        Some(_) => None,
    }
}

/// Verifies the log in the database. Pages are read while the previous page
/// is being hashed, on another thread.
pub async fn verify_store(
    store: &Store,
    checkpoints: Vec<Checkpoint>,
    keys: HashMap<String, Vec<u8>>,
) -> Result<VerifyReport> {
    const PAGE: i64 = 10_000;
    let head = store.audit_head().await?;
    let fetch = |after: i64| {
        let store = store.clone();
        tokio::spawn(async move { store.audit_page_json(after, after + PAGE).await })
    };
    // Windows are contiguous, so the next ones are read (on other
    // connections) while this one is checked.
    const AHEAD: i64 = 3;
    let window = |from: i64| -> std::collections::VecDeque<_> {
        (0..AHEAD).map(|k| fetch(from + k * PAGE)).collect()
    };
    let mut v = Verifier::new(checkpoints, keys);
    let mut after = 0;
    let mut pending = window(after);
    while let Some(next) = pending.pop_front() {
        let text = next.await.map_err(Error::internal)??;
        pending.push_back(fetch(after + AHEAD * PAGE));
        let page;
        (v, page) = tokio::task::spawn_blocking(move || {
            let page = serde_json::from_str::<Vec<RecordText>>(&text).map_err(Error::internal);
            if let Ok(records) = &page {
                for r in par_map(records, |r, scratch| Checked::new(r.view(), scratch)) {
                    v.push_checked(r);
                    if v.failed() {
                        break;
                    }
                }
            }
            (v, page.map(|p| p.last().map(|r| r.seq)))
        })
        .await
        .map_err(Error::internal)?;
        let Some(last) = page? else {
            // Nothing in this window: records further on would be ones nobody chained.
            pending.drain(..).for_each(|p| p.abort());
            let beyond = store
                .audit_records(
                    &crate::store::audit::AuditFilter {
                        after: Some(after),
                        ..Default::default()
                    },
                    1,
                )
                .await?;
            if let Some(r) = beyond.first() {
                after = r.seq - 1;
                pending = window(after);
            }
            continue;
        };
        debug_assert!(last <= after + PAGE);
        after += PAGE;
        if v.failed() {
            pending.drain(..).for_each(|p| p.abort());
        }
    }
    let report = v.finish(crate::store::timestamp(crate::store::now()));
    if report.ok && report.records != head.seq {
        return Ok(VerifyReport {
            ok: false,
            failed_at: Some(report.records + 1),
            failure: Some(format!(
                "the chain head is at record {} but records end at {}",
                head.seq, report.records
            )),
            ..report
        });
    }
    Ok(report)
}

/// One line of an export file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // one line at a time; boxing would only add allocations
pub enum ExportLine {
    /// First line.
    Header(ExportHeader),
    /// A signed checkpoint (all come before the records).
    Checkpoint(Checkpoint),
    /// A record.
    Record(AuditRecord),
    /// In a filtered export, after each record: its inclusion proof under a
    /// checkpoint of the export (RFC 9162 audit path, hex).
    Inclusion {
        /// The record.
        seq: i64,
        /// The checkpoint proved against.
        tree_size: i64,
        /// Sibling hashes, leaf upwards.
        audit_path: Vec<String>,
    },
}

/// The first line of an export.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportHeader {
    /// `licensegate-audit-export/v1`.
    pub format: String,
    /// The broker.
    pub origin: String,
    /// When the export was made.
    pub exported_at: String,
    /// True when the export holds every record from 1 to the last checkpoint.
    pub complete: bool,
    /// The broker's JWKS at export time (verify against a copy you trust).
    pub jwks: serde_json::Value,
}

/// Ed25519 keys (kid → raw public key) from a JWKS document.
pub fn keys_from_jwks(jwks: &serde_json::Value) -> HashMap<String, Vec<u8>> {
    use base64::Engine;
    jwks["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|k| k["kty"] == "OKP" && k["crv"] == "Ed25519")
        .filter_map(|k| {
            let kid = k["kid"].as_str()?.to_owned();
            let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(k["x"].as_str()?)
                .ok()?;
            Some((kid, x))
        })
        .collect()
}

/// Verifies an export file. `trusted_jwks` overrides the keys in the file's header.
pub fn verify_file(
    reader: impl BufRead,
    trusted_jwks: Option<&serde_json::Value>,
) -> Result<VerifyReport> {
    let mut lines = reader.lines().enumerate();
    let header = match lines.next() {
        Some((_, Ok(l))) => match serde_json::from_str::<ExportLine>(&l) {
            Ok(ExportLine::Header(h)) => h,
            _ => {
                return Err(Error::BadRequest(
                    "the file does not start with an export header".into(),
                ))
            }
        },
        _ => return Err(Error::BadRequest("the file is empty or unreadable".into())),
    };
    let keys = keys_from_jwks(trusted_jwks.unwrap_or(&header.jwks));
    if !header.complete {
        return verify_filtered(lines, keys);
    }
    let mut checkpoints = Vec::new();
    let mut verifier: Option<Verifier> = None;
    // Lines are read a chunk at a time, parsed and hashed on every core, then
    // chained in order.
    const CHUNK: usize = 16_384;
    let mut chunk: Vec<(usize, String)> = Vec::with_capacity(CHUNK);
    'chunks: loop {
        chunk.clear();
        for (i, line) in lines.by_ref().take(CHUNK) {
            let line =
                line.map_err(|e| Error::BadRequest(format!("cannot read line {}: {e}", i + 1)))?;
            chunk.push((i + 1, line));
        }
        if chunk.is_empty() {
            break;
        }
        let parsed = par_map(&chunk, |(_, line), scratch| parse_line(line, scratch));
        for ((n, _), parsed) in chunk.iter().zip(parsed) {
            match parsed {
                Line::Blank => {}
                Line::Bad(e) => {
                    return Err(Error::BadRequest(format!(
                        "line {n} is not an export line: {e}"
                    )))
                }
                Line::Other(line) => match *line {
                    ExportLine::Checkpoint(c) if verifier.is_none() => checkpoints.push(c),
                    _ => {
                        return Err(Error::BadRequest(format!(
                            "line {n}: unexpected line in the export"
                        )))
                    }
                },
                Line::Record(r) => {
                    let v = verifier.get_or_insert_with(|| {
                        Verifier::new(std::mem::take(&mut checkpoints), keys.clone())
                    });
                    v.push_checked(r);
                    if v.failed() {
                        break 'chunks;
                    }
                }
            }
        }
    }
    let v = verifier.unwrap_or_else(|| Verifier::new(checkpoints, keys));
    Ok(v.finish(crate::store::timestamp(crate::store::now())))
}

/// One line of a complete export, parsed and, if a record, checked on its own.
enum Line {
    Blank,
    Record(Checked),
    /// Not a record (rare: the header and checkpoints come first).
    Other(Box<ExportLine>),
    Bad(String),
}

fn parse_line(line: &str, scratch: &mut Vec<u8>) -> Line {
    if line.trim().is_empty() {
        return Line::Blank;
    }
    // The exporter writes the tag first: such a line is read without
    // buffering it as a generic enum would (the other fields are the record's).
    if line.starts_with(r#"{"type":"record","#) {
        if let Ok(r) = serde_json::from_str::<RecordText>(line) {
            return Line::Record(Checked::new(r.view(), scratch));
        }
    }
    match serde_json::from_str::<ExportLine>(line) {
        Ok(ExportLine::Record(r)) => Line::Record(Checked::new(r.view(), scratch)),
        Ok(other) => Line::Other(Box::new(other)),
        Err(e) => Line::Bad(e.to_string()),
    }
}

/// Verifies a filtered export: every record's own hash, and its inclusion
/// proof under a signed checkpoint of the export. (The chain between
/// records cannot be checked: the records in between are not there.)
fn verify_filtered(
    lines: impl Iterator<Item = (usize, std::io::Result<String>)>,
    keys: HashMap<String, Vec<u8>>,
) -> Result<VerifyReport> {
    use super::merkle::verify_inclusion;
    let mut checkpoints: BTreeMap<i64, Checkpoint> = BTreeMap::new();
    let mut v = Verifier::new(Vec::new(), keys.clone());
    let mut pending: Option<(AuditRecord, Hash)> = None;
    let mut last_seq = 0;
    let mut records = 0;
    for (i, line) in lines {
        let line =
            line.map_err(|e| Error::BadRequest(format!("cannot read line {}: {e}", i + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: ExportLine = serde_json::from_str(&line)
            .map_err(|e| Error::BadRequest(format!("line {} is not an export line: {e}", i + 1)))?;
        match (parsed, pending.take()) {
            (ExportLine::Checkpoint(c), None) if records == 0 => {
                if let Some(why) = signature_failure(&c, &keys) {
                    v.fail(c.tree_size, why);
                    break;
                }
                checkpoints.insert(c.tree_size, c);
            }
            (ExportLine::Record(r), None) => {
                if r.seq <= last_seq {
                    v.fail(r.seq, format!("record {} is reordered or repeated", r.seq));
                    break;
                }
                match Checked::new(r.view(), &mut Vec::new()).own {
                    Ok((stored, _)) => {
                        last_seq = r.seq;
                        pending = Some((r, stored));
                    }
                    Err(why) => {
                        v.fail(r.seq, why);
                        break;
                    }
                }
            }
            (
                ExportLine::Inclusion {
                    seq,
                    tree_size,
                    audit_path,
                },
                Some((r, stored)),
            ) if seq == r.seq => {
                let proven = checkpoints.get(&tree_size).is_some_and(|c| {
                    let path: Option<Vec<Hash>> = audit_path.iter().map(|h| unhex32(h)).collect();
                    let (Some(path), Some(root)) = (path, unhex32(&c.root_hash)) else {
                        return false;
                    };
                    verify_inclusion(
                        &leaf_hash(&stored),
                        u64::try_from(seq - 1).unwrap_or(u64::MAX),
                        u64::try_from(tree_size).unwrap_or(0),
                        &path,
                        &root,
                    )
                });
                if !proven {
                    v.fail(seq, format!("record {seq} is not in the log under checkpoint {tree_size}: it was changed or does not belong to this log"));
                    break;
                }
                records += 1;
            }
            (_, Some((r, _))) => {
                v.fail(r.seq, format!("record {} has no inclusion proof", r.seq));
                break;
            }
            _ => {
                return Err(Error::BadRequest(format!(
                    "line {}: unexpected line in the export",
                    i + 1
                )));
            }
        }
    }
    if let Some((r, _)) = pending {
        v.fail(r.seq, format!("record {} has no inclusion proof", r.seq));
    }
    let mut report = v.finish(crate::store::timestamp(crate::store::now()));
    report.records = records;
    report.checkpoints = checkpoints.len() as i64;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid chain of `n` records, some with text that JSON escapes.
    fn chain(n: i64) -> Vec<AuditRecord> {
        let mut prev = [0u8; 32];
        (1..=n)
            .map(|seq| {
                let mut r = AuditRecord {
                    seq,
                    time: "2026-12-01T00:00:00.000000Z".into(),
                    actor_kind: "entity".into(),
                    actor_id: format!("ent_{}", seq % 7),
                    action: "license.retrieved".into(),
                    outcome: "success".into(),
                    holder: Some(format!("h_{seq}")),
                    license: None,
                    license_type: Some("JMSFZ".into()),
                    consent: None,
                    purpose: (seq % 3 == 0).then(|| "开户 \"quoted\"\n\\ tab\t".to_owned()),
                    reason: Some(format!("permit: policy p{seq}")),
                    request_id: None,
                    client_addr: Some("127.0.0.1".into()),
                    prev_hash: hex(&prev),
                    hash: String::new(),
                };
                prev = r.compute_hash(&prev);
                r.hash = hex(&prev);
                r
            })
            .collect()
    }

    fn export(records: &[AuditRecord]) -> String {
        let header = ExportLine::Header(ExportHeader {
            format: "licensegate-audit-export/v1".into(),
            origin: "test".into(),
            exported_at: "2026-12-01T00:00:00Z".into(),
            complete: true,
            jwks: serde_json::json!({ "keys": [] }),
        });
        std::iter::once(header)
            .chain(records.iter().cloned().map(ExportLine::Record))
            .map(|l| serde_json::to_string(&l).expect("line") + "\n")
            .collect()
    }

    fn verify(text: &str) -> VerifyReport {
        verify_file(std::io::Cursor::new(text), None).expect("verify")
    }

    #[test]
    fn a_file_verifies_across_chunks_and_cores_and_names_the_first_bad_record() {
        // More records than one chunk, so chunks and threads meet in the middle.
        let records = chain(40_000);
        let report = verify(&export(&records));
        assert!(report.ok, "{report:?}");
        assert_eq!(report.records, 40_000);

        let mut changed = records.clone();
        changed[20_999].purpose = Some("其他 \"用途\"".into());
        let report = verify(&export(&changed));
        assert_eq!(report.failed_at, Some(21_000), "{report:?}");
        assert!(report.failure.unwrap_or_default().contains("changed"));

        let mut swapped = records.clone();
        swapped.swap(16_383, 16_384); // across the first chunk's end
        let report = verify(&export(&swapped));
        assert_eq!(report.failed_at, Some(16_384), "{report:?}");

        let mut missing = records;
        missing.remove(30_000);
        let report = verify(&export(&missing));
        assert_eq!(report.failed_at, Some(30_001), "{report:?}");
        assert!(report.failure.unwrap_or_default().contains("missing"));
    }

    #[test]
    fn database_pages_are_read_with_their_escapes() {
        let records = chain(3);
        let page = crate::store::audit::records_json(&records).expect("page");
        let rows: Vec<RecordText> = serde_json::from_str(&page).expect("rows");
        let mut v = Verifier::new(Vec::new(), HashMap::new());
        for (row, r) in rows.iter().zip(&records) {
            assert_eq!(row.view().fields, r.view().fields);
            v.push_checked(Checked::new(row.view(), &mut Vec::new()));
        }
        let report = v.finish(String::new());
        assert!(report.ok && report.records == 3, "{report:?}");
    }
}
