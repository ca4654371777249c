//! Retrieval (用证) and verification (核验): what an entity reads with a
//! token from a holder's consent.
//!
//! Every call is checked in full: the token (signature, expiry, not revoked,
//! its DPoP key when bound), the entity (active), the consent (active,
//! unexpired, budget left), the policies and the use list (this purpose, this
//! license type and status, every field), and the license (covered by the
//! consent). A retrieval spends one unit of the consent's budget in the same
//! group commit as its `license.retrieved` record and its notification to
//! the holder, so concurrent reads never overspend and the answer leaves only
//! once the record is durable. The answer carries only the consented fields,
//! the issuer's SD-JWT with exactly their disclosures, and a broker-signed
//! receipt naming the audit sequence number (the annotated copy, 加注件).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use super::{effective_status, license_base, sdjwt, today, LicenseStatus};
use crate::app::Services;
use crate::audit::{ActorKind, AuditEvent, Decision, Guard, Guarded, Outcome};
use crate::consent::{effective_consent_status, unix_to_rfc3339, GrantedAccess};
use crate::entities::DecisionRequest;
use crate::error::{Error, Result};
use crate::keys::{b64url, random_token, sha256, BROKER};
use crate::oauth::AccessClaims;
use crate::policy::{PolicyAction, Resource};
use crate::store::cache::{Generations, KeptCall};
use crate::store::consent::ConsentRow;
use crate::store::licenses::LicenseRow;
use crate::store::{now, timestamp};

/// A token checked for a resource call, with its consent.
#[derive(Debug, Clone)]
pub struct ConsentAccess {
    /// The token's claims.
    pub claims: AccessClaims,
    /// The consent (shared with the token's kept state, see
    /// [`crate::store::cache::KeptCall`]: a call on it copies no row).
    pub consent: Arc<ConsentRow>,
    /// What it covers.
    pub granted: Arc<Vec<GrantedAccess>>,
    /// The change generations the call's other reads go by.
    pub generations: Generations,
    /// Taken from what an earlier call with the token read
    /// ([`check_token_kept`]), not read for this one.
    pub reused: bool,
}

fn refused(detail: impl Into<String>, dpop: bool) -> Error {
    Error::TokenRefused {
        insufficient: false,
        detail: detail.into(),
        dpop,
    }
}

/// Checks that a (verified) access token may be used now: it acts under a
/// consent, its client is active, it was not revoked, and its consent is
/// active and unexpired.
pub async fn check_token(services: &Services, claims: AccessClaims) -> Result<ConsentAccess> {
    let dpop = claims.cnf.is_some();
    let Some(consent_id) = claims.consent.clone() else {
        return Err(Error::TokenRefused {
            insufficient: true,
            detail: "this token does not act under a holder's consent".into(),
            dpop,
        });
    };
    let (client_status, revoked, consent, generations) = services
        .store
        .consent_for_call(&claims.client_id, &claims.jti, &consent_id)
        .await?
        .ok_or_else(|| refused("the consent of this token does not exist", dpop))?;
    if client_status != "active" {
        return Err(refused("the entity is suspended", dpop));
    }
    if revoked {
        return Err(refused("this access token was revoked", dpop));
    }
    match effective_consent_status(&consent, now().unix_timestamp()) {
        "revoked" => return Err(refused("the holder's consent was revoked", dpop)),
        "expired" => return Err(refused("the holder's consent has expired", dpop)),
        _ => {}
    }
    let consent = Arc::new(consent);
    let granted: Arc<Vec<GrantedAccess>> =
        Arc::new(serde_json::from_str(&consent.details).map_err(Error::internal)?);
    services.store.keep_call(
        &claims.jti,
        KeptCall {
            consent: consent.clone(),
            granted: granted.clone(),
            generations,
        },
    );
    Ok(ConsentAccess {
        claims,
        consent,
        granted,
        generations,
        reused: false,
    })
}

/// What the last fresh check of this (verified) token found good, if
/// anything, without reading it again: only for a call whose group commit
/// confirms it (see [`crate::audit::Expected`]).
fn check_token_kept(services: &Services, claims: &AccessClaims) -> Option<ConsentAccess> {
    let kept = services.store.kept_call(&claims.jti)?;
    // Kept by token id, for the token's own client and consent only.
    if claims.consent.as_deref() != Some(kept.consent.id.as_str())
        || claims.client_id != kept.consent.client_id
    {
        return None;
    }
    Some(ConsentAccess {
        claims: claims.clone(),
        consent: kept.consent.clone(),
        granted: kept.granted.clone(),
        generations: kept.generations,
        reused: true,
    })
}

/// A license a token covers, without its face fields.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CoveredLicense {
    /// Identifier of the current version.
    pub identifier: String,
    /// License type code.
    pub license_type: String,
    /// valid, suspended, cancelled or expired.
    pub status: LicenseStatus,
    /// Start of validity.
    pub valid_from: String,
    /// End of validity (none: indefinite).
    pub valid_until: Option<String>,
    /// Fields that may be read.
    pub fields: Vec<String>,
}

/// What the consent covers, with budget and expiry.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Coverage {
    /// The consent (grant) id.
    pub consent: String,
    /// Purpose code.
    pub purpose: String,
    /// Retrievals left.
    pub retrievals_left: i64,
    /// Until when (RFC 3339).
    pub expires_at: String,
    /// The licenses.
    pub licenses: Vec<CoveredLicense>,
}

/// Lists what a token covers (no face fields, no budget spent).
pub async fn list(services: &Services, a: &ConsentAccess) -> Result<Coverage> {
    let today = today();
    let mut licenses = Vec::new();
    for g in a.granted.iter() {
        for identifier in &g.licenses {
            let Some(current) = services
                .store
                .current_license_at(a.generations, &license_base(identifier)?)
                .await?
            else {
                continue;
            };
            let (l, version) = (&current.0, &current.1);
            licenses.push(CoveredLicense {
                identifier: version.identifier.clone(),
                license_type: l.license_type.clone(),
                status: effective_status(l, today),
                valid_from: l.valid_from.clone(),
                valid_until: l.valid_until.clone(),
                fields: g.fields.clone(),
            });
        }
    }
    Ok(Coverage {
        consent: a.consent.id.clone(),
        purpose: a.consent.purpose.clone(),
        retrievals_left: (a.consent.max_retrievals - a.consent.retrievals).max(0),
        expires_at: unix_to_rfc3339(a.consent.expires_at),
        licenses,
    })
}

/// A retrieved license: only the consented fields, with proof.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RetrievedLicense {
    /// Identifier of the version served.
    pub identifier: String,
    /// License type code.
    pub license_type: String,
    /// The issuing unit.
    pub issuer: String,
    /// Status now (only a valid license is served).
    pub status: LicenseStatus,
    /// Start of validity.
    pub valid_from: String,
    /// End of validity (none: indefinite).
    pub valid_until: Option<String>,
    /// The consented face fields and their values.
    #[schema(value_type = Object)]
    pub fields: Map<String, Value>,
    /// The issuer's SD-JWT with the disclosures of these fields only.
    pub sd_jwt: String,
    /// Where the issuer's keys are.
    pub issuer_jwks_uri: String,
    /// The audit record of this retrieval.
    pub audit_seq: i64,
    /// The broker-signed receipt and annotated copy (JWS `retrieval-receipt+jwt`).
    pub receipt: String,
}

/// The license a consent covers under `identifier` (any version's identifier
/// or the base id); otherwise 404 without saying whether it exists. An
/// identifier given as the consent has it matches without being parsed again.
fn covered<'g>(a: &'g ConsentAccess, identifier: &str) -> Result<(&'g GrantedAccess, String)> {
    let not_covered = || Error::NotFound("no license of this consent has this identifier".into());
    let base = license_base(identifier).map_err(|_| not_covered())?;
    a.granted
        .iter()
        .find(|g| {
            g.licenses
                .iter()
                .any(|l| l == identifier || license_base(l).is_ok_and(|b| b == base))
        })
        .map(|g| (g, base))
        .ok_or_else(not_covered)
}

/// Asks the policies and the use list about this license, as it is now;
/// returns its status now (what the decision was about).
async fn decide(
    services: &Services,
    a: &ConsentAccess,
    action: PolicyAction,
    license: &LicenseRow,
    identifier: &str,
    fields: &[String],
) -> Result<LicenseStatus> {
    let ty = services
        .store
        .license_type_at(a.generations, &license.license_type)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no license type {}", license.license_type)))?;
    let found = services
        .store
        .entity_with_scenarios_at(a.generations, &a.claims.client_id)
        .await?;
    let now_status = effective_status(license, today());
    let status = now_status.as_str().to_owned();
    let d = crate::entities::decide_with(
        services,
        found.as_deref(),
        &DecisionRequest {
            entity_id: a.claims.client_id.clone(),
            action,
            license_type: license.license_type.clone(),
            license: Some(identifier.to_owned()),
            purpose: a.consent.purpose.clone(),
            fields: fields.to_vec(),
            flow: None,
        },
        &ty.spec,
        Resource::License {
            id: identifier.to_owned(),
            status,
        },
    )
    .await?;
    if d.allowed {
        Ok(now_status)
    } else {
        Err(Error::Forbidden(format!(
            "refused: {}",
            d.reasons.join("; ")
        )))
    }
}

fn event(a: &ConsentAccess, action: &str, outcome: Outcome) -> AuditEvent {
    let mut e = AuditEvent::new(ActorKind::Entity, &a.claims.client_id, action, outcome)
        .holder(&a.consent.holder_id)
        .purpose(&a.consent.purpose);
    e.consent = Some(a.consent.id.clone());
    e
}

/// Retrieves one license with a verified access token.
///
/// The token's state (entity, revocation, consent) is read once per token,
/// not on every call: a later call goes by what the last fresh read found
/// good, and its group commit confirms it under the commit's lock, together
/// with the change generations its other reads went by. When that no longer
/// holds (or the call is refused before its commit), nothing was recorded,
/// and the call is decided again from a fresh read, so a change still
/// applies to the very next call.
pub async fn retrieve(
    services: &Services,
    claims: AccessClaims,
    identifier: &str,
) -> Result<RetrievedLicense> {
    if let Some(a) = check_token_kept(services, &claims) {
        match retrieve_under(services, &a, identifier).await? {
            Attempt::Done(r) => return Ok(*r),
            Attempt::Stale => services.store.forget_call(&claims.jti),
        }
    }
    let a = check_token(services, claims).await?;
    match retrieve_under(services, &a, identifier).await? {
        Attempt::Done(r) => Ok(*r),
        Attempt::Stale => Err(Error::internal("a retrieval read fresh was found stale")),
    }
}

/// What one attempt at a retrieval came to.
enum Attempt {
    Done(Box<RetrievedLicense>),
    /// It went by a kept state that no longer holds: nothing was recorded.
    Stale,
}

/// Retrieves one license under the token's consent `a`.
async fn retrieve_under(
    services: &Services,
    a: &ConsentAccess,
    identifier: &str,
) -> Result<Attempt> {
    let decided = async {
        let (granted, base) = covered(a, identifier)?;
        let current = services
            .store
            .current_license_at(a.generations, &base)
            .await?
            .ok_or_else(|| {
                Error::NotFound("no license of this consent has this identifier".into())
            })?;
        let status = decide(
            services,
            a,
            PolicyAction::Retrieve,
            &current.0,
            &current.1.identifier,
            &granted.fields,
        )
        .await?;
        Ok::<_, Error>((granted, current, status))
    };
    let (granted, current, status) = match decided.await {
        Ok(d) => d,
        // Refused on a kept state (nothing recorded yet): decided again on a fresh read.
        Err(_) if a.reused => return Ok(Attempt::Stale),
        Err(e) => return Err(e),
    };
    let (license, version) = (&current.0, &current.1);
    let all = services.library.disclosures(version)?;
    let mut fields = Map::new();
    let mut chosen = Vec::new();
    for f in &granted.fields {
        if let Some(d) = all.get(f) {
            let (_, value) = sdjwt::decode_disclosure(d)?;
            fields.insert(f.clone(), value);
            chosen.push(d.clone());
        }
    }
    let sd_jwt = sdjwt::present(&version.sd_jwt, &chosen);
    let t = now();
    let at = timestamp(t);
    let field_list: Vec<&str> = fields.keys().map(String::as_str).collect();
    let done = event(a, "license.retrieved", Outcome::Success)
        .license(&version.identifier)
        .license_type(&license.license_type)
        .reason(format!("fields={}", field_list.join(",")));
    let spent = event(a, "access.denied", Outcome::Refused)
        .license(&version.identifier)
        .license_type(&license.license_type)
        .reason("retrieval refused: the consent's budget is spent or it has ended");
    let notice = RetrievalNotice {
        entity: &a.claims.client_id,
        license: &version.identifier,
        license_type: &license.license_type,
        fields: &field_list,
        purpose: &a.consent.purpose,
        consent: &a.consent.id,
        at: &at,
    };
    let appended = services
        .audit
        .record_guarded(
            vec![done],
            Guarded {
                notifications: vec![crate::notify::queue(
                    "holder",
                    &a.consent.holder_id,
                    "license.retrieved",
                    &notice,
                )?],
                refused: vec![spent],
                ..Guarded::new(Guard::Spend {
                    consent_id: a.consent.id.clone(),
                    now_unix: t.unix_timestamp(),
                    expect: a.reused.then(|| crate::audit::Expected {
                        jti: a.claims.jti.clone(),
                        generations: a.generations,
                    }),
                })
            },
        )
        .await?;
    match appended.decision {
        Decision::Applied => {}
        Decision::Stale => return Ok(Attempt::Stale),
        Decision::Refused => {
            return Err(Error::Forbidden(
                "the consent's retrieval budget is spent, or the consent has ended".into(),
            ))
        }
    }
    let seq = appended
        .seqs
        .first()
        .copied()
        .ok_or_else(|| Error::internal("no sequence number for a retrieval"))?;
    let until = unix_to_rfc3339(a.consent.expires_at);
    let base_url = services.config.public_url.trim_end_matches('/');
    let (entity, purpose) = (a.claims.client_id.as_str(), a.consent.purpose.as_str());
    let receipt_claims = ReceiptClaims {
        iss: base_url,
        jti: random_token(12)?,
        iat: t.unix_timestamp(),
        audit_seq: seq,
        consent: &a.consent.id,
        entity,
        purpose,
        usable_until: &until,
        license: ReceiptLicense {
            identifier: &version.identifier,
            license_type: &license.license_type,
            issuer: &license.issuer_id,
            status,
            valid_from: &license.valid_from,
            valid_until: license.valid_until.as_deref(),
        },
        fields: &field_list,
        sd_hash: b64url(sha256(&sd_jwt)),
        annotation: format!(
            "仅供 {entity} 用于 {purpose}，有效期至 {until}；他用无效。Only for {entity} for the purpose {purpose}, until {until}; void for any other use."
        ),
    };
    let receipt = services
        .keys
        .active(BROKER)
        .await?
        .sign_jws("retrieval-receipt+jwt", &receipt_claims)?;
    Ok(Attempt::Done(Box::new(RetrievedLicense {
        identifier: version.identifier.clone(),
        license_type: license.license_type.clone(),
        issuer_jwks_uri: format!("{base_url}/issuers/{}/jwks.json", license.issuer_id),
        issuer: license.issuer_id.clone(),
        status,
        valid_from: license.valid_from.clone(),
        valid_until: license.valid_until.clone(),
        fields,
        sd_jwt,
        audit_seq: seq,
        receipt,
    })))
}

/// The holder's notice of a retrieval (notification `license.retrieved`).
#[derive(Serialize)]
struct RetrievalNotice<'a> {
    entity: &'a str,
    license: &'a str,
    license_type: &'a str,
    fields: &'a [&'a str],
    purpose: &'a str,
    consent: &'a str,
    at: &'a str,
}

/// The claims of a retrieval receipt (JWS `retrieval-receipt+jwt`), the
/// annotated copy: written straight from the retrieval's values, in this
/// order.
#[derive(Serialize)]
struct ReceiptClaims<'a> {
    iss: &'a str,
    jti: String,
    iat: i64,
    audit_seq: i64,
    consent: &'a str,
    entity: &'a str,
    purpose: &'a str,
    usable_until: &'a str,
    license: ReceiptLicense<'a>,
    fields: &'a [&'a str],
    sd_hash: String,
    annotation: String,
}

/// The license a receipt is about.
#[derive(Serialize)]
struct ReceiptLicense<'a> {
    identifier: &'a str,
    #[serde(rename = "type")]
    license_type: &'a str,
    issuer: &'a str,
    status: LicenseStatus,
    valid_from: &'a str,
    valid_until: Option<&'a str>,
}

/// What an entity holds and wants verified.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerificationRequest {
    /// The license identifier (any version).
    pub identifier: String,
    /// The issuer-signed SD-JWT it was shown (with or without disclosures).
    #[serde(default)]
    pub sd_jwt: Option<String>,
    /// Face field values it holds, to compare with the current version.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub fields: Option<BTreeMap<String, Value>>,
}

/// The answer to a verification.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Verification {
    /// The SD-JWT (or every field given) is the issuer's.
    pub authentic: bool,
    /// It is the current version and the license is valid now.
    pub current: bool,
    /// Status now.
    pub status: LicenseStatus,
    /// End of validity of the current version.
    pub valid_until: Option<String>,
    /// The fields given that did not match (names only).
    pub mismatched_fields: Vec<String>,
    /// The audit record of this verification.
    pub audit_seq: i64,
}

/// Verifies a license the entity was shown (核验), under the token's consent:
/// only licenses and fields the consent covers; audited as `license.verified`.
pub async fn verify(
    services: &Services,
    a: &ConsentAccess,
    req: &VerificationRequest,
) -> Result<Verification> {
    let (granted, base) = covered(a, &req.identifier)?;
    if req.sd_jwt.is_none() && req.fields.is_none() {
        return Err(Error::invalid_field(
            "sd_jwt",
            "give the SD-JWT you were shown, or the fields you hold",
        ));
    }
    let given: Vec<String> = req
        .fields
        .as_ref()
        .map(|f| f.keys().cloned().collect())
        .unwrap_or_default();
    if let Some(f) = given.iter().find(|f| !granted.fields.contains(f)) {
        return Err(Error::Forbidden(format!(
            "field {f} is not covered by the consent"
        )));
    }
    let license =
        services.store.license(&base).await?.ok_or_else(|| {
            Error::NotFound("no license of this consent has this identifier".into())
        })?;
    let versions = services.store.license_versions(&base).await?;
    let current = versions
        .iter()
        .find(|v| v.version == license.current_version)
        .ok_or_else(|| Error::internal("a license without its current version"))?;
    let status = decide(
        services,
        a,
        PolicyAction::Verify,
        &license,
        &current.identifier,
        &given,
    )
    .await?;
    let mut authentic = true;
    let mut is_current = status == LicenseStatus::Valid;
    if let Some(presented) = &req.sd_jwt {
        let jwt = presented.split('~').next().unwrap_or_default();
        match versions.iter().find(|v| v.sd_jwt == jwt) {
            Some(v) => is_current &= v.version == license.current_version,
            None => {
                authentic = false;
                is_current = false;
            }
        }
    }
    let mut mismatched = Vec::new();
    if let Some(fields) = &req.fields {
        let all = services.library.disclosures(current)?;
        for (k, v) in fields {
            let held = all
                .get(k)
                .and_then(|d| sdjwt::decode_disclosure(d).ok())
                .map(|(_, value)| value);
            if held.as_ref() != Some(v) {
                mismatched.push(k.clone());
            }
        }
        if !mismatched.is_empty() {
            authentic = false;
        }
    }
    let at = timestamp(now());
    let notice = json!({
        "entity": a.claims.client_id, "license": current.identifier, "license_type": license.license_type,
        "fields": given, "purpose": a.consent.purpose, "consent": a.consent.id, "at": at,
    });
    let appended = services
        .audit
        .record_guarded(
            vec![event(a, "license.verified", Outcome::Success)
                .license(&current.identifier)
                .license_type(&license.license_type)
                .reason(format!(
                    "authentic={authentic} current={is_current} fields={}",
                    given.join(",")
                ))],
            Guarded::notify(vec![crate::notify::queue(
                "holder",
                &a.consent.holder_id,
                "license.verified",
                &notice,
            )?]),
        )
        .await?;
    let seq = appended
        .seqs
        .first()
        .copied()
        .ok_or_else(|| Error::internal("no sequence number for a verification"))?;
    Ok(Verification {
        authentic,
        current: is_current && authentic,
        status,
        valid_until: license.valid_until,
        mismatched_fields: mismatched,
        audit_seq: seq,
    })
}
