//! JWTs presented to the broker: access tokens (RFC 9068 header, then the
//! Ed25519 signature and claims) and SD-JWT presentations (disclosures).
#![no_main]
use libfuzzer_sys::fuzz_target;
use licensegate::licenses::sdjwt;
use licensegate::oauth::tokens::{access_token_kid, decode_access_token};

/// An Ed25519 public key (RFC 8037 A.2).
const PUBLIC: [u8; 32] = [
    0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64, 0x07, 0x3a,
    0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a,
];

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if access_token_kid(token).is_ok() {
        let _ = decode_access_token(token, "https://broker.example", &PUBLIC);
    }
    for part in token.split('~').skip(1) {
        let _ = sdjwt::decode_disclosure(part);
    }
});
