//! Consent flows end to end over a real socket: PAR + PKCE + RAR with the
//! holder's login and consent forms, driven by the `oauth2` crate (a client
//! library no one here wrote); refresh, introspection, revocation, grant
//! management; CIBA; show-a-license; DPoP; and the attacks each must refuse.

mod common;

use common::flows::*;
use common::*;
use oauth2::basic::BasicClient;
use oauth2::{
    AccessToken, AuthUrl, AuthorizationCode, ClientId, ClientSecret, IntrospectionUrl,
    PkceCodeChallenge, RedirectUrl, RevocationUrl, TokenIntrospectionResponse, TokenResponse,
    TokenUrl,
};
use serde_json::{json, Value};

fn oauth_client(
    w: &World,
    id: &str,
    secret: &str,
) -> BasicClient<
    oauth2::EndpointSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
    oauth2::EndpointSet,
    oauth2::EndpointSet,
> {
    BasicClient::new(ClientId::new(id.to_owned()))
        .set_client_secret(ClientSecret::new(secret.to_owned()))
        .set_auth_uri(AuthUrl::new(w.s.url("/authorize")).unwrap())
        .set_token_uri(TokenUrl::new(w.s.url("/token")).unwrap())
        .set_redirect_uri(RedirectUrl::new(REDIRECT.into()).unwrap())
        .set_introspection_url(IntrospectionUrl::new(w.s.url("/introspect")).unwrap())
        .set_revocation_url(RevocationUrl::new(w.s.url("/revoke")).unwrap())
}

#[tokio::test]
async fn redirect_flow_with_an_independent_client_library() {
    let w = world_with(|_| {}).await;
    let (id, secret) = bank(&w, "91310000MA1CHNBK0", json!({})).await;
    let secret = secret.unwrap();

    // Metadata advertises exactly what is supported.
    let meta: Value =
        w.s.http
            .get(w.s.url("/.well-known/oauth-authorization-server"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(meta["require_pushed_authorization_requests"], true);
    assert_eq!(meta["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(
        meta["authorization_details_types_supported"],
        json!(["license_access"])
    );
    assert_eq!(
        meta["backchannel_token_delivery_modes_supported"],
        json!(["poll"])
    );
    assert_eq!(meta["authorization_response_iss_parameter_supported"], true);

    let (request_uri, verifier) = pushed(&w, &id, &secret, &details(Some(30), Some(3))).await;

    // The holder's browser: redirected to log in, then the consent page.
    let mut b = Browser::new(&w.s.base);
    let page = b
        .login_via(&authorize_path(&id, &request_uri), &w.holder.0, &w.holder.1)
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(
        csp.contains("form-action 'self' http://127.0.0.1:9"),
        "{csp}"
    );
    for words in [
        "测试商业银行",
        "银行",
        "沪用证备0099",
        "开立银行账户",
        "居民身份证",
        "姓名",
        "30天",
        "最多读取次数：3",
        "撤回",
    ] {
        assert!(
            page.body.contains(words),
            "{words} missing from the consent page"
        );
    }
    assert!(page
        .body
        .contains("name=\"optional\" value=\"JMSFZ.address\""));
    // English on request.
    let en = b
        .get(&format!("{}&lang=en", authorize_path(&id, &request_uri)))
        .await;
    assert_eq!(en.status, 200);
    for words in [
        "Resident Identity Card",
        "Lasts 30 days",
        "Most reads: 3",
        "Approve",
        "Refuse",
    ] {
        assert!(
            en.body.contains(words),
            "{words} missing from the English page"
        );
    }

    let redirect = approve(&mut b, &page, &["JMSFZ.address"]).await;
    assert_eq!(redirect["state"], "st-42");
    assert_eq!(redirect["iss"], w.s.base);
    let code = redirect["code"].clone();

    // The request_uri was single use: the page is an error, never a redirect.
    let again = b.get(&authorize_path(&id, &request_uri)).await;
    assert_eq!(again.status, 400);
    assert!(again.location.is_none());

    // The entity exchanges the code with the oauth2 crate (client_secret_basic, PKCE).
    let client = oauth_client(&w, &id, &secret);
    let http = no_redirects();
    let tokens = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .unwrap();
    assert_eq!(tokens.token_type().as_ref(), "bearer");
    let at = tokens.access_token().clone();
    let rt = tokens.refresh_token().unwrap().clone();
    let header = jwt_part(at.secret(), 0);
    assert_eq!(header["typ"], "at+jwt");
    let claims = jwt_part(at.secret(), 1);
    let consent_id = claims["consent"].as_str().unwrap().to_owned();
    assert_eq!(claims["client_id"], id);
    assert!(claims["sub"].as_str().unwrap().len() > 4);
    assert_eq!(
        claims["authorization_details"][0]["fields"],
        json!(["name", "id_number", "address"])
    );
    assert_eq!(
        claims["authorization_details"][0]["licenses"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap() <= 300);
    // The broker's signature verifies with an independent implementation.
    let jwks: Value =
        w.s.http
            .get(w.s.url("/jwks.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    verify_with_jwks(at.secret(), &jwks);

    // Refresh (not rotated: the same refresh token keeps working).
    let refreshed = client
        .exchange_refresh_token(&rt)
        .request_async(&http)
        .await
        .unwrap();
    assert!(refreshed.refresh_token().is_none());
    let at2 = refreshed.access_token().clone();

    // Introspection through the library.
    let i = client.introspect(&at).request_async(&http).await.unwrap();
    assert!(i.active());
    // Revoking a token leaves the consent: the token dies, refresh still works.
    // (The oauth2 crate sends revocations only to https URLs, as RFC 7009
    // asks; the test server is plain http on loopback, so this one is by hand.)
    let res =
        w.s.http
            .post(w.s.url("/revoke"))
            .basic_auth(&id, Some(&secret))
            .form(&[
                ("token", at.secret().as_str()),
                ("token_type_hint", "access_token"),
            ])
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), 200);
    assert!(!client
        .introspect(&at)
        .request_async(&http)
        .await
        .unwrap()
        .active());
    assert!(client
        .introspect(&at2)
        .request_async(&http)
        .await
        .unwrap()
        .active());
    let at3 = client
        .exchange_refresh_token(&rt)
        .request_async(&http)
        .await
        .unwrap()
        .access_token()
        .clone();

    // Grant management with the entity's own client_credentials token.
    let (status, cc) = token_form(&w, &id, &secret, &[("grant_type", "client_credentials")]).await;
    assert_eq!(status, 200);
    let gm = cc["access_token"].as_str().unwrap();
    let grant: Value =
        w.s.get(gm, &format!("/grants/{consent_id}"))
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(grant["status"], "active");
    assert_eq!(grant["max_retrievals"], 3);
    // A consent token is no grant-management token.
    assert_eq!(
        w.s.get(at3.secret(), &format!("/grants/{consent_id}"))
            .await
            .status(),
        403
    );

    // The holder's API lists the consent with a signed receipt.
    let mine = b.get_json("/holder/v1/consents").await;
    assert_eq!(mine[0]["id"], consent_id);
    let receipt = mine[0]["receipt"].as_str().unwrap();
    verify_with_jwks(receipt, &jwks);
    let r = jwt_part(receipt, 1);
    assert_eq!(r["consent"]["purpose"], "account_opening");
    assert_eq!(r["entity"]["filing_no"], "沪用证备0099");
    assert!(r["withdraw"]
        .as_str()
        .unwrap()
        .ends_with("/holder/consents"));

    // The holder revokes on the page: at once, every token from the consent is dead.
    let list = b.get("/holder/consents").await;
    assert!(list.body.contains(&consent_id));
    let csrf = hidden(&list.body, "csrf");
    let done = b
        .post(
            &format!("/holder/consents/{consent_id}/revoke"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(done.status, 303);
    assert!(!client
        .introspect(&at3)
        .request_async(&http)
        .await
        .unwrap()
        .active());
    let (status, err) = token_form(
        &w,
        &id,
        &secret,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt.secret()),
        ],
    )
    .await;
    assert_eq!(
        (status, err["error"].as_str().unwrap()),
        (400, "invalid_grant")
    );
    let grant: Value =
        w.s.get(gm, &format!("/grants/{consent_id}"))
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(grant["status"], "revoked");

    // Every step is on record.
    let acts: Vec<String> = actions(&w)
        .await
        .into_iter()
        .map(|(a, o, _)| format!("{a}:{o}"))
        .collect();
    for step in [
        "authorization.pushed:success",
        "holder.authenticated:success",
        "consent.shown:success",
        "consent.granted:success",
        "code.issued:success",
        "code.redeemed:success",
        "token.issued:success",
        "token.refreshed:success",
        "token.revoked:success",
        "consent.revoked:success",
        "request.refused:refused",
    ] {
        assert!(acts.iter().any(|a| a == step), "{step} not audited");
    }
    w.s.stop().await;
}

#[tokio::test]
async fn attacks_are_refused_and_audited() {
    let w = world_with(|_| {}).await;
    let (id, secret) = bank(&w, "91310000MA1ATKBK0", json!({})).await;
    let secret = secret.unwrap();
    let (other, other_secret) = bank(&w, "91310000MA1QTHBK0", json!({})).await;
    let other_secret = other_secret.unwrap();
    let rar = details(Some(30), Some(3));
    let (challenge, _) = PkceCodeChallenge::new_random_sha256();
    let base = [
        ("response_type", "code"),
        ("client_id", id.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("authorization_details", rar.as_str()),
    ];
    let par_error = |form: Vec<(&'static str, String)>| {
        let w = &w;
        let (id, secret) = (id.clone(), secret.clone());
        async move {
            let f: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let res = push(w, &id, &secret, &f).await;
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap();
            (
                status,
                body["error"].as_str().unwrap_or_default().to_owned(),
            )
        }
    };
    let with = |changes: &[(&'static str, Option<&str>)]| {
        let mut f: Vec<(&'static str, String)> =
            base.iter().map(|(k, v)| (*k, v.to_string())).collect();
        for (k, v) in changes {
            f.retain(|(fk, _)| fk != k);
            if let Some(v) = v {
                f.push((k, v.to_string()));
            }
        }
        f
    };
    // PKCE missing or plain; redirect URI not exactly registered.
    assert_eq!(
        par_error(with(&[
            ("code_challenge_method", None),
            ("code_challenge", None)
        ]))
        .await,
        (400, "invalid_request".into())
    );
    assert_eq!(
        par_error(with(&[("code_challenge_method", Some("plain"))])).await,
        (400, "invalid_request".into())
    );
    assert_eq!(
        par_error(with(&[("redirect_uri", Some("http://127.0.0.1:9/cb/"))])).await,
        (400, "invalid_request".into())
    );
    assert_eq!(
        par_error(with(&[(
            "redirect_uri",
            Some("http://attacker.example/cb")
        )]))
        .await,
        (400, "invalid_request".into())
    );
    // Beyond the use list: a field, a type, a purpose, the duration, the budget.
    let beyond = [
        json!([{"type": "license_access", "purpose": "account_opening", "license_type": "JMSFZ", "fields": ["name", "ethnicity"], "duration_days": 30}]),
        json!([{"type": "license_access", "purpose": "account_opening", "license_type": "YYZZ", "fields": ["name"]}]),
        json!([{"type": "license_access", "purpose": "loan", "license_type": "JMSFZ", "fields": ["name"]}]),
        json!([{"type": "license_access", "purpose": "account_opening", "license_type": "JMSFZ", "fields": ["name"], "duration_days": 31}]),
        json!([{"type": "license_access", "purpose": "account_opening", "license_type": "JMSFZ", "fields": ["name"], "duration_days": 30, "max_retrievals": 4}]),
        json!([{"type": "payment_initiation", "purpose": "account_opening"}]),
        json!({"type": "license_access"}),
    ];
    let before = actions(&w).await.len();
    for d in beyond {
        let d = d.to_string();
        assert_eq!(
            par_error(with(&[("authorization_details", Some(d.as_str()))])).await,
            (400, "invalid_authorization_details".into()),
            "{d}"
        );
    }
    let refusals = actions(&w).await[before..]
        .iter()
        .filter(|(_, o, _)| o == "refused")
        .count();
    assert!(refusals >= 7, "each refusal audited ({refusals})");

    // A clean flow to attack.
    let (request_uri, verifier) = pushed(&w, &id, &secret, &rar).await;
    let mut b = Browser::new(&w.s.base);
    // An unknown client at /authorize: an error page, never a redirect.
    let p = b.get(&authorize_path(&other, &request_uri)).await;
    assert_eq!((p.status, p.location.is_none()), (400, true));
    // Login with the wrong CSRF token is refused.
    let p = b.get("/login").await;
    let csrf = hidden(&p.body, "csrf");
    let p = b
        .post(
            "/login",
            &[
                ("identifier", &w.holder.0),
                ("password", &w.holder.1),
                ("csrf", "forged"),
            ],
        )
        .await;
    assert_eq!(p.status, 403);
    assert!(!b.cookies.contains_key("lg_session"));
    assert_eq!(
        b.post(
            "/login",
            &[
                ("identifier", &w.holder.0),
                ("password", &w.holder.1),
                ("csrf", &csrf)
            ]
        )
        .await
        .status,
        303
    );
    let page = b.get(&authorize_path(&id, &request_uri)).await;
    assert_eq!(page.status, 200);
    // Consent posted without, or with a wrong, CSRF token: refused, nothing decided.
    let ru = hidden(&page.body, "request_uri");
    for bad in [None, Some("x"), Some(csrf.as_str())] {
        let mut form = vec![("request_uri", ru.as_str()), ("decision", "approve")];
        if let Some(t) = bad {
            form.push(("csrf", t));
        }
        let p = b.post("/authorize/decision", &form).await;
        assert_eq!((p.status, p.location), (403, None));
    }
    // Another holder cannot take over the request.
    let mut intruder = Browser::new(&w.s.base);
    let p = intruder
        .login_via(
            &authorize_path(&id, &request_uri),
            &w.other_holder.0,
            &w.other_holder.1,
        )
        .await;
    assert_eq!(p.status, 400);
    let code = approve(&mut b, &page, &[]).await["code"].clone();

    let exchange = |client_id: String,
                    client_secret: String,
                    code: String,
                    verifier: Option<String>,
                    redirect: &'static str| {
        let w = &w;
        async move {
            let mut form = vec![
                ("grant_type", "authorization_code".to_owned()),
                ("code", code),
                ("redirect_uri", redirect.to_owned()),
            ];
            if let Some(v) = verifier {
                form.push(("code_verifier", v));
            }
            let f: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            token_form(w, &client_id, &client_secret, &f).await
        }
    };
    let err = |r: (u16, Value)| (r.0, r.1["error"].as_str().unwrap_or_default().to_owned());
    let v = verifier.secret().clone();
    // Redeemed by another client, wrong verifier, no verifier, plain challenge value, wrong redirect URI.
    assert_eq!(
        err(exchange(
            other.clone(),
            other_secret.clone(),
            code.clone(),
            Some(v.clone()),
            REDIRECT
        )
        .await),
        (400, "invalid_grant".into())
    );
    let wrong = PkceCodeChallenge::new_random_sha256().1.secret().clone();
    assert_eq!(
        err(exchange(
            id.clone(),
            secret.clone(),
            code.clone(),
            Some(wrong),
            REDIRECT
        )
        .await),
        (400, "invalid_grant".into())
    );
    assert_eq!(
        err(exchange(id.clone(), secret.clone(), code.clone(), None, REDIRECT).await),
        (400, "invalid_grant".into())
    );
    assert_eq!(
        err(exchange(
            id.clone(),
            secret.clone(),
            code.clone(),
            Some(challenge.as_str().to_owned()),
            REDIRECT
        )
        .await),
        (400, "invalid_grant".into())
    );
    assert_eq!(
        err(exchange(
            id.clone(),
            secret.clone(),
            code.clone(),
            Some(v.clone()),
            "https://bank.example/cb"
        )
        .await),
        (400, "invalid_grant".into())
    );
    // The legitimate exchange still works (the failed attempts did not burn the code)...
    let (status, tokens) = exchange(
        id.clone(),
        secret.clone(),
        code.clone(),
        Some(v.clone()),
        REDIRECT,
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    let at = tokens["access_token"].as_str().unwrap().to_owned();
    let rt = tokens["refresh_token"].as_str().unwrap().to_owned();
    assert!(tokens["grant_id"].as_str().unwrap().starts_with("cns_"));
    // ...and a replay is refused and kills what the code gave.
    assert_eq!(
        err(exchange(
            id.clone(),
            secret.clone(),
            code.clone(),
            Some(v.clone()),
            REDIRECT
        )
        .await),
        (400, "invalid_grant".into())
    );
    let client = oauth_client(&w, &id, &secret);
    let http = no_redirects();
    assert!(!client
        .introspect(&AccessToken::new(at.clone()))
        .request_async(&http)
        .await
        .unwrap()
        .active());
    assert_eq!(
        err(token_form(
            &w,
            &id,
            &secret,
            &[("grant_type", "refresh_token"), ("refresh_token", &rt)]
        )
        .await),
        (400, "invalid_grant".into())
    );
    assert!(actions(&w)
        .await
        .iter()
        .any(|(a, _, r)| a == "consent.revoked"
            && r.as_deref().is_some_and(|r| r.contains("replayed"))));

    // A refresh token used by another client.
    let (ru2, v2) = pushed(&w, &id, &secret, &rar).await;
    let page = b.get(&authorize_path(&id, &ru2)).await;
    let code2 = approve(&mut b, &page, &[]).await["code"].clone();
    let (_, t2) = exchange(
        id.clone(),
        secret.clone(),
        code2,
        Some(v2.secret().clone()),
        REDIRECT,
    )
    .await;
    let rt2 = t2["refresh_token"].as_str().unwrap();
    assert_eq!(
        err(token_form(
            &w,
            &other,
            &other_secret,
            &[("grant_type", "refresh_token"), ("refresh_token", rt2)]
        )
        .await),
        (400, "invalid_grant".into())
    );

    // An expired request_uri (its clock moved on in the database).
    let (ru3, _) = pushed(&w, &id, &secret, &rar).await;
    sqlx::query("UPDATE authorization_requests SET expires_at = 0 WHERE status = 'pushed'")
        .execute(w.s.services.store.writer())
        .await
        .unwrap();
    let p = b.get(&authorize_path(&id, &ru3)).await;
    assert_eq!((p.status, p.location), (400, None));

    // Login throttling: after 5 failures even the right password waits.
    let mut guesser = Browser::new(&w.s.base);
    for _ in 0..5 {
        let form = guesser.get("/login").await;
        let csrf = hidden(&form.body, "csrf");
        let p = guesser
            .post(
                "/login",
                &[
                    ("identifier", &w.other_holder.0),
                    ("password", "not-the-password"),
                    ("csrf", &csrf),
                ],
            )
            .await;
        assert_eq!(p.status, 401);
    }
    let form = guesser.get("/login").await;
    let csrf = hidden(&form.body, "csrf");
    let p = guesser
        .post(
            "/login",
            &[
                ("identifier", &w.other_holder.0),
                ("password", &w.other_holder.1),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(p.status, 429);
    assert!(p.headers.contains_key("retry-after"));
    // An operator resets the account: the lock is gone, the new password works.
    let res =
        w.s.post_json(
            &w.op,
            "/admin/v1/holder-accounts",
            &json!({"identifier": w.other_holder.0, "password": "short"}),
        )
        .await;
    assert_eq!(res.status(), 422);
    let reset: Value =
        w.s.post_json(
            &w.op,
            "/admin/v1/holder-accounts",
            &json!({"identifier": w.other_holder.0}),
        )
        .await
        .json()
        .await
        .unwrap();
    let fresh = reset["password"].as_str().unwrap();
    let form = guesser.get("/login").await;
    let csrf = hidden(&form.body, "csrf");
    let p = guesser
        .post(
            "/login",
            &[
                ("identifier", &w.other_holder.0),
                ("password", fresh),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(p.status, 303);
    w.s.stop().await;
}

#[tokio::test]
async fn private_key_jwt_and_dpop_bound_tokens() {
    let w = world_with(|_| {}).await;
    let entity_key = ed25519_key("e1");
    let (id, secret) = bank(
        &w,
        "91310000MA1DPQPB0",
        json!({"jwks": {"keys": [entity_key.1.clone()]}, "dpop_bound_access_tokens": true}),
    )
    .await;
    assert!(secret.is_none());
    let assertion = |aud: &str, jti: &str| {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some("e1".into());
        jsonwebtoken::encode(
            &header,
            &json!({"iss": id, "sub": id, "aud": aud, "jti": jti, "iat": now, "exp": now + 60}),
            &entity_key.0,
        )
        .unwrap()
    };
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let par = |a: String| {
        let w = &w;
        let id = id.clone();
        let challenge = challenge.as_str().to_owned();
        async move {
            let res =
                w.s.http
                    .post(w.s.url("/par"))
                    .form(&[
                        ("response_type", "code"),
                        ("client_id", id.as_str()),
                        ("redirect_uri", REDIRECT),
                        ("code_challenge", challenge.as_str()),
                        ("code_challenge_method", "S256"),
                        ("authorization_details", details(Some(30), Some(3)).as_str()),
                        (
                            "client_assertion_type",
                            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                        ),
                        ("client_assertion", a.as_str()),
                    ])
                    .send()
                    .await
                    .unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    // aud = the issuer works once; replayed, or for another audience, it is refused.
    let a1 = assertion(&w.s.base, "par-1");
    let (status, pushed) = par(a1.clone()).await;
    assert_eq!(status, 201, "{pushed}");
    assert_eq!(par(a1).await.1["error"], "invalid_client");
    assert_eq!(
        par(assertion("https://elsewhere.example", "par-2")).await.1["error"],
        "invalid_client"
    );

    let mut b = Browser::new(&w.s.base);
    let page = b
        .login_via(
            &authorize_path(&id, pushed["request_uri"].as_str().unwrap()),
            &w.holder.0,
            &w.holder.1,
        )
        .await;
    let code = approve(&mut b, &page, &[]).await["code"].clone();

    let token_url = w.s.url("/token");
    let key = ed25519_key("d1");
    let post = |form: Vec<(&'static str, String)>, dpop: Option<String>| {
        let w = &w;
        let id = id.clone();
        let a = assertion(&w.s.base, &format!("tok-{}", rand_jti()));
        async move {
            let mut f = form;
            f.push((
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
            ));
            f.push(("client_assertion", a));
            f.push(("client_id", id));
            let mut req = w.s.http.post(w.s.url("/token")).form(&f);
            if let Some(p) = dpop {
                req = req.header("DPoP", p);
            }
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    let code_form = || {
        vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.clone()),
            ("redirect_uri", REDIRECT.to_owned()),
            ("code_verifier", verifier.secret().clone()),
        ]
    };
    // A client registered for DPoP gets no token without a proof, nor with a proof for another URL.
    assert_eq!(
        post(code_form(), None).await.1["error"],
        "invalid_dpop_proof"
    );
    assert_eq!(
        post(
            code_form(),
            Some(dpop_proof(&key, "POST", &w.s.url("/par"), "p0"))
        )
        .await
        .1["error"],
        "invalid_dpop_proof"
    );
    assert_eq!(
        post(
            code_form(),
            Some(dpop_proof(&key, "GET", &token_url, "p0b"))
        )
        .await
        .1["error"],
        "invalid_dpop_proof"
    );
    let proof = dpop_proof(&key, "POST", &token_url, "p1");
    let (status, t) = post(code_form(), Some(proof.clone())).await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["token_type"], "DPoP");
    let jkt = licensegate::oauth::dpop::thumbprint(&key.1).unwrap();
    assert_eq!(
        jwt_part(t["access_token"].as_str().unwrap(), 1)["cnf"]["jkt"],
        jkt
    );
    // The same proof again is a replay.
    let rt = t["refresh_token"].as_str().unwrap().to_owned();
    let refresh = || {
        vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", rt.clone()),
        ]
    };
    assert_eq!(
        post(refresh(), Some(proof)).await.1["error"],
        "invalid_dpop_proof"
    );
    // The refresh token works only with the same key.
    let other_key = ed25519_key("d2");
    assert_eq!(
        post(
            refresh(),
            Some(dpop_proof(&other_key, "POST", &token_url, "p2"))
        )
        .await
        .1["error"],
        "invalid_dpop_proof"
    );
    let (status, t2) = post(refresh(), Some(dpop_proof(&key, "POST", &token_url, "p3"))).await;
    assert_eq!(status, 200, "{t2}");
    assert_eq!(t2["token_type"], "DPoP");
    w.s.stop().await;
}

fn rand_jti() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[tokio::test]
async fn decoupled_flow_and_showing_a_license() {
    let w = world_with(|s| s.ciba_poll_interval = Some(1)).await;
    let (id, secret) = bank(&w, "91310000MA1CLBAB0", json!({})).await;
    let secret = secret.unwrap();
    let bc = |hint: &str, rar: String| {
        let w = &w;
        let (id, secret, hint) = (id.clone(), secret.clone(), hint.to_owned());
        async move {
            let res =
                w.s.http
                    .post(w.s.url("/bc-authorize"))
                    .basic_auth(&id, Some(&secret))
                    .form(&[
                        ("login_hint", hint.as_str()),
                        ("binding_message", "柜台 A-17"),
                        ("authorization_details", rar.as_str()),
                    ])
                    .send()
                    .await
                    .unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(
        bc("110101190001011234", details(Some(7), Some(2))).await.1["error"],
        "unknown_user_id"
    );
    let (status, started) = bc(&w.holder.0, details(Some(7), Some(2))).await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["interval"], 1);
    let auth_req_id = started["auth_req_id"].as_str().unwrap().to_owned();
    let poll = |rid: String| {
        let w = &w;
        let (id, secret) = (id.clone(), secret.clone());
        async move {
            token_form(
                w,
                &id,
                &secret,
                &[
                    ("grant_type", "urn:openid:params:grant-type:ciba"),
                    ("auth_req_id", &rid),
                ],
            )
            .await
        }
    };
    // The two polls straddle a second boundary (the first just before it,
    // the second just after, or at once if the first ended after it): the
    // second is still too early. A whole-second clock once let it through as
    // `authorization_pending`.
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let boundary = (unix_ms() + 100) / 1000 * 1000 + 1000;
    tokio::time::sleep(std::time::Duration::from_millis(
        (boundary - 100).saturating_sub(unix_ms()),
    ))
    .await;
    assert_eq!(
        poll(auth_req_id.clone()).await.1["error"],
        "authorization_pending"
    );
    tokio::time::sleep(std::time::Duration::from_millis(
        (boundary + 50).saturating_sub(unix_ms()),
    ))
    .await;
    assert_eq!(poll(auth_req_id.clone()).await.1["error"], "slow_down");

    // The holder sees the request, with the binding message, and approves it.
    let mut b = Browser::new(&w.s.base);
    let page = b
        .login_via("/holder/requests", &w.holder.0, &w.holder.1)
        .await;
    assert!(
        page.body.contains("柜台 A-17") && page.body.contains("测试商业银行"),
        "{}",
        page.body
    );
    let action_start = page.body.find("action=\"/holder/requests/").unwrap() + "action=\"".len();
    let action = page.body
        [action_start..action_start + page.body[action_start..].find('"').unwrap()]
        .to_owned();
    let csrf = hidden(&page.body, "csrf");
    assert_eq!(
        b.post(&action, &[("csrf", "forged"), ("decision", "approve")])
            .await
            .status,
        403
    );
    let done = b
        .post(&action, &[("csrf", &csrf), ("decision", "approve")])
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    tokio::time::sleep(std::time::Duration::from_millis(6500)).await;
    let (status, t) = poll(auth_req_id.clone()).await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["authorization_details"][0]["purpose"], "account_opening");
    assert!(t["refresh_token"].is_string());
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(poll(auth_req_id).await.1["error"], "invalid_grant");

    // Refused, and expired.
    let (_, refused) = bc(&w.holder.0, details(None, None)).await;
    let page = b.get("/holder/requests").await;
    let csrf = hidden(&page.body, "csrf");
    let action_start = page.body.find("action=\"/holder/requests/").unwrap() + "action=\"".len();
    let action = page.body
        [action_start..action_start + page.body[action_start..].find('"').unwrap()]
        .to_owned();
    assert_eq!(
        b.post(&action, &[("csrf", &csrf), ("decision", "refuse")])
            .await
            .status,
        200
    );
    assert_eq!(
        poll(refused["auth_req_id"].as_str().unwrap().to_owned())
            .await
            .1["error"],
        "access_denied"
    );
    let (_, late) = bc(&w.holder.0, details(None, None)).await;
    sqlx::query("UPDATE authorization_requests SET expires_at = 0 WHERE status = 'pending'")
        .execute(w.s.services.store.writer())
        .await
        .unwrap();
    assert_eq!(
        poll(late["auth_req_id"].as_str().unwrap().to_owned())
            .await
            .1["error"],
        "expired_token"
    );

    // Show a license (亮证): the holder picks the ID card and two fields.
    let form = b.get("/holder/show").await;
    assert_eq!(form.status, 200);
    let identifier = hidden_all(&form.body, "identifier")
        .into_iter()
        .find(|i| i.contains("JMSFZ"))
        .unwrap();
    let csrf = hidden(&form.body, "csrf");
    let shown = b
        .post(
            "/holder/show",
            &[
                ("csrf", &csrf),
                ("identifier", &identifier),
                ("field", "name"),
                ("field", "id_number"),
            ],
        )
        .await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    let code_start = shown.body.find("id=\"show-code\">").unwrap() + "id=\"show-code\">".len();
    let code =
        shown.body[code_start..code_start + shown.body[code_start..].find('<').unwrap()].to_owned();
    assert!(shown.body.contains(&format!("licensegate-show:{code}@")));
    let redeem = |purpose: &'static str, code: String| {
        let w = &w;
        let (id, secret) = (id.clone(), secret.clone());
        async move {
            token_form(
                w,
                &id,
                &secret,
                &[
                    (
                        "grant_type",
                        "urn:licensegate:params:oauth:grant-type:show-code",
                    ),
                    ("code", &code),
                    ("purpose", purpose),
                ],
            )
            .await
        }
    };
    // Redeemed once for a token good for one read of that license and those fields.
    let (status, t) = redeem("account_opening", code.clone()).await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(
        t["authorization_details"][0]["licenses"],
        json!([identifier])
    );
    assert_eq!(
        t["authorization_details"][0]["fields"],
        json!(["name", "id_number"])
    );
    assert!(t.get("refresh_token").is_none());
    let grant: Value = {
        let (_, cc) = token_form(&w, &id, &secret, &[("grant_type", "client_credentials")]).await;
        w.s.get(
            cc["access_token"].as_str().unwrap(),
            &format!("/grants/{}", t["grant_id"].as_str().unwrap()),
        )
        .await
        .json()
        .await
        .unwrap()
    };
    assert_eq!(grant["max_retrievals"], 1);
    assert_eq!(grant["flow"], "show_license");
    assert_eq!(
        redeem("account_opening", code).await.1["error"],
        "invalid_grant"
    );
    let shown = b
        .post(
            "/holder/show",
            &[
                ("csrf", &csrf),
                ("identifier", &identifier),
                ("field", "ethnicity"),
            ],
        )
        .await;
    let code_start = shown.body.find("id=\"show-code\">").unwrap() + "id=\"show-code\">".len();
    let code =
        shown.body[code_start..code_start + shown.body[code_start..].find('<').unwrap()].to_owned();
    assert_eq!(
        redeem("account_opening", code).await.1["error"],
        "invalid_authorization_details"
    );

    // Grant management: the entity revokes its CIBA grant.
    let grant_id = t["grant_id"].as_str().unwrap();
    let (_, cc) = token_form(&w, &id, &secret, &[("grant_type", "client_credentials")]).await;
    let res =
        w.s.http
            .delete(w.s.url(&format!("/grants/{grant_id}")))
            .bearer_auth(cc["access_token"].as_str().unwrap())
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), 204);
    w.s.stop().await;
}
