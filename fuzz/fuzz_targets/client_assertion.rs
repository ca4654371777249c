//! JWT client assertions (RFC 7523, private_key_jwt) at the token endpoint:
//! the claimant is read from the unverified JWT, then the signature and claims
//! are checked against a registered JWKS (Ed25519 and P-256 keys).
#![no_main]
use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use licensegate::oauth::client_auth::{assertion_claimant, check_assertion, JWT_BEARER};

const JWKS: &str = r#"{"keys":[
 {"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
 {"kty":"EC","crv":"P-256","kid":"ec","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

fuzz_target!(|data: &[u8]| {
    let Ok(jwt) = std::str::from_utf8(data) else {
        return;
    };
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(JWKS).unwrap();
    let params = HashMap::from([("client_assertion_type".to_owned(), JWT_BEARER.to_owned())]);
    if let Ok((header, client)) = assertion_claimant(jwt, &params) {
        let _ = check_assertion(
            jwt,
            &header,
            &client,
            &jwks,
            &["https://broker.example".to_owned()],
            1_800_000_000,
        );
    }
});
