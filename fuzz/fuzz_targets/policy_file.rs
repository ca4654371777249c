//! Policy files as an operator loads them: a Cedar policy file checked against
//! the shipped schema, or a schema file with the shipped policies.
#![no_main]
use libfuzzer_sys::fuzz_target;
use licensegate::policy::engine::PolicyEngine;

const SCHEMA: &str = include_str!("../../policies/licensegate.cedarschema");
const GUARDS: &str = include_str!("../../policies/guards.cedar");

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if mode % 2 == 0 {
        let _ = PolicyEngine::from_texts(
            ("fuzz.cedarschema", SCHEMA),
            &[("fuzz.cedar".to_owned(), text.to_owned())],
        );
    } else {
        let _ = PolicyEngine::from_texts(
            (("fuzz.cedarschema"), text),
            &[("guards.cedar".to_owned(), GUARDS.to_owned())],
        );
    }
});
