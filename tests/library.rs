//! The license library over a real socket: lifecycle, signatures, bad input, import.

mod common;

use common::*;
use serde_json::{json, Value};

async fn jwks(s: &TestServer, issuer: &str) -> Value {
    let res = s
        .http
        .get(s.url(&format!("/issuers/{issuer}/jwks.json")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

#[tokio::test]
async fn lifecycle_publish_read_update_suspend_reinstate_cancel() {
    let s = TestServer::start().await;
    let lib = s.setup_library().await;

    // Publish: identifier generated in the national structure.
    let res = s
        .post_json(&lib.issuer, "/issuer/v1/licenses", &publication(1))
        .await;
    assert_eq!(res.status(), 201);
    let v1: Value = res.json().await.unwrap();
    let id1 = v1["identifier"].as_str().unwrap().to_owned();
    assert!(
        id1.starts_with(&format!("1.2.156.3005.2.{TYPE}.{ISSUER}.")),
        "{id1}"
    );
    assert!(licensegate::licenses::identifier::LicenseIdentifier::parse(&id1).is_ok());
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["status"], "valid");
    assert_eq!(v1["fields"]["name"], "测试1");
    assert_eq!(v1["holder"]["kind"], "person");

    // Read back, by the versioned identifier and by the license id.
    let read: Value = s
        .get(&lib.issuer, &format!("/issuer/v1/licenses/{id1}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["identifier"], id1);
    let by_base = s
        .get(
            &lib.issuer,
            &format!("/issuer/v1/licenses/{}", v1["license_id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(by_base.status(), 200);

    // Another issuing unit cannot see it.
    assert_eq!(
        s.get(&lib.other, &format!("/issuer/v1/licenses/{id1}"))
            .await
            .status(),
        404
    );

    // Update: version 2 with a new identifier, version 1 kept.
    let mut update = publication(1);
    update["fields"]["name"] = json!("测试一");
    let body = json!({"fields": update["fields"], "valid_from": "2024-02-01", "valid_until": "2034-02-01", "reason": "姓名更正"});
    let res = s
        .put_json(&lib.issuer, &format!("/issuer/v1/licenses/{id1}"), &body)
        .await;
    assert_eq!(res.status(), 200);
    let v2: Value = res.json().await.unwrap();
    assert_eq!(v2["version"], 2);
    let id2 = v2["identifier"].as_str().unwrap().to_owned();
    assert_ne!(id1, id2);
    assert!(id2.contains(".002."));
    assert_eq!(v2["fields"]["name"], "测试一");
    assert_eq!(v2["valid_from"], "2024-02-01");

    let history: Value = s
        .get(&lib.issuer, &format!("/issuer/v1/licenses/{id2}/history"))
        .await
        .json()
        .await
        .unwrap();
    let versions = history["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0]["identifier"], id1);
    assert_eq!(versions[0]["fields"]["name"], "测试1");
    assert_eq!(versions[1]["fields"]["name"], "测试一");

    // Every version's SD-JWT verifies against the issuer's JWKS, independently,
    // and its disclosures are exactly the face fields.
    let keys = jwks(&s, ISSUER).await;
    for v in versions {
        let fields = verify_sd_jwt(v["sd_jwt"].as_str().unwrap(), &keys);
        assert_eq!(Value::Object(fields), v["fields"]);
        let payload = jwt_part(v["sd_jwt"].as_str().unwrap().split('~').next().unwrap(), 1);
        assert_eq!(payload["license_id"], v["identifier"]);
        assert_eq!(payload["iss"], format!("{}/issuers/{ISSUER}", s.base));
        assert!(
            payload.get("name").is_none(),
            "face fields are only in disclosures"
        );
    }

    // Suspend → reinstate → cancel, each with its reason; wrong transitions refused.
    let path = |a: &str| format!("/issuer/v1/licenses/{id2}/{a}");
    let reinstate_valid = s
        .post_json(&lib.issuer, &path("reinstate"), &json!({"reason": "x"}))
        .await;
    assert_eq!(reinstate_valid.status(), 409);
    let res = s
        .post_json(
            &lib.issuer,
            &path("suspend"),
            &json!({"reason": "涉嫌伪造，暂扣"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let susp: Value = res.json().await.unwrap();
    assert_eq!(susp["status"], "suspended");
    assert_eq!(susp["status_reason"], "涉嫌伪造，暂扣");
    assert_eq!(
        s.post_json(&lib.issuer, &path("suspend"), &json!({"reason": "again"}))
            .await
            .status(),
        409
    );
    let res = s
        .post_json(
            &lib.issuer,
            &path("reinstate"),
            &json!({"reason": "核查无误"}),
        )
        .await;
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "valid");
    let res = s
        .post_json(&lib.issuer, &path("cancel"), &json!({"reason": "注销"}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "cancelled");

    // A cancelled license never changes again, and nothing was written by trying.
    let before = s.counts().await;
    assert_eq!(
        s.put_json(&lib.issuer, &format!("/issuer/v1/licenses/{id2}"), &body)
            .await
            .status(),
        409
    );
    assert_eq!(
        s.post_json(&lib.issuer, &path("suspend"), &json!({"reason": "x"}))
            .await
            .status(),
        409
    );
    assert_eq!(
        s.post_json(&lib.issuer, &path("reinstate"), &json!({"reason": "x"}))
            .await
            .status(),
        409
    );
    assert_eq!(
        s.post_json(&lib.issuer, &path("cancel"), &json!({"reason": "x"}))
            .await
            .status(),
        409
    );
    assert_eq!(s.counts().await, before);

    let history: Value = s
        .get(&lib.issuer, &format!("/issuer/v1/licenses/{id1}/history"))
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "published",
            "updated",
            "suspended",
            "reinstated",
            "cancelled"
        ]
    );
    s.stop().await;
}

#[tokio::test]
async fn expired_licenses_read_as_expired_and_listing_pages() {
    let s = TestServer::start().await;
    let lib = s.setup_library().await;
    let mut old = publication(2);
    old["valid_from"] = json!("2010-01-01");
    old["valid_until"] = json!("2019-12-31");
    let res = s.post_json(&lib.issuer, "/issuer/v1/licenses", &old).await;
    assert_eq!(res.status(), 201);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "expired");
    for n in 3..8 {
        assert_eq!(
            s.post_json(&lib.issuer, "/issuer/v1/licenses", &publication(n))
                .await
                .status(),
            201
        );
    }
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let q = if after.is_empty() {
            "?limit=2".to_owned()
        } else {
            format!("?limit=2&after={after}")
        };
        let page: Value = s
            .get(&lib.issuer, &format!("/issuer/v1/licenses{q}"))
            .await
            .json()
            .await
            .unwrap();
        for item in page["items"].as_array().unwrap() {
            seen.push(item["identifier"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => after = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6);
    let mut sorted = seen.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), 6);
    let other: Value = s
        .get(&lib.other, "/issuer/v1/licenses")
        .await
        .json()
        .await
        .unwrap();
    assert!(other["items"].as_array().unwrap().is_empty());
    assert_eq!(
        s.get(&lib.issuer, "/issuer/v1/licenses?status=bogus")
            .await
            .status(),
        400
    );
    assert_eq!(
        s.get(&lib.issuer, "/issuer/v1/licenses?limit=abc")
            .await
            .status(),
        400
    );
    s.stop().await;
}

async fn expect_problem(res: reqwest::Response, status: u16, mentions: &str) {
    assert_eq!(res.status(), status);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], status);
    let text = body.to_string();
    assert!(
        text.contains(mentions),
        "problem should mention {mentions:?}: {text}"
    );
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let s = TestServer::start().await;
    let lib = s.setup_library().await;
    let res = s
        .post_json(&lib.issuer, "/issuer/v1/licenses", &publication(1))
        .await;
    let first: Value = res.json().await.unwrap();
    let taken = first["identifier"].as_str().unwrap().to_owned();
    let before = s.counts().await;
    let post = |body: String, ct: &'static str| {
        s.http
            .post(s.url("/issuer/v1/licenses"))
            .bearer_auth(&lib.issuer)
            .header("content-type", ct)
            .body(body)
            .send()
    };

    expect_problem(
        post("{\"license_type\": ".into(), "application/json")
            .await
            .unwrap(),
        400,
        "",
    )
    .await;
    expect_problem(
        post(publication(2).to_string(), "text/plain")
            .await
            .unwrap(),
        415,
        "application/json",
    )
    .await;

    let mut unknown_type = publication(2);
    unknown_type["license_type"] = json!("NOSUCHTYPE");
    expect_problem(
        s.post_json(&lib.issuer, "/issuer/v1/licenses", &unknown_type)
            .await,
        422,
        "license_type",
    )
    .await;

    let mut missing = publication(2);
    missing["fields"].as_object_mut().unwrap().remove("name");
    expect_problem(
        s.post_json(&lib.issuer, "/issuer/v1/licenses", &missing)
            .await,
        422,
        "fields.name",
    )
    .await;

    let mut extra = publication(2);
    extra["fields"]["shoe_size"] = json!(42);
    expect_problem(
        s.post_json(&lib.issuer, "/issuer/v1/licenses", &extra)
            .await,
        422,
        "fields.shoe_size",
    )
    .await;

    for (field, value) in [
        ("height_cm", json!("tall")),
        ("birth_date", json!("1990-02-30")),
        ("sex", json!("X")),
        ("name", json!(12)),
    ] {
        let mut wrong = publication(2);
        wrong["fields"][field] = value;
        expect_problem(
            s.post_json(&lib.issuer, "/issuer/v1/licenses", &wrong)
                .await,
            422,
            &format!("fields.{field}"),
        )
        .await;
    }

    let mut too_long = publication(2);
    too_long["valid_until"] = json!("2040-01-01");
    expect_problem(
        s.post_json(&lib.issuer, "/issuer/v1/licenses", &too_long)
            .await,
        422,
        "valid_until",
    )
    .await;
    let mut reversed = publication(2);
    reversed["valid_until"] = json!("2023-01-01");
    expect_problem(
        s.post_json(&lib.issuer, "/issuer/v1/licenses", &reversed)
            .await,
        422,
        "valid_until",
    )
    .await;
    let mut kind = publication(2);
    kind["holder"]["kind"] = json!("organisation");
    expect_problem(
        s.post_json(&lib.issuer, "/issuer/v1/licenses", &kind).await,
        422,
        "holder.kind",
    )
    .await;

    // Duplicate identifier, malformed identifier, identifier of another issuer.
    let mut dup = publication(2);
    dup["identifier"] = json!(taken);
    expect_problem(
        s.post_json(&lib.issuer, "/issuer/v1/licenses", &dup).await,
        409,
        "already in use",
    )
    .await;
    let mut bad_check = publication(2);
    let mut t = taken.clone();
    let last = t.pop().unwrap();
    t.push(if last == 'A' { 'B' } else { 'A' });
    bad_check["identifier"] = json!(t);
    expect_problem(
        s.post_json(&lib.issuer, "/issuer/v1/licenses", &bad_check)
            .await,
        422,
        "check character",
    )
    .await;

    // A type issued by another unit; a token without the right scope; no token.
    expect_problem(
        s.post_json(&lib.other, "/issuer/v1/licenses", &publication(2))
            .await,
        403,
        "issued by",
    )
    .await;
    expect_problem(
        s.post_json(&lib.operator, "/issuer/v1/licenses", &publication(2))
            .await,
        403,
        "licenses:write",
    )
    .await;
    let res = s
        .http
        .post(s.url("/issuer/v1/licenses"))
        .json(&publication(2))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    expect_problem(res, 401, "bearer").await;
    expect_problem(
        s.post_json("not-a-jwt", "/issuer/v1/licenses", &publication(2))
            .await,
        401,
        "not valid",
    )
    .await;

    // Oversized body.
    let mut huge = publication(2);
    huge["fields"]["name"] = json!("x".repeat(2 << 20));
    expect_problem(
        s.post_json(&lib.issuer, "/issuer/v1/licenses", &huge).await,
        413,
        "",
    )
    .await;

    // Status change without a reason; unknown license.
    let path = format!("/issuer/v1/licenses/{taken}/suspend");
    expect_problem(
        s.post_json(&lib.issuer, &path, &json!({"reason": " "}))
            .await,
        422,
        "reason",
    )
    .await;
    expect_problem(
        s.post_json(&lib.issuer, &path, &json!({})).await,
        422,
        "reason",
    )
    .await;
    let missing_license = format!("1.2.156.3005.2.{TYPE}.{ISSUER}.99999999");
    expect_problem(
        s.get(
            &lib.issuer,
            &format!("/issuer/v1/licenses/{missing_license}"),
        )
        .await,
        404,
        "no license",
    )
    .await;
    expect_problem(
        s.get(&lib.issuer, "/issuer/v1/licenses/garbage").await,
        404,
        "not a license identifier",
    )
    .await;

    // Bad catalog definitions.
    let mut bad_type = test_type();
    bad_type["code"] = json!("lower");
    bad_type["fields"][1]["key"] = json!("name");
    expect_problem(
        s.post_json(&lib.operator, "/admin/v1/license-types", &bad_type)
            .await,
        422,
        "duplicate key",
    )
    .await;
    expect_problem(
        s.post_json(&lib.operator, "/admin/v1/license-types", &test_type())
            .await,
        409,
        "already exists",
    )
    .await;
    expect_problem(
        s.post_json(&lib.issuer, "/admin/v1/license-types", &test_type())
            .await,
        403,
        "catalog:write",
    )
    .await;

    assert_eq!(s.counts().await, before, "refused requests changed nothing");
    // Unknown routes and methods are problems too.
    expect_problem(s.get(&lib.issuer, "/no/such/route").await, 404, "").await;
    assert_eq!(
        s.http
            .delete(s.url("/issuer/v1/licenses"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
    s.stop().await;
}

#[tokio::test]
async fn catalog_create_update_list() {
    let s = TestServer::start().await;
    let lib = s.setup_library().await;
    let list: Value = s
        .http
        .get(s.url("/catalog/v1/license-types"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["code"], TYPE);
    assert_eq!(list[0]["revision"], 0);

    let mut changed = test_type();
    changed["name_en"] = json!("Test identity card (2025)");
    changed["fields"].as_array_mut().unwrap().push(json!({"key": "photo_ref", "label": "照片", "label_en": "Photo", "type": "string", "sensitivity": "sensitive"}));
    let res = s
        .put_json(
            &lib.operator,
            &format!("/admin/v1/license-types/{TYPE}"),
            &changed,
        )
        .await;
    assert_eq!(res.status(), 200);
    let updated: Value = res.json().await.unwrap();
    assert_eq!(updated["revision"], 1);
    assert_eq!(updated["fields"].as_array().unwrap().len(), 7);

    let mut kind = changed.clone();
    kind["holder_kind"] = json!("organisation");
    assert_eq!(
        s.put_json(
            &lib.operator,
            &format!("/admin/v1/license-types/{TYPE}"),
            &kind
        )
        .await
        .status(),
        409
    );
    assert_eq!(
        s.put_json(&lib.operator, "/admin/v1/license-types/NOPE", &changed)
            .await
            .status(),
        422
    );
    let mut nope = changed.clone();
    nope["code"] = json!("NOPE");
    assert_eq!(
        s.put_json(&lib.operator, "/admin/v1/license-types/NOPE", &nope)
            .await
            .status(),
        404
    );
    let one: Value = s
        .http
        .get(s.url(&format!("/catalog/v1/license-types/{TYPE}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["name_en"], "Test identity card (2025)");
    let issuers: Value = s
        .http
        .get(s.url("/issuers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(issuers.as_array().unwrap().len(), 2);
    assert_eq!(
        s.http
            .get(s.url("/issuers/NOPE/jwks.json"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    s.stop().await;
}

#[tokio::test]
async fn personal_fields_are_encrypted_at_rest() {
    let s = TestServer::start().await;
    let lib = s.setup_library().await;
    let res = s
        .post_json(&lib.issuer, "/issuer/v1/licenses", &publication(9))
        .await;
    assert_eq!(res.status(), 201);
    let id_number = "31010119900100009X";
    // Scan every text and blob column of every library table for the ID number.
    let store = &s.services.store;
    for table in ["licenses", "license_versions", "holders", "license_events"] {
        let rows = sqlx::query(&format!("SELECT * FROM {table}"))
            .fetch_all(store.reader())
            .await
            .unwrap();
        for row in rows {
            use sqlx::{Column, Row};
            for col in row.columns() {
                let text: Option<String> = row.try_get(col.ordinal()).ok().flatten();
                let blob: Option<Vec<u8>> = row.try_get(col.ordinal()).ok().flatten();
                let hay =
                    text.unwrap_or_default() + &String::from_utf8_lossy(&blob.unwrap_or_default());
                assert!(
                    !hay.contains(id_number),
                    "{table}.{} holds the ID number in clear",
                    col.name()
                );
                assert!(
                    !hay.contains("测试9"),
                    "{table}.{} holds the name in clear",
                    col.name()
                );
            }
        }
    }
    // The public field is kept in clear as a disclosure; the API still returns everything.
    let view: Value = s
        .get(
            &lib.issuer,
            &format!("/issuer/v1/licenses/{}", res_id(&s, &lib).await),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["fields"]["id_number"], id_number);
    s.stop().await;
}

async fn res_id(s: &TestServer, lib: &Library) -> String {
    let page: Value = s
        .get(&lib.issuer, "/issuer/v1/licenses")
        .await
        .json()
        .await
        .unwrap();
    page["items"][0]["identifier"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn import_reports_each_line_and_is_idempotent() {
    let s = TestServer::start().await;
    let lib = s.setup_library().await;
    let with_ref = |n: u32| {
        let mut p = publication(n);
        p["source_ref"] = json!(format!("REF-{n}"));
        p.to_string()
    };
    let mut bad_field = publication(20);
    bad_field["source_ref"] = json!("REF-20");
    bad_field["fields"]["sex"] = json!("?");
    let no_ref = publication(21).to_string();
    let file = [
        with_ref(10),
        with_ref(11),
        String::new(),
        "{not json".to_owned(),
        bad_field.to_string(),
        no_ref,
        with_ref(12),
    ]
    .join("\n");
    let import = |body: String| {
        s.http
            .post(s.url("/issuer/v1/imports"))
            .bearer_auth(&lib.issuer)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
    };
    let report: Value = import(file.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(report["accepted"], 3, "{report}");
    assert_eq!(report["refused"], 3);
    assert_eq!(report["unchanged"], 0);
    let lines = report["lines"].as_array().unwrap();
    let outcome = |line: u64| lines.iter().find(|l| l["line"] == line).unwrap().clone();
    assert_eq!(outcome(1)["outcome"], "accepted");
    assert!(outcome(1)["identifier"]
        .as_str()
        .unwrap()
        .starts_with("1.2.156.3005.2."));
    assert_eq!(outcome(4)["outcome"], "refused");
    assert!(outcome(4)["error"]
        .as_str()
        .unwrap()
        .contains("not a valid publication"));
    assert_eq!(outcome(5)["errors"][0]["field"], "fields.sex");
    assert!(outcome(6)["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("source_ref"));
    assert_eq!(outcome(7)["outcome"], "accepted");
    let after_first = s.counts().await;

    // Re-running the same file duplicates nothing.
    let again: Value = import(file).await.unwrap().json().await.unwrap();
    assert_eq!(again["accepted"], 0);
    assert_eq!(again["unchanged"], 3);
    assert_eq!(again["refused"], 3);
    assert_eq!(again["lines"][0]["identifier"], outcome(1)["identifier"]);
    assert_eq!(s.counts().await, after_first);

    // The same source_ref with other content is refused, not overwritten.
    let mut changed = publication(10);
    changed["source_ref"] = json!("REF-10");
    changed["fields"]["name"] = json!("别人");
    let r: Value = import(changed.to_string())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["refused"], 1);
    assert_eq!(s.counts().await, after_first);

    // Lines with explicit identifiers: re-import is unchanged too.
    let mut explicit = publication(30);
    explicit["identifier"] = json!(licensegate::licenses::identifier::LicenseIdentifier {
        type_code: TYPE.into(),
        issuer: ISSUER.into(),
        serial: "IMP0000001".into(),
        version: 1
    }
    .to_string());
    let r1: Value = import(explicit.to_string())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r1["accepted"], 1, "{r1}");
    let r2: Value = import(explicit.to_string())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r2["unchanged"], 1);
    s.stop().await;
}
