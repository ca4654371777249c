//! Token endpoint benchmark for the consent grants, over real HTTP on
//! loopback with the demo data: authorization-code exchanges per second
//! (each: client authentication, code lookup and single-use update, PKCE,
//! consent check, a signed access token, a refresh token row, two durable
//! audit records) and refreshes per second (client authentication, refresh
//! token and consent lookups, a signed token, one durable audit record),
//! then retrievals per second (`GET /api/v1/licenses/{id}`: token
//! verification, token/client/consent check, policy decision, unsealing the
//! consented fields, budget spent and `license.retrieved` made durable in one
//! group commit with the holder's notification, a signed receipt).
//! The load generator of the first two runs in the same process; retrievals
//! are sent by wrk (Debian's package), a separate process on the same 2
//! cores, for REQUESTS/2000 seconds (at least 5), with one token, and then
//! with a new token per request when LICENSEGATE_BENCH_FRESH_TOKENS=N gives
//! how many to issue (LICENSEGATE_BENCH_LOAD=in-process, or no wrk: the
//! in-process generator sends REQUESTS retrievals instead). Those are closed
//! loops: they measure the latency at saturation. Last, an open loop offers
//! LICENSEGATE_BENCH_RATE retrievals per second (10,000 unless given, 0 to
//! skip) for as long, and measures each request's latency from when it was
//! due (benches/common.rs `paced`): the latency at that rate.
//!
//!     cargo bench --bench consent [-- REQUESTS [CONCURRENCY] [codes|refreshes|retrievals]...]
//!
//! Named phases run alone (all three when none is named). The server runs
//! on as many request threads as the binary's default (one per core), or
//! LICENSEGATE_WORKER_THREADS.

use std::sync::Arc;
use std::time::Instant;

use licensegate::config::{Config, Settings};
use licensegate::consent::new_consent;
use licensegate::keys::{b64url, sha256};
use licensegate::policy::Flow;
use licensegate::store::consent::{CodeRow, RefreshRow};
use licensegate::App;

#[path = "common.rs"]
mod common;
use common::*;

// As in the server binary (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const VERIFIER: &str = "bench-verifier-0123456789-0123456789-0123456789";

fn main() {
    // As many request threads as the server binary runs (src/main.rs), unless
    // LICENSEGATE_WORKER_THREADS says otherwise, within the same bounds: the
    // setting goes through the server's own rule.
    let workers = Config::resolve(
        Settings {
            worker_threads: std::env::var("LICENSEGATE_WORKER_THREADS")
                .ok()
                .and_then(|v| v.parse().ok()),
            ..Default::default()
        },
        Settings::default(),
    )
    .expect("config")
    .worker_threads;
    println!("{workers} request threads");
    licensegate::app::runtime(workers)
        .expect("runtime")
        .block_on(run());
}

async fn run() {
    let (numbers, phases): (Vec<String>, Vec<String>) = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .partition(|a| a.chars().all(|c| c.is_ascii_digit()));
    let run = |phase: &str| phases.is_empty() || phases.iter().any(|p| p == phase);
    let mut args = numbers.into_iter();
    let codes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let concurrency: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let settings = Settings {
        listen: Some(addr),
        data_dir: Some(dir.path().to_path_buf()),
        database_url: std::env::var("LICENSEGATE_BENCH_DATABASE_URL").ok(),
        // One client at full speed: the per-client and per-address limits
        // would measure themselves.
        rate_limit_client: Some(0),
        rate_limit_address: Some(0),
        // As the server reads it (the SQLite readers are at most 8 of them).
        db_max_connections: std::env::var("LICENSEGATE_DB_MAX_CONNECTIONS")
            .ok()
            .and_then(|v| v.parse().ok()),
        ..Default::default()
    };
    let config = Config::resolve(settings, Settings::default()).expect("config");
    let app = App::build(config).await.expect("app");
    let services = app.services.clone();
    licensegate::demo::load(&services).await.expect("demo data");
    tokio::spawn(async move { app.serve_on(listener, std::future::pending()).await });

    let DemoConsent {
        client_id,
        secret,
        holder,
        terms,
        granted,
    } = demo_consent(&services, dir.path()).await;
    // Codes as the consent page would have made them.
    let redirect = "https://127.0.0.1/callback";
    let challenge = b64url(sha256(VERIFIER));
    let expires = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
    let prepared = Instant::now();
    let prepare = if run("codes") {
        codes
    } else if run("refreshes") {
        codes.min(1000)
    } else {
        0
    };
    let mut consent_ids = Vec::with_capacity(prepare);
    for i in 0..prepare {
        let c =
            new_consent(&holder, &client_id, &terms, &granted, Flow::Redirect).expect("consent");
        services
            .store
            .insert_consent(&c)
            .await
            .expect("insert consent");
        services
            .store
            .insert_code(
                &sha256(format!("code-{i}")),
                &CodeRow {
                    client_id: client_id.clone(),
                    redirect_uri: redirect.into(),
                    code_challenge: challenge.clone(),
                    consent_id: c.id.clone(),
                    expires_at: expires,
                    used_at: None,
                },
            )
            .await
            .expect("insert code");
        consent_ids.push(c.id);
    }
    println!(
        "prepared {prepare} consents and codes in {:.1} s",
        prepared.elapsed().as_secs_f64()
    );

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("client");
    let url = format!("http://{addr}/token");
    let exchange = {
        let (http, url, client_id, secret) =
            (http.clone(), url.clone(), client_id.clone(), secret.clone());
        move |i: usize| {
            let (http, url, client_id, secret) =
                (http.clone(), url.clone(), client_id.clone(), secret.clone());
            async move {
                let code = format!("code-{i}");
                send_ok(
                    http.post(&url)
                        .basic_auth(&client_id, Some(&secret))
                        .form(&[
                            ("grant_type", "authorization_code"),
                            ("code", code.as_str()),
                            ("redirect_uri", redirect),
                            ("code_verifier", VERIFIER),
                        ]),
                )
                .await;
            }
        }
    };
    if run("codes") {
        let (rate, p50, p99) = load(codes, concurrency, exchange).await;
        println!(
            "authorization-code exchanges: {rate:.0}/s, p50 {p50:.2} ms, p99 {p99:.2} ms ({codes} codes, {concurrency} concurrent)"
        );
    }

    // Refreshes: one refresh token per consent, cycled.
    let mut tokens = Vec::with_capacity(consent_ids.len());
    for (i, id) in consent_ids.iter().enumerate().take(1000) {
        let rt = format!("refresh-{i}");
        services
            .store
            .insert_refresh(
                &sha256(&rt),
                &RefreshRow {
                    consent_id: id.clone(),
                    client_id: client_id.clone(),
                    dpop_jkt: None,
                    expires_at: expires,
                    revoked_at: None,
                },
                "2026-01-01T00:00:00.000000Z",
            )
            .await
            .expect("insert refresh");
        tokens.push(rt);
    }
    let tokens = Arc::new(tokens);
    let http2 = http.clone();
    let bank_id = client_id.clone();
    let refresh = move |i: usize| {
        let (http, url, client_id, secret, tokens) = (
            http.clone(),
            url.clone(),
            client_id.clone(),
            secret.clone(),
            tokens.clone(),
        );
        async move {
            let rt = &tokens[i % tokens.len()];
            send_ok(
                http.post(&url)
                    .basic_auth(&client_id, Some(&secret))
                    .form(&[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", rt.as_str()),
                    ]),
            )
            .await;
        }
    };
    if run("refreshes") {
        let (rate, p50, p99) = load(codes, concurrency, refresh).await;
        println!(
            "refreshes: {rate:.0}/s, p50 {p50:.2} ms, p99 {p99:.2} ms ({codes} requests, {concurrency} concurrent)"
        );
    }

    // Retrievals under one consent with a budget large enough for the run.
    let mut c = new_consent(&holder, &bank_id, &terms, &granted, Flow::Redirect).expect("consent");
    c.max_retrievals = i64::MAX / 2;
    services
        .store
        .insert_consent(&c)
        .await
        .expect("insert consent");
    let client = services
        .clients
        .get(&bank_id)
        .await
        .expect("client")
        .expect("the bank's client");
    let (token, _) = services
        .tokens
        .issue_for_consent(&client, &c, None)
        .await
        .expect("token");
    let license_url = format!("http://{addr}/api/v1/licenses/{}", granted[0].licenses[0]);
    if !run("retrievals") {
        return;
    }
    // wrk, a separate process on the same machine, unless it is missing or
    // the in-process generator is asked for (it shares the server's runtime
    // and costs more CPU per request than wrk).
    let mut in_process = std::env::var("LICENSEGATE_BENCH_LOAD").is_ok_and(|v| v == "in-process");
    let seconds = (codes as u64 / 2000).max(5);
    if !in_process {
        // One token for every request, as an entity that reads with the token
        // it was given; then, with LICENSEGATE_BENCH_FRESH_TOKENS=N, a new
        // token for each request (N of them, each verified in full once).
        let one = format!("wrk.headers[\"Authorization\"] = \"Bearer {token}\"\n");
        let fresh: usize = std::env::var("LICENSEGATE_BENCH_FRESH_TOKENS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        // (what, Lua, how many tokens when each request has its own)
        let mut runs = vec![("one token", one.clone(), None)];
        if fresh > 0 {
            let mut list = String::with_capacity(fresh * 700);
            for _ in 0..fresh {
                let (t, _) = services
                    .tokens
                    .issue_for_consent(&client, &c, None)
                    .await
                    .expect("token");
                list.push_str(&t);
                list.push('\n');
            }
            let path = dir.path().join("tokens.txt");
            std::fs::write(&path, list).expect("tokens");
            runs.push((
                "a new token per request",
                format!(
                    r#"local tokens = {{}}
for line in io.lines("{}") do tokens[#tokens + 1] = "Bearer " .. line end
local i = 0
request = function()
  i = i + 1
  return wrk.format(nil, nil, {{Authorization = tokens[(i - 1) % #tokens + 1]}})
end
"#,
                    path.display()
                ),
                Some(fresh),
            ));
        }
        // Warm up the connections and caches.
        if wrk(&license_url, &one, 1, concurrency, dir.path()).is_some() {
            for (what, lua, tokens) in runs {
                let f = wrk(&license_url, &lua, seconds, concurrency, dir.path()).expect("wrk");
                f.report(
                    "retrievals",
                    &format!("{seconds} s, {concurrency} connections, wrk, {what}"),
                );
                if let Some(n) = tokens.filter(|&n| f.requests > n as u64) {
                    println!(
                        "  ({} requests reused a token: give more than {n})",
                        f.requests - n as u64
                    );
                }
            }
        } else {
            println!("wrk is not installed (apt-get install wrk): the in-process load generator measures instead");
            in_process = true;
        }
    }
    if in_process {
        let (http, url, token) = (http2.clone(), license_url.clone(), token.clone());
        let retrieve = move |_: usize| {
            let (http, url, token) = (http.clone(), url.clone(), token.clone());
            async move {
                send_ok(http.get(&url).bearer_auth(&token)).await;
            }
        };
        let (rate, p50, p99) = load(codes, concurrency, retrieve).await;
        println!(
            "retrievals: {rate:.0}/s, p50 {p50:.2} ms, p99 {p99:.2} ms ({codes} requests, {concurrency} concurrent, in-process)"
        );
    }
    // The latency at a given rate rather than at saturation: an open loop
    // (benches/common.rs `paced`) offering LICENSEGATE_BENCH_RATE retrievals
    // per second (10,000 unless given; 0 skips it), one token.
    let offered: u32 = std::env::var("LICENSEGATE_BENCH_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    if offered > 0 {
        let path = license_url
            .strip_prefix(&format!("http://{addr}"))
            .expect("path");
        let before = WriterTotals::read(&services.metrics);
        let p = paced(
            addr,
            path,
            &format!("Bearer {token}"),
            offered,
            seconds,
            concurrency,
        );
        let writer = WriterTotals::read(&services.metrics);
        p.latency.report(
            &format!("retrievals at {offered}/s offered (open loop), answered"),
            &format!("{seconds} s, {concurrency} connections, latency from when each was due"),
        );
        println!(
            "  p99 of the wait for a free connection {:.2} ms, of the generator's own delay {:.2} ms",
            p.no_connection_p99, p.generator_p99
        );
        let worst: Vec<String> = p
            .worst_windows
            .iter()
            .map(|(at, n, max)| format!("{at} ms: {n} answered, slowest {max:.1} ms"))
            .collect();
        println!("  slowest 100 ms windows: {}", worst.join("; "));
        writer.report_since(&before, seconds as f64);
    }
    println!(
        "signatures that found no Ed25519 nonce made ahead: {} in all (src/keys/nonces.rs)",
        licensegate::keys::nonces::pool().missed()
    );
}
