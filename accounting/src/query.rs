//! Query-string decoding shared by the read endpoints (`GET /v1/report`, `GET /v1/jobs`,
//! `GET /v1/history`).

/// Why a query string is refused; names the parameter.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{param}: {message}")]
pub struct QueryError {
    /// The offending parameter.
    pub param: String,
    /// What is wrong.
    pub message: String,
}

/// A [`QueryError`] for `param`.
pub(crate) fn qerr(param: &str, message: impl Into<String>) -> QueryError {
    QueryError {
        param: param.to_string(),
        message: message.into(),
    }
}

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
