//! Who may ask for what: the Cedar policies in `policies/` and the entities'
//! approved use lists (用证清单), combined in one decision function.
//!
//! A request is allowed only if a Cedar policy permits it, no policy forbids
//! it, AND an approved scenario of the entity's use list covers this purpose,
//! this license type, every requested field (and the flow, when given). The
//! decision names what decided it, so that every refusal can be audited with
//! its reasons.

pub mod engine;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::licenses::catalog::{LicenseTypeSpec, Sensitivity};
pub use engine::{Policies, PolicyEngine, PolicyError};

/// The three things an entity does with licenses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PolicyAction {
    /// Ask a holder for consent.
    Request,
    /// Read a license under a consent.
    Retrieve,
    /// Check that a license is authentic and current.
    Verify,
}

impl PolicyAction {
    /// The Cedar action id.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyAction::Request => "request",
            PolicyAction::Retrieve => "retrieve",
            PolicyAction::Verify => "verify",
        }
    }
}

/// How a consent is obtained or a license reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Flow {
    /// Authorization-code flow with the holder's browser.
    Redirect,
    /// CIBA: the holder approves on their own device.
    Decoupled,
    /// The holder shows a license (亮证) with a one-time code.
    ShowLicense,
    /// Verification (核验) of a license the entity was shown.
    Verify,
}

/// One approved scenario of a use list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Purpose code (事由), e.g. `account_opening`.
    pub purpose: String,
    /// What the purpose is, in words shown to holders.
    pub description: String,
    /// License type codes.
    pub license_types: Vec<String>,
    /// Per license type, the face fields that may be read.
    pub fields: BTreeMap<String, Vec<String>>,
    /// Longest consent, in days.
    pub max_consent_days: u32,
    /// Most retrievals per consent.
    pub max_retrievals: u32,
    /// Flows the entity may use for this purpose.
    pub flows: Vec<Flow>,
}

/// The entity as the policies see it.
#[derive(Debug, Clone)]
pub struct EntityFacts {
    /// Its client id.
    pub id: String,
    /// Its sector.
    pub sector: String,
    /// active or suspended.
    pub status: String,
}

/// What the decision is about.
#[derive(Debug, Clone)]
pub enum Resource {
    /// A license type (consent requests).
    LicenseType,
    /// A license with its current status (retrieval, verification).
    License {
        /// Identifier.
        id: String,
        /// valid, suspended, cancelled or expired.
        status: String,
    },
}

/// A question for [`decide`].
#[derive(Debug, Clone)]
pub struct Question<'a> {
    /// Who asks.
    pub entity: &'a EntityFacts,
    /// What for.
    pub action: PolicyAction,
    /// The license type (always known).
    pub license_type: &'a LicenseTypeSpec,
    /// The license, for retrieval and verification.
    pub resource: Resource,
    /// Purpose code.
    pub purpose: &'a str,
    /// Face fields asked for.
    pub fields: &'a [String],
    /// The flow, when the question is about one.
    pub flow: Option<Flow>,
}

/// The answer, with what decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Decision {
    /// Allowed or not.
    pub allowed: bool,
    /// The policies that permitted or forbade it (`policy:<id>`), and the
    /// use-list finding (`use_list:<scenario purpose>` or the missing entry).
    pub reasons: Vec<String>,
}

/// Checks the approved scenarios: one must cover the purpose, the type, every
/// field and the flow. Returns the covering scenario's purpose, or what is missing.
pub fn use_list_covers(
    scenarios: &[Scenario],
    purpose: &str,
    license_type: &str,
    fields: &[String],
    flow: Option<Flow>,
) -> Result<String, String> {
    let for_purpose: Vec<&Scenario> = scenarios.iter().filter(|s| s.purpose == purpose).collect();
    if for_purpose.is_empty() {
        return Err(format!(
            "use_list: no approved scenario for purpose {purpose}"
        ));
    }
    let for_type: Vec<&&Scenario> = for_purpose
        .iter()
        .filter(|s| s.license_types.iter().any(|t| t == license_type))
        .collect();
    if for_type.is_empty() {
        return Err(format!(
            "use_list: license type {license_type} is not approved for purpose {purpose}"
        ));
    }
    let mut missing_fields = Vec::new();
    for s in &for_type {
        let allowed = s
            .fields
            .get(license_type)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let missing: Vec<&String> = fields.iter().filter(|f| !allowed.contains(f)).collect();
        if !missing.is_empty() {
            missing_fields = missing;
            continue;
        }
        if let Some(flow) = flow {
            if !s.flows.contains(&flow) {
                return Err(format!(
                    "use_list: flow {} is not approved for purpose {purpose}",
                    serde_json::to_value(flow)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                ));
            }
        }
        return Ok(format!("use_list:{}", s.purpose));
    }
    Err(format!(
        "use_list: field(s) {} of {license_type} are not approved for purpose {purpose}",
        missing_fields
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// The one decision function: Cedar policies AND the approved use list.
pub fn decide(engine: &PolicyEngine, scenarios: &[Scenario], q: &Question<'_>) -> Decision {
    let mut reasons = Vec::new();
    // Fields the catalog does not know are refused outright: nothing can be consented to them.
    let unknown: Vec<&String> = q
        .fields
        .iter()
        .filter(|f| q.license_type.field(f).is_none())
        .collect();
    if !unknown.is_empty() {
        return Decision {
            allowed: false,
            reasons: vec![format!(
                "catalog: {} not face field(s) of {}",
                unknown
                    .iter()
                    .map(|f| f.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                q.license_type.code
            )],
        };
    }
    let sensitive: Vec<&str> = q
        .fields
        .iter()
        .filter(|f| {
            q.license_type
                .field(f)
                .is_some_and(|s| s.sensitivity == Sensitivity::Sensitive)
        })
        .map(String::as_str)
        .collect();
    let cedar = engine.authorize(q, &sensitive);
    reasons.extend(cedar.reasons);
    let use_list = use_list_covers(scenarios, q.purpose, &q.license_type.code, q.fields, q.flow);
    let use_ok = use_list.is_ok();
    reasons.push(use_list.unwrap_or_else(|e| e));
    Decision {
        allowed: cedar.allowed && use_ok,
        reasons,
    }
}
