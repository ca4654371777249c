//! The license library: issuing units, the catalog, licenses with their
//! versions and lifecycle, issuer signatures and bulk import.

pub mod catalog;
pub mod identifier;
pub mod import;
pub mod retrieval;
pub mod sdjwt;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use time::{Date, OffsetDateTime, UtcOffset};
use utoipa::ToSchema;

use crate::audit::{Actor, ActorKind, AuditEvent, AuditLog, Outcome};
use crate::error::{Error, FieldError, Result};
use crate::keys::{issuer_owner, random_token, KeyRing, Sealer};
use crate::store::licenses::{EventRow, LicenseFilter, LicenseRow, VersionRow};
use crate::store::{date_string, now, parse_date, timestamp, Store};
use catalog::{HolderKind, LicenseType, LicenseTypeSpec, Sensitivity};
use identifier::{is_valid_uscc, LicenseIdentifier, PREFIX};

/// License validity dates are calendar dates as printed on the license, in
/// China Standard Time; "today" for expiry is therefore taken at UTC+8.
const LICENSE_DATE_OFFSET_HOURS: i8 = 8;

/// Today's date where licenses are issued.
pub fn today() -> Date {
    let offset = UtcOffset::from_hms(LICENSE_DATE_OFFSET_HOURS, 0, 0).unwrap_or(UtcOffset::UTC);
    OffsetDateTime::now_utc().to_offset(offset).date()
}

/// An issuing unit (发证单位).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Issuer {
    /// Unified social credit code.
    pub id: String,
    /// Name in Chinese.
    pub name: String,
    /// Name in English.
    pub name_en: String,
    /// Administrative region (e.g. 上海市).
    pub region: String,
    /// Registered at.
    #[serde(default)]
    pub created_at: String,
}

/// The holder named in a publication.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HolderInput {
    /// person or organisation; must match the license type.
    pub kind: HolderKind,
    /// Citizen ID number for a person, unified social credit code for an organisation.
    pub identifier: String,
    /// Name of the person or organisation.
    pub name: String,
}

/// A license to publish.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// Catalog code of the license type.
    pub license_type: String,
    /// Full identifier (version 001); generated when omitted.
    #[serde(default)]
    pub identifier: Option<String>,
    /// Record number in the issuer's own system; makes re-imports idempotent.
    #[serde(default)]
    pub source_ref: Option<String>,
    /// The holder.
    pub holder: HolderInput,
    /// Face fields, keyed as in the license type.
    #[schema(value_type = Object)]
    pub fields: Map<String, Value>,
    /// First day of validity, YYYY-MM-DD.
    pub valid_from: String,
    /// Last day of validity, YYYY-MM-DD; omitted or null for indefinite (长期).
    #[serde(default)]
    pub valid_until: Option<String>,
}

/// New content for a license: becomes its next version.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    /// All face fields of the new version.
    #[schema(value_type = Object)]
    pub fields: Map<String, Value>,
    /// First day of validity.
    pub valid_from: String,
    /// Last day of validity; omitted or null for indefinite.
    #[serde(default)]
    pub valid_until: Option<String>,
    /// Why the license changed.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A status change with its reason.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusChange {
    /// Why (recorded and shown to the holder).
    pub reason: String,
}

/// Lifecycle actions on a license's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusAction {
    /// valid → suspended.
    Suspend,
    /// suspended → valid.
    Reinstate,
    /// valid or suspended → cancelled (final).
    Cancel,
}

/// The status of a license as a reader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LicenseStatus {
    /// In force.
    Valid,
    /// Temporarily not in force.
    Suspended,
    /// Withdrawn for good.
    Cancelled,
    /// Past its last day of validity.
    Expired,
}

impl LicenseStatus {
    /// Wire spelling (as the policies see it).
    pub fn as_str(self) -> &'static str {
        match self {
            LicenseStatus::Valid => "valid",
            LicenseStatus::Suspended => "suspended",
            LicenseStatus::Cancelled => "cancelled",
            LicenseStatus::Expired => "expired",
        }
    }
}

/// The holder as shown to the issuer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HolderView {
    /// licensegate's holder id.
    pub id: String,
    /// person or organisation.
    pub kind: HolderKind,
    /// Citizen ID number or unified social credit code.
    pub identifier: String,
    /// Name.
    pub name: String,
}

/// A license at its current version.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LicenseView {
    /// Identifier of the current version.
    pub identifier: String,
    /// Identifier of the license across versions (no version, no check character).
    pub license_id: String,
    /// Type code.
    pub license_type: String,
    /// Issuer's unified social credit code.
    pub issuer: String,
    /// The holder.
    pub holder: HolderView,
    /// Current version number.
    pub version: i64,
    /// Status now (expired when past valid_until).
    pub status: LicenseStatus,
    /// Reason of the last suspension, reinstatement or cancellation.
    pub status_reason: Option<String>,
    /// First day of validity.
    pub valid_from: String,
    /// Last day of validity; null for indefinite.
    pub valid_until: Option<String>,
    /// Face fields.
    #[schema(value_type = Object)]
    pub fields: Map<String, Value>,
    /// The issuer's SD-JWT with every disclosure.
    pub sd_jwt: String,
    /// Record number in the issuer's system.
    pub source_ref: Option<String>,
    /// First published at.
    pub created_at: String,
    /// Last changed at.
    pub updated_at: String,
}

/// One version of a license.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VersionView {
    /// Identifier of this version.
    pub identifier: String,
    /// Version number.
    pub version: i64,
    /// First day of validity.
    pub valid_from: String,
    /// Last day of validity.
    pub valid_until: Option<String>,
    /// Face fields.
    #[schema(value_type = Object)]
    pub fields: Map<String, Value>,
    /// The issuer's SD-JWT with every disclosure.
    pub sd_jwt: String,
    /// Issued at.
    pub created_at: String,
}

/// A lifecycle event.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventView {
    /// published, updated, suspended, reinstated or cancelled.
    pub action: String,
    /// Version it applied to.
    pub version: i64,
    /// Reason given.
    pub reason: Option<String>,
    /// Client that did it.
    pub actor: String,
    /// When.
    pub at: String,
}

/// Every version and event of a license.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HistoryView {
    /// Identifier across versions.
    pub license_id: String,
    /// Versions, oldest first.
    pub versions: Vec<VersionView>,
    /// Events, oldest first.
    pub events: Vec<EventView>,
}

/// A license in a listing.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LicenseSummary {
    /// Identifier of the current version.
    pub identifier: String,
    /// Identifier across versions.
    pub license_id: String,
    /// Type code.
    pub license_type: String,
    /// Holder id.
    pub holder_id: String,
    /// Current version.
    pub version: i64,
    /// Status now.
    pub status: LicenseStatus,
    /// First day of validity.
    pub valid_from: String,
    /// Last day of validity.
    pub valid_until: Option<String>,
}

/// A page of results with the cursor for the next one.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LicensePage {
    /// The items.
    pub items: Vec<LicenseSummary>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Who acts on the library: an issuing unit, through one of its clients.
#[derive(Debug, Clone)]
pub struct IssuerActor {
    /// The client id (recorded as the actor).
    pub client_id: String,
    /// The issuing unit.
    pub issuer_id: String,
}

impl IssuerActor {
    /// An audit event by this issuing unit's client.
    pub fn event(&self, action: &str, outcome: Outcome) -> AuditEvent {
        AuditEvent::new(ActorKind::Issuer, self.client_id.clone(), action, outcome)
    }
}

/// Face fields and validity of a license version, validated.
#[derive(Debug)]
pub struct Content {
    /// Face fields.
    pub fields: Map<String, Value>,
    /// First day of validity.
    pub valid_from: Date,
    /// Last day of validity; none for an indefinite license.
    pub valid_until: Option<Date>,
}

/// The library service.
pub struct Library {
    store: Store,
    sealer: Arc<Sealer>,
    keys: Arc<KeyRing>,
    audit: Arc<AuditLog>,
    public_url: String,
}

impl Library {
    /// The library over a store.
    pub fn new(
        store: Store,
        sealer: Arc<Sealer>,
        keys: Arc<KeyRing>,
        audit: Arc<AuditLog>,
        public_url: String,
    ) -> Self {
        Library {
            store,
            sealer,
            keys,
            audit,
            public_url,
        }
    }

    // ---- issuing units -------------------------------------------------------

    /// Registers an issuing unit and gives it a signing key.
    pub async fn create_issuer(&self, actor: &Actor, mut issuer: Issuer) -> Result<Issuer> {
        let mut errors = Vec::new();
        if !is_valid_uscc(&issuer.id) {
            errors.push(FieldError::new(
                "id",
                "must be an 18-character unified social credit code with a valid check character",
            ));
        }
        for (field, value) in [
            ("name", &issuer.name),
            ("name_en", &issuer.name_en),
            ("region", &issuer.region),
        ] {
            if value.trim().is_empty() {
                errors.push(FieldError::new(field, "must not be empty"));
            }
        }
        if !errors.is_empty() {
            return Err(Error::Invalid {
                detail: "the issuing unit is invalid".into(),
                errors,
            });
        }
        issuer.created_at = timestamp(now());
        self.store.insert_issuer(&issuer).await.map_err(|e| {
            if e.is_unique_violation() {
                Error::Conflict(format!("issuing unit {} already exists", issuer.id))
            } else {
                e
            }
        })?;
        self.keys.active(&issuer_owner(&issuer.id)).await?;
        self.audit
            .record(
                actor
                    .event("issuer.registered", Outcome::Success)
                    .reason(format!("issuing unit {} {}", issuer.id, issuer.name)),
            )
            .await?;
        Ok(issuer)
    }

    /// All issuing units.
    pub async fn issuers(&self) -> Result<Vec<Issuer>> {
        self.store.issuers().await
    }

    /// The JWKS of an issuing unit.
    pub async fn issuer_jwks(&self, issuer_id: &str) -> Result<Value> {
        if self.store.issuer(issuer_id).await?.is_none() {
            return Err(Error::NotFound(format!("no issuing unit {issuer_id}")));
        }
        self.keys.jwks(&issuer_owner(issuer_id)).await
    }

    /// The `iss` of an issuing unit's SD-JWTs; its JWKS is at `<iss>/jwks.json`.
    pub fn issuer_url(&self, issuer_id: &str) -> String {
        format!("{}/issuers/{issuer_id}", self.public_url)
    }

    // ---- catalog -------------------------------------------------------------

    /// Adds a license type to the catalog.
    pub async fn create_type(&self, actor: &Actor, spec: LicenseTypeSpec) -> Result<LicenseType> {
        spec.validate()?;
        if self.store.issuer(&spec.issuer).await?.is_none() {
            return Err(Error::invalid_field(
                "issuer",
                format!("no issuing unit {}", spec.issuer),
            ));
        }
        self.store
            .insert_license_type(&spec, &timestamp(now()))
            .await
            .map_err(|e| {
                if e.is_unique_violation() {
                    Error::Conflict(format!("license type {} already exists", spec.code))
                } else {
                    e
                }
            })?;
        self.audit
            .record(
                actor
                    .event("license_type.created", Outcome::Success)
                    .license_type(&spec.code),
            )
            .await?;
        self.license_type(&spec.code).await
    }

    /// Replaces a license type's definition. Licenses already issued keep the
    /// fields they were signed with; the holder kind cannot change once set.
    pub async fn update_type(
        &self,
        actor: &Actor,
        code: &str,
        spec: LicenseTypeSpec,
    ) -> Result<LicenseType> {
        if spec.code != code {
            return Err(Error::invalid_field(
                "code",
                "does not match the code in the path",
            ));
        }
        spec.validate()?;
        let current = self.license_type(code).await?;
        if current.spec.holder_kind != spec.holder_kind {
            return Err(Error::Conflict(
                "the holder kind of a license type cannot change".into(),
            ));
        }
        if current.spec.issuer != spec.issuer && self.store.count_licenses_of_type(code).await? > 0
        {
            return Err(Error::Conflict(
                "the issuing unit of a license type with licenses cannot change".into(),
            ));
        }
        if self.store.issuer(&spec.issuer).await?.is_none() {
            return Err(Error::invalid_field(
                "issuer",
                format!("no issuing unit {}", spec.issuer),
            ));
        }
        if !self
            .store
            .update_license_type(&spec, current.revision, &timestamp(now()))
            .await?
        {
            return Err(Error::Conflict(
                "the license type changed meanwhile; retry".into(),
            ));
        }
        self.audit
            .record(
                actor
                    .event("license_type.updated", Outcome::Success)
                    .license_type(code)
                    .reason(format!("revision {}", current.revision + 1)),
            )
            .await?;
        self.license_type(code).await
    }

    /// One license type.
    pub async fn license_type(&self, code: &str) -> Result<LicenseType> {
        self.store
            .license_type(code)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no license type {code}")))
    }

    /// The catalog.
    pub async fn license_types(&self) -> Result<Vec<LicenseType>> {
        self.store.license_types().await
    }

    // ---- licenses ------------------------------------------------------------

    /// The holder (id, kind) with this identifier (ID number or USCC), if any.
    pub async fn holder_by_identifier(
        &self,
        identifier: &str,
    ) -> Result<Option<(String, HolderKind)>> {
        for kind in [HolderKind::Person, HolderKind::Organisation] {
            if let Some((id, k)) = self
                .store
                .holder_by_digest(&self.holder_digest(kind, identifier))
                .await?
            {
                return Ok(Some((id, HolderKind::parse(&k)?)));
            }
        }
        Ok(None)
    }

    /// A holder's identity (opened from its sealed form).
    pub async fn holder(&self, holder_id: &str) -> Result<HolderView> {
        let (kind, sealed) = self
            .store
            .holder_identity(holder_id)
            .await?
            .ok_or_else(|| Error::NotFound("no such holder".into()))?;
        self.open_holder(holder_id, &kind, &sealed)
    }

    /// Every license of a holder with the identifier of its current version.
    pub async fn holder_licenses(&self, holder_id: &str) -> Result<Vec<(LicenseRow, String)>> {
        let rows = self
            .store
            .licenses(&LicenseFilter {
                issuer_id: None,
                license_type: None,
                status: None,
                holder_id: Some(holder_id),
                after: None,
                limit: 1000,
            })
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let identifier = self.current_identifier_of(&r)?;
            out.push((r, identifier));
        }
        Ok(out)
    }

    fn holder_digest(&self, kind: HolderKind, identifier: &str) -> Vec<u8> {
        self.sealer.lookup_digest(
            &format!("holder:{}", kind.as_str()),
            &identifier.trim().to_uppercase(),
        )
    }

    fn content_digest(&self, license_type: &str, holder_digest: &[u8], c: &Content) -> String {
        let canonical = json!({
            "license_type": license_type,
            "holder": crate::keys::b64url(holder_digest),
            "fields": c.fields,
            "valid_from": date_string(c.valid_from),
            "valid_until": c.valid_until.map(date_string),
        });
        crate::keys::b64url(self.sealer.lookup_digest("content", &canonical.to_string()))
    }

    fn check_content(
        ty: &LicenseType,
        fields: &Map<String, Value>,
        valid_from: &str,
        valid_until: Option<&str>,
        mut errors: Vec<FieldError>,
    ) -> Result<Content> {
        errors.extend(ty.spec.check_fields(fields));
        let from = parse_date(valid_from)
            .map_err(|_| errors.push(FieldError::new("valid_from", "must be a date YYYY-MM-DD")))
            .ok();
        let until = match valid_until.map(parse_date) {
            None => Some(None),
            Some(Ok(d)) => Some(Some(d)),
            Some(Err(_)) => {
                errors.push(FieldError::new(
                    "valid_until",
                    "must be a date YYYY-MM-DD or null",
                ));
                None
            }
        };
        if let (Some(from), Some(until)) = (from, until) {
            errors.extend(ty.spec.check_validity(from, until));
        }
        match (from, until) {
            (Some(valid_from), Some(valid_until)) if errors.is_empty() => Ok(Content {
                fields: fields
                    .iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                valid_from,
                valid_until,
            }),
            _ => Err(Error::Invalid {
                detail: format!("the license has {} problem(s)", errors.len().max(1)),
                errors,
            }),
        }
    }

    async fn publishable_type(&self, actor: &IssuerActor, code: &str) -> Result<LicenseType> {
        let ty = self.store.license_type(code).await?.ok_or_else(|| {
            Error::invalid_field(
                "license_type",
                format!("no license type {code} in the catalog"),
            )
        })?;
        if ty.spec.issuer != actor.issuer_id {
            return Err(Error::Forbidden(format!(
                "licenses of type {code} are issued by {}, not by {}",
                ty.spec.issuer, actor.issuer_id
            )));
        }
        Ok(ty)
    }

    /// Validates a publication without writing anything; returns the parts
    /// needed to publish it and the digest that identifies its content.
    async fn prepare_publication(
        &self,
        actor: &IssuerActor,
        req: &PublishRequest,
    ) -> Result<(
        LicenseType,
        Option<LicenseIdentifier>,
        Content,
        Vec<u8>,
        String,
    )> {
        let ty = self.publishable_type(actor, &req.license_type).await?;
        let (ident, content) = Self::check_publication(&ty, &actor.issuer_id, req)?;
        let holder_digest = self.holder_digest(req.holder.kind, &req.holder.identifier);
        let digest = self.content_digest(&ty.spec.code, &holder_digest, &content);
        Ok((ty, ident, content, holder_digest, digest))
    }

    /// Every check of a publication by `issuer_id` that needs nothing but its
    /// license type: holder, source_ref, identifier, face fields, validity.
    pub fn check_publication(
        ty: &LicenseType,
        issuer_id: &str,
        req: &PublishRequest,
    ) -> Result<(Option<LicenseIdentifier>, Content)> {
        let mut errors = Vec::new();
        if req.holder.kind != ty.spec.holder_kind {
            errors.push(FieldError::new(
                "holder.kind",
                format!(
                    "licenses of type {} are held by a {}",
                    ty.spec.code,
                    ty.spec.holder_kind.as_str()
                ),
            ));
        }
        if req.holder.identifier.trim().is_empty() || req.holder.identifier.len() > 64 {
            errors.push(FieldError::new(
                "holder.identifier",
                "must be 1-64 characters",
            ));
        }
        if req.holder.name.trim().is_empty() || req.holder.name.chars().count() > 200 {
            errors.push(FieldError::new("holder.name", "must be 1-200 characters"));
        }
        if let Some(r) = &req.source_ref {
            if r.trim().is_empty() || r.len() > 128 {
                errors.push(FieldError::new("source_ref", "must be 1-128 characters"));
            }
        }
        let ident = match &req.identifier {
            None => None,
            Some(s) => match LicenseIdentifier::parse(s) {
                Err(e) => {
                    errors.push(FieldError::new("identifier", e.to_string()));
                    None
                }
                Ok(id) => {
                    if id.type_code != ty.spec.code {
                        errors.push(FieldError::new("identifier", "names another license type"));
                    }
                    if id.issuer != issuer_id {
                        errors.push(FieldError::new("identifier", "names another issuing unit"));
                    }
                    if id.version != 1 {
                        errors.push(FieldError::new(
                            "identifier",
                            "a new license starts at version 001",
                        ));
                    }
                    Some(id)
                }
            },
        };
        let content = Self::check_content(
            ty,
            &req.fields,
            &req.valid_from,
            req.valid_until.as_deref(),
            errors,
        )?;
        Ok((ident, content))
    }

    /// Publishes a new license (version 001), signed by its issuer.
    pub async fn publish(&self, actor: &IssuerActor, req: PublishRequest) -> Result<LicenseView> {
        let (ty, ident, content, holder_digest, digest) =
            self.prepare_publication(actor, &req).await?;
        let id = self
            .insert_publication(actor, &ty, ident, &req, content, &holder_digest, digest)
            .await?;
        self.view(&id).await
    }

    #[allow(clippy::too_many_arguments)] // one call site; a struct would only rename these
    async fn insert_publication(
        &self,
        actor: &IssuerActor,
        ty: &LicenseType,
        ident: Option<LicenseIdentifier>,
        req: &PublishRequest,
        content: Content,
        holder_digest: &[u8],
        digest: String,
    ) -> Result<String> {
        let at = timestamp(now());
        let key = self.keys.active(&issuer_owner(&actor.issuer_id)).await?;
        let mut tx = self.store.begin_library_write().await?;
        let new_holder = format!("h_{}", random_token(12)?);
        let identity =
            json!({"identifier": req.holder.identifier.trim(), "name": req.holder.name.trim()});
        let sealed_identity = self.sealer.seal(
            &format!("holder:{new_holder}"),
            identity.to_string().as_bytes(),
        )?;
        let holder_id = tx
            .upsert_holder(
                &new_holder,
                req.holder.kind.as_str(),
                holder_digest,
                &sealed_identity,
                &at,
            )
            .await?;
        // Serials the issuer chose itself may collide with generated ones; a few
        // retries skip past them.
        let mut attempts = 0;
        let ident = loop {
            let ident = match &ident {
                Some(given) => given.clone(),
                None => LicenseIdentifier {
                    type_code: ty.spec.code.clone(),
                    issuer: actor.issuer_id.clone(),
                    serial: format!(
                        "{:08}",
                        tx.next_serial(&ty.spec.code, &actor.issuer_id).await?
                    ),
                    version: 1,
                },
            };
            let row = LicenseRow {
                id: ident.base(),
                license_type: ty.spec.code.clone(),
                issuer_id: actor.issuer_id.clone(),
                holder_id: holder_id.clone(),
                current_version: 1,
                status: "valid".into(),
                status_reason: None,
                valid_from: date_string(content.valid_from),
                valid_until: content.valid_until.map(date_string),
                source_ref: req.source_ref.clone(),
                created_at: at.clone(),
                updated_at: at.clone(),
            };
            let inserted = tx.insert_license(&row).await.map_err(|e| {
                if e.is_unique_violation() {
                    Error::Conflict(format!(
                        "source_ref {} was already published by this issuing unit",
                        req.source_ref.as_deref().unwrap_or_default()
                    ))
                } else {
                    e
                }
            })?;
            if inserted {
                break ident;
            }
            attempts += 1;
            if req.identifier.is_some() {
                return Err(Error::Conflict(format!(
                    "identifier {ident} is already in use"
                )));
            }
            if attempts >= 5 {
                return Err(Error::Conflict(
                    "could not allocate a free serial number; retry".into(),
                ));
            }
        };
        let version = self.sign_version(&key, ty, &ident, &content, digest, &at)?;
        tx.insert_version(&version).await?;
        tx.insert_event(
            &version.license_id,
            &EventRow {
                version: 1,
                action: "published".into(),
                reason: None,
                actor: actor.client_id.clone(),
                at: at.clone(),
            },
        )
        .await?;
        tx.audit(vec![actor
            .event("license.published", Outcome::Success)
            .holder(&holder_id)
            .license(&version.identifier)
            .license_type(&ty.spec.code)])
            .await?;
        tx.commit().await?;
        Ok(ident.base())
    }

    fn sign_version(
        &self,
        key: &crate::keys::SigningKey,
        ty: &LicenseType,
        ident: &LicenseIdentifier,
        content: &Content,
        digest: String,
        at: &str,
    ) -> Result<VersionRow> {
        let identifier = ident.to_string();
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.issuer_url(&ident.issuer)));
        claims.insert("iat".into(), json!(now().unix_timestamp()));
        claims.insert("vct".into(), json!(ty.spec.code));
        claims.insert("license_id".into(), json!(identifier));
        claims.insert("version".into(), json!(ident.version));
        claims.insert("holder_kind".into(), json!(ty.spec.holder_kind));
        claims.insert("valid_from".into(), json!(date_string(content.valid_from)));
        claims.insert(
            "valid_until".into(),
            json!(content.valid_until.map(date_string)),
        );
        let issued = sdjwt::issue(key, claims, &content.fields)?;
        let (mut public, mut protected) = (BTreeMap::new(), BTreeMap::new());
        for (k, d) in issued.disclosures {
            let sensitivity = ty
                .spec
                .field(&k)
                .map_or(Sensitivity::Sensitive, |f| f.sensitivity);
            if sensitivity == Sensitivity::Public {
                public.insert(k, d);
            } else {
                protected.insert(k, d);
            }
        }
        let protected = serde_json::to_vec(&protected).map_err(Error::internal)?;
        Ok(VersionRow {
            license_id: ident.base(),
            version: i64::from(ident.version),
            sealed_disclosures: self
                .sealer
                .seal(&format!("license_version:{identifier}"), &protected)?,
            identifier,
            valid_from: date_string(content.valid_from),
            valid_until: content.valid_until.map(date_string),
            content_digest: digest,
            public_disclosures: serde_json::to_string(&public).map_err(Error::internal)?,
            sd_jwt: issued.jwt,
            kid: key.kid().to_owned(),
            created_at: at.to_owned(),
        })
    }

    /// Resolves a path identifier (any version's full identifier, or the
    /// identifier without version) to a license of the acting issuer. Other
    /// issuers' licenses are reported as missing, never as forbidden.
    async fn own_license(&self, actor: &IssuerActor, identifier: &str) -> Result<LicenseRow> {
        let base = license_base(identifier)?;
        match self.store.license(&base).await? {
            Some(l) if l.issuer_id == actor.issuer_id => Ok(l),
            _ => Err(Error::NotFound(format!("no license {identifier}"))),
        }
    }

    /// Issues a new version of a license with new content.
    pub async fn update(
        &self,
        actor: &IssuerActor,
        identifier: &str,
        req: UpdateRequest,
    ) -> Result<LicenseView> {
        let license = self.own_license(actor, identifier).await?;
        if license.status == "cancelled" {
            return Err(Error::Conflict("a cancelled license cannot change".into()));
        }
        let ty = self.license_type(&license.license_type).await?;
        let content = Self::check_content(
            &ty,
            &req.fields,
            &req.valid_from,
            req.valid_until.as_deref(),
            Vec::new(),
        )?;
        if let Some(r) = &req.reason {
            if r.len() > 1000 {
                return Err(Error::invalid_field(
                    "reason",
                    "must be at most 1000 characters",
                ));
            }
        }
        let next = license.current_version + 1;
        let version = u16::try_from(next)
            .ok()
            .filter(|v| *v <= 999)
            .ok_or_else(|| Error::Conflict("a license has at most 999 versions".into()))?;
        let current = LicenseIdentifier::parse(&self.current_identifier_of(&license)?)
            .map_err(|e| Error::internal(format!("stored identifier is invalid: {e}")))?;
        let ident = current.with_version(version);
        let (kind, sealed) = self
            .store
            .holder_identity(&license.holder_id)
            .await?
            .ok_or_else(|| Error::internal("license without holder"))?;
        let holder = self.open_holder(&license.holder_id, &kind, &sealed)?;
        let holder_digest = self.holder_digest(holder.kind, &holder.identifier);
        let digest = self.content_digest(&ty.spec.code, &holder_digest, &content);
        let key = self.keys.active(&issuer_owner(&license.issuer_id)).await?;
        let at = timestamp(now());
        let row = self.sign_version(&key, &ty, &ident, &content, digest, &at)?;
        let mut tx = self.store.begin_library_write().await?;
        if !tx
            .advance_version(&license.id, license.current_version, &row)
            .await?
        {
            return Err(Error::Conflict(
                "the license changed meanwhile (or was cancelled); retry".into(),
            ));
        }
        tx.insert_version(&row).await?;
        tx.insert_event(
            &license.id,
            &EventRow {
                version: next,
                action: "updated".into(),
                reason: req.reason.clone(),
                actor: actor.client_id.clone(),
                at,
            },
        )
        .await?;
        let mut event = actor
            .event("license.updated", Outcome::Success)
            .holder(&license.holder_id)
            .license(&row.identifier)
            .license_type(&license.license_type);
        event.reason = req.reason.clone();
        tx.audit(vec![event]).await?;
        tx.commit().await?;
        self.view(&license.id).await
    }

    /// Suspends, reinstates or cancels a license.
    pub async fn change_status(
        &self,
        actor: &IssuerActor,
        identifier: &str,
        action: StatusAction,
        change: StatusChange,
    ) -> Result<LicenseView> {
        if change.reason.trim().is_empty() || change.reason.len() > 1000 {
            return Err(Error::invalid_field("reason", "must be 1-1000 characters"));
        }
        let license = self.own_license(actor, identifier).await?;
        let (from, to, verb): (&[&str], &str, &str) = match action {
            StatusAction::Suspend => (&["valid"], "suspended", "suspended"),
            StatusAction::Reinstate => (&["suspended"], "valid", "reinstated"),
            StatusAction::Cancel => (&["valid", "suspended"], "cancelled", "cancelled"),
        };
        let at = timestamp(now());
        let mut tx = self.store.begin_library_write().await?;
        if !tx
            .change_status(&license.id, from, to, change.reason.trim(), &at)
            .await?
        {
            return Err(Error::Conflict(format!(
                "a {} license cannot be {verb}",
                self.store
                    .license(&license.id)
                    .await?
                    .map_or(license.status.clone(), |l| l.status)
            )));
        }
        tx.insert_event(
            &license.id,
            &EventRow {
                version: license.current_version,
                action: verb.into(),
                reason: Some(change.reason.trim().to_owned()),
                actor: actor.client_id.clone(),
                at,
            },
        )
        .await?;
        let identifier = self.current_identifier_of(&license)?;
        tx.audit(vec![actor
            .event(&format!("license.{verb}"), Outcome::Success)
            .holder(&license.holder_id)
            .license(identifier)
            .license_type(&license.license_type)
            .reason(change.reason.trim())])
            .await?;
        tx.commit().await?;
        self.view(&license.id).await
    }

    /// A license of the acting issuer at its current version.
    pub async fn get(&self, actor: &IssuerActor, identifier: &str) -> Result<LicenseView> {
        let license = self.own_license(actor, identifier).await?;
        self.view(&license.id).await
    }

    /// Every version and lifecycle event of a license of the acting issuer.
    pub async fn history(&self, actor: &IssuerActor, identifier: &str) -> Result<HistoryView> {
        let license = self.own_license(actor, identifier).await?;
        let versions = self
            .store
            .license_versions(&license.id)
            .await?
            .iter()
            .map(|v| self.version_view(v))
            .collect::<Result<Vec<_>>>()?;
        let events = self
            .store
            .license_events(&license.id)
            .await?
            .into_iter()
            .map(|e| EventView {
                action: e.action,
                version: e.version,
                reason: e.reason,
                actor: e.actor,
                at: e.at,
            })
            .collect();
        Ok(HistoryView {
            license_id: license.id,
            versions,
            events,
        })
    }

    /// A page of the acting issuer's licenses.
    pub async fn list(
        &self,
        actor: &IssuerActor,
        license_type: Option<&str>,
        status: Option<&str>,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<LicensePage> {
        if let Some(s) = status {
            if !matches!(s, "valid" | "suspended" | "cancelled") {
                return Err(Error::BadRequest(
                    "status must be valid, suspended or cancelled".into(),
                ));
            }
        }
        let limit = i64::from(limit.unwrap_or(100).clamp(1, 1000));
        let rows = self
            .store
            .licenses(&LicenseFilter {
                issuer_id: Some(&actor.issuer_id),
                license_type,
                status,
                holder_id: None,
                after,
                limit,
            })
            .await?;
        let next_cursor = (rows.len() as i64 == limit)
            .then(|| rows.last().map(|r| r.id.clone()))
            .flatten();
        let today = today();
        let mut items = Vec::with_capacity(rows.len());
        for r in rows {
            items.push(LicenseSummary {
                identifier: self.current_identifier_of(&r)?,
                status: effective_status(&r, today),
                license_id: r.id,
                license_type: r.license_type,
                holder_id: r.holder_id,
                version: r.current_version,
                valid_from: r.valid_from,
                valid_until: r.valid_until,
            });
        }
        Ok(LicensePage { items, next_cursor })
    }

    /// The identifier of a license's current version.
    pub fn current_identifier_of(&self, l: &LicenseRow) -> Result<String> {
        let version = u16::try_from(l.current_version).map_err(Error::internal)?;
        LicenseIdentifier::from_base(&l.id, version)
            .map(|i| i.to_string())
            .ok_or_else(|| Error::internal(format!("stored license id {} is malformed", l.id)))
    }

    fn open_holder(&self, holder_id: &str, kind: &str, sealed: &[u8]) -> Result<HolderView> {
        #[derive(Deserialize)]
        struct Identity {
            identifier: String,
            name: String,
        }
        let plain = self.sealer.open(&format!("holder:{holder_id}"), sealed)?;
        let identity: Identity = serde_json::from_slice(&plain).map_err(Error::internal)?;
        Ok(HolderView {
            id: holder_id.to_owned(),
            kind: HolderKind::parse(kind)?,
            identifier: identity.identifier,
            name: identity.name,
        })
    }

    /// All disclosures of a version (public ones in clear, the rest unsealed).
    pub fn disclosures(&self, v: &VersionRow) -> Result<BTreeMap<String, String>> {
        let mut all: BTreeMap<String, String> =
            serde_json::from_str(&v.public_disclosures).map_err(Error::internal)?;
        let sealed = self.sealer.open(
            &format!("license_version:{}", v.identifier),
            &v.sealed_disclosures,
        )?;
        let protected: BTreeMap<String, String> =
            serde_json::from_slice(&sealed).map_err(Error::internal)?;
        all.extend(protected);
        Ok(all)
    }

    fn version_view(&self, v: &VersionRow) -> Result<VersionView> {
        let disclosures = self.disclosures(v)?;
        let mut fields = Map::new();
        for d in disclosures.values() {
            let (k, value) = sdjwt::decode_disclosure(d)?;
            fields.insert(k, value);
        }
        Ok(VersionView {
            identifier: v.identifier.clone(),
            version: v.version,
            valid_from: v.valid_from.clone(),
            valid_until: v.valid_until.clone(),
            fields,
            sd_jwt: sdjwt::present(&v.sd_jwt, disclosures.values()),
            created_at: v.created_at.clone(),
        })
    }

    async fn view(&self, id: &str) -> Result<LicenseView> {
        let l = self
            .store
            .license(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no license {id}")))?;
        let v = self
            .store
            .license_version(&l.id, l.current_version)
            .await?
            .ok_or_else(|| Error::internal("license without its current version"))?;
        let (kind, sealed) = self
            .store
            .holder_identity(&l.holder_id)
            .await?
            .ok_or_else(|| Error::internal("license without holder"))?;
        let version = self.version_view(&v)?;
        Ok(LicenseView {
            identifier: v.identifier,
            license_id: l.id.clone(),
            license_type: l.license_type.clone(),
            issuer: l.issuer_id.clone(),
            holder: self.open_holder(&l.holder_id, &kind, &sealed)?,
            version: l.current_version,
            status: effective_status(&l, today()),
            status_reason: l.status_reason.clone(),
            valid_from: l.valid_from.clone(),
            valid_until: l.valid_until.clone(),
            fields: version.fields,
            sd_jwt: version.sd_jwt,
            source_ref: l.source_ref.clone(),
            created_at: l.created_at,
            updated_at: l.updated_at,
        })
    }
}

/// The identifier of a license across versions, from a path parameter that is
/// either a full identifier of any version or already the base.
pub fn license_base(identifier: &str) -> Result<String> {
    if let Ok(id) = LicenseIdentifier::parse(identifier) {
        return Ok(id.base());
    }
    let rest = identifier
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_prefix('.'));
    match rest.map(|r| r.split('.').count()) {
        Some(3) => Ok(identifier.to_owned()),
        _ => Err(Error::NotFound(format!(
            "{identifier:?} is not a license identifier ({PREFIX}.<type>.<issuer>.<serial>[.<version>.<check>])"
        ))),
    }
}

/// The status a reader sees: a valid license past its last day is expired.
pub fn effective_status(l: &LicenseRow, today: Date) -> LicenseStatus {
    match l.status.as_str() {
        "cancelled" => LicenseStatus::Cancelled,
        "suspended" => LicenseStatus::Suspended,
        _ => match l.valid_until.as_deref().map(parse_date) {
            Some(Ok(until)) if until < today => LicenseStatus::Expired,
            _ => LicenseStatus::Valid,
        },
    }
}
