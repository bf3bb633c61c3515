//! Slurm hostlist expressions: `node[01-04,07]`, `rack[1-2]-gpu[01-08]`, ...
//!
//! [`expand`] behaves like `scontrol show hostnames` and [`compress`] /
//! [`compress_expr`] like `scontrol show hostlist`: same token splitting (`,`,
//! space and tab separate names, except inside brackets), same zero padding (the
//! width of a range is the length of its first number as written, so `n[1-010]`
//! is `n1..n10` and `n[08-12]` is `n08..n12`), same order for several bracket
//! groups, and the same output for compression, which keeps the input order and
//! duplicates (`n3,n1,n2` is `n[3,1-2]`). Use [`Hostlist::uniq`] for a sorted,
//! de-duplicated list.
//!
//! The rules changed between Slurm releases; [`Syntax`] names them and
//! [`Syntax::for_release`] picks those of a release (SchedMD's CHANGELOG and
//! `src/common/hostlist.c`):
//! - 22.05: a missing `]` is "fixed" (`n[1-3` is the one name `n]`), text after
//!   the last `]` is an error, a newline is part of a name;
//! - 23.02: a missing `]` is an error, a newline separates names;
//! - 23.11 and later: text after the last `]` is a suffix shared by every name
//!   (`node[01-02]-ib` is `node01-ib,node02-ib`; such names are kept whole and
//!   never compressed back into brackets, as Slurm does).
//!
//! [`expand`], [`compress_expr`], [`contains`] and [`Hostlist::parse`] follow
//! [`Syntax::default`], the rules of 23.11 and later (every current release:
//! CI checks them against the `scontrol` of 26.05 and 25.11). On 22.05 that
//! accepts a suffix that Slurm 22.05 refuses (its slurmctld then refuses the
//! configuration itself) and refuses a missing `]` that 22.05 turns into a name
//! ending in `]`; the `*_for` functions take the running release's [`Syntax`].
//! Hostlist functions (`torus3d{...}`, 25.05+) are expanded by slurmctld for
//! `scontrol` only; here `{` is an ordinary character, as in slurm.conf.
//!
//! Where Slurm rejects an expression this module rejects it too, with a
//! message saying what is wrong. It is stricter than Slurm in a few absurd
//! corners that Slurm accepts silently (numbers that overflow 64 bits, errors
//! in a non-final bracket group that Slurm only logs, ranges producing more
//! names than [`Limits`] allow). The number of names is computed before
//! anything is allocated, so no expression can exhaust memory.

mod natcmp;

use std::cmp::Ordering;
use std::fmt;

use natcmp::{is_c_space, strnatcmp};

/// Slurm refuses a single `lo-hi` range with more hosts than this (`MAX_RANGE`).
pub const SLURM_MAX_RANGE: u64 = 64 * 1024;
/// Slurm refuses a non-final bracket group with more values than this (`MAX_PREFIX_CNT`).
pub const SLURM_MAX_PREFIX_CNT: u64 = 64 * 1024;
/// Slurm aborts when one bracket holds more comma-separated ranges than this (`MAX_RANGES`).
pub const SLURM_MAX_RANGES: usize = 256 * 1024;
/// Upper bound on the number of internal ranges built for one expression.
const MAX_BUILT_RANGES: u128 = 1 << 22;
/// Longest expression echoed back in error messages.
const ERR_EXPR_MAX: usize = 120;

/// Size limits applied while expanding a hostlist expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most names an expression may expand to.
    pub max_names: usize,
    /// Most bytes (sum of name lengths, upper bound) an expansion may produce.
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_names: 1 << 20,
            max_bytes: 256 << 20,
        }
    }
}

impl Limits {
    /// No limit on names or bytes (only the internal range-count cap remains);
    /// for operations such as [`contains`] that never materialise the names.
    pub const UNLIMITED: Limits = Limits {
        max_names: usize::MAX,
        max_bytes: usize::MAX,
    };
}

/// The hostlist rules of a Slurm release (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Syntax {
    /// Slurm 22.05 and before: a missing `]` is tacked on, nothing may follow the last `]`.
    Slurm22_05,
    /// Slurm 23.02 and 23.05: a missing `]` is an error; a newline separates names.
    Slurm23_02,
    /// Slurm 23.11 and later: text after the last `]` is a suffix shared by every name.
    #[default]
    Slurm23_11,
}

impl Syntax {
    /// The rules of Slurm `major.minor` (e.g. `for_release(26, 5)`).
    pub fn for_release(major: u32, minor: u32) -> Self {
        match (major, minor) {
            r if r >= (23, 11) => Syntax::Slurm23_11,
            r if r >= (23, 2) => Syntax::Slurm23_02,
            _ => Syntax::Slurm22_05,
        }
    }

    /// The rules of a version string as `scontrol --version` prints it (`slurm 26.05.3`,
    /// `22.05.8`); `None` when it names no `major.minor`.
    pub fn for_version(version: &str) -> Option<Self> {
        let v = version.trim().rsplit(' ').next()?;
        let mut it = v.split('.');
        let major = it.next()?.parse().ok()?;
        let minor = it.next()?.parse().ok()?;
        Some(Self::for_release(major, minor))
    }

    fn newline_separates(self) -> bool {
        self >= Syntax::Slurm23_02
    }
}

/// Why a hostlist expression was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostlistError {
    /// A bracketed range is not `N`, `N-M` or a comma list of those.
    #[error(
        "invalid range `{range}` in hostlist `{expr}`: {reason} (expected N or N-M, e.g. node[01-04,07])"
    )]
    InvalidRange {
        /// The expression (possibly shortened).
        expr: String,
        /// The offending range text.
        range: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Text follows the last `]` of a name (before Slurm 23.11 only `,` or the end may).
    #[error(
        "hostlist `{expr}`: unexpected `{found}` after `]` (Slurm before 23.11 allows nothing after the last bracket of a name; write e.g. n[1-2]x as n1x,n2x)"
    )]
    TrailingAfterBracket {
        /// The expression (possibly shortened).
        expr: String,
        /// The text found after the bracket (possibly shortened).
        found: String,
    },
    /// A range holds more hosts than Slurm accepts in one range.
    #[error(
        "range `{range}` in hostlist `{expr}` has {count} hosts; Slurm refuses more than {max} in one range"
    )]
    RangeTooLarge {
        /// The expression (possibly shortened).
        expr: String,
        /// The offending range text.
        range: String,
        /// Hosts in the range.
        count: u128,
        /// The limit.
        max: u64,
    },
    /// The expression expands to more names or bytes than the limits allow.
    #[error(
        "hostlist `{expr}` expands to {what}, over the limit of {limit}; split it or raise the limit"
    )]
    TooLarge {
        /// The expression (possibly shortened).
        expr: String,
        /// What was counted, e.g. "4294967296 names".
        what: String,
        /// The limit that was exceeded.
        limit: String,
    },
    /// A `[` without its `]` (an error since Slurm 23.02).
    #[error(
        "hostlist `{expr}`: `[` without a closing `]` in `{token}` (Slurm 23.02 and later refuse it; close the bracket, e.g. n[1-3])"
    )]
    MissingBracket {
        /// The expression (possibly shortened).
        expr: String,
        /// The token holding the open bracket (possibly shortened).
        token: String,
    },
    /// The expression contains a NUL byte, which no Slurm tool can receive.
    #[error("hostlist `{expr}` contains a NUL byte")]
    NulByte {
        /// The expression (possibly shortened).
        expr: String,
    },
}

/// Shortens `s` for an error message.
fn shorten(s: &str) -> String {
    if s.len() <= ERR_EXPR_MAX {
        return s.to_string();
    }
    let mut end = ERR_EXPR_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// One Slurm `hostrange`: `prefix` followed by the numbers `lo..=hi`
/// zero-padded to `width`, or the single name `prefix` when `single`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostRange {
    prefix: String,
    lo: u64,
    hi: u64,
    width: usize,
    single: bool,
}

impl HostRange {
    fn single(name: &str) -> Self {
        HostRange {
            prefix: name.to_string(),
            lo: 0,
            hi: 0,
            width: 0,
            single: true,
        }
    }

    fn count(&self) -> u64 {
        if self.single {
            1
        } else {
            self.hi - self.lo + 1
        }
    }

    fn name(&self, n: u64) -> String {
        let mut s = self.prefix.clone();
        push_padded(&mut s, n, self.width);
        s
    }

    /// Whether `name` is one of the names of this range.
    fn contains(&self, name: &str) -> bool {
        if self.single {
            return self.prefix == name;
        }
        let Some(rest) = name.strip_prefix(self.prefix.as_str()) else {
            return false;
        };
        if rest.is_empty() || !rest.bytes().all(|c| c.is_ascii_digit()) {
            return false;
        }
        match rest.parse::<u64>() {
            Ok(n) => n >= self.lo && n <= self.hi && padded(n, self.width) == rest,
            Err(_) => false,
        }
    }
}

/// A name split at its trailing digits: `stem` and the number of digits and their value
/// (`gpu0012` is `gpu`, 4 digits, 12; `login` is `login`, 0 digits, 0). Every name has
/// exactly one such form, so two host ranges share a name exactly when two of their
/// spans (stem and digit count equal) have overlapping values: set questions about host
/// lists (do two lists share a name, does one hold every name of another) are answered
/// on spans, without the names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Span {
    /// The name up to its trailing digits.
    pub(crate) stem: String,
    /// How many trailing digits.
    pub(crate) digits: usize,
    /// The smallest value of the digits.
    pub(crate) lo: u128,
    /// The largest value of the digits.
    pub(crate) hi: u128,
}

/// Most trailing digits a [`Span`] holds (10^38 < u128::MAX).
const SPAN_MAX_DIGITS: usize = 38;

/// `s` split before its trailing digits.
fn split_digits(s: &str) -> (&str, &str) {
    let digits = s.bytes().rev().take_while(u8::is_ascii_digit).count();
    s.split_at(s.len() - digits)
}

/// Number of decimal digits of `n`.
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

impl HostRange {
    /// Appends the spans of this range's names; `None` when a name has too many digits.
    fn spans(&self, out: &mut Vec<Span>) -> Option<()> {
        let (stem, tail) = split_digits(&self.prefix);
        let tail_val = if tail.is_empty() {
            0
        } else if tail.len() > SPAN_MAX_DIGITS {
            return None;
        } else {
            tail.parse::<u128>().ok()?
        };
        if self.single {
            out.push(Span {
                stem: stem.to_string(),
                digits: tail.len(),
                lo: tail_val,
                hi: tail_val,
            });
            return Some(());
        }
        // the numbers of each decimal length print alike: zero-padded to `width`, or longer
        for len in decimal_len(self.lo)..=decimal_len(self.hi) {
            let floor = if len == 1 {
                0
            } else {
                10u128.pow(len as u32 - 1)
            };
            let lo = u128::from(self.lo).max(floor);
            let hi = u128::from(self.hi).min(10u128.pow(len as u32) - 1);
            let printed = len.max(self.width);
            let digits = tail.len() + printed;
            if digits > SPAN_MAX_DIGITS {
                return None;
            }
            let base = tail_val * 10u128.pow(printed as u32);
            out.push(Span {
                stem: stem.to_string(),
                digits,
                lo: base + lo,
                hi: base + hi,
            });
        }
        Some(())
    }
}

impl Span {
    /// The name of value `v` of this span.
    pub(crate) fn name(&self, v: u128) -> String {
        let mut s = self.stem.clone();
        if self.digits > 0 {
            let d = v.to_string();
            for _ in d.len()..self.digits {
                s.push('0');
            }
            s.push_str(&d);
        }
        s
    }
}

/// Whether any name is in two of `spans` (sorts them).
pub(crate) fn spans_overlap(spans: &mut [Span]) -> bool {
    spans.sort_unstable();
    // sorted by stem, digit count and start: a span overlaps an earlier one of its stem and
    // digit count exactly when it starts at or before the largest end seen among them
    let mut reach: Option<(&str, usize, u128)> = None;
    for s in spans.iter() {
        match reach {
            Some((stem, digits, hi)) if stem == s.stem && digits == s.digits => {
                if s.lo <= hi {
                    return true;
                }
                reach = Some((stem, digits, hi.max(s.hi)));
            }
            _ => reach = Some((s.stem.as_str(), s.digits, s.hi)),
        }
    }
    false
}

/// The union of some spans, for asking whether it holds every name of another span.
#[derive(Debug, Clone, Default)]
pub(crate) struct SpanSet {
    /// Disjoint, non-adjacent spans, sorted.
    merged: Vec<Span>,
}

impl SpanSet {
    /// The union of `spans`.
    pub(crate) fn new(mut spans: Vec<Span>) -> Self {
        spans.sort_unstable();
        let mut merged: Vec<Span> = Vec::with_capacity(spans.len());
        for s in spans {
            if let Some(last) = merged.last_mut() {
                if last.stem == s.stem
                    && last.digits == s.digits
                    && s.lo <= last.hi.saturating_add(1)
                {
                    last.hi = last.hi.max(s.hi);
                    continue;
                }
            }
            merged.push(s);
        }
        SpanSet { merged }
    }

    /// The set as disjoint spans, sorted.
    pub(crate) fn into_spans(self) -> Vec<Span> {
        self.merged
    }

    /// Whether every name of `s` is in the set.
    pub(crate) fn covers(&self, s: &Span) -> bool {
        let i = self.merged.partition_point(|m| {
            (m.stem.as_str(), m.digits, m.lo) <= (s.stem.as_str(), s.digits, s.lo)
        });
        i.checked_sub(1)
            .and_then(|i| self.merged.get(i))
            .is_some_and(|m| m.stem == s.stem && m.digits == s.digits && m.hi >= s.hi)
    }
}

/// Appends `n` zero-padded to `width` digits (C's `%0*lu`; Rust's `{:0w$}`
/// panics for widths over 65535, which an expression can ask for).
fn push_padded(out: &mut String, n: u64, width: usize) {
    let digits = n.to_string();
    for _ in digits.len()..width {
        out.push('0');
    }
    out.push_str(&digits);
}

/// `n` zero-padded to `width` digits.
fn padded(n: u64, width: usize) -> String {
    let mut s = String::new();
    push_padded(&mut s, n, width);
    s
}

/// Number of zeros needed to pad `num` to `width` (Slurm's `_zero_padded`).
fn zero_padded(num: u64, width: usize) -> usize {
    let digits = num.checked_ilog10().map_or(1, |d| d as usize + 1);
    width.saturating_sub(digits)
}

/// Slurm's `_width_equiv`: whether numbers `n` (width `wn`) and `m` (width
/// `wm`) can share one format width; if so, adjusts one of the widths.
fn width_equiv(n: u64, wn: &mut usize, m: u64, wm: &mut usize) -> bool {
    if *wn == *wm {
        return true;
    }
    let npad = zero_padded(n, *wn);
    let nmpad = zero_padded(n, *wm);
    let mpad = zero_padded(m, *wm);
    let mnpad = zero_padded(m, *wn);
    if npad != nmpad && mpad != mnpad {
        false
    } else {
        if npad != nmpad {
            *wm = *wn;
        } else {
            *wn = *wm;
        }
        true
    }
}

/// Slurm's `hostrange_prefix_cmp`.
fn prefix_cmp(h1: &HostRange, h2: &HostRange) -> i32 {
    match strnatcmp(h1.prefix.as_bytes(), h2.prefix.as_bytes()) {
        Ordering::Equal => h2.single as i32 - h1.single as i32,
        Ordering::Less => -1,
        Ordering::Greater => 1,
    }
}

/// Slurm's `hostrange_within_range`: both belong in one bracket.
fn within_range(h1: &HostRange, h2: &HostRange) -> bool {
    prefix_cmp(h1, h2) == 0 && !h1.single && !h2.single
}

/// Slurm's `hostrange_cmp` (used for sorting); may adjust widths like Slurm.
fn hostrange_cmp(h1: &mut HostRange, h2: &mut HostRange) -> i32 {
    let r = prefix_cmp(h1, h2);
    if r != 0 {
        return r;
    }
    // C computes these in `unsigned long` and returns them as `int`.
    if width_equiv(h1.lo, &mut h1.width, h2.lo, &mut h2.width) {
        h1.lo.wrapping_sub(h2.lo) as i32
    } else {
        (h1.width as i64 - h2.width as i64) as i32
    }
}

/// Slurm's `hostrange_join`: -1 when the ranges cannot be joined, otherwise
/// joins `h2` into `h1` and returns the number of duplicated hosts.
fn hostrange_join(h1: &mut HostRange, h2: &mut HostRange) -> i64 {
    if prefix_cmp(h1, h2) != 0 || !width_equiv(h1.lo, &mut h1.width, h2.lo, &mut h2.width) {
        return -1;
    }
    if h1.single && h2.single {
        1
    } else if h1.hi == h2.lo.wrapping_sub(1) {
        h1.hi = h2.hi;
        0
    } else if h1.hi >= h2.lo {
        if h1.hi < h2.hi {
            let dup = h1.hi - h2.lo + 1;
            h1.hi = h2.hi;
            dup as i64
        } else {
            h2.count() as i64
        }
    } else {
        -1
    }
}

/// Mutable references to two distinct elements of a slice.
fn two_mut<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    debug_assert_ne!(a, b);
    if a < b {
        let (l, r) = v.split_at_mut(b);
        (&mut l[a], &mut r[0])
    } else {
        let (l, r) = v.split_at_mut(a);
        (&mut r[0], &mut l[b])
    }
}

/// glibc 2.36 `qsort` (a top-down merge sort) over indices into `ranges`,
/// comparing with `hostrange_cmp` exactly as often and in the same order as
/// Slurm does, since the comparison adjusts widths as a side effect.
fn glibc_msort(ranges: &mut [HostRange], idx: &mut [usize], tmp: &mut Vec<usize>) {
    let n = idx.len();
    if n <= 1 {
        return;
    }
    let n1 = n / 2;
    {
        let (left, right) = idx.split_at_mut(n1);
        glibc_msort(ranges, left, tmp);
        glibc_msort(ranges, right, tmp);
    }
    tmp.clear();
    let (mut i, mut j) = (0, n1);
    while i < n1 && j < n {
        let (a, b) = two_mut(ranges, idx[i], idx[j]);
        if hostrange_cmp(a, b) <= 0 {
            tmp.push(idx[i]);
            i += 1;
        } else {
            tmp.push(idx[j]);
            j += 1;
        }
    }
    tmp.extend_from_slice(&idx[i..n1]);
    let done = tmp.len();
    idx[..done].copy_from_slice(tmp);
}

/// A parsed hostlist: an ordered sequence of host ranges, as Slurm keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hostlist {
    ranges: Vec<HostRange>,
    len: usize,
}

impl Hostlist {
    /// An empty hostlist.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a hostlist expression with the default [`Limits`].
    pub fn parse(expr: &str) -> Result<Self, HostlistError> {
        Self::parse_with_limits(expr, Limits::default())
    }

    /// Parses a hostlist expression, refusing expansions over `limits`.
    pub fn parse_with_limits(expr: &str, limits: Limits) -> Result<Self, HostlistError> {
        Self::parse_with(expr, Syntax::default(), limits)
    }

    /// Parses a hostlist expression by the rules of one Slurm release.
    pub fn parse_with(expr: &str, syntax: Syntax, limits: Limits) -> Result<Self, HostlistError> {
        let plans = plan(expr, syntax, limits)?;
        let mut hl = Hostlist::new();
        for p in &plans {
            p.build(&mut hl);
        }
        Ok(hl)
    }

    /// Builds a hostlist from literal host names (no bracket expansion).
    pub fn from_names<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut hl = Hostlist::new();
        for n in names {
            hl.push_name(n.as_ref());
        }
        hl
    }

    /// Appends one literal host name (Slurm's `hostlist_push_host`).
    pub fn push_name(&mut self, name: &str) {
        let b = name.as_bytes();
        let digits = b.iter().rev().take_while(|c| c.is_ascii_digit()).count();
        let split = b.len() - digits;
        let parsed = if digits == 0 {
            None
        } else {
            name[split..].parse::<u64>().ok().filter(|&n| n != u64::MAX)
        };
        let hr = match parsed {
            // Slurm would saturate an overflowing suffix to ULONG_MAX and print
            // a different name; keeping the name as-is is the sane choice.
            None => HostRange::single(name),
            Some(n) => HostRange {
                prefix: name[..split].to_string(),
                lo: n,
                hi: n,
                width: digits,
                single: false,
            },
        };
        self.push_range(hr);
    }

    /// Slurm's `hostlist_push_range`: appends, merging with the last range
    /// when the numbers follow on.
    fn push_range(&mut self, mut hr: HostRange) {
        let count = hr.count() as usize;
        if let Some(tail) = self.ranges.last_mut() {
            if tail.hi == hr.lo.wrapping_sub(1)
                && prefix_cmp(tail, &hr) == 0
                && width_equiv(tail.lo, &mut tail.width, hr.lo, &mut hr.width)
            {
                tail.hi = hr.hi;
                self.len = self.len.saturating_add(count);
                return;
            }
        }
        self.ranges.push(hr);
        self.len = self.len.saturating_add(count);
    }

    /// Number of names (duplicates included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the list holds no names.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Iterates over the names in order, like `scontrol show hostnames`.
    pub fn iter(&self) -> Names<'_> {
        Names {
            ranges: &self.ranges,
            idx: 0,
            next: None,
        }
    }

    /// All names in order.
    pub fn to_vec(&self) -> Vec<String> {
        let mut v = Vec::with_capacity(self.len);
        v.extend(self.iter());
        v
    }

    /// Whether `name` is in the list, without expanding it.
    pub fn contains(&self, name: &str) -> bool {
        self.ranges.iter().any(|r| r.contains(name))
    }

    /// The position of the first `name` in the list (as [`Hostlist::iter`] yields the
    /// names), without expanding it.
    pub fn position(&self, name: &str) -> Option<usize> {
        let mut at = 0usize;
        for r in &self.ranges {
            if r.contains(name) {
                let off = if r.single {
                    0
                } else {
                    name.get(r.prefix.len()..)?.parse::<u64>().ok()? - r.lo
                };
                return Some(at.saturating_add(usize::try_from(off).ok()?));
            }
            at = at.saturating_add(usize::try_from(r.count()).unwrap_or(usize::MAX));
        }
        None
    }

    /// The name at position `i` (as [`Hostlist::iter`] yields the names), without
    /// expanding the others.
    pub fn nth(&self, i: usize) -> Option<String> {
        let mut left = u64::try_from(i).ok()?;
        for r in &self.ranges {
            let c = r.count();
            if left < c {
                return Some(if r.single {
                    r.prefix.clone()
                } else {
                    r.name(r.lo + left)
                });
            }
            left -= c;
        }
        None
    }

    /// The names as [`Span`]s (see there); `None` when a name's digits do not fit in one
    /// (over 38 digits), so the caller cannot decide without the names.
    pub(crate) fn spans(&self) -> Option<Vec<Span>> {
        let mut out = Vec::with_capacity(self.ranges.len());
        for r in &self.ranges {
            r.spans(&mut out)?;
        }
        Some(out)
    }

    /// Sorts and removes duplicates like Slurm's `hostlist_uniq` (natural
    /// order of prefixes, then numbers). Unlike Slurm, a name that two ranges
    /// of different zero padding both hold (`a[5-10]` and `a[08-13]` both
    /// hold `a10`) is also kept only once, so the result is a true set.
    pub fn uniq(&mut self) {
        if self.ranges.len() <= 1 {
            return;
        }
        self.slurm_uniq();
        let mut seen = std::collections::HashSet::with_capacity(self.len);
        if self.iter().all(|n| seen.insert(n)) {
            return;
        }
        seen.clear();
        let names: Vec<String> = self.iter().filter(|n| seen.insert(n.clone())).collect();
        *self = Hostlist::from_names(names);
    }

    /// Slurm's `hostlist_uniq`: sort, then join overlapping ranges.
    fn slurm_uniq(&mut self) {
        let mut idx: Vec<usize> = (0..self.ranges.len()).collect();
        let mut tmp = Vec::with_capacity(idx.len());
        glibc_msort(&mut self.ranges, &mut idx, &mut tmp);
        let mut slots: Vec<Option<HostRange>> = self.ranges.drain(..).map(Some).collect();
        let mut out: Vec<HostRange> = Vec::with_capacity(slots.len());
        let mut len = 0usize;
        for i in idx {
            let Some(mut next) = slots.get_mut(i).and_then(Option::take) else {
                continue;
            };
            if let Some(last) = out.last_mut() {
                let dup = hostrange_join(last, &mut next);
                if dup >= 0 {
                    len = len.saturating_add((next.count() as usize).saturating_sub(dup as usize));
                    continue;
                }
            }
            len = len.saturating_add(next.count() as usize);
            out.push(next);
        }
        self.ranges = out;
        self.len = len;
    }

    /// The compressed form, exactly as `scontrol show hostlist` prints it.
    pub fn to_ranged_string(&self) -> String {
        let r = &self.ranges;
        let mut out = String::new();
        let mut i = 0;
        while i < r.len() {
            if i > 0 {
                out.push(',');
            }
            let start = i;
            let bracket = r[i].count() > 1 || (i + 1 < r.len() && within_range(&r[i], &r[i + 1]));
            out.push_str(&r[i].prefix);
            if bracket {
                out.push('[');
            }
            loop {
                if i > start {
                    out.push(',');
                }
                let h = &r[i];
                if !h.single {
                    push_padded(&mut out, h.lo, h.width);
                    if h.lo < h.hi {
                        out.push('-');
                        push_padded(&mut out, h.hi, h.width);
                    }
                }
                i += 1;
                if !(i < r.len() && within_range(&r[i], &r[i - 1])) {
                    break;
                }
            }
            if bracket {
                out.push(']');
            }
        }
        out
    }
}

impl fmt::Display for Hostlist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_ranged_string())
    }
}

impl std::str::FromStr for Hostlist {
    type Err = HostlistError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Hostlist::parse(s)
    }
}

impl<'a> IntoIterator for &'a Hostlist {
    type Item = String;
    type IntoIter = Names<'a>;

    fn into_iter(self) -> Names<'a> {
        self.iter()
    }
}

/// Iterator over the names of a [`Hostlist`].
#[derive(Debug, Clone)]
pub struct Names<'a> {
    ranges: &'a [HostRange],
    idx: usize,
    next: Option<u64>,
}

impl Iterator for Names<'_> {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        loop {
            let r = self.ranges.get(self.idx)?;
            if r.single {
                self.idx += 1;
                return Some(r.prefix.clone());
            }
            let n = self.next.unwrap_or(r.lo);
            if n <= r.hi {
                self.next = if n == r.hi { None } else { Some(n + 1) };
                if n == r.hi {
                    self.idx += 1;
                }
                return Some(r.name(n));
            }
            self.idx += 1;
            self.next = None;
        }
    }
}

/// Expands a hostlist expression like `scontrol show hostnames`, with the
/// default [`Limits`].
pub fn expand(expr: &str) -> Result<Vec<String>, HostlistError> {
    expand_with_limits(expr, Limits::default())
}

/// Expands a hostlist expression, refusing expansions over `limits`.
pub fn expand_with_limits(expr: &str, limits: Limits) -> Result<Vec<String>, HostlistError> {
    Ok(Hostlist::parse_with_limits(expr, limits)?.to_vec())
}

/// Expands a hostlist expression by the rules of one Slurm release, with the
/// default [`Limits`].
pub fn expand_for(expr: &str, syntax: Syntax) -> Result<Vec<String>, HostlistError> {
    Ok(Hostlist::parse_with(expr, syntax, Limits::default())?.to_vec())
}

/// Compresses literal host names into an expression, exactly as
/// `scontrol show hostlist` does for the names joined with commas (input order
/// and duplicates are kept: `n3,n1,n2` gives `n[3,1-2]`).
pub fn compress<S: AsRef<str>>(names: &[S]) -> String {
    Hostlist::from_names(names).to_ranged_string()
}

/// Re-compresses a hostlist expression: `scontrol show hostlist EXPR`.
pub fn compress_expr(expr: &str) -> Result<String, HostlistError> {
    Ok(Hostlist::parse(expr)?.to_ranged_string())
}

/// Re-compresses a hostlist expression by the rules of one Slurm release.
pub fn compress_expr_for(expr: &str, syntax: Syntax) -> Result<String, HostlistError> {
    Ok(Hostlist::parse_with(expr, syntax, Limits::default())?.to_ranged_string())
}

/// Whether the expression names `name`, without expanding it into names.
pub fn contains(expr: &str, name: &str) -> Result<bool, HostlistError> {
    Ok(Hostlist::parse_with_limits(expr, Limits::UNLIMITED)?.contains(name))
}

// ---------------------------------------------------------------------------
// Parsing: a port of Slurm's `_hostlist_create_bracketed` that first computes
// the size of every token, then builds the ranges.
// ---------------------------------------------------------------------------

/// One `lo-hi` range as written inside brackets.
#[derive(Debug, Clone, Copy)]
struct Range {
    lo: u64,
    hi: u64,
    width: usize,
}

impl Range {
    fn count(&self) -> u128 {
        u128::from(self.hi - self.lo) + 1
    }
}

/// A part of a bracketed name before its final bracket group.
#[derive(Debug)]
enum Seg<'a> {
    Lit(&'a str),
    Group(Vec<Range>),
}

/// What one token of the expression produces.
#[derive(Debug)]
enum Plan<'a> {
    /// A literal name (pushed like `hostlist_push_host`).
    Name(std::borrow::Cow<'a, str>),
    /// `segs` followed by the final bracket group `last`, then `suffix` (23.11+).
    Bracketed {
        segs: Vec<Seg<'a>>,
        last: Vec<Range>,
        suffix: Option<&'a str>,
    },
}

impl Plan<'_> {
    fn build(&self, hl: &mut Hostlist) {
        match self {
            Plan::Name(n) => hl.push_name(n),
            Plan::Bracketed { segs, last, suffix } => {
                let groups: Vec<&Vec<Range>> = segs
                    .iter()
                    .filter_map(|s| match s {
                        Seg::Group(g) => Some(g),
                        Seg::Lit(_) => None,
                    })
                    .collect();
                // Odometer over the prefix groups: Slurm varies the first
                // group fastest and the one next to the final group slowest.
                let mut pos: Vec<(usize, u64)> = groups
                    .iter()
                    .map(|g| (0, g.first().map_or(0, |r| r.lo)))
                    .collect();
                if groups.iter().any(|g| g.is_empty()) {
                    return;
                }
                loop {
                    let mut prefix = String::new();
                    let mut gi = 0;
                    for s in segs {
                        match s {
                            Seg::Lit(l) => prefix.push_str(l),
                            Seg::Group(g) => {
                                let (ri, v) = pos[gi];
                                let w = g.get(ri).map_or(0, |r| r.width);
                                push_padded(&mut prefix, v, w);
                                gi += 1;
                            }
                        }
                    }
                    for r in last {
                        if let Some(suffix) = suffix {
                            // Slurm pushes each suffixed name as a single host
                            for n in r.lo..=r.hi {
                                let mut name = prefix.clone();
                                push_padded(&mut name, n, r.width);
                                name.push_str(suffix);
                                hl.push_range(HostRange::single(&name));
                            }
                            continue;
                        }
                        hl.push_range(HostRange {
                            prefix: prefix.clone(),
                            lo: r.lo,
                            hi: r.hi,
                            width: r.width,
                            single: false,
                        });
                    }
                    // Advance the odometer.
                    let mut k = 0;
                    loop {
                        let Some(g) = groups.get(k) else {
                            return;
                        };
                        let (ri, v) = pos[k];
                        let Some(r) = g.get(ri) else {
                            return;
                        };
                        if v < r.hi {
                            pos[k] = (ri, v + 1);
                            break;
                        }
                        if let Some(nr) = g.get(ri + 1) {
                            pos[k] = (ri + 1, nr.lo);
                            break;
                        }
                        pos[k] = (0, g[0].lo);
                        k += 1;
                    }
                }
            }
        }
    }
}

/// Splits the expression into tokens like Slurm's `_next_tok` with the
/// separators `\t`, `,` and space (and newline since 23.02); brackets keep
/// their content in one token.
///
/// Slurm searches for the next `[` and `]` with `strchr()` from the current
/// position to the end of the whole string, which is quadratic on long
/// inputs; the positions are looked up in sorted tables here instead.
fn tokenize(s: &str, newline: bool) -> Vec<&str> {
    let b = s.as_bytes();
    let n = b.len();
    let is_sep = |c: u8| c == b'\t' || c == b',' || c == b' ' || (newline && c == b'\n');
    let opens: Vec<usize> = (0..n).filter(|&i| b[i] == b'[').collect();
    let closes: Vec<usize> = (0..n).filter(|&i| b[i] == b']').collect();
    // First position >= `from` in a sorted table.
    let first_from =
        |table: &[usize], from: usize| table.get(table.partition_point(|&p| p < from)).copied();
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        while pos < n && is_sep(b[pos]) {
            pos += 1;
        }
        if pos >= n {
            break;
        }
        let tok = pos;
        let mut parse = tok;
        let mut end = pos;
        'token: loop {
            while end < n && !is_sep(b[end]) {
                end += 1;
            }
            loop {
                let Some(open) = first_from(&opens, parse) else {
                    break 'token;
                };
                if open > end {
                    break 'token;
                }
                let Some(close) = first_from(&closes, parse) else {
                    break 'token;
                };
                if close < open {
                    break 'token;
                }
                if close < end {
                    parse = close + 1;
                } else {
                    end = close;
                    continue 'token;
                }
            }
        }
        out.push(&s[tok..end]);
        pos = end;
    }
    out
}

/// C `strtoul(s, &end, 10)`: returns the value and the number of bytes
/// consumed, `Ok(None)` when no digits were found, or an error on overflow
/// (where C would saturate to `ULONG_MAX`; that value is refused too).
fn strtoul(s: &str) -> Result<Option<(u64, usize)>, ()> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && is_c_space(b[i]) {
        i += 1;
    }
    let mut neg = false;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        neg = b[i] == b'-';
        i += 1;
    }
    let start = i;
    let mut v: u64 = 0;
    let mut overflow = false;
    while i < b.len() && b[i].is_ascii_digit() {
        match v
            .checked_mul(10)
            .and_then(|x| x.checked_add(u64::from(b[i] - b'0')))
        {
            Some(x) => v = x,
            None => overflow = true,
        }
        i += 1;
    }
    if i == start {
        return Ok(None);
    }
    if overflow || v == u64::MAX {
        return Err(());
    }
    Ok(Some((if neg { v.wrapping_neg() } else { v }, i)))
}

/// Context for range errors.
struct Ctx<'a> {
    expr: &'a str,
    syntax: Syntax,
}

impl Ctx<'_> {
    fn invalid(&self, range: &str, reason: &str) -> HostlistError {
        HostlistError::InvalidRange {
            expr: shorten(self.expr),
            range: shorten(range),
            reason: reason.to_string(),
        }
    }

    /// Slurm's `_parse_single_range`.
    fn single_range(&self, s: &str) -> Result<Range, HostlistError> {
        if s.contains('x') {
            return Err(self.invalid(s, "`x` (box ranges) is not allowed here"));
        }
        let (lo_s, hi_s) = match s.split_once('-') {
            Some((l, h)) => (l, Some(h)),
            None => (s, None),
        };
        if hi_s.is_some_and(|h| h.starts_with('-')) {
            return Err(self.invalid(s, "negative numbers are not allowed"));
        }
        let too_big = |_| self.invalid(s, "number does not fit in 64 bits");
        let Some((lo, lo_end)) = strtoul(lo_s).map_err(too_big)? else {
            return Err(self.invalid(s, "expected a number"));
        };
        let hi = match hi_s {
            Some(h) if !h.is_empty() => match strtoul(h).map_err(too_big)? {
                None => return Err(self.invalid(s, "expected a number after `-`")),
                Some((_, end)) if end != h.len() => {
                    return Err(self.invalid(s, "unexpected text after the number"));
                }
                Some((hi, _)) => hi,
            },
            _ => {
                if lo_end != lo_s.len() {
                    return Err(self.invalid(s, "unexpected text after the number"));
                }
                lo
            }
        };
        if lo > hi {
            return Err(self.invalid(s, "the range is reversed (start is greater than end)"));
        }
        let count = u128::from(hi - lo) + 1;
        if count > u128::from(SLURM_MAX_RANGE) {
            return Err(HostlistError::RangeTooLarge {
                expr: shorten(self.expr),
                range: shorten(s),
                count,
                max: SLURM_MAX_RANGE,
            });
        }
        Ok(Range {
            lo,
            hi,
            width: lo_s.len(),
        })
    }

    /// Slurm's `_parse_range_list`: comma-separated ranges.
    fn range_list(&self, s: &str) -> Result<Vec<Range>, HostlistError> {
        let mut out = Vec::new();
        for part in s.split(',') {
            if out.len() >= SLURM_MAX_RANGES {
                return Err(HostlistError::TooLarge {
                    expr: shorten(self.expr),
                    what: "too many comma-separated ranges in one bracket".to_string(),
                    limit: format!("{SLURM_MAX_RANGES} ranges"),
                });
            }
            out.push(self.single_range(part)?);
        }
        Ok(out)
    }

    /// The bracket structure of the part of a token before its final group.
    fn prefix_segs<'a>(&self, s: &'a str) -> Result<Vec<Seg<'a>>, HostlistError> {
        let mut rev: Vec<Seg<'a>> = Vec::new();
        let mut cur = s;
        loop {
            let found = cur
                .rfind('[')
                .and_then(|p| cur[p..].rfind(']').map(|q| (p, p + q)));
            let Some((p, q)) = found else {
                rev.push(Seg::Lit(cur));
                break;
            };
            let ranges = self.range_list(&cur[p + 1..q])?;
            let cnt: u128 = ranges.iter().map(Range::count).sum();
            if cnt > u128::from(SLURM_MAX_PREFIX_CNT) {
                return Err(HostlistError::TooLarge {
                    expr: shorten(self.expr),
                    what: format!("{cnt} values in a non-final bracket group"),
                    limit: format!("{SLURM_MAX_PREFIX_CNT} (Slurm's MAX_PREFIX_CNT)"),
                });
            }
            rev.push(Seg::Lit(&cur[q + 1..]));
            rev.push(Seg::Group(ranges));
            // Slurm recurses only when the head still holds a `[`; when it
            // does not, the next round finds no group and keeps it literal.
            cur = &cur[..p];
        }
        rev.reverse();
        Ok(rev)
    }

    /// One token of the expression.
    fn token<'a>(&self, tok: &'a str) -> Result<Plan<'a>, HostlistError> {
        let Some(p) = tok.rfind('[') else {
            return Ok(Plan::Name(tok.into()));
        };
        let (prefix, rest) = (&tok[..p], &tok[p + 1..]);
        let Some(q) = rest.find(']') else {
            if self.syntax >= Syntax::Slurm23_02 {
                return Err(HostlistError::MissingBracket {
                    expr: shorten(self.expr),
                    token: shorten(tok),
                });
            }
            // No closing bracket: Slurm 22.05 "tacks one on the end" of the
            // prefix, or keeps the text after `[` when there is no prefix.
            return Ok(if prefix.is_empty() {
                Plan::Name(rest.into())
            } else {
                Plan::Name(format!("{prefix}]").into())
            });
        };
        let after = &rest[q + 1..];
        let mut suffix = None;
        if !after.is_empty() && !after.starts_with(',') {
            if self.syntax < Syntax::Slurm23_11 {
                return Err(HostlistError::TrailingAfterBracket {
                    expr: shorten(self.expr),
                    found: shorten(after),
                });
            }
            suffix = Some(after);
        }
        let last = self.range_list(&rest[..q])?;
        let segs = self.prefix_segs(prefix)?;
        Ok(Plan::Bracketed { segs, last, suffix })
    }
}

/// Longest number (zero padding included) a bracket group can print.
fn max_number_len(g: &[Range]) -> u128 {
    g.iter()
        .map(|r| {
            r.width
                .max(r.hi.checked_ilog10().map_or(1, |d| d as usize + 1)) as u128
        })
        .max()
        .unwrap_or(0)
}

/// Parses every token and checks the limits before anything is built.
fn plan(expr: &str, syntax: Syntax, limits: Limits) -> Result<Vec<Plan<'_>>, HostlistError> {
    if expr.contains('\0') {
        return Err(HostlistError::NulByte {
            expr: shorten(&expr.replace('\0', "\\0")),
        });
    }
    let ctx = Ctx { expr, syntax };
    let mut plans = Vec::new();
    let (mut names, mut bytes, mut built): (u128, u128, u128) = (0, 0, 0);
    for tok in tokenize(expr, syntax.newline_separates()) {
        let p = ctx.token(tok)?;
        // Names, internal ranges, and the longest name the token can produce.
        let (n, ranges, per_name) = match &p {
            Plan::Name(name) => (1u128, 1u128, name.len() as u128),
            Plan::Bracketed { segs, last, suffix } => {
                let mut combos: u128 = 1;
                let mut longest =
                    max_number_len(last).saturating_add(suffix.map_or(0, str::len) as u128);
                for s in segs {
                    match s {
                        Seg::Group(g) => {
                            let c: u128 = g.iter().map(Range::count).sum();
                            combos = combos.saturating_mul(c);
                            longest = longest.saturating_add(max_number_len(g));
                        }
                        Seg::Lit(l) => longest = longest.saturating_add(l.len() as u128),
                    }
                }
                let per: u128 = last.iter().map(Range::count).sum();
                // a suffixed name is a range of its own
                let per_ranges = if suffix.is_some() {
                    per
                } else {
                    last.len() as u128
                };
                (
                    combos.saturating_mul(per),
                    combos.saturating_mul(per_ranges),
                    longest,
                )
            }
        };
        names = names.saturating_add(n);
        built = built.saturating_add(ranges);
        bytes = bytes.saturating_add(n.saturating_mul(per_name));
        if names > limits.max_names as u128 {
            return Err(HostlistError::TooLarge {
                expr: shorten(expr),
                what: format!("at least {names} names"),
                limit: format!("{} names", limits.max_names),
            });
        }
        if bytes > limits.max_bytes as u128 {
            return Err(HostlistError::TooLarge {
                expr: shorten(expr),
                what: format!("up to {bytes} bytes of names"),
                limit: format!("{} bytes", limits.max_bytes),
            });
        }
        if built > MAX_BUILT_RANGES {
            return Err(HostlistError::TooLarge {
                expr: shorten(expr),
                what: format!("at least {built} separate ranges"),
                limit: format!("{MAX_BUILT_RANGES} ranges"),
            });
        }
        plans.push(p);
    }
    Ok(plans)
}

#[cfg(test)]
mod tests;
