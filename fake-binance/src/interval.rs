//! Kline intervals and their time grid (all times epoch microseconds, UTC).
//!
//! Fixed-length intervals (1s .. 3d) are aligned on multiples of their length
//! since the epoch; `1w` opens on Monday 00:00 UTC; `1M` on the first day of
//! each calendar month.

use crate::config::Market;
use std::fmt;

pub const MICROS_PER_SECOND: i64 = 1_000_000;
pub const MICROS_PER_MINUTE: i64 = 60 * MICROS_PER_SECOND;
pub const MICROS_PER_HOUR: i64 = 60 * MICROS_PER_MINUTE;
pub const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;

/// A spot kline interval, spelled as in stream names and REST (`1m`, `1M`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KlineInterval {
    OneSecond,
    OneMinute,
    ThreeMinutes,
    FiveMinutes,
    FifteenMinutes,
    ThirtyMinutes,
    OneHour,
    TwoHours,
    FourHours,
    SixHours,
    EightHours,
    TwelveHours,
    OneDay,
    ThreeDays,
    OneWeek,
    OneMonth,
}

impl KlineInterval {
    pub const ALL: [KlineInterval; 16] = [
        KlineInterval::OneSecond,
        KlineInterval::OneMinute,
        KlineInterval::ThreeMinutes,
        KlineInterval::FiveMinutes,
        KlineInterval::FifteenMinutes,
        KlineInterval::ThirtyMinutes,
        KlineInterval::OneHour,
        KlineInterval::TwoHours,
        KlineInterval::FourHours,
        KlineInterval::SixHours,
        KlineInterval::EightHours,
        KlineInterval::TwelveHours,
        KlineInterval::OneDay,
        KlineInterval::ThreeDays,
        KlineInterval::OneWeek,
        KlineInterval::OneMonth,
    ];

    /// Parses the case-sensitive Binance spelling (`1m` is a minute, `1M` a month).
    pub fn parse(text: &str) -> Option<KlineInterval> {
        KlineInterval::ALL
            .into_iter()
            .find(|interval| interval.as_str() == text)
    }

    /// Parses an interval `market` serves: futures have every spot
    /// interval but `1s` (reference 4.4).
    pub fn parse_on(text: &str, market: Market) -> Option<KlineInterval> {
        KlineInterval::parse(text).filter(|interval| interval.exists_on(market))
    }

    /// Whether `market` has klines of this interval.
    pub fn exists_on(self, market: Market) -> bool {
        !(market.is_futures() && self == KlineInterval::OneSecond)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KlineInterval::OneSecond => "1s",
            KlineInterval::OneMinute => "1m",
            KlineInterval::ThreeMinutes => "3m",
            KlineInterval::FiveMinutes => "5m",
            KlineInterval::FifteenMinutes => "15m",
            KlineInterval::ThirtyMinutes => "30m",
            KlineInterval::OneHour => "1h",
            KlineInterval::TwoHours => "2h",
            KlineInterval::FourHours => "4h",
            KlineInterval::SixHours => "6h",
            KlineInterval::EightHours => "8h",
            KlineInterval::TwelveHours => "12h",
            KlineInterval::OneDay => "1d",
            KlineInterval::ThreeDays => "3d",
            KlineInterval::OneWeek => "1w",
            KlineInterval::OneMonth => "1M",
        }
    }

    /// Index in [`KlineInterval::ALL`], used to derive per-interval seeds.
    pub fn index(self) -> usize {
        KlineInterval::ALL
            .iter()
            .position(|interval| *interval == self)
            .expect("every interval is listed in ALL")
    }

    /// Length for intervals of fixed length; `None` for `1M`.
    fn fixed_length_us(self) -> Option<i64> {
        Some(match self {
            KlineInterval::OneSecond => MICROS_PER_SECOND,
            KlineInterval::OneMinute => MICROS_PER_MINUTE,
            KlineInterval::ThreeMinutes => 3 * MICROS_PER_MINUTE,
            KlineInterval::FiveMinutes => 5 * MICROS_PER_MINUTE,
            KlineInterval::FifteenMinutes => 15 * MICROS_PER_MINUTE,
            KlineInterval::ThirtyMinutes => 30 * MICROS_PER_MINUTE,
            KlineInterval::OneHour => MICROS_PER_HOUR,
            KlineInterval::TwoHours => 2 * MICROS_PER_HOUR,
            KlineInterval::FourHours => 4 * MICROS_PER_HOUR,
            KlineInterval::SixHours => 6 * MICROS_PER_HOUR,
            KlineInterval::EightHours => 8 * MICROS_PER_HOUR,
            KlineInterval::TwelveHours => 12 * MICROS_PER_HOUR,
            KlineInterval::OneDay => MICROS_PER_DAY,
            KlineInterval::ThreeDays => 3 * MICROS_PER_DAY,
            KlineInterval::OneWeek => 7 * MICROS_PER_DAY,
            KlineInterval::OneMonth => return None,
        })
    }

    /// Open time of the kline that contains `time_us`.
    pub fn open_time_containing(self, time_us: i64) -> i64 {
        match self {
            KlineInterval::OneWeek => {
                // Epoch day 0 (1970-01-01) was a Thursday; Monday is 3 days later in the cycle.
                let day = time_us.div_euclid(MICROS_PER_DAY);
                let monday = day - (day + 3).rem_euclid(7);
                monday * MICROS_PER_DAY
            }
            KlineInterval::OneMonth => {
                let day = time_us.div_euclid(MICROS_PER_DAY);
                let (year, month, _) = civil_from_days(day);
                days_from_civil(year, month, 1) * MICROS_PER_DAY
            }
            fixed => {
                let length = fixed.fixed_length_us().expect("fixed-length interval");
                time_us.div_euclid(length) * length
            }
        }
    }

    /// Open time of the kline after the one opening at `open_us`.
    pub fn next_open(self, open_us: i64) -> i64 {
        match self.fixed_length_us() {
            Some(length) => open_us + length,
            None => {
                let day = open_us.div_euclid(MICROS_PER_DAY);
                let (year, month, _) = civil_from_days(day);
                let (next_year, next_month) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                days_from_civil(next_year, next_month, 1) * MICROS_PER_DAY
            }
        }
    }

    /// Open time of the kline before the one opening at `open_us`.
    pub fn previous_open(self, open_us: i64) -> i64 {
        match self.fixed_length_us() {
            Some(length) => open_us - length,
            None => self.open_time_containing(open_us - 1),
        }
    }

    /// How often at most (sim time) the stream of `market` pushes an
    /// update of the open kline: the reference's update speed (4.3, 4.4).
    pub fn update_period_us(self, market: Market) -> i64 {
        match self {
            KlineInterval::OneSecond => MICROS_PER_SECOND,
            _ if market.is_futures() => MICROS_PER_SECOND / 4,
            _ => 2 * MICROS_PER_SECOND,
        }
    }
}

impl fmt::Display for KlineInterval {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1000;

    #[test]
    fn parses_case_sensitive_names() {
        assert_eq!(KlineInterval::parse("1m"), Some(KlineInterval::OneMinute));
        assert_eq!(KlineInterval::parse("1M"), Some(KlineInterval::OneMonth));
        assert_eq!(KlineInterval::parse("1H"), None);
        assert_eq!(KlineInterval::parse("2m"), None);
        for interval in KlineInterval::ALL {
            assert_eq!(KlineInterval::parse(interval.as_str()), Some(interval));
        }
    }

    #[test]
    fn civil_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        for day in -1000..30_000 {
            let (year, month, day_of_month) = civil_from_days(day);
            assert_eq!(days_from_civil(year, month, day_of_month), day);
        }
    }

    #[test]
    fn minute_and_hour_grid() {
        // 2024-08-08T23:54:15.342 UTC
        let time = 1_723_161_255_342 * MS;
        assert_eq!(
            KlineInterval::OneMinute.open_time_containing(time),
            1_723_161_240_000 * MS
        );
        assert_eq!(
            KlineInterval::OneHour.open_time_containing(time),
            1_723_158_000_000 * MS
        );
        assert_eq!(
            KlineInterval::OneSecond.open_time_containing(time),
            1_723_161_255_000 * MS
        );
        assert_eq!(
            KlineInterval::OneDay.next_open(KlineInterval::OneDay.open_time_containing(time)),
            1_723_161_600_000 * MS
        );
    }

    #[test]
    fn week_opens_on_monday() {
        // Binance's documented 1w example: open 1499040000000 (Monday 2017-07-03), close 1499644799999.
        let inside = 1_499_300_000_000 * MS;
        let open = KlineInterval::OneWeek.open_time_containing(inside);
        assert_eq!(open, 1_499_040_000_000 * MS);
        assert_eq!(
            KlineInterval::OneWeek.next_open(open) - 1000,
            1_499_644_799_999 * MS
        );
        // A Monday itself opens its own week.
        assert_eq!(KlineInterval::OneWeek.open_time_containing(open), open);
        assert_eq!(
            KlineInterval::OneWeek.open_time_containing(open - 1),
            open - 7 * MICROS_PER_DAY
        );
    }

    #[test]
    fn month_follows_the_calendar() {
        let february_2024 = days_from_civil(2024, 2, 1) * MICROS_PER_DAY;
        let march_2024 = days_from_civil(2024, 3, 1) * MICROS_PER_DAY;
        let inside = february_2024 + 28 * MICROS_PER_DAY + 5; // 2024-02-29 00:00:00.000005
        assert_eq!(
            KlineInterval::OneMonth.open_time_containing(inside),
            february_2024
        );
        assert_eq!(KlineInterval::OneMonth.next_open(february_2024), march_2024);
        assert_eq!(
            KlineInterval::OneMonth.previous_open(march_2024),
            february_2024
        );
        let december = days_from_civil(2023, 12, 1) * MICROS_PER_DAY;
        assert_eq!(
            KlineInterval::OneMonth.next_open(december),
            days_from_civil(2024, 1, 1) * MICROS_PER_DAY
        );
    }
}
