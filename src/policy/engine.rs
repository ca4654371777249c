//! Loading, validating and evaluating the Cedar policies.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityUid, PolicyId,
    PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};

use super::{Question, Resource};
use crate::store::cache::Kept;

/// A policy file that does not parse or does not validate.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct PolicyError {
    /// The file.
    pub file: String,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// The Cedar part of a decision.
#[derive(Debug, Clone)]
pub struct CedarOutcome {
    /// Cedar allowed it.
    pub allowed: bool,
    /// `policy:<id>` for each determining policy, or why nothing did.
    pub reasons: Vec<String>,
}

/// A validated policy set with its schema.
pub struct PolicyEngine {
    schema: Schema,
    policies: PolicySet,
    authorizer: Authorizer,
    /// Policy id → file it came from.
    origin: HashMap<String, String>,
    /// [`PolicySources::digest`] of `sources`, computed once: nodes that print
    /// the same digest decide alike.
    digest: String,
    /// The schema and the policy files it was built from: (name, text).
    sources: Option<PolicySources>,
    /// The answers this policy set gave, by the whole question Cedar was
    /// asked: the principal, action, resource and context it sees are all in
    /// the key ([`question_key`]). Cedar's evaluation is a function of the
    /// request, the entities and the policy set only (no clock, no
    /// randomness, no I/O), so the same question gets the same answer: kept
    /// here, it is not evaluated again. Evaluating was the largest single cost
    /// of a retrieval (`perf`: 12.7% of the samples of `cargo bench --bench
    /// consent -- 20000 64 retrievals`). Each policy set has its own, so a
    /// reload or a published set starts empty.
    decided: Kept<String, CedarOutcome>,
}

/// The complete input of [`PolicyEngine::try_authorize`] as one string, each
/// part prefixed with its length so that no two questions share a key.
/// Built on every decision: written into one buffer, no string per part.
fn question_key(q: &Question<'_>, sensitive: &[&str]) -> String {
    use std::fmt::Write;
    fn part(key: &mut String, s: &str) {
        let _ = write!(key, "{}:{s}", s.len());
    }
    fn list<S: AsRef<str>>(key: &mut String, items: &[S]) {
        let _ = write!(key, "{}#", items.len());
        for s in items {
            part(key, s.as_ref());
        }
    }
    let mut key = String::with_capacity(256);
    for s in [
        q.entity.id.as_str(),
        &q.entity.sector,
        &q.entity.status,
        q.action.as_str(),
        &q.license_type.code,
        q.license_type.holder_kind.as_str(),
    ] {
        part(&mut key, s);
    }
    match &q.resource {
        Resource::LicenseType => part(&mut key, "type"),
        Resource::License { id, status } => {
            part(&mut key, "license");
            part(&mut key, id);
            part(&mut key, status);
        }
    }
    part(&mut key, q.purpose);
    list(&mut key, q.fields);
    list(&mut key, sensitive);
    key
}

/// A schema and policy files as text, to publish to other nodes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PolicySources {
    /// (file name, text) of the schema.
    pub schema: (String, String),
    /// (file name, text) of each policy file.
    pub policies: Vec<(String, String)>,
}

fn file_name(name: &str) -> String {
    std::path::Path::new(name)
        .file_name()
        .map_or_else(|| name.to_owned(), |n| n.to_string_lossy().into_owned())
}

/// SHA-256 over each (file name, text) in order, lengths included.
fn digest_of<'a>(parts: impl Iterator<Item = &'a (String, String)>) -> String {
    let mut all = Vec::new();
    for (name, text) in parts {
        for piece in [name.as_bytes(), text.as_bytes()] {
            all.extend_from_slice(&(piece.len() as u64).to_be_bytes());
            all.extend_from_slice(piece);
        }
    }
    crate::audit::hex(&crate::keys::sha256(all))
}

impl PolicySources {
    /// SHA-256 (hex) over the schema and the policy files, names and texts.
    pub fn digest(&self) -> String {
        digest_of(std::iter::once(&self.schema).chain(&self.policies))
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The first labelled line of a diagnostic, if it has one.
fn diagnostic_line(d: &dyn miette::Diagnostic, text: &str) -> usize {
    d.labels()
        .and_then(|mut l| l.next())
        .map_or(0, |l| line_of(text, l.offset()))
}

fn diagnostic_message(d: &dyn miette::Diagnostic, e: &dyn std::fmt::Display) -> String {
    match d.help() {
        Some(help) => format!("{e} ({help})"),
        None => e.to_string(),
    }
}

impl PolicyEngine {
    /// Loads `*.cedarschema` (exactly one) and every `*.cedar` file of `dir`,
    /// and validates the policies against the schema (strict mode). Each
    /// policy needs a unique `@id("…")`.
    pub fn load(dir: &Path) -> Result<Self, PolicyError> {
        let err = |file: &Path, line, message: String| PolicyError {
            file: file.display().to_string(),
            line,
            message,
        };
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| err(dir, 0, format!("cannot read the policy directory: {e}")))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        let schemas: Vec<&PathBuf> = entries
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "cedarschema"))
            .collect();
        let [schema_path] = schemas.as_slice() else {
            return Err(err(
                dir,
                0,
                format!(
                    "expected exactly one .cedarschema file, found {}",
                    schemas.len()
                ),
            ));
        };
        let schema_text =
            std::fs::read_to_string(schema_path).map_err(|e| err(schema_path, 0, e.to_string()))?;
        let mut files = Vec::new();
        for path in entries
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "cedar"))
        {
            let text = std::fs::read_to_string(path).map_err(|e| err(path, 0, e.to_string()))?;
            files.push((path.display().to_string(), text));
        }
        Self::from_texts((&schema_path.display().to_string(), &schema_text), &files)
    }

    /// Builds the engine from a schema and policy files given as (name, text):
    /// parses both, checks each policy has a unique `@id`, and validates the
    /// policies against the schema (strict mode). Errors name the file and line.
    pub fn from_texts(
        (schema_name, schema_text): (&str, &str),
        files: &[(String, String)],
    ) -> Result<Self, PolicyError> {
        let err = |file: &str, line, message: String| PolicyError {
            file: file.to_owned(),
            line,
            message,
        };
        let schema = match Schema::from_cedarschema_str(schema_text) {
            Ok((schema, _warnings)) => schema,
            Err(e) => {
                return Err(err(
                    schema_name,
                    diagnostic_line(&e, schema_text),
                    diagnostic_message(&e, &e),
                ))
            }
        };
        let mut policies = PolicySet::new();
        let mut origin = HashMap::new();
        let mut texts = HashMap::new();
        for (path, text) in files {
            let parsed = PolicySet::from_str(text)
                .map_err(|e| err(path, diagnostic_line(&e, text), diagnostic_message(&e, &e)))?;
            for p in parsed.policies() {
                let Some(id) = p.annotation("id") else {
                    return Err(err(
                        path,
                        0,
                        format!("policy {} needs an @id(\"…\") annotation", p.id()),
                    ));
                };
                let line = text
                    .find(&format!("@id(\"{id}\")"))
                    .map_or(0, |at| line_of(text, at));
                if origin.contains_key(id) {
                    return Err(err(path, line, format!("policy id {id:?} is used twice")));
                }
                policies
                    .add(p.new_id(PolicyId::new(id)))
                    .map_err(|e| err(path, line, e.to_string()))?;
                origin.insert(id.to_owned(), path.clone());
            }
            texts.insert(path.clone(), text);
        }
        let validation = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        if let Some(e) = validation.validation_errors().next() {
            let file = origin
                .get(e.policy_id().to_string().as_str())
                .cloned()
                .unwrap_or_default();
            let line = texts.get(&file).map_or(0, |t| diagnostic_line(e, t));
            return Err(PolicyError {
                file,
                line,
                message: format!("policy {}: {}", e.policy_id(), diagnostic_message(e, e)),
            });
        }
        let sources = PolicySources {
            schema: (file_name(schema_name), schema_text.to_owned()),
            policies: files
                .iter()
                .map(|(n, t)| (file_name(n), t.clone()))
                .collect(),
        };
        Ok(PolicyEngine {
            schema,
            policies,
            authorizer: Authorizer::new(),
            origin,
            digest: sources.digest(),
            sources: Some(sources),
            decided: Kept::default(),
        })
    }

    /// An engine with no policies: every decision is a refusal.
    pub fn deny_all() -> Result<Self, PolicyError> {
        let (schema, _) = Schema::from_cedarschema_str("").map_err(|e| PolicyError {
            file: String::new(),
            line: 0,
            message: e.to_string(),
        })?;
        Ok(PolicyEngine {
            schema,
            policies: PolicySet::new(),
            authorizer: Authorizer::new(),
            origin: HashMap::new(),
            digest: digest_of(std::iter::empty()),
            sources: None,
            decided: Kept::default(),
        })
    }

    /// Builds the engine from published sources.
    pub fn from_sources(sources: &PolicySources) -> Result<Self, PolicyError> {
        Self::from_texts((&sources.schema.0, &sources.schema.1), &sources.policies)
    }

    /// The files this engine was built from (none for the deny-all engine).
    pub fn sources(&self) -> Option<&PolicySources> {
        self.sources.as_ref()
    }

    /// SHA-256 (hex) of the schema and policy files this engine was built from.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.policies.policies().count()
    }

    /// True when there are no policies (then nothing is allowed).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Policy ids with the file each came from.
    pub fn origins(&self) -> &HashMap<String, String> {
        &self.origin
    }

    /// Evaluates the Cedar policies for a question. `sensitive` are the asked
    /// fields whose sensitivity is "sensitive".
    pub fn authorize(&self, q: &Question<'_>, sensitive: &[&str]) -> CedarOutcome {
        let key = question_key(q, sensitive);
        if let Some(known) = self.decided.get(&key) {
            return known;
        }
        match self.try_authorize(q, sensitive) {
            Ok(outcome) => {
                self.decided.put(key, outcome.clone());
                outcome
            }
            // Deny by default: a question the policies cannot even evaluate is refused.
            Err(why) => CedarOutcome {
                allowed: false,
                reasons: vec![format!("policy: cannot evaluate ({why})")],
            },
        }
    }

    fn try_authorize(&self, q: &Question<'_>, sensitive: &[&str]) -> Result<CedarOutcome, String> {
        let uid = |ty: &str, id: &str| -> Result<EntityUid, String> {
            let ty = cedar_policy::EntityTypeName::from_str(&format!("Licensegate::{ty}"))
                .map_err(|e| e.to_string())?;
            Ok(EntityUid::from_type_name_and_id(
                ty,
                cedar_policy::EntityId::new(id),
            ))
        };
        let s = |v: &str| RestrictedExpression::new_string(v.to_owned());
        let principal = uid("Entity", &q.entity.id)?;
        let principal_entity = Entity::new(
            principal.clone(),
            HashMap::from([
                ("sector".to_owned(), s(&q.entity.sector)),
                ("status".to_owned(), s(&q.entity.status)),
            ]),
            HashSet::new(),
        )
        .map_err(|e| e.to_string())?;
        let (resource, resource_entity) = match &q.resource {
            Resource::LicenseType => {
                let r = uid("LicenseType", &q.license_type.code)?;
                let e = Entity::new(
                    r.clone(),
                    HashMap::from([
                        ("type_code".to_owned(), s(&q.license_type.code)),
                        (
                            "holder_kind".to_owned(),
                            s(q.license_type.holder_kind.as_str()),
                        ),
                    ]),
                    HashSet::new(),
                )
                .map_err(|e| e.to_string())?;
                (r, e)
            }
            Resource::License { id, status } => {
                let r = uid("License", id)?;
                let e = Entity::new(
                    r.clone(),
                    HashMap::from([
                        ("type_code".to_owned(), s(&q.license_type.code)),
                        (
                            "holder_kind".to_owned(),
                            s(q.license_type.holder_kind.as_str()),
                        ),
                        ("status".to_owned(), s(status)),
                    ]),
                    HashSet::new(),
                )
                .map_err(|e| e.to_string())?;
                (r, e)
            }
        };
        let action = uid("Action", q.action.as_str())?;
        let context = Context::from_pairs([
            ("purpose".to_owned(), s(q.purpose)),
            (
                "fields".to_owned(),
                RestrictedExpression::new_set(q.fields.iter().map(|f| s(f))),
            ),
            (
                "sensitive_fields".to_owned(),
                RestrictedExpression::new_set(sensitive.iter().map(|f| s(f))),
            ),
        ])
        .map_err(|e| e.to_string())?;
        // The request is built here from typed values, always in the schema's
        // shape, so release builds skip re-validating it on every decision
        // (a tenth of its cost); debug builds, and so the decision-table test
        // over every action, validate each one.
        let schema = cfg!(debug_assertions).then_some(&self.schema);
        let request = Request::new(principal, action, resource, context, schema)
            .map_err(|e| e.to_string())?;
        let entities = Entities::from_entities([principal_entity, resource_entity], None)
            .map_err(|e| e.to_string())?;
        let response = self
            .authorizer
            .is_authorized(&request, &self.policies, &entities);
        let mut ids: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|id| id.to_string())
            .collect();
        ids.sort();
        let allowed = response.decision() == CedarDecision::Allow;
        let mut reasons: Vec<String> = ids.iter().map(|id| format!("policy:{id}")).collect();
        if !allowed && reasons.is_empty() {
            reasons.push(format!(
                "policy: no policy permits {} for sector {} and purpose {} on {}",
                q.action.as_str(),
                q.entity.sector,
                q.purpose,
                q.license_type.code
            ));
        }
        if let Some(e) = response.diagnostics().errors().next() {
            reasons.push(format!("policy: evaluation error {e}"));
        }
        Ok(CedarOutcome { allowed, reasons })
    }
}

/// The live policy set, replaced whole on reload so that requests in flight
/// finish with the set they started with.
pub struct Policies {
    dir: PathBuf,
    current: RwLock<Arc<PolicyEngine>>,
    /// The published generation in force (0: the node's own files, none published yet).
    generation: std::sync::atomic::AtomicI64,
}

impl Policies {
    /// Loads the policies of `dir`; fails on any invalid file.
    pub fn load(dir: &Path) -> Result<Self, PolicyError> {
        Ok(Policies {
            dir: dir.to_path_buf(),
            current: RwLock::new(Arc::new(PolicyEngine::load(dir)?)),
            generation: Default::default(),
        })
    }

    /// No policies (nothing is allowed); `reload` can bring valid ones in.
    pub fn deny_all(dir: &Path) -> Result<Self, PolicyError> {
        Ok(Policies {
            dir: dir.to_path_buf(),
            current: RwLock::new(Arc::new(PolicyEngine::deny_all()?)),
            generation: Default::default(),
        })
    }

    /// The policies in force.
    pub fn current(&self) -> Arc<PolicyEngine> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reloads from disk; keeps the old set when the new one is invalid.
    pub fn reload(&self) -> Result<usize, PolicyError> {
        let engine = Arc::new(PolicyEngine::load(&self.dir)?);
        let n = engine.len();
        self.replace(engine);
        Ok(n)
    }

    /// Puts `engine` in force.
    pub fn replace(&self, engine: Arc<PolicyEngine>) {
        match self.current.write() {
            Ok(mut g) => *g = engine,
            Err(poisoned) => *poisoned.into_inner() = engine,
        }
    }

    /// The published generation in force (0 before any).
    pub fn generation(&self) -> i64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Notes the published generation now in force.
    pub fn set_generation(&self, generation: i64) {
        self.generation
            .store(generation, std::sync::atomic::Ordering::Release);
    }

    /// The directory the policies come from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
