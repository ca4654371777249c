//! The shipped policies and the decision function, case by case.

use std::collections::BTreeMap;
use std::path::Path;

use licensegate::licenses::catalog::LicenseTypeSpec;
use licensegate::policy::{
    decide, EntityFacts, Flow, PolicyAction, PolicyEngine, Question, Resource, Scenario,
};

fn catalog() -> BTreeMap<String, LicenseTypeSpec> {
    let units = licensegate::demo::issuers();
    licensegate::demo::catalog(&units)
        .unwrap()
        .into_iter()
        .map(|s| (s.code.clone(), s))
        .collect()
}

fn scenario(purpose: &str, types: &[(&str, &[&str])], flows: &[Flow]) -> Scenario {
    Scenario {
        purpose: purpose.into(),
        description: purpose.replace('_', " "),
        license_types: types.iter().map(|(t, _)| (*t).to_owned()).collect(),
        fields: types
            .iter()
            .map(|(t, f)| ((*t).to_owned(), f.iter().map(|s| (*s).to_owned()).collect()))
            .collect(),
        max_consent_days: 30,
        max_retrievals: 3,
        flows: flows.to_vec(),
    }
}

fn use_lists() -> BTreeMap<&'static str, Vec<Scenario>> {
    use Flow::*;
    BTreeMap::from([
        (
            "bank",
            vec![
                scenario(
                    "account_opening",
                    &[
                        (
                            "JMSFZ",
                            &["name", "sex", "birth_date", "address", "id_number"],
                        ),
                        ("YYZZ", &["uscc", "name", "legal_representative", "address"]),
                    ],
                    &[Redirect, Decoupled, Verify],
                ),
                scenario(
                    "loan",
                    &[("JMSFZ", &["name", "id_number"])],
                    &[Redirect, Decoupled],
                ),
            ],
        ),
        (
            "insurer",
            vec![
                scenario(
                    "insurance_underwriting",
                    &[("JMSFZ", &["name", "id_number", "birth_date"])],
                    &[Redirect],
                ),
                scenario(
                    "claim_settlement",
                    &[("JDCJSZ", &["license_no", "name", "vehicle_class"])],
                    &[Redirect, ShowLicense],
                ),
            ],
        ),
        (
            "logistics",
            vec![scenario(
                "carrier_onboarding",
                &[
                    ("JMSFZ", &["name", "id_number"]),
                    (
                        "DLYSJYXKZ",
                        &["permit_no", "operator_name", "uscc", "business_scope"],
                    ),
                    ("JDCJSZ", &["license_no", "name", "vehicle_class"]),
                ],
                &[Redirect, ShowLicense, Verify],
            )],
        ),
        (
            "hospital",
            vec![
                scenario(
                    "patient_registration",
                    &[("JMSFZ", &["name", "sex", "birth_date", "id_number"])],
                    &[ShowLicense, Decoupled],
                ),
                scenario(
                    "physician_credentialing",
                    &[(
                        "YSZYZS",
                        &[
                            "name",
                            "certificate_no",
                            "qualification_level",
                            "practice_category",
                            "practice_scope",
                            "id_number",
                        ],
                    )],
                    &[Redirect, Verify],
                ),
            ],
        ),
        ("telecom", vec![]),
    ])
}

struct Case {
    sector: &'static str,
    entity_status: &'static str,
    action: PolicyAction,
    license_type: &'static str,
    license_status: Option<&'static str>,
    purpose: &'static str,
    fields: &'static [&'static str],
    flow: Option<Flow>,
    allowed: bool,
    reason: &'static str,
}

#[allow(clippy::too_many_arguments)] // one row of the decision table, read left to right
const fn case(
    sector: &'static str,
    action: PolicyAction,
    license_type: &'static str,
    license_status: Option<&'static str>,
    purpose: &'static str,
    fields: &'static [&'static str],
    allowed: bool,
    reason: &'static str,
) -> Case {
    Case {
        sector,
        entity_status: "active",
        action,
        license_type,
        license_status,
        purpose,
        fields,
        flow: None,
        allowed,
        reason,
    }
}

const fn suspended(mut c: Case) -> Case {
    c.entity_status = "suspended";
    c
}

const fn via(mut c: Case, flow: Flow) -> Case {
    c.flow = Some(flow);
    c
}

#[test]
fn decision_table() {
    use PolicyAction::*;
    const VALID: Option<&str> = Some("valid");
    let cases = [
        // Banks.
        case(
            "bank",
            Request,
            "JMSFZ",
            None,
            "account_opening",
            &["name", "id_number"],
            true,
            "policy:bank-account-opening-and-loans",
        ),
        case(
            "bank",
            Retrieve,
            "JMSFZ",
            VALID,
            "account_opening",
            &["name"],
            true,
            "use_list:account_opening",
        ),
        case(
            "bank",
            Retrieve,
            "JMSFZ",
            Some("suspended"),
            "account_opening",
            &["name"],
            false,
            "policy:only-valid-licenses-are-retrieved",
        ),
        case(
            "bank",
            Retrieve,
            "JMSFZ",
            Some("cancelled"),
            "account_opening",
            &["name"],
            false,
            "policy:only-valid-licenses-are-retrieved",
        ),
        case(
            "bank",
            Retrieve,
            "JMSFZ",
            Some("expired"),
            "account_opening",
            &["name"],
            false,
            "policy:only-valid-licenses-are-retrieved",
        ),
        case(
            "bank",
            Verify,
            "JMSFZ",
            Some("cancelled"),
            "account_opening",
            &["name"],
            true,
            "policy:bank-account-opening-and-loans",
        ),
        suspended(case(
            "bank",
            Request,
            "JMSFZ",
            None,
            "account_opening",
            &["name"],
            false,
            "policy:suspended-entities-get-nothing",
        )),
        suspended(case(
            "bank",
            Retrieve,
            "JMSFZ",
            VALID,
            "loan",
            &["name"],
            false,
            "policy:suspended-entities-get-nothing",
        )),
        case(
            "bank",
            Request,
            "JDCJSZ",
            None,
            "account_opening",
            &["name"],
            false,
            "no policy permits",
        ),
        case(
            "bank",
            Request,
            "JMSFZ",
            None,
            "marketing",
            &["name"],
            false,
            "no approved scenario for purpose marketing",
        ),
        case(
            "bank",
            Request,
            "YYZZ",
            None,
            "account_opening",
            &["uscc", "name"],
            true,
            "policy:bank-account-opening-and-loans",
        ),
        case(
            "bank",
            Request,
            "YYZZ",
            None,
            "loan",
            &["uscc"],
            false,
            "license type YYZZ is not approved for purpose loan",
        ),
        case(
            "bank",
            Request,
            "JMSFZ",
            None,
            "loan",
            &["name", "address"],
            false,
            "field(s) address of JMSFZ are not approved",
        ),
        case(
            "bank",
            Request,
            "JMSFZ",
            None,
            "account_opening",
            &["photo"],
            false,
            "catalog: photo not face field(s) of JMSFZ",
        ),
        via(
            case(
                "bank",
                Request,
                "JMSFZ",
                None,
                "account_opening",
                &["name"],
                true,
                "use_list:account_opening",
            ),
            Flow::Redirect,
        ),
        via(
            case(
                "bank",
                Request,
                "JMSFZ",
                None,
                "account_opening",
                &["name"],
                false,
                "flow show_license is not approved",
            ),
            Flow::ShowLicense,
        ),
        // Insurers.
        case(
            "insurer",
            Request,
            "JMSFZ",
            None,
            "insurance_underwriting",
            &["name", "id_number"],
            true,
            "policy:insurer-underwriting-and-claims",
        ),
        case(
            "insurer",
            Retrieve,
            "JDCJSZ",
            VALID,
            "claim_settlement",
            &["license_no", "vehicle_class"],
            true,
            "policy:insurer-underwriting-and-claims",
        ),
        case(
            "insurer",
            Request,
            "YYZZ",
            None,
            "insurance_underwriting",
            &["name"],
            false,
            "no policy permits",
        ),
        case(
            "insurer",
            Request,
            "JMSFZ",
            None,
            "claim_settlement",
            &["name"],
            false,
            "license type JMSFZ is not approved for purpose claim_settlement",
        ),
        // Logistics.
        case(
            "logistics",
            Request,
            "DLYSJYXKZ",
            None,
            "carrier_onboarding",
            &["permit_no", "operator_name"],
            true,
            "policy:logistics-carrier-onboarding",
        ),
        case(
            "logistics",
            Request,
            "JDCJSZ",
            None,
            "carrier_onboarding",
            &["license_no", "vehicle_class"],
            true,
            "policy:logistics-carrier-onboarding",
        ),
        case(
            "logistics",
            Retrieve,
            "JMSFZ",
            VALID,
            "carrier_onboarding",
            &["name", "id_number"],
            true,
            "use_list:carrier_onboarding",
        ),
        case(
            "logistics",
            Request,
            "YYZZ",
            None,
            "carrier_onboarding",
            &["uscc"],
            false,
            "no policy permits",
        ),
        case(
            "logistics",
            Request,
            "JMSFZ",
            None,
            "account_opening",
            &["name"],
            false,
            "no policy permits",
        ),
        suspended(case(
            "logistics",
            Retrieve,
            "DLYSJYXKZ",
            VALID,
            "carrier_onboarding",
            &["permit_no"],
            false,
            "policy:suspended-entities-get-nothing",
        )),
        case(
            "logistics",
            Retrieve,
            "DLYSJYXKZ",
            Some("expired"),
            "carrier_onboarding",
            &["permit_no"],
            false,
            "policy:only-valid-licenses-are-retrieved",
        ),
        // Hospitals.
        case(
            "hospital",
            Request,
            "JMSFZ",
            None,
            "patient_registration",
            &["name", "id_number"],
            true,
            "policy:hospital-patient-registration",
        ),
        case(
            "hospital",
            Request,
            "YSZYZS",
            None,
            "physician_credentialing",
            &["name", "certificate_no"],
            true,
            "policy:hospital-physician-credentialing",
        ),
        case(
            "hospital",
            Request,
            "YSZYZS",
            None,
            "physician_credentialing",
            &["name", "id_number"],
            false,
            "policy:sensitive-fields-need-an-identifying-purpose",
        ),
        case(
            "hospital",
            Request,
            "JMSFZ",
            None,
            "physician_credentialing",
            &["name"],
            false,
            "no policy permits",
        ),
        case(
            "hospital",
            Request,
            "YSZYZS",
            None,
            "patient_registration",
            &["name"],
            false,
            "no policy permits",
        ),
        case(
            "hospital",
            Retrieve,
            "YSZYZS",
            Some("suspended"),
            "physician_credentialing",
            &["certificate_no"],
            false,
            "policy:only-valid-licenses-are-retrieved",
        ),
        case(
            "hospital",
            Verify,
            "YSZYZS",
            Some("suspended"),
            "physician_credentialing",
            &["certificate_no"],
            true,
            "policy:hospital-physician-credentialing",
        ),
        // A sector the rules do not name, and an entity without an approved use list.
        case(
            "telecom",
            Request,
            "JMSFZ",
            None,
            "account_opening",
            &["name"],
            false,
            "no policy permits",
        ),
        case(
            "telecom",
            Request,
            "JMSFZ",
            None,
            "account_opening",
            &["name"],
            false,
            "no approved scenario for purpose account_opening",
        ),
    ];
    assert!(cases.len() >= 30);
    let engine = PolicyEngine::load(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("policies")
            .as_path(),
    )
    .unwrap();
    let catalog = catalog();
    let lists = use_lists();
    // The engine keeps each answer by its whole question: a first pass asks
    // about a license of its own per case; the second asks every case about
    // one shared license, so any part of the question left out of the key
    // would hand one case another's answer; the third repeats the second from
    // what was kept.
    for (pass, (i, c)) in (0..3).flat_map(|p| cases.iter().enumerate().map(move |c| (p, c))) {
        let entity = EntityFacts {
            id: format!("ent_{}", c.sector),
            sector: c.sector.into(),
            status: c.entity_status.into(),
        };
        let fields: Vec<String> = c.fields.iter().map(|f| (*f).to_owned()).collect();
        let q = Question {
            entity: &entity,
            action: c.action,
            license_type: &catalog[c.license_type],
            resource: match c.license_status {
                None => Resource::LicenseType,
                Some(status) => Resource::License {
                    id: if pass == 0 {
                        format!("L-{i}")
                    } else {
                        "L-shared".into()
                    },
                    status: status.into(),
                },
            },
            purpose: c.purpose,
            fields: &fields,
            flow: c.flow,
        };
        let d = decide(&engine, &lists[c.sector], &q);
        assert_eq!(
            d.allowed, c.allowed,
            "pass {pass}, case {i} ({} {:?} {} {}): {:?}",
            c.sector, c.action, c.license_type, c.purpose, d.reasons
        );
        assert!(
            d.reasons.iter().any(|r| r.contains(c.reason)),
            "case {i} ({} {:?} {} {}): expected a reason containing {:?}, got {:?}",
            c.sector,
            c.action,
            c.license_type,
            c.purpose,
            c.reason,
            d.reasons
        );
    }
}

#[test]
fn invalid_policies_are_refused_naming_file_and_line() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let copy = |extra: &str, name: &str| {
        let dir = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(&shipped).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
        std::fs::write(dir.path().join(name), extra).unwrap();
        dir
    };
    // Syntax error on line 3.
    let dir = copy("// broken\n@id(\"x\")\npermit (principal, action, resource) when { principal.sector == };\n", "zz.cedar");
    let e = PolicyEngine::load(dir.path()).err().expect("refused");
    assert!(e.file.ends_with("zz.cedar") && e.line == 3, "{e}");
    // Type error against the schema: no such attribute.
    let dir = copy("\n\n@id(\"typo\")\npermit (principal, action, resource) when { principal.secter == \"bank\" };\n", "zz.cedar");
    let e = PolicyEngine::load(dir.path()).err().expect("refused");
    assert!(
        e.file.ends_with("zz.cedar") && e.message.contains("typo"),
        "{e}"
    );
    assert!(e.line >= 3, "{e}");
    // Missing @id, duplicate @id.
    let dir = copy("permit (principal, action, resource);\n", "zz.cedar");
    assert!(PolicyEngine::load(dir.path())
        .err()
        .expect("refused")
        .message
        .contains("@id"));
    let dir = copy(
        "@id(\"bank-account-opening-and-loans\")\nforbid (principal, action, resource);\n",
        "zz.cedar",
    );
    let e = PolicyEngine::load(dir.path()).err().expect("refused");
    assert!(e.message.contains("used twice") && e.line == 1, "{e}");
}

#[test]
fn without_policies_nothing_is_allowed() {
    let engine = PolicyEngine::deny_all().unwrap();
    let catalog = catalog();
    let lists = use_lists();
    let entity = EntityFacts {
        id: "ent_bank".into(),
        sector: "bank".into(),
        status: "active".into(),
    };
    let fields = vec!["name".to_owned()];
    let q = Question {
        entity: &entity,
        action: PolicyAction::Request,
        license_type: &catalog["JMSFZ"],
        resource: Resource::LicenseType,
        purpose: "account_opening",
        fields: &fields,
        flow: None,
    };
    let d = decide(&engine, &lists["bank"], &q);
    assert!(!d.allowed, "{d:?}");
    assert!(d.reasons.iter().any(|r| r.starts_with("policy:")));
}
