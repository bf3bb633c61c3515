//! Natural-order string comparison with the exact semantics of Slurm's
//! `strnatcmp()` (Martin Pool's algorithm): whitespace is skipped between
//! tokens, digit runs compare by value (or left-aligned when one of them starts
//! with `0`), and other bytes compare as C `char`, which is signed on the
//! platforms Slurm runs on.
//!
//! Slurm uses it to decide whether two host ranges share a prefix, so matching
//! it byte for byte is what makes `compress` print what `scontrol` prints.

use std::cmp::Ordering;

/// `isspace()` in the C locale.
pub(crate) fn is_c_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Byte at `i`, or NUL past the end (C strings are NUL-terminated).
fn at(s: &[u8], i: usize) -> u8 {
    s.get(i).copied().unwrap_or(0)
}

/// Compares two right-aligned digit runs: the longest run wins, then the first
/// differing digit.
fn compare_right(a: &[u8], b: &[u8]) -> Ordering {
    let mut bias = Ordering::Equal;
    let mut i = 0;
    loop {
        let (x, y) = (at(a, i), at(b, i));
        let (dx, dy) = (x.is_ascii_digit(), y.is_ascii_digit());
        if !dx && !dy {
            return bias;
        } else if !dx {
            return Ordering::Less;
        } else if !dy {
            return Ordering::Greater;
        } else if bias == Ordering::Equal {
            bias = x.cmp(&y);
        }
        i += 1;
    }
}

/// Compares two left-aligned digit runs ("fractional" parts): the first
/// differing digit wins.
fn compare_left(a: &[u8], b: &[u8]) -> Ordering {
    let mut i = 0;
    loop {
        let (x, y) = (at(a, i), at(b, i));
        let (dx, dy) = (x.is_ascii_digit(), y.is_ascii_digit());
        if !dx && !dy {
            return Ordering::Equal;
        } else if !dx {
            return Ordering::Less;
        } else if !dy {
            return Ordering::Greater;
        }
        match x.cmp(&y) {
            Ordering::Equal => i += 1,
            other => return other,
        }
    }
}

/// Slurm's `strnatcmp(a, b)`.
pub(crate) fn strnatcmp(a: &[u8], b: &[u8]) -> Ordering {
    let (mut ai, mut bi) = (0usize, 0usize);
    loop {
        let mut ca = at(a, ai);
        let mut cb = at(b, bi);
        while is_c_space(ca) {
            ai += 1;
            ca = at(a, ai);
        }
        while is_c_space(cb) {
            bi += 1;
            cb = at(b, bi);
        }
        if ca.is_ascii_digit() && cb.is_ascii_digit() {
            let fractional = ca == b'0' || cb == b'0';
            let (ra, rb) = (a.get(ai..).unwrap_or(&[]), b.get(bi..).unwrap_or(&[]));
            let result = if fractional {
                compare_left(ra, rb)
            } else {
                compare_right(ra, rb)
            };
            if result != Ordering::Equal {
                return result;
            }
            // Equal runs are identical (same length, same digits): Slurm
            // would compare every suffix of them again, which is quadratic
            // in the run length; skipping them gives the same answer.
            let run = ra.iter().take_while(|c| c.is_ascii_digit()).count();
            ai += run;
            bi += run;
            continue;
        }
        if ca == 0 && cb == 0 {
            return Ordering::Equal;
        }
        // `nat_char` is a plain (signed) `char` in Slurm.
        match (ca as i8).cmp(&(cb as i8)) {
            Ordering::Equal => {}
            other => return other,
        }
        ai += 1;
        bi += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(a: &str, b: &str) -> Ordering {
        strnatcmp(a.as_bytes(), b.as_bytes())
    }

    #[test]
    fn natural_order() {
        assert_eq!(cmp("a2", "a10"), Ordering::Less);
        assert_eq!(cmp("a10", "a2"), Ordering::Greater);
        assert_eq!(cmp("abc", "abc"), Ordering::Equal);
        assert_eq!(cmp("a", "b"), Ordering::Less);
        assert_eq!(cmp("a01", "a1"), Ordering::Less);
    }

    #[test]
    fn whitespace_is_ignored_between_tokens() {
        assert_eq!(cmp("a b", "ab"), Ordering::Equal);
        assert_eq!(cmp("a\nb", "ab"), Ordering::Equal);
        // ...but not inside a digit run.
        assert_ne!(cmp("1 2", "12"), Ordering::Equal);
    }

    #[test]
    fn long_digit_runs_are_fast() {
        let a = format!("a{}b", "7".repeat(200_000));
        assert_eq!(cmp(&a, &a), Ordering::Equal);
        let b = format!("a{}c", "7".repeat(200_000));
        assert_eq!(cmp(&a, &b), Ordering::Less);
        assert_eq!(cmp("a01b", "a01c"), Ordering::Less);
        assert_eq!(cmp("x10y2", "x10y10"), Ordering::Less);
    }

    #[test]
    fn high_bytes_compare_signed() {
        assert_eq!(cmp("é", "a"), Ordering::Less);
    }
}
