//! The token endpoint: client_credentials with client_secret_basic and
//! private_key_jwt, RFC 6749 errors, RFC 9068 tokens; and the operability routes.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use licensegate::oauth::client_auth::NewClient;
use licensegate::oauth::Role;
use ring::signature::KeyPair;
use serde_json::{json, Value};

async fn token_form(
    s: &TestServer,
    basic: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = s.http.post(s.url("/token")).form(form);
    if let Some((id, secret)) = basic {
        req = req.basic_auth(id, Some(secret));
    }
    req.send().await.unwrap()
}

async fn oauth_error(res: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(res.status(), status);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], code, "{body}");
    assert!(body["error_description"].as_str().is_some());
    body
}

#[tokio::test]
async fn client_secret_basic_issues_rfc9068_tokens() {
    let s = TestServer::start().await;
    let (id, secret) = s.client(Role::Operator, None).await;
    let res = token_form(
        &s,
        Some((&id, &secret)),
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["scope"], "catalog:write clients:write");
    let token = body["access_token"].as_str().unwrap();

    // RFC 9068 shape, verified independently against the published JWKS.
    let header = jwt_part(token, 0);
    assert_eq!(header["typ"], "at+jwt");
    let jwks: Value = s
        .http
        .get(s.url("/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    verify_with_jwks(token, &jwks);
    let claims = jwt_part(token, 1);
    assert_eq!(claims["iss"], s.base);
    assert_eq!(claims["aud"], s.base);
    assert_eq!(claims["client_id"], id);
    assert_eq!(claims["sub"], id);
    assert!(claims["jti"].as_str().unwrap().len() >= 16);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        300
    );

    // Metadata names the endpoint and the JWKS.
    let meta: Value = s
        .http
        .get(s.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["issuer"], s.base);
    assert_eq!(meta["token_endpoint"], format!("{}/token", s.base));
    assert_eq!(meta["jwks_uri"], format!("{}/jwks.json", s.base));

    // Narrower scope on request; a scope the client may not have is refused.
    let res = token_form(
        &s,
        Some((&id, &secret)),
        &[
            ("grant_type", "client_credentials"),
            ("scope", "catalog:write"),
        ],
    )
    .await;
    assert_eq!(res.json::<Value>().await.unwrap()["scope"], "catalog:write");
    let res = token_form(
        &s,
        Some((&id, &secret)),
        &[
            ("grant_type", "client_credentials"),
            ("scope", "licenses:write"),
        ],
    )
    .await;
    oauth_error(res, 400, "invalid_scope").await;
    s.stop().await;
}

#[tokio::test]
async fn token_endpoint_errors_follow_rfc6749() {
    let s = TestServer::start().await;
    let (id, secret) = s.client(Role::Operator, None).await;
    let cc = [("grant_type", "client_credentials")];

    let res = token_form(&s, Some((&id, "wrong")), &cc).await;
    assert!(res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    oauth_error(res, 401, "invalid_client").await;
    oauth_error(
        token_form(&s, Some(("nobody", &secret)), &cc).await,
        401,
        "invalid_client",
    )
    .await;
    oauth_error(token_form(&s, None, &cc).await, 401, "invalid_client").await;
    oauth_error(
        token_form(&s, Some((&id, &secret)), &[]).await,
        400,
        "invalid_request",
    )
    .await;
    oauth_error(
        token_form(&s, Some((&id, &secret)), &[("grant_type", "password")]).await,
        400,
        "unsupported_grant_type",
    )
    .await;
    oauth_error(
        token_form(
            &s,
            Some((&id, &secret)),
            &[
                ("grant_type", "client_credentials"),
                ("client_secret", &secret),
            ],
        )
        .await,
        401,
        "invalid_client",
    )
    .await;
    oauth_error(
        token_form(
            &s,
            Some((&id, &secret)),
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "someone-else"),
            ],
        )
        .await,
        400,
        "invalid_request",
    )
    .await;

    // Repeated parameter, wrong media type, malformed Basic header.
    let res = s
        .http
        .post(s.url("/token"))
        .basic_auth(&id, Some(&secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    oauth_error(res, 400, "invalid_request").await;
    let res = s
        .http
        .post(s.url("/token"))
        .basic_auth(&id, Some(&secret))
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    oauth_error(res, 400, "invalid_request").await;
    let res = s
        .http
        .post(s.url("/token"))
        .header("authorization", "Basic !!!notbase64")
        .form(&cc)
        .send()
        .await
        .unwrap();
    oauth_error(res, 400, "invalid_request").await;

    // Entities read licenses through holder consent, never on their own: by
    // themselves they get only the grant-management scopes.
    let (ent, ent_secret) = s.client(Role::Entity, None).await;
    oauth_error(
        token_form(
            &s,
            Some((&ent, &ent_secret)),
            &[
                ("grant_type", "client_credentials"),
                ("scope", "licenses:write"),
            ],
        )
        .await,
        400,
        "invalid_scope",
    )
    .await;
    let own: Value = token_form(&s, Some((&ent, &ent_secret)), &cc)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        own["scope"],
        "grant_management_query grant_management_revoke"
    );

    // Secrets are stored as keyed digests only.
    let stored = s.services.store.client(&id).await.unwrap().unwrap();
    assert_ne!(stored.secret_digest.as_deref(), Some(secret.as_bytes()));
    s.stop().await;
}

#[tokio::test]
async fn tokens_of_suspended_clients_stop_working() {
    let s = TestServer::start().await;
    let lib = s.setup_library().await;
    assert_eq!(
        s.get(&lib.issuer, "/issuer/v1/licenses").await.status(),
        200
    );
    let claims = jwt_part(&lib.issuer, 1);
    sqlx::query("UPDATE clients SET status = 'suspended' WHERE client_id = $1")
        .bind(claims["client_id"].as_str().unwrap())
        .execute(s.services.store.writer())
        .await
        .unwrap();
    assert_eq!(
        s.get(&lib.issuer, "/issuer/v1/licenses").await.status(),
        401
    );
    // A token signed by some other key is refused.
    let (forged_key, _) = licensegate::keys::SigningKey::generate().unwrap();
    let mut forged_claims = claims.clone();
    forged_claims["client_id"] = json!("x");
    let forged = forged_key.sign_jws("at+jwt", &forged_claims).unwrap();
    assert_eq!(s.get(&forged, "/issuer/v1/licenses").await.status(), 401);
    s.stop().await;
}

fn assertion(
    client_id: &str,
    aud: &str,
    jti: &str,
    alg: Algorithm,
    key: &EncodingKey,
    kid: &str,
) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    let claims = json!({"iss": client_id, "sub": client_id, "aud": aud, "jti": jti, "iat": now, "exp": now + 60});
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

#[tokio::test]
async fn private_key_jwt_with_eddsa_and_es256() {
    let s = TestServer::start().await;
    let rng = ring::rand::SystemRandom::new();
    let ed_pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let ed = ring::signature::Ed25519KeyPair::from_pkcs8(ed_pkcs8.as_ref()).unwrap();
    let ec_pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .unwrap();
    let ec = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        ec_pkcs8.as_ref(),
        &rng,
    )
    .unwrap();
    let point = ec.public_key().as_ref();
    let jwks = json!({"keys": [
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": URL_SAFE_NO_PAD.encode(ed.public_key().as_ref())},
        {"kty": "EC", "crv": "P-256", "kid": "ec", "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])}
    ]});
    let created = s
        .services
        .clients
        .create(
            &licensegate::audit::Actor::system("test"),
            NewClient {
                name: "jwt client".into(),
                role: Role::Operator,
                issuer_id: None,
                jwks: Some(jwks),
                jwks_uri: None,
            },
        )
        .await
        .unwrap();
    assert!(created.client_secret.is_none());
    assert_eq!(created.token_endpoint_auth_method, "private_key_jwt");
    let id = created.client_id;
    let ed_key = EncodingKey::from_ed_der(ed_pkcs8.as_ref());
    let ec_key = EncodingKey::from_ec_der(ec_pkcs8.as_ref());
    let post = |jwt: String| {
        let s = &s;
        async move {
            s.http
                .post(s.url("/token"))
                .form(&[
                    ("grant_type", "client_credentials"),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", jwt.as_str()),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    let ok = assertion(&id, &s.base, "a1", Algorithm::EdDSA, &ed_key, "ed");
    let res = post(ok.clone()).await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    // Replay of the same assertion is refused.
    oauth_error(post(ok).await, 401, "invalid_client").await;
    // ES256 with the token endpoint as audience.
    let res = post(assertion(
        &id,
        &format!("{}/token", s.base),
        "a2",
        Algorithm::ES256,
        &ec_key,
        "ec",
    ))
    .await;
    assert_eq!(res.status(), 200);
    // Wrong audience, wrong key for the kid, unknown kid, symmetric alg, garbage.
    oauth_error(
        post(assertion(
            &id,
            "https://elsewhere",
            "a3",
            Algorithm::EdDSA,
            &ed_key,
            "ed",
        ))
        .await,
        401,
        "invalid_client",
    )
    .await;
    oauth_error(
        post(assertion(
            &id,
            &s.base,
            "a4",
            Algorithm::EdDSA,
            &ed_key,
            "ec",
        ))
        .await,
        401,
        "invalid_client",
    )
    .await;
    oauth_error(
        post(assertion(
            &id,
            &s.base,
            "a5",
            Algorithm::EdDSA,
            &ed_key,
            "zz",
        ))
        .await,
        401,
        "invalid_client",
    )
    .await;
    let hs = assertion(
        &id,
        &s.base,
        "a6",
        Algorithm::HS256,
        &EncodingKey::from_secret(b"guess"),
        "ed",
    );
    oauth_error(post(hs).await, 401, "invalid_client").await;
    oauth_error(post("not.a.jwt".into()).await, 401, "invalid_client").await;
    // alg "none" by hand.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(
            json!({"iss": id, "sub": id, "aud": s.base, "jti": "a7", "exp": 9999999999i64})
                .to_string()
        )
    );
    oauth_error(post(none).await, 401, "invalid_client").await;
    // An expired assertion.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("ed".into());
    let expired = jsonwebtoken::encode(
        &header,
        &json!({"iss": id, "sub": id, "aud": s.base, "jti": "a8", "exp": now - 60}),
        &ed_key,
    )
    .unwrap();
    oauth_error(post(expired).await, 401, "invalid_client").await;
    // Both Basic and an assertion at once.
    let res = s
        .http
        .post(s.url("/token"))
        .basic_auth(&id, Some("x"))
        .form(&[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", "x.y.z"),
        ])
        .send()
        .await
        .unwrap();
    oauth_error(res, 400, "invalid_request").await;

    // Registering private key material or symmetric keys is refused.
    for bad in [
        json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}),
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "d": "AAAA"}]}),
        json!({"keys": []}),
    ] {
        let e = s
            .services
            .clients
            .create(
                &licensegate::audit::Actor::system("test"),
                NewClient {
                    name: "x".into(),
                    role: Role::Operator,
                    issuer_id: None,
                    jwks: Some(bad),
                    jwks_uri: None,
                },
            )
            .await;
        assert!(matches!(e, Err(licensegate::Error::Invalid { .. })));
    }
    s.stop().await;
}

#[tokio::test]
async fn operability_routes() {
    let s = TestServer::start().await;
    let health: Value = s
        .http
        .get(s.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(
        s.http.get(s.url("/readyz")).send().await.unwrap().status(),
        200
    );
    let op = s.operator_token().await;
    let _ = s.get(&op, "/catalog/v1/license-types").await;
    let metrics = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"licensegate_http_requests_total{method="POST",route="/token",status="200"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("licensegate_http_request_duration_seconds_bucket"));
    // The token above was audited through the group-commit writer.
    assert!(
        metrics.contains("licensegate_audit_records_total"),
        "{metrics}"
    );
    assert!(metrics.contains("licensegate_audit_batch_records_bucket"));
    // With the time each of those group commits took.
    let commits: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("licensegate_audit_commit_seconds_count "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no commit count in {metrics}"));
    assert!(commits >= 1.0, "{metrics}");
    assert!(metrics.contains("licensegate_audit_commit_seconds_bucket{le=\"0.0001\"}"));

    // The OpenAPI document covers every route the server answers.
    let doc: Value = s
        .http
        .get(s.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    for (method, path) in [
        ("post", "/token"),
        ("get", "/jwks.json"),
        ("get", "/.well-known/oauth-authorization-server"),
        ("get", "/catalog/v1/license-types"),
        ("get", "/catalog/v1/license-types/{code}"),
        ("get", "/issuers"),
        ("get", "/issuers/{id}/jwks.json"),
        ("post", "/admin/v1/issuers"),
        ("post", "/admin/v1/license-types"),
        ("put", "/admin/v1/license-types/{code}"),
        ("post", "/admin/v1/clients"),
        ("post", "/issuer/v1/licenses"),
        ("get", "/issuer/v1/licenses"),
        ("get", "/issuer/v1/licenses/{identifier}"),
        ("put", "/issuer/v1/licenses/{identifier}"),
        ("get", "/issuer/v1/licenses/{identifier}/history"),
        ("post", "/issuer/v1/licenses/{identifier}/suspend"),
        ("post", "/issuer/v1/licenses/{identifier}/reinstate"),
        ("post", "/issuer/v1/licenses/{identifier}/cancel"),
        ("post", "/issuer/v1/imports"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
        ("get", "/audit/v1/checkpoints/latest"),
        ("post", "/audit/v1/checkpoints/latest"),
        ("get", "/audit/v1/checkpoints"),
        ("get", "/audit/v1/proofs/consistency"),
        ("get", "/audit/v1/records"),
        ("get", "/audit/v1/records/{seq}/inclusion"),
        ("get", "/audit/v1/export"),
        ("post", "/audit/v1/verifications"),
        ("get", "/audit/v1/verifications/latest"),
        ("post", "/entities/v1/applications"),
        ("get", "/admin/v1/entities"),
        ("get", "/admin/v1/entities/{id}"),
        ("post", "/admin/v1/entities/{id}/approve"),
        ("post", "/admin/v1/entities/{id}/reject"),
        ("post", "/admin/v1/entities/{id}/suspend"),
        ("post", "/admin/v1/entities/{id}/reinstate"),
        ("post", "/admin/v1/entities/{id}/credentials/rotate"),
        ("put", "/admin/v1/entities/{id}/scenarios/{purpose}"),
        (
            "post",
            "/admin/v1/entities/{id}/scenarios/{purpose}/approve",
        ),
        (
            "post",
            "/admin/v1/entities/{id}/scenarios/{purpose}/withdraw",
        ),
        ("post", "/admin/v1/decisions"),
        ("post", "/admin/v1/policies/reload"),
        ("post", "/introspect"),
        ("post", "/admin/v1/keys/rotate"),
        ("post", "/revoke"),
        ("post", "/holder/v1/objections"),
        ("get", "/holder/v1/objections"),
        ("post", "/api/v1/objections"),
        ("get", "/issuer/v1/objections"),
        ("post", "/issuer/v1/objections/{id}/resolution"),
        ("get", "/audit/v1/objections"),
        ("get", "/holder/v1/notification-preferences"),
        ("put", "/holder/v1/notification-preferences"),
        ("post", "/admin/v1/webhooks"),
        ("get", "/admin/v1/webhooks"),
        ("post", "/admin/v1/webhooks/{id}/disable"),
        ("get", "/admin/v1/deliveries"),
        ("post", "/admin/v1/deliveries/{id}/retry"),
        ("post", "/admin/v1/jobs/reminders"),
        ("post", "/admin/v1/jobs/deliveries"),
        ("post", "/admin/v1/regulator-accounts"),
        ("get", "/holder"),
        ("get", "/holder/history"),
        ("get", "/holder/objections"),
        ("post", "/holder/objections"),
        ("get", "/holder/objections/new"),
        ("get", "/holder/notifications"),
        ("post", "/holder/notifications"),
        ("get", "/console/login"),
        ("post", "/console/login"),
        ("post", "/console/logout"),
        ("get", "/console"),
        ("get", "/console/export"),
        ("get", "/console/stats"),
        ("get", "/console/anomalies"),
        ("get", "/console/objections"),
        ("get", "/console/entities/{id}"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is documented"
        );
    }
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(
        documented, 103,
        "every documented operation is in the list above"
    );
    s.stop().await;
}

#[tokio::test]
async fn admin_client_registration_over_http() {
    let s = TestServer::start().await;
    let lib = s.setup_library().await;
    let res = s
        .post_json(
            &lib.operator,
            "/admin/v1/clients",
            &json!({"name": "发证单位客户端", "role": "issuer", "issuer_id": ISSUER}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let c: Value = res.json().await.unwrap();
    let token = s
        .token(
            c["client_id"].as_str().unwrap(),
            c["client_secret"].as_str().unwrap(),
        )
        .await;
    assert_eq!(
        s.post_json(&token, "/issuer/v1/licenses", &publication(1))
            .await
            .status(),
        201
    );
    let res = s
        .post_json(
            &lib.operator,
            "/admin/v1/clients",
            &json!({"name": "x", "role": "issuer"}),
        )
        .await;
    assert_eq!(res.status(), 422);
    let res = s
        .post_json(
            &lib.operator,
            "/admin/v1/clients",
            &json!({"name": "x", "role": "wizard"}),
        )
        .await;
    assert_eq!(res.status(), 422);
    assert_eq!(
        s.post_json(
            &lib.issuer,
            "/admin/v1/clients",
            &json!({"name": "x", "role": "operator"})
        )
        .await
        .status(),
        403
    );
    s.stop().await;
}

#[tokio::test]
async fn introspection_and_revocation() {
    let s = TestServer::start().await;
    let lib = s.setup_library().await;
    let issuer_claims = jwt_part(&lib.issuer, 1);
    let issuer_id = issuer_claims["client_id"].as_str().unwrap().to_owned();
    // The test harness keeps no secret for the issuer's client, so make a fresh one.
    let (id, secret) = s.client(Role::Issuer, Some(ISSUER)).await;
    let token = s.token(&id, &secret).await;
    let form = |path: &'static str, who: (&str, &str), tok: &str| {
        let s = &s;
        let (cid, csec, tok) = (who.0.to_owned(), who.1.to_owned(), tok.to_owned());
        async move {
            s.http
                .post(s.url(path))
                .basic_auth(cid, Some(csec))
                .form(&[("token", tok.as_str())])
                .send()
                .await
                .unwrap()
        }
    };
    let res = form("/introspect", (&id, &secret), &token).await;
    assert_eq!(res.status(), 200);
    let i: Value = res.json().await.unwrap();
    assert_eq!(i["active"], true);
    assert_eq!(i["client_id"], id);
    assert_eq!(i["scope"], "licenses:write");
    assert_eq!(i["token_type"], "Bearer");
    // Someone else's token, garbage, and no client authentication.
    let i: Value = form("/introspect", (&id, &secret), &lib.issuer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        i,
        json!({"active": false}),
        "a client does not learn about other clients' tokens"
    );
    let i: Value = form("/introspect", (&id, &secret), "garbage")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(i["active"], false);
    let res = s
        .http
        .post(s.url("/introspect"))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    oauth_error(res, 401, "invalid_client").await;
    // A regulator may introspect any token.
    let (reg, reg_secret) = s.client(Role::Regulator, None).await;
    let i: Value = form("/introspect", (&reg, &reg_secret), &lib.issuer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(i["active"], true);
    assert_eq!(i["client_id"], issuer_id);

    // Revocation: not another client's token; then its own, effective on the next call.
    oauth_error(
        form("/revoke", (&id, &secret), &lib.issuer).await,
        400,
        "unauthorized_client",
    )
    .await;
    assert_eq!(s.get(&token, "/issuer/v1/licenses").await.status(), 200);
    let res = form("/revoke", (&id, &secret), &token).await;
    assert_eq!(res.status(), 200);
    let res = s.get(&token, "/issuer/v1/licenses").await;
    assert_eq!(res.status(), 401);
    assert!(res.text().await.unwrap().contains("revoked"));
    let i: Value = form("/introspect", (&id, &secret), &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(i["active"], false);
    // Revoking again, or an unknown token, is acknowledged (RFC 7009 §2.2).
    assert_eq!(form("/revoke", (&id, &secret), &token).await.status(), 200);
    assert_eq!(
        form("/revoke", (&id, &secret), "not-a-token")
            .await
            .status(),
        200
    );
    // The other tokens of the client still work.
    let fresh = s.token(&id, &secret).await;
    assert_eq!(s.get(&fresh, "/issuer/v1/licenses").await.status(), 200);
    let meta: Value = s
        .http
        .get(s.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["revocation_endpoint"], format!("{}/revoke", s.base));
    assert_eq!(
        meta["introspection_endpoint"],
        format!("{}/introspect", s.base)
    );
    s.stop().await;
}

#[tokio::test]
async fn key_rotation_keeps_old_signatures_valid() {
    let s = TestServer::start().await;
    let lib = s.setup_library().await;
    let old_token = lib.issuer.clone();
    let old_kid = jwt_part(&old_token, 0)["kid"].as_str().unwrap().to_owned();
    let published: Value = s
        .post_json(&lib.issuer, "/issuer/v1/licenses", &publication(1))
        .await
        .json()
        .await
        .unwrap();

    let res = s
        .post_json(
            &lib.operator,
            "/admin/v1/keys/rotate",
            &json!({"owner": "broker"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let new_kid = res.json::<Value>().await.unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_kid, old_kid);
    let (id, secret) = s.client(Role::Issuer, Some(ISSUER)).await;
    let new_token = s.token(&id, &secret).await;
    assert_eq!(jwt_part(&new_token, 0)["kid"], new_kid);
    let jwks: Value = s
        .http
        .get(s.url("/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    verify_with_jwks(&old_token, &jwks);
    verify_with_jwks(&new_token, &jwks);
    assert_eq!(
        s.get(&old_token, "/issuer/v1/licenses").await.status(),
        200,
        "old tokens live out their time"
    );

    // An issuing unit's key: new versions use the new key, old ones still verify.
    let res = s
        .post_json(
            &lib.operator,
            "/admin/v1/keys/rotate",
            &json!({"owner": ISSUER}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let id1 = published["identifier"].as_str().unwrap();
    let mut update = publication(1);
    update["fields"]["name"] = json!("新名");
    let body = json!({"fields": update["fields"], "valid_from": "2024-01-01", "valid_until": "2034-01-01"});
    let v2: Value = s
        .put_json(&new_token, &format!("/issuer/v1/licenses/{id1}"), &body)
        .await
        .json()
        .await
        .unwrap();
    let issuer_jwks: Value = s
        .http
        .get(s.url(&format!("/issuers/{ISSUER}/jwks.json")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(issuer_jwks["keys"].as_array().unwrap().len(), 2);
    verify_sd_jwt(published["sd_jwt"].as_str().unwrap(), &issuer_jwks);
    verify_sd_jwt(v2["sd_jwt"].as_str().unwrap(), &issuer_jwks);
    assert_ne!(
        jwt_part(
            published["sd_jwt"]
                .as_str()
                .unwrap()
                .split('~')
                .next()
                .unwrap(),
            0
        )["kid"],
        jwt_part(v2["sd_jwt"].as_str().unwrap().split('~').next().unwrap(), 0)["kid"]
    );
    assert_eq!(
        s.post_json(
            &lib.operator,
            "/admin/v1/keys/rotate",
            &json!({"owner": "nobody"})
        )
        .await
        .status(),
        404
    );
    assert_eq!(
        s.post_json(
            &lib.issuer,
            "/admin/v1/keys/rotate",
            &json!({"owner": "broker"})
        )
        .await
        .status(),
        403
    );
    s.stop().await;
}
