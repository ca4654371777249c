//! Decisions per second on one core, with the shipped policies, for
//! questions never asked before and for one asked again:
//!
//!     cargo bench --bench policy

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use licensegate::policy::{
    decide, EntityFacts, Flow, PolicyAction, PolicyEngine, Question, Resource, Scenario,
};

// As in the server binary (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let engine = PolicyEngine::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"))
        .expect("policies");
    let units = licensegate::demo::issuers();
    let catalog = licensegate::demo::catalog(&units).expect("catalog");
    let id_card = catalog.iter().find(|t| t.code == "JMSFZ").expect("JMSFZ");
    let scenarios = vec![Scenario {
        purpose: "account_opening".into(),
        description: "open an account".into(),
        license_types: vec!["JMSFZ".into(), "YYZZ".into()],
        fields: BTreeMap::from([(
            "JMSFZ".into(),
            vec!["name".into(), "id_number".into(), "address".into()],
        )]),
        max_consent_days: 30,
        max_retrievals: 3,
        flows: vec![Flow::Redirect],
    }];
    let entity = EntityFacts {
        id: "ent_bank".into(),
        sector: "bank".into(),
        status: "active".into(),
    };
    let fields = vec!["name".to_owned(), "id_number".to_owned()];
    let q = Question {
        entity: &entity,
        action: PolicyAction::Retrieve,
        license_type: id_card,
        resource: Resource::License {
            id: "1.2.156.3005.2.JMSFZ.11310000002420005R.00000001.001.0".into(),
            status: "valid".into(),
        },
        purpose: "account_opening",
        fields: &fields,
        flow: Some(Flow::Redirect),
    };
    for _ in 0..2_000 {
        assert!(decide(&engine, &scenarios, &q).allowed);
    }
    // Each question about a license of its own (every one evaluated by
    // Cedar), then one question asked again and again (answered from what
    // the engine kept: see `PolicyEngine::authorize`).
    let n = 100_000;
    for (what, distinct) in [
        ("a new license each time", true),
        ("the same question again", false),
    ] {
        let questions: Vec<Question<'_>> = (0..n)
            .map(|i| Question {
                resource: Resource::License {
                    id: if distinct {
                        format!("1.2.156.3005.2.JMSFZ.11310000002420005R.{i:08}.001.0")
                    } else {
                        "1.2.156.3005.2.JMSFZ.11310000002420005R.00000001.001.0".into()
                    },
                    status: "valid".into(),
                },
                ..q.clone()
            })
            .collect();
        let mut samples = Vec::with_capacity(n);
        let all = Instant::now();
        for q in &questions {
            let t = Instant::now();
            let d = decide(&engine, &scenarios, q);
            samples.push(t.elapsed().as_nanos() as u64);
            std::hint::black_box(d);
        }
        let secs = all.elapsed().as_secs_f64();
        samples.sort_unstable();
        let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0;
        println!(
            "policy decisions (Cedar + use list), one thread, {what}: {:.0} decisions/s, median {:.1} µs, p99 {:.1} µs",
            n as f64 / secs,
            pct(0.5),
            pct(0.99)
        );
    }
}
