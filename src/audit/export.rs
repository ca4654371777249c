//! Streaming export of the audit log as JSON Lines (verifiable offline with
//! `licensegate audit verify --file`) or CSV. Records are read a page at a
//! time, so an export of any size holds one page in memory.

use axum::body::Bytes;
use futures_util::stream::{self, Stream};

use std::sync::Arc;

use super::checkpoint::Checkpoint;
use super::merkle::Levels;
use super::verify::{ExportHeader, ExportLine};
use super::AuditRecord;
use crate::error::{Error, Result};
use crate::store::audit::AuditFilter;
use crate::store::Store;

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON Lines: a header, the checkpoints, then one record per line.
    Jsonl,
    /// CSV with a header row.
    Csv,
}

const PAGE: i64 = 2_000;

/// The CSV columns, in order.
pub const CSV_COLUMNS: [&str; 16] = [
    "seq",
    "time",
    "actor_kind",
    "actor_id",
    "action",
    "outcome",
    "holder",
    "license",
    "license_type",
    "consent",
    "purpose",
    "reason",
    "request_id",
    "client_addr",
    "prev_hash",
    "hash",
];

/// One CSV cell. Cells that a spreadsheet would run as a formula get a leading `'`.
fn csv_cell(out: &mut String, value: Option<&str>) {
    let v = value.unwrap_or("");
    let guarded;
    let v = if v.starts_with(['=', '+', '-', '@']) {
        guarded = format!("'{v}");
        guarded.as_str()
    } else {
        v
    };
    if v.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&v.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(v);
    }
}

fn csv_row(r: &AuditRecord) -> String {
    let seq = r.seq.to_string();
    let v = r.view();
    let cells = std::iter::once(Some(seq.as_str()))
        .chain(v.fields)
        .chain([Some(v.prev_hash), Some(v.hash)]);
    let mut out = String::with_capacity(256);
    for (i, c) in cells.enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_cell(&mut out, c);
    }
    out.push_str("\r\n");
    out
}

fn json_line(line: &ExportLine) -> Result<String> {
    let mut s = serde_json::to_string(line).map_err(Error::internal)?;
    s.push('\n');
    Ok(s)
}

/// What an export writes besides its records.
pub struct Prepared {
    /// The records' filter, bounded to the export's checkpoint.
    pub filter: AuditFilter,
    /// The first line.
    pub header: ExportHeader,
    /// The checkpoints (JSONL).
    pub checkpoints: Vec<Checkpoint>,
    /// The tree under the export's checkpoint, when records need inclusion
    /// proofs (a filtered JSONL export): 64 bytes per record in memory.
    pub proofs: Option<(i64, Arc<Levels>)>,
}

/// Signs a checkpoint over everything recorded so far, bounds `filter` to it,
/// and builds the export header and the checkpoints to write first.
pub async fn prepare(
    services: &crate::app::Services,
    mut filter: AuditFilter,
    complete: bool,
    format: Format,
) -> Result<Prepared> {
    let checkpoint = services.checkpoints.create().await?;
    let size = checkpoint.as_ref().map_or(0, |c| c.tree_size);
    filter.until_seq = Some(size);
    let header = ExportHeader {
        format: "licensegate-audit-export/v1".into(),
        origin: services.config.public_url.clone(),
        exported_at: crate::store::timestamp(crate::store::now()),
        complete,
        jwks: services.keys.jwks(crate::keys::BROKER).await?,
    };
    let checkpoints = match format {
        Format::Jsonl if complete => services.checkpoints.all().await?,
        Format::Jsonl => checkpoint.into_iter().collect(),
        Format::Csv => Vec::new(),
    };
    let proofs = if format == Format::Jsonl && !complete {
        let leaves = services.checkpoints.leaves(size).await?;
        Some((size, Arc::new(Levels::new(leaves))))
    } else {
        None
    };
    Ok(Prepared {
        filter,
        header,
        checkpoints,
        proofs,
    })
}

enum State {
    Start,
    Records(i64),
    Done,
}

/// A stream of export chunks. `header` and `checkpoints` are written first in
/// JSONL; `filter.until_seq` bounds the records.
pub fn stream(
    store: Store,
    format: Format,
    prepared: Prepared,
) -> impl Stream<Item = Result<Bytes>> + Send + 'static {
    let Prepared {
        filter,
        header,
        checkpoints,
        proofs,
    } = prepared;
    let start_after = filter.after.unwrap_or(0);
    stream::unfold(State::Start, move |state| {
        let store = store.clone();
        let filter = filter.clone();
        let header = header.clone();
        let checkpoints = checkpoints.clone();
        let proofs = proofs.clone();
        async move {
            match state {
                State::Done => None,
                State::Start => {
                    let chunk = match format {
                        Format::Csv => Ok(format!("{}\r\n", CSV_COLUMNS.join(","))),
                        Format::Jsonl => (|| {
                            let mut s = json_line(&ExportLine::Header(header))?;
                            for c in checkpoints {
                                s.push_str(&json_line(&ExportLine::Checkpoint(c))?);
                            }
                            Ok(s)
                        })(),
                    };
                    Some((chunk.map(Bytes::from), State::Records(start_after)))
                }
                State::Records(after) => {
                    let page = store
                        .audit_records(
                            &AuditFilter {
                                after: Some(after),
                                ..filter
                            },
                            PAGE,
                        )
                        .await;
                    match page {
                        Err(e) => Some((Err(e), State::Done)),
                        Ok(page) if page.is_empty() => None,
                        Ok(page) => {
                            let last = page.last().map_or(after, |r| r.seq);
                            let mut out = String::with_capacity(page.len() * 400);
                            for r in page {
                                match format {
                                    Format::Csv => out.push_str(&csv_row(&r)),
                                    Format::Jsonl => {
                                        let seq = r.seq;
                                        match json_line(&ExportLine::Record(r)) {
                                            Ok(l) => out.push_str(&l),
                                            Err(e) => return Some((Err(e), State::Done)),
                                        }
                                        if let Some((size, levels)) = &proofs {
                                            let index = usize::try_from(seq - 1).unwrap_or(0);
                                            let line = ExportLine::Inclusion {
                                                seq,
                                                tree_size: *size,
                                                audit_path: levels
                                                    .proof(index)
                                                    .iter()
                                                    .map(|h| super::hex(h))
                                                    .collect(),
                                            };
                                            match json_line(&line) {
                                                Ok(l) => out.push_str(&l),
                                                Err(e) => return Some((Err(e), State::Done)),
                                            }
                                        }
                                    }
                                }
                            }
                            Some((Ok(Bytes::from(out)), State::Records(last)))
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_escaped_and_guarded() {
        let mut s = String::new();
        csv_cell(&mut s, Some("a,\"b\""));
        assert_eq!(s, "\"a,\"\"b\"\"\"");
        let mut s = String::new();
        csv_cell(&mut s, Some("=SUM(A1)"));
        assert_eq!(s, "'=SUM(A1)");
        let mut s = String::new();
        csv_cell(&mut s, None);
        assert_eq!(s, "");
    }
}
