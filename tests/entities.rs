//! Entities, use lists and policy decisions over the real HTTP API.

mod common;

use common::*;
use serde_json::{json, Value};

fn application(uscc: &str) -> Value {
    json!({
        "name": "测试银行", "uscc": uscc, "sector": "bank", "contact": "ops@bank.example",
        "redirect_uris": ["https://bank.example/cb", "http://127.0.0.1:8080/cb"],
        "scenarios": [{
            "purpose": "account_opening", "description": "开户",
            "license_types": ["JMSFZ"], "fields": {"JMSFZ": ["name", "id_number"]},
            "max_consent_days": 30, "max_retrievals": 3, "flows": ["redirect", "verify"]
        }]
    })
}

async fn demo_server() -> (TestServer, String, Value) {
    let s = TestServer::start().await;
    licensegate::demo::load(&s.services).await.unwrap();
    let op = s.operator_token().await;
    let creds: Value = serde_json::from_str(
        &std::fs::read_to_string(s.dir.path().join("demo-credentials.json")).unwrap(),
    )
    .unwrap();
    (s, op, creds)
}

async fn decide(s: &TestServer, op: &str, body: Value) -> Value {
    let res = s.post_json(op, "/admin/v1/decisions", &body).await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    res.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_use_list_suspension_and_rotation() {
    let (s, op, _) = demo_server().await;
    let uscc = licensegate::demo::uscc("91310000MA1TQTBK0");

    // Bad applications are refused, each problem named; nothing is filed.
    let mut bad = application(&uscc);
    bad["uscc"] = json!("91310000MA1TQTBK09");
    bad["sector"] = json!("casino");
    bad["redirect_uris"] = json!(["http://bank.example/cb"]);
    bad["scenarios"][0]["license_types"] = json!(["JMSFZ", "NOPE"]);
    bad["scenarios"][0]["fields"]["JMSFZ"] = json!(["name", "shoe_size"]);
    let res = s
        .http
        .post(s.url("/entities/v1/applications"))
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let problem: Value = res.json().await.unwrap();
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    for f in [
        "uscc",
        "sector",
        "redirect_uris[0]",
        "scenarios[0].license_types",
        "scenarios[0].fields",
    ] {
        assert!(fields.contains(&f), "{f} in {fields:?}");
    }

    let res = s
        .http
        .post(s.url("/entities/v1/applications"))
        .json(&application(&uscc))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let entity: Value = res.json().await.unwrap();
    let id = entity["id"].as_str().unwrap().to_owned();
    assert_eq!(entity["status"], "pending");
    assert_eq!(entity["scenarios"][0]["status"], "pending");
    assert_eq!(
        s.http
            .post(s.url("/entities/v1/applications"))
            .json(&application(&uscc))
            .send()
            .await
            .unwrap()
            .status(),
        409
    );

    let ask = json!({"entity_id": id, "action": "request", "license_type": "JMSFZ", "purpose": "account_opening", "fields": ["name"]});
    let d = decide(&s, &op, ask.clone()).await;
    assert_eq!(d["allowed"], false);
    assert!(d["reasons"][0]
        .as_str()
        .unwrap()
        .contains("pending, not approved"));

    // Not approved: nothing to authenticate with at the token endpoint.
    let res = s
        .http
        .post(s.url("/token"))
        .basic_auth(&id, Some("lgs_guess"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    // Approval needs the filing number; then credentials are issued once.
    assert_eq!(
        s.post_json(&op, &format!("/admin/v1/entities/{id}/approve"), &json!({}))
            .await
            .status(),
        422
    );
    let res = s
        .post_json(
            &op,
            &format!("/admin/v1/entities/{id}/approve"),
            &json!({"filing_no": "沪用证备0001"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let approval: Value = res.json().await.unwrap();
    assert_eq!(approval["entity"]["status"], "approved");
    assert_eq!(approval["entity"]["filing_no"], "沪用证备0001");
    assert_eq!(approval["credentials"]["client_id"], id);
    let secret = approval["credentials"]["client_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        s.post_json(
            &op,
            &format!("/admin/v1/entities/{id}/approve"),
            &json!({"filing_no": "x"})
        )
        .await
        .status(),
        409
    );

    let d = decide(&s, &op, ask.clone()).await;
    assert_eq!(d["allowed"], true, "{d}");
    assert!(d["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r == "policy:bank-account-opening-and-loans"));

    // Token endpoint: the approved entity authenticates (and is then told it may not
    // have operator scopes); the wrong secret does not authenticate.
    let token = |secret: String| {
        let s = &s;
        let id = id.clone();
        async move {
            s.http
                .post(s.url("/token"))
                .basic_auth(&id, Some(&secret))
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("scope", "catalog:write"),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    let res = token(secret.clone()).await;
    assert_eq!(res.status(), 400);
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "invalid_scope");

    // Withdrawing the scenario takes effect on the very next decision; changing it back too.
    let res = s
        .http
        .post(s.url(&format!(
            "/admin/v1/entities/{id}/scenarios/account_opening/withdraw"
        )))
        .bearer_auth(&op)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let d = decide(&s, &op, ask.clone()).await;
    assert_eq!(d["allowed"], false);
    assert!(
        d["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().contains("no approved scenario")),
        "{d}"
    );
    let changed = json!({"purpose": "account_opening", "description": "开户", "license_types": ["JMSFZ"],
                         "fields": {"JMSFZ": ["name"]}, "max_consent_days": 30, "max_retrievals": 3, "flows": ["redirect"]});
    assert_eq!(
        s.put_json(
            &op,
            &format!("/admin/v1/entities/{id}/scenarios/account_opening"),
            &changed
        )
        .await
        .status(),
        200
    );
    assert_eq!(decide(&s, &op, ask.clone()).await["allowed"], true);
    let mut more = ask.clone();
    more["fields"] = json!(["name", "id_number"]);
    let d = decide(&s, &op, more).await;
    assert_eq!(
        d["allowed"], false,
        "id_number was dropped from the use list"
    );

    // Suspension: refused everywhere at once; reinstatement restores.
    assert_eq!(
        s.post_json(&op, &format!("/admin/v1/entities/{id}/suspend"), &json!({}))
            .await
            .status(),
        422
    );
    assert_eq!(
        s.post_json(
            &op,
            &format!("/admin/v1/entities/{id}/suspend"),
            &json!({"reason": "违规调用"})
        )
        .await
        .status(),
        200
    );
    let d = decide(&s, &op, ask.clone()).await;
    assert_eq!(d["allowed"], false);
    assert!(d["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r == "policy:suspended-entities-get-nothing"));
    let res = token(secret.clone()).await;
    assert_eq!(res.status(), 401);
    assert_eq!(
        s.post_json(
            &op,
            &format!("/admin/v1/entities/{id}/reinstate"),
            &json!({"reason": "整改完成"})
        )
        .await
        .status(),
        200
    );
    assert_eq!(decide(&s, &op, ask.clone()).await["allowed"], true);

    // Rotation: both secrets work during the grace period; with none, the old one stops.
    let res = s
        .post_json(
            &op,
            &format!("/admin/v1/entities/{id}/credentials/rotate"),
            &json!({}),
        )
        .await;
    let rotated: Value = res.json().await.unwrap();
    let new_secret = rotated["client_secret"].as_str().unwrap().to_owned();
    assert_eq!(
        token(secret.clone()).await.status(),
        400,
        "old secret still authenticates"
    );
    assert_eq!(
        token(new_secret.clone()).await.status(),
        400,
        "new secret authenticates"
    );
    let res = s
        .post_json(
            &op,
            &format!("/admin/v1/entities/{id}/credentials/rotate"),
            &json!({"grace_seconds": 0}),
        )
        .await;
    let newest = res.json::<Value>().await.unwrap()["client_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        token(new_secret).await.status(),
        401,
        "previous secret revoked at once"
    );
    assert_eq!(token(newest).await.status(), 400);

    // Every refusal is in the audit log with its reasons.
    let regulator = s.regulator_token().await;
    let page: Value = s
        .get(
            &regulator,
            &format!("/audit/v1/records?entity={id}&action=access.denied"),
        )
        .await
        .json()
        .await
        .unwrap();
    let reasons: Vec<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap().to_owned())
        .collect();
    assert!(reasons.iter().any(|r| r.contains("not approved")));
    assert!(reasons
        .iter()
        .any(|r| r.contains("policy:suspended-entities-get-nothing")));
    assert!(reasons.iter().any(|r| r.contains("use_list")));
    let all: Value = s
        .get(
            &regulator,
            "/audit/v1/records?limit=1000&action=entity.suspended",
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["items"].as_array().unwrap().len(), 1);

    // The entity's history (the operator console's page): its lifecycle
    // records only, the same whether the subject index has reached them or not.
    let store = &s.services.store;
    let history = store.entity_history(&id).await.unwrap();
    let actions: Vec<&str> = history.iter().map(|r| r.action.as_str()).collect();
    for a in ["entity.applied", "entity.approved", "entity.suspended"] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    assert!(history.iter().all(|r| (r.action.starts_with("entity.")
        || r.action.starts_with("scenario."))
        && (r.actor_id == id || r.reason.as_deref().is_some_and(|t| t.starts_with(&id)))));
    assert!(history.windows(2).all(|p| p[0].seq < p[1].seq));
    while store.index_audit_subjects(1000).await.unwrap() > 0 {}
    let indexed: Vec<i64> = store
        .entity_history(&id)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(indexed, history.iter().map(|r| r.seq).collect::<Vec<_>>());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_follow_the_license_status() {
    let (s, op, creds) = demo_server().await;
    let bank = creds["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "浦江银行股份有限公司")
        .unwrap()["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let police = creds["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "上海市公安局")
        .unwrap()
        .clone();
    let issuer = s
        .token(
            police["client_id"].as_str().unwrap(),
            police["client_secret"].as_str().unwrap(),
        )
        .await;
    let page: Value = s
        .get(
            &issuer,
            "/issuer/v1/licenses?license_type=JMSFZ&status=valid&limit=50",
        )
        .await
        .json()
        .await
        .unwrap();
    let license = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["status"] == "valid")
        .unwrap()["identifier"]
        .as_str()
        .unwrap()
        .to_owned();
    let ask = |action: &str| {
        json!({"entity_id": bank, "action": action, "license_type": "JMSFZ", "license": license,
                                    "purpose": "account_opening", "fields": ["name", "id_number"]})
    };
    assert_eq!(decide(&s, &op, ask("retrieve")).await["allowed"], true);
    let res = s
        .post_json(
            &issuer,
            &format!("/issuer/v1/licenses/{license}/suspend"),
            &json!({"reason": "核查"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let d = decide(&s, &op, ask("retrieve")).await;
    assert_eq!(d["allowed"], false);
    assert!(d["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r == "policy:only-valid-licenses-are-retrieved"));
    assert_eq!(
        decide(&s, &op, ask("verify")).await["allowed"],
        true,
        "verification may report a suspended license"
    );
    // A question about an unknown license or a mismatched type is a clear error.
    let mut wrong = ask("retrieve");
    wrong["license_type"] = json!("YYZZ");
    assert_eq!(
        s.post_json(&op, "/admin/v1/decisions", &wrong)
            .await
            .status(),
        404
    );
    let mut nolicense = ask("retrieve");
    nolicense.as_object_mut().unwrap().remove("license");
    assert_eq!(
        s.post_json(&op, "/admin/v1/decisions", &nolicense)
            .await
            .status(),
        422
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_reload_and_invalid_policies_are_refused() {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let dir = copy_of_policies();
    let policy_dir = dir.path().to_path_buf();
    let s = TestServer::start_with(|c| c.policy_dir = Some(policy_dir.clone())).await;
    let op = s.operator_token().await;
    let res = s
        .http
        .post(s.url("/admin/v1/policies/reload"))
        .bearer_auth(&op)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["policies"], 8);

    // A broken file: the reload is refused and the policies in force stay.
    std::fs::write(
        dir.path().join("extra.cedar"),
        "\n@id(\"x\")\npermit (principal, action, resource) when { oops };\n",
    )
    .unwrap();
    let res = s
        .http
        .post(s.url("/admin/v1/policies/reload"))
        .bearer_auth(&op)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let problem: Value = res.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("extra.cedar:3"),
        "{problem}"
    );
    assert_eq!(s.services.policies.current().len(), 8);

    // `policy check` and `serve` name the file and line too.
    let out = licensegate()
        .args([
            "--policy-dir",
            dir.path().to_str().unwrap(),
            "policy",
            "check",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("extra.cedar:3"));
    let data = tempfile::tempdir().unwrap();
    let out = licensegate()
        .args([
            "--data-dir",
            data.path().to_str().unwrap(),
            "--policy-dir",
            dir.path().to_str().unwrap(),
            "serve",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve refuses to start");
    assert!(String::from_utf8_lossy(&out.stderr).contains("extra.cedar:3"));
    // The audit tools still run: a regulator's verification does not depend on policy files.
    let out = licensegate()
        .args(s.cli_args())
        .args([
            "--policy-dir",
            dir.path().to_str().unwrap(),
            "audit",
            "verify",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ok = licensegate()
        .args(["--policy-dir", shipped.to_str().unwrap(), "policy", "check"])
        .output()
        .unwrap();
    assert!(ok.status.success());

    // Each reload attempt is audited.
    let regulator = s.regulator_token().await;
    let page: Value = s
        .get(&regulator, "/audit/v1/records?action=policy.loaded")
        .await
        .json()
        .await
        .unwrap();
    let outcomes: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["success", "refused"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_fetched_from_the_jwks_uri_and_refreshed_on_rotation() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use ring::signature::KeyPair;
    use std::sync::{Arc, Mutex};

    // The entity's own key server, on loopback.
    let rng = ring::rand::SystemRandom::new();
    let key = |kid: &str| {
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())});
        (jsonwebtoken::EncodingKey::from_ed_der(pkcs8.as_ref()), jwk)
    };
    let (k1, jwk1) = key("k1");
    let (k2, jwk2) = key("k2");
    let (k3, _) = key("k3");
    let published = Arc::new(Mutex::new(json!({"keys": [jwk1]})));
    let served = published.clone();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let v = served.lock().unwrap().clone();
            async move { axum::Json(v) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_uri = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let (s, op, _) = demo_server().await;
    let mut app_body = application(&licensegate::demo::uscc("91310000MA1JWKQR0"));
    app_body["jwks_uri"] = json!(jwks_uri);
    let entity: Value = s
        .http
        .post(s.url("/entities/v1/applications"))
        .json(&app_body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = entity["id"].as_str().unwrap().to_owned();
    let approval: Value = s
        .post_json(
            &op,
            &format!("/admin/v1/entities/{id}/approve"),
            &json!({"filing_no": "沪用证备0002"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        approval["credentials"]["token_endpoint_auth_method"], "private_key_jwt",
        "{approval}"
    );
    assert!(approval["credentials"].get("client_secret").is_none());

    let assert_with = |key: &jsonwebtoken::EncodingKey, kid: &str, jti: &str| {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(
            &header,
            &json!({"iss": id, "sub": id, "aud": s.base, "jti": jti, "iat": now, "exp": now + 60}),
            key,
        )
        .unwrap()
    };
    let post = |jwt: String| {
        let s = &s;
        async move {
            let res = s
                .http
                .post(s.url("/token"))
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("scope", "catalog:write"),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", jwt.as_str()),
                ])
                .send()
                .await
                .unwrap();
            (
                res.status().as_u16(),
                res.json::<Value>().await.unwrap()["error"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        }
    };
    // Authenticated (then told an entity may not have operator scopes).
    assert_eq!(
        post(assert_with(&k1, "k1", "j1")).await,
        (400, "invalid_scope".into())
    );
    // The entity rotates to k2: the unknown kid makes licensegate fetch its keys again.
    *published.lock().unwrap() = json!({"keys": [jwk2]});
    assert_eq!(
        post(assert_with(&k2, "k2", "j2")).await,
        (400, "invalid_scope".into())
    );
    // A key it never published is refused.
    assert_eq!(
        post(assert_with(&k3, "k3", "j3")).await,
        (401, "invalid_client".into())
    );

    // A JWKS URI that does not answer makes the approval fail clearly, nothing half-done.
    let mut dead = application(&licensegate::demo::uscc("91310000MA1JWKQR1"));
    dead["jwks_uri"] = json!("http://127.0.0.1:9/jwks.json");
    let entity: Value = s
        .http
        .post(s.url("/entities/v1/applications"))
        .json(&dead)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dead_id = entity["id"].as_str().unwrap();
    let res = s
        .post_json(
            &op,
            &format!("/admin/v1/entities/{dead_id}/approve"),
            &json!({"filing_no": "x"}),
        )
        .await;
    assert_eq!(res.status(), 422);
    assert!(res.text().await.unwrap().contains("cannot fetch the JWKS"));
    let still: Value = s
        .get(&op, &format!("/admin/v1/entities/{dead_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        still["status"], "pending",
        "a failed approval changes nothing"
    );
    assert!(s.services.store.client(dead_id).await.unwrap().is_none());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_policies_and_is_audited() {
    let policies = copy_of_policies();
    let data = tempfile::tempdir().unwrap();
    let mut db = vec!["--data-dir".to_owned(), data.path().display().to_string()];
    if backend() == "postgres" {
        db.push("--database-url".into());
        db.push(fresh_postgres().await);
    }
    db.push("--policy-dir".into());
    db.push(policies.path().display().to_string());
    let (mut child, base) = spawn_server(&db, &[], false).await;
    let http = reqwest::Client::new();
    let hup = || {
        std::process::Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap()
    };
    assert!(hup().success());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // A broken policy file: the SIGHUP reload is refused and the server keeps serving.
    std::fs::write(
        policies.path().join("broken.cedar"),
        "@id(\"b\")\npermit (principal, action, resource) when { nope };\n",
    )
    .unwrap();
    assert!(hup().success());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());

    let out_file = data.path().join("audit.jsonl");
    let out = licensegate()
        .args(&db[..db.len() - 2])
        .args(["audit", "export", "--out", out_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reloads: Vec<Value> = std::fs::read_to_string(&out_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["action"] == "policy.loaded")
        .collect();
    assert_eq!(reloads.len(), 2, "{reloads:?}");
    assert_eq!(
        (
            reloads[0]["outcome"].as_str(),
            reloads[0]["actor_id"].as_str()
        ),
        (Some("success"), Some("sighup"))
    );
    assert_eq!(reloads[1]["outcome"], "refused");
    assert!(reloads[1]["reason"]
        .as_str()
        .unwrap()
        .contains("broken.cedar:2"));
}
