//! Consents (授权): what a holder allowed one entity to read, for one purpose,
//! until when and how many times.
//!
//! Requests name what they ask for in RFC 9396 `authorization_details` of type
//! `license_access`. They are checked against the entity's approved use list
//! and the policies before any holder is asked ([`check_request`]), and again
//! when the holder decides ([`grant`]), since either may have changed in the
//! meantime. A consent's state is its own: revoking a token leaves it,
//! revoking it ends every token derived from it (each use of a token checks it).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::app::Services;
use crate::audit::{ActorKind, AuditEvent, Outcome};
use crate::entities::DecisionRequest;
use crate::error::{Error, Result};
use crate::keys::{random_token, BROKER};
use crate::licenses::{effective_status, today, LicenseStatus};
use crate::oauth::{OAuthError, OAuthErrorCode};
use crate::policy::{Flow, PolicyAction, Scenario};
use crate::store::consent::ConsentRow;
use crate::store::{now, timestamp};

/// The `authorization_details` type licensegate understands.
pub const DETAILS_TYPE: &str = "license_access";
/// Longest consent: 12 months.
pub const MAX_CONSENT_DAYS: u32 = 365;
/// A single-use consent (no `duration_days`) lapses after a day if unused.
pub const SINGLE_USE_SECONDS: i64 = 86_400;
/// Most elements in one request.
const MAX_ELEMENTS: usize = 10;

/// One element of `authorization_details` as an entity asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LicenseAccess {
    /// Always `license_access`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Purpose code (事由) of an approved scenario; the same in every element.
    pub purpose: String,
    /// The license type code.
    pub license_type: String,
    /// One specific license (identifier); otherwise the holder's licenses of the type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier: Option<String>,
    /// Face fields asked for.
    pub fields: Vec<String>,
    /// Face fields the holder may leave out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub optional_fields: Vec<String>,
    /// How long the consent lasts, in days (at most 365 and the use list's
    /// limit); absent for a single-use consent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_days: Option<u32>,
    /// Most retrievals (at most the use list's limit); 1 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retrievals: Option<u32>,
}

/// What was granted for one license type: carried in tokens as `authorization_details`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GrantedAccess {
    /// Always `license_access`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Purpose code.
    pub purpose: String,
    /// License type code.
    pub license_type: String,
    /// Identifiers of the licenses covered (current versions at grant time).
    pub licenses: Vec<String>,
    /// Face fields that may be read.
    pub fields: Vec<String>,
}

/// The terms of a checked request, common to all its elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    /// Purpose code.
    pub purpose: String,
    /// Days, or none for single use.
    pub duration_days: Option<u32>,
    /// Retrieval budget.
    pub max_retrievals: u32,
    /// The elements.
    pub elements: Vec<LicenseAccess>,
}

fn bad_details(msg: impl Into<String>) -> OAuthError {
    OAuthError::new(OAuthErrorCode::InvalidAuthorizationDetails, msg)
}

/// Parses and checks the shape of `authorization_details` (RFC 9396 §2).
pub fn parse_details(raw: &str) -> Result<Terms, OAuthError> {
    let elements: Vec<Value> = serde_json::from_str(raw)
        .map_err(|e| bad_details(format!("authorization_details is not a JSON array: {e}")))?;
    if elements.is_empty() || elements.len() > MAX_ELEMENTS {
        return Err(bad_details(format!(
            "authorization_details must have 1 to {MAX_ELEMENTS} elements"
        )));
    }
    let mut parsed = Vec::with_capacity(elements.len());
    for (i, e) in elements.into_iter().enumerate() {
        if e.get("type").and_then(Value::as_str) != Some(DETAILS_TYPE) {
            return Err(bad_details(format!(
                "authorization_details[{i}]: type must be {DETAILS_TYPE}"
            )));
        }
        let a: LicenseAccess = serde_json::from_value(e)
            .map_err(|err| bad_details(format!("authorization_details[{i}]: {err}")))?;
        parsed.push(a);
    }
    let first = &parsed[0];
    let purpose = first.purpose.clone();
    let duration_days = first.duration_days;
    let max_retrievals = first.max_retrievals;
    let mut types = BTreeSet::new();
    for (i, a) in parsed.iter().enumerate() {
        let at = |m: &str| bad_details(format!("authorization_details[{i}]: {m}"));
        if a.purpose != purpose {
            return Err(at("every element must have the same purpose"));
        }
        if a.duration_days != duration_days || a.max_retrievals != max_retrievals {
            return Err(at(
                "duration_days and max_retrievals must be the same in every element",
            ));
        }
        if !types.insert((a.license_type.clone(), a.identifier.clone())) {
            return Err(at("the same license type is asked for twice"));
        }
        if a.fields.is_empty() {
            return Err(at("fields must name at least one face field"));
        }
        let mut seen = BTreeSet::new();
        if let Some(f) = a
            .fields
            .iter()
            .chain(&a.optional_fields)
            .find(|f| !seen.insert(f.as_str()))
        {
            return Err(at(&format!("field {f} is named twice")));
        }
    }
    match (duration_days, max_retrievals) {
        (Some(0), _) => return Err(bad_details("duration_days must be at least 1")),
        (Some(d), _) if d > MAX_CONSENT_DAYS => {
            return Err(bad_details(format!(
                "duration_days may not exceed {MAX_CONSENT_DAYS} (12 months)"
            )))
        }
        (_, Some(0)) => return Err(bad_details("max_retrievals must be at least 1")),
        (None, Some(n)) if n > 1 => {
            return Err(bad_details(
                "a single-use consent (no duration_days) allows one retrieval",
            ))
        }
        _ => {}
    }
    Ok(Terms {
        purpose,
        duration_days,
        max_retrievals: max_retrievals.unwrap_or(1),
        elements: parsed,
    })
}

/// Checks a request against the entity's approved use list and the policies,
/// before any holder is asked: every element, every field (optional ones
/// included), the flow, the duration and the budget. Refusals are audited
/// (by the decision function) and answered `invalid_authorization_details`.
pub async fn check_request(
    services: &Services,
    client_id: &str,
    terms: &Terms,
    flow: Flow,
) -> Result<(), OAuthError> {
    for a in &terms.elements {
        let fields: Vec<String> = a.fields.iter().chain(&a.optional_fields).cloned().collect();
        let decision = crate::entities::decide_for(
            services,
            &DecisionRequest {
                entity_id: client_id.to_owned(),
                action: PolicyAction::Request,
                license_type: a.license_type.clone(),
                license: None,
                purpose: terms.purpose.clone(),
                fields,
                flow: Some(flow),
            },
        )
        .await
        .map_err(|e| match e {
            Error::Invalid { detail, .. } => bad_details(detail),
            other => OAuthError::from(other),
        })?;
        if !decision.allowed {
            return Err(bad_details(format!(
                "outside the approved use list or the policies: {}",
                decision.reasons.join("; ")
            )));
        }
    }
    let (max_days, max_reads) = limits(services, client_id, terms).await?;
    let excess = match terms.duration_days {
        Some(d) if d > max_days => Some(format!(
            "duration_days {d} exceeds the use list's {max_days} for purpose {}",
            terms.purpose
        )),
        _ if terms.max_retrievals > max_reads => Some(format!(
            "max_retrievals {} exceeds the use list's {max_reads} for purpose {}",
            terms.max_retrievals, terms.purpose
        )),
        _ => None,
    };
    if let Some(why) = excess {
        services
            .audit
            .record(
                AuditEvent::new(
                    ActorKind::Entity,
                    client_id,
                    "access.denied",
                    Outcome::Refused,
                )
                .purpose(&terms.purpose)
                .reason(format!("request refused: {why}")),
            )
            .await?;
        return Err(bad_details(why));
    }
    Ok(())
}

/// The tightest limits of the approved scenarios covering the request.
async fn limits(services: &Services, client_id: &str, terms: &Terms) -> Result<(u32, u32)> {
    let scenarios: Vec<Scenario> = services
        .store
        .scenarios(client_id)
        .await?
        .into_iter()
        .filter(|s| s.status == "approved" && s.purpose == terms.purpose)
        .map(|s| serde_json::from_str::<Scenario>(&s.spec).map_err(Error::internal))
        .collect::<Result<_>>()?;
    let days = scenarios
        .iter()
        .map(|s| s.max_consent_days)
        .min()
        .unwrap_or(0)
        .min(MAX_CONSENT_DAYS);
    let reads = scenarios
        .iter()
        .map(|s| s.max_retrievals)
        .min()
        .unwrap_or(0);
    Ok((days, reads))
}

/// A license the holder may put under a consent.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Current identifier.
    pub identifier: String,
    /// Base id.
    pub license_id: String,
    /// Type code.
    pub license_type: String,
    /// Status now.
    pub status: LicenseStatus,
    /// Validity end.
    pub valid_until: Option<String>,
}

/// The holder's licenses each element would cover: the named one if it is
/// theirs, else all their licenses of the type; cancelled ones never.
pub async fn candidates(
    services: &Services,
    holder_id: &str,
    terms: &Terms,
) -> Result<Vec<Vec<Candidate>>> {
    let rows = services.library.holder_licenses(holder_id).await?;
    let today = today();
    Ok(terms
        .elements
        .iter()
        .map(|a| {
            let wanted = a
                .identifier
                .as_deref()
                .and_then(|i| crate::licenses::license_base(i).ok());
            rows.iter()
                .filter(|(l, _)| l.license_type == a.license_type)
                .filter(|(l, _)| wanted.as_deref().is_none_or(|w| w == l.id))
                .filter_map(|(l, identifier)| {
                    let status = effective_status(l, today);
                    (status != LicenseStatus::Cancelled).then(|| Candidate {
                        identifier: identifier.clone(),
                        license_id: l.id.clone(),
                        license_type: l.license_type.clone(),
                        status,
                        valid_until: l.valid_until.clone(),
                    })
                })
                .collect()
        })
        .collect())
}

/// What the holder decided on the consent page.
#[derive(Debug, Clone, Default)]
pub struct Choice {
    /// Optional fields the holder agreed to give, as `TYPE.field`.
    pub optional: BTreeSet<String>,
}

/// Records a holder's consent: re-checks the request (the use list or the
/// policies may have changed since it was made), resolves the licenses it
/// covers, stores it and audits `consent.granted`.
pub async fn grant(
    services: &Services,
    holder_id: &str,
    client_id: &str,
    terms: &Terms,
    choice: &Choice,
    flow: Flow,
) -> Result<ConsentRow, OAuthError> {
    check_request(services, client_id, terms, flow).await?;
    let found = candidates(services, holder_id, terms).await?;
    let mut granted = Vec::with_capacity(terms.elements.len());
    for (a, c) in terms.elements.iter().zip(found) {
        if c.is_empty() {
            return Err(OAuthError::new(
                OAuthErrorCode::AccessDenied,
                format!("the holder has no current {} license", a.license_type),
            ));
        }
        let mut fields = a.fields.clone();
        fields.extend(
            a.optional_fields
                .iter()
                .filter(|f| choice.optional.contains(&format!("{}.{f}", a.license_type)))
                .cloned(),
        );
        granted.push(GrantedAccess {
            kind: DETAILS_TYPE.into(),
            purpose: terms.purpose.clone(),
            license_type: a.license_type.clone(),
            licenses: c.into_iter().map(|c| c.identifier).collect(),
            fields,
        });
    }
    let row = new_consent(holder_id, client_id, terms, &granted, flow)?;
    services.store.insert_consent(&row).await?;
    // The receipt reaches the holder with the record (same commit).
    services
        .audit
        .record_guarded(
            vec![consent_event(&row, "consent.granted", &granted)],
            crate::audit::Guarded::notify(vec![
                crate::notify::consent_notification(services, &row, "consent.granted").await?,
            ]),
        )
        .await?;
    Ok(row)
}

/// A consent row for `granted`, starting now.
pub fn new_consent(
    holder_id: &str,
    client_id: &str,
    terms: &Terms,
    granted: &[GrantedAccess],
    flow: Flow,
) -> Result<ConsentRow> {
    let now_t = now();
    let at = timestamp(now_t);
    let expires_at = now_t.unix_timestamp()
        + terms
            .duration_days
            .map_or(SINGLE_USE_SECONDS, |d| i64::from(d) * 86_400);
    Ok(ConsentRow {
        id: format!("cns_{}", random_token(16)?),
        holder_id: holder_id.to_owned(),
        client_id: client_id.to_owned(),
        purpose: terms.purpose.clone(),
        flow: flow_name(flow).to_owned(),
        details: serde_json::to_string(granted).map_err(Error::internal)?,
        max_retrievals: i64::from(terms.max_retrievals),
        retrievals: 0,
        status: "active".into(),
        status_reason: None,
        expires_at,
        created_at: at.clone(),
        updated_at: at,
    })
}

/// The audit record of a consent step.
pub fn consent_event(row: &ConsentRow, action: &str, granted: &[GrantedAccess]) -> AuditEvent {
    let mut e = AuditEvent::new(ActorKind::Holder, &row.holder_id, action, Outcome::Success)
        .holder(&row.holder_id)
        .purpose(&row.purpose)
        .reason(format!(
            "entity={} flow={} {}",
            row.client_id,
            row.flow,
            granted
                .iter()
                .map(|g| format!("{}[{}]", g.license_type, g.fields.join(",")))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    e.consent = Some(row.id.clone());
    if let Some(g) = granted.first() {
        e.license_type = Some(g.license_type.clone());
        if granted.len() == 1 && g.licenses.len() == 1 {
            e.license = Some(g.licenses[0].clone());
        }
    }
    e
}

/// The wire name of a flow.
pub fn flow_name(flow: Flow) -> &'static str {
    match flow {
        Flow::Redirect => "redirect",
        Flow::Decoupled => "decoupled",
        Flow::ShowLicense => "show_license",
        Flow::Verify => "verify",
    }
}

/// A consent as holders and entities see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConsentView {
    /// Consent id (the grant id of FAPI Grant Management).
    pub id: String,
    /// The entity's client id.
    pub entity: String,
    /// Purpose code.
    pub purpose: String,
    /// How it was given.
    pub flow: String,
    /// What it covers.
    pub authorization_details: Vec<GrantedAccess>,
    /// active, revoked, expired or used_up.
    pub status: String,
    /// Why it ended, when revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// Retrieval budget.
    pub max_retrievals: i64,
    /// Retrievals made.
    pub retrievals: i64,
    /// Granted at (RFC 3339).
    pub created_at: String,
    /// Expires at (RFC 3339).
    pub expires_at: String,
}

/// The status of a consent now: expiry and budget are facts of the clock and
/// the counter, not stored transitions.
pub fn effective_consent_status(c: &ConsentRow, now_unix: i64) -> &'static str {
    match c.status.as_str() {
        "revoked" => "revoked",
        _ if c.expires_at <= now_unix => "expired",
        _ if c.retrievals >= c.max_retrievals => "used_up",
        _ => "active",
    }
}

impl ConsentView {
    /// The view of a stored consent.
    pub fn of(c: &ConsentRow) -> Result<Self> {
        let now_unix = now().unix_timestamp();
        Ok(ConsentView {
            id: c.id.clone(),
            entity: c.client_id.clone(),
            purpose: c.purpose.clone(),
            flow: c.flow.clone(),
            authorization_details: serde_json::from_str(&c.details).map_err(Error::internal)?,
            status: effective_consent_status(c, now_unix).to_owned(),
            status_reason: c.status_reason.clone(),
            max_retrievals: c.max_retrievals,
            retrievals: c.retrievals,
            created_at: c.created_at.clone(),
            expires_at: unix_to_rfc3339(c.expires_at),
        })
    }
}

/// RFC 3339 of unix seconds.
pub fn unix_to_rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .map(timestamp)
        .unwrap_or_default()
}

/// Revokes a consent, by its holder or its entity; every token derived from
/// it stops working on its next use. Idempotent for a consent already ended.
pub async fn revoke(
    services: &Services,
    consent_id: &str,
    by: ActorKind,
    by_id: &str,
    reason: &str,
) -> Result<ConsentRow> {
    let c = services
        .store
        .consent(consent_id)
        .await?
        .ok_or_else(|| Error::NotFound("no such consent".into()))?;
    let owner = match by {
        ActorKind::Holder => c.holder_id == by_id,
        ActorKind::Entity => c.client_id == by_id,
        ActorKind::System => true,
        _ => false,
    };
    if !owner {
        return Err(Error::NotFound("no such consent".into()));
    }
    // The revocation commits with its record and the holder's notice, or not
    // at all; revoking an ended consent changes nothing and records nothing.
    let mut e = AuditEvent::new(by, by_id, "consent.revoked", Outcome::Success)
        .holder(&c.holder_id)
        .purpose(&c.purpose)
        .reason(format!("entity={} {reason}", c.client_id));
    e.consent = Some(c.id.clone());
    let mut revoked = c.clone();
    revoked.status = "revoked".into();
    revoked.status_reason = Some(reason.to_owned());
    services
        .audit
        .record_guarded(
            vec![e],
            crate::audit::Guarded {
                notifications: vec![
                    crate::notify::consent_notification(services, &revoked, "consent.revoked")
                        .await?,
                ],
                ..crate::audit::Guarded::new(crate::audit::Guard::Changes(
                    crate::store::Store::revoke_consent_statement(
                        consent_id,
                        reason,
                        &timestamp(now()),
                    ),
                ))
            },
        )
        .await?;
    services
        .store
        .consent(consent_id)
        .await?
        .ok_or_else(|| Error::internal("a consent vanished"))
}

/// The holder's signed consent receipt (a JWS by the broker): who may read
/// what, why, until when, how many times, and how to withdraw.
pub async fn receipt(services: &Services, c: &ConsentRow) -> Result<String> {
    let entity = services.store.entity(&c.client_id).await?;
    let view = ConsentView::of(c)?;
    let base = services.config.public_url.trim_end_matches('/');
    let claims = json!({
        "iss": base,
        "sub": c.holder_id,
        "jti": c.id,
        "iat": now().unix_timestamp(),
        "consent": view,
        "entity": entity.map(|e| json!({
            "id": e.id, "name": e.name, "sector": e.sector, "uscc": e.uscc, "filing_no": e.filing_no,
        })),
        "withdraw": format!("{base}/holder/consents"),
    });
    services
        .keys
        .active(BROKER)
        .await?
        .sign_jws("consent-receipt+jwt", &claims)
}
