//! Durations as Kubernetes writes them (`30s`, `1m30s`, `250ms`): a string in the CRD
//! (so CEL's `duration()` can compare them at admission) and a `std::time::Duration` here.

use std::{borrow::Cow, fmt, time::Duration};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The CRD pattern: one or more `<number><unit>` groups, units `ms`, `s`, `m`, `h`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// A duration written like `90s` or `1m30s`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GoDuration(pub Duration);

impl GoDuration {
    pub const fn from_secs(secs: u64) -> Self {
        GoDuration(Duration::from_secs(secs))
    }

    pub const fn from_millis(ms: u64) -> Self {
        GoDuration(Duration::from_millis(ms))
    }

    pub fn as_secs_f64(&self) -> f64 {
        self.0.as_secs_f64()
    }

    /// Whole seconds, rounded up: probe and grace-period fields are integer seconds and
    /// must never come out shorter than the budget they carry.
    pub fn ceil_secs(&self) -> i64 {
        let secs = self.0.as_secs() as i64;
        if self.0.subsec_nanos() > 0 {
            secs + 1
        } else {
            secs
        }
    }
}

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: expected e.g. 30s, 1m30s or 250ms")]
pub struct DurationError(pub String);

impl std::str::FromStr for GoDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DurationError(s.to_string());
        if s.is_empty() || s.len() > 32 {
            return Err(err());
        }
        let mut total = 0f64;
        let mut rest = s;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(err)?;
            let number: f64 = rest[..num_len].parse().map_err(|_| err())?;
            rest = &rest[num_len..];
            let (unit, len) = if rest.starts_with("ms") {
                (0.001, 2)
            } else if rest.starts_with('s') {
                (1.0, 1)
            } else if rest.starts_with('m') {
                (60.0, 1)
            } else if rest.starts_with('h') {
                (3600.0, 1)
            } else {
                return Err(err());
            };
            total += number * unit;
            rest = &rest[len..];
        }
        Duration::try_from_secs_f64(total)
            .map(GoDuration)
            .map_err(|_| err())
    }
}

impl fmt::Display for GoDuration {
    /// Go's form, as `kubectl` shows durations: `45s`, `1m15s`, `2m`, `1h`, `250ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        if !ms.is_multiple_of(1000) {
            return write!(f, "{ms}ms");
        }
        let secs = ms / 1000;
        let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

impl fmt::Debug for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for GoDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_style_durations() {
        let p = |s: &str| s.parse::<GoDuration>().unwrap().0;
        assert_eq!(p("30s"), Duration::from_secs(30));
        assert_eq!(p("1m30s"), Duration::from_secs(90));
        assert_eq!(p("250ms"), Duration::from_millis(250));
        assert_eq!(p("1h"), Duration::from_secs(3600));
        assert_eq!(p("1.5s"), Duration::from_millis(1500));
    }

    #[test]
    fn rejects_what_the_crd_pattern_rejects() {
        for bad in ["", "30", "s", "10 seconds", "-5s", "5d", "1m30"] {
            assert!(
                bad.parse::<GoDuration>().is_err(),
                "{bad:?} should not parse"
            );
        }
    }

    #[test]
    fn displays_shortest_exact_form_and_round_trips() {
        for (d, s) in [
            (75_000, "1m15s"),
            (45_000, "45s"),
            (120_000, "2m"),
            (90_000, "1m30s"),
            (250, "250ms"),
        ] {
            let g = GoDuration::from_millis(d);
            assert_eq!(g.to_string(), s);
            assert_eq!(s.parse::<GoDuration>().unwrap(), g);
        }
    }

    #[test]
    fn ceil_secs_never_shortens() {
        assert_eq!(GoDuration::from_millis(1500).ceil_secs(), 2);
        assert_eq!(GoDuration::from_secs(3).ceil_secs(), 3);
    }
}
