//! The `licensegate` binary: help, configuration, migrate, demo, import, and
//! graceful shutdown with a request in flight.

mod common;

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_licensegate"));
    for (k, _) in std::env::vars() {
        if k.starts_with("LICENSEGATE_") {
            c.env_remove(k);
        }
    }
    c
}

/// Database flags for the backend under test.
async fn db_args(dir: &std::path::Path) -> Vec<String> {
    let mut args = vec!["--data-dir".to_owned(), dir.display().to_string()];
    if common::backend() == "postgres" {
        args.push("--database-url".into());
        args.push(common::fresh_postgres().await);
    }
    args
}

#[test]
fn help_explains_every_command() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for cmd in ["serve", "migrate", "demo", "import", "create-client"] {
        assert!(text.contains(cmd), "--help mentions {cmd}");
    }
    let serve =
        String::from_utf8(bin().args(["serve", "--help"]).output().unwrap().stdout).unwrap();
    assert!(
        serve.contains("--demo")
            && serve.contains("--listen")
            && serve.contains("LICENSEGATE_DATA_DIR")
    );
}

#[tokio::test]
async fn configuration_file_env_and_redaction() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("from-file");
    let cfg = dir.path().join("licensegate.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\naccess_token_ttl = 120\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let out = bin()
        .args(["--config", cfg.to_str().unwrap(), "migrate"])
        .env("LICENSEGATE_MASTER_KEY", &key)
        .env("LICENSEGATE_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        data.join("licensegate.db").exists(),
        "data_dir came from the file"
    );
    assert!(
        !data.join("master.key").exists(),
        "the configured master key was used"
    );
    let logs = String::from_utf8(out.stdout).unwrap() + &String::from_utf8(out.stderr).unwrap();
    assert!(!logs.contains(&key), "the master key is never logged");
    let line = logs
        .lines()
        .find(|l| l.contains("effective configuration"))
        .expect("configuration logged");
    let entry: Value = serde_json::from_str(line).expect("JSON logs");
    let effective: Value = serde_json::from_str(entry["config"].as_str().unwrap()).unwrap();
    assert_eq!(effective["master_key"], "[redacted]");
    assert_eq!(effective["access_token_ttl"], 120);

    // Without a configured key, one is generated with mode 0600.
    let fresh = dir.path().join("fresh");
    assert!(bin()
        .args(["--data-dir", fresh.to_str().unwrap(), "migrate"])
        .output()
        .unwrap()
        .status
        .success());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(fresh.join("master.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // A broken config file is a clear error.
    std::fs::write(&cfg, "no_such_setting = 1\n").unwrap();
    let out = bin()
        .args(["--config", cfg.to_str().unwrap(), "migrate"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_such_setting"));
}

#[tokio::test]
async fn demo_then_cli_import() {
    let dir = tempfile::tempdir().unwrap();
    let args = db_args(dir.path()).await;
    let out = bin().args(&args).arg("demo").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.contains("demo-credentials.json"), "{printed}");
    let creds: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("demo-credentials.json")).unwrap(),
    )
    .unwrap();
    let clients = creds["clients"].as_array().unwrap();
    assert!(clients.iter().any(|c| c["role"] == "operator"));
    assert!(clients.iter().filter(|c| c["role"] == "issuer").count() >= 4);
    // Loading again changes nothing.
    let again = bin().args(&args).arg("demo").output().unwrap();
    assert!(String::from_utf8(again.stdout)
        .unwrap()
        .contains("already loaded"));

    let police = clients
        .iter()
        .find(|c| c["name"] == "上海市公安局")
        .unwrap()["issuer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let line = |n: u32, sex: &str| {
        json!({"license_type": "JMSFZ", "source_ref": format!("CLI-{n}"),
               "holder": {"kind": "person", "identifier": format!("31010119800101{n:04}"), "name": "导入"},
               "fields": {"name": "导入", "sex": sex, "ethnicity": "汉", "birth_date": "1980-01-01", "address": "上海市",
                          "id_number": format!("31010119800101{n:04}"), "issuing_authority": "上海市公安局黄浦分局"},
               "valid_from": "2020-01-01", "valid_until": "2040-01-01"})
        .to_string()
    };
    let file = dir.path().join("import.jsonl");
    std::fs::write(
        &file,
        [line(1, "男"), line(2, "未知"), line(3, "女")].join("\n"),
    )
    .unwrap();
    let run = || {
        bin()
            .args(&args)
            .args(["import", file.to_str().unwrap(), "--issuer", &police])
            .output()
            .unwrap()
    };
    let out = run();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a refused line makes the exit code 2"
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["accepted"].as_u64(), report["refused"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(report["lines"][1]["errors"][0]["field"], "fields.sex");
    let report: Value = serde_json::from_slice(&run().stdout).unwrap();
    assert_eq!(
        (report["accepted"].as_u64(), report["unchanged"].as_u64()),
        (Some(0), Some(2))
    );
    let out = bin()
        .args(&args)
        .args(["import", file.to_str().unwrap(), "--issuer", "NOPE"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests() {
    let dir = tempfile::tempdir().unwrap();
    let args = db_args(dir.path()).await;
    let (child, base) = common::spawn_server(&args, &["--demo"], true).await;
    let http = reqwest::Client::new();
    let creds: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("demo-credentials.json")).unwrap(),
    )
    .unwrap();
    let issuer = creds["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "上海市公安局")
        .unwrap()
        .clone();
    let token: Value = http
        .post(format!("{base}/token"))
        .basic_auth(
            issuer["client_id"].as_str().unwrap(),
            issuer["client_secret"].as_str(),
        )
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();

    // A large import takes a while; SIGTERM arrives while it runs.
    let lines: Vec<String> = (0..1500)
        .map(|n| {
            json!({"license_type": "JMSFZ", "source_ref": format!("TERM-{n}"),
                   "holder": {"kind": "person", "identifier": format!("31011519700101{n:04}"), "name": "在途"},
                   "fields": {"name": "在途", "sex": "男", "ethnicity": "汉", "birth_date": "1970-01-01", "address": "上海市",
                              "id_number": format!("31011519700101{n:04}"), "issuing_authority": "上海市公安局"},
                   "valid_from": "2020-01-01", "valid_until": "2040-01-01"})
            .to_string()
        })
        .collect();
    let in_flight = tokio::spawn({
        let http = http.clone();
        let url = format!("{base}/issuer/v1/imports");
        async move {
            http.post(url)
                .bearer_auth(token)
                .body(lines.join("\n"))
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !in_flight.is_finished(),
        "the import is still running when SIGTERM is sent"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let res = in_flight
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(res.status(), 200);
    let report: Value = res.json().await.unwrap();
    assert_eq!(report["accepted"], 1500, "the whole import finished");
    let exit = tokio::task::spawn_blocking(move || child.into_child().wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.status.success(), "clean exit after SIGTERM");
    let logs =
        String::from_utf8_lossy(&exit.stdout).to_string() + &String::from_utf8_lossy(&exit.stderr);
    assert!(
        logs.contains("shutdown requested") && logs.contains("licensegate stopped"),
        "{logs}"
    );
    assert!(
        http.get(format!("{base}/healthz")).send().await.is_err(),
        "no longer listening"
    );
}
