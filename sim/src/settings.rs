//! Link settings: named profiles, partial updates, validation.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::limits::{BANDWIDTH_BPS_MIN, DELAY_MAX, JITTER_MAX};
use crate::link::DirectionParams;
use crate::units::{Bandwidth, format_duration, serde_opt_bandwidth, serde_opt_us, serde_us};

/// One direction of the link. "a" is the side that connects to the proxy (the client), "b" the
/// upstream the proxy connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    /// Client to upstream.
    Ab,
    /// Upstream to client.
    Ba,
}

impl Dir {
    /// Both directions, `Ab` first.
    pub const ALL: [Dir; 2] = [Dir::Ab, Dir::Ba];

    /// 0 for `Ab`, 1 for `Ba`: the index into per-direction arrays.
    pub fn index(self) -> usize {
        match self {
            Dir::Ab => 0,
            Dir::Ba => 1,
        }
    }

    /// `"ab"` or `"ba"`.
    pub fn name(self) -> &'static str {
        match self {
            Dir::Ab => "ab",
            Dir::Ba => "ba",
        }
    }
}

/// Why settings or an update were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// No profile of that name.
    #[error("unknown profile {name:?}; one of: {}", LinkSettings::PROFILE_NAMES.join(", "))]
    UnknownProfile {
        /// The name asked for.
        name: String,
    },
    /// A one-way delay above [`DELAY_MAX`].
    #[error("{field} is {}, limit is {}", format_duration(*value), format_duration(*max))]
    DelayTooLarge {
        /// `delay_ab` or `delay_ba`.
        field: &'static str,
        /// The rejected value.
        value: Duration,
        /// The limit.
        max: Duration,
    },
    /// A jitter amplitude above [`JITTER_MAX`].
    #[error("jitter is {}, limit is {}", format_duration(*value), format_duration(*max))]
    JitterTooLarge {
        /// The rejected value.
        value: Duration,
        /// The limit.
        max: Duration,
    },
    /// A bandwidth cap below [`BANDWIDTH_BPS_MIN`].
    #[error("{field} is {value} bit/s, minimum is {min} bit/s (or unlimited)")]
    BandwidthTooSmall {
        /// `bandwidth_ab` or `bandwidth_ba`.
        field: &'static str,
        /// The rejected value.
        value: u64,
        /// The limit.
        min: u64,
    },
}

/// The complete settings of the simulated link. JSON: durations in integer microseconds,
/// bandwidths in integer bits per second with `null` meaning unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSettings {
    /// One-way propagation delay client → upstream.
    #[serde(rename = "delay_ab_us", with = "serde_us")]
    pub delay_ab: Duration,
    /// One-way propagation delay upstream → client.
    #[serde(rename = "delay_ba_us", with = "serde_us")]
    pub delay_ba: Duration,
    /// Jitter amplitude, both directions: each chunk's delay is `delay + U[-jitter, +jitter]`.
    #[serde(rename = "jitter_us", with = "serde_us")]
    pub jitter: Duration,
    /// Bandwidth cap client → upstream, shared by all connections.
    #[serde(rename = "bandwidth_ab_bps")]
    pub bandwidth_ab: Bandwidth,
    /// Bandwidth cap upstream → client, shared by all connections.
    #[serde(rename = "bandwidth_ba_bps")]
    pub bandwidth_ba: Bandwidth,
}

impl Default for LinkSettings {
    /// A transparent link: no delay, no jitter, no cap (profile `none`).
    fn default() -> Self {
        LinkSettings {
            delay_ab: Duration::ZERO,
            delay_ba: Duration::ZERO,
            jitter: Duration::ZERO,
            bandwidth_ab: Bandwidth::Unlimited,
            bandwidth_ba: Bandwidth::Unlimited,
        }
    }
}

impl LinkSettings {
    /// Names accepted by [`LinkSettings::profile`].
    pub const PROFILE_NAMES: &'static [&'static str] = &["none", "lan", "metro", "regional", "intercontinental"];

    /// A named profile:
    ///
    /// | name | RTT | bandwidth | jitter |
    /// |---|---|---|---|
    /// | `none` | 0 | unlimited | 0 |
    /// | `lan` | 0.2 ms | 10 Gbit/s | 0 |
    /// | `metro` | 2 ms | 10 Gbit/s | 0 |
    /// | `regional` | 20 ms | 1 Gbit/s | 0 |
    /// | `intercontinental` | 80 ms | 1 Gbit/s | ±2 ms |
    pub fn profile(name: &str) -> Result<Self, SettingsError> {
        let (rtt, bandwidth, jitter) = match name {
            "none" => return Ok(LinkSettings::default()),
            "lan" => (Duration::from_micros(200), Bandwidth::gbit(10), Duration::ZERO),
            "metro" => (Duration::from_millis(2), Bandwidth::gbit(10), Duration::ZERO),
            "regional" => (Duration::from_millis(20), Bandwidth::gbit(1), Duration::ZERO),
            "intercontinental" => (Duration::from_millis(80), Bandwidth::gbit(1), Duration::from_millis(2)),
            _ => {
                return Err(SettingsError::UnknownProfile { name: name.to_owned() });
            }
        };
        Ok(LinkSettings::symmetric(rtt, bandwidth, jitter))
    }

    /// The same delay (`rtt / 2`) and bandwidth both ways.
    pub fn symmetric(rtt: Duration, bandwidth: Bandwidth, jitter: Duration) -> Self {
        let delay_ab = rtt / 2;
        LinkSettings { delay_ab, delay_ba: rtt - delay_ab, jitter, bandwidth_ab: bandwidth, bandwidth_ba: bandwidth }
    }

    /// Round-trip propagation delay (without serialization or jitter).
    pub fn rtt(&self) -> Duration {
        self.delay_ab.saturating_add(self.delay_ba)
    }

    /// The link model's parameters for one direction.
    pub fn direction(&self, dir: Dir) -> DirectionParams {
        let (delay, bandwidth) = match dir {
            Dir::Ab => (self.delay_ab, self.bandwidth_ab),
            Dir::Ba => (self.delay_ba, self.bandwidth_ba),
        };
        DirectionParams { delay, jitter: self.jitter, bandwidth }
    }

    /// Checks every value against the limits in [`crate::limits`].
    pub fn validate(&self) -> Result<(), SettingsError> {
        for (field, value) in [("delay_ab", self.delay_ab), ("delay_ba", self.delay_ba)] {
            if value > DELAY_MAX {
                return Err(SettingsError::DelayTooLarge { field, value, max: DELAY_MAX });
            }
        }
        if self.jitter > JITTER_MAX {
            return Err(SettingsError::JitterTooLarge { value: self.jitter, max: JITTER_MAX });
        }
        for (field, bandwidth) in [("bandwidth_ab", self.bandwidth_ab), ("bandwidth_ba", self.bandwidth_ba)] {
            match bandwidth {
                Bandwidth::BitsPerSecond(value) if value < BANDWIDTH_BPS_MIN => {
                    return Err(SettingsError::BandwidthTooSmall { field, value, min: BANDWIDTH_BPS_MIN });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// One line for logs: `ab 10ms 1Gbit, ba 10ms 1Gbit, jitter 0s`.
    pub fn summary(&self) -> String {
        format!(
            "ab {} {}, ba {} {}, jitter ±{}",
            format_duration(self.delay_ab),
            self.bandwidth_ab,
            format_duration(self.delay_ba),
            self.bandwidth_ba,
            format_duration(self.jitter)
        )
    }
}

/// A partial change of the settings: absent fields stay as they are. Applied in this order:
/// `profile` (replaces everything), `rtt` (both delays = rtt / 2), `delay_ab` / `delay_ba`,
/// `jitter`, `bandwidth` (both directions), `bandwidth_ab` / `bandwidth_ba`. So explicit values
/// override a profile, and per-direction values override symmetric ones.
///
/// JSON: the same field names and units as [`LinkSettings`] plus `profile`, `rtt_us` and
/// `bandwidth_bps`; strings like `"20ms"` and `"1Gbit"` are accepted as values, and `null` for a
/// bandwidth means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkUpdate {
    /// Start from this named profile instead of the current settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Round-trip delay, split evenly over both directions.
    #[serde(rename = "rtt_us", default, skip_serializing_if = "Option::is_none", with = "serde_opt_us")]
    pub rtt: Option<Duration>,
    /// One-way delay client → upstream.
    #[serde(rename = "delay_ab_us", default, skip_serializing_if = "Option::is_none", with = "serde_opt_us")]
    pub delay_ab: Option<Duration>,
    /// One-way delay upstream → client.
    #[serde(rename = "delay_ba_us", default, skip_serializing_if = "Option::is_none", with = "serde_opt_us")]
    pub delay_ba: Option<Duration>,
    /// Jitter amplitude.
    #[serde(rename = "jitter_us", default, skip_serializing_if = "Option::is_none", with = "serde_opt_us")]
    pub jitter: Option<Duration>,
    /// Bandwidth cap, both directions.
    #[serde(rename = "bandwidth_bps", default, skip_serializing_if = "Option::is_none", with = "serde_opt_bandwidth")]
    pub bandwidth: Option<Bandwidth>,
    /// Bandwidth cap client → upstream.
    #[serde(rename = "bandwidth_ab_bps", default, skip_serializing_if = "Option::is_none", with = "serde_opt_bandwidth")]
    pub bandwidth_ab: Option<Bandwidth>,
    /// Bandwidth cap upstream → client.
    #[serde(rename = "bandwidth_ba_bps", default, skip_serializing_if = "Option::is_none", with = "serde_opt_bandwidth")]
    pub bandwidth_ba: Option<Bandwidth>,
}

impl LinkUpdate {
    /// True when the update changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == LinkUpdate::default()
    }

    /// The settings after applying this update to `current`, validated.
    pub fn apply(&self, current: &LinkSettings) -> Result<LinkSettings, SettingsError> {
        let mut s = match &self.profile {
            Some(name) => LinkSettings::profile(name)?,
            None => current.clone(),
        };
        if let Some(rtt) = self.rtt {
            s.delay_ab = rtt / 2;
            s.delay_ba = rtt - s.delay_ab;
        }
        if let Some(d) = self.delay_ab {
            s.delay_ab = d;
        }
        if let Some(d) = self.delay_ba {
            s.delay_ba = d;
        }
        if let Some(j) = self.jitter {
            s.jitter = j;
        }
        if let Some(b) = self.bandwidth {
            s.bandwidth_ab = b;
            s.bandwidth_ba = b;
        }
        if let Some(b) = self.bandwidth_ab {
            s.bandwidth_ab = b;
        }
        if let Some(b) = self.bandwidth_ba {
            s.bandwidth_ba = b;
        }
        s.validate()?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn profiles_have_the_documented_round_trips() {
        let rtt = |name| LinkSettings::profile(name).unwrap().rtt();
        assert_eq!(rtt("none"), Duration::ZERO);
        assert_eq!(rtt("lan"), Duration::from_micros(200));
        assert_eq!(rtt("metro"), 2 * MS);
        assert_eq!(rtt("regional"), 20 * MS);
        assert_eq!(rtt("intercontinental"), 80 * MS);
        for name in LinkSettings::PROFILE_NAMES {
            LinkSettings::profile(name).unwrap().validate().unwrap();
        }
        assert!(matches!(LinkSettings::profile("moon"), Err(SettingsError::UnknownProfile { .. })));
    }

    #[test]
    fn explicit_values_override_the_profile() {
        let update = LinkUpdate {
            profile: Some("regional".into()),
            rtt: Some(50 * MS),
            delay_ba: Some(5 * MS),
            bandwidth: Some(Bandwidth::mbit(100)),
            bandwidth_ab: Some(Bandwidth::Unlimited),
            ..LinkUpdate::default()
        };
        let s = update.apply(&LinkSettings::default()).unwrap();
        assert_eq!(s.delay_ab, 25 * MS);
        assert_eq!(s.delay_ba, 5 * MS);
        assert_eq!(s.bandwidth_ab, Bandwidth::Unlimited);
        assert_eq!(s.bandwidth_ba, Bandwidth::mbit(100));
        assert_eq!(s.jitter, Duration::ZERO);
    }

    #[test]
    fn a_partial_update_changes_only_its_fields() {
        let current = LinkSettings::profile("intercontinental").unwrap();
        let update = LinkUpdate { delay_ab: Some(MS), ..LinkUpdate::default() };
        let s = update.apply(&current).unwrap();
        assert_eq!(s, LinkSettings { delay_ab: MS, ..current });
    }

    #[test]
    fn out_of_range_settings_are_rejected() {
        let too_slow = LinkUpdate { bandwidth_ba: Some(Bandwidth::BitsPerSecond(10)), ..LinkUpdate::default() };
        assert!(matches!(
            too_slow.apply(&LinkSettings::default()),
            Err(SettingsError::BandwidthTooSmall { field: "bandwidth_ba", value: 10, .. })
        ));
        let too_far = LinkUpdate { rtt: Some(DELAY_MAX * 3), ..LinkUpdate::default() };
        assert!(matches!(too_far.apply(&LinkSettings::default()), Err(SettingsError::DelayTooLarge { .. })));
        let too_shaky = LinkUpdate { jitter: Some(JITTER_MAX + MS), ..LinkUpdate::default() };
        assert!(too_shaky.apply(&LinkSettings::default()).is_err());
    }

    #[test]
    fn update_json_accepts_numbers_strings_and_null() {
        let u: LinkUpdate = serde_json::from_str(
            r#"{"rtt_us": 20000, "jitter_us": "1ms", "bandwidth_ab_bps": null,
                "bandwidth_ba_bps": "100Mbit"}"#,
        )
        .unwrap();
        assert_eq!(u.rtt, Some(20 * MS));
        assert_eq!(u.jitter, Some(MS));
        assert_eq!(u.bandwidth_ab, Some(Bandwidth::Unlimited));
        assert_eq!(u.bandwidth_ba, Some(Bandwidth::mbit(100)));
        assert_eq!(u.delay_ab, None);
        assert!(serde_json::from_str::<LinkUpdate>(r#"{"rtt": 5}"#).is_err(), "typo rejected");
        // What the CLI sends is what the server reads.
        let back: LinkUpdate = serde_json::from_str(&serde_json::to_string(&u).unwrap()).unwrap();
        assert_eq!(back, u);
    }

    #[test]
    fn settings_json_round_trips() {
        let s = LinkSettings::profile("intercontinental").unwrap();
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["delay_ab_us"], 40_000);
        assert_eq!(json["bandwidth_ba_bps"], 1_000_000_000u64);
        assert_eq!(serde_json::from_value::<LinkSettings>(json).unwrap(), s);
    }
}
