//! Signed checkpoints (tree heads) over the audit log, and the inclusion and
//! consistency proofs that tie records and checkpoints together.
//!
//! A checkpoint's signed text is, in UTF-8 with `\n` line ends:
//!
//! ```text
//! licensegate audit checkpoint v1
//! origin: <public URL of the broker>
//! tree_size: <number of records>
//! root_hash: <hex MTH over their hashes>
//! time: <RFC 3339>
//! ```
//!
//! signed with the broker's Ed25519 key (`kid`, published in `/jwks.json`).

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::merkle::{self, leaf_hash, Hash};
use super::{hex, unhex32};
use crate::error::{Error, Result};
use crate::keys::{KeyRing, BROKER};
use crate::store::audit::CheckpointRow;
use crate::store::{now, timestamp, Store};

/// A signed tree head.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Checkpoint {
    /// Who signed it (the broker's public URL).
    pub origin: String,
    /// Number of records covered.
    pub tree_size: i64,
    /// RFC 9162 Merkle tree hash over the first `tree_size` record hashes (hex).
    pub root_hash: String,
    /// When it was signed.
    pub time: String,
    /// Broker key id.
    pub kid: String,
    /// Ed25519 signature over [`Checkpoint::signed_text`] (base64url).
    pub signature: String,
}

impl Checkpoint {
    /// The exact bytes that are signed.
    pub fn signed_text(&self) -> String {
        format!(
            "licensegate audit checkpoint v1\norigin: {}\ntree_size: {}\nroot_hash: {}\ntime: {}\n",
            self.origin, self.tree_size, self.root_hash, self.time
        )
    }

    /// Checks the signature with a raw Ed25519 public key.
    pub fn signature_valid(&self, public_key: &[u8]) -> bool {
        let Ok(sig) = URL_SAFE_NO_PAD.decode(&self.signature) else {
            return false;
        };
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key)
            .verify(self.signed_text().as_bytes(), &sig)
            .is_ok()
    }

    fn from_row(r: CheckpointRow) -> Self {
        Checkpoint {
            origin: r.origin,
            tree_size: r.tree_size,
            root_hash: r.root_hash,
            time: r.time,
            kid: r.kid,
            signature: r.signature,
        }
    }
}

/// An inclusion proof of one record under a checkpoint.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InclusionProof {
    /// The record's sequence number.
    pub seq: i64,
    /// Its leaf index (seq - 1).
    pub leaf_index: i64,
    /// The record's hash (the leaf data, hex).
    pub record_hash: String,
    /// Audit path, bottom up (hex).
    pub audit_path: Vec<String>,
    /// The checkpoint it is proved against.
    pub checkpoint: Checkpoint,
}

/// A consistency proof between two checkpoints.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConsistencyProof {
    /// The earlier checkpoint.
    pub first: Checkpoint,
    /// The later checkpoint.
    pub second: Checkpoint,
    /// The proof nodes (hex).
    pub proof: Vec<String>,
}

/// Creates and serves checkpoints and proofs.
pub struct Checkpoints {
    store: Store,
    keys: Arc<KeyRing>,
    origin: String,
}

impl Checkpoints {
    /// Checkpoints of the broker at `origin`.
    pub fn new(store: Store, keys: Arc<KeyRing>, origin: String) -> Self {
        Checkpoints {
            store,
            keys,
            origin,
        }
    }

    /// Signs a checkpoint over everything committed so far, unless the latest
    /// already covers it. Returns the latest checkpoint either way.
    pub async fn create(&self) -> Result<Option<Checkpoint>> {
        let head = self.store.audit_head().await?;
        let latest = self.store.latest_checkpoint().await?;
        if head.seq == 0 || latest.as_ref().is_some_and(|c| c.tree_size >= head.seq) {
            return Ok(latest.map(Checkpoint::from_row));
        }
        let key = self.keys.active(BROKER).await?;
        let mut cp = Checkpoint {
            origin: self.origin.clone(),
            tree_size: head.seq,
            root_hash: hex(&head.frontier.root()),
            time: timestamp(now()),
            kid: key.kid().to_owned(),
            signature: String::new(),
        };
        cp.signature = crate::keys::b64url(key.sign(cp.signed_text().as_bytes()));
        let row = CheckpointRow {
            tree_size: cp.tree_size,
            origin: cp.origin.clone(),
            root_hash: cp.root_hash.clone(),
            time: cp.time.clone(),
            kid: cp.kid.clone(),
            signature: cp.signature.clone(),
        };
        // Another node may have signed the same size first; either is valid.
        if !self.store.insert_checkpoint(&row).await? {
            return self.get(head.seq).await.map(Some);
        }
        Ok(Some(cp))
    }

    /// The checkpoint of exactly `tree_size` records.
    pub async fn get(&self, tree_size: i64) -> Result<Checkpoint> {
        self.store
            .checkpoint(tree_size)
            .await?
            .map(Checkpoint::from_row)
            .ok_or_else(|| Error::NotFound(format!("no checkpoint of size {tree_size}")))
    }

    /// The newest checkpoint.
    pub async fn latest(&self) -> Result<Option<Checkpoint>> {
        Ok(self
            .store
            .latest_checkpoint()
            .await?
            .map(Checkpoint::from_row))
    }

    /// All checkpoints, oldest first.
    pub async fn all(&self) -> Result<Vec<Checkpoint>> {
        Ok(self
            .store
            .checkpoints()
            .await?
            .into_iter()
            .map(Checkpoint::from_row)
            .collect())
    }

    /// The Merkle leaf hashes of records 1..=`tree_size`.
    pub async fn leaves(&self, tree_size: i64) -> Result<Vec<Hash>> {
        let hashes = self.store.audit_hashes(tree_size).await?;
        if hashes.len() as i64 != tree_size {
            return Err(Error::internal(
                "the audit log has fewer records than its checkpoint",
            ));
        }
        hashes
            .iter()
            .map(|h| {
                unhex32(h)
                    .map(|h| leaf_hash(&h))
                    .ok_or_else(|| Error::internal("malformed record hash"))
            })
            .collect()
    }

    /// Proves record `seq` is in the log under the checkpoint of `tree_size`
    /// (the latest when none is given).
    pub async fn inclusion(&self, seq: i64, tree_size: Option<i64>) -> Result<InclusionProof> {
        let checkpoint = match tree_size {
            Some(n) => self.get(n).await?,
            None => self
                .latest()
                .await?
                .ok_or_else(|| Error::NotFound("no checkpoint has been signed yet".into()))?,
        };
        if seq < 1 || seq > checkpoint.tree_size {
            return Err(Error::NotFound(format!(
                "record {seq} is not covered by the checkpoint of size {}",
                checkpoint.tree_size
            )));
        }
        let hashes = self.store.audit_hashes(checkpoint.tree_size).await?;
        let leaves = self.leaves(checkpoint.tree_size).await?;
        let index = usize::try_from(seq - 1).map_err(Error::internal)?;
        Ok(InclusionProof {
            seq,
            leaf_index: seq - 1,
            record_hash: hashes[index].clone(),
            audit_path: merkle::inclusion_proof(index, &leaves)
                .iter()
                .map(|h| hex(h))
                .collect(),
            checkpoint,
        })
    }

    /// Proves the checkpoint of `second` records extends the one of `first`.
    pub async fn consistency(&self, first: i64, second: i64) -> Result<ConsistencyProof> {
        if first > second {
            return Err(Error::BadRequest(
                "first must not be larger than second".into(),
            ));
        }
        let (a, b) = (self.get(first).await?, self.get(second).await?);
        let leaves = self.leaves(second).await?;
        let m = usize::try_from(first).map_err(Error::internal)?;
        Ok(ConsistencyProof {
            proof: merkle::consistency_proof(m, &leaves)
                .iter()
                .map(|h| hex(h))
                .collect(),
            first: a,
            second: b,
        })
    }
}
