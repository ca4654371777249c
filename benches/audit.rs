//! Audit log benchmark: durable appends per second (one writer, and many
//! concurrent writers sharing group commits) and verification speed, on the
//! embedded SQLite default (or PostgreSQL with LICENSEGATE_BENCH_DATABASE_URL).
//!
//!     cargo bench --bench audit [-- RECORDS]

use std::sync::Arc;
use std::time::Instant;

use licensegate::audit::verify::{keys_from_jwks, verify_file, verify_store};
use licensegate::audit::{ActorKind, AuditEvent, AuditLog, Outcome};
use licensegate::config::{Config, Settings};
use licensegate::App;

// As in the server binary (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn event(i: usize) -> AuditEvent {
    AuditEvent::new(
        ActorKind::Entity,
        format!("ent_{}", i % 97),
        "license.retrieved",
        Outcome::Success,
    )
    .holder(format!("h_{}", i % 1000))
    .license(format!(
        "1.2.156.3005.2.JMSFZ.11310000002420005R.{:08}.001.X",
        i % 5000
    ))
    .license_type("JMSFZ")
    .reason("permit: policy bank-account-opening")
}

async fn concurrent(audit: &Arc<AuditLog>, writers: usize, total: usize) -> f64 {
    let start = Instant::now();
    let per = total / writers;
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let audit = audit.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                audit.record(event(w * per + i)).await.expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    (per * writers) as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let total: usize = std::env::args()
        .skip(1)
        .find(|a| a.chars().all(|c| c.is_ascii_digit()))
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    // Warnings on stderr: a background task that fails (the indexer, the WAL
    // checkpoints) would otherwise go unseen and flatter the figures.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings {
        data_dir: Some(dir.path().to_path_buf()),
        database_url: std::env::var("LICENSEGATE_BENCH_DATABASE_URL").ok(),
        ..Default::default()
    };
    let app = App::build(Config::resolve(settings, Settings::default()).expect("config"))
        .await
        .expect("app");
    let s = &app.services;
    // As in `serve`: the holder/license index is filled in the background
    // meanwhile, and SQLite's WAL is copied back beside the writer, not by it.
    let indexer = tokio::spawn(licensegate::app::audit_indexer(app.services.clone()));
    let wal = tokio::spawn(licensegate::app::wal_checkpoints(app.services.clone()));
    println!(
        "audit log benchmark on {} ({} cores)",
        if s.config.is_postgres() {
            "PostgreSQL"
        } else {
            "SQLite WAL, synchronous=FULL"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let single = concurrent(&s.audit, 1, 5_000).await;
    println!("durable appends, 1 writer (one commit per record):   {single:>10.0} records/s");
    for writers in [64, 256, 1024] {
        let rate = concurrent(&s.audit, writers, total).await;
        println!("durable appends, {writers:>4} concurrent writers (group commit): {rate:>10.0} records/s");
    }
    s.checkpoints.create().await.expect("checkpoint");
    indexer.abort();
    wal.abort();
    // Verification alone from here: the index catches up and the WAL is
    // copied back first (an aborted indexer's last statement would otherwise
    // still run beside the verification). How far the index was behind shows
    // whether the background indexer kept up with the appends.
    let start = Instant::now();
    let mut lag = 0;
    loop {
        let n = s.store.index_audit_subjects(20_000).await.expect("index");
        if n == 0 {
            break;
        }
        lag += n;
    }
    println!(
        "subject index behind the appends at their end: {lag} records (caught up in {:.2} s)",
        start.elapsed().as_secs_f64()
    );
    s.store.checkpoint_wal().await.expect("WAL checkpoint");

    let keys = keys_from_jwks(&s.keys.jwks(licensegate::keys::BROKER).await.expect("jwks"));
    let start = Instant::now();
    let report = verify_store(
        &s.store,
        s.checkpoints.all().await.expect("checkpoints"),
        keys,
    )
    .await
    .expect("verify");
    let secs = start.elapsed().as_secs_f64();
    assert!(report.ok, "{report:?}");
    println!(
        "verification from the database: {} records in {secs:.2} s = {:>10.0} records/s",
        report.records,
        report.records as f64 / secs
    );

    let file = dir.path().join("export.jsonl");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_licensegate"))
        .args([
            "--data-dir",
            dir.path().to_str().unwrap_or("."),
            "audit",
            "export",
            "--out",
            file.to_str().unwrap_or("x"),
        ])
        .env_remove("LICENSEGATE_DATABASE_URL")
        .args(
            std::env::var("LICENSEGATE_BENCH_DATABASE_URL")
                .map(|u| vec!["--database-url".to_owned(), u])
                .unwrap_or_default(),
        )
        .output()
        .expect("export");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = Instant::now();
    let reader =
        std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&file).expect("open"));
    let report = verify_file(reader, None).expect("verify file");
    let secs = start.elapsed().as_secs_f64();
    assert!(report.ok, "{report:?}");
    println!(
        "verification of an export file:  {} records in {secs:.2} s = {:>10.0} records/s",
        report.records,
        report.records as f64 / secs
    );
}
