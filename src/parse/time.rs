//! Timestamps and dates from what bots write: ISO-8601 strings (with `T` or
//! a space, `.` or `,` before the fraction, `Z` or a `±hh:mm` offset, or no
//! offset at all) and epoch numbers.
//!
//! Epoch numbers are read by magnitude, as bots write seconds, milliseconds
//! or finer: below 10^11 they are seconds (up to the year 5138), below 10^14
//! milliseconds, below 10^17 microseconds, else nanoseconds. A string
//! without an offset is a wall-clock time in the column's time zone (the
//! server's when the column names none), as ClickHouse reads it.

use jiff::tz::TimeZone;

use super::flat::same_bytes;

/// An instant: seconds since 1970-01-01 UTC and nanoseconds into the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instant {
    pub secs: i64,
    pub nanos: u32,
}

impl Instant {
    /// Unix milliseconds.
    pub fn unix_ms(self) -> i64 {
        self.secs.saturating_mul(1000) + i64::from(self.nanos / 1_000_000)
    }
}

/// A calendar date and time as written, with its offset if it had one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub year: i32,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub nanos: u32,
    /// Seconds east of UTC; `None` when the text gave no offset.
    pub offset: Option<i32>,
    /// Whether the text had a time of day at all.
    pub has_time: bool,
}

/// Parses an ISO-8601 date or date-time.
pub fn parse_iso(s: &str) -> Option<Written> {
    let b = s.trim().as_bytes();
    let mut p = Cursor { b, i: 0 };
    let neg = p.eat(b'-');
    let year = i32::try_from(p.digits(4, 4)?).ok()?;
    let year = if neg { -year } else { year };
    p.expect(b'-')?;
    let month = u8::try_from(p.digits(2, 2)?).ok()?;
    p.expect(b'-')?;
    let day = u8::try_from(p.digits(2, 2)?).ok()?;
    let mut w = Written {
        year,
        month,
        day,
        hour: 0,
        minute: 0,
        second: 0,
        nanos: 0,
        offset: None,
        has_time: false,
    };
    if days_in_month(year, month)? < day || day == 0 {
        return None;
    }
    if p.done() {
        return Some(w);
    }
    if !(p.eat(b'T') || p.eat(b't') || p.eat(b' ')) {
        return None;
    }
    w.has_time = true;
    w.hour = u8::try_from(p.digits(2, 2)?).ok()?;
    p.expect(b':')?;
    w.minute = u8::try_from(p.digits(2, 2)?).ok()?;
    if p.eat(b':') {
        w.second = u8::try_from(p.digits(2, 2)?).ok()?;
        if p.eat(b'.') || p.eat(b',') {
            let start = p.i;
            let mut nanos = 0u32;
            while let Some(d) = p.peek().filter(u8::is_ascii_digit) {
                if p.i - start < 9 {
                    nanos = nanos * 10 + u32::from(d - b'0');
                }
                p.i += 1;
            }
            let n = p.i - start;
            if n == 0 {
                return None;
            }
            for _ in n..9 {
                nanos *= 10;
            }
            w.nanos = nanos;
        }
    }
    // A leap second is read as the last second of its minute.
    if w.hour > 23 || w.minute > 59 || w.second > 60 {
        return None;
    }
    w.second = w.second.min(59);
    p.eat(b' ');
    if p.eat(b'Z') || p.eat(b'z') {
        w.offset = Some(0);
    } else if let Some(sign) = p.peek().filter(|c| *c == b'+' || *c == b'-') {
        p.i += 1;
        let h = i32::try_from(p.digits(2, 2)?).ok()?;
        p.eat(b':');
        let m = if p.done() {
            0
        } else {
            i32::try_from(p.digits(2, 2)?).ok()?
        };
        if h > 23 || m > 59 {
            return None;
        }
        let off = h * 3600 + m * 60;
        w.offset = Some(if sign == b'-' { -off } else { off });
    } else if p.rest() == b"UTC" || p.rest() == b"GMT" {
        p.i = b.len();
        w.offset = Some(0);
    }
    p.done().then_some(w)
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        self.i += usize::from(hit);
        hit
    }
    fn expect(&mut self, c: u8) -> Option<()> {
        self.eat(c).then_some(())
    }
    fn done(&self) -> bool {
        self.i == self.b.len()
    }
    fn rest(&self) -> &[u8] {
        &self.b[self.i..]
    }
    fn digits(&mut self, min: usize, max: usize) -> Option<u32> {
        let start = self.i;
        let mut v = 0u32;
        while self.i - start < max {
            match self.peek() {
                Some(d) if d.is_ascii_digit() => {
                    v = v * 10 + u32::from(d - b'0');
                    self.i += 1;
                }
                _ => break,
            }
        }
        (self.i - start >= min).then_some(v)
    }
}

fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i32, m: u8) -> Option<u8> {
    Some(match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => return None,
    })
}

/// Days from 1970-01-01 to a proleptic Gregorian date.
pub fn days_from_civil(y: i32, m: u8, d: u8) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date (year, month, day) of a day count from 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // Always 1..=31 and 1..=12.
    let d = u8::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u8::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl Written {
    /// The instant this names: exact with an offset, else a wall-clock time
    /// in `tz`.
    pub fn instant(&self, tz: &TimeZone) -> Option<Instant> {
        let days = days_from_civil(self.year, self.month, self.day);
        let wall = days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second);
        let secs = match self.offset {
            Some(off) => wall - i64::from(off),
            None if *tz == TimeZone::UTC => wall,
            None => {
                let dt = jiff::civil::DateTime::new(
                    i16::try_from(self.year).ok()?,
                    i8::try_from(self.month).ok()?,
                    i8::try_from(self.day).ok()?,
                    i8::try_from(self.hour).ok()?,
                    i8::try_from(self.minute).ok()?,
                    i8::try_from(self.second).ok()?,
                    0,
                )
                .ok()?;
                tz.to_ambiguous_timestamp(dt).compatible().ok()?.as_second()
            }
        };
        Some(Instant {
            secs,
            nanos: self.nanos,
        })
    }
}

/// An epoch number (JSON number text, or a string of digits) as an instant.
pub fn parse_epoch(text: &str) -> Option<Instant> {
    let t = text.trim();
    let (neg, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, f),
        None => (digits, ""),
    };
    if int.is_empty()
        || !int.bytes().all(|c| c.is_ascii_digit())
        || !frac.bytes().all(|c| c.is_ascii_digit())
        || int.len() > 19
    {
        return None;
    }
    let whole: i128 = int.parse().ok()?;
    // The unit by magnitude: s, ms, µs, ns.
    let exp = match whole {
        w if w < 100_000_000_000 => 0,
        w if w < 100_000_000_000_000 => 3,
        w if w < 100_000_000_000_000_000 => 6,
        _ => 9,
    };
    // Total nanoseconds, from the integer part and up to 9 digits of fraction.
    let unit_ns = 10i128.pow(9 - exp);
    let mut frac_ns: i128 = 0;
    let mut scale = unit_ns;
    for c in frac.bytes() {
        scale /= 10;
        if scale == 0 {
            break;
        }
        frac_ns += i128::from(c - b'0') * scale;
    }
    let mut total = whole * unit_ns + frac_ns;
    if neg {
        total = -total;
    }
    let secs = i64::try_from(total.div_euclid(1_000_000_000)).ok()?;
    let nanos = u32::try_from(total.rem_euclid(1_000_000_000)).ok()?;
    Some(Instant { secs, nanos })
}

/// Reads a JSON string or number as an instant. `text` is the unescaped
/// string or the number's text; `quoted` says which it was.
pub fn instant(text: &str, quoted: bool, tz: &TimeZone) -> Result<Instant, String> {
    let parsed = if quoted {
        parse_iso(text)
            .and_then(|w| w.instant(tz))
            .or_else(|| parse_epoch(text))
    } else {
        parse_epoch(text)
    };
    parsed.ok_or_else(|| {
        format!(
            "cannot read {} as a timestamp (ISO-8601 or epoch seconds/milliseconds)",
            super::reject::quote_short(text)
        )
    })
}

/// The event time of `text` (an unescaped JSON string) in Unix
/// milliseconds, for the delay histogram; a wall-clock time without offset
/// is taken as UTC.
///
/// A bot writes many events a second, so the instant of the whole second
/// (`YYYY-MM-DDTHH:MM:SS` and the offset after the fraction) is kept from
/// the line before: only the fraction is read when they are the same.
pub fn event_ms(text: &str) -> Option<i64> {
    thread_local! {
        static LAST: std::cell::RefCell<(String, i64)> = const {
            std::cell::RefCell::new((String::new(), 0))
        };
    }
    let b = text.as_bytes();
    // The fraction's milliseconds and where the offset starts, if the
    // fraction follows a `.` at 19.
    let fraction = || {
        if b.get(19) != Some(&b'.') {
            return (0, 19);
        }
        let digits = b[20..].iter().take_while(|c| c.is_ascii_digit()).count();
        let ms = b[20..20 + digits.min(3)]
            .iter()
            .chain(std::iter::repeat(&b'0'))
            .take(3)
            .fold(0i64, |v, d| v * 10 + i64::from(d - b'0'));
        (ms, 20 + digits)
    };
    // The second kept is of a text of this shape, so one that starts the
    // same has it too.
    let hit = LAST.with_borrow(|(key, secs)| {
        if key.len() < 19 || b.len() < 19 || !same_bytes(&key.as_bytes()[..19], &b[..19]) {
            return None;
        }
        let (ms, tail) = fraction();
        same_bytes(&key.as_bytes()[19..], &b[tail..]).then_some(secs.saturating_mul(1000) + ms)
    });
    if hit.is_some() {
        return hit;
    }
    let t = instant(text, true, &TimeZone::UTC).ok()?;
    let shape = b.len() >= 19
        && b.get(19) != Some(&b',')
        && b.iter().take(19).enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => matches!(c, b'T' | b't' | b' '),
            13 | 16 => c == b':',
            _ => c.is_ascii_digit(),
        });
    if shape {
        let (_, tail) = fraction();
        LAST.with_borrow_mut(|(key, secs)| {
            key.clear();
            key.push_str(&text[..19]);
            key.push_str(&text[tail..]);
            *secs = t.secs;
        });
    }
    Some(t.unix_ms())
}

/// `2026-11-22T10:00:00.123456Z`, for the ingest-time metadata column.
pub fn format_utc(i: Instant) -> String {
    let days = i.secs.div_euclid(86_400);
    let sod = i.secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        i.nanos / 1000
    )
}

/// The current time.
pub fn now() -> Instant {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Instant {
        secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kept second gives what a full reading gives, line after line.
    #[test]
    fn event_times_reuse_the_second_only_when_it_is_the_same() {
        let full = |t: &str| {
            let i = instant(t, true, &TimeZone::UTC).unwrap();
            i.secs * 1000 + i64::from(i.nanos / 1_000_000)
        };
        for t in [
            "2026-11-22T10:00:00.123456+00:00",
            "2026-11-22T10:00:00.9+00:00",
            "2026-11-22T10:00:00.9+02:00",
            "2026-11-22T10:00:00+02:00",
            "2026-11-22T10:00:00Z",
            "2026-11-22T10:00:00.5Z",
            "2026-11-22 10:00:00.05",
            "2026-11-22T10:00:01.000001Z",
            "2026-11-22T10:00:01,25Z",
            "2026-11-22",
            "1700000000",
            "2026-11-22T10:00:01.25Z",
        ] {
            assert_eq!(event_ms(t), Some(full(t)), "{t}");
        }
        assert_eq!(event_ms("2026-13-22T10:00:00.1Z"), None);
        assert_eq!(event_ms("not a time"), None);
    }

    fn utc(s: &str) -> Option<Instant> {
        parse_iso(s)?.instant(&TimeZone::UTC)
    }

    #[test]
    fn iso_forms_bots_write() {
        let base = 1_795_341_600; // 2026-11-22T10:00:00Z
        let want = |nanos| Some(Instant { secs: base, nanos });
        assert_eq!(utc("2026-11-22T10:00:00Z"), want(0));
        assert_eq!(utc("2026-11-22T10:00:00+00:00"), want(0));
        assert_eq!(utc("2026-11-22T11:00:00+01:00"), want(0));
        assert_eq!(utc("2026-11-22T05:30:00-0430"), want(0));
        assert_eq!(utc("2026-11-22 10:00:00"), want(0));
        assert_eq!(utc("2026-11-22 10:00:00,123"), want(123_000_000));
        assert_eq!(utc("2026-11-22T10:00:00.123456+00:00"), want(123_456_000));
        assert_eq!(utc("2026-11-22T10:00:00.1234567891Z"), want(123_456_789));
        assert_eq!(utc("2026-11-22T10:00"), want(0));
        assert_eq!(utc("2026-11-22 10:00:00 UTC"), want(0));
        assert_eq!(
            utc("2026-11-22"),
            Some(Instant {
                secs: base - 36_000,
                nanos: 0
            })
        );
        for bad in [
            "2026-13-01",
            "2026-02-30",
            "2026-11-22T25:00:00",
            "2026-11-22T10:00:00+",
            "22/11/2026",
            "yesterday",
            "",
            "2026-11-22T10:00:00.Z",
            "2026-11-22T10:00:00Zjunk",
        ] {
            assert_eq!(utc(bad), None, "{bad}");
        }
    }

    #[test]
    fn wall_clock_times_take_the_zone() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let w = parse_iso("2026-07-01 12:00:00").unwrap();
        assert_eq!(w.instant(&berlin).unwrap().secs, 1_782_907_200 - 7200);
        // An explicit offset wins over the zone.
        let w = parse_iso("2026-07-01T12:00:00Z").unwrap();
        assert_eq!(w.instant(&berlin).unwrap().secs, 1_782_907_200);
    }

    #[test]
    fn epochs_by_magnitude() {
        let s = Instant {
            secs: 1_795_341_600,
            nanos: 0,
        };
        assert_eq!(parse_epoch("1795341600"), Some(s));
        assert_eq!(parse_epoch("1795341600000"), Some(s));
        assert_eq!(parse_epoch("1795341600000000"), Some(s));
        assert_eq!(parse_epoch("1795341600000000000"), Some(s));
        assert_eq!(
            parse_epoch("1795341600.25"),
            Some(Instant {
                secs: 1_795_341_600,
                nanos: 250_000_000
            })
        );
        assert_eq!(
            parse_epoch("1795341600123"),
            Some(Instant {
                secs: 1_795_341_600,
                nanos: 123_000_000
            })
        );
        assert_eq!(
            parse_epoch("-1.5"),
            Some(Instant {
                secs: -2,
                nanos: 500_000_000
            })
        );
        for bad in ["1e9", "abc", "", "-", "99999999999999999999999", "1.2.3"] {
            assert_eq!(parse_epoch(bad), None, "{bad}");
        }
    }

    #[test]
    fn civil_round_trip() {
        for days in [-719_468, -25_567, -1, 0, 1, 20_414, 120_529, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(i32::try_from(y).unwrap(), m, d), days);
        }
        assert_eq!(
            format_utc(Instant {
                secs: 1_795_341_600,
                nanos: 123_456_789
            }),
            "2026-11-22T10:00:00.123456Z"
        );
    }
}
