//! Retrieval and verification over a real socket: field filtering, the
//! issuer's SD-JWT and the broker's receipt checked independently, every
//! enforcement rule on the very next call, the budget under a race, DPoP at
//! the resource, and the holder's view of every read.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::flows::*;
use common::*;
use serde_json::{json, Value};

async fn api(w: &World, token: &str, path: &str) -> reqwest::Response {
    w.s.http
        .get(w.s.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

fn at(t: &Value) -> String {
    t["access_token"].as_str().unwrap().to_owned()
}

/// How many of `kinds` the holder was notified of. Each is done as it is
/// queued (no webhook is registered: nothing is left for the worker).
async fn notices(w: &World, holder_id: &str, kinds: &[&str]) -> usize {
    let of_kinds: Vec<_> =
        w.s.services
            .store
            .notifications_of("holder", holder_id)
            .await
            .unwrap()
            .into_iter()
            .filter(|n| kinds.contains(&n.kind.as_str()))
            .collect();
    assert!(
        of_kinds.iter().all(|n| n.status == "dispatched"),
        "{of_kinds:?}"
    );
    of_kinds.len()
}

/// The holder's access history, as the holder's pages fetch it.
async fn access_history(w: &World) -> Value {
    let mut b = Browser::new(&w.s.base);
    b.login_via("/holder/consents", &w.holder.0, &w.holder.1)
        .await;
    b.get_json("/holder/v1/access-history").await
}

async fn status_and_challenge(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let challenge = res
        .headers()
        .get("www-authenticate")
        .map(|h| h.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, challenge)
}

/// The audit records after the first `before` that serve or refuse something.
async fn reads_and_refusals_since(
    w: &World,
    before: usize,
) -> Vec<(String, String, Option<String>)> {
    let mut all = actions(w).await;
    all.split_off(before)
        .into_iter()
        .filter(|(a, o, _)| a == "license.retrieved" || o == "refused")
        .collect()
}

#[tokio::test]
async fn retrieval_serves_only_what_was_consented_and_proves_it() {
    let w = world_with(|_| {}).await;
    let (id, secret) = bank(&w, "91310000MA1RTRWB0", json!({})).await;
    let secret = secret.unwrap();
    let t = consent_tokens(&w, &id, &secret, &details(Some(30), Some(3))).await;
    let token = at(&t);

    let covered: Value = api(&w, &token, "/api/v1/licenses")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(covered["retrievals_left"], 3);
    assert_eq!(covered["purpose"], "account_opening");
    let identifier = covered["licenses"][0]["identifier"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        covered["licenses"][0]["fields"],
        json!(["name", "id_number"])
    );

    let res = api(&w, &token, &format!("/api/v1/licenses/{identifier}")).await;
    assert_eq!(res.status(), 200);
    let got: Value = res.json().await.unwrap();
    let fields = got["fields"].as_object().unwrap();
    let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["id_number", "name"]);
    assert_eq!(fields["id_number"], w.holder.0.as_str());
    // The SD-JWT verifies against the issuer's keys and discloses exactly these fields.
    let issuer_jwks: Value =
        w.s.http
            .get(got["issuer_jwks_uri"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let disclosed = verify_sd_jwt(got["sd_jwt"].as_str().unwrap(), &issuer_jwks);
    assert_eq!(&disclosed, fields);
    // The receipt verifies against the broker's keys and names the audit record.
    let broker_jwks: Value =
        w.s.http
            .get(w.s.url("/jwks.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let receipt = got["receipt"].as_str().unwrap();
    verify_with_jwks(receipt, &broker_jwks);
    let r = jwt_part(receipt, 1);
    assert_eq!(jwt_part(receipt, 0)["typ"], "retrieval-receipt+jwt");
    assert_eq!(r["audit_seq"], got["audit_seq"]);
    assert_eq!(r["entity"], id);
    assert_eq!(r["purpose"], "account_opening");
    assert!(r["annotation"].as_str().unwrap().contains("他用无效"));
    // Every claim of the receipt, from the retrieval's own values.
    let mut claims: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
    claims.sort_unstable();
    assert_eq!(
        claims,
        [
            "annotation",
            "audit_seq",
            "consent",
            "entity",
            "fields",
            "iat",
            "iss",
            "jti",
            "license",
            "purpose",
            "sd_hash",
            "usable_until"
        ]
    );
    assert!(r["iat"].is_i64() && r["jti"].as_str().is_some_and(|j| j.len() >= 16));
    assert_eq!(r["usable_until"], covered["expires_at"]);
    assert_eq!(r["fields"], json!(["name", "id_number"]));
    assert_eq!(
        r["license"],
        json!({
            "identifier": got["identifier"], "type": got["license_type"], "issuer": got["issuer"],
            "status": "valid", "valid_from": got["valid_from"], "valid_until": got["valid_until"],
        })
    );
    let sd_jwt = got["sd_jwt"].as_str().unwrap();
    let sd_hash = ring::digest::digest(&ring::digest::SHA256, sd_jwt.as_bytes());
    assert_eq!(r["sd_hash"], URL_SAFE_NO_PAD.encode(sd_hash.as_ref()));
    let until = covered["expires_at"].as_str().unwrap();
    assert_eq!(
        r["annotation"],
        format!(
            "仅供 {id} 用于 account_opening，有效期至 {until}；他用无效。Only for {id} for the purpose account_opening, until {until}; void for any other use."
        )
    );
    // The holder's notice of this read names the same.
    let notice =
        w.s.services
            .store
            .notifications_of("holder", jwt_part(&token, 1)["sub"].as_str().unwrap())
            .await
            .unwrap()
            .into_iter()
            .find(|n| n.kind == "license.retrieved")
            .unwrap();
    let notice: Value = serde_json::from_str(&notice.payload).unwrap();
    assert_eq!(
        notice,
        json!({
            "entity": id, "license": got["identifier"], "license_type": got["license_type"],
            "fields": ["name", "id_number"], "purpose": "account_opening", "consent": r["consent"],
            "at": notice["at"],
        })
    );
    assert!(notice["at"]
        .as_str()
        .is_some_and(|t| t.len() == 27 && t.ends_with('Z')));
    let seq = got["audit_seq"].as_i64().unwrap();
    let rec = w.s.services.store.audit_range(seq - 1, seq).await.unwrap();
    assert_eq!(rec[0].action, "license.retrieved");
    assert_eq!(rec[0].consent.as_deref(), r["consent"].as_str());
    // ...with an inclusion proof under a signed checkpoint, checked from the RFC.
    let regulator = w.s.regulator_token().await;
    let cp: Value =
        w.s.post_json(&regulator, "/audit/v1/checkpoints/latest", &json!({}))
            .await
            .json()
            .await
            .unwrap();
    let size = cp["tree_size"].as_i64().unwrap();
    let proof: Value =
        w.s.get(
            &regulator,
            &format!("/audit/v1/records/{seq}/inclusion?tree_size={size}"),
        )
        .await
        .json()
        .await
        .unwrap();
    let path: Vec<[u8; 32]> = proof["audit_path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| unhex(h.as_str().unwrap()))
        .collect();
    assert!(rfc_verify_inclusion(
        &unhex(proof["record_hash"].as_str().unwrap()),
        seq as u64 - 1,
        size as u64,
        &path,
        &unhex(cp["root_hash"].as_str().unwrap())
    ));

    // Verification (核验): the SD-JWT shown, then fields held.
    let verify = |body: Value| {
        let w = &w;
        let token = token.clone();
        async move {
            let res =
                w.s.http
                    .post(w.s.url("/api/v1/verifications"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    let (s, v) = verify(json!({"identifier": identifier, "sd_jwt": got["sd_jwt"]})).await;
    assert_eq!(
        (s, &v["authentic"], &v["current"]),
        (200, &json!(true), &json!(true)),
        "{v}"
    );
    let (_, v) =
        verify(json!({"identifier": identifier, "fields": {"name": fields["name"]}})).await;
    assert_eq!(v["authentic"], true);
    let (_, v) = verify(json!({"identifier": identifier, "fields": {"name": "张冒名"}})).await;
    assert_eq!(
        (&v["authentic"], &v["mismatched_fields"]),
        (&json!(false), &json!(["name"]))
    );
    let (s, _) = verify(json!({"identifier": identifier, "fields": {"sex": "男"}})).await;
    assert_eq!(s, 403);
    let (s, _) = verify(json!({"identifier": identifier, "sd_jwt": "eyJ.forged.sig"})).await;
    assert_eq!(s, 200);

    // Not covered: 404 without saying more.
    assert_eq!(
        api(
            &w,
            &token,
            "/api/v1/licenses/1.2.156.3005.2.JMSFZ.11310000002420005R.99999999.001.X"
        )
        .await
        .status(),
        404
    );
    // The budget: 3 reads, then refused (audited).
    assert_eq!(
        api(&w, &token, &format!("/api/v1/licenses/{identifier}"))
            .await
            .status(),
        200
    );
    assert_eq!(
        api(&w, &token, &format!("/api/v1/licenses/{identifier}"))
            .await
            .status(),
        200
    );
    assert_eq!(
        api(&w, &token, &format!("/api/v1/licenses/{identifier}"))
            .await
            .status(),
        403
    );

    // The holder sees every read, and a notification is queued for each.
    let history = access_history(&w).await;
    let reads = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "license.retrieved")
        .count();
    let checks = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "license.verified")
        .count();
    assert_eq!((reads, checks), (3, 4));
    assert_eq!(history[0]["entity"], id);
    let holder_id = jwt_part(&token, 1)["sub"].as_str().unwrap().to_owned();
    // (not license.expiring: the reminder job may have run by now)
    assert_eq!(
        notices(&w, &holder_id, &["license.retrieved", "license.verified"]).await,
        7
    );
    w.s.stop().await;
}

#[tokio::test]
async fn every_rule_applies_on_the_next_call() {
    let w = world_with(|_| {}).await;
    let (id, secret) = bank(&w, "91310000MA1RULEB0", json!({})).await;
    let secret = secret.unwrap();
    let rar = details(Some(30), Some(3));
    let fresh = || consent_tokens(&w, &id, &secret, &rar);
    let t = fresh().await;
    let token = at(&t);
    let covered: Value = api(&w, &token, "/api/v1/licenses")
        .await
        .json()
        .await
        .unwrap();
    let identifier = covered["licenses"][0]["identifier"]
        .as_str()
        .unwrap()
        .to_owned();
    let read = |token: String| {
        let w = &w;
        let path = format!("/api/v1/licenses/{identifier}");
        async move { status_and_challenge(api(w, &token, &path).await).await }
    };

    // No token, a malformed one, a client_credentials token.
    let (s, c) = status_and_challenge(
        w.s.http
            .get(w.s.url("/api/v1/licenses"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 401);
    assert!(
        c.starts_with("Bearer") && c.contains("invalid_token"),
        "{c}"
    );
    assert_eq!(read("not.a.jwt".into()).await.0, 401);
    let (_, cc) = token_form(&w, &id, &secret, &[("grant_type", "client_credentials")]).await;
    assert!(cc["access_token"].is_string(), "{cc}");
    let (s, c) = read(at(&cc)).await;
    assert_eq!(s, 403);
    assert!(c.contains("insufficient_scope"), "{c}");

    // The token revoked: refused at once; a refreshed one still works.
    assert_eq!(read(token.clone()).await.0, 200);
    let res =
        w.s.http
            .post(w.s.url("/revoke"))
            .basic_auth(&id, Some(&secret))
            .form(&[("token", token.as_str())])
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), 200);
    // Refused on the state kept from the read before, the call is decided
    // again on a fresh read: one refusal on record, nothing served.
    let before = actions(&w).await.len();
    assert_eq!(read(token.clone()).await.0, 401);
    let new = reads_and_refusals_since(&w, before).await;
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(new[0].1, "refused", "{new:?}");
    let (_, t2) = token_form(
        &w,
        &id,
        &secret,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", t["refresh_token"].as_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(read(at(&t2)).await.0, 200);

    // The entity suspended, then reinstated.
    assert_eq!(
        w.s.post_json(
            &w.op,
            &format!("/admin/v1/entities/{id}/suspend"),
            &json!({"reason": "inspection"})
        )
        .await
        .status(),
        200
    );
    let (s, c) = read(at(&t2)).await;
    assert_eq!(s, 401, "{c}");
    assert_eq!(
        w.s.post_json(
            &w.op,
            &format!("/admin/v1/entities/{id}/reinstate"),
            &json!({"reason": "cleared"})
        )
        .await
        .status(),
        200
    );
    let (_, t3) = token_form(
        &w,
        &id,
        &secret,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", t["refresh_token"].as_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(read(at(&t3)).await.0, 200, "{t3}");

    // The scenario withdrawn: refused by the use list; approved again: allowed.
    // The token was used before, so its call went by what that call read.
    let spare = fresh().await;
    assert_eq!(read(at(&spare)).await.0, 200);
    assert_eq!(set_bank_scenario_withdrawn(&w, &id, true).await, 200);
    let before = actions(&w).await.len();
    assert_eq!(read(at(&spare)).await.0, 403);
    let new = reads_and_refusals_since(&w, before).await;
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(new[0].1, "refused", "{new:?}");
    assert_eq!(set_bank_scenario_withdrawn(&w, &id, false).await, 200);
    assert_eq!(read(at(&spare)).await.0, 200);

    // The consent revoked by the entity (grant management): every token dies.
    let fresh_t = fresh().await;
    assert_eq!(read(at(&fresh_t)).await.0, 200);
    let res =
        w.s.http
            .delete(w.s.url(&format!(
                "/grants/{}",
                fresh_t["grant_id"].as_str().unwrap()
            )))
            .bearer_auth(at(&cc))
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), 204);
    let (s, c) = read(at(&fresh_t)).await;
    assert_eq!(s, 401);
    assert!(c.contains("consent was revoked"), "{c}");

    // The license suspended by its issuer: reported, not served.
    let base = identifier.rsplitn(3, '.').nth(2).unwrap().to_owned();
    let issuer_creds: Value = serde_json::from_str(
        &std::fs::read_to_string(w.s.dir.path().join("demo-credentials.json")).unwrap(),
    )
    .unwrap();
    let mut suspended = false;
    for c in issuer_creds["clients"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["role"] == "issuer")
    {
        let tok =
            w.s.token(
                c["client_id"].as_str().unwrap(),
                c["client_secret"].as_str().unwrap(),
            )
            .await;
        let res =
            w.s.post_json(
                &tok,
                &format!("/issuer/v1/licenses/{identifier}/suspend"),
                &json!({"reason": "under review"}),
            )
            .await;
        if res.status() == 200 {
            suspended = true;
            break;
        }
    }
    assert!(suspended, "the ID card's issuer suspends it ({base})");
    let last = fresh().await;
    let res = api(&w, &at(&last), &format!("/api/v1/licenses/{identifier}")).await;
    assert_eq!(res.status(), 403);
    let problem: Value = res.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("only-valid-licenses-are-retrieved"),
        "{problem}"
    );
    let covered: Value = api(&w, &at(&last), "/api/v1/licenses")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(covered["licenses"][0]["status"], "suspended");
    w.s.stop().await;
}

#[tokio::test]
async fn the_budget_holds_under_a_race() {
    let w = world_with(|_| {}).await;
    let (id, secret) = bank(&w, "91310000MA1RACEB0", json!({})).await;
    let secret = secret.unwrap();
    // Two consents of one holder, budgets 3 and 2, read at once: their spends
    // share group commits and are decided together.
    let three = at(&consent_tokens(&w, &id, &secret, &details(Some(30), Some(3))).await);
    let two = at(&consent_tokens(&w, &id, &secret, &details(Some(30), Some(2))).await);
    let covered: Value = api(&w, &three, "/api/v1/licenses")
        .await
        .json()
        .await
        .unwrap();
    let path = format!(
        "/api/v1/licenses/{}",
        covered["licenses"][0]["identifier"].as_str().unwrap()
    );
    let holder_id = jwt_part(&three, 1)["sub"].as_str().unwrap().to_owned();
    let before = actions(&w).await.len();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let token = if i % 2 == 0 { &three } else { &two };
        let (http, url, token) = (w.s.http.clone(), w.s.url(&path), token.clone());
        tasks.push(tokio::spawn(async move {
            let status = http
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            (i % 2, status)
        }));
    }
    let mut ok = [0; 2];
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            (which, 200) => ok[which] += 1,
            (_, 403) => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((ok, refused), ([3, 2], 95));
    let after = actions(&w).await;
    let new = &after[before..];
    assert_eq!(reads_and_budget_refusals(new), (5, 95));
    assert_eq!(
        notices(&w, &holder_id, &["license.retrieved"]).await,
        5,
        "one notice per read served, none per refusal"
    );
    w.s.stop().await;
}

#[tokio::test]
async fn sender_constrained_tokens_need_their_key_at_the_resource() {
    let w = world_with(|_| {}).await;
    let (id, secret) = bank(
        &w,
        "91310000MA1DPRTB0",
        json!({"dpop_bound_access_tokens": true}),
    )
    .await;
    let secret = secret.unwrap();
    let key = ed25519_key("k");
    let (request_uri, verifier) = pushed(&w, &id, &secret, &details(Some(30), Some(3))).await;
    let mut b = Browser::new(&w.s.base);
    let page = b
        .login_via(&authorize_path(&id, &request_uri), &w.holder.0, &w.holder.1)
        .await;
    let code = approve(&mut b, &page, &[]).await["code"].clone();
    let res =
        w.s.http
            .post(w.s.url("/token"))
            .basic_auth(&id, Some(&secret))
            .header("DPoP", dpop_proof(&key, "POST", &w.s.url("/token"), "t1"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", verifier.secret()),
            ])
            .send()
            .await
            .unwrap();
    let t: Value = res.json().await.unwrap();
    assert_eq!(t["token_type"], "DPoP", "{t}");
    let token = at(&t);
    let url = w.s.url("/api/v1/licenses");
    let call = |scheme: &'static str, proof: Option<String>| {
        let (w, token, url) = (&w, token.clone(), url.clone());
        async move {
            let mut req =
                w.s.http
                    .get(&url)
                    .header("authorization", format!("{scheme} {token}"));
            if let Some(p) = proof {
                req = req.header("DPoP", p);
            }
            status_and_challenge(req.send().await.unwrap()).await
        }
    };
    // As a bearer token: refused, with a DPoP challenge.
    let (s, c) = call("Bearer", None).await;
    assert_eq!(s, 401);
    assert!(c.starts_with("DPoP"), "{c}");
    // Without a proof, with a proof for another URL, without ath, by another key: refused.
    assert_eq!(call("DPoP", None).await.0, 401);
    assert_eq!(
        call(
            "DPoP",
            Some(dpop_proof_for(
                &key,
                "GET",
                &w.s.url("/api/v1/verifications"),
                "r1",
                Some(&token)
            ))
        )
        .await
        .0,
        401
    );
    assert_eq!(
        call("DPoP", Some(dpop_proof(&key, "GET", &url, "r2")))
            .await
            .0,
        401
    );
    assert_eq!(
        call(
            "DPoP",
            Some(dpop_proof_for(
                &ed25519_key("x"),
                "GET",
                &url,
                "r3",
                Some(&token)
            ))
        )
        .await
        .0,
        401
    );
    // With its key: served; the same proof again is a replay.
    let proof = dpop_proof_for(&key, "GET", &url, "r4", Some(&token));
    assert_eq!(call("DPoP", Some(proof.clone())).await.0, 200);
    assert_eq!(call("DPoP", Some(proof)).await.0, 401);
    w.s.stop().await;
}

#[tokio::test]
async fn the_access_history_shows_the_newest_reads_of_a_long_history() {
    let w = world_with(|_| {}).await;
    let (id, secret) = bank(&w, "91310000MA1RTRWB0", json!({})).await;
    let token = at(&consent_tokens(&w, &id, &secret.unwrap(), &details(Some(30), Some(3))).await);
    let holder_id = jwt_part(&token, 1)["sub"].as_str().unwrap().to_owned();
    // A thousand older reads of this holder's licenses by someone else.
    let old: Vec<_> = (0..1000)
        .map(|i| {
            licensegate::audit::AuditEvent::new(
                licensegate::audit::ActorKind::Entity,
                "ent_earlier",
                if i % 2 == 0 {
                    "license.retrieved"
                } else {
                    "license.verified"
                },
                licensegate::audit::Outcome::Success,
            )
            .holder(&holder_id)
        })
        .collect();
    w.s.services.audit.record_all(old).await.unwrap();
    let covered: Value = api(&w, &token, "/api/v1/licenses")
        .await
        .json()
        .await
        .unwrap();
    let identifier = covered["licenses"][0]["identifier"].as_str().unwrap();
    let res = api(&w, &token, &format!("/api/v1/licenses/{identifier}")).await;
    assert_eq!(res.status(), 200);

    let history = access_history(&w).await;
    let history = history.as_array().unwrap();
    assert_eq!(history.len(), 1000, "the last thousand reads and checks");
    assert_eq!(history[0]["entity"], id, "the newest read comes first");
    assert_eq!(history[0]["action"], "license.retrieved");
    assert_eq!(history[0]["license"], identifier);
    assert!(history[1..].iter().all(|e| e["entity"] == "ent_earlier"));
    let seqs: Vec<i64> = history.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|p| p[0] > p[1]), "newest first");
    w.s.stop().await;
}
