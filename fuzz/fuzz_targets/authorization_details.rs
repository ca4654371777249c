//! `authorization_details` (RFC 9396) as pushed to /par, /bc-authorize and /authorize.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = std::str::from_utf8(data) {
        let _ = licensegate::consent::parse_details(raw);
    }
});
