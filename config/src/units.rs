//! Human-readable sizes (`"1GiB"`) and durations (`"5s"`) for config files.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Splits `"1.5GiB"` into `("1.5", "GiB")`.
fn split_number(text: &str) -> (&str, &str) {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    text.split_at(split)
}

/// A byte count written as `"4KiB"`, `"1GiB"`, `"512"` or a bare integer.
///
/// Binary suffixes (`KiB`, `MiB`, `GiB`, `TiB`) are powers of 1024; decimal
/// ones (`kB`, `MB`, `GB`, `TB`) powers of 1000. `K`, `M`, `G`, `T` alone are
/// read as binary, as storage tools usually do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// Parses `"1GiB"`, `"64 KiB"`, `"1000"`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (number, unit) = split_number(text);
        if number.is_empty() {
            return Err(format!("`{text}` is not a size (expected e.g. \"1GiB\" or \"4096\")"));
        }
        let multiplier: u64 = match unit.trim() {
            "" | "B" | "b" => 1,
            "KiB" | "K" | "k" | "KB" | "Ki" => 1 << 10,
            "MiB" | "M" | "Mi" => 1 << 20,
            "GiB" | "G" | "Gi" => 1 << 30,
            "TiB" | "T" | "Ti" => 1 << 40,
            "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            other => {
                return Err(format!("`{text}`: unknown size unit `{other}` (use B, KiB, MiB, GiB, TiB, kB, MB, GB, TB)"));
            }
        };
        let value = if number.contains('.') {
            let f: f64 = number.parse().map_err(|_| format!("`{text}` is not a size"))?;
            let bytes = f * multiplier as f64;
            if !bytes.is_finite() || bytes > u64::MAX as f64 || bytes.fract() != 0.0 {
                return Err(format!("`{text}` is not a whole number of bytes"));
            }
            bytes as u64
        } else {
            let n: u64 = number.parse().map_err(|_| format!("`{text}` is too large"))?;
            n.checked_mul(multiplier).ok_or_else(|| format!("`{text}` is too large"))?
        };
        Ok(ByteSize(value))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [(1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        for (scale, name) in UNITS {
            if self.0 >= scale && self.0.is_multiple_of(scale) {
                return write!(f, "{}{}", self.0 / scale, name);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"1GiB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A duration written as `"250ms"`, `"5s"`, `"2m"`, `"1h"`, `"100us"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// The wrapped duration.
    pub const fn get(self) -> Duration {
        self.0
    }

    /// Parses `"5s"`, `"1.5s"`, `"250ms"`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (number, unit) = split_number(text);
        let value: f64 = number.parse().map_err(|_| format!("`{text}` is not a duration (expected e.g. \"5s\" or \"250ms\")"))?;
        let seconds_per_unit = match unit.trim() {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("`{text}` needs a unit (ns, us, ms, s, m, h)")),
            other => return Err(format!("`{text}`: unknown duration unit `{other}` (use ns, us, ms, s, m, h)")),
        };
        let seconds = value * seconds_per_unit;
        if !seconds.is_finite() || seconds > 1e9 {
            return Err(format!("`{text}` is too long"));
        }
        Ok(HumanDuration(Duration::from_secs_f64(seconds)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let nanos = d.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        if nanos.is_multiple_of(1_000_000_000) {
            write!(f, "{}s", d.as_secs())
        } else if nanos.is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else if nanos.is_multiple_of(1_000) {
            write!(f, "{}us", d.as_micros())
        } else {
            write!(f, "{nanos}ns")
        }
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        HumanDuration::parse(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(ByteSize::parse("1GiB").unwrap().bytes(), 1 << 30);
        assert_eq!(ByteSize::parse("4 KiB").unwrap().bytes(), 4096);
        assert_eq!(ByteSize::parse("1.5MiB").unwrap().bytes(), 3 << 19);
        assert_eq!(ByteSize::parse("10MB").unwrap().bytes(), 10_000_000);
        assert_eq!(ByteSize::parse("512").unwrap().bytes(), 512);
        assert!(ByteSize::parse("1GX").unwrap_err().contains("unknown size unit"));
        assert!(ByteSize::parse("GiB").is_err());
        assert!(ByteSize::parse("99999999999TiB").unwrap_err().contains("too large"));
        assert!(ByteSize::parse("0.3B").is_err());
    }

    #[test]
    fn sizes_print_in_the_largest_exact_unit() {
        assert_eq!(ByteSize(1 << 30).to_string(), "1GiB");
        assert_eq!(ByteSize(3 << 19).to_string(), "1536KiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
        assert_eq!(ByteSize::parse(&ByteSize(12345 << 20).to_string()).unwrap(), ByteSize(12345 << 20));
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(HumanDuration::parse("5s").unwrap().get(), Duration::from_secs(5));
        assert_eq!(HumanDuration::parse("250ms").unwrap().get(), Duration::from_millis(250));
        assert_eq!(HumanDuration::parse("1.5s").unwrap().get(), Duration::from_millis(1500));
        assert_eq!(HumanDuration::parse("2m").unwrap().get(), Duration::from_secs(120));
        assert!(HumanDuration::parse("5").unwrap_err().contains("needs a unit"));
        assert!(HumanDuration::parse("5 parsecs").unwrap_err().contains("unknown duration unit"));
        assert_eq!(HumanDuration(Duration::from_millis(1500)).to_string(), "1500ms");
        assert_eq!(HumanDuration(Duration::from_secs(30)).to_string(), "30s");
    }
}
