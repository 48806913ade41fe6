//! Diurnal and weekly shapes of a metric: a factor per local hour (interpolated linearly
//! between hour centres) times a factor per weekday.

/// A named shape: 24 hourly factors and 7 weekday factors (Monday first).
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Its name (for reports).
    pub name: &'static str,
    hourly: [f64; 24],
    weekly: [f64; 7],
}

const WEEKDAYS_BUSY: [f64; 7] = [1.0, 1.0, 1.0, 1.0, 1.05, 0.75, 0.6];

impl Profile {
    /// The known profile names.
    pub const NAMES: &'static [&'static str] =
        &["flat", "traffic", "traffic_speed", "air", "energy", "lighting", "temperature"];

    /// No variation.
    pub fn flat() -> Self {
        Profile { name: "flat", hourly: [1.0; 24], weekly: [1.0; 7] }
    }

    /// A profile by name (see [`Profile::NAMES`]).
    pub fn named(name: &str) -> Option<Self> {
        let (name, hourly, weekly): (&'static str, [f64; 24], [f64; 7]) = match name {
            "flat" => return Some(Self::flat()),
            // Vehicles: morning and evening peaks, quiet nights.
            "traffic" => (
                "traffic",
                [
                    0.15, 0.1, 0.08, 0.08, 0.15, 0.4, 0.9, 1.9, 2.4, 1.7, 1.1, 1.0, 1.1, 1.05, 1.0, 1.15, 1.6, 2.2,
                    2.4, 1.6, 1.0, 0.7, 0.45, 0.25,
                ],
                WEEKDAYS_BUSY,
            ),
            // Speed: the mirror of traffic (slow at the peaks).
            "traffic_speed" => (
                "traffic_speed",
                [
                    1.3, 1.3, 1.3, 1.3, 1.3, 1.2, 1.0, 0.6, 0.4, 0.7, 0.9, 0.95, 0.9, 0.95, 0.95, 0.9, 0.7, 0.45, 0.4,
                    0.7, 0.95, 1.1, 1.2, 1.25,
                ],
                [1.0, 1.0, 1.0, 1.0, 0.97, 1.1, 1.15],
            ),
            // Particulates: traffic peaks, plus evening heating, smoothed.
            "air" => (
                "air",
                [
                    0.8, 0.75, 0.7, 0.7, 0.75, 0.85, 1.0, 1.25, 1.4, 1.3, 1.1, 1.0, 0.95, 0.95, 0.95, 1.0, 1.15, 1.35,
                    1.45, 1.35, 1.2, 1.05, 0.95, 0.85,
                ],
                [1.0, 1.0, 1.0, 1.0, 1.02, 0.9, 0.85],
            ),
            // Electricity: low at night, morning bump, evening peak.
            "energy" => (
                "energy",
                [
                    0.55, 0.5, 0.48, 0.48, 0.5, 0.6, 0.85, 1.1, 1.15, 1.05, 1.0, 1.0, 1.0, 0.98, 0.97, 1.0, 1.1, 1.35,
                    1.5, 1.45, 1.3, 1.1, 0.85, 0.65,
                ],
                [1.0, 1.0, 1.0, 1.0, 1.0, 0.9, 0.85],
            ),
            // Streetlights: on at night.
            "lighting" => (
                "lighting",
                [
                    1.0, 1.0, 1.0, 1.0, 1.0, 0.9, 0.5, 0.05, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.05, 0.4, 0.85,
                    1.0, 1.0, 1.0, 1.0, 1.0,
                ],
                [1.0; 7],
            ),
            // Air temperature: coolest before dawn, warmest mid-afternoon.
            "temperature" => (
                "temperature",
                [
                    0.82, 0.8, 0.78, 0.77, 0.76, 0.77, 0.8, 0.86, 0.93, 1.0, 1.07, 1.13, 1.18, 1.21, 1.22, 1.2, 1.16,
                    1.1, 1.03, 0.97, 0.92, 0.88, 0.86, 0.84,
                ],
                [1.0; 7],
            ),
            _ => return None,
        };
        Some(Profile { name, hourly, weekly })
    }

    /// The factor at `local_seconds` (seconds since the Unix epoch in local time).
    pub fn factor(&self, local_seconds: i64) -> f64 {
        let day_second = local_seconds.rem_euclid(86_400) as f64;
        // Hour centres are at hh:30; interpolate between the two nearest.
        let position = (day_second / 3600.0 - 0.5).rem_euclid(24.0);
        let below = position.floor() as usize % 24;
        let above = (below + 1) % 24;
        let t = position - position.floor();
        let hourly = self.hourly[below] * (1.0 - t) + self.hourly[above] * t;
        // 1970-01-01 was a Thursday: Monday is day 0 four days later.
        let weekday = (local_seconds.div_euclid(86_400) + 3).rem_euclid(7) as usize;
        hourly * self.weekly[weekday]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_profile_exists_and_flat_is_one() {
        for name in Profile::NAMES {
            assert!(Profile::named(name).is_some(), "{name}");
        }
        assert!(Profile::named("nope").is_none());
        assert_eq!(Profile::flat().factor(123_456), 1.0);
    }

    #[test]
    fn traffic_peaks_in_the_rush_hours_and_is_quiet_at_night_and_on_sundays() {
        let traffic = Profile::named("traffic").unwrap();
        // 2025-01-13 was a Monday.
        let monday = 1_736_726_400;
        let at = |day: i64, hour: i64, minute: i64| traffic.factor(monday + day * 86_400 + hour * 3600 + minute * 60);
        assert!(at(0, 8, 30) > 2.0 && at(0, 18, 30) > 2.0, "{} {}", at(0, 8, 30), at(0, 18, 30));
        assert!(at(0, 3, 30) < 0.2);
        // Exactly at an hour centre the factor is that hour's value; between, in between.
        assert_eq!(at(0, 8, 30), 2.4);
        let between = at(0, 8, 0);
        assert!(between > 1.9 && between < 2.4, "{between}");
        assert!(at(6, 8, 30) < at(0, 8, 30) * 0.7, "Sunday is quieter");
    }
}
