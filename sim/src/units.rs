//! Human-readable durations (`250us`, `2ms`, `1.5s`) and bandwidths (`100Mbit`, `1Gbit`,
//! `unlimited`): parsing for the CLI and the control API, formatting for logs, and the serde
//! forms used in JSON (durations as integer microseconds, bandwidths as integer bits per second
//! or `null` for unlimited; strings in the human forms are accepted too).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a duration or bandwidth string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// No number at the start.
    #[error("{input:?}: expected a number followed by a unit, e.g. {example}")]
    MissingNumber {
        /// The rejected text.
        input: String,
        /// A valid example of the expected form.
        example: &'static str,
    },
    /// A number without a unit (other than `0` for durations).
    #[error("{input:?}: missing unit; one of {units}")]
    MissingUnit {
        /// The rejected text.
        input: String,
        /// The accepted units.
        units: &'static str,
    },
    /// An unknown unit.
    #[error("{input:?}: unknown unit {unit:?}; one of {units}")]
    UnknownUnit {
        /// The rejected text.
        input: String,
        /// The unit as written.
        unit: String,
        /// The accepted units.
        units: &'static str,
    },
    /// Negative, not finite, or too large to represent.
    #[error("{input:?}: value out of range")]
    OutOfRange {
        /// The rejected text.
        input: String,
    },
}

const DURATION_UNITS: &str = "ns, us, ms, s";
const BANDWIDTH_UNITS: &str = "bit, kbit, Mbit, Gbit, Tbit (or ...bps, ...bit/s), unlimited";

/// A bandwidth cap for one direction of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bandwidth {
    /// No serialization delay at all: bytes cross in zero time, only propagation delay applies.
    Unlimited,
    /// Payload bits per second (no per-packet header overhead is modelled).
    BitsPerSecond(u64),
}

impl Bandwidth {
    /// `n` megabits (10^6 bits) per second.
    pub const fn mbit(n: u64) -> Self {
        Bandwidth::BitsPerSecond(n * 1_000_000)
    }

    /// `n` gigabits (10^9 bits) per second.
    pub const fn gbit(n: u64) -> Self {
        Bandwidth::BitsPerSecond(n * 1_000_000_000)
    }

    /// Bits per second, `None` when unlimited.
    pub fn bits_per_second(self) -> Option<u64> {
        match self {
            Bandwidth::Unlimited => None,
            Bandwidth::BitsPerSecond(bps) => Some(bps),
        }
    }

    /// Time to put `bytes` on the wire at this rate (zero when unlimited). Saturates instead of
    /// overflowing; with `BitsPerSecond(0)` (rejected by validation) it is `Duration::MAX`.
    pub fn serialization_time(self, bytes: u64) -> Duration {
        match self {
            Bandwidth::Unlimited => Duration::ZERO,
            Bandwidth::BitsPerSecond(0) => Duration::MAX,
            Bandwidth::BitsPerSecond(bps) => {
                // Round up so that a stream of chunks never goes faster than the cap.
                let nanos = (u128::from(bytes) * 8 * 1_000_000_000).div_ceil(u128::from(bps));
                duration_from_nanos_saturating(nanos)
            }
        }
    }
}

impl fmt::Display for Bandwidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Bandwidth::Unlimited => f.write_str("unlimited"),
            Bandwidth::BitsPerSecond(bps) => {
                for (scale, unit) in [(1_000_000_000_000, "Tbit"), (1_000_000_000, "Gbit"), (1_000_000, "Mbit"), (1_000, "kbit")] {
                    if bps >= scale && bps % scale == 0 {
                        return write!(f, "{}{unit}", bps / scale);
                    }
                }
                write!(f, "{bps}bit")
            }
        }
    }
}

impl std::str::FromStr for Bandwidth {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        parse_bandwidth(s)
    }
}

pub(crate) fn duration_from_nanos_saturating(nanos: u128) -> Duration {
    let secs = nanos / 1_000_000_000;
    if secs > u128::from(u64::MAX) {
        return Duration::MAX;
    }
    // Both casts are in range: secs checked above, the remainder is below 10^9.
    Duration::new(secs as u64, (nanos % 1_000_000_000) as u32)
}

/// Splits `"1.5ms"` into `(1.5, "ms")`.
fn split_number<'a>(input: &'a str, example: &'static str) -> Result<(f64, &'a str), ParseError> {
    let s = input.trim();
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(end);
    if number.is_empty() {
        return Err(ParseError::MissingNumber { input: input.to_owned(), example });
    }
    let value: f64 = number.parse().map_err(|_| ParseError::MissingNumber { input: input.to_owned(), example })?;
    if !value.is_finite() || value < 0.0 {
        return Err(ParseError::OutOfRange { input: input.to_owned() });
    }
    Ok((value, unit.trim()))
}

/// Parses `250us`, `2ms`, `1.5s`, `100ns` (also `µs`); a bare `0` is zero.
pub fn parse_duration(input: &str) -> Result<Duration, ParseError> {
    let (value, unit) = split_number(input, "2ms")?;
    let nanos_per_unit = match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "" if value == 0.0 => 1.0,
        "" => {
            return Err(ParseError::MissingUnit { input: input.to_owned(), units: DURATION_UNITS });
        }
        other => {
            return Err(ParseError::UnknownUnit { input: input.to_owned(), unit: other.to_owned(), units: DURATION_UNITS });
        }
    };
    let nanos = (value * nanos_per_unit).round();
    // One day is far above any limit; the check keeps the conversion below exact and in range.
    if nanos > 86_400e9 {
        return Err(ParseError::OutOfRange { input: input.to_owned() });
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// Parses `100Mbit`, `1Gbit`, `10Gbit`, `2.5Gbps`, `64kbit/s`, `unlimited`. Prefixes are
/// decimal (k = 10^3) and case-insensitive; the unit is bits, never bytes.
pub fn parse_bandwidth(input: &str) -> Result<Bandwidth, ParseError> {
    let trimmed = input.trim();
    if trimmed.eq_ignore_ascii_case("unlimited") {
        return Ok(Bandwidth::Unlimited);
    }
    let (value, unit) = split_number(input, "100Mbit")?;
    if unit.is_empty() {
        return Err(ParseError::MissingUnit { input: input.to_owned(), units: BANDWIDTH_UNITS });
    }
    let lower = unit.to_ascii_lowercase();
    let prefix = lower.strip_suffix("bit/s").or_else(|| lower.strip_suffix("bps")).or_else(|| lower.strip_suffix("bit"));
    let scale = match prefix {
        Some("") => 1.0,
        Some("k") => 1e3,
        Some("m") => 1e6,
        Some("g") => 1e9,
        Some("t") => 1e12,
        _ => {
            return Err(ParseError::UnknownUnit { input: input.to_owned(), unit: unit.to_owned(), units: BANDWIDTH_UNITS });
        }
    };
    let bps = (value * scale).round();
    if bps > 1e15 {
        return Err(ParseError::OutOfRange { input: input.to_owned() });
    }
    Ok(Bandwidth::BitsPerSecond(bps as u64))
}

/// Formats a duration in the largest unit that keeps it exact: `20ms`, `250us`, `1500ms`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    for (scale, unit) in [(1_000_000_000, "s"), (1_000_000, "ms"), (1_000, "us")] {
        // Not `is_multiple_of`: the workspace's rust-version is 1.85.
        #[allow(clippy::manual_is_multiple_of)]
        if nanos % scale == 0 {
            return format!("{}{unit}", nanos / scale);
        }
    }
    format!("{nanos}ns")
}

/// A JSON value that is either a number or a string in the human form.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(u64),
    Text(String),
}

/// Serde for `Duration` as integer microseconds; also accepts `"2ms"`-style strings.
pub mod serde_us {
    use super::*;

    /// Serializes as whole microseconds (sub-microsecond parts are truncated).
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        u64::try_from(d.as_micros()).unwrap_or(u64::MAX).serialize(s)
    }

    /// Accepts microseconds or a duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Number(us) => Ok(Duration::from_micros(us)),
            NumberOrText::Text(text) => parse_duration(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// Serde for `Option<Duration>` fields of partial updates: absent means "unchanged"; use with
/// `#[serde(default, skip_serializing_if = "Option::is_none")]`.
pub mod serde_opt_us {
    use super::*;

    /// Serializes the inner value as microseconds.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serde_us::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    /// Accepts microseconds or a duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::serde_us::deserialize(d).map(Some)
    }
}

/// Serde for `Option<Bandwidth>` fields of partial updates: absent means "unchanged", `null`
/// means unlimited; use with `#[serde(default, skip_serializing_if = "Option::is_none")]`.
pub mod serde_opt_bandwidth {
    use super::*;

    /// Serializes the inner value (`null` for unlimited).
    pub fn serialize<S: Serializer>(b: &Option<Bandwidth>, s: S) -> Result<S::Ok, S::Error> {
        match b {
            Some(b) => b.serialize(s),
            None => s.serialize_none(),
        }
    }

    /// Accepts bits per second, a bandwidth string, or `null` (unlimited).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Bandwidth>, D::Error> {
        Bandwidth::deserialize(d).map(Some)
    }
}

impl Serialize for Bandwidth {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Bandwidth::Unlimited => s.serialize_none(),
            Bandwidth::BitsPerSecond(bps) => s.serialize_u64(*bps),
        }
    }
}

impl<'de> Deserialize<'de> for Bandwidth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Option::<NumberOrText>::deserialize(d)? {
            None => Ok(Bandwidth::Unlimited),
            Some(NumberOrText::Number(bps)) => Ok(Bandwidth::BitsPerSecond(bps)),
            Some(NumberOrText::Text(text)) => parse_bandwidth(&text).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("250µs"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("2ms"), Ok(Duration::from_millis(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.2ms"), Ok(Duration::from_micros(200)));
        assert_eq!(parse_duration("100ns"), Ok(Duration::from_nanos(100)));
        assert_eq!(parse_duration(" 20ms "), Ok(Duration::from_millis(20)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations_are_rejected_with_a_reason() {
        assert!(matches!(parse_duration("20"), Err(ParseError::MissingUnit { .. })));
        assert!(matches!(parse_duration("ms"), Err(ParseError::MissingNumber { .. })));
        assert!(matches!(parse_duration(""), Err(ParseError::MissingNumber { .. })));
        assert!(matches!(parse_duration("-2ms"), Err(ParseError::MissingNumber { .. })));
        assert!(matches!(parse_duration("2h"), Err(ParseError::UnknownUnit { .. })));
        assert!(matches!(parse_duration("1.2.3ms"), Err(ParseError::MissingNumber { .. })));
        assert!(matches!(parse_duration("99999999999s"), Err(ParseError::OutOfRange { .. })));
    }

    #[test]
    fn bandwidths_parse_with_decimal_prefixes() {
        assert_eq!(parse_bandwidth("100Mbit"), Ok(Bandwidth::mbit(100)));
        assert_eq!(parse_bandwidth("1Gbit"), Ok(Bandwidth::gbit(1)));
        assert_eq!(parse_bandwidth("10Gbit"), Ok(Bandwidth::gbit(10)));
        assert_eq!(parse_bandwidth("2.5gbps"), Ok(Bandwidth::BitsPerSecond(2_500_000_000)));
        assert_eq!(parse_bandwidth("64kbit/s"), Ok(Bandwidth::BitsPerSecond(64_000)));
        assert_eq!(parse_bandwidth("unlimited"), Ok(Bandwidth::Unlimited));
        assert_eq!(parse_bandwidth("Unlimited"), Ok(Bandwidth::Unlimited));
        assert!(matches!(parse_bandwidth("100"), Err(ParseError::MissingUnit { .. })));
        assert!(matches!(parse_bandwidth("100MB"), Err(ParseError::UnknownUnit { .. })));
        assert!(matches!(parse_bandwidth("fast"), Err(ParseError::MissingNumber { .. })));
    }

    #[test]
    fn formatting_round_trips() {
        for text in ["20ms", "250us", "1500ms", "2s", "100ns", "0s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
        for text in ["100Mbit", "1Gbit", "64kbit", "1500bit", "unlimited", "2500Mbit"] {
            assert_eq!(parse_bandwidth(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn serialization_time_matches_the_rate() {
        // 1 MiB at 100 Mbit/s: 8_388_608 bits / 10^8 bit/s = 83.886 ms.
        let t = Bandwidth::mbit(100).serialization_time(1024 * 1024);
        assert_eq!(t, Duration::from_nanos(83_886_080));
        assert_eq!(Bandwidth::Unlimited.serialization_time(1 << 30), Duration::ZERO);
        assert_eq!(Bandwidth::BitsPerSecond(0).serialization_time(1), Duration::MAX);
        assert_eq!(Bandwidth::BitsPerSecond(1).serialization_time(u64::MAX), Duration::MAX);
    }

    #[test]
    fn bandwidth_json_uses_null_for_unlimited_and_accepts_strings() {
        assert_eq!(serde_json::to_string(&Bandwidth::Unlimited).unwrap(), "null");
        assert_eq!(serde_json::to_string(&Bandwidth::mbit(1)).unwrap(), "1000000");
        let b: Bandwidth = serde_json::from_str("\"1Gbit\"").unwrap();
        assert_eq!(b, Bandwidth::gbit(1));
        let b: Bandwidth = serde_json::from_str("null").unwrap();
        assert_eq!(b, Bandwidth::Unlimited);
        assert!(serde_json::from_str::<Bandwidth>("\"1GB\"").is_err());
        assert!(serde_json::from_str::<Bandwidth>("-5").is_err());
    }
}
