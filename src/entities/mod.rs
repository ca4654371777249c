//! Social entities (社会化用证主体): applications, approval with a filing
//! number (备案), rejection, suspension, credentials, their use lists
//! (用证清单), and the decision service every later call goes through.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::app::Services;
use crate::audit::{Actor, ActorKind, AuditEvent, Outcome};
use crate::error::{Error, FieldError, Result};
use crate::licenses::identifier::is_valid_uscc;
use crate::licenses::{effective_status, license_base, today};
use crate::oauth::client_auth::{validate_jwks, CreatedClient, NewClient};
use crate::oauth::{ClientStatus, Role};
use crate::policy::{
    decide, Decision, EntityFacts, Flow, PolicyAction, Question, Resource, Scenario,
};
use crate::store::entities::{EntityRow, ScenarioRow};
use crate::store::{now, timestamp};

/// Sectors an entity may belong to.
pub const SECTORS: &[&str] = &[
    "bank",
    "insurer",
    "logistics",
    "hospital",
    "telecom",
    "other",
];

/// An entity's application.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Application {
    /// Registered name.
    pub name: String,
    /// Unified social credit code.
    pub uscc: String,
    /// One of bank, insurer, logistics, hospital, telecom, other.
    pub sector: String,
    /// Contact person and means.
    pub contact: String,
    /// Redirect URIs for the consent flow: https, or http on loopback.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Public keys for private_key_jwt (then no secret is issued).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub jwks: Option<Value>,
    /// Where its keys are published (https, or http on loopback); fetched on
    /// approval and again when an assertion names a key not seen yet.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Whether its access tokens must be sender-constrained with DPoP
    /// (RFC 9449 client metadata `dpop_bound_access_tokens`).
    #[serde(default)]
    pub dpop_bound_access_tokens: bool,
    /// The scenarios it asks to be approved.
    pub scenarios: Vec<Scenario>,
}

/// A scenario with its approval status.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ScenarioView {
    /// The scenario.
    #[serde(flatten)]
    pub scenario: Scenario,
    /// pending, approved or withdrawn.
    pub status: String,
}

/// An entity as operators see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EntityView {
    /// Entity id; once approved, also its OAuth client_id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Unified social credit code.
    pub uscc: String,
    /// Sector.
    pub sector: String,
    /// Contact.
    pub contact: String,
    /// Redirect URIs.
    pub redirect_uris: Vec<String>,
    /// Whether it authenticates with private_key_jwt.
    pub has_jwks: bool,
    /// Its JWKS URI.
    pub jwks_uri: Option<String>,
    /// Whether its tokens must be DPoP-bound.
    pub dpop_bound_access_tokens: bool,
    /// pending, approved, rejected or suspended.
    pub status: String,
    /// Filing number (备案号).
    pub filing_no: Option<String>,
    /// Reason of the last rejection, suspension or reinstatement.
    pub reason: Option<String>,
    /// Scenarios.
    pub scenarios: Vec<ScenarioView>,
    /// Applied at.
    pub created_at: String,
    /// Last changed at.
    pub updated_at: String,
}

/// An approval: the entity and its credentials, shown once.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Approval {
    /// The entity.
    pub entity: EntityView,
    /// Its OAuth client credentials.
    pub credentials: CreatedClient,
}

/// An operator's decision on an entity.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    /// Filing number (approval only).
    #[serde(default)]
    pub filing_no: Option<String>,
    /// Reason (required to reject, suspend or reinstate).
    #[serde(default)]
    pub reason: Option<String>,
}

fn valid_redirect_uri(uri: &str) -> bool {
    crate::oauth::client_auth::is_https_or_loopback(uri)
        && !uri.contains('#')
        && !uri.contains(char::is_whitespace)
}

fn valid_purpose(p: &str) -> bool {
    (1..=64).contains(&p.len())
        && p.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

/// Checks scenarios against the catalog; returns every problem at once.
pub async fn check_scenarios(
    services: &Services,
    scenarios: &[Scenario],
    at: &str,
) -> Result<Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for (i, s) in scenarios.iter().enumerate() {
        let f = |what: &str| format!("{at}[{i}].{what}");
        if !valid_purpose(&s.purpose) {
            errors.push(FieldError::new(
                f("purpose"),
                "must be 1-64 characters of a-z, 0-9 and _",
            ));
        }
        if !seen.insert(s.purpose.as_str()) {
            errors.push(FieldError::new(f("purpose"), "appears twice"));
        }
        if s.description.trim().is_empty() {
            errors.push(FieldError::new(f("description"), "must not be empty"));
        }
        if s.license_types.is_empty() {
            errors.push(FieldError::new(
                f("license_types"),
                "must name at least one license type",
            ));
        }
        for t in &s.license_types {
            match services.store.license_type(t).await? {
                None => errors.push(FieldError::new(
                    f("license_types"),
                    format!("no license type {t}"),
                )),
                Some(ty) => match s.fields.get(t) {
                    None => errors.push(FieldError::new(
                        f("fields"),
                        format!("no fields listed for {t}"),
                    )),
                    Some(fields) => {
                        for field in fields.iter().filter(|k| ty.spec.field(k).is_none()) {
                            errors.push(FieldError::new(
                                f("fields"),
                                format!("{field} is not a face field of {t}"),
                            ));
                        }
                    }
                },
            }
        }
        for t in s.fields.keys().filter(|t| !s.license_types.contains(t)) {
            errors.push(FieldError::new(
                f("fields"),
                format!("{t} is not among the scenario's license types"),
            ));
        }
        if !(1..=365).contains(&s.max_consent_days) {
            errors.push(FieldError::new(f("max_consent_days"), "must be 1-365"));
        }
        if !(1..=1000).contains(&s.max_retrievals) {
            errors.push(FieldError::new(f("max_retrievals"), "must be 1-1000"));
        }
        if s.flows.is_empty() {
            errors.push(FieldError::new(f("flows"), "must name at least one flow"));
        }
    }
    Ok(errors)
}

fn invalid(detail: &str, errors: Vec<FieldError>) -> Result<()> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid {
            detail: format!("{detail} has {} problem(s)", errors.len()),
            errors,
        })
    }
}

/// Files an application (status pending); returns the entity.
pub async fn apply(services: &Services, app: Application) -> Result<EntityView> {
    let mut errors = Vec::new();
    if app.name.trim().is_empty() || app.name.chars().count() > 200 {
        errors.push(FieldError::new("name", "must be 1-200 characters"));
    }
    if !is_valid_uscc(&app.uscc) {
        errors.push(FieldError::new(
            "uscc",
            "must be a unified social credit code with a valid check character",
        ));
    }
    if !SECTORS.contains(&app.sector.as_str()) {
        errors.push(FieldError::new(
            "sector",
            format!("must be one of {}", SECTORS.join(", ")),
        ));
    }
    if app.contact.trim().is_empty() || app.contact.len() > 500 {
        errors.push(FieldError::new("contact", "must be 1-500 characters"));
    }
    for (i, uri) in app.redirect_uris.iter().enumerate() {
        if !valid_redirect_uri(uri) {
            errors.push(FieldError::new(
                format!("redirect_uris[{i}]"),
                "must be https (or http on loopback) without a fragment",
            ));
        }
    }
    if let Some(uri) = &app.jwks_uri {
        if !crate::oauth::client_auth::valid_jwks_uri(uri) {
            errors.push(FieldError::new(
                "jwks_uri",
                "must be https (or http on loopback)",
            ));
        }
        if app.jwks.is_some() {
            errors.push(FieldError::new(
                "jwks_uri",
                "give jwks or jwks_uri, not both",
            ));
        }
    }
    let jwks = match app.jwks.as_ref().map(validate_jwks).transpose() {
        Ok(j) => j,
        Err(Error::Invalid { errors: e, .. }) => {
            errors.extend(e);
            None
        }
        Err(e) => return Err(e),
    };
    if app.scenarios.is_empty() {
        errors.push(FieldError::new(
            "scenarios",
            "an application names at least one scenario",
        ));
    }
    errors.extend(check_scenarios(services, &app.scenarios, "scenarios").await?);
    invalid("the application", errors)?;
    let at = timestamp(now());
    let row = EntityRow {
        id: format!("ent_{}", crate::keys::random_token(12)?),
        name: app.name.trim().to_owned(),
        uscc: app.uscc.clone(),
        sector: app.sector.clone(),
        contact: app.contact.trim().to_owned(),
        redirect_uris: serde_json::to_string(&app.redirect_uris).map_err(Error::internal)?,
        jwks,
        jwks_uri: app.jwks_uri.clone(),
        dpop_bound: app.dpop_bound_access_tokens,
        status: "pending".into(),
        filing_no: None,
        reason: None,
        created_at: at.clone(),
        updated_at: at,
    };
    let scenarios = app
        .scenarios
        .iter()
        .map(|s| {
            Ok((
                s.purpose.clone(),
                serde_json::to_string(s).map_err(Error::internal)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    services
        .store
        .insert_entity(&row, &scenarios)
        .await
        .map_err(|e| {
            if e.is_unique_violation() {
                Error::Conflict(format!(
                    "an entity with unified social credit code {} has already applied",
                    app.uscc
                ))
            } else {
                e
            }
        })?;
    services
        .audit
        .record(
            AuditEvent::new(
                ActorKind::Entity,
                row.id.clone(),
                "entity.applied",
                Outcome::Success,
            )
            .reason(format!("{} ({}, {})", row.name, row.uscc, row.sector)),
        )
        .await?;
    view(services, &row.id).await
}

/// An entity with its scenarios.
pub async fn view(services: &Services, id: &str) -> Result<EntityView> {
    let e = services
        .store
        .entity(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no entity {id}")))?;
    let scenarios = services
        .store
        .scenarios(id)
        .await?
        .into_iter()
        .map(|s| {
            Ok(ScenarioView {
                scenario: serde_json::from_str(&s.spec).map_err(Error::internal)?,
                status: s.status,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(EntityView {
        redirect_uris: serde_json::from_str(&e.redirect_uris).map_err(Error::internal)?,
        has_jwks: e.jwks.is_some(),
        id: e.id,
        name: e.name,
        uscc: e.uscc,
        sector: e.sector,
        contact: e.contact,
        jwks_uri: e.jwks_uri,
        dpop_bound_access_tokens: e.dpop_bound,
        status: e.status,
        filing_no: e.filing_no,
        reason: e.reason,
        scenarios,
        created_at: e.created_at,
        updated_at: e.updated_at,
    })
}

/// All entities, optionally of one status.
pub async fn list(services: &Services, status: Option<&str>) -> Result<Vec<EntityView>> {
    let mut out = Vec::new();
    for e in services.store.entities(status).await? {
        out.push(view(services, &e.id).await?);
    }
    Ok(out)
}

fn required_reason(v: &Verdict) -> Result<&str> {
    match v.reason.as_deref().map(str::trim) {
        Some(r) if !r.is_empty() && r.len() <= 1000 => Ok(r),
        _ => Err(Error::invalid_field("reason", "must be 1-1000 characters")),
    }
}

/// Approves a pending entity with its filing number: its pending scenarios
/// become approved and it gets OAuth client credentials (shown once).
pub async fn approve(services: &Services, actor: &Actor, id: &str, v: Verdict) -> Result<Approval> {
    let filing = match v.filing_no.as_deref().map(str::trim) {
        Some(f) if !f.is_empty() && f.len() <= 100 => f.to_owned(),
        _ => {
            return Err(Error::invalid_field(
                "filing_no",
                "an approval records the filing number (备案号)",
            ))
        }
    };
    let e = services
        .store
        .entity(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no entity {id}")))?;
    if e.status != "pending" {
        return Err(Error::Conflict(format!(
            "entity {id} is {}, not pending",
            e.status
        )));
    }
    // Fetch published keys before changing anything, so a dead JWKS URI leaves the application pending.
    let jwks = match (&e.jwks, &e.jwks_uri) {
        (Some(j), _) => Some(j.clone()),
        (None, Some(uri)) => Some(services.clients.fetch_jwks(uri).await?),
        (None, None) => None,
    };
    let at = timestamp(now());
    if !services
        .store
        .set_entity_status(
            id,
            &["pending"],
            "approved",
            Some(&filing),
            v.reason.as_deref(),
            &at,
        )
        .await?
    {
        return Err(Error::Conflict(format!("entity {id} is no longer pending")));
    }
    services
        .store
        .set_scenario_status(id, None, "pending", "approved", &at)
        .await?;
    let credentials = services
        .clients
        .create_with_id(
            actor,
            e.id.clone(),
            NewClient {
                name: e.name.clone(),
                role: Role::Entity,
                issuer_id: None,
                jwks: jwks
                    .as_deref()
                    .map(serde_json::from_str)
                    .transpose()
                    .map_err(Error::internal)?,
                jwks_uri: e.jwks_uri.clone(),
            },
        )
        .await?;
    services
        .audit
        .record(
            actor
                .event("entity.approved", Outcome::Success)
                .reason(format!("{id} filing {filing}")),
        )
        .await?;
    Ok(Approval {
        entity: view(services, id).await?,
        credentials,
    })
}

/// Rejects a pending entity with a reason.
pub async fn reject(
    services: &Services,
    actor: &Actor,
    id: &str,
    v: Verdict,
) -> Result<EntityView> {
    let reason = required_reason(&v)?;
    transition(
        services,
        actor,
        id,
        &["pending"],
        "rejected",
        reason,
        "entity.rejected",
    )
    .await
}

/// Suspends an approved entity: every token it holds fails on its next call.
pub async fn suspend(
    services: &Services,
    actor: &Actor,
    id: &str,
    v: Verdict,
) -> Result<EntityView> {
    let reason = required_reason(&v)?;
    let e = services
        .store
        .entity(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no entity {id}")))?;
    if e.status != "approved" {
        return Err(Error::Conflict(format!("entity {id} is {}", e.status)));
    }
    // The client first: if the process stops between the two writes, the
    // entity is locked out (fails closed) rather than suspended on paper only.
    services
        .store
        .set_client_status(id, ClientStatus::Suspended.as_str(), &timestamp(now()))
        .await?;
    services.clients.forget(id);
    transition(
        services,
        actor,
        id,
        &["approved"],
        "suspended",
        reason,
        "entity.suspended",
    )
    .await
}

/// Reinstates a suspended entity.
pub async fn reinstate(
    services: &Services,
    actor: &Actor,
    id: &str,
    v: Verdict,
) -> Result<EntityView> {
    let reason = required_reason(&v)?;
    let view = transition(
        services,
        actor,
        id,
        &["suspended"],
        "approved",
        reason,
        "entity.reinstated",
    )
    .await?;
    // The client last, for the same reason: a stop in between fails closed.
    services
        .store
        .set_client_status(id, ClientStatus::Active.as_str(), &timestamp(now()))
        .await?;
    services.clients.forget(id);
    Ok(view)
}

#[allow(clippy::too_many_arguments)] // private helper shared by the three transitions
async fn transition(
    services: &Services,
    actor: &Actor,
    id: &str,
    from: &[&str],
    to: &str,
    reason: &str,
    action: &str,
) -> Result<EntityView> {
    let e = services
        .store
        .entity(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no entity {id}")))?;
    if !services
        .store
        .set_entity_status(id, from, to, None, Some(reason), &timestamp(now()))
        .await?
    {
        return Err(Error::Conflict(format!("entity {id} is {}", e.status)));
    }
    services
        .audit
        .record(
            actor
                .event(action, Outcome::Success)
                .reason(format!("{id}: {reason}")),
        )
        .await?;
    view(services, id).await
}

/// Creates or changes a scenario; an operator's change is approved at once.
pub async fn put_scenario(
    services: &Services,
    actor: &Actor,
    id: &str,
    purpose: &str,
    s: Scenario,
) -> Result<EntityView> {
    if s.purpose != purpose {
        return Err(Error::invalid_field(
            "purpose",
            "does not match the purpose in the path",
        ));
    }
    if services.store.entity(id).await?.is_none() {
        return Err(Error::NotFound(format!("no entity {id}")));
    }
    invalid(
        "the scenario",
        check_scenarios(services, std::slice::from_ref(&s), "scenario").await?,
    )?;
    let spec = serde_json::to_string(&s).map_err(Error::internal)?;
    services
        .store
        .put_scenario(id, purpose, &spec, "approved", &timestamp(now()))
        .await?;
    services
        .audit
        .record(
            actor
                .event("scenario.approved", Outcome::Success)
                .purpose(purpose)
                .reason(format!("{id}: {spec}")),
        )
        .await?;
    view(services, id).await
}

/// Approves a pending scenario, or withdraws an approved one; effective at once.
pub async fn set_scenario(
    services: &Services,
    actor: &Actor,
    id: &str,
    purpose: &str,
    approve: bool,
) -> Result<EntityView> {
    let (from, to, action) = if approve {
        ("pending", "approved", "scenario.approved")
    } else {
        ("approved", "withdrawn", "scenario.withdrawn")
    };
    if services
        .store
        .set_scenario_status(id, Some(purpose), from, to, &timestamp(now()))
        .await?
        == 0
    {
        return Err(Error::Conflict(format!(
            "entity {id} has no {from} scenario {purpose}"
        )));
    }
    services
        .audit
        .record(
            actor
                .event(action, Outcome::Success)
                .purpose(purpose)
                .reason(id.to_owned()),
        )
        .await?;
    view(services, id).await
}

/// A decision question as asked over the API.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    /// The entity.
    pub entity_id: String,
    /// request, retrieve or verify.
    pub action: PolicyAction,
    /// License type code.
    pub license_type: String,
    /// A license identifier (retrieve and verify).
    #[serde(default)]
    pub license: Option<String>,
    /// Purpose code.
    pub purpose: String,
    /// Face fields.
    pub fields: Vec<String>,
    /// Flow.
    #[serde(default)]
    pub flow: Option<Flow>,
}

/// Decides with the entity's current status, approved scenarios, the catalog,
/// the license's current status and the policies in force; audits refusals.
pub async fn decide_for(services: &Services, r: &DecisionRequest) -> Result<Decision> {
    let ty = services
        .store
        .license_type(&r.license_type)
        .await?
        .ok_or_else(|| {
            Error::invalid_field(
                "license_type",
                format!("no license type {}", r.license_type),
            )
        })?;
    let resource = match (&r.license, r.action) {
        (None, PolicyAction::Request) => Resource::LicenseType,
        (None, _) => {
            return Err(Error::invalid_field(
                "license",
                "retrieve and verify are about one license",
            ))
        }
        (Some(id), _) => {
            let l = services.store.license(&license_base(id)?).await?;
            match l {
                Some(l) if l.license_type == ty.spec.code => Resource::License {
                    id: id.clone(),
                    status: effective_status(&l, today()).as_str().to_owned(),
                },
                _ => {
                    return Err(Error::NotFound(format!(
                        "no license {id} of type {}",
                        ty.spec.code
                    )))
                }
            }
        }
    };
    decide_about(services, r, &ty.spec, resource).await
}

/// The decision once the license type and the resource (with the license's
/// status now) are known; reads the entity and its scenarios in one query.
pub async fn decide_about(
    services: &Services,
    r: &DecisionRequest,
    license_type: &crate::licenses::catalog::LicenseTypeSpec,
    resource: Resource,
) -> Result<Decision> {
    let found = services.store.entity_with_scenarios(&r.entity_id).await?;
    decide_with(services, found.as_ref(), r, license_type, resource).await
}

/// [`decide_about`] with the entity and its scenarios already read (by a
/// resource call, as of its change generations).
pub async fn decide_with(
    services: &Services,
    found: Option<&(EntityRow, Vec<ScenarioRow>)>,
    r: &DecisionRequest,
    license_type: &crate::licenses::catalog::LicenseTypeSpec,
    resource: Resource,
) -> Result<Decision> {
    let decision = match found {
        None => Decision {
            allowed: false,
            reasons: vec![format!("entity: {} is not registered", r.entity_id)],
        },
        Some((e, _)) if e.status == "pending" || e.status == "rejected" => Decision {
            allowed: false,
            reasons: vec![format!("entity: {} is {}, not approved", e.id, e.status)],
        },
        Some((e, scenarios)) => {
            let scenarios = scenarios
                .iter()
                .filter(|s| s.status == "approved")
                .map(|s| serde_json::from_str::<Scenario>(&s.spec).map_err(Error::internal))
                .collect::<Result<Vec<_>>>()?;
            let facts = EntityFacts {
                id: e.id.clone(),
                sector: e.sector.clone(),
                status: if e.status == "approved" {
                    "active".into()
                } else {
                    e.status.clone()
                },
            };
            let engine = services.policies.current();
            decide(
                &engine,
                &scenarios,
                &Question {
                    entity: &facts,
                    action: r.action,
                    license_type,
                    resource,
                    purpose: &r.purpose,
                    fields: &r.fields,
                    flow: r.flow,
                },
            )
        }
    };
    if !decision.allowed {
        let mut event = AuditEvent::new(
            ActorKind::Entity,
            r.entity_id.clone(),
            "access.denied",
            Outcome::Refused,
        )
        .license_type(&r.license_type)
        .purpose(&r.purpose)
        .reason(format!(
            "{} refused: {}",
            r.action.as_str(),
            decision.reasons.join("; ")
        ));
        event.license = r.license.clone();
        services.audit.record(event).await?;
    }
    Ok(decision)
}
