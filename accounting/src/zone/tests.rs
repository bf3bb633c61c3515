use super::*;

const HOUR: u64 = 3_600_000;

/// Unix ms of a UTC `YYYY-MM-DDTHH:MM`.
fn utc(s: &str) -> u64 {
    SiteZone::utc().parse_local(s).unwrap().unwrap()
}

#[test]
fn utc_periods_are_the_utc_calendars() {
    let z = SiteZone::utc();
    assert!(z.is_utc());
    let t = utc("2026-03-29T12:34");
    let (a, b, label) = z.period_at(Period::Day, t).unwrap();
    assert_eq!(
        (a, b - a, label.as_str()),
        (utc("2026-03-29"), 24 * HOUR, "2026-03-29")
    );
    let (a, _, label) = z.period_at(Period::Week, t).unwrap();
    assert_eq!((a, label.as_str()), (utc("2026-03-23"), "2026-W13"));
    let (a, b, label) = z.period_at(Period::Month, t).unwrap();
    assert_eq!(
        (a, b, label.as_str()),
        (utc("2026-03-01"), utc("2026-04-01"), "2026-03")
    );
}

#[test]
fn berlin_days_of_23_and_25_hours() {
    let z = SiteZone::named("Europe/Berlin").unwrap();
    assert!(!z.is_utc());
    // spring forward on 2026-03-29 (02:00 CET -> 03:00 CEST)
    let (a, b, label) = z.period_at(Period::Day, utc("2026-03-29T12:00")).unwrap();
    assert_eq!(label, "2026-03-29");
    assert_eq!(a, utc("2026-03-28T23:00"));
    assert_eq!(b, utc("2026-03-29T22:00"));
    assert_eq!(b - a, 23 * HOUR);
    // fall back on 2026-10-25 (03:00 CEST -> 02:00 CET)
    let (a, b, label) = z.period_at(Period::Day, utc("2026-10-25T12:00")).unwrap();
    assert_eq!(label, "2026-10-25");
    assert_eq!((a, b), (utc("2026-10-24T22:00"), utc("2026-10-25T23:00")));
    assert_eq!(b - a, 25 * HOUR);
    // an ordinary day
    let (a, b, _) = z.period_at(Period::Day, utc("2026-06-01T12:00")).unwrap();
    assert_eq!(b - a, 24 * HOUR);
    // the instant after local midnight is the next local day, still the previous UTC day
    assert_eq!(
        z.period_at(Period::Day, utc("2026-06-01T22:30")).unwrap().2,
        "2026-06-02"
    );
    assert_eq!(z.local_day(utc("2026-06-01T22:30")).unwrap(), 20_606);
}

#[test]
fn new_york_days_of_23_and_25_hours() {
    let z = SiteZone::named("America/New_York").unwrap();
    let (a, b, _) = z.period_at(Period::Day, utc("2026-03-08T12:00")).unwrap();
    assert_eq!((a, b - a), (utc("2026-03-08T05:00"), 23 * HOUR));
    let (a, b, _) = z.period_at(Period::Day, utc("2026-11-01T12:00")).unwrap();
    assert_eq!((a, b - a), (utc("2026-11-01T04:00"), 25 * HOUR));
    // a week and a month holding a change are an hour short or long
    let (a, b, label) = z.period_at(Period::Week, utc("2026-11-04T12:00")).unwrap();
    assert_eq!(label, "2026-W45");
    assert_eq!(b - a, 7 * 24 * HOUR);
    let (a, b, label) = z.period_at(Period::Week, utc("2026-10-28T12:00")).unwrap();
    assert_eq!(label, "2026-W44");
    assert_eq!(b - a, 7 * 24 * HOUR + HOUR);
    let (a, b, label) = z.period_at(Period::Month, utc("2026-03-15T12:00")).unwrap();
    assert_eq!(label, "2026-03");
    assert_eq!(b - a, 31 * 24 * HOUR - HOUR);
}

#[test]
fn weeks_and_months_follow_local_dates() {
    let z = SiteZone::named("Europe/Berlin").unwrap();
    // Sunday 22:30 UTC is Monday 00:30 in Berlin (summer): next ISO week there
    let t = utc("2026-03-29T22:30");
    assert_eq!(
        SiteZone::utc().period_at(Period::Week, t).unwrap().2,
        "2026-W13"
    );
    assert_eq!(z.period_at(Period::Week, t).unwrap().2, "2026-W14");
    // 31 October 23:30 UTC is 1 November 00:30 in Berlin (winter)
    let t = utc("2026-10-31T23:30");
    assert_eq!(
        SiteZone::utc().period_at(Period::Month, t).unwrap().2,
        "2026-10"
    );
    let (a, _, label) = z.period_at(Period::Month, t).unwrap();
    assert_eq!((a, label.as_str()), (utc("2026-10-31T23:00"), "2026-11"));
}

#[test]
fn local_dates_and_times_in_gaps_and_folds() {
    let z = SiteZone::named("Europe/Berlin").unwrap();
    assert_eq!(
        z.parse_local("2026-03-29"),
        Some(Ok(utc("2026-03-28T23:00")))
    );
    assert_eq!(
        z.parse_local("2026-07-01T12:00:30"),
        Some(Ok(utc("2026-07-01T10:00") + 30_000))
    );
    // 02:30 does not exist on 2026-03-29: the instant after the gap, 03:30 CEST
    assert_eq!(
        z.parse_local("2026-03-29T02:30"),
        Some(Ok(utc("2026-03-29T01:30")))
    );
    // 02:30 happens twice on 2026-10-25: the first, CEST
    assert_eq!(
        z.parse_local("2026-10-25T02:30"),
        Some(Ok(utc("2026-10-25T00:30")))
    );
    for bad in [
        "2026-13-01",
        "2026-02-30",
        "26-01-01",
        "2026-01-01T25:00",
        "2026-01-01T1:00",
        "x",
    ] {
        assert_eq!(z.parse_local(bad), None, "{bad}");
    }
    assert_eq!(z.format(utc("2026-10-25T00:30")), "2026-10-25T02:30:00");
    assert_eq!(z.format(utc("2026-10-25T01:30")), "2026-10-25T02:30:00");
}

#[test]
fn unknown_zones_are_refused_with_the_name() {
    let e = SiteZone::named("Europe/Atlantis").unwrap_err().to_string();
    assert!(
        e.contains("Europe/Atlantis") && e.contains("tz database"),
        "{e}"
    );
    assert!(SiteZone::named("../../etc/passwd").is_err());
}
