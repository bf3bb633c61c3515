//! The site's time zone: report periods (`day`, ISO `week`, `month`) and `YYYY-MM-DD` window
//! bounds are read in it, from the system tz database through `jiff` (`/usr/share/zoneinfo`,
//! `/etc/localtime`). A local day is from one local midnight to the next, so it lasts 23 or
//! 25 hours across a DST change; where midnight itself does not exist (a change at 00:00),
//! the day starts at the first instant that does.
//!
//! Rollups stay per UTC day ([`crate::day`]); a report cuts its window at the zone's period
//! boundaries and reads the UTC days those cuts fall in from the records
//! ([`crate::report::sums`]).

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ZonedDateTime};

use crate::report::Period;
use sgpu_spool::calendar::{civil_from_days, days_from_civil};

/// A time zone that could not be loaded or a local time that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneError {
    /// No zone of that name in the system tz database.
    #[error(
        "time zone {name:?} is not in the system tz database (/usr/share/zoneinfo): {why}; \
         give an IANA name such as Europe/Berlin or UTC (install tzdata)"
    )]
    Unknown {
        /// The name given.
        name: String,
        /// What jiff said.
        why: String,
    },
    /// The system's zone (`/etc/localtime`, `TZ`) could not be read.
    #[error(
        "the system time zone (/etc/localtime or TZ) could not be read: {0}; set time_zone \
         in acctd.toml"
    )]
    System(String),
    /// A date or time outside what the zone arithmetic handles.
    #[error("{0} is out of range")]
    Range(String),
}

/// A time zone by name, for report periods and window bounds.
#[derive(Debug, Clone)]
pub struct SiteZone {
    tz: TimeZone,
    name: String,
}

impl PartialEq for SiteZone {
    fn eq(&self, other: &SiteZone) -> bool {
        self.name == other.name
    }
}
impl Eq for SiteZone {}

impl Default for SiteZone {
    fn default() -> SiteZone {
        SiteZone::utc()
    }
}

/// The first instant of a local date in `tz` (its midnight, or the first instant after a
/// gap at midnight), ms.
fn day_start(tz: &TimeZone, date: Date) -> Result<i64, ZoneError> {
    let z = date
        .to_zoned_datetime(tz.clone())
        .and_then(|z| z.start_of_day())
        .map_err(|e| ZoneError::Range(format!("{date}: {e}")))?;
    Ok(z.timestamp().as_millisecond())
}

fn date_of_days(days: i64) -> Result<Date, ZoneError> {
    let (y, m, d) = civil_from_days(days);
    civil(y, m, d)
}

fn civil(y: i64, m: u32, d: u32) -> Result<Date, ZoneError> {
    let err = || ZoneError::Range(format!("{y:04}-{m:02}-{d:02}"));
    let y = i16::try_from(y).map_err(|_| err())?;
    let m = i8::try_from(m).map_err(|_| err())?;
    let d = i8::try_from(d).map_err(|_| err())?;
    Date::new(y, m, d).map_err(|_| err())
}

fn days_of(date: Date) -> i64 {
    days_from_civil(
        i64::from(date.year()),
        u32::try_from(date.month()).unwrap_or(1),
        u32::try_from(date.day()).unwrap_or(1),
    )
}

fn ms_u64(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

impl SiteZone {
    /// UTC.
    pub fn utc() -> SiteZone {
        SiteZone {
            tz: TimeZone::UTC,
            name: "UTC".into(),
        }
    }

    /// A zone of the system tz database by IANA name (`Europe/Berlin`, `UTC`).
    pub fn named(name: &str) -> Result<SiteZone, ZoneError> {
        let tz = TimeZone::get(name).map_err(|e| ZoneError::Unknown {
            name: name.to_string(),
            why: e.to_string(),
        })?;
        Ok(SiteZone {
            tz,
            name: name.to_string(),
        })
    }

    /// The system's zone (`TZ`, else `/etc/localtime`), named by its IANA name where the
    /// system says it.
    pub fn system() -> Result<SiteZone, ZoneError> {
        let tz = TimeZone::try_system().map_err(|e| ZoneError::System(e.to_string()))?;
        let name = tz.iana_name().unwrap_or("/etc/localtime").to_string();
        Ok(SiteZone { tz, name })
    }

    /// Whether the zone is UTC all the time (a fixed offset of 0): its periods start at UTC
    /// midnights.
    pub fn is_utc(&self) -> bool {
        self.tz.to_fixed_offset().is_ok_and(|o| o.seconds() == 0)
    }

    /// The zone's name as given (or the system's IANA name).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn zoned(&self, ms: u64) -> Result<ZonedDateTime, ZoneError> {
        let ts = i64::try_from(ms)
            .ok()
            .and_then(|ms| Timestamp::from_millisecond(ms).ok())
            .ok_or_else(|| ZoneError::Range(format!("instant {ms} ms")))?;
        Ok(ts.to_zoned_datetime(self.tz.clone()))
    }

    /// The local date (days since 1970-01-01 in local time) holding the instant `ms`.
    pub fn local_day(&self, ms: u64) -> Result<i64, ZoneError> {
        Ok(days_of(self.zoned(ms)?.date()))
    }

    /// The first instant of the local date `days` (days since 1970-01-01), ms; instants
    /// before 1970 are 0.
    pub fn day_start_ms(&self, days: i64) -> Result<u64, ZoneError> {
        Ok(ms_u64(day_start(&self.tz, date_of_days(days)?)?))
    }

    /// The period of kind `p` holding the instant `ms`: its first instant, the first instant
    /// of the next period (ms), and its label (`YYYY-MM-DD`, `YYYY-Www`, `YYYY-MM`).
    pub fn period_at(&self, p: Period, ms: u64) -> Result<(u64, u64, String), ZoneError> {
        let date = self.zoned(ms)?.date();
        let days = days_of(date);
        let (first, next) = match p {
            Period::Day => (days, days + 1),
            Period::Week => {
                let monday = days - i64::from(date.weekday().to_monday_zero_offset());
                (monday, monday + 7)
            }
            Period::Month => {
                let (y, m) = (
                    i64::from(date.year()),
                    u32::try_from(date.month()).unwrap_or(1),
                );
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (days_from_civil(y, m, 1), days_from_civil(ny, nm, 1))
            }
        };
        let label = p.label(u32::try_from(first).unwrap_or(0));
        Ok((self.day_start_ms(first)?, self.day_start_ms(next)?, label))
    }

    /// Reads a window bound in this zone: `YYYY-MM-DD` (the day's first instant) or
    /// `YYYY-MM-DDTHH:MM[:SS]` (local wall time; in a DST gap the instant after it, in a
    /// repeated hour the first of the two, as RFC 5545's "compatible" rule). `None`: not of
    /// these forms.
    pub fn parse_local(&self, text: &str) -> Option<Result<u64, ZoneError>> {
        let (date, time) = match text.split_once('T') {
            Some((d, t)) => (d, Some(t)),
            None => (text, None),
        };
        let days = i64::from(crate::day::parse_day(date)?);
        let d = match date_of_days(days) {
            Ok(d) => d,
            Err(e) => return Some(Err(e)),
        };
        let Some(time) = time else {
            return Some(day_start(&self.tz, d).map(ms_u64));
        };
        let mut parts = time.split(':');
        let mut field = |max: i8| -> Option<i8> {
            let s = parts.next()?;
            if s.len() != 2 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse::<i8>().ok().filter(|v| *v <= max)
        };
        let h = field(23)?;
        let mi = field(59)?;
        let s = match time.len() {
            5 => 0,
            8 => field(59)?,
            _ => return None,
        };
        let dt = DateTime::from(d)
            .with()
            .hour(h)
            .minute(mi)
            .second(s)
            .build()
            .ok()?;
        Some(
            self.tz
                .to_zoned_datetime(dt)
                .map(|z| ms_u64(z.timestamp().as_millisecond()))
                .map_err(|e| ZoneError::Range(format!("{text}: {e}"))),
        )
    }

    /// Formats the instant `ms` as local `YYYY-MM-DDTHH:MM:SS`.
    pub fn format(&self, ms: u64) -> String {
        match self.zoned(ms) {
            Ok(z) => z.datetime().strftime("%Y-%m-%dT%H:%M:%S").to_string(),
            Err(_) => format!("{ms} ms"),
        }
    }
}

#[cfg(test)]
mod tests;
