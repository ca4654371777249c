//! DPoP proofs (RFC 9449): a client proves possession of a key with each
//! request, and tokens bound to that key's thumbprint are useless without it.
//!
//! A proof is a JWT with `typ` `dpop+jwt`, an asymmetric `alg` (ES256, PS256
//! or EdDSA), the public `jwk` in its header, and claims `jti` (seen once:
//! replays are refused through the database, so across nodes too), `htm` and
//! `htu` (this request's method and URL), `iat` (within 10 s of now) and, at
//! a resource, `ath` (the hash of the access token it accompanies).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::{OAuthError, OAuthErrorCode};
use crate::keys::{b64url, sha256};
use crate::store::{now, Store};

/// Accepted clock difference, seconds.
const SKEW: i64 = 10;
/// How long a proof id is remembered: past that its `iat` is refused anyway.
const REMEMBER: i64 = 2 * SKEW + 60;

#[derive(Deserialize)]
struct ProofClaims {
    jti: String,
    htm: String,
    htu: String,
    iat: i64,
    #[serde(default)]
    ath: Option<String>,
}

fn refused(why: impl Into<String>) -> OAuthError {
    OAuthError::new(OAuthErrorCode::InvalidDpopProof, why)
}

/// RFC 7638 thumbprint of a public JWK given as JSON: the SHA-256 of its
/// required members in lexicographic order, without whitespace.
pub fn thumbprint(jwk: &Value) -> Option<String> {
    let s = |k: &str| jwk.get(k).and_then(Value::as_str);
    let canonical = match s("kty")? {
        "EC" => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            s("crv")?,
            s("x")?,
            s("y")?
        ),
        "RSA" => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, s("e")?, s("n")?),
        "OKP" => format!(r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#, s("crv")?, s("x")?),
        _ => return None,
    };
    Some(b64url(sha256(canonical)))
}

/// The URL a proof must name: without query and fragment (RFC 9449 §4.3).
fn normalise(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// Checks a proof for `method` `url` (and, at a resource, the access token it
/// accompanies), including that its id was not used before; returns the key's thumbprint.
pub async fn verify(
    store: &Store,
    proof: &str,
    method: &str,
    url: &str,
    access_token: Option<&str>,
) -> Result<String, OAuthError> {
    let now = now().unix_timestamp();
    let checked = check_proof(proof, method, url, access_token, now)?;
    if !store
        .record_dpop_proof(&format!("{}:{}", checked.jkt, checked.jti), now + REMEMBER)
        .await?
    {
        return Err(refused("this proof was used before"));
    }
    Ok(checked.jkt)
}

/// A proof that passed every check but the replay check.
#[derive(Debug)]
pub struct CheckedProof {
    /// RFC 7638 thumbprint of the proof's key.
    pub jkt: String,
    /// The proof's id, to remember.
    pub jti: String,
}

/// Every check of a proof that needs no database: form, `typ`, `alg`, public
/// key, signature, `htm`, `htu`, `iat` within 10 s of `now`, `jti`, `ath`.
pub fn check_proof(
    proof: &str,
    method: &str,
    url: &str,
    access_token: Option<&str>,
    now: i64,
) -> Result<CheckedProof, OAuthError> {
    let header = jsonwebtoken::decode_header(proof).map_err(|_| refused("malformed proof"))?;
    if !header
        .typ
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt"))
    {
        return Err(refused("typ must be dpop+jwt"));
    }
    if !matches!(
        header.alg,
        Algorithm::ES256 | Algorithm::PS256 | Algorithm::EdDSA
    ) {
        return Err(refused("alg must be ES256, PS256 or EdDSA"));
    }
    // The raw header, for the thumbprint and to refuse private key material.
    let raw: Value = proof
        .split('.')
        .next()
        .and_then(|h| URL_SAFE_NO_PAD.decode(h).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| refused("malformed header"))?;
    let jwk_json = raw
        .get("jwk")
        .ok_or_else(|| refused("no jwk in the header"))?;
    if jwk_json.get("d").is_some() || jwk_json.get("k").is_some() {
        return Err(refused("the jwk must be a public key"));
    }
    let jkt = thumbprint(jwk_json).ok_or_else(|| refused("unsupported jwk"))?;
    let jwk: Jwk =
        serde_json::from_value(jwk_json.clone()).map_err(|_| refused("unsupported jwk"))?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| refused("unusable jwk"))?;
    let mut v = Validation::new(header.alg);
    v.validate_exp = false;
    v.validate_aud = false;
    v.set_required_spec_claims::<&str>(&[]);
    let claims = jsonwebtoken::decode::<ProofClaims>(proof, &key, &v)
        .map_err(|e| refused(format!("proof not valid: {e}")))?
        .claims;
    if !claims.htm.eq_ignore_ascii_case(method) {
        return Err(refused("htm does not match the request method"));
    }
    if normalise(&claims.htu) != normalise(url) {
        return Err(refused("htu does not match the request URL"));
    }
    if claims.iat.abs_diff(now) > SKEW as u64 {
        return Err(refused("iat is not within 10 seconds of now"));
    }
    if claims.jti.is_empty() || claims.jti.len() > 256 {
        return Err(refused("jti is required"));
    }
    if let Some(token) = access_token {
        let expected = b64url(sha256(token));
        if claims.ath.as_deref() != Some(expected.as_str()) {
            return Err(refused("ath does not match the access token"));
        }
    }
    Ok(CheckedProof {
        jkt,
        jti: claims.jti,
    })
}
