//! The audit log across real processes: a server killed with SIGKILL under
//! load loses no acknowledged record, and two servers on one database append
//! to one valid chain.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

struct Node {
    child: ServerProcess,
    base: String,
}

/// Database flags shared by every process of one test.
async fn shared_db(dir: &std::path::Path) -> Vec<String> {
    let mut args = vec!["--data-dir".to_owned(), dir.display().to_string()];
    if backend() == "postgres" {
        args.push("--database-url".into());
        args.push(fresh_postgres().await);
    }
    args
}

async fn start_node(db: &[String]) -> Node {
    let (child, base) = spawn_server(db, &[], false).await;
    Node { child, base }
}

fn create_client(db: &[String]) -> (String, String) {
    let out = licensegate()
        .args(db)
        .args(["create-client", "--role", "operator", "--name", "load"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        c["client_id"].as_str().unwrap().to_owned(),
        c["client_secret"].as_str().unwrap().to_owned(),
    )
}

/// Token requests from `workers` tasks per node until `stop`; returns the jti of every acknowledged token.
async fn load(
    bases: Vec<String>,
    creds: (String, String),
    workers: usize,
    duration: Duration,
) -> Vec<String> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for base in bases {
        for _ in 0..workers {
            let (http, acked, base, creds) =
                (http.clone(), acked.clone(), base.clone(), creds.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let res = http
                        .post(format!("{base}/token"))
                        .basic_auth(&creds.0, Some(&creds.1))
                        .form(&[("grant_type", "client_credentials")])
                        .send()
                        .await;
                    let Ok(res) = res else { break };
                    if res.status() != 200 {
                        break;
                    }
                    let Ok(body) = res.json::<Value>().await else {
                        break;
                    };
                    let jti = jwt_part(body["access_token"].as_str().unwrap(), 1)["jti"]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    acked.lock().unwrap().push(jti);
                }
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let v = acked.lock().unwrap().clone();
    v
}

/// Every `token.issued` record's jti, from a full export.
fn issued_jtis(db: &[String], dir: &std::path::Path) -> Vec<String> {
    let file = dir.join(format!("export-{}.jsonl", std::process::id()));
    let out = licensegate()
        .args(db)
        .args(["audit", "export", "--out", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut seqs = Vec::new();
    let mut jtis = Vec::new();
    for line in std::fs::read_to_string(&file).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["type"] == "record" {
            seqs.push(v["seq"].as_i64().unwrap());
            if v["action"] == "token.issued" {
                let reason = v["reason"].as_str().unwrap();
                jtis.push(reason.rsplit("jti=").next().unwrap().to_owned());
            }
        }
    }
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "gapless");
    jtis
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let db = shared_db(dir.path()).await;
    let creds = create_client(&db);
    let mut node = start_node(&db).await;
    let base = node.base.clone();
    let load = tokio::spawn(load(vec![base], creds, 32, Duration::from_secs(30)));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.child.kill().unwrap(); // SIGKILL
    node.child.wait().unwrap();
    let acked = load.await.unwrap();
    assert!(
        acked.len() > 100,
        "the load got going ({} tokens)",
        acked.len()
    );

    let report = assert_chain_verifies(&db);
    let recorded: std::collections::HashSet<String> =
        issued_jtis(&db, dir.path()).into_iter().collect();
    let lost: Vec<&String> = acked.iter().filter(|j| !recorded.contains(*j)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged tokens have no audit record",
        lost.len()
    );
    assert!(report["records"].as_i64().unwrap() >= acked.len() as i64);

    // The restarted server carries on the same chain.
    let node = start_node(&db).await;
    let creds = create_client(&db);
    let more = self::load(
        vec![node.base.clone()],
        creds,
        4,
        Duration::from_millis(300),
    )
    .await;
    assert!(!more.is_empty());
    let mut child = node.child;
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    assert_chain_verifies(&db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_append_to_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let db = shared_db(dir.path()).await;
    let creds = create_client(&db);
    let a = start_node(&db).await;
    let b = start_node(&db).await;
    let acked = load(
        vec![a.base.clone(), b.base.clone()],
        creds,
        16,
        Duration::from_secs(2),
    )
    .await;
    assert!(acked.len() > 100);
    for node in [a, b] {
        let mut child = node.child;
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(child.wait().unwrap().success());
    }
    let report = assert_chain_verifies(&db);
    let recorded = issued_jtis(&db, dir.path());
    assert_eq!(
        recorded.len(),
        acked.len(),
        "one record per token, none lost, none doubled"
    );
    assert!(
        report["checkpoints"].as_i64().unwrap() >= 1,
        "the nodes signed checkpoints: {report}"
    );
}
