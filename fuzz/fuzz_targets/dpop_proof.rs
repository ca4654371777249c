//! DPoP proofs (RFC 9449) at /token and at the resource: every check but the
//! replay check, which is a database insert.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(proof) = std::str::from_utf8(data) {
        let now = 1_800_000_000;
        let _ = licensegate::oauth::dpop::check_proof(
            proof,
            "POST",
            "https://broker.example/token",
            None,
            now,
        );
        let _ = licensegate::oauth::dpop::check_proof(
            proof,
            "GET",
            "https://broker.example/api/v1/licenses?x=1",
            Some("an-access-token"),
            now,
        );
    }
});
