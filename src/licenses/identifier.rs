//! Electronic-license identifiers in the national structure (GB/T 36904 style):
//!
//! `1.2.156.3005.2.<license type code>.<issuer USCC>.<serial>.<version>.<check>`
//!
//! The check character is ISO/IEC 7064 MOD 37,36 (hybrid system over the 36
//! characters 0-9 A-Z) computed over every character before it with the dots
//! left out. Issuing units are identified by their 18-character unified social
//! credit code (GB 32100), whose own check character is validated too.

use std::fmt;

/// OID arc that starts every e-license identifier.
pub const PREFIX: &str = "1.2.156.3005.2";

const ALNUM: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

fn alnum_value(c: u8) -> Option<usize> {
    ALNUM.iter().position(|&x| x == c)
}

/// ISO/IEC 7064 MOD 37,36 check character of `data` (dots ignored).
/// Returns `None` if `data` holds a character outside 0-9, A-Z and '.'.
pub fn mod37_36(data: &str) -> Option<char> {
    const M: usize = 36;
    let mut p = M;
    for c in data.bytes().filter(|&c| c != b'.') {
        let mut s = (p + alnum_value(c)?) % M;
        if s == 0 {
            s = M;
        }
        p = (s * 2) % (M + 1);
    }
    let check = (M + 1 - p) % M;
    Some(ALNUM[check] as char)
}

/// True when `data` (with its check character last) passes MOD 37,36.
pub fn mod37_36_valid(data_with_check: &str) -> bool {
    match data_with_check.char_indices().last() {
        Some((i, last)) => mod37_36(&data_with_check[..i]) == Some(last),
        None => false,
    }
}

const USCC_CHARS: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
const USCC_WEIGHTS: [usize; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];

/// The GB 32100 check character for the first 17 characters of a unified social credit code.
pub fn uscc_check(first17: &str) -> Option<char> {
    if first17.len() != 17 {
        return None;
    }
    let mut sum = 0;
    for (c, w) in first17.bytes().zip(USCC_WEIGHTS) {
        sum += USCC_CHARS.iter().position(|&x| x == c)? * w;
    }
    let check = (31 - sum % 31) % 31;
    Some(USCC_CHARS[check] as char)
}

/// True when `code` is a well-formed unified social credit code with a correct check character.
pub fn is_valid_uscc(code: &str) -> bool {
    code.len() == 18 && code.is_ascii() && uscc_check(&code[..17]) == code[17..].chars().next()
}

/// A license type code: 4 to 32 characters of 0-9 A-Z.
pub fn is_valid_type_code(code: &str) -> bool {
    (4..=32).contains(&code.len()) && code.bytes().all(|c| alnum_value(c).is_some())
}

/// A parsed, validated license identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseIdentifier {
    /// Catalog code of the license type.
    pub type_code: String,
    /// Unified social credit code of the issuing unit.
    pub issuer: String,
    /// Serial number within (type, issuer).
    pub serial: String,
    /// Version, 1-999.
    pub version: u16,
}

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    /// Wrong number of parts or wrong prefix.
    #[error("an identifier has the form {PREFIX}.<type>.<issuer>.<serial>.<version>.<check>")]
    Shape,
    /// Type code is malformed.
    #[error("the license type code must be 4-32 characters of 0-9 A-Z")]
    TypeCode,
    /// Issuer code is malformed.
    #[error("the issuer part must be an 18-character unified social credit code with a valid check character")]
    Issuer,
    /// Serial is malformed.
    #[error("the serial must be 1-20 characters of 0-9 A-Z")]
    Serial,
    /// Version is not three digits 001-999.
    #[error("the version must be three digits from 001 to 999")]
    Version,
    /// Check character does not match.
    #[error("the check character does not match (ISO 7064 MOD 37,36)")]
    Check,
}

impl LicenseIdentifier {
    /// Parses and validates a full identifier.
    pub fn parse(s: &str) -> Result<Self, IdentifierError> {
        let rest = s
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('.'))
            .ok_or(IdentifierError::Shape)?;
        let parts: Vec<&str> = rest.split('.').collect();
        let [type_code, issuer, serial, version, check] = parts.as_slice() else {
            return Err(IdentifierError::Shape);
        };
        if !is_valid_type_code(type_code) {
            return Err(IdentifierError::TypeCode);
        }
        if !is_valid_uscc(issuer) {
            return Err(IdentifierError::Issuer);
        }
        if serial.is_empty()
            || serial.len() > 20
            || !serial.bytes().all(|c| alnum_value(c).is_some())
        {
            return Err(IdentifierError::Serial);
        }
        let v: u16 = match version.len() == 3 && version.bytes().all(|c| c.is_ascii_digit()) {
            true => version.parse().map_err(|_| IdentifierError::Version)?,
            false => return Err(IdentifierError::Version),
        };
        if v == 0 {
            return Err(IdentifierError::Version);
        }
        if check.len() != 1 || !mod37_36_valid(&s.replace('.', "")) {
            return Err(IdentifierError::Check);
        }
        Ok(LicenseIdentifier {
            type_code: (*type_code).to_owned(),
            issuer: (*issuer).to_owned(),
            serial: (*serial).to_owned(),
            version: v,
        })
    }

    /// Rebuilds an identifier from the base (as stored) and a version.
    pub fn from_base(base: &str, version: u16) -> Option<Self> {
        let rest = base.strip_prefix(PREFIX)?.strip_prefix('.')?;
        let mut parts = rest.split('.');
        let (type_code, issuer, serial) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        Some(LicenseIdentifier {
            type_code: type_code.to_owned(),
            issuer: issuer.to_owned(),
            serial: serial.to_owned(),
            version,
        })
    }

    /// The identifier of the license across its versions (no version, no check character).
    pub fn base(&self) -> String {
        format!(
            "{PREFIX}.{}.{}.{}",
            self.type_code, self.issuer, self.serial
        )
    }

    /// The same license at another version.
    pub fn with_version(&self, version: u16) -> Self {
        LicenseIdentifier {
            version,
            ..self.clone()
        }
    }
}

impl fmt::Display for LicenseIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = format!("{}.{:03}", self.base(), self.version);
        // Every part was validated to be 0-9 A-Z, so a check character exists.
        let check = mod37_36(&body).unwrap_or('0');
        write!(f, "{body}.{check}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real-world unified social credit code (a public registration), used only
    // to check the GB 32100 arithmetic.
    const USCC: &str = "91350100M000100Y43";

    #[test]
    fn uscc_check_character() {
        assert!(is_valid_uscc(USCC));
        assert!(!is_valid_uscc("91350100M000100Y44"));
        assert!(!is_valid_uscc("91350100M000100Y4"));
        assert!(!is_valid_uscc("91350100M000100Y4é"));
    }

    #[test]
    fn mod37_36_matches_the_standard_and_detects_errors() {
        // Same hybrid-system arithmetic with M = 10 is ISO 7064 MOD 11,10, whose
        // published example (Croatian OIB 69435151530) ends in check digit 0.
        fn mod11_10(digits: &[usize]) -> usize {
            let mut p = 10;
            for d in digits {
                let mut s = (p + d) % 10;
                if s == 0 {
                    s = 10;
                }
                p = (s * 2) % 11;
            }
            (11 - p) % 10
        }
        assert_eq!(mod11_10(&[6, 9, 4, 3, 5, 1, 5, 1, 5, 3]), 0);

        let body = "12156300521110000000000120000012300000042001";
        let check = mod37_36(body).unwrap();
        let full = format!("{body}{check}");
        assert!(mod37_36_valid(&full));
        let bytes = full.as_bytes();
        // Every single substitution is detected (a property of the hybrid systems)…
        for i in 0..bytes.len() {
            for c in ALNUM.iter().filter(|&&c| c != bytes[i]) {
                let mut b = bytes.to_vec();
                b[i] = *c;
                assert!(
                    !mod37_36_valid(std::str::from_utf8(&b).unwrap()),
                    "change at {i}"
                );
            }
        }
        // …and nearly every adjacent transposition.
        let (mut swaps, mut caught) = (0, 0);
        for i in 0..bytes.len() - 1 {
            if bytes[i] != bytes[i + 1] {
                let mut b = bytes.to_vec();
                b.swap(i, i + 1);
                swaps += 1;
                caught += usize::from(!mod37_36_valid(std::str::from_utf8(&b).unwrap()));
            }
        }
        assert!(
            caught * 10 >= swaps * 9,
            "{caught}/{swaps} transpositions caught"
        );
    }

    #[test]
    fn identifier_round_trip() {
        let id = LicenseIdentifier {
            type_code: "11100000000013338W".into(),
            issuer: USCC.into(),
            serial: "00000042".into(),
            version: 1,
        };
        let s = id.to_string();
        assert!(s.starts_with("1.2.156.3005.2.11100000000013338W.91350100M000100Y43.00000042.001."));
        assert_eq!(LicenseIdentifier::parse(&s).unwrap(), id);
        let v2 = id.with_version(2).to_string();
        assert_ne!(s, v2);
        assert_eq!(LicenseIdentifier::parse(&v2).unwrap().version, 2);
        // Tampered check character, serial, version, prefix.
        let mut bad = s.clone();
        bad.pop();
        bad.push(if s.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(LicenseIdentifier::parse(&bad), Err(IdentifierError::Check));
        assert_eq!(
            LicenseIdentifier::parse(&s.replace("00000042", "00000043")),
            Err(IdentifierError::Check)
        );
        assert_eq!(
            LicenseIdentifier::parse(&s.replace(".001.", ".000.")),
            Err(IdentifierError::Version)
        );
        assert_eq!(
            LicenseIdentifier::parse("1.2.3"),
            Err(IdentifierError::Shape)
        );
        assert_eq!(LicenseIdentifier::parse(""), Err(IdentifierError::Shape));
        assert_eq!(
            LicenseIdentifier::parse(&s.replace(USCC, "91350100M000100Y44")),
            Err(IdentifierError::Issuer)
        );
    }
}
