//! The payload sgpu puts in an acctd request's credential: the request it was made for.
//!
//! `"<METHOD> <path-and-query> sha256=<hex>"`, the hex being the SHA-256 of the request's
//! body (of nothing for a request without one). acctd checks the method and target before
//! it reads the body, and the digest once it has read it: a credential can be used for no
//! other request, and a body swapped on the wire is refused.

use sha2::{Digest, Sha256};

/// The SHA-256 of `body`.
pub fn body_digest(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// The payload for `method target` with `body`.
pub fn payload(method: &str, target: &str, body: &[u8]) -> String {
    let mut p = format!("{method} {target} sha256=");
    for b in body_digest(body) {
        p.push_str(&format!("{b:02x}"));
    }
    p
}

/// Splits a payload into the request it names (`"<METHOD> <path-and-query>"`) and its body
/// digest; `None` if it is not of the form [`payload`] makes.
pub fn parse(payload: &[u8]) -> Option<(&str, [u8; 32])> {
    let text = std::str::from_utf8(payload).ok()?;
    let (target, hex) = text.rsplit_once(" sha256=")?;
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, d) in digest.iter_mut().enumerate() {
        *d = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some((target, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let p = payload("POST", "/v1/records", b"[]");
        let (target, d) = parse(p.as_bytes()).unwrap();
        assert_eq!(target, "POST /v1/records");
        assert_eq!(d, body_digest(b"[]"));
        assert_ne!(d, body_digest(b"[ ]"));
        // the empty body's well-known digest
        assert!(
            payload("GET", "/v1/report?x=1", b"").ends_with(
                "sha256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            )
        );
        for bad in [
            &b"GET /v1/report"[..],
            b"GET /v1/report sha256=abc",
            b"GET /v1/report sha256=zz3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            b"\xff sha256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }
}
