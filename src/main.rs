//! `geomirror`: the one binary. Thin CLI dispatch; each subcommand calls
//! into a crate of the workspace.

mod console;
mod demo;
mod ops;
mod top;

/// Threads of the blocking pool (store I/O); more requests queue for them.
const BLOCKING_THREADS_MAX: usize = 64;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use geomirror_config::{NodeConfig, WitnessConfig};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "geomirror", version, about = "Symmetric active-active geo-mirroring for block storage over NBD")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node from a config file.
    Node {
        /// The node's TOML config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and print the effective configuration.
    CheckConfig {
        /// The TOML config to check.
        file: PathBuf,
    },
    /// Run the demo: a ready-made setup on a default config, until Ctrl-C.
    Demo(demo::DemoArgs),
    /// The WAN link simulator (a TCP proxy with delay, bandwidth, partitions),
    /// or, with a subcommand, change a running one through its control API.
    Sim(geomirror_sim::cli::SimArgs),
    /// Run a witness from a config file (the third site that decides
    /// which node survives when the two lose each other).
    Witness {
        /// The witness's TOML config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Take over the extents a lost peer owned (shows what it takes first).
    Takeover(ops::TakeoverArgs),
    /// Change a volume's replication mode on a running node.
    Mode(ops::ModeArgs),
    /// A running node's health, link and volumes at a glance (exit code 1
    /// when anything is not healthy).
    Status(console::StatusArgs),
    /// Both sites side by side in the terminal: health, link, exposure,
    /// lag, claim rates, resync, recent events.
    Top(top::TopArgs),
    /// The blocks a returning site saved before the survivor's data
    /// replaced them.
    #[command(subcommand)]
    Conflicts(ops::ConflictsCommand),
    /// Write a CA and a certificate per node for the peer link.
    Certs {
        /// Output directory (an existing CA there is reused).
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// A node name; repeat for each node.
        #[arg(long = "node", required_unless_present = "hosts")]
        nodes: Vec<String>,
        /// A host that reaches a node's NBD server over TLS; repeat for each.
        /// Writes OUT/NAME/ with `ca-cert.pem`, `client-cert.pem` and
        /// `client-key.pem`: the directory QEMU's `tls-creds-x509` and
        /// libnbd's `tls-certificates=` read.
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let logs = matches!(cli.command, Command::Node { .. } | Command::Witness { .. } | Command::Demo(_) | Command::Sim(_));
    let result = match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Node { config } => runtime().and_then(|rt| rt.block_on(run_node(config))),
        Command::Demo(args) => runtime().and_then(|rt| rt.block_on(demo::run(args))),
        Command::Sim(args) => sim_runtime().and_then(|rt| rt.block_on(geomirror_sim::cli::run(args))),
        Command::Certs { out, nodes, hosts } => certs(&out, &nodes, &hosts),
        Command::Witness { config } => runtime().and_then(|rt| rt.block_on(run_witness(config))),
        Command::Takeover(args) => runtime().and_then(|rt| rt.block_on(ops::takeover(args))),
        Command::Mode(args) => runtime().and_then(|rt| rt.block_on(ops::mode(args))),
        Command::Status(args) => runtime().and_then(|rt| rt.block_on(console::status(args))),
        Command::Top(args) => runtime().and_then(|rt| rt.block_on(top::run(args))),
        Command::Conflicts(cmd) => ops::conflicts(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Once: as a log line where the command logs (a node, a witness,
            // the simulator, the demo), else as a plain message.
            if logs {
                tracing::error!("failed to {e:#}");
            } else {
                eprintln!("error: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // Store I/O runs on the blocking pool; writes to one file serialize in
    // the kernel anyway, so a bounded pool only saves threads.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(crate::BLOCKING_THREADS_MAX)
        .build()
        .context("start the async runtime")
}

/// The WAN simulator's runtime: one thread. Forwarding is a read and a
/// write per chunk; on the multi-threaded runtime a chunk's wake-up often
/// crossed threads, which added about 75 us to every round trip through a
/// 0 ms link on this VM (C echo through the simulator: p50 171 us on two
/// threads, 95 us on one; direct, 27 us). Its precise timer keeps its own
/// thread.
fn sim_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("start the async runtime")
}

fn certs(out: &std::path::Path, nodes: &[String], hosts: &[String]) -> anyhow::Result<()> {
    let all: Vec<String> = nodes.iter().chain(hosts).cloned().collect();
    let written = geomirror_node::peer::certs::generate(out, &all).context("generate certificates")?;
    for path in written {
        println!("{}", path.display());
    }
    for host in hosts {
        let dir = out.join(host);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        for (from, to) in [
            ("ca.pem".to_string(), "ca-cert.pem"),
            (format!("{host}.pem"), "client-cert.pem"),
            (format!("{host}-key.pem"), "client-key.pem"),
        ] {
            std::fs::copy(out.join(&from), dir.join(to)).with_context(|| format!("write {}", dir.join(to).display()))?;
        }
        println!("{}/ (for qemu tls-creds-x509 dir=, libnbd tls-certificates=)", dir.display());
    }
    Ok(())
}

fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let config = NodeConfig::load(file).context("load the config")?;
    // The files it names must be there and usable, as the node will need them.
    if let (Some(peer), Some(tls)) = (&config.peer, &config.tls) {
        geomirror_node::peer::tls::PeerTls::load(&tls.ca, &tls.cert, &tls.key, &config.node.name, &peer.name)
            .context("load the TLS files named in [tls]")?;
    }
    if let (Some(cert), Some(key)) = (&config.nbd.tls_cert, &config.nbd.tls_key) {
        geomirror_node::peer::tls::PeerTls::host_acceptor(cert, key, config.nbd.tls_client_ca.as_deref())
            .context("load the host TLS files named in [nbd]")?;
    }
    print!("{}", config.to_toml());
    Ok(())
}

async fn run_node(path: PathBuf) -> anyhow::Result<()> {
    let config = NodeConfig::load(&path).context("load the config")?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    geomirror_node::run(config, shutdown, None).await.context("run the node")
}

async fn run_witness(path: PathBuf) -> anyhow::Result<()> {
    let config = WitnessConfig::load(&path).context("load the witness config")?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    geomirror_node::witness::server::run(config, shutdown, None).await.context("run the witness")
}

/// Cancels `token` on SIGINT or SIGTERM.
pub(crate) async fn cancel_on_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received");
    token.cancel();
}
