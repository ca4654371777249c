//! How a holder's consent is asked for and given.
//!
//! ```text
//! Redirect (RFC 9126 PAR + RFC 6749 code + RFC 7636 PKCE + RFC 9396 RAR):
//!   entity --POST /par (client auth, authorization_details, S256 challenge)--> broker: request_uri (90 s)
//!   holder's browser --GET /authorize?client_id&request_uri--> login, consent page (request opened, 10 min)
//!   holder --POST /authorize/decision (CSRF)--> 303 redirect_uri?code&state&iss  (code: 60 s, single use)
//!   entity --POST /token grant_type=authorization_code (client auth, code_verifier[, DPoP])--> tokens
//! Decoupled (OpenID CIBA, poll mode):
//!   entity --POST /bc-authorize (client auth, login_hint, binding_message, authorization_details)--> auth_req_id
//!   holder sees it on /holder/requests, approves or refuses
//!   entity --POST /token grant_type=urn:openid:params:grant-type:ciba--> pending / slow_down / tokens
//! Show a license (亮证):
//!   holder --POST /holder/show--> one-time code + QR payload (5 min)
//!   entity --POST /token grant_type=urn:licensegate:params:oauth:grant-type:show-code (code, purpose)--> token, one retrieval
//! ```
//!
//! Every request is checked against the entity's use list and the policies
//! when it is made and again when the holder decides. Errors found before
//! the redirect URI is known to be the client's are shown to the holder,
//! never redirected.

use std::collections::HashMap;

use serde::Serialize;
use utoipa::ToSchema;

use super::{OAuthError, OAuthErrorCode, Role};
use crate::app::Services;
use crate::audit::{ActorKind, AuditEvent, Outcome};
use crate::consent::{self, Candidate, Choice, Terms};
use crate::error::{Error, Result};
use crate::keys::{random_token, sha256};
use crate::licenses::catalog::LicenseType;
use crate::licenses::{effective_status, today, LicenseStatus};
use crate::policy::Flow;
use crate::store::consent::{AuthRequestRow, CodeRow, ShowCodeRow};
use crate::store::entities::EntityRow;
use crate::store::{now, timestamp, unix_millis};

/// Prefix of request URIs (RFC 9126 §2.2).
pub const REQUEST_URI_PREFIX: &str = "urn:ietf:params:oauth:request_uri:";
/// Lifetime of a pushed request until the holder's browser arrives.
pub const PAR_LIFETIME: i64 = 90;
/// Time the holder has to log in and decide once the browser arrived.
pub const OPENED_LIFETIME: i64 = 600;
/// Lifetime of an authorization code.
pub const CODE_LIFETIME: i64 = 60;
/// Default and longest lifetime of a backchannel request.
pub const CIBA_LIFETIME: i64 = 300;
/// Lifetime of a show-a-license code.
pub const SHOW_CODE_LIFETIME: i64 = 300;
/// Longest binding message, in characters.
const MAX_BINDING_MESSAGE: usize = 64;

/// The answer to a pushed authorization request.
#[derive(Debug, Serialize, ToSchema)]
pub struct Pushed {
    /// Where the holder's browser is sent: `/authorize?client_id=…&request_uri=…`.
    pub request_uri: String,
    /// Seconds until it expires.
    pub expires_in: i64,
}

/// The answer to a backchannel authentication request.
#[derive(Debug, Serialize, ToSchema)]
pub struct Backchannel {
    /// The handle to poll `/token` with.
    pub auth_req_id: String,
    /// Seconds until it expires.
    pub expires_in: i64,
    /// Seconds to wait between polls.
    pub interval: i64,
}

fn invalid(msg: impl Into<String>) -> OAuthError {
    OAuthError::new(OAuthErrorCode::InvalidRequest, msg)
}

/// Authenticates an active entity client at PAR or `/bc-authorize`.
async fn entity_client(
    services: &Services,
    authorization: Option<&str>,
    params: &HashMap<String, String>,
) -> Result<super::Client, OAuthError> {
    let client = services
        .clients
        .authenticate_active(authorization, params)
        .await?;
    if client.role != Role::Entity {
        return Err(OAuthError::new(
            OAuthErrorCode::UnauthorizedClient,
            "only entities ask holders for consent",
        ));
    }
    Ok(client)
}

/// Checks and parses `authorization_details`, then the use list and policies.
async fn checked_terms(
    services: &Services,
    client_id: &str,
    params: &HashMap<String, String>,
    flow: Flow,
) -> Result<Terms, OAuthError> {
    if params.get("scope").is_some_and(|s| !s.trim().is_empty()) {
        return Err(OAuthError::new(
            OAuthErrorCode::InvalidScope,
            "licenses are asked for with authorization_details (type license_access), not scope",
        ));
    }
    for p in ["request", "request_uri"] {
        if params.contains_key(p) {
            return Err(invalid(format!("{p} is not accepted here")));
        }
    }
    let raw = params
        .get("authorization_details")
        .ok_or_else(|| invalid("authorization_details is required"))?;
    let terms = consent::parse_details(raw)?;
    consent::check_request(services, client_id, &terms, flow).await?;
    Ok(terms)
}

fn new_handle() -> Result<(String, Vec<u8>)> {
    let handle = random_token(32)?;
    let digest = sha256(&handle).to_vec();
    Ok((handle, digest))
}

/// Pushed authorization request (RFC 9126).
pub async fn push(
    services: &Services,
    authorization: Option<&str>,
    params: &HashMap<String, String>,
) -> Result<Pushed, OAuthError> {
    let client = entity_client(services, authorization, params).await?;
    if params.get("response_type").map(String::as_str) != Some("code") {
        return Err(invalid("response_type must be code"));
    }
    let entity = services
        .store
        .entity(&client.client_id)
        .await?
        .ok_or_else(|| invalid("the client is not a registered entity"))?;
    let redirect_uri = params
        .get("redirect_uri")
        .ok_or_else(|| invalid("redirect_uri is required"))?;
    let registered: Vec<String> =
        serde_json::from_str(&entity.redirect_uris).map_err(Error::internal)?;
    if !registered.iter().any(|r| r == redirect_uri) {
        return Err(invalid(
            "redirect_uri is not exactly one of the client's registered redirect URIs",
        ));
    }
    match params.get("code_challenge_method").map(String::as_str) {
        Some("S256") => {}
        Some(other) => {
            return Err(invalid(format!(
                "code_challenge_method {other} is not supported; use S256"
            )))
        }
        None => return Err(invalid("PKCE is required: code_challenge_method=S256")),
    }
    let challenge = params
        .get("code_challenge")
        .filter(|c| {
            c.len() == 43
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .ok_or_else(|| invalid("code_challenge must be a base64url SHA-256 (43 characters)"))?;
    let state = params.get("state");
    if state.is_some_and(|s| s.len() > 512) {
        return Err(invalid("state is longer than 512 characters"));
    }
    let terms = checked_terms(services, &client.client_id, params, Flow::Redirect).await?;
    let (handle, digest) = new_handle()?;
    let t = now();
    let row = AuthRequestRow {
        digest,
        kind: "par".into(),
        client_id: client.client_id.clone(),
        redirect_uri: Some(redirect_uri.clone()),
        state: state.cloned(),
        code_challenge: Some(challenge.clone()),
        details: serde_json::to_string(&terms.elements).map_err(Error::internal)?,
        holder_id: None,
        binding_message: None,
        status: "pushed".into(),
        consent_id: None,
        public_id: random_token(12)?,
        poll_interval: 0,
        next_poll_at: 0,
        expires_at: t.unix_timestamp() + PAR_LIFETIME,
        created_at: timestamp(t),
    };
    services.store.insert_auth_request(&row).await?;
    services
        .audit
        .record(
            AuditEvent::new(
                ActorKind::Entity,
                &client.client_id,
                "authorization.pushed",
                Outcome::Success,
            )
            .purpose(&terms.purpose)
            .reason(format!("redirect flow, request {}", row.public_id)),
        )
        .await?;
    Ok(Pushed {
        request_uri: format!("{REQUEST_URI_PREFIX}{handle}"),
        expires_in: PAR_LIFETIME,
    })
}

/// Everything the consent page shows.
#[derive(Debug, Clone)]
pub struct ConsentPrompt {
    /// The request.
    pub request: AuthRequestRow,
    /// What it asks for.
    pub terms: Terms,
    /// The entity asking.
    pub entity: EntityRow,
    /// The purpose in words (from the approved scenario).
    pub purpose_text: String,
    /// Per element, the catalog entry.
    pub types: Vec<LicenseType>,
    /// Per element, the holder's licenses it would cover.
    pub candidates: Vec<Vec<Candidate>>,
}

/// Builds what the holder is shown about a request.
pub async fn prompt(
    services: &Services,
    request: AuthRequestRow,
    holder_id: &str,
) -> Result<ConsentPrompt> {
    let elements: Vec<consent::LicenseAccess> =
        serde_json::from_str(&request.details).map_err(Error::internal)?;
    let terms =
        consent::parse_details(&request.details).map_err(|e| Error::internal(e.description))?;
    let entity = services
        .store
        .entity(&request.client_id)
        .await?
        .ok_or_else(|| Error::internal("the requesting entity vanished"))?;
    let mut types = Vec::with_capacity(elements.len());
    for a in &elements {
        types.push(services.library.license_type(&a.license_type).await?);
    }
    let purpose_text = services
        .store
        .scenarios(&entity.id)
        .await?
        .into_iter()
        .find(|s| s.purpose == terms.purpose)
        .and_then(|s| serde_json::from_str::<crate::policy::Scenario>(&s.spec).ok())
        .map(|s| s.description)
        .unwrap_or_else(|| terms.purpose.clone());
    let candidates = consent::candidates(services, holder_id, &terms).await?;
    Ok(ConsentPrompt {
        request,
        terms,
        entity,
        purpose_text,
        types,
        candidates,
    })
}

/// The handle inside a request URI.
fn handle_of(request_uri: &str) -> Result<&str> {
    request_uri
        .strip_prefix(REQUEST_URI_PREFIX)
        .filter(|h| !h.is_empty() && h.len() <= 128)
        .ok_or_else(|| Error::BadRequest("request_uri is not one issued by this server".into()))
}

/// The holder's browser arrives at `/authorize`: the pushed request is
/// opened (once; it then has [`OPENED_LIFETIME`] to be decided) and, when the
/// holder is known, bound to them.
pub async fn open(
    services: &Services,
    client_id: &str,
    request_uri: &str,
    holder_id: Option<&str>,
) -> Result<AuthRequestRow> {
    let digest = sha256(handle_of(request_uri)?);
    let gone = || Error::BadRequest("this request_uri is unknown, expired or already used".into());
    let row = services
        .store
        .auth_request(&digest)
        .await?
        .ok_or_else(gone)?;
    if row.kind != "par" || row.client_id != client_id {
        return Err(Error::BadRequest(
            "client_id does not match the pushed request".into(),
        ));
    }
    let now_unix = now().unix_timestamp();
    match row.status.as_str() {
        "pushed" => {
            if !services
                .store
                .advance_auth_request(
                    &digest,
                    "pushed",
                    "opened",
                    now_unix,
                    None,
                    Some(now_unix + OPENED_LIFETIME),
                )
                .await?
            {
                return Err(gone());
            }
        }
        "opened" if row.expires_at > now_unix => {}
        _ => return Err(gone()),
    }
    if let Some(h) = holder_id {
        if !services
            .store
            .bind_request_holder(&digest, h, now_unix)
            .await?
        {
            return Err(Error::BadRequest(
                "this request is being decided by someone else".into(),
            ));
        }
    }
    services.store.auth_request(&digest).await?.ok_or_else(gone)
}

/// Where the holder's browser goes after deciding.
fn redirect_with(base: &str, pairs: &[(&str, &str)]) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        ser.append_pair(k, v);
    }
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{}", ser.finish())
}

/// The holder's decision on a pushed request; returns the redirect location
/// (RFC 6749 §4.1.2, with `iss` of RFC 9207).
pub async fn decide_redirect(
    services: &Services,
    holder_id: &str,
    request_uri: &str,
    approve: bool,
    choice: &Choice,
) -> Result<String> {
    let digest = sha256(handle_of(request_uri)?);
    let row = services
        .store
        .auth_request(&digest)
        .await?
        .filter(|r| r.kind == "par" && r.holder_id.as_deref() == Some(holder_id))
        .ok_or_else(|| Error::BadRequest("no such request awaits your decision".into()))?;
    let now_unix = now().unix_timestamp();
    if !services
        .store
        .advance_auth_request(&digest, "opened", "decided", now_unix, None, None)
        .await?
    {
        return Err(Error::BadRequest(
            "this request has expired or was already decided".into(),
        ));
    }
    let base = row
        .redirect_uri
        .clone()
        .ok_or_else(|| Error::internal("a pushed request without redirect_uri"))?;
    let terms = consent::parse_details(&row.details).map_err(|e| Error::internal(e.description))?;
    // What goes back to the entity: a code, or an error with its description.
    let answer: Vec<(&str, String)> = if !approve {
        refused(services, &row, &terms, holder_id).await?;
        vec![
            ("error", "access_denied".into()),
            ("error_description", "the holder refused".into()),
        ]
    } else {
        match consent::grant(
            services,
            holder_id,
            &row.client_id,
            &terms,
            choice,
            Flow::Redirect,
        )
        .await
        {
            Ok(c) => vec![(
                "code",
                issue_code(services, &row, &base, &c, now_unix).await?,
            )],
            Err(e) => vec![
                ("error", e.code.as_str().into()),
                ("error_description", e.description),
            ],
        }
    };
    let mut pairs: Vec<(&str, &str)> = answer.iter().map(|(k, v)| (*k, v.as_str())).collect();
    if let Some(state) = row.state.as_deref().filter(|s| !s.is_empty()) {
        pairs.push(("state", state));
    }
    pairs.push(("iss", &services.config.public_url));
    Ok(redirect_with(&base, &pairs))
}

/// Stores a single-use code for a granted consent and audits `code.issued`.
async fn issue_code(
    services: &Services,
    row: &AuthRequestRow,
    redirect_uri: &str,
    c: &crate::store::consent::ConsentRow,
    now_unix: i64,
) -> Result<String> {
    let code = random_token(32)?;
    services
        .store
        .insert_code(
            &sha256(&code),
            &CodeRow {
                client_id: row.client_id.clone(),
                redirect_uri: redirect_uri.to_owned(),
                code_challenge: row.code_challenge.clone().unwrap_or_default(),
                consent_id: c.id.clone(),
                expires_at: now_unix + CODE_LIFETIME,
                used_at: None,
            },
        )
        .await?;
    let mut e = AuditEvent::new(
        ActorKind::Holder,
        &c.holder_id,
        "code.issued",
        Outcome::Success,
    )
    .holder(&c.holder_id)
    .purpose(&c.purpose)
    .reason(format!("entity={}", c.client_id));
    e.consent = Some(c.id.clone());
    services.audit.record(e).await?;
    Ok(code)
}

async fn refused(
    services: &Services,
    row: &AuthRequestRow,
    terms: &Terms,
    holder_id: &str,
) -> Result<()> {
    services
        .audit
        .record(
            AuditEvent::new(
                ActorKind::Holder,
                holder_id,
                "consent.refused",
                Outcome::Refused,
            )
            .holder(holder_id)
            .purpose(&terms.purpose)
            .reason(format!(
                "entity={} request {}",
                row.client_id, row.public_id
            )),
        )
        .await?;
    Ok(())
}

/// Backchannel authentication request (OpenID CIBA, poll mode).
pub async fn backchannel(
    services: &Services,
    authorization: Option<&str>,
    params: &HashMap<String, String>,
) -> Result<Backchannel, OAuthError> {
    let client = entity_client(services, authorization, params).await?;
    for p in ["id_token_hint", "login_hint_token"] {
        if params.contains_key(p) {
            return Err(invalid(format!(
                "{p} is not supported; identify the holder with login_hint"
            )));
        }
    }
    let hint = params
        .get("login_hint")
        .map(|h| h.trim())
        .filter(|h| !h.is_empty() && h.len() <= 64)
        .ok_or_else(|| invalid("login_hint (the holder's identifier) is required"))?;
    let binding = params
        .get("binding_message")
        .map(|m| m.trim())
        .filter(|m| {
            !m.is_empty()
                && m.chars().count() <= MAX_BINDING_MESSAGE
                && !m.chars().any(char::is_control)
        })
        .ok_or_else(|| {
            OAuthError::new(
                OAuthErrorCode::InvalidRequest,
                format!(
                    "binding_message is required: 1 to {MAX_BINDING_MESSAGE} printable characters"
                ),
            )
        })?;
    let lifetime = match params.get("requested_expiry") {
        None => CIBA_LIFETIME,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|s| (30..=CIBA_LIFETIME).contains(s))
            .ok_or_else(|| {
                invalid(format!(
                    "requested_expiry must be 30 to {CIBA_LIFETIME} seconds"
                ))
            })?,
    };
    let terms = checked_terms(services, &client.client_id, params, Flow::Decoupled).await?;
    let Some((holder_id, _)) = services.library.holder_by_identifier(hint).await? else {
        return Err(OAuthError::new(
            OAuthErrorCode::UnknownUserId,
            "login_hint does not identify a holder",
        ));
    };
    let (handle, digest) = new_handle()?;
    let t = now();
    let interval = i64::try_from(services.config.ciba_poll_interval).unwrap_or(5);
    let row = AuthRequestRow {
        digest,
        kind: "ciba".into(),
        client_id: client.client_id.clone(),
        redirect_uri: None,
        state: None,
        code_challenge: None,
        details: serde_json::to_string(&terms.elements).map_err(Error::internal)?,
        holder_id: Some(holder_id.clone()),
        binding_message: Some(binding.to_owned()),
        status: "pending".into(),
        consent_id: None,
        public_id: random_token(12)?,
        poll_interval: interval,
        next_poll_at: unix_millis(t),
        expires_at: t.unix_timestamp() + lifetime,
        created_at: timestamp(t),
    };
    services.store.insert_auth_request(&row).await?;
    services
        .audit
        .record(
            AuditEvent::new(
                ActorKind::Entity,
                &client.client_id,
                "authorization.requested",
                Outcome::Success,
            )
            .holder(&holder_id)
            .purpose(&terms.purpose)
            .reason(format!("decoupled flow, request {}", row.public_id)),
        )
        .await?;
    Ok(Backchannel {
        auth_req_id: handle,
        expires_in: lifetime,
        interval,
    })
}

/// A holder's pending backchannel requests, with what each asks.
pub async fn pending(services: &Services, holder_id: &str) -> Result<Vec<ConsentPrompt>> {
    let rows = services
        .store
        .pending_requests(holder_id, now().unix_timestamp())
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(prompt(services, r, holder_id).await?);
    }
    Ok(out)
}

/// The holder's decision on a backchannel request.
pub async fn decide_backchannel(
    services: &Services,
    holder_id: &str,
    public_id: &str,
    approve: bool,
    choice: &Choice,
) -> Result<()> {
    let row = services
        .store
        .auth_request_by_public_id(public_id)
        .await?
        .filter(|r| r.kind == "ciba" && r.holder_id.as_deref() == Some(holder_id))
        .ok_or_else(|| Error::NotFound("no such request awaits your decision".into()))?;
    let now_unix = now().unix_timestamp();
    let terms = consent::parse_details(&row.details).map_err(|e| Error::internal(e.description))?;
    let gone = || Error::Conflict("this request has expired or was already decided".into());
    if row.status != "pending" || row.expires_at <= now_unix {
        return Err(gone());
    }
    if !approve {
        if !services
            .store
            .advance_auth_request(&row.digest, "pending", "denied", now_unix, None, None)
            .await?
        {
            return Err(gone());
        }
        return refused(services, &row, &terms, holder_id).await;
    }
    let c = match consent::grant(
        services,
        holder_id,
        &row.client_id,
        &terms,
        choice,
        Flow::Decoupled,
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            services
                .store
                .advance_auth_request(&row.digest, "pending", "denied", now_unix, None, None)
                .await?;
            return Err(Error::Conflict(format!(
                "the request can no longer be granted: {}",
                e.description
            )));
        }
    };
    if !services
        .store
        .advance_auth_request(
            &row.digest,
            "pending",
            "approved",
            now_unix,
            Some(&c.id),
            None,
        )
        .await?
    {
        // Decided twice at once (two tabs): the consent just made is withdrawn.
        consent::revoke(
            services,
            &c.id,
            ActorKind::System,
            "ciba",
            "request already decided",
        )
        .await?;
        return Err(gone());
    }
    Ok(())
}

/// A show-a-license code as the holder sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ShownLicense {
    /// The one-time code.
    pub code: String,
    /// What the QR code encodes.
    pub qr_payload: String,
    /// Expiry (RFC 3339).
    pub expires_at: String,
    /// The license.
    pub identifier: String,
    /// The fields it shows.
    pub fields: Vec<String>,
}

/// The holder shows one license (亮证): a one-time code for these fields.
pub async fn show(
    services: &Services,
    holder_id: &str,
    identifier: &str,
    fields: &[String],
) -> Result<ShownLicense> {
    let base = crate::licenses::license_base(identifier)?;
    let (license, current) = services
        .library
        .holder_licenses(holder_id)
        .await?
        .into_iter()
        .find(|(l, _)| l.id == base)
        .ok_or_else(|| Error::NotFound("you hold no such license".into()))?;
    if effective_status(&license, today()) == LicenseStatus::Cancelled {
        return Err(Error::Conflict("this license is cancelled".into()));
    }
    let ty = services.library.license_type(&license.license_type).await?;
    if fields.is_empty() {
        return Err(Error::invalid_field("fields", "choose at least one field"));
    }
    if let Some(f) = fields.iter().find(|f| ty.spec.field(f).is_none()) {
        return Err(Error::invalid_field(
            "fields",
            format!("{f} is not a field of this license"),
        ));
    }
    let code = random_token(15)?;
    let t = now();
    let expires_at = t.unix_timestamp() + SHOW_CODE_LIFETIME;
    services
        .store
        .insert_show_code(
            &sha256(&code),
            &ShowCodeRow {
                holder_id: holder_id.to_owned(),
                license_id: license.id.clone(),
                fields: serde_json::to_string(fields).map_err(Error::internal)?,
                expires_at,
            },
            &timestamp(t),
        )
        .await?;
    services
        .audit
        .record(
            AuditEvent::new(
                ActorKind::Holder,
                holder_id,
                "license.shown",
                Outcome::Success,
            )
            .holder(holder_id)
            .license(&current)
            .license_type(&license.license_type)
            .reason(format!("fields={}", fields.join(","))),
        )
        .await?;
    Ok(ShownLicense {
        // The entity's scanner reads the code and which broker to redeem it at.
        qr_payload: format!(
            "licensegate-show:{code}@{}",
            services.config.public_url.trim_end_matches('/')
        ),
        code,
        expires_at: consent::unix_to_rfc3339(expires_at),
        identifier: current,
        fields: fields.to_vec(),
    })
}
