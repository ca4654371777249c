//! The audit log: what is recorded, tamper detection by `licensegate audit
//! verify`, RFC 9162 proofs checked independently, export, concurrency.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use licensegate::audit::{ActorKind, AuditEvent, Outcome};
use serde_json::{json, Value};

// ---- an independent RFC 9162 implementation, written from the RFC --------

/// RFC 9162 §2.1.4.2.
fn rfc_verify_consistency(
    first: u64,
    second: u64,
    r1: &[u8; 32],
    r2: &[u8; 32],
    proof: &[[u8; 32]],
) -> bool {
    let mut path = proof.to_vec();
    if first.is_power_of_two() {
        path.insert(0, *r1);
    }
    let (mut fnn, mut snn) = (first - 1, second - 1);
    while fnn % 2 == 1 {
        fnn >>= 1;
        snn >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snn == 0 {
            return false;
        }
        if fnn % 2 == 1 || fnn == snn {
            fr = sha(&[&[1], c, &fr]);
            sr = sha(&[&[1], c, &sr]);
            while fnn % 2 == 0 && fnn != 0 {
                fnn >>= 1;
                snn >>= 1;
            }
        } else {
            sr = sha(&[&[1], &sr, c]);
        }
        fnn >>= 1;
        snn >>= 1;
    }
    &fr == r1 && &sr == r2 && snn == 0
}

/// MTH over leaf data, recomputed from scratch.
fn rfc_root(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves.len() {
        0 => sha(&[]),
        1 => sha(&[&[0], &leaves[0]]),
        n => {
            let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
            sha(&[&[1], &rfc_root(&leaves[..k]), &rfc_root(&leaves[k..])])
        }
    }
}

fn checkpoint_signature_valid(cp: &Value, jwks: &Value) {
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == cp["kid"])
        .expect("checkpoint key in JWKS");
    let x: [u8; 32] = URL_SAFE_NO_PAD
        .decode(jwk["x"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let text = format!(
        "licensegate audit checkpoint v1\norigin: {}\ntree_size: {}\nroot_hash: {}\ntime: {}\n",
        cp["origin"].as_str().unwrap(),
        cp["tree_size"],
        cp["root_hash"].as_str().unwrap(),
        cp["time"].as_str().unwrap()
    );
    let sig = Signature::from_slice(
        &URL_SAFE_NO_PAD
            .decode(cp["signature"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    VerifyingKey::from_bytes(&x)
        .unwrap()
        .verify(text.as_bytes(), &sig)
        .expect("checkpoint signature verifies");
}

// ---- helpers ------------------------------------------------------------

async fn append(s: &TestServer, n: usize) {
    for i in 0..n {
        s.services
            .audit
            .record(
                AuditEvent::new(ActorKind::System, "test", "test.event", Outcome::Success)
                    .reason(format!("event {i}")),
            )
            .await
            .unwrap();
    }
}

async fn sign_checkpoint(s: &TestServer, regulator: &str) -> Value {
    let res = s
        .http
        .post(s.url("/audit/v1/checkpoints/latest"))
        .bearer_auth(regulator)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// Runs `licensegate audit verify` against the server's database.
fn cli_verify(s: &TestServer) -> (bool, Value) {
    audit_verify(&s.cli_args())
}

/// Lets the test change history as a database administrator could.
async fn disable_append_only(s: &TestServer) {
    let stmts: &[&str] = if backend() == "postgres" {
        &[
            "ALTER TABLE audit_records DISABLE TRIGGER USER",
            "ALTER TABLE audit_checkpoints DISABLE TRIGGER USER",
        ]
    } else {
        &[
            "DROP TRIGGER audit_records_no_update",
            "DROP TRIGGER audit_records_no_delete",
            "DROP TRIGGER audit_checkpoints_no_update",
            "DROP TRIGGER audit_checkpoints_no_delete",
        ]
    };
    for sql in stmts {
        sqlx::query(sql)
            .execute(s.services.store.writer())
            .await
            .unwrap();
    }
}

async fn exec(s: &TestServer, sql: &str) {
    sqlx::query(sql)
        .execute(s.services.store.writer())
        .await
        .unwrap();
}

// ---- tests --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_is_recorded_with_its_context() {
    let s = TestServer::start().await;
    let lib = s.setup_library().await;
    let regulator = s.regulator_token().await;
    let res = s
        .post_json(&lib.issuer, "/issuer/v1/licenses", &publication(1))
        .await;
    let v1: Value = res.json().await.unwrap();
    let id = v1["identifier"].as_str().unwrap().to_owned();
    let mut update = publication(1);
    update["fields"]["name"] = json!("改名");
    let body = json!({"fields": update["fields"], "valid_from": "2024-01-01", "valid_until": "2034-01-01", "reason": "更正"});
    assert_eq!(
        s.put_json(&lib.issuer, &format!("/issuer/v1/licenses/{id}"), &body)
            .await
            .status(),
        200
    );
    for action in ["suspend", "reinstate", "cancel"] {
        let res = s
            .post_json(
                &lib.issuer,
                &format!("/issuer/v1/licenses/{id}/{action}"),
                &json!({"reason": "测试"}),
            )
            .await;
        assert_eq!(res.status(), 200);
    }
    // Refusals: no token, wrong scope, invalid content, bad client secret, refused import line.
    let res = s
        .http
        .post(s.url("/issuer/v1/licenses"))
        .header("x-request-id", "req-denied-1")
        .json(&publication(2))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["x-request-id"], "req-denied-1");
    assert_eq!(
        s.post_json(&lib.operator, "/issuer/v1/licenses", &publication(2))
            .await
            .status(),
        403
    );
    let mut bad = publication(2);
    bad["fields"]["sex"] = json!("?");
    assert_eq!(
        s.post_json(&lib.issuer, "/issuer/v1/licenses", &bad)
            .await
            .status(),
        422
    );
    let res = s
        .http
        .post(s.url("/token"))
        .basic_auth("op_nobody", Some("x"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = s
        .http
        .post(s.url("/issuer/v1/imports"))
        .bearer_auth(&lib.issuer)
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let search = |q: &str| {
        let s = &s;
        let regulator = regulator.clone();
        let q = q.to_owned();
        async move {
            let res = s.get(&regulator, &format!("/audit/v1/records?{q}")).await;
            assert_eq!(res.status(), 200);
            res.json::<Value>().await.unwrap()["items"]
                .as_array()
                .unwrap()
                .clone()
        }
    };
    let all = search("limit=1000").await;
    let actions: Vec<&str> = all.iter().map(|r| r["action"].as_str().unwrap()).collect();
    for expected in [
        "client.registered",
        "issuer.registered",
        "license_type.created",
        "token.issued",
        "license.published",
        "license.updated",
        "license.suspended",
        "license.reinstated",
        "license.cancelled",
        "access.denied",
        "request.refused",
        "license.import_refused",
    ] {
        assert!(
            actions.contains(&expected),
            "{expected} recorded: {actions:?}"
        );
    }
    // Gapless sequence from 1.
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r["seq"], i as i64 + 1);
    }
    let published = search("action=license.published").await;
    assert_eq!(published.len(), 1);
    let p = &published[0];
    assert_eq!(p["license"], id);
    assert_eq!(p["license_type"], TYPE);
    assert_eq!(p["actor_kind"], "issuer");
    assert!(p["holder"].as_str().unwrap().starts_with("h_"));
    assert_eq!(p["client_addr"], "127.0.0.1");
    assert!(p["request_id"].as_str().is_some());
    let denied = search("action=access.denied").await;
    assert!(denied
        .iter()
        .any(|r| r["request_id"] == "req-denied-1" && r["actor_kind"] == "anonymous"));
    assert!(denied.iter().any(|r| r["actor_kind"] == "operator"
        && r["reason"].as_str().unwrap().contains("licenses:write")));
    assert!(denied.iter().any(|r| r["actor_id"] == "op_nobody"
        && r["reason"].as_str().unwrap().contains("invalid_client")));
    let refused = search("outcome=refused&action=request.refused").await;
    assert!(refused
        .iter()
        .any(|r| r["reason"].as_str().unwrap().contains("fields.sex")));
    // Filters: by license, holder, type, time range, paging.
    assert_eq!(search(&format!("license={id}")).await.len(), 1);
    let holder = p["holder"].as_str().unwrap();
    assert_eq!(search(&format!("holder={holder}")).await.len(), 5);
    assert_eq!(
        search(&format!("license_type={TYPE}&outcome=success"))
            .await
            .len(),
        6,
        "type created + 5 license events"
    );
    assert!(search("from=2099-01-01T00:00:00Z").await.is_empty());
    let page: Value = s
        .get(&regulator, "/audit/v1/records?limit=3")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["next_cursor"], 3);
    let next: Value = s
        .get(&regulator, "/audit/v1/records?limit=3&after=3")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(next["items"][0]["seq"], 4);
    assert_eq!(
        s.get(&regulator, "/audit/v1/records?from=yesterday")
            .await
            .status(),
        400
    );
    // Only regulators read the log.
    assert_eq!(
        s.get(&lib.operator, "/audit/v1/records").await.status(),
        403
    );

    // Verification over the API passes and is remembered.
    sign_checkpoint(&s, &regulator).await;
    let res = s
        .http
        .post(s.url("/audit/v1/verifications"))
        .bearer_auth(&regulator)
        .send()
        .await
        .unwrap();
    let report: Value = res.json().await.unwrap();
    assert_eq!(report["ok"], true, "{report}");
    let latest: Value = s
        .get(&regulator, "/audit/v1/verifications/latest")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(latest["ok"], true);
    assert_eq!(latest["records"], report["records"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_changes_to_the_log() {
    let s = TestServer::start().await;
    append(&s, 3).await;
    s.services.checkpoints.create().await.unwrap();
    for sql in [
        "UPDATE audit_records SET actor_id = 'x' WHERE seq = 2",
        "DELETE FROM audit_records WHERE seq = 2",
        "UPDATE audit_checkpoints SET root_hash = 'x'",
        "DELETE FROM audit_checkpoints",
    ] {
        let e = sqlx::query(sql).execute(s.services.store.writer()).await;
        assert!(e.is_err(), "{sql} must be refused");
        assert!(e.unwrap_err().to_string().contains("append-only"));
    }
    if backend() == "postgres" {
        assert!(sqlx::query("TRUNCATE audit_records")
            .execute(s.services.store.writer())
            .await
            .is_err());
    }
    let (ok, report) = cli_verify(&s);
    assert!(ok, "{report}");
    assert_eq!(report["records"], 3);
    s.stop().await;
}

/// Tampers with the log as `scenario` says, after two signed checkpoints;
/// returns what the verifier said, the two checkpoints' sizes, and the sizes
/// of every checkpoint there was before the change (the server also signs
/// its own, at start and every `checkpoint_interval`: on a slow machine one
/// can fall between the appends).
async fn tampered(scenario: &str) -> (bool, Value, [i64; 2], Vec<i64>) {
    let s = TestServer::start().await;
    let regulator = s.regulator_token().await;
    append(&s, 20).await;
    let first = sign_checkpoint(&s, &regulator).await;
    append(&s, 5).await;
    let cp = sign_checkpoint(&s, &regulator).await;
    let sizes = [
        first["tree_size"].as_i64().unwrap(),
        cp["tree_size"].as_i64().unwrap(),
    ];
    assert!(cli_verify(&s).0, "verifies before tampering");
    let all: Vec<i64> = s
        .services
        .store
        .checkpoints()
        .await
        .unwrap()
        .iter()
        .map(|c| c.tree_size)
        .collect();
    assert!(
        all.contains(&sizes[0]) && all.contains(&sizes[1]),
        "{all:?}"
    );
    disable_append_only(&s).await;
    match scenario {
        "change" => {
            exec(
                &s,
                "UPDATE audit_records SET reason = 'nothing happened' WHERE seq = 7",
            )
            .await
        }
        "delete" => exec(&s, "DELETE FROM audit_records WHERE seq = 7").await,
        "swap" => {
            let rows = s.services.store.audit_range(6, 8).await.unwrap();
            for (to, from) in [(7, &rows[1]), (8, &rows[0])] {
                sqlx::query("UPDATE audit_records SET reason = $1, prev_hash = $2, hash = $3 WHERE seq = $4")
                    .bind(&from.reason)
                    .bind(&from.prev_hash)
                    .bind(&from.hash)
                    .bind(to)
                    .execute(s.services.store.writer())
                    .await
                    .unwrap();
            }
        }
        "rewrite-chain" => {
            // Change record 7 and recompute every hash after it: the chain is
            // consistent again, but the signed checkpoints are not.
            let mut rows = s.services.store.audit_range(0, 1000).await.unwrap();
            rows[6].reason = Some("rewritten".into());
            let mut prev = [0u8; 32];
            for r in rows.iter_mut() {
                r.prev_hash = licensegate::audit::hex(&prev);
                let h = r.compute_hash(&prev);
                r.hash = licensegate::audit::hex(&h);
                prev = h;
            }
            for r in &rows[6..] {
                sqlx::query("UPDATE audit_records SET reason = $1, prev_hash = $2, hash = $3 WHERE seq = $4")
                    .bind(&r.reason)
                    .bind(&r.prev_hash)
                    .bind(&r.hash)
                    .bind(r.seq)
                    .execute(s.services.store.writer())
                    .await
                    .unwrap();
            }
            sqlx::query("UPDATE audit_head SET hash = $1")
                .bind(licensegate::audit::hex(&prev))
                .execute(s.services.store.writer())
                .await
                .unwrap();
        }
        "forge-checkpoint" => {
            let size = cp["tree_size"].as_i64().unwrap();
            sqlx::query("UPDATE audit_checkpoints SET root_hash = $1 WHERE tree_size = $2")
                .bind("00".repeat(32))
                .bind(size)
                .execute(s.services.store.writer())
                .await
                .unwrap();
        }
        other => panic!("{other}"),
    }
    let (ok, report) = cli_verify(&s);
    s.stop().await;
    (ok, report, sizes, all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_detects_a_changed_record() {
    let (ok, r, _, _) = tampered("change").await;
    assert!(!ok);
    assert_eq!(r["failed_at"], 7, "{r}");
    assert!(
        r["failure"]
            .as_str()
            .unwrap()
            .contains("record 7 is changed"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_detects_a_deleted_record() {
    let (ok, r, _, _) = tampered("delete").await;
    assert!(!ok);
    assert_eq!(r["failed_at"], 7, "{r}");
    assert!(
        r["failure"]
            .as_str()
            .unwrap()
            .contains("record 7 is missing"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_detects_swapped_records() {
    let (ok, r, _, _) = tampered("swap").await;
    assert!(!ok);
    assert_eq!(r["failed_at"], 7, "{r}");
    assert!(r["failure"].as_str().unwrap().contains("record 7"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_detects_a_rewritten_chain_through_the_checkpoints() {
    let (ok, r, [signed, _], all) = tampered("rewrite-chain").await;
    assert!(!ok);
    // The first checkpoint that covers record 7: the one signed after the
    // first appends, or one the server signed on its own before it.
    let first = all.iter().copied().find(|&n| n >= 7).unwrap();
    assert!(first <= signed, "{all:?}");
    assert_eq!(
        r["failed_at"], first,
        "the first checkpoint after the change fails: {r}"
    );
    assert!(
        r["failure"]
            .as_str()
            .unwrap()
            .contains(&format!("checkpoint {first}: its root does not match")),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_detects_a_forged_checkpoint() {
    let (ok, r, [_, second], _) = tampered("forge-checkpoint").await;
    assert!(!ok);
    assert_eq!(r["failed_at"], second, "{r}");
    assert!(
        r["failure"].as_str().unwrap().contains("bad signature"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_verify_independently() {
    let s = TestServer::start().await;
    let regulator = s.regulator_token().await;
    append(&s, 13).await;
    let first = sign_checkpoint(&s, &regulator).await;
    append(&s, 24).await;
    let second = sign_checkpoint(&s, &regulator).await;
    let (m, n) = (
        first["tree_size"].as_u64().unwrap(),
        second["tree_size"].as_u64().unwrap(),
    );
    assert!(m < n);
    let jwks: Value = s
        .http
        .get(s.url("/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    checkpoint_signature_valid(&first, &jwks);
    checkpoint_signature_valid(&second, &jwks);
    let latest: Value = s
        .http
        .get(s.url("/audit/v1/checkpoints/latest"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(latest, second);

    // The root recomputed from the records themselves.
    let page: Value = s
        .get(&regulator, "/audit/v1/records?limit=1000")
        .await
        .json()
        .await
        .unwrap();
    let hashes: Vec<[u8; 32]> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| unhex(r["hash"].as_str().unwrap()))
        .collect();
    assert_eq!(
        licensegate::audit::hex(&rfc_root(&hashes[..m as usize])),
        first["root_hash"].as_str().unwrap()
    );
    assert_eq!(
        licensegate::audit::hex(&rfc_root(&hashes[..n as usize])),
        second["root_hash"].as_str().unwrap()
    );

    for seq in [1, 2, 7, 13, 14, n as i64] {
        for cp in [&first, &second] {
            let size = cp["tree_size"].as_i64().unwrap();
            let res = s
                .get(
                    &regulator,
                    &format!("/audit/v1/records/{seq}/inclusion?tree_size={size}"),
                )
                .await;
            if seq > size {
                assert_eq!(res.status(), 404);
                continue;
            }
            let proof: Value = res.json().await.unwrap();
            let path: Vec<[u8; 32]> = proof["audit_path"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| unhex(h.as_str().unwrap()))
                .collect();
            let leaf = unhex(proof["record_hash"].as_str().unwrap());
            assert_eq!(leaf, hashes[seq as usize - 1]);
            let root = unhex(cp["root_hash"].as_str().unwrap());
            assert!(
                rfc_verify_inclusion(&leaf, seq as u64 - 1, size as u64, &path, &root),
                "inclusion of {seq} in {size}"
            );
            assert!(
                !rfc_verify_inclusion(&leaf, seq as u64 % size as u64, size as u64, &path, &root)
                    || size == 1
                    || seq as u64 - 1 == seq as u64 % size as u64
            );
        }
    }
    let proof: Value = s
        .http
        .get(s.url(&format!(
            "/audit/v1/proofs/consistency?first={m}&second={n}"
        )))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let nodes: Vec<[u8; 32]> = proof["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| unhex(h.as_str().unwrap()))
        .collect();
    let (r1, r2) = (
        unhex(first["root_hash"].as_str().unwrap()),
        unhex(second["root_hash"].as_str().unwrap()),
    );
    assert!(rfc_verify_consistency(m, n, &r1, &r2, &nodes));
    assert!(!rfc_verify_consistency(m, n, &r2, &r2, &nodes));
    assert_eq!(
        s.http
            .get(s.url("/audit/v1/proofs/consistency?first=5&second=37"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_verifies_offline_and_tampering_is_named() {
    let s = TestServer::start().await;
    let regulator = s.regulator_token().await;
    append(&s, 30).await;
    let res = s.get(&regulator, "/audit/v1/export").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/x-ndjson");
    let text = res.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let header: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(header["type"], "header");
    assert_eq!(header["complete"], true);
    let dir = tempfile::tempdir().unwrap();
    let verify = |content: String| {
        let path = dir.path().join(format!("export-{}.jsonl", content.len()));
        std::fs::write(&path, content).unwrap();
        // No database flags at all: the file is verified on its own.
        let out = licensegate()
            .args(["audit", "verify", "--file", path.to_str().unwrap()])
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        (out.status.success(), report)
    };
    let (ok, report) = verify(text.clone());
    assert!(ok, "{report}");
    assert!(report["records"].as_i64().unwrap() >= 31);
    assert!(report["checkpoints"].as_i64().unwrap() >= 1);

    let first_record = lines
        .iter()
        .position(|l| l.contains("\"type\":\"record\""))
        .unwrap();
    let idx = first_record + 9; // record 10
                                // Changed.
    let mut changed = lines.clone();
    let edited = changed[idx].replace("\"test.event\"", "\"other.event\"");
    changed[idx] = &edited;
    let (ok, r) = verify(changed.join("\n"));
    assert!(
        !ok && r["failure"]
            .as_str()
            .unwrap()
            .contains("record 10 is changed"),
        "{r}"
    );
    // Missing.
    let mut missing = lines.clone();
    missing.remove(idx);
    let (ok, r) = verify(missing.join("\n"));
    assert!(
        !ok && r["failure"]
            .as_str()
            .unwrap()
            .contains("record 10 is missing"),
        "{r}"
    );
    // Reordered.
    let mut reordered = lines.clone();
    reordered.swap(idx, idx + 1);
    let (ok, r) = verify(reordered.join("\n"));
    assert!(!ok && r["failed_at"] == 10, "{r}");
    // A checkpoint re-signed by someone else's key.
    let cp_idx = lines
        .iter()
        .position(|l| l.contains("\"type\":\"checkpoint\""))
        .unwrap();
    let mut cp: Value = serde_json::from_str(lines[cp_idx]).unwrap();
    cp["signature"] = json!(URL_SAFE_NO_PAD.encode([7u8; 64]));
    let forged_line = cp.to_string();
    let mut forged = lines.clone();
    forged[cp_idx] = &forged_line;
    let (ok, r) = verify(forged.join("\n"));
    assert!(
        !ok && r["failure"].as_str().unwrap().contains("bad signature"),
        "{r}"
    );

    // CSV: a header row and one row per record.
    let csv = s
        .get(&regulator, "/audit/v1/export?format=csv")
        .await
        .text()
        .await
        .unwrap();
    let mut rows = csv.lines();
    assert_eq!(
        rows.next().unwrap(),
        licensegate::audit::export::CSV_COLUMNS.join(",")
    );
    assert!(rows.count() >= 31);
    // A filtered export is marked incomplete, and holds only matching records.
    let filtered = s
        .get(&regulator, "/audit/v1/export?action=test.event")
        .await
        .text()
        .await
        .unwrap();
    let header: Value = serde_json::from_str(filtered.lines().next().unwrap()).unwrap();
    assert_eq!(header["complete"], false);
    assert_eq!(
        filtered
            .lines()
            .filter(|l| l.contains("\"type\":\"record\""))
            .count(),
        30
    );
    // ... and each record carries an inclusion proof: it verifies offline,
    // and a changed record in it is named.
    assert_eq!(
        filtered
            .lines()
            .filter(|l| l.contains("\"type\":\"inclusion\""))
            .count(),
        30
    );
    let (ok, r) = verify(filtered.clone());
    assert!(ok, "{r}");
    assert_eq!(r["records"], 30);
    let mut lines: Vec<String> = filtered.lines().map(str::to_owned).collect();
    let i = lines
        .iter()
        .rposition(|l| l.contains("\"type\":\"record\""))
        .unwrap();
    let mut rec: Value = serde_json::from_str(&lines[i]).unwrap();
    rec["purpose"] = json!("something else");
    lines[i] = rec.to_string();
    let (ok, r) = verify(lines.join("\n"));
    assert!(!ok);
    assert!(r["failure"].as_str().unwrap().contains("is changed"), "{r}");
    // A record moved into another place fails its proof.
    let mut lines: Vec<String> = filtered.lines().map(str::to_owned).collect();
    let j = lines
        .iter()
        .position(|l| l.contains("\"type\":\"inclusion\""))
        .unwrap();
    let mut proof: Value = serde_json::from_str(&lines[j]).unwrap();
    proof["audit_path"][0] = json!("00".repeat(32));
    lines[j] = proof.to_string();
    let (ok, r) = verify(lines.join("\n"));
    assert!(!ok);
    assert!(
        r["failure"].as_str().unwrap().contains("not in the log"),
        "{r}"
    );
    assert_eq!(
        s.get(&regulator, "/audit/v1/export?format=xml")
            .await
            .status(),
        400
    );

    // The command-line export verifies too.
    let out_path = dir.path().join("cli.jsonl");
    let out = licensegate()
        .args(s.cli_args())
        .args(["audit", "export", "--out", out_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, r) = verify(std::fs::read_to_string(&out_path).unwrap());
    assert!(ok, "{r}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_stay_gapless_and_chained() {
    let s = TestServer::start().await;
    let mut tasks = Vec::new();
    for w in 0..64 {
        let audit = s.services.audit.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25 {
                let e = AuditEvent::new(
                    ActorKind::System,
                    format!("writer-{w}"),
                    "test.concurrent",
                    Outcome::Success,
                )
                .reason(format!("{i}"));
                seqs.push(audit.record(e).await.unwrap());
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    assert_eq!(
        all,
        (1..=1600).collect::<Vec<i64>>(),
        "every acknowledged append has its own sequence number"
    );
    s.services.checkpoints.create().await.unwrap();
    let (ok, report) = cli_verify(&s);
    assert!(ok, "{report}");
    assert_eq!(report["records"], 1600);
    s.stop().await;
}

/// Indexes every record now in the log; returns how far the index reaches.
async fn index_all(s: &TestServer) -> i64 {
    while s.services.store.index_audit_subjects(1000).await.unwrap() > 0 {}
    sqlx::query_scalar("SELECT indexed_upto FROM audit_index_state WHERE id = 1")
        .fetch_one(s.services.store.reader())
        .await
        .unwrap()
}

/// The sequence numbers of a search's first page.
async fn record_seqs(s: &TestServer, token: &str, query: &str) -> Vec<i64> {
    let page: Value = s
        .get(token, &format!("/audit/v1/records?{query}"))
        .await
        .json()
        .await
        .unwrap();
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_search_spans_the_index_and_its_tail() {
    let s = TestServer::start().await;
    let regulator = s.regulator_token().await;
    // Record i: holder h_{i%3}, license L{i%4}, actor ent_{i%2}, type T{i%5},
    // action license.verified when i%6 == 0 (else license.retrieved).
    let rec = |i: usize| {
        let action = if i % 6 == 0 {
            "license.verified"
        } else {
            "license.retrieved"
        };
        AuditEvent::new(
            ActorKind::Entity,
            format!("ent_{}", i % 2),
            action,
            Outcome::Success,
        )
        .holder(format!("h_{}", i % 3))
        .license(format!("L{}", i % 4))
        .license_type(format!("T{}", i % 5))
    };
    let mut last = 0;
    for i in 0..10 {
        last = s.services.audit.record(rec(i)).await.unwrap();
    }
    // Index what is there (the server's own indexer may have taken part of
    // it already), then append more that the index has not reached. Should
    // the background indexer reach the tail before the searches, they must
    // give the same answers, so the assertions hold either way.
    let covered = index_all(&s).await;
    assert!(covered >= last, "the index covers the first ten records");
    for i in 10..20 {
        s.services.audit.record(rec(i)).await.unwrap();
    }
    let seqs = |q: String| {
        let (s, regulator) = (&s, regulator.clone());
        async move { record_seqs(s, &regulator, &q).await }
    };
    let mut all = seqs("action=license.retrieved&limit=1000".into()).await;
    all.extend(seqs("action=license.verified&limit=1000".into()).await);
    all.sort_unstable();
    assert_eq!(all.len(), 20);
    let expect = |pred: &dyn Fn(usize) -> bool| {
        all.iter()
            .enumerate()
            .filter(|(i, _)| pred(*i))
            .map(|(_, s)| *s)
            .collect::<Vec<_>>()
    };
    assert_eq!(seqs("holder=h_1".into()).await, expect(&|i| i % 3 == 1));
    assert_eq!(seqs("license=L2".into()).await, expect(&|i| i % 4 == 2));
    assert_eq!(
        seqs("holder=h_0&license=L0".into()).await,
        expect(&|i| i % 3 == 0 && i % 4 == 0)
    );
    assert_eq!(seqs("entity=ent_1".into()).await, expect(&|i| i % 2 == 1));
    assert_eq!(
        seqs("license_type=T3".into()).await,
        expect(&|i| i % 5 == 3)
    );
    assert_eq!(
        seqs("action=license.verified".into()).await,
        expect(&|i| i % 6 == 0)
    );
    assert_eq!(
        seqs("action=license.retrieved&entity=ent_0&license_type=T2".into()).await,
        expect(&|i| i % 6 != 0 && i % 2 == 0 && i % 5 == 2)
    );
    // A cursor inside the indexed part starts the index walk there.
    assert_eq!(
        seqs(format!("entity=ent_0&after={}", all[4])).await,
        expect(&|i| i % 2 == 0 && i > 4)
    );
    // Paging through a holder's records crosses from the index into the tail.
    let first: Value = s
        .get(&regulator, "/audit/v1/records?holder=h_1&limit=2")
        .await
        .json()
        .await
        .unwrap();
    let cursor = first["next_cursor"].as_i64().unwrap();
    let rest = seqs(format!("holder=h_1&after={cursor}")).await;
    assert_eq!(rest, expect(&|i| i % 3 == 1)[2..].to_vec());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monthly_archive_segments_verify_as_one_chain() {
    let s = TestServer::start().await;
    append(&s, 40).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("archive");
    let until = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let archive = || {
        let o = licensegate()
            .args(s.cli_args())
            .args([
                "audit",
                "archive",
                "--out",
                out.to_str().unwrap(),
                "--until",
                &until,
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()
    };
    let verify_archive = || {
        let o = licensegate()
            .args(["audit", "verify", "--archive", out.to_str().unwrap()])
            .output()
            .unwrap();
        (
            o.status.success(),
            serde_json::from_slice::<Value>(&o.stdout).unwrap(),
        )
    };
    let first = archive();
    assert_eq!(first.as_array().unwrap().len(), 1);
    assert_eq!(first[0]["first_seq"], 1);
    append(&s, 10).await;
    let second = archive();
    assert_eq!(second.as_array().unwrap().len(), 1, "only what is new");
    assert_eq!(
        second[0]["first_seq"].as_i64().unwrap(),
        first[0]["last_seq"].as_i64().unwrap() + 1
    );
    assert_eq!(
        archive().as_array().unwrap().len(),
        0,
        "nothing new: nothing written"
    );
    let (ok, report) = verify_archive();
    assert!(ok, "{report}");
    assert_eq!(report["records"], second[0]["last_seq"]);
    assert!(report["checkpoints"].as_i64().unwrap() >= 1);

    // A changed segment is named.
    let file = out.join(first[0]["file"].as_str().unwrap());
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replacen("test.event", "test.evenT", 1);
    std::fs::write(&file, text).unwrap();
    let (ok, report) = verify_archive();
    assert!(!ok);
    assert!(
        report["failure"]
            .as_str()
            .unwrap()
            .contains(first[0]["file"].as_str().unwrap()),
        "{report}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_wal_stays_bounded_under_steady_appends() {
    if backend() != "sqlite" {
        return;
    }
    let s = TestServer::start().await;
    // Writers that never pause, ten times the restart threshold's worth of
    // pages: a passive checkpoint never catches up with them, so without the
    // server's restarts the WAL file would hold all of it.
    let limit = licensegate::store::WAL_RESTART_FRAMES;
    let written = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let (audit, written) = (s.services.audit.clone(), written.clone());
            tokio::spawn(async move {
                let big = "x".repeat(1500);
                while written.load(std::sync::atomic::Ordering::Relaxed) * 1500 / 4096 < 10 * limit
                {
                    let events = (0..200)
                        .map(|_| {
                            AuditEvent::new(
                                ActorKind::System,
                                "test",
                                "test.event",
                                Outcome::Success,
                            )
                            .reason(big.clone())
                        })
                        .collect();
                    let n = audit.record_all(events).await.unwrap().len() as i64;
                    written.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let wal = std::fs::metadata(s.dir.path().join("licensegate.db-wal"))
        .unwrap()
        .len() as i64;
    assert!(
        wal < 6 * limit * 4096,
        "{} records written, the WAL file grew to {wal} bytes",
        written.load(std::sync::atomic::Ordering::Relaxed)
    );
    let (ok, report) = cli_verify(&s);
    assert!(ok, "{report}");
    s.stop().await;
}

/// On SQLite the subject index lives in a file of its own beside the log's
/// (`<log file>.audit-index`). It is derived data: a missing index file is
/// rebuilt, and an index that claims more records than the log holds (the
/// log's file restored from an older copy) is started over, so that its
/// entries cannot hide the records that take those sequence numbers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_subject_index_is_rebuilt_when_lost_or_ahead_of_the_log() {
    if backend() != "sqlite" {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let start = || {
        let dir = data.path().to_path_buf();
        TestServer::start_with(move |s| s.data_dir = Some(dir))
    };
    let index_file = data.path().join("licensegate.db.audit-index");
    let rec = |i: usize| {
        AuditEvent::new(
            ActorKind::Entity,
            "ent_1",
            "license.retrieved",
            Outcome::Success,
        )
        .holder(format!("h_{}", i % 2))
    };
    let s = start().await;
    let mut h1 = Vec::new();
    for i in 0..10 {
        let seq = s.services.audit.record(rec(i)).await.unwrap();
        if i % 2 == 1 {
            h1.push(seq);
        }
    }
    assert!(index_all(&s).await >= *h1.last().unwrap());
    assert!(index_file.exists(), "the index has its own file");
    let regulator = s.regulator_token().await;
    let found = record_seqs(&s, &regulator, "holder=h_1&limit=1000").await;
    assert_eq!(found, h1);
    s.stop().await;

    // Lost: searches stay complete, and the index is filled again.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", index_file.display()));
    }
    let s = start().await;
    let regulator = s.regulator_token().await;
    let found = record_seqs(&s, &regulator, "holder=h_1&limit=1000").await;
    assert_eq!(found, h1, "complete without the index file");
    let covered = index_all(&s).await;
    let last = *h1.last().unwrap();
    assert!(covered >= last, "indexed again up to {covered}");
    s.stop().await;

    // Ahead of the log: as if the log's file were an older copy.
    {
        use sqlx::Connection;
        let mut conn =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}", index_file.display()))
                .await
                .unwrap();
        sqlx::query("UPDATE audit_index_state SET indexed_upto = 1000000")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let s = start().await;
    for i in 10..20 {
        let seq = s.services.audit.record(rec(i)).await.unwrap();
        if i % 2 == 1 {
            h1.push(seq);
        }
    }
    let regulator = s.regulator_token().await;
    let found = record_seqs(&s, &regulator, "holder=h_1&limit=1000").await;
    assert_eq!(found, h1, "the records after the restart are found too");
    s.stop().await;
}
