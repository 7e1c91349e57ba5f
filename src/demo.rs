//! `geomirror demo`: the README's first command.
//!
//! For now a single node on a default config written into `--dir` (a fresh
//! temporary directory by default); the two-site demo replaces it.

use std::path::PathBuf;

use anyhow::Context;
use geomirror_config::NodeConfig;
use tokio_util::sync::CancellationToken;

/// Flags of `geomirror demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Directory for config and data (default: a fresh temporary directory, removed on exit).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// NBD listen address.
    #[arg(long, default_value = "127.0.0.1:10809")]
    nbd: String,
    /// Admin listen address.
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin: String,
    /// The volume, as NAME:SIZE.
    #[arg(long, default_value = "vol0:1GiB")]
    volume: String,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let temp;
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::Builder::new().prefix("geomirror-demo-").tempdir().context("create a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let (name, size) = args.volume.split_once(':').context("--volume takes NAME:SIZE, e.g. vol0:1GiB")?;
    let config_path = dir.join("site-a.toml");
    let text = format!(
        "[node]\nname = \"site-a\"\ndata_dir = \"site-a\"\n[nbd]\nlisten = \"{}\"\n[admin]\nlisten = \"{}\"\n[[volume]]\nname = \"{name}\"\nsize = \"{size}\"\n",
        args.nbd, args.admin
    );
    std::fs::write(&config_path, &text).with_context(|| format!("write {}", config_path.display()))?;
    let config = NodeConfig::load(&config_path).context("load the demo config")?;
    println!("geomirror demo: config {}", config_path.display());
    println!("  NBD:    nbd://{}/{name}", args.nbd);
    println!("  admin:  http://{}/status  http://{}/metrics", args.admin, args.admin);
    println!("  try:    qemu-io -f raw -c 'write -P 0xab 0 1M' nbd://{}/{name}", args.nbd);
    println!("          qemu-io -f raw -c 'read -P 0xab 0 1M' nbd://{}/{name}", args.nbd);
    println!("  Ctrl-C stops the demo.");
    let shutdown = CancellationToken::new();
    tokio::spawn(crate::cancel_on_signal(shutdown.clone()));
    geomirror_node::run(config, shutdown, None).await
}
