//! Several broker nodes on one database, as behind a load balancer: the
//! in-process server of the test and two `licensegate serve` processes share
//! the database, the data directory (master key) and the public URL. A client
//! sees the same thing whichever node it reaches: revocations and suspensions
//! stop reads on the other nodes on the very next call, budgets are exact
//! across nodes, the audit log stays one chain, and a key rotation reaches
//! every node.

mod common;

use common::flows::*;
use common::*;
use serde_json::{json, Value};

/// Two more nodes on the world's database, answering as the same broker;
/// returns them and the base URLs of all three (the world's first).
async fn more_nodes(w: &World, extra: &[&str]) -> (Vec<(ServerProcess, String)>, Vec<String>) {
    let mut nodes = Vec::new();
    for _ in 0..2 {
        nodes.push(spawn_server(&node_args(w), extra, false).await);
    }
    let bases = std::iter::once(w.s.base.clone())
        .chain(nodes.iter().map(|(_, b)| b.clone()))
        .collect();
    (nodes, bases)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_budgets_and_the_chain_hold_across_nodes() {
    let w = world_with(|_| {}).await;
    let (nodes, bases) = more_nodes(&w, &[]).await;
    let (id, secret) = bank(&w, "91310000MA1MNDTB0", json!({})).await;
    let secret = secret.unwrap();
    let rar = details(Some(30), Some(3));

    // The license list, read on the second node for a consent made on the first.
    let t = consent_tokens(&w, &id, &secret, &rar).await;
    let (status, covered) = get_on(&w, &bases[1], &access_token(&t), "/api/v1/licenses").await;
    assert_eq!(status, 200, "{covered}");
    assert_eq!(covered["retrievals_left"], 3);
    let path = format!(
        "/api/v1/licenses/{}",
        covered["licenses"][0]["identifier"].as_str().unwrap()
    );

    // Budget of 3, 90 simultaneous reads spread over three nodes: exactly 3 served.
    let before = actions(&w).await.len();
    let reads = (0..90).map(|i| {
        let (w, base, token, path) = (&w, bases[i % 3].clone(), access_token(&t), path.clone());
        async move { get_on(w, &base, &token, &path).await }
    });
    let results = futures_util::future::join_all(reads).await;
    let served: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, b)| b)
        .collect();
    let refused = results.iter().filter(|(s, _)| *s == 403).count();
    assert_eq!((served.len(), refused), (3, 87), "{results:?}");
    let after = actions(&w).await;
    let new = &after[before..];
    assert_eq!(reads_and_budget_refusals(new), (3, 87));
    // Each answer's audit record is the retrieval it names.
    for body in &served {
        let seq = body["audit_seq"].as_i64().unwrap();
        let rec = w.s.services.store.audit_range(seq - 1, seq).await.unwrap();
        assert_eq!(rec[0].action, "license.retrieved");
    }

    // A consent revoked on the third node: the next read on the first and second is refused.
    let t2 = consent_tokens(&w, &id, &secret, &rar).await;
    assert_eq!(
        get_on(&w, &bases[1], &access_token(&t2), &path).await.0,
        200
    );
    let cc = client_token(&w, &bases[2], &id, &secret).await;
    let res =
        w.s.http
            .delete(format!(
                "{}/grants/{}",
                bases[2],
                t2["grant_id"].as_str().unwrap()
            ))
            .bearer_auth(access_token(&cc))
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), 204);
    for base in &bases[..2] {
        let (s, b) = get_on(&w, base, &access_token(&t2), &path).await;
        assert_eq!(s, 401, "{base}: {b}");
        assert!(b.to_string().contains("consent was revoked"), "{b}");
    }

    // A token revoked (RFC 7009) on the second node: refused on the third, inactive on the first.
    let t3 = consent_tokens(&w, &id, &secret, &rar).await;
    let res =
        w.s.http
            .post(format!("{}/revoke", bases[1]))
            .basic_auth(&id, Some(&secret))
            .form(&[("token", access_token(&t3).as_str())])
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        get_on(&w, &bases[2], &access_token(&t3), &path).await.0,
        401
    );
    let (_, introspection) = client_form(
        &w,
        &bases[0],
        "/introspect",
        &id,
        &secret,
        &[("token", access_token(&t3).as_str())],
    )
    .await;
    assert_eq!(introspection["active"], false, "{introspection}");

    // The use list and the licenses are kept in each node's memory under the
    // database's change generations: a scenario withdrawn, or a license
    // suspended, through the first node is refused on the others' next call.
    let kept: Vec<Value> =
        futures_util::future::join_all((0..2).map(|_| consent_tokens(&w, &id, &secret, &rar)))
            .await;
    for (t, base) in kept.iter().zip(&bases[1..]) {
        assert_eq!(
            get_on(&w, base, &access_token(t), &path).await.0,
            200,
            "{base}"
        );
    }
    assert_eq!(set_bank_scenario_withdrawn(&w, &id, true).await, 200);
    for (t, base) in kept.iter().zip(&bases[1..]) {
        let (s, b) = get_on(&w, base, &access_token(t), &path).await;
        assert_eq!(s, 403, "{base}: {b}");
    }
    assert_eq!(set_bank_scenario_withdrawn(&w, &id, false).await, 200);
    for (t, base) in kept.iter().zip(&bases[1..]) {
        assert_eq!(
            get_on(&w, base, &access_token(t), &path).await.0,
            200,
            "{base}"
        );
    }

    // The entity suspended through the first node: its next read on the others is refused.
    let t4 = consent_tokens(&w, &id, &secret, &rar).await;
    assert_eq!(
        get_on(&w, &bases[2], &access_token(&t4), &path).await.0,
        200
    );
    let res =
        w.s.post_json(
            &w.op,
            &format!("/admin/v1/entities/{id}/suspend"),
            &json!({"reason": "inspection"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    for base in &bases[1..] {
        assert_eq!(
            get_on(&w, base, &access_token(&t4), &path).await.0,
            401,
            "{base}"
        );
    }

    // One chain: gapless and verified, with the records of every node.
    stop_nodes(nodes).await;
    let report = assert_chain_verifies(&w.s.cli_args());
    assert!(
        report["records"].as_i64().unwrap() as usize >= after.len(),
        "{report}"
    );
    w.s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_reaches_every_node() {
    let w = world_with(|s| s.key_refresh = Some(1)).await;
    let (nodes, bases) = more_nodes(&w, &["--key-refresh", "1"]).await;
    let (id, secret) = bank(&w, "91310000MA1KRTTB0", json!({})).await;
    let secret = secret.unwrap();
    let kid = |t: &Value| jwt_part(t["access_token"].as_str().unwrap(), 0)["kid"].clone();

    // Every node signs with the same key, published by every node.
    let before: Vec<Value> =
        futures_util::future::join_all(bases.iter().map(|b| client_token(&w, b, &id, &secret)))
            .await;
    let old_kid = kid(&before[0]);
    assert!(before.iter().all(|t| kid(t) == old_kid));

    // Rotated on the third node.
    let rotated: Value = {
        let res =
            w.s.http
                .post(format!("{}/admin/v1/keys/rotate", bases[2]))
                .bearer_auth(&w.op)
                .json(&json!({"owner": "broker"}))
                .send()
                .await
                .unwrap();
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    };
    let new_kid = rotated["kid"].clone();
    assert_ne!(new_kid, old_kid);

    // Every node publishes the new key at once, and still the old one.
    for base in &bases {
        let jwks: Value =
            w.s.http
                .get(format!("{base}/jwks.json"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        let kids: Vec<&Value> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| &k["kid"])
            .collect();
        assert!(
            kids.contains(&&new_kid) && kids.contains(&&old_kid),
            "{base}: {jwks}"
        );
    }
    // Within the refresh time every node signs with the new key...
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let jwks: Value =
        w.s.http
            .get(format!("{}/jwks.json", bases[1]))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    for base in &bases {
        let t = client_token(&w, base, &id, &secret).await;
        assert_eq!(kid(&t), new_kid, "{base}");
        verify_with_jwks(t["access_token"].as_str().unwrap(), &jwks);
    }
    // ...tokens signed by the old key on any node are still accepted on the others...
    for (i, t) in before.iter().enumerate() {
        let other = &bases[(i + 1) % 3];
        let (_, res) = client_form(
            &w,
            other,
            "/introspect",
            &id,
            &secret,
            &[("token", access_token(t).as_str())],
        )
        .await;
        assert_eq!(res["active"], true, "{other}: {res}");
    }
    // ...and a consent token signed with the new key on one node is served by the others.
    let t = consent_tokens(&w, &id, &secret, &details(Some(30), Some(3))).await;
    assert_eq!(kid(&t), new_kid);
    for base in &bases[1..] {
        let (s, b) = get_on(&w, base, &access_token(&t), "/api/v1/licenses").await;
        assert_eq!(s, 200, "{base}: {b}");
    }
    stop_nodes(nodes).await;
    w.s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_consents_read_on_every_node_at_once() {
    // Group commits of several nodes spend budgets of different consents: they
    // must not lock consent rows in different orders (PostgreSQL would abort
    // one as a deadlock victim and its reads would get 503).
    let w = world_with(|_| {}).await;
    let (nodes, bases) = more_nodes(&w, &[]).await;
    let (id, secret) = bank_with_budget(&w, "91310000MA1MCNTB0", 200).await;
    let rar = details(Some(30), Some(200));
    let mut tokens = Vec::new();
    for _ in 0..8 {
        tokens.push(access_token(&consent_tokens(&w, &id, &secret, &rar).await));
    }
    let (_, covered) = get_on(&w, &bases[0], &tokens[0], "/api/v1/licenses").await;
    let path = format!(
        "/api/v1/licenses/{}",
        covered["licenses"][0]["identifier"].as_str().unwrap()
    );
    let before = actions(&w).await.len();
    let workers = (0..64).map(|k| {
        let (w, bases, tokens, path) = (&w, &bases, &tokens, &path);
        async move {
            let mut statuses = Vec::new();
            for i in 0..20 {
                let base = &bases[(k + i) % bases.len()];
                let token = &tokens[(k + i * 3) % tokens.len()];
                statuses.push(get_on(w, base, token, path).await);
            }
            statuses
        }
    });
    let results: Vec<(u16, Value)> = futures_util::future::join_all(workers)
        .await
        .into_iter()
        .flatten()
        .collect();
    let failed: Vec<&(u16, Value)> = results.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of 1280 reads refused: {failed:?}",
        failed.len()
    );
    let retrieved = actions(&w).await[before..]
        .iter()
        .filter(|(a, _, _)| a == "license.retrieved")
        .count();
    assert_eq!(retrieved, 1280);
    for token in &tokens {
        let (_, c) = get_on(&w, &bases[1], token, "/api/v1/licenses").await;
        assert_eq!(c["retrievals_left"], 40, "{c}");
    }
    stop_nodes(nodes).await;
    w.s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_reload_reaches_every_node() {
    let policies = copy_of_policies();
    let dir = policies.path().to_path_buf();
    let w = world_with(move |s| s.policy_dir = Some(dir)).await;
    let (nodes, bases) = more_nodes(&w, &[]).await;
    let (id, secret) = bank_with_budget(&w, "91310000MA1PLRTB0", 100).await;
    let token =
        access_token(&consent_tokens(&w, &id, &secret, &details(Some(30), Some(100))).await);
    let (_, covered) = get_on(&w, &bases[1], &token, "/api/v1/licenses").await;
    let path = format!(
        "/api/v1/licenses/{}",
        covered["licenses"][0]["identifier"].as_str().unwrap()
    );
    for base in &bases {
        assert_eq!(get_on(&w, base, &token, &path).await.0, 200);
    }
    // Until the node's set changes, reads on `base` answer `status` (within 3 s).
    let settle = |base: String, status: u16| {
        let (w, token, path) = (&w, token.clone(), path.clone());
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
            loop {
                let (s, b) = get_on(w, &base, &token, &path).await;
                if s == status {
                    return;
                }
                assert!(std::time::Instant::now() < deadline, "{base}: {s} {b}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };

    // An operator adds a prohibition to the first node's files and reloads it there:
    // the other nodes, whose own files lack it, apply it too.
    std::fs::write(
        policies.path().join("pause.cedar"),
        "@id(\"pause-account-opening\")\n\
         forbid (principal, action == Licensegate::Action::\"retrieve\", resource)\n\
         when { context.purpose == \"account_opening\" };\n",
    )
    .unwrap();
    let res =
        w.s.post_json(&w.op, "/admin/v1/policies/reload", &json!({}))
            .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    for base in &bases {
        settle(base.clone(), 403).await;
    }
    let (_, refused) = get_on(&w, &bases[2], &token, &path).await;
    assert!(
        refused.to_string().contains("pause-account-opening"),
        "{refused}"
    );
    // A node started now puts the published set in force from its first request.
    let late = spawn_server(&node_args(&w), &[], false).await;
    assert_eq!(get_on(&w, &late.1, &token, &path).await.0, 403);
    stop_nodes(vec![late]).await;

    // Reloaded on the third node from its own (shipped) files: allowed everywhere again.
    let res =
        w.s.http
            .post(format!("{}/admin/v1/policies/reload", bases[2]))
            .bearer_auth(&w.op)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), 200);
    for base in &bases {
        settle(base.clone(), 200).await;
    }
    stop_nodes(nodes).await;
    w.s.stop().await;
}
