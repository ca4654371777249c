//! Test harness: a real licensegate server on a random port with a fresh
//! database (SQLite by default; PostgreSQL when LICENSEGATE_TEST_DATABASE=postgres).
#![allow(dead_code)]

pub mod flows;
pub mod webdriver;

use std::net::SocketAddr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use licensegate::config::{Config, Settings};
use licensegate::oauth::client_auth::NewClient;
use licensegate::oauth::Role;
use licensegate::{App, Services};
use serde_json::{json, Value};
use sqlx::Connection;
use tokio::sync::oneshot;

/// The issuing unit the tests publish as (a valid GB 32100 code).
pub const ISSUER: &str = "91350100M000100Y43";
/// Another issuing unit.
pub const OTHER_ISSUER: &str = "11310000002420005R";
/// The test license type.
pub const TYPE: &str = "TESTID";

pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
    pub services: std::sync::Arc<Services>,
    pub dir: tempfile::TempDir,
    pub database_url: Option<String>,
    shutdown: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

/// Which backend the suite runs on.
pub fn backend() -> &'static str {
    match std::env::var("LICENSEGATE_TEST_DATABASE").as_deref() {
        Ok("postgres") => "postgres",
        _ => "sqlite",
    }
}

/// A fresh PostgreSQL database on the local server.
pub async fn fresh_postgres() -> String {
    let admin = std::env::var("LICENSEGATE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&admin)
        .await
        .expect("PostgreSQL at 127.0.0.1:5432 (run ./scripts/test)");
    let name = format!(
        "lg_test_{}",
        licensegate::keys::random_token(6)
            .unwrap()
            .to_lowercase()
            .replace(['-', '_'], "x")
    );
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let (prefix, _) = admin.rsplit_once('/').unwrap();
    format!("{prefix}/{name}")
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let database_url = match backend() {
            "postgres" => Some(fresh_postgres().await),
            _ => None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let mut settings = Settings {
            listen: Some(addr),
            data_dir: Some(dir.path().to_path_buf()),
            database_url: database_url.clone(),
            ..Default::default()
        };
        tweak(&mut settings);
        let config = Config::resolve(settings, Settings::default()).unwrap();
        let app = App::build(config).await.unwrap();
        let services = app.services.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            app.serve_on(listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        TestServer {
            base: format!("http://{addr}"),
            // A server that does not answer fails the test instead of hanging it.
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()
                .unwrap(),
            services,
            dir,
            database_url,
            shutdown: Some(tx),
            done: Some(done),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            done.await.unwrap();
        }
    }

    /// Registers a client directly (as the CLI does) and returns (id, secret).
    pub async fn client(&self, role: Role, issuer_id: Option<&str>) -> (String, String) {
        let c = self
            .services
            .clients
            .create(
                &licensegate::audit::Actor::system("test"),
                NewClient {
                    name: format!("test {role:?}"),
                    role,
                    issuer_id: issuer_id.map(str::to_owned),
                    jwks: None,
                    jwks_uri: None,
                },
            )
            .await
            .unwrap();
        (c.client_id, c.client_secret.unwrap())
    }

    /// client_credentials token with HTTP Basic.
    pub async fn token(&self, id: &str, secret: &str) -> String {
        let res = self
            .http
            .post(self.url("/token"))
            .basic_auth(id, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "token request failed");
        res.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn operator_token(&self) -> String {
        let (id, secret) = self.client(Role::Operator, None).await;
        self.token(&id, &secret).await
    }

    /// Creates the test issuing unit(s) and license type; returns an issuer token.
    pub async fn setup_library(&self) -> Library {
        let op = self.operator_token().await;
        for (id, name) in [(ISSUER, "测试发证单位"), (OTHER_ISSUER, "另一发证单位")] {
            let res = self
                .post_json(
                    &op,
                    "/admin/v1/issuers",
                    &json!({"id": id, "name": name, "name_en": "Test unit", "region": "上海市"}),
                )
                .await;
            assert_eq!(res.status(), 201);
        }
        let res = self
            .post_json(&op, "/admin/v1/license-types", &test_type())
            .await;
        assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
        let (id, secret) = self.client(Role::Issuer, Some(ISSUER)).await;
        let issuer = self.token(&id, &secret).await;
        let (id, secret) = self.client(Role::Issuer, Some(OTHER_ISSUER)).await;
        let other = self.token(&id, &secret).await;
        Library {
            operator: op,
            issuer,
            other,
        }
    }

    pub async fn post_json(&self, token: &str, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn put_json(&self, token: &str, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .put(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Rows in the library tables (licenses, versions, events, holders).
    pub async fn counts(&self) -> [i64; 4] {
        self.services.store.library_counts().await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub struct Library {
    pub operator: String,
    pub issuer: String,
    pub other: String,
}

pub fn test_type() -> Value {
    json!({
        "code": TYPE, "name": "测试身份证", "name_en": "Test identity card", "issuer": ISSUER,
        "holder_kind": "person", "level": "municipal",
        "validity": {"max_years": 10, "allow_indefinite": false},
        "fields": [
            {"key": "name", "label": "姓名", "label_en": "Name", "type": "string", "required": true, "sensitivity": "personal", "max_length": 20},
            {"key": "sex", "label": "性别", "label_en": "Sex", "type": "enum", "required": true, "sensitivity": "personal", "values": ["男", "女"]},
            {"key": "birth_date", "label": "出生", "label_en": "Born", "type": "date", "required": true, "sensitivity": "personal"},
            {"key": "id_number", "label": "公民身份号码", "label_en": "ID number", "type": "string", "required": true, "sensitivity": "sensitive"},
            {"key": "height_cm", "label": "身高", "label_en": "Height", "type": "integer", "required": false, "sensitivity": "personal"},
            {"key": "authority", "label": "签发机关", "label_en": "Authority", "type": "string", "required": true, "sensitivity": "public"}
        ]
    })
}

/// A valid publication for holder number `n`.
pub fn publication(n: u32) -> Value {
    let id = format!("3101011990010{n:04}X");
    json!({
        "license_type": TYPE,
        "holder": {"kind": "person", "identifier": id, "name": format!("测试{n}")},
        "fields": {"name": format!("测试{n}"), "sex": "男", "birth_date": "1990-01-01", "id_number": id, "authority": "测试分局"},
        "valid_from": "2024-01-01",
        "valid_until": "2034-01-01"
    })
}

/// Decodes the payload of a compact JWS without verifying it.
pub fn jwt_part(jwt: &str, index: usize) -> Value {
    let part = jwt.split('.').nth(index).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// Verifies a compact EdDSA JWS against a JWKS with ed25519-dalek, an
/// implementation independent of the one that signed it.
pub fn verify_with_jwks(jws: &str, jwks: &Value) {
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};
    let header = jwt_part(jws, 0);
    assert_eq!(header["alg"], "EdDSA");
    let kid = header["kid"].as_str().unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .expect("kid in JWKS");
    assert_eq!(jwk["kty"], "OKP");
    assert_eq!(jwk["crv"], "Ed25519");
    let x: [u8; 32] = URL_SAFE_NO_PAD
        .decode(jwk["x"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let key = VerifyingKey::from_bytes(&x).unwrap();
    let (signing_input, sig) = jws.rsplit_once('.').unwrap();
    let sig = Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig).unwrap()).unwrap();
    key.verify(signing_input.as_bytes(), &sig)
        .expect("signature verifies");
}

/// Verifies an SD-JWT: the issuer's signature, every disclosure's digest in
/// `_sd`, and returns the disclosed fields.
pub fn verify_sd_jwt(sd_jwt: &str, jwks: &Value) -> serde_json::Map<String, Value> {
    let mut parts = sd_jwt.split('~');
    let jwt = parts.next().unwrap();
    verify_with_jwks(jwt, jwks);
    let payload = jwt_part(jwt, 1);
    assert_eq!(payload["_sd_alg"], "sha-256");
    let digests: Vec<&str> = payload["_sd"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    let mut fields = serde_json::Map::new();
    for d in parts.filter(|d| !d.is_empty()) {
        let digest =
            URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, d.as_bytes()));
        assert!(
            digests.contains(&digest.as_str()),
            "disclosure digest is signed"
        );
        let arr: Vec<Value> = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(d).unwrap()).unwrap();
        fields.insert(arr[1].as_str().unwrap().to_owned(), arr[2].clone());
    }
    fields
}

impl TestServer {
    pub async fn regulator_token(&self) -> String {
        let (id, secret) = self.client(Role::Regulator, None).await;
        self.token(&id, &secret).await
    }

    /// Flags that point the command line at this server's database.
    pub fn cli_args(&self) -> Vec<String> {
        let mut args = vec![
            "--data-dir".to_owned(),
            self.dir.path().display().to_string(),
        ];
        if let Some(url) = &self.database_url {
            args.push("--database-url".into());
            args.push(url.clone());
        }
        args
    }
}

/// The licensegate binary with no LICENSEGATE_* variables inherited.
pub fn licensegate() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_licensegate"));
    for (k, _) in std::env::vars() {
        if k.starts_with("LICENSEGATE_") {
            c.env_remove(k);
        }
    }
    c
}

/// `licensegate ARGS audit verify`: whether it passed, and its JSON report.
pub fn audit_verify(args: &[String]) -> (bool, Value) {
    let out = licensegate()
        .args(args)
        .args(["audit", "verify"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), report)
}

/// `audit verify` that must pass; returns the report.
pub fn assert_chain_verifies(args: &[String]) -> Value {
    let (ok, report) = audit_verify(args);
    assert!(ok, "the chain verifies: {report}");
    report
}

/// A copy of the shipped policies in a temporary directory, to change in a test.
pub fn copy_of_policies() -> tempfile::TempDir {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&shipped).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    dir
}

/// Starts `licensegate ARGS --listen 127.0.0.1:<free port> serve EXTRA…` as a
/// process and waits until it answers; returns it with its base URL. With
/// `capture`, its stdout and stderr are piped for the test to read.
#[allow(clippy::zombie_processes)] // every caller stops and waits for the process
pub async fn spawn_server(
    args: &[String],
    extra: &[&str],
    capture: bool,
) -> (ServerProcess, String) {
    use std::process::Stdio;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let io = || {
        if capture {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    let child = licensegate()
        .args(args)
        .args(["--listen", &format!("127.0.0.1:{port}"), "serve"])
        .args(extra)
        .stdout(io())
        .stderr(io())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..600 {
        if http.get(format!("{base}/healthz")).send().await.is_ok() {
            return (ServerProcess(Some(child)), base);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = ServerProcess(Some(child));
    panic!("licensegate did not come up on {base}");
}

/// A `licensegate serve` process started by a test. A test that fails before
/// it stops the process does not leave it running (holding database
/// connections that the next tests need): it is killed when dropped.
pub struct ServerProcess(Option<std::process::Child>);

impl ServerProcess {
    /// The process, no longer killed on drop.
    pub fn into_child(mut self) -> std::process::Child {
        self.0.take().expect("a started process")
    }
}

impl std::ops::Deref for ServerProcess {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("a started process")
    }
}

impl std::ops::DerefMut for ServerProcess {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_mut().expect("a started process")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

// ---- an independent RFC 9162 inclusion check, written from the RFC -------

/// SHA-256 over the concatenated parts.
pub fn sha(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    ctx.finish().as_ref().try_into().unwrap()
}

pub fn unhex(s: &str) -> [u8; 32] {
    let v: Vec<u8> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// RFC 9162 §2.1.3.2.
pub fn rfc_verify_inclusion(
    leaf_data: &[u8],
    index: u64,
    size: u64,
    path: &[[u8; 32]],
    root: &[u8; 32],
) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnn, mut snn) = (index, size - 1);
    let mut r = sha(&[&[0], leaf_data]);
    for p in path {
        if snn == 0 {
            return false;
        }
        if fnn % 2 == 1 || fnn == snn {
            r = sha(&[&[1], p, &r]);
            while fnn % 2 == 0 && fnn != 0 {
                fnn >>= 1;
                snn >>= 1;
            }
        } else {
            r = sha(&[&[1], &r, p]);
        }
        fnn >>= 1;
        snn >>= 1;
    }
    snn == 0 && &r == root
}
