//! Key material: the master key that encrypts data at rest, the keys that
//! derive lookup digests and client-secret digests, and Ed25519 signing keys
//! (the broker's and each issuing unit's) with their JWKs.
//!
//! Signing uses `ring` directly with a parsed, cached key pair: `jsonwebtoken`
//! re-parses the PKCS#8 document on every signature, which would double the
//! cost of each token on the token endpoint's hot path. Verification of JWTs
//! uses `jsonwebtoken`.

use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ed25519_dalek::Signer;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::Serialize;
use serde_json::json;

use crate::error::{Error, Result};

pub mod nonces;

const SEALED_VERSION: u8 = 1;

/// Fills a fresh buffer with `n` random bytes from the OS.
pub fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| Error::internal("the system random generator failed"))?;
    Ok(buf)
}

/// A random URL-safe token of `n` bytes of entropy.
pub fn random_token(n: usize) -> Result<String> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes(n)?))
}

/// base64url without padding.
pub fn b64url(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// SHA-256 of `data`.
pub fn sha256(data: impl AsRef<[u8]>) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data.as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Loads the master key from configuration, or from `DATA_DIR/master.key`,
/// creating that file (mode 0600) with a fresh key on first run.
pub fn load_master_key(configured: Option<&str>, data_dir: &Path) -> Result<[u8; 32]> {
    let encoded = match configured {
        Some(k) => k.trim().to_owned(),
        None => {
            let path = data_dir.join("master.key");
            match std::fs::read_to_string(&path) {
                Ok(s) => s.trim().to_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let key = STANDARD.encode(random_bytes(32)?);
                    write_private_file(&path, key.as_bytes())?;
                    tracing::info!(path = %path.display(), "generated a new master key");
                    key
                }
                Err(e) => {
                    return Err(Error::internal(format!(
                        "cannot read {}: {e}",
                        path.display()
                    )))
                }
            }
        }
    };
    let bytes = STANDARD
        .decode(&encoded)
        .map_err(|_| Error::BadRequest("the master key must be base64".into()))?;
    bytes
        .try_into()
        .map_err(|_| Error::BadRequest("the master key must be 32 bytes".into()))
}

/// Writes a file readable by its owner only.
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::internal(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::internal(format!("cannot write {}: {e}", path.display())))
}

/// Keys derived from the master key: AEAD for data at rest, HMAC for lookups.
pub struct Sealer {
    aead: LessSafeKey,
    lookup: hmac::Key,
    secrets: hmac::Key,
}

impl Sealer {
    /// Derives the working keys from the master key (HMAC-SHA256 as a KDF with
    /// distinct labels, so no working key equals another).
    pub fn new(master: &[u8; 32]) -> Result<Self> {
        let kdf = hmac::Key::new(hmac::HMAC_SHA256, master);
        let derive = |label: &str| hmac::sign(&kdf, label.as_bytes());
        let aead_key = derive("licensegate/v1/aead");
        let aead = UnboundKey::new(&AES_256_GCM, aead_key.as_ref())
            .map_err(|_| Error::internal("cannot build the AEAD key"))?;
        Ok(Sealer {
            aead: LessSafeKey::new(aead),
            lookup: hmac::Key::new(hmac::HMAC_SHA256, derive("licensegate/v1/lookup").as_ref()),
            secrets: hmac::Key::new(
                hmac::HMAC_SHA256,
                derive("licensegate/v1/client-secret").as_ref(),
            ),
        })
    }

    /// Encrypts `plaintext` bound to `context` (e.g. the row it belongs to), so a
    /// sealed value moved to another row does not open.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
        let nonce_bytes = random_bytes(NONCE_LEN)?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&nonce_bytes);
        let mut buf = plaintext.to_vec();
        self.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| Error::internal("encryption failed"))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(SEALED_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Decrypts a value sealed with [`Sealer::seal`] under the same context.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < 1 + NONCE_LEN + aead::MAX_TAG_LEN || sealed[0] != SEALED_VERSION {
            return Err(Error::internal("sealed value has an unknown format"));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[1..1 + NONCE_LEN]);
        let mut buf = sealed[1 + NONCE_LEN..].to_vec();
        let plain = self
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| Error::internal(format!("sealed value for {context} does not open")))?;
        Ok(plain.to_vec())
    }

    /// Keyed digest for looking a personal value up without storing it in clear.
    pub fn lookup_digest(&self, domain: &str, value: &str) -> Vec<u8> {
        let mut ctx = hmac::Context::with_key(&self.lookup);
        ctx.update(domain.as_bytes());
        ctx.update(&[0]);
        ctx.update(value.as_bytes());
        ctx.sign().as_ref().to_vec()
    }

    /// Keyed digest of a client secret. Client secrets are 256-bit random
    /// values, so a fast keyed hash is as strong as a slow one and keeps the
    /// token endpoint fast; the key means a stolen table alone is useless.
    pub fn secret_digest(&self, secret: &str) -> Vec<u8> {
        hmac::sign(&self.secrets, secret.as_bytes())
            .as_ref()
            .to_vec()
    }
}

/// Constant-time equality of two byte strings.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// An Ed25519 signing key with its key id (RFC 7638 thumbprint).
///
/// Keys are made and stored as ring's PKCS#8 documents, and ring checks a
/// document when it is read; signing uses ed25519-dalek with its precomputed
/// basepoint tables, 16 µs a signature here against ring's 22 µs (the JWT
/// signature was a quarter of the token endpoint's time). A signature takes
/// a nonce made ahead in idle time when one is ready ([`nonces`]); else it
/// is RFC 8032's deterministic one, the same bytes as ring's (unit tests
/// check both).
pub struct SigningKey {
    kid: String,
    key: ed25519_dalek::SigningKey,
    /// The secret scalar `a` of the expanded key (RFC 8032 §5.1.5).
    scalar: curve25519_dalek::Scalar,
}

impl Drop for SigningKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.scalar);
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish()
    }
}

impl SigningKey {
    /// Generates a new key; returns it with its PKCS#8 document (to be sealed and stored).
    pub fn generate() -> Result<(Self, Vec<u8>)> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| Error::internal("key generation failed"))?;
        let pkcs8 = doc.as_ref().to_vec();
        Ok((Self::from_pkcs8(&pkcs8)?, pkcs8))
    }

    /// Parses a stored PKCS#8 document.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self> {
        let invalid = || Error::internal("stored signing key is not a valid Ed25519 key");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| invalid())?;
        let key = ed25519_dalek::SigningKey::from_bytes(&pkcs8_seed(pkcs8).ok_or_else(invalid)?);
        if key.verifying_key().as_bytes() != pair.public_key().as_ref() {
            return Err(invalid());
        }
        let kid = jwk_thumbprint(pair.public_key().as_ref());
        let scalar = key.to_scalar();
        Ok(SigningKey { kid, key, scalar })
    }

    /// Key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK.
    pub fn public_jwk(&self) -> serde_json::Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64url(self.public_key()),
            "kid": self.kid,
            "use": "sig",
            "alg": "EdDSA",
        })
    }

    /// Raw public key bytes.
    pub fn public_key(&self) -> &[u8] {
        self.key.as_ref().as_bytes()
    }

    /// Raw Ed25519 signature over `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.signature(message, nonces::pool()).to_bytes().to_vec()
    }

    /// An Ed25519 signature over `message`, with a nonce of `pool` if one is
    /// ready: `S = r + H(R‖A‖M)·a` (RFC 8032 §5.1.6 steps 4-5 with the nonce
    /// `r` and `R = rB` made ahead); else RFC 8032's own.
    fn signature(&self, message: &[u8], pool: &nonces::Nonces) -> ed25519_dalek::Signature {
        use sha2::Digest;
        let Some(nonce) = pool.take() else {
            return self.key.sign(message);
        };
        let (r, big_r) = nonce.parts();
        let k = curve25519_dalek::Scalar::from_bytes_mod_order_wide(
            &sha2::Sha512::new()
                .chain_update(big_r)
                .chain_update(self.public_key())
                .chain_update(message)
                .finalize()
                .into(),
        );
        let s = k * self.scalar + r;
        ed25519_dalek::Signature::from_components(*big_r, s.to_bytes())
    }

    /// Signs `claims` as a compact JWS with header `{alg: EdDSA, typ, kid}`.
    pub fn sign_jws(&self, typ: &str, claims: &impl Serialize) -> Result<String> {
        let header = json!({"alg": "EdDSA", "typ": typ, "kid": self.kid});
        let header = serde_json::to_vec(&header).map_err(Error::internal)?;
        let payload = serde_json::to_vec(claims).map_err(Error::internal)?;
        let mut jws = String::with_capacity(64 + payload.len() * 4 / 3 + 90);
        URL_SAFE_NO_PAD.encode_string(header, &mut jws);
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut jws);
        let sig = self.signature(jws.as_bytes(), nonces::pool());
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(sig.to_bytes(), &mut jws);
        Ok(jws)
    }
}

/// The private key (seed) of an Ed25519 PKCS#8 document as ring writes it
/// (RFC 5958 v2 with the public key, 83 bytes): a fixed 16-byte prefix, the
/// 32-byte seed, then the public key, which the caller checks against the seed.
fn pkcs8_seed(pkcs8: &[u8]) -> Option<[u8; 32]> {
    const PREFIX: [u8; 16] = [
        0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    if pkcs8.len() != 83 || pkcs8[..16] != PREFIX {
        return None;
    }
    pkcs8[16..48].try_into().ok()
}

/// RFC 7638 thumbprint of an Ed25519 public key, used as its `kid`.
pub fn jwk_thumbprint(public_key: &[u8]) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        b64url(public_key)
    );
    b64url(sha256(canonical))
}

/// Signing keys of the broker and of every issuing unit, kept in the database
/// (private halves sealed with the master key) and cached once parsed.
pub struct KeyRing {
    store: crate::store::Store,
    sealer: std::sync::Arc<Sealer>,
    active: std::sync::RwLock<
        std::collections::HashMap<String, (std::time::Instant, std::sync::Arc<SigningKey>)>,
    >,
    verifying: std::sync::RwLock<std::collections::HashMap<String, std::sync::Arc<Vec<u8>>>>,
    refresh: std::time::Duration,
}

/// Key owner name of the broker itself.
pub const BROKER: &str = "broker";

/// Key owner name of an issuing unit.
pub fn issuer_owner(issuer_id: &str) -> String {
    format!("issuer:{issuer_id}")
}

impl KeyRing {
    /// A key ring over the store.
    /// A key ring over the store; `refresh` is how long a node signs with the
    /// key it read before looking for a newer one (made by a rotation on another node).
    pub fn new(
        store: crate::store::Store,
        sealer: std::sync::Arc<Sealer>,
        refresh: std::time::Duration,
    ) -> Self {
        KeyRing {
            refresh,
            store,
            sealer,
            active: Default::default(),
            verifying: Default::default(),
        }
    }

    /// The owner's current signing key, generated and stored on first use.
    pub async fn active(&self, owner: &str) -> Result<std::sync::Arc<SigningKey>> {
        // Re-read now and then, so a rotation made on another node reaches this one.
        if let Some(k) = self.active.read().ok().and_then(|m| {
            m.get(owner)
                .filter(|(at, _)| at.elapsed() < self.refresh)
                .map(|(_, k)| k.clone())
        }) {
            return Ok(k);
        }
        let key = match self.store.active_signing_key(owner).await? {
            Some(stored) => {
                let pkcs8 = self.sealer.open(
                    &format!("signing_key:{}", stored.kid),
                    &stored.sealed_private,
                )?;
                SigningKey::from_pkcs8(&pkcs8)?
            }
            None => self.rotate_inner(owner).await?,
        };
        let key = std::sync::Arc::new(key);
        if let Ok(mut m) = self.active.write() {
            m.insert(owner.to_owned(), (std::time::Instant::now(), key.clone()));
        }
        Ok(key)
    }

    /// Generates a new current key for `owner`; older keys stay in its JWKS.
    pub async fn rotate(&self, owner: &str) -> Result<std::sync::Arc<SigningKey>> {
        let key = std::sync::Arc::new(self.rotate_inner(owner).await?);
        if let Ok(mut m) = self.active.write() {
            m.insert(owner.to_owned(), (std::time::Instant::now(), key.clone()));
        }
        Ok(key)
    }

    async fn rotate_inner(&self, owner: &str) -> Result<SigningKey> {
        let (key, pkcs8) = SigningKey::generate()?;
        let stored = crate::store::clients::StoredKey {
            kid: key.kid().to_owned(),
            sealed_private: self
                .sealer
                .seal(&format!("signing_key:{}", key.kid()), &pkcs8)?,
            public_jwk: key.public_jwk().to_string(),
        };
        self.store
            .insert_signing_key(
                owner,
                &stored,
                &crate::store::timestamp(crate::store::now()),
            )
            .await?;
        tracing::info!(owner, kid = key.kid(), "generated a signing key");
        Ok(key)
    }

    /// The raw Ed25519 public key of `owner` with id `kid`, if any.
    pub async fn verifying_key(
        &self,
        owner: &str,
        kid: &str,
    ) -> Result<Option<std::sync::Arc<Vec<u8>>>> {
        let cache_key = format!("{owner}/{kid}");
        if let Some(k) = self
            .verifying
            .read()
            .ok()
            .and_then(|m| m.get(&cache_key).cloned())
        {
            return Ok(Some(k));
        }
        let Some(stored) = self.store.signing_key(owner, kid).await? else {
            return Ok(None);
        };
        let jwk: serde_json::Value =
            serde_json::from_str(&stored.public_jwk).map_err(Error::internal)?;
        let x = jwk["x"].as_str().unwrap_or_default();
        let bytes = std::sync::Arc::new(URL_SAFE_NO_PAD.decode(x).map_err(Error::internal)?);
        if let Ok(mut m) = self.verifying.write() {
            m.insert(cache_key, bytes.clone());
        }
        Ok(Some(bytes))
    }

    /// The JWKS of `owner`: every key it ever had, newest first.
    pub async fn jwks(&self, owner: &str) -> Result<serde_json::Value> {
        let keys = self
            .store
            .signing_keys(owner)
            .await?
            .iter()
            .map(|k| serde_json::from_str(&k.public_jwk).map_err(Error::internal))
            .collect::<Result<Vec<serde_json::Value>>>()?;
        Ok(json!({ "keys": keys }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip_and_context_binding() {
        let s = Sealer::new(&[7u8; 32]).unwrap();
        let sealed = s.seal("row-1", b"hello").unwrap();
        assert_eq!(s.open("row-1", &sealed).unwrap(), b"hello");
        assert!(s.open("row-2", &sealed).is_err());
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(s.open("row-1", &tampered).is_err());
    }

    #[test]
    fn signs_verifiable_jws() {
        let (k, pkcs8) = SigningKey::generate().unwrap();
        let again = SigningKey::from_pkcs8(&pkcs8).unwrap();
        assert_eq!(k.kid(), again.kid());
        let jws = k.sign_jws("JWT", &json!({"a": 1})).unwrap();
        let (signed, sig) = jws.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, k.public_key())
            .verify(signed.as_bytes(), &sig)
            .unwrap();
    }

    #[test]
    fn without_a_nonce_made_ahead_signatures_are_rings_to_the_byte() {
        let empty = nonces::Nonces::new(0);
        for _ in 0..8 {
            let (k, pkcs8) = SigningKey::generate().unwrap();
            let ring_pair = Ed25519KeyPair::from_pkcs8(&pkcs8).unwrap();
            assert_eq!(k.public_key(), ring_pair.public_key().as_ref());
            for message in [&b""[..], b"a", &[0xA5; 1000]] {
                assert_eq!(
                    k.signature(message, &empty).to_bytes(),
                    ring_pair.sign(message).as_ref()
                );
            }
        }
    }

    /// Signatures with nonces made ahead verify with two other
    /// implementations (ring's, and ed25519-dalek's strict check, which
    /// also refuses a non-canonical `S` or a small-order `R`), over messages
    /// of every length around SHA-512's block boundaries; each used a nonce
    /// of its own; and a changed message or signature does not verify.
    #[test]
    fn signatures_with_nonces_made_ahead_verify_elsewhere() {
        use ed25519_dalek::Verifier;
        let pool = nonces::Nonces::new(1024);
        let (k, _) = SigningKey::generate().unwrap();
        let ring_key =
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, k.public_key());
        let dalek_key = k.key.verifying_key();
        let mut commitments = std::collections::HashSet::new();
        for len in 0..300 {
            if pool.ready() == 0 {
                assert!(pool.fill(128) > 0);
            }
            let before = pool.ready();
            let message: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let sig = k.signature(&message, &pool);
            assert_eq!(pool.ready(), before - 1, "a nonce was used");
            let bytes = sig.to_bytes();
            assert!(commitments.insert(bytes[..32].to_vec()), "R repeated");
            ring_key.verify(&message, &bytes).unwrap();
            dalek_key.verify_strict(&message, &sig).unwrap();
            assert!(dalek_key.verify(&message, &sig).is_ok());
            let mut other = message.clone();
            other.push(1);
            assert!(ring_key.verify(&other, &bytes).is_err());
            let mut flipped = bytes;
            flipped[40] ^= 1;
            assert!(ring_key.verify(&message, &flipped).is_err());
            // Not RFC 8032's deterministic signature: the nonce was drawn.
            assert_ne!(bytes, k.key.sign(&message).to_bytes());
        }
    }

    /// A signature does not wait for a pool whose lock is held (by a filler
    /// preempted at the idle policy): it makes its own nonce, counted.
    #[test]
    fn a_signature_does_not_wait_for_a_held_pool() {
        let pool = nonces::Nonces::new(16);
        assert_eq!(pool.fill(16), 16);
        let (k, _) = SigningKey::generate().unwrap();
        let held = pool.hold();
        let sig = k.signature(b"m", &pool);
        assert_eq!(
            sig.to_bytes(),
            k.key.sign(b"m").to_bytes(),
            "RFC 8032's own"
        );
        drop(held);
        assert_eq!(pool.missed(), 1);
        assert_eq!(pool.ready(), 16);
        assert_ne!(k.signature(b"m", &pool).to_bytes(), sig.to_bytes());
        assert_eq!(pool.ready(), 15);
    }

    #[test]
    fn a_pool_never_gives_a_nonce_twice_nor_holds_more_than_its_capacity() {
        let pool = nonces::Nonces::new(200);
        assert_eq!(pool.fill(500), 200);
        assert_eq!(pool.fill(1), 0);
        let mut seen = std::collections::HashSet::new();
        while let Some(n) = pool.take() {
            let (r, big_r) = n.parts();
            assert!(seen.insert(r.to_bytes()));
            // R is rB.
            assert_eq!(
                &curve25519_dalek::EdwardsPoint::mul_base(r)
                    .compress()
                    .to_bytes(),
                big_r
            );
        }
        assert_eq!(seen.len(), 200);
        // The take that ended the loop, and one more.
        assert_eq!(pool.missed(), 1);
        assert!(pool.take().is_none());
        assert_eq!(pool.missed(), 2);
    }

    /// The process's pool is filled by its own thread, at the idle policy,
    /// and refilled once signatures have taken half of it. (Other tests of
    /// this binary take nonces from it too, a few at a time.)
    #[test]
    fn the_process_pool_fills_itself_in_idle_time() {
        let pool = nonces::pool();
        let half = nonces::CAPACITY / 2;
        let over_half = || {
            let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
            while pool.ready() <= half && std::time::Instant::now() < until {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            pool.ready() > half
        };
        assert!(over_half(), "{} ready", pool.ready());
        #[cfg(target_os = "linux")]
        {
            let policies: Vec<String> = std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|t| {
                    let dir = t.ok()?.path();
                    let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
                    if comm.trim() != "ed25519-nonces" {
                        return None;
                    }
                    let sched = std::fs::read_to_string(dir.join("sched")).ok()?;
                    let policy = sched.lines().find(|l| l.starts_with("policy"))?;
                    Some(policy.split(':').nth(1)?.trim().to_owned())
                })
                .collect();
            // SCHED_IDLE is policy 5.
            assert_eq!(policies, ["5"]);
        }
        let (k, _) = SigningKey::generate().unwrap();
        while pool.ready() >= half {
            k.sign(b"x");
        }
        assert!(over_half(), "{} ready", pool.ready());
    }

    #[test]
    fn a_key_document_that_is_not_rings_ed25519_is_refused() {
        let (_, pkcs8) = SigningKey::generate().unwrap();
        let mut other_seed = pkcs8.clone();
        other_seed[20] ^= 1; // the seed no longer matches the public key
        assert!(SigningKey::from_pkcs8(&other_seed).is_err());
        assert!(SigningKey::from_pkcs8(&pkcs8[..82]).is_err());
        assert!(SigningKey::from_pkcs8(b"").is_err());
        assert!(pkcs8_seed(&pkcs8).is_some());
        let mut prefix = pkcs8.clone();
        prefix[9] ^= 1; // another algorithm identifier
        assert!(pkcs8_seed(&prefix).is_none());
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
