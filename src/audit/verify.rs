//! Integrity verification of the audit log: the hash chain, the sequence,
//! and every checkpoint's root and signature. Works on the database or on an
//! exported JSONL file without any database, one record at a time.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::checkpoint::Checkpoint;
use super::merkle::{leaf_hash, Frontier, Hash};
use super::{hex, unhex32, AuditRecord};
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
        let (stored, prev) = match own_hashes(r) {
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

/// A record's own hash and its predecessor's, once its content is checked
/// against its hash; otherwise why it is changed.
fn own_hashes(r: &AuditRecord) -> std::result::Result<(Hash, Hash), String> {
    let (Some(stored), Some(prev)) = (unhex32(&r.hash), unhex32(&r.prev_hash)) else {
        return Err(format!(
            "record {} is changed: its hashes are malformed",
            r.seq
        ));
    };
    if r.compute_hash(&prev) != stored {
        return Err(format!(
            "record {} is changed: its content does not match its hash",
            r.seq
        ));
    }
    Ok((stored, prev))
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
    const PAGE: i64 = 20_000;
    let head = store.audit_head().await?;
    let fetch = |after: i64| {
        let store = store.clone();
        tokio::spawn(async move { store.audit_page_json(after, after + PAGE).await })
    };
    let mut v = Verifier::new(checkpoints, keys);
    let mut after = 0;
    let mut pending = fetch(after);
    loop {
        let text = pending.await.map_err(Error::internal)??;
        // Windows are contiguous, so the next one can be fetched while this one is checked.
        let upcoming = fetch(after + PAGE);
        let page;
        (v, page) = tokio::task::spawn_blocking(move || {
            let page = crate::store::audit::decode_page_json(&text);
            if let Ok(records) = &page {
                for r in records {
                    v.push(r);
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
            let beyond = store
                .audit_records(
                    &crate::store::audit::AuditFilter {
                        after: Some(after),
                        ..Default::default()
                    },
                    1,
                )
                .await?;
            upcoming.abort();
            match beyond.first() {
                Some(r) => {
                    after = r.seq - 1;
                    pending = fetch(after);
                    continue;
                }
                None => break,
            }
        };
        debug_assert!(last <= after + PAGE);
        after += PAGE;
        pending = upcoming;
        if v.failed() {
            break;
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
    for (i, line) in lines {
        let line =
            line.map_err(|e| Error::BadRequest(format!("cannot read line {}: {e}", i + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: ExportLine = serde_json::from_str(&line)
            .map_err(|e| Error::BadRequest(format!("line {} is not an export line: {e}", i + 1)))?;
        match parsed {
            ExportLine::Checkpoint(c) if verifier.is_none() => checkpoints.push(c),
            ExportLine::Checkpoint(_) | ExportLine::Header(_) | ExportLine::Inclusion { .. } => {
                return Err(Error::BadRequest(format!(
                    "line {}: unexpected line in the export",
                    i + 1
                )))
            }
            ExportLine::Record(r) => {
                let v = verifier.get_or_insert_with(|| {
                    Verifier::new(std::mem::take(&mut checkpoints), keys.clone())
                });
                v.push(&r);
                if v.failed() {
                    break;
                }
            }
        }
    }
    let v = verifier.unwrap_or_else(|| Verifier::new(checkpoints, keys));
    Ok(v.finish(crate::store::timestamp(crate::store::now())))
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
                match own_hashes(&r) {
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
