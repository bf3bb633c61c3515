//! Query-string decoding shared by the read endpoints (`GET /v1/report`, `GET /v1/jobs`,
//! `GET /v1/history`).

/// Decodes `%XX` and `+` in a query-string component.
pub(crate) fn decode_component(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_percent_escapes_and_plus() {
        assert_eq!(decode_component("phys%20ics").as_deref(), Some("phys ics"));
        assert_eq!(decode_component("a+b").as_deref(), Some("a b"));
        assert_eq!(decode_component("%C3%A9t%C3%A9").as_deref(), Some("été"));
        assert_eq!(decode_component("plain").as_deref(), Some("plain"));
    }

    #[test]
    fn refuses_bad_escapes_and_invalid_utf8() {
        for bad in ["%zz", "%2", "%", "%ff"] {
            assert_eq!(decode_component(bad), None, "{bad}");
        }
    }
}
