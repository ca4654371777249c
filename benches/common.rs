//! Shared by the HTTP benchmarks: the load generator and the demo setup.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use licensegate::consent::{GrantedAccess, LicenseAccess, Terms, DETAILS_TYPE};
use licensegate::Services;
use serde_json::Value;

pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Runs `total` requests from `concurrency` tasks; returns (per second, p50 ms, p99 ms).
pub async fn load<F, Fut>(total: usize, concurrency: usize, request: F) -> (f64, f64, f64)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let request = Arc::new(request);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (request, next) = (request.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = Instant::now();
                request(i).await;
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.expect("load task"));
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    all.sort();
    (rate, percentile(&all, 0.5), percentile(&all, 0.99))
}

/// The demo bank's client (id, secret), the first demo holder, and the
/// terms and grant of an ID-card consent for account opening (5 reads).
pub struct DemoConsent {
    pub client_id: String,
    pub secret: String,
    pub holder: String,
    pub terms: Terms,
    pub granted: Vec<GrantedAccess>,
}

/// Reads the demo credentials written into `dir` and builds [`DemoConsent`].
pub async fn demo_consent(services: &Services, dir: &std::path::Path) -> DemoConsent {
    let creds: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("demo-credentials.json")).expect("credentials"),
    )
    .expect("credentials json");
    let bank = creds["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .find(|c| c["name"] == "浦江银行股份有限公司")
        .expect("the demo bank");
    let (client_id, secret) = (
        bank["client_id"].as_str().expect("id").to_owned(),
        bank["client_secret"].as_str().expect("secret").to_owned(),
    );
    let holder = services
        .library
        .holder_by_identifier(creds["holders"][0]["identifier"].as_str().expect("holder"))
        .await
        .expect("lookup")
        .expect("demo holder")
        .0;
    let identifier = services
        .library
        .holder_licenses(&holder)
        .await
        .expect("licenses")
        .into_iter()
        .find(|(l, _)| l.license_type == "JMSFZ")
        .expect("an ID card")
        .1;
    let terms = Terms {
        purpose: "account_opening".into(),
        duration_days: Some(30),
        max_retrievals: 5,
        elements: vec![LicenseAccess {
            kind: DETAILS_TYPE.into(),
            purpose: "account_opening".into(),
            license_type: "JMSFZ".into(),
            identifier: None,
            fields: vec!["name".into(), "id_number".into()],
            optional_fields: vec![],
            duration_days: Some(30),
            max_retrievals: Some(5),
        }],
    };
    let granted = vec![GrantedAccess {
        kind: DETAILS_TYPE.into(),
        purpose: "account_opening".into(),
        license_type: "JMSFZ".into(),
        licenses: vec![identifier],
        fields: vec!["name".into(), "id_number".into()],
    }];
    DemoConsent {
        client_id,
        secret,
        holder,
        terms,
        granted,
    }
}

/// Sends a benchmark request; anything but 200 stops the benchmark with the body.
pub async fn send_ok(req: reqwest::RequestBuilder) {
    let res = req.send().await.expect("request");
    assert_eq!(
        res.status(),
        200,
        "{}",
        res.text().await.unwrap_or_default()
    );
}

/// What wrk measured: requests per second, latency percentiles and the
/// slowest request in ms, and the requests that were not answered 200 (or
/// failed on the socket).
pub struct WrkFigures {
    pub rate: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub requests: u64,
    pub errors: u64,
}

/// Runs wrk (a separate process on the same machine, one thread) with
/// `connections` connections for `seconds` against `url`; `requests` is Lua
/// that sets the request up (headers, or a `request` function). `None` when
/// wrk is not installed (Debian package `wrk`).
pub fn wrk(
    url: &str,
    requests: &str,
    seconds: u64,
    connections: usize,
    dir: &std::path::Path,
) -> Option<WrkFigures> {
    let mut script = requests.to_owned();
    script.push_str(
        r#"
done = function(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %.1f %d %d", summary.requests / (summary.duration / 1e6), summary.requests, errors))
  for _, p in ipairs({50, 90, 95, 99, 99.9}) do
    io.write(string.format(" %.3f", latency:percentile(p) / 1000))
  end
  io.write(string.format(" %.3f\n", latency.max / 1000))
end
"#,
    );
    let path = dir.join("bench.lua");
    std::fs::write(&path, script).expect("wrk script");
    let out = match std::process::Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "-s",
        ])
        .arg(&path)
        .arg(url)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("wrk: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| {
            panic!(
                "wrk printed no result: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let f: Vec<&str> = line.split_whitespace().collect();
    let ms = |i: usize| f[i].parse::<f64>().expect("latency");
    Some(WrkFigures {
        rate: f[0].parse().expect("rate"),
        requests: f[1].parse().expect("requests"),
        errors: f[2].parse().expect("errors"),
        p50: ms(3),
        p90: ms(4),
        p95: ms(5),
        p99: ms(6),
        p999: ms(7),
        max: ms(8),
    })
}
