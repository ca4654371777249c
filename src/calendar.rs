//! The working-day calendar that objection deadlines are counted in: Monday
//! to Friday, minus configured public holidays, plus configured make-up
//! working days (调休: a Saturday or Sunday declared a working day).

use std::collections::BTreeSet;

use time::{Date, Duration, Weekday};

use crate::error::Result;
use crate::store::parse_date;

/// Working days: weekdays, minus holidays, plus make-up working days.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkingCalendar {
    holidays: BTreeSet<Date>,
    working_weekends: BTreeSet<Date>,
}

impl WorkingCalendar {
    /// A calendar from `YYYY-MM-DD` lists.
    pub fn parse(holidays: &[String], working_weekends: &[String]) -> Result<Self> {
        Ok(WorkingCalendar {
            holidays: holidays
                .iter()
                .map(|d| parse_date(d.trim()))
                .collect::<Result<_>>()?,
            working_weekends: working_weekends
                .iter()
                .map(|d| parse_date(d.trim()))
                .collect::<Result<_>>()?,
        })
    }

    /// Whether `d` is a working day.
    pub fn is_working_day(&self, d: Date) -> bool {
        if self.working_weekends.contains(&d) {
            return true;
        }
        if self.holidays.contains(&d) {
            return false;
        }
        !matches!(d.weekday(), Weekday::Saturday | Weekday::Sunday)
    }

    /// The `n`th working day after `from` (the day of filing does not count).
    pub fn add_working_days(&self, from: Date, n: u32) -> Date {
        let mut d = from;
        let mut left = n;
        // A calendar with a year of holidays in a row still ends: at most
        // 366 non-working days are skipped per working day counted.
        let mut guard = 0u32;
        while left > 0 && guard < 400 * n.max(1) {
            d = d.saturating_add(Duration::days(1));
            guard += 1;
            if self.is_working_day(d) {
                left -= 1;
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn counts_weekdays_only() {
        let c = WorkingCalendar::default();
        // Monday 2026-11-23 + 5 working days = Monday 2026-11-30.
        assert_eq!(
            c.add_working_days(date!(2026 - 11 - 23), 5),
            date!(2026 - 11 - 30)
        );
        // Filed on a Friday: Mon..Fri of the next week.
        assert_eq!(
            c.add_working_days(date!(2026 - 11 - 27), 5),
            date!(2026 - 12 - 04)
        );
        // Filed on a Saturday: the weekend does not count.
        assert_eq!(
            c.add_working_days(date!(2026 - 11 - 28), 5),
            date!(2026 - 12 - 04)
        );
        assert_eq!(
            c.add_working_days(date!(2026 - 11 - 28), 0),
            date!(2026 - 11 - 28)
        );
    }

    #[test]
    fn skips_holidays_and_counts_make_up_days() {
        // National Day 2026: 1-7 October off, Saturday 10 October worked.
        let holidays: Vec<String> = (1..=7).map(|d| format!("2026-10-0{d}")).collect();
        let c = WorkingCalendar::parse(&holidays, &["2026-10-10".into()]).unwrap();
        assert!(!c.is_working_day(date!(2026 - 10 - 05)));
        assert!(c.is_working_day(date!(2026 - 10 - 10)));
        // Filed Wednesday 30 September: Thu 8, Fri 9, Sat 10 (make-up), Mon 12, Tue 13.
        assert_eq!(
            c.add_working_days(date!(2026 - 09 - 30), 5),
            date!(2026 - 10 - 13)
        );
        assert!(WorkingCalendar::parse(&["2026-13-01".into()], &[]).is_err());
    }
}
