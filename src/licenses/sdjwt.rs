//! Issuer-signed SD-JWTs (IETF Selective Disclosure for JWTs, RFC 9901 /
//! draft-ietf-oauth-selective-disclosure-jwt) for license versions.
//!
//! Every face field is a selectively disclosable claim: the signed payload
//! carries only SHA-256 digests of the disclosures (`_sd`), so a retrieval can
//! hand out the disclosures of the consented fields alone and they still verify
//! against the issuer's signature. The format is small enough to write here
//! directly on top of our Ed25519 signer.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::keys::{b64url, random_bytes, sha256, SigningKey};

/// Media type (`typ`) of the issuer-signed JWT.
pub const TYP: &str = "dc+sd-jwt";

/// A freshly issued SD-JWT: the signed JWT and one disclosure per face field.
pub struct IssuedSdJwt {
    /// The issuer-signed JWT (digests only).
    pub jwt: String,
    /// Field key → disclosure.
    pub disclosures: BTreeMap<String, String>,
}

/// Builds one disclosure `base64url(["<salt>", "<key>", <value>])`.
pub fn disclosure(key: &str, value: &Value) -> Result<String> {
    let salt = b64url(random_bytes(16)?);
    let array = serde_json::to_vec(&json!([salt, key, value])).map_err(Error::internal)?;
    Ok(URL_SAFE_NO_PAD.encode(array))
}

/// The digest of a disclosure as it appears in `_sd`.
pub fn disclosure_digest(disclosure: &str) -> String {
    b64url(sha256(disclosure.as_bytes()))
}

/// Decodes a disclosure into its key and value.
pub fn decode_disclosure(disclosure: &str) -> Result<(String, Value)> {
    let bytes = URL_SAFE_NO_PAD
        .decode(disclosure)
        .map_err(|_| Error::internal("stored disclosure is not base64url"))?;
    let parsed: (String, String, Value) = serde_json::from_slice(&bytes)
        .map_err(|_| Error::internal("stored disclosure is malformed"))?;
    Ok((parsed.1, parsed.2))
}

/// Signs `claims` (the always-visible claims) plus every entry of `fields` as a
/// selectively disclosable claim.
pub fn issue(
    key: &SigningKey,
    mut claims: Map<String, Value>,
    fields: &Map<String, Value>,
) -> Result<IssuedSdJwt> {
    let mut disclosures = BTreeMap::new();
    let mut digests = Vec::with_capacity(fields.len());
    for (k, v) in fields {
        let d = disclosure(k, v)?;
        digests.push(disclosure_digest(&d));
        disclosures.insert(k.clone(), d);
    }
    // Sorted so the order of digests says nothing about the order of fields.
    digests.sort();
    claims.insert("_sd".into(), json!(digests));
    claims.insert("_sd_alg".into(), json!("sha-256"));
    let jwt = key.sign_jws(TYP, &Value::Object(claims))?;
    Ok(IssuedSdJwt { jwt, disclosures })
}

/// The compact serialization `<jwt>~<disclosure>~…~` with the given disclosures.
pub fn present<'a>(jwt: &str, disclosures: impl IntoIterator<Item = &'a String>) -> String {
    let mut out = String::from(jwt);
    out.push('~');
    for d in disclosures {
        out.push_str(d);
        out.push('~');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disclosures_match_digests() {
        let (key, _) = SigningKey::generate().unwrap();
        let fields = json!({"name": "张三", "born": "1990-01-01"});
        let issued = issue(&key, Map::new(), fields.as_object().unwrap()).unwrap();
        let payload = issued.jwt.split('.').nth(1).unwrap();
        let payload: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        let sd: Vec<String> = serde_json::from_value(payload["_sd"].clone()).unwrap();
        assert_eq!(sd.len(), 2);
        for (k, d) in &issued.disclosures {
            assert!(sd.contains(&disclosure_digest(d)));
            let (key, value) = decode_disclosure(d).unwrap();
            assert_eq!(&key, k);
            assert_eq!(value, fields[k]);
        }
        let presented = present(&issued.jwt, issued.disclosures.values().take(1));
        assert_eq!(presented.matches('~').count(), 2);
    }
}
