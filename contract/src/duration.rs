//! Durations as Kubernetes writes them (`30s`, `1m30s`, `250ms`): a string in the CRD
//! (so CEL's `duration()` can compare them at admission) and a `std::time::Duration` here.

use std::{borrow::Cow, fmt, time::Duration};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The form the CRD accepts: `<number><unit>` groups in the order h, m, s, ms, each
/// number of at most 6 digits (and 9 decimals), so that no accepted value overflows a
/// duration anywhere (Go's, and so CEL's, end at 2,562,047h). Empty is refused separately.
pub const DURATION_PATTERN: &str = "^([0-9]{1,6}([.][0-9]{1,9})?h)?([0-9]{1,6}([.][0-9]{1,9})?m)?([0-9]{1,6}([.][0-9]{1,9})?s)?([0-9]{1,6}([.][0-9]{1,9})?ms)?$";

/// The CEL rule every duration field carries (the apiserver prefixes the field's path).
pub const DURATION_RULE_MESSAGE: &str =
    "must be a duration such as 30s, 1m30s or 250ms (units h, m, s, ms, in that order)";

/// Longest duration string accepted anywhere (the CRD declares the same `maxLength`).
pub const MAX_LEN: usize = 32;

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

    /// The sum, capped at the largest duration (a sum of spec values never panics).
    pub fn saturating_add(self, other: GoDuration) -> GoDuration {
        GoDuration(self.0.saturating_add(other.0))
    }

    /// [`Self::ceil_secs`] for the API's `int32` seconds fields, capped at `i32::MAX`.
    pub fn ceil_secs_i32(&self) -> i32 {
        i32::try_from(self.ceil_secs()).unwrap_or(i32::MAX)
    }

    /// Whole seconds, rounded up: probe and grace-period fields are integer seconds and
    /// must never come out shorter than the budget they carry.
    pub fn ceil_secs(&self) -> i64 {
        let secs = i64::try_from(self.0.as_secs()).unwrap_or(i64::MAX);
        if self.0.subsec_nanos() > 0 {
            secs.saturating_add(1)
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

    /// Exact (integer nanoseconds, no float rounding) and total: a value too large for a
    /// `Duration` is an error, never a panic or a wrap.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DurationError(s.to_string());
        if s.is_empty() || s.len() > MAX_LEN {
            return Err(err());
        }
        let mut total: u128 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let int_len = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
            let (int, after) = rest.split_at(int_len);
            let (frac, after) = match after.strip_prefix('.') {
                Some(f) => {
                    let len = f.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
                    if len == 0 {
                        return Err(err()); // `1.s`
                    }
                    f.split_at(len)
                }
                None => ("", after),
            };
            if int.is_empty() {
                return Err(err()); // `.5s`
            }
            let (unit_nanos, len): (u128, usize) = if after.starts_with("ms") {
                (1_000_000, 2)
            } else if after.starts_with('s') {
                (1_000_000_000, 1)
            } else if after.starts_with('m') {
                (60_000_000_000, 1)
            } else if after.starts_with('h') {
                (3_600_000_000_000, 1)
            } else {
                return Err(err());
            };
            let int: u128 = int.parse().map_err(|_| err())?;
            let mut nanos = int.checked_mul(unit_nanos).ok_or_else(err)?;
            // Fractional digits beyond a nanosecond are dropped (as Go does).
            let mut scale = unit_nanos;
            for digit in frac.bytes() {
                scale /= 10;
                nanos += u128::from(digit - b'0') * scale;
            }
            total = total.checked_add(nanos).ok_or_else(err)?;
            rest = &after[len..];
        }
        let secs = u64::try_from(total / 1_000_000_000).map_err(|_| err())?;
        Ok(GoDuration(Duration::new(
            secs,
            (total % 1_000_000_000) as u32,
        )))
    }
}

/// The parser for `std::time::Duration` flags (clap's `value_parser`): the same forms the
/// CRD accepts and the operator renders.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    s.parse::<GoDuration>().map(|d| d.0)
}

impl fmt::Display for GoDuration {
    /// Go's form, as `kubectl` shows durations: `45s`, `1m15s`, `2m`, `1h`, `250ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        let sub_ms = self.0.subsec_nanos() % 1_000_000;
        if ms == 0 && sub_ms == 0 {
            return f.write_str("0s");
        }
        if sub_ms != 0 {
            // Exact to the nanosecond, so that it parses back to the same value.
            let frac = format!("{sub_ms:06}");
            return write!(f, "{ms}.{}ms", frac.trim_end_matches('0'));
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
        // A CEL rule rather than `pattern`, whose refusal shows the bare regex.
        json_schema!({
            "type": "string",
            "maxLength": MAX_LEN,
            "x-kubernetes-validations": [{
                "rule": format!("size(self) > 0 && self.matches('{DURATION_PATTERN}')"),
                "message": DURATION_RULE_MESSAGE,
            }],
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
        for bad in [
            "",
            "30",
            "s",
            "10 seconds",
            "-5s",
            "5d",
            "1m30",
            ".5s",
            "1.s",
            "1..5s",
            " 1s",
        ] {
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
    fn overflow_is_an_error_not_a_panic() {
        for huge in [
            "99999999999999999999999h",
            "18446744073709551616s",
            "9999999999999999h",
        ] {
            assert!(huge.parse::<GoDuration>().is_err(), "{huge}");
        }
        assert_eq!(
            "1.0000000009s".parse::<GoDuration>().unwrap().0,
            Duration::new(1, 0)
        );
        assert_eq!(
            "0.1s".parse::<GoDuration>().unwrap().0,
            Duration::from_millis(100)
        );
    }

    proptest::proptest! {
        /// Every duration Display prints parses back to itself, and what parses never panics.
        #[test]
        fn display_round_trips(secs in 0u64..(1u64 << 34), nanos in 0u32..1_000_000_000) {
            let d = GoDuration(Duration::new(secs, nanos));
            proptest::prop_assert_eq!(d.to_string().parse::<GoDuration>(), Ok(d));
        }

        #[test]
        fn parsing_never_panics(s in "[0-9.mhs]{0,40}") {
            let _ = s.parse::<GoDuration>();
        }
    }

    #[test]
    fn ceil_secs_never_shortens() {
        assert_eq!(GoDuration::from_millis(1500).ceil_secs(), 2);
        assert_eq!(GoDuration::from_secs(3).ceil_secs(), 3);
    }
}
