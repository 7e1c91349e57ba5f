//! Runs `geomirror sim` standalone, for trying the simulator by hand without the root binary:
//!
//! ```text
//! cargo run -p geomirror-sim --example sim -- --listen 127.0.0.1:7000 --to 127.0.0.1:7001 \
//!     --profile regional --control 127.0.0.1:7002
//! cargo run -p geomirror-sim --example sim -- status --control 127.0.0.1:7002
//! ```
//!
//! It installs no log subscriber (the root binary does); the addresses in use are printed on
//! stdout.

use clap::Parser;

#[derive(Parser)]
#[command(name = "sim", about = "WAN link simulator (TCP proxy)")]
struct Args {
    #[command(flatten)]
    sim: geomirror_sim::cli::SimArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    geomirror_sim::cli::run(Args::parse().sim).await
}
