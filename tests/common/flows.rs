//! Helpers for the consent flows: a cookie-keeping browser that does not
//! follow redirects, the demo world, a registered bank, pushed requests.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::KeyPair;

use oauth2::{PkceCodeChallenge, PkceCodeVerifier};
use serde_json::{json, Value};

use super::TestServer;

pub const REDIRECT: &str = "http://127.0.0.1:9/cb";

/// A browser: no automatic redirects, a cookie jar.
pub struct Browser {
    pub http: reqwest::Client,
    pub base: String,
    pub cookies: HashMap<String, String>,
}

pub struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
    pub headers: reqwest::header::HeaderMap,
}

impl Browser {
    pub fn new(base: &str) -> Self {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: base.to_owned(),
            cookies: HashMap::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    pub async fn finish(&mut self, res: reqwest::Response) -> Page {
        for c in res.headers().get_all("set-cookie") {
            let c = c.to_str().unwrap();
            assert!(
                c.contains("HttpOnly") && c.contains("Secure") && c.contains("SameSite=Lax"),
                "{c}"
            );
            let (kv, _) = c.split_once(';').unwrap();
            let (k, v) = kv.split_once('=').unwrap();
            if v.is_empty() {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), v.to_owned());
            }
        }
        Page {
            status: res.status().as_u16(),
            location: res
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_owned()),
            headers: res.headers().clone(),
            body: res.text().await.unwrap(),
        }
    }

    pub fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let res = self
            .http
            .get(self.url(path))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.finish(res).await
    }

    /// A JSON API the holder's pages call, with this browser's session.
    pub async fn get_json(&mut self, path: &str) -> Value {
        serde_json::from_str(&self.get(path).await.body).unwrap()
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let res = self
            .http
            .post(self.url(path))
            .header("cookie", self.cookie_header())
            .form(form)
            .send()
            .await
            .unwrap();
        self.finish(res).await
    }

    /// Logs in through the real form, starting from a page that redirects to it.
    pub async fn login_via(&mut self, start: &str, identifier: &str, password: &str) -> Page {
        let p = self.get(start).await;
        assert_eq!(p.status, 303, "{}", p.body);
        let login = p.location.unwrap();
        assert!(login.starts_with("/login?next="), "{login}");
        let form = self.get(&login).await;
        assert_eq!(form.status, 200);
        let csrf = hidden(&form.body, "csrf");
        let next = hidden(&form.body, "next");
        let done = self
            .post(
                "/login",
                &[
                    ("identifier", identifier),
                    ("password", password),
                    ("csrf", &csrf),
                    ("next", &next),
                ],
            )
            .await;
        assert_eq!(done.status, 303, "{}", done.body);
        assert!(self.cookies.contains_key("lg_session"));
        let to = done.location.unwrap();
        self.get(&to).await
    }
}

/// The value of a hidden form field (the first with that name).
pub fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + marker.len();
    let end = start + html[start..].find('"').unwrap();
    html[start..end]
        .replace("&amp;", "&")
        .replace("&quot;", "\"")
}

/// Every value of a hidden form field.
pub fn hidden_all(html: &str, name: &str) -> Vec<String> {
    let marker = format!("name=\"{name}\" value=\"");
    html.match_indices(&marker)
        .map(|(i, _)| {
            let start = i + marker.len();
            html[start..start + html[start..].find('"').unwrap()].to_owned()
        })
        .collect()
}

pub fn query(location: &str) -> HashMap<String, String> {
    let q = location.split_once('?').unwrap().1;
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

pub struct World {
    pub s: TestServer,
    pub op: String,
    pub holder: (String, String),
    pub other_holder: (String, String),
}

pub async fn world_with(tweak: impl FnOnce(&mut licensegate::config::Settings)) -> World {
    let s = TestServer::start_with(tweak).await;
    licensegate::demo::load(&s.services).await.unwrap();
    let op = s.operator_token().await;
    let creds: Value = serde_json::from_str(
        &std::fs::read_to_string(s.dir.path().join("demo-credentials.json")).unwrap(),
    )
    .unwrap();
    let h = |i: usize| {
        (
            creds["holders"][i]["identifier"]
                .as_str()
                .unwrap()
                .to_owned(),
            creds["holders"][i]["password"].as_str().unwrap().to_owned(),
        )
    };
    World {
        holder: h(0),
        other_holder: h(1),
        s,
        op,
    }
}

/// The operator withdraws the [`bank`]'s `account_opening` scenario (`true`)
/// or approves it again as [`bank`] made it (`false`); returns the HTTP status.
pub async fn set_bank_scenario_withdrawn(w: &World, id: &str, withdrawn: bool) -> u16 {
    let res = if withdrawn {
        w.s.post_json(
            &w.op,
            &format!("/admin/v1/entities/{id}/scenarios/account_opening/withdraw"),
            &json!({"reason": "review"}),
        )
        .await
    } else {
        w.s.put_json(
            &w.op,
            &format!("/admin/v1/entities/{id}/scenarios/account_opening"),
            &json!({
                "purpose": "account_opening", "description": "开立银行账户 / opening a bank account",
                "license_types": ["JMSFZ"], "fields": {"JMSFZ": ["name", "sex", "address", "id_number"]},
                "max_consent_days": 30, "max_retrievals": 3, "flows": ["redirect", "decoupled", "show_license"]
            }),
        )
        .await
    };
    res.status().as_u16()
}

/// Registers and approves a bank whose use list covers the ID card for
/// account opening (30 days, 3 reads) in every flow; returns (id, secret).
pub async fn bank(w: &World, uscc_body: &str, extra: Value) -> (String, Option<String>) {
    let mut app = json!({
        "name": "测试商业银行", "uscc": licensegate::demo::uscc(uscc_body), "sector": "bank",
        "contact": "ops@bank.example", "redirect_uris": [REDIRECT, "https://bank.example/cb"],
        "scenarios": [{
            "purpose": "account_opening", "description": "开立银行账户 / opening a bank account",
            "license_types": ["JMSFZ"], "fields": {"JMSFZ": ["name", "sex", "address", "id_number"]},
            "max_consent_days": 30, "max_retrievals": 3, "flows": ["redirect", "decoupled", "show_license"]
        }]
    });
    for (k, v) in extra.as_object().unwrap() {
        app[k] = v.clone();
    }
    let res =
        w.s.http
            .post(w.s.url("/entities/v1/applications"))
            .json(&app)
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let approval: Value =
        w.s.post_json(
            &w.op,
            &format!("/admin/v1/entities/{id}/approve"),
            &json!({"filing_no": "沪用证备0099"}),
        )
        .await
        .json()
        .await
        .unwrap();
    (
        id,
        approval["credentials"]["client_secret"]
            .as_str()
            .map(str::to_owned),
    )
}

pub fn details(duration_days: Option<u32>, max: Option<u32>) -> String {
    let mut d = json!({
        "type": "license_access", "purpose": "account_opening", "license_type": "JMSFZ",
        "fields": ["name", "id_number"], "optional_fields": ["address"]
    });
    if let Some(days) = duration_days {
        d["duration_days"] = json!(days);
    }
    if let Some(m) = max {
        d["max_retrievals"] = json!(m);
    }
    json!([d]).to_string()
}

pub async fn push(w: &World, id: &str, secret: &str, form: &[(&str, &str)]) -> reqwest::Response {
    w.s.http
        .post(w.s.url("/par"))
        .basic_auth(id, Some(secret))
        .form(form)
        .send()
        .await
        .unwrap()
}

/// A complete PAR with PKCE; returns (request_uri, verifier).
pub async fn pushed(w: &World, id: &str, secret: &str, rar: &str) -> (String, PkceCodeVerifier) {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let res = push(
        w,
        id,
        secret,
        &[
            ("response_type", "code"),
            ("client_id", id),
            ("redirect_uri", REDIRECT),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("state", "st-42"),
            ("authorization_details", rar),
        ],
    )
    .await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["expires_in"], 90);
    (body["request_uri"].as_str().unwrap().to_owned(), verifier)
}

pub fn authorize_path(id: &str, request_uri: &str) -> String {
    format!(
        "/authorize?{}",
        form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", id)
            .append_pair("request_uri", request_uri)
            .finish()
    )
}

/// The holder approves on the consent page; returns the redirect's query.
pub async fn approve(b: &mut Browser, page: &Page, optional: &[&str]) -> HashMap<String, String> {
    let csrf = hidden(&page.body, "csrf");
    let ru = hidden(&page.body, "request_uri");
    let mut form = vec![
        ("csrf", csrf.as_str()),
        ("request_uri", ru.as_str()),
        ("decision", "approve"),
    ];
    for o in optional {
        form.push(("optional", o));
    }
    let done = b.post("/authorize/decision", &form).await;
    assert_eq!(done.status, 303, "{}", done.body);
    let loc = done.location.unwrap();
    assert!(loc.starts_with(REDIRECT), "{loc}");
    query(&loc)
}

pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub async fn actions(w: &World) -> Vec<(String, String, Option<String>)> {
    let head = w.s.services.store.audit_head().await.unwrap();
    w.s.services
        .store
        .audit_range(0, head.seq)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.action, r.outcome.as_str().to_owned(), r.reason))
        .collect()
}

pub async fn token_form(w: &World, id: &str, secret: &str, form: &[(&str, &str)]) -> (u16, Value) {
    client_form(w, &w.s.base, "/token", id, secret, form).await
}

/// A form posted to `path` on the node at `base` with client_secret_basic: status and JSON body.
pub async fn client_form(
    w: &World,
    base: &str,
    path: &str,
    id: &str,
    secret: &str,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let res =
        w.s.http
            .post(format!("{base}{path}"))
            .basic_auth(id, Some(secret))
            .form(form)
            .send()
            .await
            .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

/// Runs the whole redirect flow for the first demo holder (push, login,
/// approve, exchange) and returns the token response.
pub async fn consent_tokens(w: &World, id: &str, secret: &str, rar: &str) -> Value {
    let (request_uri, verifier) = pushed(w, id, secret, rar).await;
    let mut b = Browser::new(&w.s.base);
    let page = b
        .login_via(&authorize_path(id, &request_uri), &w.holder.0, &w.holder.1)
        .await;
    let code = approve(&mut b, &page, &[]).await["code"].clone();
    let (status, t) = token_form(
        w,
        id,
        secret,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier.secret()),
        ],
    )
    .await;
    assert_eq!(status, 200, "{t}");
    t
}

/// An Ed25519 key as (private key for jsonwebtoken, public JWK).
pub fn ed25519_key(kid: &str) -> (jsonwebtoken::EncodingKey, Value) {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())});
    (jsonwebtoken::EncodingKey::from_ed_der(pkcs8.as_ref()), jwk)
}

/// A DPoP proof (RFC 9449) by `key` for `htm` `htu`.
pub fn dpop_proof(
    key: &(jsonwebtoken::EncodingKey, Value),
    htm: &str,
    htu: &str,
    jti: &str,
) -> String {
    dpop_proof_for(key, htm, htu, jti, None)
}

/// A DPoP proof that also names the access token it accompanies (`ath`).
pub fn dpop_proof_for(
    key: &(jsonwebtoken::EncodingKey, Value),
    htm: &str,
    htu: &str,
    jti: &str,
    access_token: Option<&str>,
) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.typ = Some("dpop+jwt".into());
    let mut jwk = key.1.clone();
    jwk.as_object_mut().unwrap().remove("kid");
    header.jwk = Some(serde_json::from_value(jwk).unwrap());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut claims = json!({"jti": jti, "htm": htm, "htu": htu, "iat": now});
    if let Some(t) = access_token {
        let digest = ring::digest::digest(&ring::digest::SHA256, t.as_bytes());
        claims["ath"] = json!(URL_SAFE_NO_PAD.encode(digest.as_ref()));
    }
    jsonwebtoken::encode(&header, &claims, &key.0).unwrap()
}

// ---- several nodes -------------------------------------------------------

/// Flags for another `licensegate serve` on the world's database and data
/// directory, answering as the same broker (one public URL, as behind a load balancer).
pub fn node_args(w: &World) -> Vec<String> {
    let mut args = w.s.cli_args();
    args.extend(["--public-url".to_owned(), w.s.base.clone()]);
    args
}

/// Stops node processes with SIGTERM; each must exit cleanly.
pub async fn stop_nodes(nodes: Vec<(super::ServerProcess, String)>) {
    for (mut child, base) in nodes {
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        // A node drains for at most its request timeout (30 s) and a little
        // more; waiting without blocking keeps the in-process node serving.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the node at {base} did not stop within 60 s of SIGTERM");
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        assert!(status.success(), "the node at {base} stopped with {status}");
    }
}

/// GET `path` on the node at `base` with a bearer token: the status and the
/// body, or for a refusal `{"challenge": WWW-Authenticate, "body": …}`.
pub async fn get_on(w: &World, base: &str, token: &str, path: &str) -> (u16, Value) {
    let res =
        w.s.http
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
    let status = res.status().as_u16();
    let challenge = res
        .headers()
        .get("www-authenticate")
        .map(|h| h.to_str().unwrap().to_owned());
    let body = res.json().await.unwrap_or(Value::Null);
    match status {
        200 => (status, body),
        _ => (status, json!({ "challenge": challenge, "body": body })),
    }
}

/// The access token of a token response.
pub fn access_token(t: &Value) -> String {
    t["access_token"].as_str().unwrap().to_owned()
}

/// A client_credentials token from the node at `base`.
pub async fn client_token(w: &World, base: &str, id: &str, secret: &str) -> Value {
    let (status, t) = client_form(
        w,
        base,
        "/token",
        id,
        secret,
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(status, 200, "{t}");
    t
}

/// Of the audit actions `new`: how many reads were served and how many refused for the budget.
pub fn reads_and_budget_refusals(new: &[(String, String, Option<String>)]) -> (usize, usize) {
    let served = new
        .iter()
        .filter(|(a, _, _)| a == "license.retrieved")
        .count();
    let refused = new
        .iter()
        .filter(|(a, o, r)| {
            a == "access.denied"
                && o == "refused"
                && r.as_deref().is_some_and(|r| r.contains("budget"))
        })
        .count();
    (served, refused)
}

/// A bank whose use list allows `reads` retrievals per consent.
pub async fn bank_with_budget(w: &World, uscc_body: &str, reads: u32) -> (String, String) {
    let (id, secret) = bank(
        w,
        uscc_body,
        json!({"scenarios": [{
            "purpose": "account_opening", "description": "开立银行账户 / opening a bank account",
            "license_types": ["JMSFZ"], "fields": {"JMSFZ": ["name", "sex", "address", "id_number"]},
            "max_consent_days": 30, "max_retrievals": reads, "flows": ["redirect"]
        }]}),
    )
    .await;
    (id, secret.unwrap())
}
