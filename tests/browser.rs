//! The holder and regulator pages in a real headless Chromium (Debian's
//! chromium and chromium-driver, driven over WebDriver): a holder logs in,
//! approves a decoupled request, sees the consent and a read in the
//! history, shows a license as a QR code, revokes the consent and the
//! entity's next read fails; a regulator logs in, filters the log, exports
//! the view, and the export verifies with `licensegate audit verify`.
//! Screenshots of the main pages are saved under target/browser-screenshots/.

mod common;

use std::time::Duration;

use common::flows::*;
use common::webdriver::Driver;
use common::*;
use serde_json::{json, Value};

async fn poll_tokens(w: &World, id: &str, secret: &str, auth_req_id: &str) -> Value {
    for _ in 0..40 {
        let (status, t) = token_form(
            w,
            id,
            secret,
            &[
                ("grant_type", "urn:openid:params:grant-type:ciba"),
                ("auth_req_id", auth_req_id),
            ],
        )
        .await;
        if status == 200 {
            return t;
        }
        assert!(
            matches!(
                t["error"].as_str(),
                Some("authorization_pending" | "slow_down")
            ),
            "{t}"
        );
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    panic!("no tokens after approval");
}

#[tokio::test]
async fn holder_approves_sees_reads_and_revokes_in_a_browser() {
    let w = world_with(|s| s.ciba_poll_interval = Some(1)).await;
    let (id, secret) = bank(&w, "91310000MA1BRWAB0", json!({})).await;
    let secret = secret.unwrap();
    let res =
        w.s.http
            .post(w.s.url("/bc-authorize"))
            .basic_auth(&id, Some(&secret))
            .form(&[
                ("login_hint", w.holder.0.as_str()),
                ("binding_message", "柜台 B-05"),
                ("authorization_details", details(Some(30), Some(3)).as_str()),
            ])
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), 200);
    let auth_req_id = res.json::<Value>().await.unwrap()["auth_req_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let d = Driver::start("holder").await;
    // Not logged in: the pending requests page sends the browser to login.
    d.goto(&w.s.url("/holder/requests")).await;
    assert!(
        d.current_url().await.contains("/login"),
        "{}",
        d.current_url().await
    );
    d.screenshot("01-login").await;
    d.type_into("input[name=identifier]", &w.holder.0).await;
    d.type_into("input[name=password]", &w.holder.1).await;
    d.click_and_wait("button[type=submit]").await;
    let page = d.source().await;
    assert!(
        d.current_url().await.ends_with("/holder/requests"),
        "{}",
        d.current_url().await
    );
    assert!(
        page.contains("柜台 B-05") && page.contains("测试商业银行"),
        "{page}"
    );
    d.screenshot("02-pending-request").await;
    d.click_and_wait("form[action^='/holder/requests/'] button[value=approve]")
        .await;
    assert!(d.source().await.contains("已同意授权"));

    // The entity gets its tokens and reads the license.
    let t = poll_tokens(&w, &id, &secret, &auth_req_id).await;
    let token = t["access_token"].as_str().unwrap().to_owned();
    let covered: Value =
        w.s.get(&token, "/api/v1/licenses")
            .await
            .json()
            .await
            .unwrap();
    let license = covered["licenses"][0]["identifier"]
        .as_str()
        .unwrap()
        .to_owned();
    let read =
        w.s.get(&token, &format!("/api/v1/licenses/{license}"))
            .await;
    assert_eq!(read.status(), 200);

    // My licenses, and the read in my history (filtered to this license).
    d.goto(&w.s.url("/holder")).await;
    assert!(d.source().await.contains(&license));
    d.screenshot("03-my-licenses").await;
    d.goto(&w.s.url("/holder/history")).await;
    d.type_into("#filter input[name=license]", &license).await;
    d.click_and_wait("#filter button[type=submit]").await;
    let history = d.text("#history").await;
    assert!(
        history.contains("测试商业银行") && history.contains(&license),
        "{history}"
    );
    assert!(history.contains("account_opening"), "{history}");
    d.screenshot("04-access-history").await;

    // Show a license: a one-time code and its QR image.
    d.goto(&w.s.url("/holder/show")).await;
    d.click("form[action='/holder/show'] input[value=name]")
        .await;
    d.click_and_wait("form[action='/holder/show'] button[type=submit]")
        .await;
    assert!(!d.text("#show-code").await.is_empty());
    assert!(d
        .attribute("#qr", "src")
        .await
        .unwrap()
        .starts_with("data:image/svg+xml;base64,"));
    d.screenshot("05-show-license-qr").await;

    // The consent is listed; revoking it takes effect on the entity's very next read.
    d.goto(&w.s.url("/holder/consents")).await;
    let consents = d.source().await;
    assert!(
        consents.contains("测试商业银行") && consents.contains("1/3"),
        "{consents}"
    );
    d.screenshot("06-consents").await;
    let consent = t["grant_id"].as_str().unwrap();
    d.click_and_wait(&format!(
        "form[action='/holder/consents/{consent}/revoke'] button"
    ))
    .await;
    assert_eq!(
        d.attribute(&format!("#consent-{consent} .status"), "data-status")
            .await
            .unwrap(),
        "revoked"
    );
    d.screenshot("07-consent-revoked").await;
    let after =
        w.s.get(&token, &format!("/api/v1/licenses/{license}"))
            .await;
    assert_eq!(after.status(), 401);
    assert!(after.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("invalid_token"));

    // Objections and notification choices render, and log out works.
    d.goto(&w.s.url(&format!("/holder/objections/new?license={license}")))
        .await;
    d.click("input[name=field][value=address]").await;
    d.type_into("textarea[name=reason]", "住址已变更").await;
    d.click_and_wait("form[action='/holder/objections'] button[type=submit]")
        .await;
    assert!(d.text(".objection").await.contains("住址已变更"));
    d.screenshot("08-objections").await;
    d.goto(&w.s.url("/holder/notifications")).await;
    d.screenshot("09-notifications").await;
    d.click_and_wait("nav form[action='/logout'] button").await;
    d.goto(&w.s.url("/holder")).await;
    assert!(d.current_url().await.contains("/login"));
    d.quit().await;
    w.s.stop().await;
}

#[tokio::test]
async fn regulator_filters_exports_and_verifies_in_a_browser() {
    let w = world_with(|_| {}).await;
    let creds: Value = serde_json::from_str(
        &std::fs::read_to_string(w.s.dir.path().join("demo-credentials.json")).unwrap(),
    )
    .unwrap();
    // Some refused requests to find.
    for _ in 0..3 {
        let res =
            w.s.http
                .get(w.s.url("/api/v1/licenses"))
                .bearer_auth("not-a-token")
                .send()
                .await
                .unwrap();
        assert_eq!(res.status(), 401);
    }
    // An entity reads twice, then asks for a license outside its consent.
    let (id, secret) = bank(&w, "91310000MA1REGAB0", json!({})).await;
    let t = consent_tokens(&w, &id, &secret.unwrap(), &details(Some(30), Some(3))).await;
    let token = t["access_token"].as_str().unwrap().to_owned();
    let covered: Value =
        w.s.get(&token, "/api/v1/licenses")
            .await
            .json()
            .await
            .unwrap();
    let license = covered["licenses"][0]["identifier"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..2 {
        assert_eq!(
            w.s.get(&token, &format!("/api/v1/licenses/{license}"))
                .await
                .status(),
            200
        );
    }
    let other =
        w.s.get(
            &token,
            "/api/v1/licenses/1.2.156.3005.2.JMSFZ.11310000002420005R.00000999.001.Y",
        )
        .await;
    assert!(other.status().is_client_error());
    let d = Driver::start("regulator").await;
    d.goto(&w.s.url("/console")).await;
    assert!(d.current_url().await.ends_with("/console/login"));
    d.type_into("input[name=username]", "regulator").await;
    d.type_into("input[name=password]", "wrong password").await;
    d.click_and_wait("button[type=submit]").await;
    assert!(d.source().await.contains("用户名或密码错误"));
    d.type_into(
        "input[name=username]",
        creds["regulator"]["username"].as_str().unwrap(),
    )
    .await;
    d.type_into(
        "input[name=password]",
        creds["regulator"]["password"].as_str().unwrap(),
    )
    .await;
    d.click_and_wait("button[type=submit]").await;
    assert!(
        d.current_url().await.ends_with("/console"),
        "{}",
        d.current_url().await
    );
    assert!(
        d.text("#integrity").await.contains("检查点")
            || d.text("#integrity").await.contains("checkpoint")
    );

    // Filter: refused requests.
    d.type_into("#search input[name=outcome]", "refused").await;
    d.click_and_wait("#search button[type=submit]").await;
    let rows = d.find_all("#records tr").await.len() - 1;
    assert!(rows >= 4, "{rows} rows"); // three bad tokens and the wrong password
    let table = d.text("#records").await;
    assert!(
        table.contains("refused") && !table.contains("success"),
        "{table}"
    );
    d.screenshot("01-audit-search-refused").await;

    // Export the view from its link, with the browser's session, and verify it offline.
    let href = d.attribute("#export-jsonl", "href").await.unwrap();
    assert!(href.contains("outcome=refused"), "{href}");
    let session = d.cookie("lg_console").await.unwrap();
    let url = if href.starts_with("http") {
        href.clone()
    } else {
        w.s.url(&href)
    };
    let export =
        w.s.http
            .get(url)
            .header("cookie", format!("lg_console={session}"))
            .send()
            .await
            .unwrap();
    assert_eq!(export.status(), 200);
    let text = export.text().await.unwrap();
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("\"type\":\"record\""))
            .count(),
        rows
    );
    let path = w.s.dir.path().join("console-export.jsonl");
    std::fs::write(&path, &text).unwrap();
    let out = licensegate()
        .args(["audit", "verify", "--file", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["records"], rows as i64);
    // Without the console session there is no export.
    let res = no_redirects().get(w.s.url(&href)).send().await.unwrap();
    assert_eq!(res.status(), 303);

    // Statistics with the chart, anomalies, objections, an entity's history.
    d.goto(&w.s.url("/console/stats")).await;
    d.find("#chart").await;
    let stats = d.text("#stats").await;
    let row = stats
        .lines()
        .find(|l| l.contains("测试商业银行"))
        .unwrap_or_else(|| panic!("{stats}"));
    assert!(row.contains("bank 2 0 1"), "{row}");
    d.screenshot("02-entity-statistics").await;
    d.goto(&w.s.url("/console/anomalies")).await;
    let anomalies = d.text("#anomalies").await;
    assert!(
        anomalies.contains("测试商业银行") && anomalies.contains("超出用证清单"),
        "{anomalies}"
    );
    d.screenshot("03-anomalies").await;
    d.goto(&w.s.url("/console/objections")).await;
    d.screenshot("04-objections").await;
    let entity = creds["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["role"] == "entity")
        .map(|c| c["client_id"].as_str().unwrap().to_owned());
    if let Some(e) = entity {
        d.goto(&w.s.url(&format!("/console/entities/{e}"))).await;
        assert!(d.text("#history").await.contains("entity.approved"));
        d.screenshot("05-entity").await;
    }
    // The console changes nothing: every page is a GET, its only form posts are login and logout.
    let forms = d.find_all("form[method=post]").await.len();
    assert_eq!(forms, 1);
    d.quit().await;
    w.s.stop().await;
}
