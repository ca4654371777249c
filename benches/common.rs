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

/// What a load generator measured: requests per second, latency percentiles and the
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

impl WrkFigures {
    /// Fails the benchmark if a request was not answered 200, else prints
    /// `head: rate, p50, p99 (requests in detail)` and the other percentiles.
    pub fn report(&self, head: &str, detail: &str) {
        assert_eq!(self.errors, 0, "requests that were not answered 200");
        println!(
            "{head}: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms ({} requests in {detail})",
            self.rate, self.p50, self.p99, self.requests
        );
        println!(
            "  latency ms: p90 {:.2}, p95 {:.2}, p99.9 {:.2}, max {:.2}",
            self.p90, self.p95, self.p999, self.max
        );
    }
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

/// An open-loop load at a fixed rate, the way wrk2 measures: request `i` is
/// due at `start + i / rate` whatever happened before it, and its latency
/// counts from when it was due, not from when a connection was free to send
/// it. A closed loop (wrk, [`load`]) sends the next request only when an
/// answer comes back, so it slows down with the server and never measures
/// the requests a stall held back (coordinated omission): it measures the
/// latency at saturation. This measures the latency at `rate`.
///
/// `connections` HTTP/1.1 keep-alive connections to `addr` send `GET path`
/// with `Authorization: authorization` for `seconds` (see [`exchange`]), from a single-threaded
/// runtime on a thread of its own (a scheduler apart from the server's, on
/// the same 2 cores). A pacing thread releases the requests as they fall due
/// (it wakes every 100 µs); a request waits for a free connection when all
/// are busy. How late requests were sent is reported apart, split into the
/// wait for a free connection (the server was slow) and the generator's own
/// delay (pacing and scheduling); both are in the latency.
pub fn paced(
    addr: std::net::SocketAddr,
    path: &str,
    authorization: &str,
    rate: u32,
    seconds: u64,
    connections: usize,
) -> Paced {
    let (path, authorization) = (path.to_owned(), authorization.to_owned());
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("load generator runtime")
            .block_on(paced_run(
                addr,
                path,
                authorization,
                rate,
                seconds,
                connections,
            ))
    })
    .join()
    .expect("load generator")
}

/// What [`paced`] measured: the latency from when each request was due
/// (`latency.rate` is the rate answered), the p99 of the wait for a free
/// connection and of the generator's own delay (ms), and the 100 ms windows
/// with the slowest answers (start in ms from the first request, answers
/// in the window, their slowest latency in ms).
pub struct Paced {
    pub latency: WrkFigures,
    pub no_connection_p99: f64,
    pub generator_p99: f64,
    pub worst_windows: Vec<(u64, usize, f64)>,
}

/// One answered (or failed) request of [`paced`].
#[derive(Clone, Copy)]
struct Sent {
    due: Instant,
    /// When its connection became free (after the due time if all were busy).
    free: Instant,
    sent: Instant,
    done: Instant,
    ok: bool,
}

async fn paced_run(
    addr: std::net::SocketAddr,
    path: String,
    authorization: String,
    rate: u32,
    seconds: u64,
    connections: usize,
) -> Paced {
    use std::sync::atomic::AtomicU64;
    use tokio::io::AsyncWriteExt;

    let total = u64::from(rate) * seconds;
    let interval = 1e9 / f64::from(rate);
    // Every request is the same bytes, written once (see `exchange`).
    let request: Arc<[u8]> =
        format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: {authorization}\r\n\r\n")
            .into_bytes()
            .into();
    let mut streams = Vec::with_capacity(connections);
    for _ in 0..connections {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        streams.push(stream);
    }
    // Each connection's record of what it sent, allocated and written once
    // before the first request is due: grown as it went, all 64 doubled at
    // about the same moment (each reached 1,024 requests at 8.2 s at 8,000/s),
    // and the generator spent some 20 ms zeroing fresh huge pages then,
    // which counted as the server's latency (the slowest 100 ms window of
    // most runs). Room for twice a connection's share; one that takes more
    // grows alone.
    let room = (total as usize).div_ceil(connections) * 2 + 16;
    let records: Vec<Vec<Sent>> = (0..connections)
        .map(|_| {
            let now = Instant::now();
            let blank = Sent {
                due: now,
                free: now,
                sent: now,
                done: now,
                ok: false,
            };
            let mut v = vec![blank; room];
            v.clear();
            v
        })
        .collect();
    let start = Instant::now() + Duration::from_millis(20);
    let due = move |i: u64| start + Duration::from_nanos((i as f64 * interval) as u64);
    // Requests fall due in order; a permit is one that has.
    let released = Arc::new(tokio::sync::Semaphore::new(0));
    let pacer = {
        let released = released.clone();
        std::thread::spawn(move || {
            let mut i = 0;
            while i < total {
                let now = Instant::now();
                let mut n = 0;
                while i < total && due(i) <= now {
                    i += 1;
                    n += 1;
                }
                if n > 0 {
                    released.add_permits(n);
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        })
    };
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(connections);
    for (mut stream, mut seen) in streams.into_iter().zip(records) {
        let (next, released, request) = (next.clone(), released.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let mut buf = Vec::with_capacity(16 * 1024);
            loop {
                let free = Instant::now();
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                released.acquire().await.expect("pacer").forget();
                let sent = Instant::now();
                let answered = match stream.write_all(&request).await {
                    Ok(()) => exchange(&mut stream, &mut buf).await,
                    Err(_) => None,
                };
                seen.push(Sent {
                    due: due(i),
                    free,
                    sent,
                    done: Instant::now(),
                    ok: answered == Some(200),
                });
                // A connection whose answer could not be read is not reused.
                if answered.is_none() {
                    break;
                }
            }
            seen
        }));
    }
    let mut seen = Vec::with_capacity(total as usize);
    for t in tasks {
        seen.extend(t.await.expect("load task"));
    }
    pacer.join().expect("pacer");
    let requests = seen.len() as u64;
    let errors = seen.iter().filter(|s| !s.ok).count() as u64;
    let end = seen.iter().map(|s| s.done).max().unwrap_or(start);
    let sorted = |f: &dyn Fn(&Sent) -> Duration| {
        let mut v: Vec<Duration> = seen.iter().map(f).collect();
        v.sort();
        v
    };
    let latency = sorted(&|s| s.done - s.due);
    let no_connection = sorted(&|s| s.free.saturating_duration_since(s.due));
    let generator = sorted(&|s| s.sent.saturating_duration_since(s.due.max(s.free)));
    // The slowest answer of each 100 ms window (by when it was answered).
    let mut windows: std::collections::BTreeMap<u64, (usize, Duration)> = Default::default();
    for s in &seen {
        let w = windows
            .entry(s.done.saturating_duration_since(start).as_millis() as u64 / 100 * 100)
            .or_default();
        w.0 += 1;
        w.1 = w.1.max(s.done - s.due);
    }
    let mut worst: Vec<(u64, usize, f64)> = windows
        .into_iter()
        .map(|(at, (n, max))| (at, n, max.as_secs_f64() * 1000.0))
        .collect();
    worst.sort_by(|a, b| b.2.total_cmp(&a.2));
    worst.truncate(5);
    Paced {
        latency: WrkFigures {
            rate: requests as f64 / end.duration_since(start).as_secs_f64(),
            p50: percentile(&latency, 0.5),
            p90: percentile(&latency, 0.9),
            p95: percentile(&latency, 0.95),
            p99: percentile(&latency, 0.99),
            p999: percentile(&latency, 0.999),
            max: percentile(&latency, 1.0),
            requests,
            errors,
        },
        no_connection_p99: percentile(&no_connection, 0.99),
        generator_p99: percentile(&generator, 0.99),
        worst_windows: worst,
    }
}

/// Reads one HTTP/1.1 answer from `stream` into `buf`: its status, or none
/// when the connection closed or the answer is not one this reads (one
/// without `content-length`; the server sends it with every retrieval).
/// The load generator's client, as wrk's: the request is the same bytes
/// each time and only the status line and the length are parsed, so that
/// the generator takes less of the 2 cores from the server. With hyper's
/// client (a connection task and a request channel per connection, the URI
/// parsed and the body collected per request) the generator's threads took
/// 1.72 CPU-seconds in 6 s at 9,000/s offered, 32 µs a request; with this,
/// 1.44 (27 µs). Most of the rest is the kernel's loopback TCP, which runs
/// the server's receive path on the sender's thread. wrk, for comparison:
/// 14 µs a request in the closed loop. (Read from /proc/PID/task/*/stat.)
async fn exchange(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    buf.clear();
    // Read until the head is in: the body's start, the status, its length.
    let (start, status, length) = loop {
        if stream.read_buf(buf).await.ok()? == 0 {
            return None;
        }
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..at]).ok()?;
            let status: u16 = head.get(9..12)?.parse().ok()?;
            let length: usize = head.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })?;
            break (at + 4, status, length);
        }
    };
    // Then until the body is.
    while buf.len() < start + length {
        if stream.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
    Some(status)
}

/// The audit writer's totals, read from the server's metrics
/// (`licensegate_audit_commit_seconds`, `licensegate_audit_batch_records`).
#[derive(Debug, Default, Clone)]
pub struct WriterTotals {
    commits: f64,
    seconds: f64,
    callers: f64,
    /// The commit-time histogram: (upper bound in seconds, commits at most that long).
    buckets: Vec<(f64, f64)>,
}

impl WriterTotals {
    pub fn read(metrics: &licensegate::telemetry::Metrics) -> Self {
        let text = metrics.render();
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        WriterTotals {
            commits: value("licensegate_audit_commit_seconds_count"),
            seconds: value("licensegate_audit_commit_seconds_sum"),
            callers: value("licensegate_audit_batch_records_sum"),
            buckets: text
                .lines()
                .filter_map(|l| {
                    let rest = l.strip_prefix("licensegate_audit_commit_seconds_bucket{le=\"")?;
                    let (le, count) = rest.split_once("\"} ")?;
                    Some((le.parse().ok()?, count.parse().ok()?))
                })
                .collect(),
        }
    }

    /// Prints what the writer did since `before`, over `seconds`.
    pub fn report_since(&self, before: &Self, seconds: f64) {
        let commits = self.commits - before.commits;
        if commits <= 0.0 {
            return;
        }
        let busy = self.seconds - before.seconds;
        println!(
            "  audit writer: {:.0} commits/s, {:.1} calls per commit, {:.2} ms per commit, busy {:.0} ms per s",
            commits / seconds,
            (self.callers - before.callers) / commits,
            busy * 1e3 / commits,
            busy * 1e3 / seconds
        );
        // How the commits' times spread: the writer's slow commits hold back
        // every read waiting for them, so they show apart from the CPU's queue.
        let spread: Vec<String> = self
            .buckets
            .iter()
            .zip(&before.buckets)
            .filter(|((le, _), _)| [8.0, 16.0, 32.0, 64.0].contains(&(le * 1e4).round()))
            .map(|((le, now), (_, then))| {
                format!(
                    "{:.1}% over {} ms",
                    100.0 * (1.0 - (now - then) / commits),
                    le * 1e3
                )
            })
            .collect();
        let slowest = self
            .buckets
            .iter()
            .zip(&before.buckets)
            .find(|((le, now), (_, then))| le.is_finite() && now - then >= commits)
            .map_or("over 0.8 s".to_owned(), |((le, _), _)| {
                format!("at most {} ms", le * 1e3)
            });
        println!(
            "  commit times: {}; the slowest {slowest}",
            spread.join(", ")
        );
    }
}
