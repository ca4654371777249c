//! Long-term retention (at least 20 years): the log is cut into immutable
//! monthly segment files with a manifest, for write-once storage.
//!
//! A segment `audit-YYYY-MM-<first seq>.jsonl` holds a header and the records
//! of one calendar month (UTC) in sequence order, in the export format. The
//! `MANIFEST.json` lists every segment in order with its sequence range, the
//! hash of its first record's predecessor and its last record, and the
//! SHA-256 of the file; it also carries the signed checkpoints and the
//! broker's JWKS. Segments are written once and never rewritten: archiving
//! again only adds the months completed since. `licensegate audit verify
//! --archive DIR` replays every segment as one chain against the checkpoints,
//! without a database. The database keeps its records too; nothing is deleted.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::checkpoint::Checkpoint;
use super::verify::{keys_from_jwks, ExportHeader, ExportLine, Verifier, VerifyReport};
use crate::error::{Error, Result};
use crate::keys::{b64url, sha256};
use crate::store::audit::AuditFilter;

/// One archived segment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Segment {
    /// File name inside the archive directory.
    pub file: String,
    /// Month (YYYY-MM, UTC) of its records.
    pub month: String,
    /// First sequence number.
    pub first_seq: i64,
    /// Last sequence number.
    pub last_seq: i64,
    /// Hash of the record before the first (hex).
    pub prev_hash: String,
    /// Hash of the last record (hex).
    pub last_hash: String,
    /// SHA-256 of the file (base64url).
    pub sha256: String,
}

/// The archive's table of contents.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Manifest {
    /// The broker.
    pub origin: String,
    /// Segments in sequence order.
    pub segments: Vec<Segment>,
    /// Signed checkpoints known when the archive was last extended.
    pub checkpoints: Vec<Checkpoint>,
    /// The broker's JWKS then.
    pub jwks: serde_json::Value,
}

fn io(e: std::io::Error) -> Error {
    Error::internal(format!("archive I/O: {e}"))
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    match std::fs::read_to_string(dir.join("MANIFEST.json")) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| Error::BadRequest(format!("MANIFEST.json is invalid: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest::default()),
        Err(e) => Err(io(e)),
    }
}

struct Open {
    file: std::io::BufWriter<std::fs::File>,
    bytes: Vec<u8>,
    segment: Segment,
}

impl Open {
    fn write(&mut self, line: &ExportLine) -> Result<()> {
        let mut text = serde_json::to_vec(line).map_err(Error::internal)?;
        text.push(b'\n');
        self.bytes.extend_from_slice(&text);
        self.file.write_all(&text).map_err(io)
    }

    fn close(mut self) -> Result<Segment> {
        self.file.flush().map_err(io)?;
        self.file.get_ref().sync_all().map_err(io)?;
        drop(self.file);
        self.segment.sha256 = b64url(sha256(&self.bytes));
        Ok(self.segment)
    }
}

/// Archives every record older than `until` (RFC 3339; default: the start of
/// the current month) that is not archived yet. Returns the new segments.
pub async fn archive(
    services: &crate::app::Services,
    dir: &Path,
    until: Option<String>,
) -> Result<Vec<Segment>> {
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut manifest = read_manifest(dir)?;
    let until = match until {
        Some(t) => crate::store::timestamp(crate::store::parse_timestamp(&t)?),
        None => {
            let now = crate::store::now();
            format!(
                "{:04}-{:02}-01T00:00:00.000000Z",
                now.year(),
                u8::from(now.month())
            )
        }
    };
    let mut after = manifest.segments.last().map_or(0, |s| s.last_seq);
    let mut prev_hash = manifest
        .segments
        .last()
        .map_or_else(|| "0".repeat(64), |s| s.last_hash.clone());
    let origin = services.config.public_url.clone();
    let mut added = Vec::new();
    let mut open: Option<Open> = None;
    'pages: loop {
        let page = services
            .store
            .audit_records(
                &AuditFilter {
                    after: Some(after),
                    ..Default::default()
                },
                5_000,
            )
            .await?;
        if page.is_empty() {
            break;
        }
        for r in page {
            // Stop at the first record of the period still open, so a segment never
            // misses a record that a later archive run would have to add to it.
            if r.time >= until {
                break 'pages;
            }
            let month = r.time.get(..7).unwrap_or("unknown").to_owned();
            if open.as_ref().is_some_and(|o| o.segment.month != month) {
                if let Some(o) = open.take() {
                    added.push(o.close()?);
                }
            }
            if open.is_none() {
                let name = format!("audit-{month}-{}.jsonl", r.seq);
                let path = dir.join(&name);
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| {
                        Error::Conflict(format!(
                            "{} exists but is not in the manifest: {e}",
                            path.display()
                        ))
                    })?;
                let mut o = Open {
                    file: std::io::BufWriter::new(file),
                    bytes: Vec::new(),
                    segment: Segment {
                        file: name,
                        month: month.clone(),
                        first_seq: r.seq,
                        last_seq: r.seq,
                        prev_hash: prev_hash.clone(),
                        last_hash: r.hash.clone(),
                        sha256: String::new(),
                    },
                };
                o.write(&ExportLine::Header(ExportHeader {
                    format: "licensegate-audit-segment/v1".into(),
                    origin: origin.clone(),
                    exported_at: crate::store::timestamp(crate::store::now()),
                    complete: false,
                    jwks: serde_json::Value::Null,
                }))?;
                open = Some(o);
            }
            if let Some(o) = open.as_mut() {
                o.segment.last_seq = r.seq;
                o.segment.last_hash = r.hash.clone();
                prev_hash = r.hash.clone();
                after = r.seq;
                o.write(&ExportLine::Record(r))?;
            }
        }
    }
    if let Some(o) = open.take() {
        added.push(o.close()?);
    }
    services.checkpoints.create().await?;
    manifest.origin = origin;
    manifest.segments.extend(added.iter().cloned());
    manifest.checkpoints = services.checkpoints.all().await?;
    manifest.jwks = services.keys.jwks(crate::keys::BROKER).await?;
    let tmp = dir.join("MANIFEST.json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(&manifest).map_err(Error::internal)?,
    )
    .map_err(io)?;
    std::fs::rename(&tmp, dir.join("MANIFEST.json")).map_err(io)?;
    Ok(added)
}

/// Verifies an archive directory: every file's SHA-256, the chain across all
/// segments, and every checkpoint the archived records reach.
pub fn verify_archive(
    dir: &Path,
    trusted_jwks: Option<&serde_json::Value>,
) -> Result<VerifyReport> {
    let manifest = read_manifest(dir)?;
    let archived = manifest.segments.last().map_or(0, |s| s.last_seq);
    let checkpoints = manifest
        .checkpoints
        .iter()
        .filter(|c| c.tree_size <= archived)
        .cloned()
        .collect();
    let mut v = Verifier::new(
        checkpoints,
        keys_from_jwks(trusted_jwks.unwrap_or(&manifest.jwks)),
    );
    let time = crate::store::timestamp(crate::store::now());
    for seg in &manifest.segments {
        let bytes = std::fs::read(dir.join(&seg.file)).map_err(io)?;
        if b64url(sha256(&bytes)) != seg.sha256 {
            let mut r = v.finish(time);
            r.ok = false;
            r.failed_at = Some(seg.first_seq);
            r.failure = Some(format!(
                "segment {} is changed: its SHA-256 does not match the manifest",
                seg.file
            ));
            return Ok(r);
        }
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate().skip(1) {
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<ExportLine>(line) {
                Ok(ExportLine::Record(r)) => v.push(&r),
                _ => {
                    return Err(Error::BadRequest(format!(
                        "{} line {}: not a record",
                        seg.file,
                        i + 1
                    )))
                }
            }
            if v.failed() {
                return Ok(v.finish(time));
            }
        }
    }
    Ok(v.finish(time))
}
