//! Faults: a node killed with SIGKILL under retrieval load, the database gone
//! for a while, writes that fail. In every case no read is answered without
//! its audit record, no budget is over-spent, and the chain verifies.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::flows::*;
use common::*;
use serde_json::Value;

/// The path of the first license a consent token covers, read on `base`.
async fn license_path(w: &World, base: &str, token: &str) -> String {
    let (status, covered) = get_on(w, base, token, "/api/v1/licenses").await;
    assert_eq!(status, 200, "{covered}");
    format!(
        "/api/v1/licenses/{}",
        covered["licenses"][0]["identifier"].as_str().unwrap()
    )
}

/// Fails unless less than `secs` seconds passed since `started`.
fn assert_within(started: Instant, secs: u64) {
    assert!(
        started.elapsed() < Duration::from_secs(secs),
        "{:?}",
        started.elapsed()
    );
}

/// Reads left on a consent, asked of the in-process node.
async fn reads_left(w: &World, token: &str) -> i64 {
    let (status, covered) = get_on(w, &w.s.base, token, "/api/v1/licenses").await;
    assert_eq!(status, 200, "{covered}");
    covered["retrievals_left"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_retrieval_load_loses_no_read_and_overspends_no_budget() {
    // The first consent runs out during the load; the others are still being read when the node dies.
    const BUDGETS: [i64; 4] = [60, 1000, 1000, 1000];
    let w = world_with(|_| {}).await;
    let (id, secret) = bank_with_budget(&w, "91310000MA1KLLTB0", 1000).await;
    let mut tokens = Vec::new();
    for budget in BUDGETS {
        let rar = details(Some(30), Some(budget as u32));
        tokens.push(access_token(&consent_tokens(&w, &id, &secret, &rar).await));
    }
    let (mut node, base) = spawn_server(&node_args(&w), &[], false).await;
    let path = license_path(&w, &base, &tokens[0]).await;

    // 32 readers on the node, 8 per consent, until the node dies; every 200 is noted.
    let acked: Arc<Mutex<Vec<(usize, i64)>>> = Arc::default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut readers = Vec::new();
    for i in 0..32 {
        let (http, acked, url, token) = (
            http.clone(),
            acked.clone(),
            format!("{base}{path}"),
            tokens[i % 4].clone(),
        );
        readers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                let Ok(res) = http.get(&url).bearer_auth(&token).send().await else {
                    break;
                };
                if res.status() == 200 {
                    let Ok(body) = res.json::<Value>().await else {
                        break;
                    };
                    acked
                        .lock()
                        .unwrap()
                        .push((i % 4, body["audit_seq"].as_i64().unwrap()));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    node.kill().unwrap(); // SIGKILL
    node.wait().unwrap();
    for r in readers {
        r.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "the load got going ({} reads)",
        acked.len()
    );
    eprintln!("{} reads acknowledged before SIGKILL", acked.len());

    // Every acknowledged read is on record as that consent's retrieval.
    let head = w.s.services.store.audit_head().await.unwrap();
    let records = w.s.services.store.audit_range(0, head.seq).await.unwrap();
    let by_seq: HashMap<i64, _> = records.iter().map(|r| (r.seq, r)).collect();
    let mut consent_of_token = HashMap::new();
    for (i, seq) in &acked {
        let rec = by_seq
            .get(seq)
            .unwrap_or_else(|| panic!("acknowledged read {seq} has no record"));
        assert_eq!(rec.action, "license.retrieved");
        let consent = rec.consent.clone().unwrap();
        assert_eq!(
            consent_of_token
                .entry(*i)
                .or_insert_with(|| consent.clone()),
            &consent
        );
    }
    // No budget over-spent, and each consent's counter is its number of records.
    for (i, token) in tokens.iter().enumerate() {
        let Some(consent) = consent_of_token.get(&i) else {
            continue;
        };
        let retrieved = records
            .iter()
            .filter(|r| r.action == "license.retrieved" && r.consent.as_ref() == Some(consent))
            .count() as i64;
        assert!(
            retrieved <= BUDGETS[i],
            "{retrieved} reads of a budget of {}",
            BUDGETS[i]
        );
        assert_eq!(reads_left(&w, token).await, BUDGETS[i] - retrieved);
    }
    assert_chain_verifies(&w.s.cli_args());
    w.s.stop().await;
}

/// A TCP relay to PostgreSQL that the test can cut (every connection closed,
/// new ones refused) and restore on the same port.
struct Relay {
    port: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        Relay {
            port,
            task: Some(Self::relay(listener)),
        }
    }

    fn relay(listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            // Dropped with the task: aborting it closes every relayed connection.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                connections.spawn(async move {
                    if let Ok(mut db) = tokio::net::TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut db).await;
                    }
                });
            }
        })
    }

    async fn cut(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        self.task = Some(Self::relay(listener));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_hangs_holding_the_log_costs_503s_not_a_hang() {
    if backend() != "postgres" {
        eprintln!("the lock test needs a database server (LICENSEGATE_TEST_DATABASE=postgres)");
        return;
    }
    let w = world_with(|_| {}).await;
    let (id, secret) = bank_with_budget(&w, "91310000MA1HANGT0", 10).await;
    let t = consent_tokens(&w, &id, &secret, &details(Some(30), Some(10))).await;
    let token = access_token(&t);
    let (node, base) = spawn_server(&node_args(&w), &["--db-timeout", "2"], false).await;
    let path = license_path(&w, &base, &token).await;

    // Another node took the log's head and hangs inside its transaction.
    let mut hung = w.s.services.store.writer().begin().await.unwrap();
    sqlx::query("UPDATE audit_head SET seq = seq WHERE id = 1")
        .execute(&mut *hung)
        .await
        .unwrap();

    // A read waits for the lock as long as for a connection, then answers 503.
    let started = Instant::now();
    let (status, body) = get_on(&w, &base, &token, &path).await;
    assert_eq!(status, 503, "{body}");
    assert_within(started, 10);
    assert!(body["body"].get("fields").is_none(), "{body}");
    // And the node still stops when asked, though the lock is still held.
    let stopping = Instant::now();
    stop_nodes(vec![(node, base)]).await;
    assert_within(stopping, 15);
    hung.rollback().await.unwrap();

    // Nothing was spent or served by the refused read.
    assert_eq!(reads_left(&w, &token).await, 10);
    assert!(!actions(&w)
        .await
        .iter()
        .any(|(a, _, _)| a == "license.retrieved"));
    assert_chain_verifies(&w.s.cli_args());
    w.s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_fails_fast_with_503_and_recovers() {
    if backend() != "postgres" {
        eprintln!(
            "the database outage test needs a database server (LICENSEGATE_TEST_DATABASE=postgres)"
        );
        return;
    }
    let w = world_with(|_| {}).await;
    let (id, secret) = bank_with_budget(&w, "91310000MA1DBDTB0", 10).await;
    let t = consent_tokens(&w, &id, &secret, &details(Some(30), Some(10))).await;
    let token = access_token(&t);

    // A node that reaches the database through the relay.
    let mut relay = Relay::start().await;
    let direct = w.s.database_url.clone().unwrap();
    let relayed = direct.replace("127.0.0.1:5432", &format!("127.0.0.1:{}", relay.port));
    assert_ne!(direct, relayed);
    let mut args = node_args(&w);
    let at = args.iter().position(|a| a == "--database-url").unwrap();
    args[at + 1] = relayed;
    let (node, base) = spawn_server(&args, &["--db-timeout", "2"], false).await;
    let path = license_path(&w, &base, &token).await;
    assert_eq!(get_on(&w, &base, &token, &path).await.0, 200);

    // The database is gone: reads, tokens and readiness answer 503 quickly, with a clear body.
    relay.cut().await;
    for _ in 0..3 {
        let started = Instant::now();
        let (status, body) = get_on(&w, &base, &token, &path).await;
        assert_eq!(status, 503, "{body}");
        assert_within(started, 5);
        assert_eq!(body["body"]["status"], 503, "{body}");
        assert!(
            body["body"]["detail"]
                .as_str()
                .unwrap()
                .contains("unavailable"),
            "{body}"
        );
        assert!(body["body"].get("fields").is_none());
    }
    let res =
        w.s.http
            .post(format!("{base}/token"))
            .basic_auth(&id, Some(&secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    let ready = w.s.http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);

    // Back again: the node recovers by itself.
    relay.restore().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = get_on(&w, &base, &token, &path).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing half-written: two reads served, two spent, two on record.
    assert_eq!(reads_left(&w, &token).await, 8);
    let served = actions(&w)
        .await
        .into_iter()
        .filter(|(a, _, _)| a == "license.retrieved")
        .count();
    assert_eq!(served, 2);
    stop_nodes(vec![(node, base)]).await;
    assert_chain_verifies(&w.s.cli_args());
    w.s.stop().await;
}

/// Makes every audit append fail as a full disk does (on SQLite the database
/// file may not grow; on PostgreSQL the insert fails with SQLSTATE 53100
/// disk_full), or undoes it.
async fn fail_writes(w: &World, fail: bool) {
    let store = &w.s.services.store;
    let sql: &[&str] = match (backend(), fail) {
        ("postgres", true) => &[
            "CREATE FUNCTION lg_test_disk_full() RETURNS trigger AS $$ BEGIN \
             RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full'; \
             END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER lg_test_disk_full BEFORE INSERT ON audit_records \
             FOR EACH ROW EXECUTE FUNCTION lg_test_disk_full()",
        ],
        ("postgres", false) => &[
            "DROP TRIGGER lg_test_disk_full ON audit_records",
            "DROP FUNCTION lg_test_disk_full()",
        ],
        // The server's single writer connection: the file may not grow past its size.
        (_, true) => &["PRAGMA max_page_count = 1"],
        (_, false) => &["PRAGMA max_page_count = 1073741823"],
    };
    for s in sql {
        sqlx::query(s).execute(store.writer()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_writes_refuse_rather_than_answer_unaudited() {
    let w = world_with(|_| {}).await;
    let (id, secret) = bank_with_budget(&w, "91310000MA1FWFTB0", 500).await;
    let t = consent_tokens(&w, &id, &secret, &details(Some(30), Some(500))).await;
    let token = access_token(&t);
    let base = w.s.base.clone();
    let path = license_path(&w, &base, &token).await;
    assert_eq!(get_on(&w, &base, &token, &path).await.0, 200);
    let before = actions(&w).await.len();

    fail_writes(&w, true).await;
    // SQLite fills the free pages it still has first; every read after that is refused.
    let mut served = 1;
    let mut refused = 0;
    for _ in 0..400 {
        let (status, body) = get_on(&w, &base, &token, &path).await;
        match status {
            200 if refused == 0 => served += 1,
            503 => {
                refused += 1;
                assert!(body["body"].get("fields").is_none(), "{body}");
                assert!(
                    body["body"]["detail"]
                        .as_str()
                        .unwrap()
                        .contains("could not record"),
                    "{body}"
                );
                if refused == 5 {
                    break;
                }
            }
            _ => panic!("{status} {body} after {refused} refusals"),
        }
    }
    assert_eq!(refused, 5, "writes never failed");
    eprintln!("{served} reads served before the writes failed, then {refused} refused");
    let res =
        w.s.http
            .post(w.s.url("/token"))
            .basic_auth(&id, Some(&secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), 503, "no token without its record");
    fail_writes(&w, false).await;

    // Every read answered is on record and spent; the refused ones neither.
    assert_eq!(get_on(&w, &base, &token, &path).await.0, 200);
    served += 1;
    assert_eq!(reads_left(&w, &token).await, 500 - served);
    let new = actions(&w).await;
    assert_eq!(
        new[before..]
            .iter()
            .filter(|(a, _, _)| a == "license.retrieved")
            .count() as i64,
        served - 1
    );
    assert_chain_verifies(&w.s.cli_args());
    w.s.stop().await;
}
