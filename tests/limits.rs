//! Limits over a real socket: per-client and per-address rate limits on the
//! token endpoint (429, RFC 6749 body, Retry-After, audited), per-address
//! login limits (429 page), oversized bodies (413), slow requests (408) and
//! oversized headers (431), each with a clear answer.

mod common;

use std::time::Duration;

use common::*;
use licensegate::oauth::Role;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn token_status(s: &TestServer, id: &str, secret: &str) -> reqwest::Response {
    s.http
        .post(s.url("/token"))
        .basic_auth(id, Some(secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "licenses:write"),
        ])
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn clients_and_addresses_are_rate_limited() {
    let s = TestServer::start_with(|c| {
        c.rate_limit_client = Some(5); // bursts of 10
        c.rate_limit_address = Some(0);
        c.rate_limit_login = Some(3);
    })
    .await;
    let lib = s.setup_library().await;
    let _ = lib;
    let (id, secret) = s.client(Role::Issuer, Some(ISSUER)).await;
    let mut codes = Vec::new();
    for _ in 0..12 {
        codes.push(token_status(&s, &id, &secret).await.status().as_u16());
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 10, "{codes:?}");
    let res = token_status(&s, &id, &secret).await;
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
    // Another client is not affected; the first is served again after the wait.
    let (other, other_secret) = s.client(Role::Issuer, Some(ISSUER)).await;
    assert_eq!(token_status(&s, &other, &other_secret).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(token_status(&s, &id, &secret).await.status(), 200);
    // The refusals are on record.
    let head = s.services.store.audit_head().await.unwrap();
    let refused = s
        .services
        .store
        .audit_range(0, head.seq)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| {
            r.outcome == "refused" && r.reason.as_deref().is_some_and(|x| x.contains("429"))
        })
        .count();
    assert!(refused >= 3, "{refused}");

    // Login attempts per address: the fourth in a minute is refused before any password check.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let res = s
            .http
            .post(s.url("/login"))
            .form(&[("identifier", "x"), ("password", "y"), ("csrf", "z")])
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
        if res.status() == 429 {
            assert!(res.headers().contains_key("retry-after"));
            assert!(res.text().await.unwrap().contains("登录尝试过于频繁"));
        }
    }
    assert_eq!(statuses, [403, 403, 403, 429]);
    s.stop().await;
}

#[tokio::test]
async fn an_address_is_limited_before_authentication() {
    let s = TestServer::start_with(|c| c.rate_limit_address = Some(2)).await; // bursts of 4
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(token_status(&s, "nobody", "wrong").await.status().as_u16());
    }
    assert_eq!(codes, [401, 401, 401, 401, 429, 429]);
    s.stop().await;
}

#[tokio::test]
async fn slow_and_oversized_requests_get_clear_answers() {
    let s = TestServer::start_with(|c| {
        c.request_timeout = Some(1);
        c.max_body_bytes = Some(4096);
    })
    .await;
    // A body larger than the limit: 413 with a problem body.
    let res = s
        .http
        .post(s.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("a=".to_owned() + &"x".repeat(10_000))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    // A body that never finishes: 408 with a problem body.
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(
        b"POST /token HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 100\r\n\r\ngrant_type=",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf))
        .await
        .expect("the server answered in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("application/problem+json") && text.contains("took too long"),
        "{text}"
    );
    // Headers larger than the server accepts: 431, nothing reaches a handler.
    let res = s
        .http
        .get(s.url("/healthz"))
        .header("x-padding", "p".repeat(1 << 20))
        .send()
        .await;
    match res {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => panic!("no answer to oversized headers: {e}"),
    }
    s.stop().await;
}
