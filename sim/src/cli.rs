//! `geomirror sim`: run the simulator, or talk to a running one.
//!
//! ```text
//! geomirror sim --listen ADDR --to ADDR [--profile NAME] [--rtt 20ms] [--delay-ab 10ms]
//!               [--delay-ba 10ms] [--jitter 2ms] [--bandwidth 1Gbit] [--bandwidth-ab ..]
//!               [--bandwidth-ba ..] [--control ADDR] [--seed N]
//! geomirror sim set       --control ADDR [same link flags]
//! geomirror sim partition --control ADDR [--mode hold|reset] [--direction both|ab|ba]
//! geomirror sim heal      --control ADDR
//! geomirror sim reset     --control ADDR
//! geomirror sim status    --control ADDR
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::builder::PossibleValuesParser;

use crate::client::ControlClient;
use crate::proxy::{Proxy, ProxyConfig};
use crate::settings::{LinkSettings, LinkUpdate};
use crate::status::{Direction, PartitionMode};
use crate::units::{Bandwidth, parse_bandwidth, parse_duration};

/// Arguments of `geomirror sim`.
#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SimArgs {
    /// Talk to a running simulator instead of starting one.
    #[command(subcommand)]
    pub command: Option<SimCommand>,

    /// Address to accept connections on (port 0 picks a free one; the chosen address is
    /// printed on stdout).
    #[arg(long, required = true, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Upstream to forward each connection to (HOST:PORT).
    #[arg(long, required = true, value_name = "ADDR")]
    pub to: Option<String>,

    /// Serve the control API (HTTP, JSON) on this address.
    #[arg(long, value_name = "ADDR")]
    pub control: Option<SocketAddr>,

    /// Seed for the jitter random numbers, to reproduce a run.
    #[arg(long)]
    pub seed: Option<u64>,

    /// Link settings.
    #[command(flatten)]
    pub link: LinkArgs,
}

/// Link settings flags; explicit values override `--profile`, per-direction values override
/// symmetric ones.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LinkArgs {
    /// Start from a named profile: none, lan (0.2 ms, 10 Gbit), metro (2 ms, 10 Gbit),
    /// regional (20 ms, 1 Gbit), intercontinental (80 ms, 1 Gbit, ±2 ms jitter).
    #[arg(long, value_name = "NAME", value_parser = PossibleValuesParser::new(LinkSettings::PROFILE_NAMES))]
    pub profile: Option<String>,
    /// Round-trip delay, split evenly over both directions (e.g. 20ms, 250us, 1.5s).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub rtt: Option<Duration>,
    /// One-way delay client → upstream.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub delay_ab: Option<Duration>,
    /// One-way delay upstream → client.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub delay_ba: Option<Duration>,
    /// Jitter amplitude: each chunk's delay is uniform in [delay - jitter, delay + jitter];
    /// bytes are never reordered.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub jitter: Option<Duration>,
    /// Bandwidth cap of each direction (e.g. 100Mbit, 1Gbit, unlimited).
    #[arg(long, value_parser = parse_bandwidth, value_name = "RATE")]
    pub bandwidth: Option<Bandwidth>,
    /// Bandwidth cap client → upstream.
    #[arg(long, value_parser = parse_bandwidth, value_name = "RATE")]
    pub bandwidth_ab: Option<Bandwidth>,
    /// Bandwidth cap upstream → client.
    #[arg(long, value_parser = parse_bandwidth, value_name = "RATE")]
    pub bandwidth_ba: Option<Bandwidth>,
}

impl LinkArgs {
    /// The flags as a partial update.
    pub fn to_update(&self) -> LinkUpdate {
        LinkUpdate {
            profile: self.profile.clone(),
            rtt: self.rtt,
            delay_ab: self.delay_ab,
            delay_ba: self.delay_ba,
            jitter: self.jitter,
            bandwidth: self.bandwidth,
            bandwidth_ab: self.bandwidth_ab,
            bandwidth_ba: self.bandwidth_ba,
        }
    }
}

/// Subcommands that talk to a running simulator's control API.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SimCommand {
    /// Change link settings (only the given flags change).
    Set {
        /// Control API address of the running simulator.
        #[arg(long, value_name = "ADDR")]
        control: SocketAddr,
        /// The settings to change.
        #[command(flatten)]
        link: LinkArgs,
    },
    /// Start a partition.
    Partition {
        /// Control API address of the running simulator.
        #[arg(long, value_name = "ADDR")]
        control: SocketAddr,
        /// hold: keep connections, hold their bytes; reset: reset and refuse connections.
        #[arg(long, value_enum, default_value = "hold")]
        mode: PartitionMode,
        /// Which directions to cut (ab = client → upstream).
        #[arg(long, value_enum, default_value = "both")]
        direction: Direction,
    },
    /// End all partitions; held bytes flow again.
    Heal {
        /// Control API address of the running simulator.
        #[arg(long, value_name = "ADDR")]
        control: SocketAddr,
    },
    /// Reset every open connection.
    Reset {
        /// Control API address of the running simulator.
        #[arg(long, value_name = "ADDR")]
        control: SocketAddr,
    },
    /// Print settings, partition state and counters as JSON.
    Status {
        /// Control API address of the running simulator.
        #[arg(long, value_name = "ADDR")]
        control: SocketAddr,
    },
}

/// Runs `geomirror sim`: the proxy until Ctrl-C, or one control request whose JSON answer is
/// printed on stdout.
pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    match &args.command {
        Some(command) => {
            let answer = execute(command).await?;
            print_line(&serde_json::to_string_pretty(&answer)?)
        }
        None => serve(args).await,
    }
}

/// Performs one control subcommand and returns the API's JSON answer (the status after it).
pub async fn execute(command: &SimCommand) -> anyhow::Result<serde_json::Value> {
    let (control, method, path, body) = match command {
        SimCommand::Set { control, link } => {
            let update = link.to_update();
            anyhow::ensure!(!update.is_empty(), "nothing to set: give at least one link flag");
            (*control, "PUT", "/link", Some(serde_json::to_string(&update)?))
        }
        SimCommand::Partition { control, mode, direction } => {
            let body = serde_json::json!({ "mode": mode, "direction": direction });
            (*control, "POST", "/partition", Some(body.to_string()))
        }
        SimCommand::Heal { control } => (*control, "POST", "/heal", None),
        SimCommand::Reset { control } => (*control, "POST", "/reset", None),
        SimCommand::Status { control } => (*control, "GET", "/link", None),
    };
    ControlClient::new(control).request(method, path, body).await.with_context(|| format!("{method} {path} on the simulator at {control}"))
}

async fn serve(args: SimArgs) -> anyhow::Result<()> {
    let listen = args.listen.context("--listen is required to run the simulator")?;
    let to = args.to.context("--to is required to run the simulator")?;
    let upstream = tokio::net::lookup_host(&to)
        .await
        .with_context(|| format!("resolve upstream {to}"))?
        .next()
        .with_context(|| format!("resolve upstream {to}: no address"))?;
    let link = args.link.to_update().apply(&LinkSettings::default()).context("check link flags")?;
    let handle = Proxy::start(ProxyConfig { listen, upstream, link, control: args.control, seed: args.seed })
        .await
        .context("start the link simulator")?;
    // One line on stdout, so scripts and tests can learn ports chosen with port 0.
    let mut ready = format!("listen={} upstream={upstream}", handle.local_addr());
    if let Some(control) = handle.control_addr() {
        ready.push_str(&format!(" control={control}"));
    }
    print_line(&ready)?;
    tokio::signal::ctrl_c().await.context("wait for Ctrl-C")?;
    tracing::info!("stopping the link simulator");
    handle.shutdown().await;
    Ok(())
}

/// Prints one line on stdout and flushes it. Unlike `println!`, a closed stdout (`| head`)
/// is not a panic: it is ignored, since nobody is left to read the line.
fn print_line(line: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("write to stdout"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// Mirrors how the root binary mounts `sim`.
    #[derive(Debug, Parser)]
    struct Root {
        #[command(subcommand)]
        command: RootCommand,
    }

    #[derive(Debug, clap::Subcommand)]
    enum RootCommand {
        Sim(SimArgs),
    }

    fn parse(args: &[&str]) -> Result<SimArgs, clap::Error> {
        let argv = std::iter::once("geomirror").chain(std::iter::once("sim")).chain(args.iter().copied());
        Root::try_parse_from(argv).map(|root| match root.command {
            RootCommand::Sim(args) => args,
        })
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Root::command().debug_assert();
    }

    #[test]
    fn proxy_flags_parse_and_override_the_profile() {
        let args = parse(&[
            "--listen",
            "127.0.0.1:7000",
            "--to",
            "localhost:7001",
            "--profile",
            "regional",
            "--rtt",
            "50ms",
            "--delay-ba",
            "5ms",
            "--bandwidth-ab",
            "100Mbit",
            "--jitter",
            "250us",
            "--control",
            "127.0.0.1:7002",
        ])
        .unwrap();
        assert!(args.command.is_none());
        assert_eq!(args.to.as_deref(), Some("localhost:7001"));
        let s = args.link.to_update().apply(&LinkSettings::default()).unwrap();
        assert_eq!(s.delay_ab, Duration::from_millis(25));
        assert_eq!(s.delay_ba, Duration::from_millis(5));
        assert_eq!(s.jitter, Duration::from_micros(250));
        assert_eq!(s.bandwidth_ab, Bandwidth::mbit(100));
        assert_eq!(s.bandwidth_ba, Bandwidth::gbit(1), "from the profile");
    }

    #[test]
    fn running_the_proxy_needs_listen_and_to() {
        assert!(parse(&["--listen", "127.0.0.1:7000"]).is_err());
        assert!(parse(&["--to", "127.0.0.1:7000"]).is_err());
        assert!(parse(&["--listen", "127.0.0.1:7000", "--to", "x:1", "--rtt", "fast"]).is_err());
        assert!(parse(&["--listen", "127.0.0.1:7000", "--to", "x:1", "--profile", "moon"]).is_err());
    }

    #[test]
    fn subcommands_parse_without_proxy_flags() {
        let args = parse(&["set", "--control", "127.0.0.1:9", "--rtt", "80ms"]).unwrap();
        match args.command {
            Some(SimCommand::Set { control, link }) => {
                assert_eq!(control.port(), 9);
                assert_eq!(link.rtt, Some(Duration::from_millis(80)));
            }
            other => panic!("{other:?}"),
        }
        let args = parse(&["partition", "--control", "127.0.0.1:9"]).unwrap();
        assert!(matches!(args.command, Some(SimCommand::Partition { mode: PartitionMode::Hold, direction: Direction::Both, .. })));
        let args = parse(&["partition", "--control", "127.0.0.1:9", "--mode", "reset", "--direction", "ba"]).unwrap();
        assert!(matches!(args.command, Some(SimCommand::Partition { mode: PartitionMode::Reset, direction: Direction::Ba, .. })));
        for sub in ["heal", "reset", "status"] {
            assert!(parse(&[sub, "--control", "127.0.0.1:9"]).is_ok(), "{sub}");
            assert!(parse(&[sub]).is_err(), "{sub} needs --control");
        }
        assert!(parse(&["--listen", "127.0.0.1:1", "status", "--control", "127.0.0.1:9"]).is_err());
    }
}
