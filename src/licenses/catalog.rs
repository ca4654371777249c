//! The catalog (证照目录): license types, their face fields and validity rules,
//! and the validation of a license's face fields against its type.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::Date;
use utoipa::ToSchema;

use crate::error::{Error, FieldError, Result};
use crate::licenses::identifier::{is_valid_type_code, is_valid_uscc};

/// Who a license type is issued to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HolderKind {
    /// A natural person (自然人).
    Person,
    /// A legal person or other organisation (法人和其他组织).
    Organisation,
}

impl HolderKind {
    /// Database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            HolderKind::Person => "person",
            HolderKind::Organisation => "organisation",
        }
    }

    /// Parses the database spelling.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "person" => Ok(HolderKind::Person),
            "organisation" => Ok(HolderKind::Organisation),
            other => Err(Error::internal(format!("unknown holder kind {other:?}"))),
        }
    }
}

/// The level of the standard that defines a license type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StandardLevel {
    /// National standard (国家标准).
    National,
    /// Municipal standard (市级标准).
    Municipal,
    /// District standard (区级标准).
    District,
}

impl StandardLevel {
    /// Database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StandardLevel::National => "national",
            StandardLevel::Municipal => "municipal",
            StandardLevel::District => "district",
        }
    }

    /// Parses the database spelling.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "national" => Ok(StandardLevel::National),
            "municipal" => Ok(StandardLevel::Municipal),
            "district" => Ok(StandardLevel::District),
            other => Err(Error::internal(format!("unknown standard level {other:?}"))),
        }
    }
}

/// How sensitive a face field is; decides encryption at rest and, later, which
/// purposes may read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Sensitivity {
    /// Printed on the license and harmless to publish (e.g. the license number).
    Public,
    /// Personal information (e.g. name, address): encrypted at rest.
    Personal,
    /// Sensitive personal information (e.g. ID number, photo): encrypted at rest.
    Sensitive,
}

/// The value type of a face field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// Text.
    String,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
    /// A whole number.
    Integer,
    /// true / false.
    Boolean,
    /// One of a fixed list of strings (`values`).
    Enum,
}

/// One face field (证照照面项) of a license type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// Machine name: lowercase letters, digits and `_`, starting with a letter.
    pub key: String,
    /// Label in Chinese, as printed on the license.
    pub label: String,
    /// Label in English.
    pub label_en: String,
    /// Value type.
    #[serde(rename = "type")]
    pub kind: FieldType,
    /// Whether every license of this type must carry it.
    #[serde(default)]
    pub required: bool,
    /// Sensitivity.
    pub sensitivity: Sensitivity,
    /// Longest text, in characters (strings only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u32>,
    /// Allowed values (enums only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

/// Rules for a license's validity period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidityRule {
    /// Longest validity in years from `valid_from`; none means no upper bound.
    #[serde(default)]
    pub max_years: Option<u16>,
    /// Whether a license may be valid indefinitely (长期有效), i.e. have no `valid_until`.
    #[serde(default)]
    pub allow_indefinite: bool,
}

/// A license type as created or updated by an operator.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LicenseTypeSpec {
    /// Catalog code: 4-32 characters of 0-9 A-Z (part of every identifier).
    pub code: String,
    /// Name in Chinese.
    pub name: String,
    /// Name in English.
    pub name_en: String,
    /// Unified social credit code of the issuing unit responsible for this type.
    pub issuer: String,
    /// Who holds licenses of this type.
    pub holder_kind: HolderKind,
    /// Level of the defining standard.
    pub level: StandardLevel,
    /// Face fields.
    pub fields: Vec<FieldSpec>,
    /// Validity rules.
    pub validity: ValidityRule,
}

/// A license type in the catalog.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LicenseType {
    /// The definition.
    #[serde(flatten)]
    pub spec: LicenseTypeSpec,
    /// Number of updates since creation.
    pub revision: i64,
    /// Created at (RFC 3339).
    pub created_at: String,
    /// Last updated at (RFC 3339).
    pub updated_at: String,
}

fn is_valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some('a'..='z'))
        && key.len() <= 64
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

impl LicenseTypeSpec {
    /// Checks the definition itself; returns every problem at once.
    pub fn validate(&self) -> Result<()> {
        let mut errors = Vec::new();
        if !is_valid_type_code(&self.code) {
            errors.push(FieldError::new(
                "code",
                "must be 4-32 characters of 0-9 and A-Z",
            ));
        }
        if self.name.trim().is_empty() {
            errors.push(FieldError::new("name", "must not be empty"));
        }
        if self.name_en.trim().is_empty() {
            errors.push(FieldError::new("name_en", "must not be empty"));
        }
        if !is_valid_uscc(&self.issuer) {
            errors.push(FieldError::new(
                "issuer",
                "must be a unified social credit code with a valid check character",
            ));
        }
        if self.fields.is_empty() {
            errors.push(FieldError::new(
                "fields",
                "a license type needs at least one face field",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, f) in self.fields.iter().enumerate() {
            let at = |what: &str| format!("fields[{i}].{what}");
            if !is_valid_key(&f.key) {
                errors.push(FieldError::new(
                    at("key"),
                    "must start with a-z and hold only a-z, 0-9 and _ (at most 64)",
                ));
            }
            if !seen.insert(f.key.as_str()) {
                errors.push(FieldError::new(
                    at("key"),
                    format!("duplicate key {:?}", f.key),
                ));
            }
            if f.label.trim().is_empty() || f.label_en.trim().is_empty() {
                errors.push(FieldError::new(at("label"), "both labels must be given"));
            }
            match (f.kind, &f.values) {
                (FieldType::Enum, Some(v)) if !v.is_empty() => {}
                (FieldType::Enum, _) => {
                    errors.push(FieldError::new(at("values"), "an enum needs its values"))
                }
                (_, Some(_)) => {
                    errors.push(FieldError::new(at("values"), "only enums have values"))
                }
                _ => {}
            }
            match (f.kind, f.max_length) {
                (FieldType::String, Some(0)) => {
                    errors.push(FieldError::new(at("max_length"), "must be positive"))
                }
                (FieldType::String, _) | (_, None) => {}
                (_, Some(_)) => errors.push(FieldError::new(
                    at("max_length"),
                    "only strings have a max_length",
                )),
            }
        }
        if self.validity.max_years == Some(0) {
            errors.push(FieldError::new("validity.max_years", "must be positive"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid {
                detail: format!(
                    "the license type definition has {} problem(s)",
                    errors.len()
                ),
                errors,
            })
        }
    }

    /// The spec of one field.
    pub fn field(&self, key: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|f| f.key == key)
    }

    /// Checks a license's face fields against this type: every required field
    /// present, no unknown field, each value of the right type. `null` counts as absent.
    pub fn check_fields(&self, fields: &Map<String, Value>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (key, value) in fields {
            let Some(spec) = self.field(key) else {
                errors.push(FieldError::new(
                    format!("fields.{key}"),
                    format!("is not a face field of license type {}", self.code),
                ));
                continue;
            };
            if value.is_null() {
                continue;
            }
            if let Some(problem) = check_value(spec, value) {
                errors.push(FieldError::new(format!("fields.{key}"), problem));
            }
        }
        for spec in self.fields.iter().filter(|f| f.required) {
            if fields.get(&spec.key).is_none_or(Value::is_null) {
                errors.push(FieldError::new(
                    format!("fields.{}", spec.key),
                    format!("is required ({})", spec.label),
                ));
            }
        }
        errors
    }

    /// Checks a validity period against the rules.
    pub fn check_validity(&self, from: Date, until: Option<Date>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        match until {
            None if !self.validity.allow_indefinite => errors.push(FieldError::new(
                "valid_until",
                format!("licenses of type {} must have an end date", self.code),
            )),
            None => {}
            Some(until) => {
                if until < from {
                    errors.push(FieldError::new("valid_until", "is before valid_from"));
                }
                if let Some(years) = self.validity.max_years {
                    let limit = from
                        .replace_year(from.year() + i32::from(years))
                        .unwrap_or_else(|_| {
                            from.saturating_add(time::Duration::days(365 * i64::from(years)))
                        });
                    if until > limit {
                        errors.push(FieldError::new(
                            "valid_until",
                            format!("is more than {years} years after valid_from"),
                        ));
                    }
                }
            }
        }
        errors
    }
}

fn check_value(spec: &FieldSpec, value: &Value) -> Option<String> {
    match spec.kind {
        FieldType::String => match value.as_str() {
            None => Some("must be a string".into()),
            Some(s) if s.trim().is_empty() => Some("must not be empty".into()),
            Some(s) => match spec.max_length {
                Some(max) if s.chars().count() > max as usize => {
                    Some(format!("is longer than {max} characters"))
                }
                _ => None,
            },
        },
        FieldType::Date => match value.as_str().map(crate::store::parse_date) {
            Some(Ok(_)) => None,
            _ => Some("must be a date YYYY-MM-DD".into()),
        },
        FieldType::Integer => {
            (!(value.is_i64() || value.is_u64())).then(|| "must be an integer".into())
        }
        FieldType::Boolean => (!value.is_boolean()).then(|| "must be true or false".into()),
        FieldType::Enum => {
            let allowed = spec.values.as_deref().unwrap_or_default();
            match value.as_str() {
                Some(s) if allowed.iter().any(|v| v == s) => None,
                _ => Some(format!("must be one of {}", allowed.join(", "))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> LicenseTypeSpec {
        serde_json::from_value(json!({
            "code": "TEST0001", "name": "测试证", "name_en": "Test", "issuer": "91350100M000100Y43",
            "holder_kind": "person", "level": "national",
            "fields": [
                {"key": "name", "label": "姓名", "label_en": "Name", "type": "string", "required": true, "sensitivity": "personal", "max_length": 5},
                {"key": "born", "label": "出生", "label_en": "Born", "type": "date", "sensitivity": "personal"},
                {"key": "sex", "label": "性别", "label_en": "Sex", "type": "enum", "values": ["男", "女"], "sensitivity": "personal"}
            ],
            "validity": {"max_years": 10, "allow_indefinite": false}
        })).unwrap()
    }

    #[test]
    fn field_checks() {
        let s = spec();
        s.validate().unwrap();
        let ok = json!({"name": "张三", "born": "1990-01-02", "sex": "男"});
        assert!(s.check_fields(ok.as_object().unwrap()).is_empty());
        let bad = json!({"born": "1990-13-02", "sex": "x", "extra": 1, "name": 5});
        let errs = s.check_fields(bad.as_object().unwrap());
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"fields.born"));
        assert!(fields.contains(&"fields.sex"));
        assert!(fields.contains(&"fields.extra"));
        assert!(fields.contains(&"fields.name"));
        let missing = json!({"born": "1990-01-02"});
        assert_eq!(
            s.check_fields(missing.as_object().unwrap())[0].field,
            "fields.name"
        );
    }

    #[test]
    fn validity_checks() {
        let s = spec();
        let d = |s: &str| crate::store::parse_date(s).unwrap();
        assert!(s
            .check_validity(d("2020-01-01"), Some(d("2030-01-01")))
            .is_empty());
        assert!(!s
            .check_validity(d("2020-01-01"), Some(d("2030-01-02")))
            .is_empty());
        assert!(!s.check_validity(d("2020-01-01"), None).is_empty());
        assert!(!s
            .check_validity(d("2020-01-01"), Some(d("2019-01-01")))
            .is_empty());
    }

    #[test]
    fn definition_checks() {
        let mut s = spec();
        s.fields.push(s.fields[0].clone());
        s.code = "bad".into();
        let Err(Error::Invalid { errors, .. }) = s.validate() else {
            panic!()
        };
        assert!(errors.len() >= 2);
    }
}
