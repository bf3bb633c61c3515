//! Slurm's time formats for `-S/--starttime` and `-E/--endtime`, as `man sacct` documents
//! them. `sgpu report` and `sgpu jobs` read them in the site's time zone (acctd's,
//! [`parse_time_in`]; `--utc` for UTC), `sgpu history` in UTC ([`parse_time`]):
//!
//! - `YYYY-MM-DD[THH:MM[:SS]]`
//! - `MMDD[YY][-HH:MM[:SS]]`, `MM.DD[.YY][-HH:MM[:SS]]`, `MM/DD[/YY][-HH:MM[:SS]]`
//!   (year: the current one when left out; `YY` is 20YY)
//! - `HH:MM[:SS][AM|PM]`: that time today
//! - `now[{+|-}count[seconds|minutes|hours|days|weeks]]` (seconds by default; any prefix
//!   of a unit name, e.g. `now-7days`, `now-3hours`, `now+30min`)
//! - `today` and `midnight` (00:00 today), `noon` (12:00), `elevenses` (11:00), `fika`
//!   (15:00), `teatime` (16:00)
//! - a bare number of seconds since the epoch (for scripts)

use std::fmt;

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use sgpu_spool::calendar::{self, DAY_S, civil_from_days, days_from_civil};

/// `-S/--starttime` and `-E/--endtime` (sacct's names), shared by `sgpu report`, `sgpu jobs`
/// and `sgpu history`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WindowArgs {
    /// Window start (Slurm time formats, UTC; default: report yesterday 00:00, jobs today
    /// 00:00, history the oldest event).
    #[arg(
        short = 'S',
        long = "starttime",
        value_name = "TIME",
        allow_hyphen_values = true
    )]
    pub start: Option<String>,
    /// Window end, exclusive (default: report today 00:00, jobs and history now).
    #[arg(
        short = 'E',
        long = "endtime",
        value_name = "TIME",
        allow_hyphen_values = true
    )]
    pub end: Option<String>,
}

impl WindowArgs {
    /// The flags read as Unix seconds (relative forms against `now`), `None` where not given;
    /// an error names the flag.
    pub fn read(&self, now: i64) -> Result<(Option<i64>, Option<i64>), WindowError> {
        let one = |flag: &'static str, v: &Option<String>| {
            v.as_deref()
                .map(|t| parse_time(t, now).map_err(|error| WindowError { flag, error }))
                .transpose()
        };
        Ok((
            one("-S/--starttime", &self.start)?,
            one("-E/--endtime", &self.end)?,
        ))
    }
}

impl WindowArgs {
    /// [`WindowArgs::read`] in the time zone `tz`: dates, clock times and named times are
    /// wall-clock times there, `now[+-N]` and seconds since the epoch are instants.
    pub fn read_in(
        &self,
        now: i64,
        tz: &TimeZone,
    ) -> Result<(Option<i64>, Option<i64>), WindowError> {
        let one = |flag: &'static str, v: &Option<String>| {
            v.as_deref()
                .map(|t| parse_time_in(t, now, tz).map_err(|error| WindowError { flag, error }))
                .transpose()
        };
        Ok((
            one("-S/--starttime", &self.start)?,
            one("-E/--endtime", &self.end)?,
        ))
    }
}

/// The offset of `tz` from UTC at the instant `secs`, seconds.
fn offset_at(tz: &TimeZone, secs: i64) -> i64 {
    Timestamp::from_second(secs).map_or(0, |t| i64::from(tz.to_offset(t).seconds()))
}

/// The instant of the wall-clock time `local` (seconds since 1970-01-01T00:00 of the local
/// calendar) in `tz`: in a DST gap the instant after it, in a repeated hour the first
/// ("compatible", as acctd reads dates).
pub fn local_to_instant(local: i64, tz: &TimeZone, input: &str) -> Result<i64, TimeError> {
    let (days, secs) = (local.div_euclid(DAY_S), local.rem_euclid(DAY_S));
    let (y, m, d) = civil_from_days(days);
    let out_of_range = || err(input, "out of range");
    let dt = DateTime::new(
        i16::try_from(y).map_err(|_| out_of_range())?,
        i8::try_from(m).map_err(|_| out_of_range())?,
        i8::try_from(d).map_err(|_| out_of_range())?,
        i8::try_from(secs / 3600).map_err(|_| out_of_range())?,
        i8::try_from(secs / 60 % 60).map_err(|_| out_of_range())?,
        i8::try_from(secs % 60).map_err(|_| out_of_range())?,
        0,
    )
    .map_err(|e| err(input, e.to_string()))?;
    tz.to_zoned_datetime(dt)
        .map(|z| z.timestamp().as_second())
        .map_err(|e| err(input, e.to_string()))
}

/// [`parse_time`] in the time zone `tz`: `now[+-N]` and seconds since the epoch are
/// instants; every other form is a wall-clock time in `tz` ("today" is `tz`'s date).
pub fn parse_time_in(input: &str, now: i64, tz: &TimeZone) -> Result<i64, TimeError> {
    let s = input.trim();
    let instant = s.to_ascii_lowercase().starts_with("now")
        || (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.len() > 6);
    if instant {
        return parse_time(input, now);
    }
    let local = parse_time(input, now + offset_at(tz, now))?;
    local_to_instant(local, tz, input)
}

/// The first instant of the local date `days` days after today's in `tz` (0: today 00:00,
/// -1: yesterday 00:00).
pub fn local_midnight(now: i64, tz: &TimeZone, days: i64) -> i64 {
    let today = (now + offset_at(tz, now)).div_euclid(DAY_S);
    let day = today + days;
    let z = civil_from_days(day);
    let date = i16::try_from(z.0).ok().and_then(|y| {
        jiff::civil::Date::new(y, i8::try_from(z.1).ok()?, i8::try_from(z.2).ok()?).ok()
    });
    date.and_then(|d| d.to_zoned_datetime(tz.clone()).ok())
        .and_then(|z| z.start_of_day().ok())
        .map_or(day * DAY_S, |z| z.timestamp().as_second())
}

/// Formats seconds since the epoch as `YYYY-MM-DDTHH:MM:SS` in `tz`, like sacct in its
/// local time.
pub fn format_time_in(secs: i64, tz: &TimeZone) -> String {
    match Timestamp::from_second(secs) {
        Ok(t) => t
            .to_zoned_datetime(tz.clone())
            .datetime()
            .strftime("%Y-%m-%dT%H:%M:%S")
            .to_string(),
        Err(_) => format_time(secs),
    }
}

/// A `-S`/`-E` value that could not be read: names the flag, then what [`TimeError`] says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {error}")]
pub struct WindowError {
    /// The flag, e.g. `-S/--starttime`.
    pub flag: &'static str,
    /// What is wrong with its value (and the valid formats).
    pub error: TimeError,
}

/// The current time, Unix seconds.
pub fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A time that could not be read; says which formats are valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeError {
    /// The text given.
    pub input: String,
    /// What is wrong with it.
    pub why: String,
}

impl fmt::Display for TimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?}: {}; valid: YYYY-MM-DD[THH:MM[:SS]], MMDD[YY][-HH:MM[:SS]], MM/DD[/YY], \
             HH:MM[:SS], now[-+N{{seconds,minutes,hours,days,weeks}}], today, midnight, noon, \
             elevenses, fika, teatime",
            self.input, self.why
        )
    }
}

impl std::error::Error for TimeError {}

/// Formats seconds since the epoch as `YYYY-MM-DDTHH:MM:SS` (UTC), like sacct.
pub fn format_time(secs: i64) -> String {
    calendar::format_datetime(secs)
}

/// Formats a duration like sacct's `Elapsed`: `[D-]HH:MM:SS`.
pub fn format_elapsed(secs: u64) -> String {
    let (d, s) = (secs / 86_400, secs % 86_400);
    let hms = format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
    if d > 0 { format!("{d}-{hms}") } else { hms }
}

fn num(s: &str, what: &str, input: &str) -> Result<i64, TimeError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(input, format!("{what} {s:?} is not a number")));
    }
    s.parse()
        .map_err(|_| err(input, format!("{what} {s:?} is out of range")))
}

fn err(input: &str, why: impl Into<String>) -> TimeError {
    TimeError {
        input: input.to_string(),
        why: why.into(),
    }
}

/// `HH:MM[:SS]` as seconds into the day.
fn clock(s: &str, input: &str) -> Result<i64, TimeError> {
    let parts: Vec<&str> = s.split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(err(input, format!("{s:?} is not HH:MM[:SS]")));
    }
    let h = num(parts[0], "hour", input)?;
    let m = num(parts[1], "minute", input)?;
    let sec = match parts.get(2) {
        Some(p) => num(p, "second", input)?,
        None => 0,
    };
    if h > 23 || m > 59 || sec > 59 {
        return Err(err(input, format!("{s:?} is not a time of day")));
    }
    Ok(h * 3600 + m * 60 + sec)
}

fn date(y: i64, m: i64, d: i64, input: &str) -> Result<i64, TimeError> {
    let not_a_date = || err(input, format!("{y:04}-{m:02}-{d:02} is not a date"));
    let (Ok(mu), Ok(du)) = (u32::try_from(m), u32::try_from(d)) else {
        return Err(not_a_date());
    };
    let n = days_from_civil(y, mu, du);
    if !(1..=12).contains(&mu) || du < 1 || civil_from_days(n) != (y, mu, du) {
        return Err(not_a_date());
    }
    Ok(n)
}

/// Parses one of Slurm's time formats relative to `now` (seconds since the epoch, UTC);
/// the result is seconds since the epoch.
pub fn parse_time(input: &str, now: i64) -> Result<i64, TimeError> {
    let s = input.trim();
    let lower = s.to_ascii_lowercase();
    let today = now.div_euclid(DAY_S) * DAY_S;
    let named = match lower.as_str() {
        "today" | "midnight" => Some(0),
        "noon" => Some(12),
        "elevenses" => Some(11),
        "fika" => Some(15),
        "teatime" => Some(16),
        _ => None,
    };
    if let Some(h) = named {
        return Ok(today + h * 3600);
    }
    if let Some(rest) = lower.strip_prefix("now") {
        return relative(rest, now, input);
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.len() > 6 {
        return num(s, "seconds", input);
    }
    if let Some((d, t)) = s.split_once('T') {
        let day = iso_date(d, input)?;
        return Ok(day * DAY_S + clock(t, input)?);
    }
    if s.len() == 10 && s.as_bytes()[4] == b'-' && s.as_bytes()[7] == b'-' {
        return Ok(iso_date(s, input)? * DAY_S);
    }
    // HH:MM[:SS][AM|PM]
    if s.contains(':') && !s.contains(['-', '/', '.']) {
        let (t, pm) = match lower.strip_suffix("pm") {
            Some(t) => (t.trim(), Some(true)),
            None => match lower.strip_suffix("am") {
                Some(t) => (t.trim(), Some(false)),
                None => (lower.as_str(), None),
            },
        };
        let mut secs = clock(t, input)?;
        if let Some(pm) = pm {
            let h = secs / 3600;
            if !(1..=12).contains(&h) {
                return Err(err(input, "hour must be 1 to 12 with AM/PM"));
            }
            secs = secs % 3600 + (h % 12 + if pm { 12 } else { 0 }) * 3600;
        }
        return Ok(today + secs);
    }
    // MMDD[YY], MM.DD[.YY], MM/DD[/YY], each with an optional -HH:MM[:SS].
    let (d, t) = match s.split_once('-') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let (year_now, _, _) = civil_from_days(now.div_euclid(DAY_S));
    let fields: Vec<&str> = if d.contains(['.', '/']) {
        d.split(['.', '/']).collect()
    } else if (d.len() == 4 || d.len() == 6) && d.is_ascii() {
        // (byte slicing: ASCII only; `𝋀` is 4 bytes and panicked here, found by
        // tests/fuzz_inputs.rs)
        vec![&d[0..2], &d[2..4]]
            .into_iter()
            .chain((d.len() == 6).then(|| &d[4..6]))
            .collect()
    } else {
        return Err(err(input, "not a recognised time format"));
    };
    if !(2..=3).contains(&fields.len()) {
        return Err(err(input, "expected month and day, and optionally a year"));
    }
    let m = num(fields[0], "month", input)?;
    let dd = num(fields[1], "day", input)?;
    let y = match fields.get(2) {
        Some(y) if y.len() == 2 => 2000 + num(y, "year", input)?,
        Some(y) if y.len() == 4 => num(y, "year", input)?,
        Some(y) => return Err(err(input, format!("year {y:?} must be YY or YYYY"))),
        None => year_now,
    };
    let day = date(y, m, dd, input)?;
    let secs = match t {
        Some(t) => clock(t, input)?,
        None => 0,
    };
    Ok(day * DAY_S + secs)
}

fn iso_date(d: &str, input: &str) -> Result<i64, TimeError> {
    let p: Vec<&str> = d.split('-').collect();
    if p.len() != 3 || p[0].len() != 4 {
        return Err(err(input, format!("{d:?} is not YYYY-MM-DD")));
    }
    date(
        num(p[0], "year", input)?,
        num(p[1], "month", input)?,
        num(p[2], "day", input)?,
        input,
    )
}

fn relative(rest: &str, now: i64, input: &str) -> Result<i64, TimeError> {
    if rest.is_empty() {
        return Ok(now);
    }
    let (sign, rest) = match rest.as_bytes()[0] {
        b'+' => (1, &rest[1..]),
        b'-' => (-1, &rest[1..]),
        _ => return Err(err(input, "expected now, now+N or now-N")),
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let count = num(&rest[..digits], "count", input)?;
    let unit = rest[digits..].trim();
    let scale = if unit.is_empty() {
        1
    } else {
        let units = [
            ("seconds", 1),
            ("minutes", 60),
            ("hours", 3600),
            ("days", DAY_S),
            ("weeks", 7 * DAY_S),
        ];
        units
            .iter()
            .find(|(name, _)| name.starts_with(unit))
            .map(|&(_, s)| s)
            .ok_or_else(|| err(input, format!("unknown unit {unit:?}")))?
    };
    count
        .checked_mul(scale)
        .map(|d| now + sign * d)
        .ok_or_else(|| err(input, "offset out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-23T12:34:56Z, a Monday.
    const NOW: i64 = 1_795_437_296;
    const TODAY: i64 = 1_795_392_000;

    fn p(s: &str) -> i64 {
        parse_time(s, NOW).unwrap()
    }

    #[test]
    fn now_and_the_named_times() {
        assert_eq!(format_time(NOW), "2026-11-23T12:34:56");
        assert_eq!(format_time(TODAY), "2026-11-23T00:00:00");
        assert_eq!(p("now"), NOW);
        assert_eq!(p("NOW"), NOW);
        assert_eq!(p("now-7days"), NOW - 7 * DAY_S);
        assert_eq!(p("now-3hours"), NOW - 3 * 3600);
        assert_eq!(p("now+30min"), NOW + 1800);
        assert_eq!(p("now-90"), NOW - 90);
        assert_eq!(p("now-2weeks"), NOW - 14 * DAY_S);
        assert_eq!(p("today"), TODAY);
        assert_eq!(p("midnight"), TODAY);
        assert_eq!(p("noon"), TODAY + 12 * 3600);
        assert_eq!(p("elevenses"), TODAY + 11 * 3600);
        assert_eq!(p("fika"), TODAY + 15 * 3600);
        assert_eq!(p("teatime"), TODAY + 16 * 3600);
    }

    #[test]
    fn dates_and_clock_times() {
        assert_eq!(format_time(p("2026-11-01")), "2026-11-01T00:00:00");
        assert_eq!(format_time(p("2026-11-01T08:30")), "2026-11-01T08:30:00");
        assert_eq!(format_time(p("2024-02-29T23:59:59")), "2024-02-29T23:59:59");
        assert_eq!(format_time(p("1101")), "2026-11-01T00:00:00");
        assert_eq!(format_time(p("110125")), "2025-11-01T00:00:00");
        assert_eq!(format_time(p("1101-13:05")), "2026-11-01T13:05:00");
        assert_eq!(format_time(p("11/01/25")), "2025-11-01T00:00:00");
        assert_eq!(format_time(p("11.01")), "2026-11-01T00:00:00");
        assert_eq!(format_time(p("11.01.2024-01:02:03")), "2024-11-01T01:02:03");
        assert_eq!(format_time(p("08:15")), "2026-11-23T08:15:00");
        assert_eq!(format_time(p("4:00PM")), "2026-11-23T16:00:00");
        assert_eq!(format_time(p("12:30am")), "2026-11-23T00:30:00");
        assert_eq!(p("1795437296"), NOW);
    }

    #[test]
    fn bad_times_say_what_is_valid() {
        for bad in [
            "2026-02-30",
            "2026-13-01",
            "25:00",
            "now-7fortnights",
            "now*2",
            "yesterday",
            "1332",
            "13:00PM",
            "2026-11-01T8",
            "",
        ] {
            let e = parse_time(bad, NOW).unwrap_err();
            assert!(e.to_string().contains("valid: YYYY-MM-DD"), "{bad}: {e}");
        }
    }

    #[test]
    fn elapsed_like_sacct() {
        assert_eq!(format_elapsed(59), "00:00:59");
        assert_eq!(format_elapsed(3_600 + 61), "01:01:01");
        assert_eq!(format_elapsed(86_400 * 2 + 5), "2-00:00:05");
    }

    #[test]
    fn times_in_a_time_zone() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let utc = TimeZone::UTC;
        // UTC: the same as parse_time
        for s in [
            "2026-11-01",
            "today",
            "noon",
            "1101-13:05",
            "now-7days",
            "1795437296",
        ] {
            assert_eq!(parse_time_in(s, NOW, &utc), parse_time(s, NOW), "{s}");
        }
        // Berlin (CET, UTC+1 in November): wall-clock times an hour earlier in UTC
        let b = |s: &str| parse_time_in(s, NOW, &berlin).unwrap();
        assert_eq!(b("2026-11-01"), p("2026-10-31T23:00"));
        assert_eq!(b("today"), TODAY - 3600);
        assert_eq!(b("08:15"), TODAY + 7 * 3600 + 15 * 60);
        // instants stay instants
        assert_eq!(b("now-1hours"), NOW - 3600);
        assert_eq!(b("1795437296"), 1_795_437_296);
        // the 23-hour day and the repeated hour
        assert_eq!(b("2026-03-30") - b("2026-03-29"), 23 * 3600);
        assert_eq!(b("2026-10-26") - b("2026-10-25"), 25 * 3600);
        assert_eq!(b("2026-10-25T02:30"), p("2026-10-25T00:30"));
        assert_eq!(b("2026-03-29T02:30"), p("2026-03-29T01:30"));
        // today 00:00 and yesterday 00:00 there; 23:30 UTC is already tomorrow in Berlin
        assert_eq!(local_midnight(NOW, &berlin, 0), TODAY - 3600);
        assert_eq!(local_midnight(NOW, &berlin, -1), TODAY - DAY_S - 3600);
        assert_eq!(
            local_midnight(TODAY + 23 * 3600 + 1800, &berlin, 0),
            TODAY + DAY_S - 3600
        );
        assert_eq!(local_midnight(NOW, &utc, -1), TODAY - DAY_S);
        assert_eq!(
            format_time_in(p("2026-10-25T00:30"), &berlin),
            "2026-10-25T02:30:00"
        );
        assert_eq!(
            format_time_in(p("2026-10-25T01:30"), &berlin),
            "2026-10-25T02:30:00"
        );
        assert_eq!(format_time_in(NOW, &utc), format_time(NOW));
    }

    #[test]
    fn multibyte_input_is_an_error_not_a_panic() {
        // a 4-byte character was sliced at byte 2 (found by tests/fuzz_inputs.rs)
        for bad in ["𝋀", "é12", "12é", "1𝋀1"] {
            assert!(parse_time(bad, NOW).is_err(), "{bad}");
        }
    }
}
