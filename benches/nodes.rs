//! Retrievals per second and latency per number of broker nodes on one
//! PostgreSQL database: 1, 2, then 3 `licensegate serve` processes (release
//! build, demo data, rate limits off) behind a round-robin client, the load
//! generator in this process, all on the same machine. Each retrieval is a
//! full one: token and consent checks, policy decision, budget spent and
//! `license.retrieved` made durable, signed receipt. Reads are spread over 64
//! consents (one per connection), as many holders' consents would be.
//!
//!     cargo bench --bench nodes [-- REQUESTS [CONCURRENCY [MAX_NODES]]]
//!
//! PostgreSQL: LICENSEGATE_BENCH_PG_URL (default postgres://postgres@127.0.0.1:5432/test);
//! a fresh database is created beside it for each run.

use std::process::{Child, Command, Stdio};

use licensegate::config::{Config, Settings};
use licensegate::consent::new_consent;
use licensegate::policy::Flow;
use licensegate::App;
use sqlx::Connection;

#[path = "common.rs"]
mod common;
use common::*;

// As in the server binary (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A fresh database beside the benchmark's PostgreSQL URL: (admin URL, its URL).
async fn fresh_database() -> (String, String) {
    let admin = std::env::var("LICENSEGATE_BENCH_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&admin)
        .await
        .expect("PostgreSQL (LICENSEGATE_BENCH_PG_URL)");
    let name = format!("lg_bench_nodes_{}", std::process::id());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create database");
    let (prefix, _) = admin.rsplit_once('/').expect("database URL");
    let url = format!("{prefix}/{name}");
    (admin, url)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// A node process, killed when dropped (also when the benchmark panics).
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_node(dir: &std::path::Path, url: &str, public: &str) -> (Node, String) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_licensegate"))
        .args([
            "--data-dir",
            &dir.display().to_string(),
            "--database-url",
            url,
        ])
        .args([
            "--public-url",
            public,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--rate-limit-client", "0", "--rate-limit-address", "0"])
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("node-{port}.log"))).expect("log file"))
        .spawn()
        .map(Node)
        .expect("licensegate serve");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..600 {
        if http.get(format!("{base}/readyz")).send().await.is_ok() {
            return (child, base);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(dir.join(format!("node-{port}.log"))).unwrap_or_default();
    panic!("node on {base} did not come up:\n{log}");
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args()
        .skip(1)
        .filter(|a| a.chars().all(|c| c.is_ascii_digit()));
    let total: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let concurrency: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let max_nodes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let (admin, url) = fresh_database().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The public URL every node answers as (the load balancer's).
    let public = "http://licensegate.bench";
    let settings = Settings {
        data_dir: Some(dir.path().to_path_buf()),
        database_url: Some(url.clone()),
        public_url: Some(public.into()),
        ..Default::default()
    };
    let config = Config::resolve(settings, Settings::default()).expect("config");
    let app = App::build(config).await.expect("app");
    let services = app.services.clone();
    licensegate::demo::load(&services).await.expect("demo data");
    let demo = demo_consent(&services, dir.path()).await;
    let client = services
        .clients
        .get(&demo.client_id)
        .await
        .expect("client")
        .expect("the bank's client");
    let mut tokens = Vec::new();
    for _ in 0..concurrency {
        let mut c = new_consent(
            &demo.holder,
            &demo.client_id,
            &demo.terms,
            &demo.granted,
            Flow::Redirect,
        )
        .expect("consent");
        c.max_retrievals = i64::MAX / 2;
        services
            .store
            .insert_consent(&c)
            .await
            .expect("insert consent");
        let (token, _) = services
            .tokens
            .issue_for_consent(&client, &c, None)
            .await
            .expect("token");
        tokens.push(token);
    }
    let path = format!("/api/v1/licenses/{}", demo.granted[0].licenses[0]);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("client");

    println!("nodes  retrievals/s   p50 ms   p99 ms   ({total} requests, {concurrency} connections, PostgreSQL)");
    let mut nodes: Vec<(Node, String)> = Vec::new();
    for n in 1..=max_nodes {
        nodes.push(start_node(dir.path(), &url, public).await);
        let bases: Vec<String> = nodes.iter().map(|(_, b)| b.clone()).collect();
        let urls: Vec<String> = bases.iter().map(|b| format!("{b}{path}")).collect();
        // Warm-up: connections, caches, prepared statements.
        for (i, u) in urls.iter().cycle().take(concurrency * n).enumerate() {
            send_ok(http.get(u).bearer_auth(&tokens[i % tokens.len()])).await;
        }
        let (http, urls, tokens) = (http.clone(), urls.clone(), tokens.clone());
        let retrieve = move |i: usize| {
            let req = http
                .get(&urls[i % urls.len()])
                .bearer_auth(&tokens[i % tokens.len()]);
            async move {
                send_ok(req).await;
            }
        };
        let (rate, p50, p99) = load(total, concurrency, retrieve).await;
        println!("{n:>5}  {rate:>12.0}   {p50:>6.2}   {p99:>6.2}");
    }
    drop(nodes);
    services.store.close().await;
    drop(app);
    // The benchmark's database goes too.
    if let Ok(mut conn) = sqlx::AnyConnection::connect(&admin).await {
        let name = url.rsplit('/').next().unwrap_or_default();
        let _ = sqlx::query(&format!("DROP DATABASE {name}"))
            .execute(&mut conn)
            .await;
    }
}
