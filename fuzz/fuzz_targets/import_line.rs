//! Lines of a bulk import file (and single publications): the JSON, then every
//! check against each license type of the demo catalog.
#![no_main]
use libfuzzer_sys::fuzz_target;
use licensegate::licenses::catalog::LicenseType;
use licensegate::licenses::import::parse_import_line;
use licensegate::licenses::Library;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(req) = parse_import_line(line) else {
        return;
    };
    let units = licensegate::demo::issuers();
    for spec in licensegate::demo::catalog(&units).unwrap() {
        let issuer = spec.issuer.clone();
        let ty = LicenseType {
            spec,
            revision: 0,
            created_at: String::new(),
            updated_at: String::new(),
        };
        let _ = Library::check_publication(&ty, &issuer, &req);
    }
});
