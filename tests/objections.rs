//! Objections and notifications over a real socket: due dates in working
//! days, the issuer's queue and answers (a correction is a new version),
//! overdue objections for regulators, the daily reminder job run twice, and
//! webhook deliveries: signed, retried, then dead.

mod common;

use std::sync::{Arc, Mutex};

use common::flows::*;
use common::*;
use licensegate::oauth::Role;
use serde_json::{json, Value};
use time::{Duration, OffsetDateTime, UtcOffset, Weekday};

fn today_cst() -> time::Date {
    OffsetDateTime::now_utc()
        .to_offset(UtcOffset::from_hms(8, 0, 0).unwrap())
        .date()
}

fn ymd(d: time::Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// The holder's session: a browser logged in, and its CSRF token.
async fn holder_session(w: &World, who: &(String, String)) -> (Browser, String) {
    let mut b = Browser::new(&w.s.url(""));
    let page = b.login_via("/holder/consents", &who.0, &who.1).await;
    let csrf = hidden(&page.body, "csrf");
    (b, csrf)
}

async fn holder_call(
    w: &World,
    b: &Browser,
    method: reqwest::Method,
    path: &str,
    csrf: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req =
        w.s.http
            .request(method, w.s.url(path))
            .header("cookie", b.cookie_header());
    if let Some(c) = csrf {
        req = req.header("x-csrf-token", c);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn issuer_of(w: &World, license_type: &str) -> String {
    let ty: Value =
        w.s.http
            .get(w.s.url(&format!("/catalog/v1/license-types/{license_type}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let (id, secret) =
        w.s.client(Role::Issuer, Some(ty["issuer"].as_str().unwrap()))
            .await;
    w.s.token(&id, &secret).await
}

#[tokio::test]
async fn objections_are_due_in_working_days_and_answered_by_the_issuer() {
    // The next three calendar days are public holidays.
    let today = today_cst();
    let holidays: Vec<String> = (1..=3).map(|i| ymd(today + Duration::days(i))).collect();
    let hol = holidays.clone();
    let w = world_with(move |s| s.holidays = Some(hol)).await;
    let (id, secret) = bank(&w, "91310000MA1DBJCB0", json!({})).await;
    let secret = secret.unwrap();
    let t = consent_tokens(&w, &id, &secret, &details(Some(30), Some(3))).await;
    let token = t["access_token"].as_str().unwrap().to_owned();
    let covered: Value =
        w.s.http
            .get(w.s.url("/api/v1/licenses"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let license = covered["licenses"][0]["identifier"]
        .as_str()
        .unwrap()
        .to_owned();

    // The due date, counted here independently: 5 days that are neither
    // weekends nor the holidays, after today.
    let mut due = today;
    let mut left = 5;
    while left > 0 {
        due += Duration::days(1);
        let weekend = matches!(due.weekday(), Weekday::Saturday | Weekday::Sunday);
        if !weekend && !holidays.contains(&ymd(due)) {
            left -= 1;
        }
    }

    let (b, csrf) = holder_session(&w, &w.holder).await;
    let objection = json!({"license": license, "fields": ["address"], "reason": "住址已变更", "evidence": "户籍迁移证明 No. 2026-0012"});
    // Without the CSRF header: refused, nothing filed.
    let (status, _) = holder_call(
        &w,
        &b,
        reqwest::Method::POST,
        "/holder/v1/objections",
        None,
        Some(objection.clone()),
    )
    .await;
    assert_eq!(status, 403);
    let (status, bad) = holder_call(
        &w,
        &b,
        reqwest::Method::POST,
        "/holder/v1/objections",
        Some(&csrf),
        Some(json!({"license": license, "fields": ["shoe_size"], "reason": "x"})),
    )
    .await;
    assert_eq!(status, 422, "{bad}");
    let (status, _) = holder_call(
        &w,
        &b,
        reqwest::Method::POST,
        "/holder/v1/objections",
        Some(&csrf),
        Some(json!({"license": license, "fields": ["address"], "reason": "  "})),
    )
    .await;
    assert_eq!(status, 422);
    let (status, filed) = holder_call(
        &w,
        &b,
        reqwest::Method::POST,
        "/holder/v1/objections",
        Some(&csrf),
        Some(objection),
    )
    .await;
    assert_eq!(status, 201, "{filed}");
    assert_eq!(filed["status"], "open");
    assert_eq!(filed["due_on"], ymd(due));
    assert_eq!(filed["objector_kind"], "holder");
    assert_eq!(filed["overdue"], false);
    // Another holder cannot object to this license.
    let (b2, csrf2) = holder_session(&w, &w.other_holder).await;
    let (status, _) = holder_call(
        &w,
        &b2,
        reqwest::Method::POST,
        "/holder/v1/objections",
        Some(&csrf2),
        Some(json!({"license": license, "fields": ["name"], "reason": "不是我的"})),
    )
    .await;
    assert_eq!(status, 404);
    let (_, mine) = holder_call(
        &w,
        &b2,
        reqwest::Method::GET,
        "/holder/v1/objections",
        None,
        None,
    )
    .await;
    assert_eq!(mine, json!([]));

    // The entity objects through its consent token; a license outside its consent is not found.
    let res =
        w.s.post_json(
            &token,
            "/api/v1/objections",
            &json!({"license": license, "fields": ["name"], "reason": "姓名与营业执照登记不一致"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let by_entity: Value = res.json().await.unwrap();
    assert_eq!(by_entity["objector"], id);
    let res =
        w.s.post_json(
            &token,
            "/api/v1/objections",
            &json!({"license": "310101199001011234X", "fields": ["name"], "reason": "x"}),
        )
        .await;
    assert!(
        matches!(res.status().as_u16(), 404 | 422),
        "{}",
        res.status()
    );

    // The issuing unit's queue holds both; another unit sees neither.
    let issuer = issuer_of(&w, "JMSFZ").await;
    let queue: Value =
        w.s.get(&issuer, "/issuer/v1/objections")
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(queue.as_array().unwrap().len(), 2, "{queue}");
    let other = issuer_of(&w, "YYZZ").await;
    let none: Value =
        w.s.get(&other, "/issuer/v1/objections")
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(none, json!([]));
    let res =
        w.s.post_json(
            &other,
            &format!(
                "/issuer/v1/objections/{}/resolution",
                filed["id"].as_str().unwrap()
            ),
            &json!({"decision": "reject", "reason": "x"}),
        )
        .await;
    assert_eq!(res.status(), 404);

    // Correct: a new version of the license with the new address.
    let current: Value =
        w.s.get(&issuer, &format!("/issuer/v1/licenses/{license}"))
            .await
            .json()
            .await
            .unwrap();
    let mut fields = current["fields"].clone();
    fields["address"] = json!("上海市浦东新区世纪大道 100 号");
    let res =
        w.s.post_json(
            &issuer,
            &format!(
                "/issuer/v1/objections/{}/resolution",
                filed["id"].as_str().unwrap()
            ),
            &json!({"decision": "correct", "fields": fields, "valid_from": current["valid_from"],
                "valid_until": current["valid_until"], "reason": "已按户籍信息更正住址"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let corrected: Value = res.json().await.unwrap();
    assert_eq!(corrected["status"], "corrected");
    let new_license = corrected["new_license"].as_str().unwrap().to_owned();
    assert_ne!(new_license, license);
    let history: Value =
        w.s.get(
            &issuer,
            &format!("/issuer/v1/licenses/{new_license}/history"),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        history["versions"].as_array().unwrap().len(),
        current["version"].as_i64().unwrap() as usize + 1
    );
    let now: Value =
        w.s.get(&issuer, &format!("/issuer/v1/licenses/{new_license}"))
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(now["fields"]["address"], "上海市浦东新区世纪大道 100 号");

    // Reject the entity's; answering twice is a conflict.
    let path = format!(
        "/issuer/v1/objections/{}/resolution",
        by_entity["id"].as_str().unwrap()
    );
    let res =
        w.s.post_json(
            &issuer,
            &path,
            &json!({"decision": "reject", "reason": "与户籍登记一致"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let res =
        w.s.post_json(
            &issuer,
            &path,
            &json!({"decision": "reject", "reason": "again"}),
        )
        .await;
    assert_eq!(res.status(), 409);
    let res =
        w.s.post_json(&issuer, &path, &json!({"decision": "maybe"}))
            .await;
    assert_eq!(res.status(), 422);

    // Each objector was told of each step.
    let store = &w.s.services.store;
    let holder_id = jwt_part(&token, 1)["sub"].as_str().unwrap().to_owned();
    let told: Vec<String> = store
        .notifications_of("holder", &holder_id)
        .await
        .unwrap()
        .iter()
        .filter(|n| n.kind == "objection.updated")
        .map(|n| n.payload.clone())
        .collect();
    assert_eq!(told.len(), 2);
    assert!(told.iter().any(|p| p.contains("corrected")));
    let told = store.notifications_of("entity", &id).await.unwrap();
    assert_eq!(
        told.iter()
            .filter(|n| n.kind == "objection.updated")
            .count(),
        2
    );
    let acts = actions(&w).await;
    for a in [
        "objection.filed",
        "objection.corrected",
        "objection.rejected",
    ] {
        assert!(acts.iter().any(|(x, o, _)| x == a && o == "success"), "{a}");
    }
    // The second answer's refusal is on record too.
    assert!(
        acts.iter().any(|(_, o, r)| o == "refused"
            && r.as_deref().is_some_and(|r| r.contains("already rejected"))),
        "{acts:?}"
    );

    // Overdue: an open objection past its due date is on the regulators' list.
    let res =
        w.s.post_json(
            &token,
            "/api/v1/objections",
            &json!({"license": new_license, "fields": ["sex"], "reason": "性别登记错误"}),
        )
        .await;
    let late: Value = res.json().await.unwrap();
    sqlx::query("UPDATE objections SET due_on = '2020-01-06' WHERE id = $1")
        .bind(late["id"].as_str().unwrap())
        .execute(store.writer())
        .await
        .unwrap();
    let reg = w.s.regulator_token().await;
    let overdue: Value =
        w.s.get(&reg, "/audit/v1/objections?overdue=true")
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(overdue.as_array().unwrap().len(), 1, "{overdue}");
    assert_eq!(overdue[0]["id"], late["id"]);
    assert_eq!(overdue[0]["overdue"], true);
    let all: Value =
        w.s.get(&reg, "/audit/v1/objections")
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(all.as_array().unwrap().len(), 3);
    // An issuer token is not a regulator's.
    assert_eq!(w.s.get(&issuer, "/audit/v1/objections").await.status(), 403);
    w.s.stop().await;
}

/// A webhook receiver: answers `status`, keeps what it got.
async fn receiver(status: u16) -> (String, Arc<Mutex<Vec<(axum::http::HeaderMap, String)>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let keep = keep.clone();
            async move {
                keep.lock().unwrap().push((headers, body));
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), got)
}

/// Runs a delivery round (`POST /admin/v1/jobs/deliveries`) and returns
/// what it did.
async fn delivery_round(w: &World) -> Value {
    let res =
        w.s.post_json(&w.op, "/admin/v1/jobs/deliveries", &json!({}))
            .await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// The Standard Webhooks signature, computed here with ring's HMAC.
fn expected_signature(secret: &str, id: &str, ts: &str, body: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    format!(
        "v1,{}",
        b64.encode(ring::hmac::sign(&k, format!("{id}.{ts}.{body}").as_bytes()))
    )
}

#[tokio::test]
async fn reminders_are_queued_once_and_failing_webhooks_end_dead() {
    let w = world_with(|s| {
        s.webhook_retry_base = Some(0);
        s.webhook_max_attempts = Some(3);
        s.notify_interval = Some(3600);
    })
    .await;
    let (good_url, good) = receiver(204).await;
    let (bad_url, bad) = receiver(500).await;
    let res =
        w.s.post_json(
            &w.op,
            "/admin/v1/webhooks",
            &json!({"url": good_url, "kinds": ["license.expiring", "consent.expired"]}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let good_secret = res.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let res =
        w.s.post_json(
            &w.op,
            "/admin/v1/webhooks",
            &json!({"url": bad_url, "kinds": ["license.expiring"]}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let res =
        w.s.post_json(
            &w.op,
            "/admin/v1/webhooks",
            &json!({"url": "http://example.com/hook"}),
        )
        .await;
    assert_eq!(res.status(), 422);

    // Three licenses of new holders: ending in 5 days, in 20 days, in 200 days.
    let police = issuer_of(&w, "JMSFZ").await;
    let today = today_cst();
    let mut holders = Vec::new();
    for (n, days) in [(1u32, 5i64), (2, 20), (3, 200)] {
        let mut p = publication(n);
        p["license_type"] = json!("JMSFZ");
        let f = &mut p["fields"];
        f["ethnicity"] = json!("汉");
        f["address"] = json!("上海市黄浦区中山东一路 1 号");
        f["issuing_authority"] = json!("上海市公安局黄浦分局");
        f.as_object_mut().unwrap().remove("authority");
        p["valid_until"] = json!(ymd(today + Duration::days(days)));
        let res = w.s.post_json(&police, "/issuer/v1/licenses", &p).await;
        assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
        holders.push(p["holder"]["identifier"].as_str().unwrap().to_owned());
    }
    // The second holder turns expiry reminders off.
    let res =
        w.s.post_json(
            &w.op,
            "/admin/v1/holder-accounts",
            &json!({"identifier": holders[1], "password": "correct horse battery"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let holder2 = res.json::<Value>().await.unwrap()["holder_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (b, csrf) = holder_session(&w, &(holders[1].clone(), "correct horse battery".into())).await;
    let (status, prefs) = holder_call(
        &w,
        &b,
        reqwest::Method::PUT,
        "/holder/v1/notification-preferences",
        Some(&csrf),
        Some(json!([{"kind": "license.expiring", "enabled": false}])),
    )
    .await;
    assert_eq!(status, 200);
    assert!(prefs
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["kind"] == "license.expiring" && p["enabled"] == false));
    let (status, _) = holder_call(
        &w,
        &b,
        reqwest::Method::PUT,
        "/holder/v1/notification-preferences",
        Some(&csrf),
        Some(json!([{"kind": "spam", "enabled": true}])),
    )
    .await;
    assert_eq!(status, 422);

    // A consent that has ended.
    let (id, secret) = bank(&w, "91310000MA1RMNDB0", json!({})).await;
    let t = consent_tokens(&w, &id, &secret.unwrap(), &details(Some(30), Some(3))).await;
    let consent = t["grant_id"].as_str().unwrap().to_owned();
    let ended = OffsetDateTime::now_utc().unix_timestamp() - 60;
    sqlx::query("UPDATE consents SET expires_at = $1 WHERE id = $2")
        .bind(ended)
        .bind(&consent)
        .execute(w.s.services.store.writer())
        .await
        .unwrap();

    // A long-lived consent granted 91 days ago (its 90-day reminder is due).
    let (id2, secret2) = bank(&w, "91310000MA1LNGAB0", json!({})).await;
    let t2 = consent_tokens(&w, &id2, &secret2.unwrap(), &details(Some(30), Some(3))).await;
    let long_lived = t2["grant_id"].as_str().unwrap().to_owned();
    let granted = licensegate::store::timestamp(OffsetDateTime::now_utc() - Duration::days(91));
    sqlx::query("UPDATE consents SET created_at = $1 WHERE id = $2")
        .bind(&granted)
        .bind(&long_lived)
        .execute(w.s.services.store.writer())
        .await
        .unwrap();

    let first: Value =
        w.s.post_json(&w.op, "/admin/v1/jobs/reminders", &json!({}))
            .await
            .json()
            .await
            .unwrap();
    let second: Value =
        w.s.post_json(&w.op, "/admin/v1/jobs/reminders", &json!({}))
            .await
            .json()
            .await
            .unwrap();
    assert!(first["license_expiring"].as_i64().unwrap() >= 2, "{first}");
    assert!(first["consent_expired"].as_i64().unwrap() >= 1, "{first}");
    assert_eq!(first["consent_reminders"], 1, "{first}");
    assert_eq!(
        second,
        json!({"license_expiring": 0, "consent_expired": 0, "consent_reminders": 0})
    );
    let store = &w.s.services.store;
    let mut reminded = Vec::new();
    for h in &holders {
        let (hid, _) =
            w.s.services
                .library
                .holder_by_identifier(h)
                .await
                .unwrap()
                .unwrap();
        let n = store.notifications_of("holder", &hid).await.unwrap();
        reminded.push(n.iter().filter(|n| n.kind == "license.expiring").count());
        if let Some(r) = n.iter().find(|n| n.kind == "license.expiring") {
            let p: Value = serde_json::from_str(&r.payload).unwrap();
            assert_eq!(p["threshold_days"], if h == &holders[0] { 7 } else { 30 });
        }
    }
    assert_eq!(reminded, [1, 1, 0]);

    // Round 1: the good endpoint gets every reminder it subscribed to
    // (signed), the failing one fails; holder 2's reminder is suppressed.
    let round: Value = delivery_round(&w).await;
    assert!(round["delivered"].as_i64().unwrap() >= 2, "{round}");
    assert!(round["failed"].as_i64().unwrap() >= 1, "{round}");
    {
        let got = good.lock().unwrap();
        let holder2_reminders = got
            .iter()
            .filter(|(_, b)| b.contains(&holder2) && b.contains("license.expiring"))
            .count();
        assert_eq!(holder2_reminders, 0);
        assert!(got
            .iter()
            .any(|(_, b)| b.contains("consent.expired") && b.contains(&consent)));
        for (h, body) in got.iter() {
            let id = h["webhook-id"].to_str().unwrap();
            let ts = h["webhook-timestamp"].to_str().unwrap();
            assert_eq!(
                h["webhook-signature"].to_str().unwrap(),
                expected_signature(&good_secret, id, ts, body)
            );
            let v: Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["data"]["id"], id);
        }
    }
    let n2 = store.notifications_of("holder", &holder2).await.unwrap();
    assert!(n2
        .iter()
        .any(|n| n.kind == "license.expiring" && n.status == "suppressed"));

    // Rounds 2 and 3: the failing endpoint is retried, then its deliveries are dead.
    let failures = bad.lock().unwrap().len();
    delivery_round(&w).await;
    delivery_round(&w).await;
    assert_eq!(bad.lock().unwrap().len(), failures * 3);
    let dead: Value =
        w.s.get(&w.op, "/admin/v1/deliveries?status=dead")
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(dead.as_array().unwrap().len(), failures, "{dead}");
    assert_eq!(dead[0]["attempts"], 3);
    assert_eq!(dead[0]["last_error"], "the endpoint answered 500");
    // A fourth round sends nothing more; good deliveries are never repeated.
    let delivered_before = good.lock().unwrap().len();
    delivery_round(&w).await;
    assert_eq!(bad.lock().unwrap().len(), failures * 3);
    assert_eq!(good.lock().unwrap().len(), delivered_before);
    // An operator puts one back in the queue.
    let one = dead[0]["id"].as_str().unwrap();
    let res =
        w.s.post_json(
            &w.op,
            &format!("/admin/v1/deliveries/{one}/retry"),
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), 204);
    let res =
        w.s.post_json(
            &w.op,
            &format!("/admin/v1/deliveries/{one}/retry"),
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), 409);
    delivery_round(&w).await;
    assert_eq!(bad.lock().unwrap().len(), failures * 3 + 1);
    w.s.stop().await;
}

/// The `webhook-id`s of the deliveries received, sorted.
fn webhook_ids(got: &[(axum::http::HeaderMap, String)]) -> Vec<String> {
    let mut ids: Vec<String> = got
        .iter()
        .map(|(h, _)| h["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    ids.sort_unstable();
    ids
}

/// Queues `rows` as a group commit does (one statement).
async fn queue_in_a_commit(w: &World, rows: &[licensegate::store::notify::NotificationRow]) {
    let refs: Vec<&_> = rows.iter().collect();
    let mut conn = w.s.services.store.writer().acquire().await.unwrap();
    licensegate::store::Store::insert_notifications_in(&mut conn, &refs)
        .await
        .unwrap();
}

/// A round moves everything queued, however much arrived since the last
/// (every retrieval queues a notification: thousands a second under load),
/// and each notification gets its delivery once.
#[tokio::test]
async fn a_delivery_round_dispatches_the_whole_queue() {
    let w = world_with(|s| s.notify_interval = Some(3600)).await;
    // Clear what the demo data queued.
    delivery_round(&w).await;
    let (url, got) = receiver(204).await;
    let res =
        w.s.post_json(
            &w.op,
            "/admin/v1/webhooks",
            &json!({"url": url, "kinds": ["license.retrieved"], "recipients": "entity"}),
        )
        .await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let store = &w.s.services.store;
    const QUEUED: usize = 1_234;
    let at = "2026-01-01T00:00:00.000000Z";
    let rows: Vec<licensegate::store::notify::NotificationRow> = (0..QUEUED)
        .map(|i| licensegate::store::notify::NotificationRow {
            id: format!("ntf_000000000001{i:024x}"),
            recipient_kind: "entity".into(),
            recipient_id: "bulk-entity".into(),
            kind: "license.retrieved".into(),
            payload: format!("{{\"n\":{i}}}"),
            status: "queued".into(),
            created_at: at.into(),
        })
        .collect();
    queue_in_a_commit(&w, &rows).await;

    let round: Value = delivery_round(&w).await;
    assert_eq!(round["dispatched"], QUEUED, "{round}");
    assert!(store.queued_notifications(10).await.unwrap().is_empty());
    let again: Value = delivery_round(&w).await;
    assert_eq!(again["dispatched"], 0, "{again}");
    // Each sent once (a round sends a bounded number; send the rest).
    for _ in 0..QUEUED {
        let r: Value = delivery_round(&w).await;
        if r["delivered"] == 0 {
            break;
        }
    }
    let got = got.lock().unwrap();
    let mut ids = webhook_ids(&got);
    ids.dedup();
    assert_eq!((got.len(), ids.len()), (QUEUED, QUEUED));
}

/// A notification is routed in the statement that queues it: suppressed when
/// its holder turned its kind off, left queued (for the worker to make its
/// deliveries) only when an active endpoint subscribes to it, else done.
#[tokio::test]
async fn notifications_are_routed_as_they_are_queued() {
    let w = world_with(|s| s.notify_interval = Some(3600)).await;
    delivery_round(&w).await;
    let store = &w.s.services.store;
    let holder: String = sqlx::query_scalar("SELECT id FROM holders ORDER BY id LIMIT 1")
        .fetch_one(store.reader())
        .await
        .unwrap();
    store
        .set_preference(&holder, "license.verified", false)
        .await
        .unwrap();
    let (url, got) = receiver(204).await;
    let webhook = |recipients: &'static str, kinds: Value| {
        let (w, url) = (&w, url.clone());
        async move {
            let res =
                w.s.post_json(
                    &w.op,
                    "/admin/v1/webhooks",
                    &json!({"url": url, "kinds": kinds, "recipients": recipients}),
                )
                .await;
            assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
        }
    };
    // Notification n's id: time-ordered, as the server makes them.
    let id = |n: usize| format!("ntf_000000000002{n:024x}");
    // To the holder, or to an entity.
    let row =
        |n: usize, kind: &str, recipient_kind: &str| licensegate::store::notify::NotificationRow {
            id: id(n),
            recipient_kind: recipient_kind.into(),
            recipient_id: if recipient_kind == "holder" {
                holder.clone()
            } else {
                "some-entity".into()
            },
            kind: kind.into(),
            payload: "{}".into(),
            status: "queued".into(),
            created_at: "2026-01-01T00:00:00.000000Z".into(),
        };
    let status = |n: usize| {
        let id = id(n);
        async move {
            sqlx::query_scalar::<_, String>("SELECT status FROM notifications WHERE id = $1")
                .bind(id)
                .fetch_one(store.reader())
                .await
                .unwrap()
        }
    };
    // Queues (n, kind, recipient kind) and checks each one's status, as expected.
    type Routed = (usize, &'static str, &'static str, &'static str);
    let world = &w;
    let queue = |rows: Vec<Routed>| async move {
        let queued: Vec<_> = rows.iter().map(|&(n, k, r, _)| row(n, k, r)).collect();
        queue_in_a_commit(world, &queued).await;
        for (n, kind, _, expected) in rows {
            assert_eq!(status(n).await, expected, "{kind}");
        }
    };
    let (h, e) = ("holder", "entity");

    // No endpoint for holders, one for an entity kind.
    webhook("entity", json!(["license.retrieved"])).await;
    queue(vec![
        (1, "license.verified", h, "suppressed"),
        (2, "license.retrieved", h, "dispatched"),
        (3, "license.retrieved", e, "queued"),
        (4, "consent.granted", e, "dispatched"),
    ])
    .await;

    // An endpoint for every kind to holders: the holder's are queued now,
    // except the kind the holder turned off.
    webhook("holder", json!([])).await;
    queue(vec![
        (5, "license.verified", h, "suppressed"),
        (6, "license.retrieved", h, "queued"),
        (7, "consent.granted", e, "dispatched"),
    ])
    .await;

    // The worker makes the deliveries of the two queued ones, and only those.
    let round: Value = delivery_round(&w).await;
    assert_eq!(round["dispatched"], 2, "{round}");
    assert_eq!(round["delivered"], 2, "{round}");
    assert_eq!(
        (status(3).await, status(6).await),
        ("dispatched".into(), "dispatched".into())
    );
    let ids = webhook_ids(&got.lock().unwrap());
    assert_eq!(ids, [id(3), id(6)]);
}
