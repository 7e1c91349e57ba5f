//! The systems under test, each started on its own ports in a directory of
//! the benchmark's temp dir, serving one export `vol0` of the same size.
//!
//! * [`start_geomirror`]: a single-site `geomirror node` (no peer).
//! * [`start_qemu_nbd`]: `qemu-nbd` on a sparse raw file, the "local limit"
//!   a user would pick instead (see /work/shared/PEERS.md), with the page
//!   cache (`--cache=writeback`) and a thread pool (`--aio=threads`), i.e.
//!   the same kind of buffered I/O geomirror does.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::procs::{self, Server};

/// Name of the export every system serves.
pub const EXPORT: &str = "vol0";
/// Size of that export (unless started with `*_sized`).
pub const VOLUME_BYTES: u64 = 1 << 30;
/// How long a server may take to accept its first NBD handshake.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running system: its NBD URI and the process behind it.
pub struct Target {
    /// Column name in the tables ("geomirror", "qemu-nbd").
    pub label: String,
    /// `nbd://127.0.0.1:PORT/vol0`.
    pub uri: String,
    /// The process (killed when the target is dropped).
    pub server: Server,
    /// `127.0.0.1:PORT` of its admin endpoint (`/status`, `/metrics`), if
    /// it has one (geomirror).
    pub admin: Option<String>,
}

fn uri(port: u16) -> String {
    format!("nbd://127.0.0.1:{port}/{EXPORT}")
}

/// The `[node]/[nbd]/[admin]/[[volume]]` config of a single-site node.
fn geomirror_config(name: &str, data_dir: &Path, nbd_port: u16, admin_port: u16, volume_bytes: u64) -> String {
    let data_dir = data_dir.display();
    format!(
        r#"[node]
name = "{name}"
data_dir = "{data_dir}"

[nbd]
listen = "127.0.0.1:{nbd_port}"

[admin]
listen = "127.0.0.1:{admin_port}"

[[volume]]
name = "{EXPORT}"
size = "{volume_bytes}"
"#
    )
}

/// Starts `binary node --config …` with a fresh data dir under `dir` and
/// waits until its export answers an NBD handshake.
pub fn start_geomirror(binary: &Path, dir: &Path) -> Result<Target> {
    start_geomirror_sized(binary, dir, VOLUME_BYTES)
}

/// [`start_geomirror`] with a volume of `volume_bytes`.
pub fn start_geomirror_sized(binary: &Path, dir: &Path, volume_bytes: u64) -> Result<Target> {
    if !binary.is_file() {
        bail!(
            "geomirror binary not found at {}; build it with `cargo build --release -p geomirror` or pass --geomirror PATH",
            binary.display()
        );
    }
    let home = dir.join("geomirror");
    std::fs::create_dir_all(&home).with_context(|| format!("create {}", home.display()))?;
    let (nbd_port, admin_port) = (procs::free_port()?, procs::free_port()?);
    let config_path = home.join("node.toml");
    std::fs::write(&config_path, geomirror_config("bench-site-a", &home.join("data"), nbd_port, admin_port, volume_bytes))
        .with_context(|| format!("write {}", config_path.display()))?;
    let args = vec!["node".to_string(), "--config".to_string(), config_path.display().to_string()];
    let mut server = Server::start("geomirror", binary, &args, dir.join("geomirror.log"))?;
    let uri = uri(nbd_port);
    server.wait_nbd_ready(&uri, volume_bytes, READY_TIMEOUT)?;
    Ok(Target { label: "geomirror".into(), uri, server, admin: Some(format!("127.0.0.1:{admin_port}")) })
}

/// Starts `qemu-nbd` on a new sparse raw file under `dir` and waits until
/// its export answers an NBD handshake.
pub fn start_qemu_nbd(dir: &Path) -> Result<Target> {
    start_qemu_nbd_sized(dir, VOLUME_BYTES)
}

/// [`start_qemu_nbd`] on a raw file of `volume_bytes`.
pub fn start_qemu_nbd_sized(dir: &Path, volume_bytes: u64) -> Result<Target> {
    let home = dir.join("qemu-nbd");
    std::fs::create_dir_all(&home).with_context(|| format!("create {}", home.display()))?;
    let image = home.join("vol0.raw");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(volume_bytes))
        .with_context(|| format!("create the sparse image {}", image.display()))?;
    let port = procs::free_port()?;
    let args: Vec<String> = [
        "-f",
        "raw",
        "-x",
        EXPORT,
        "-b",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        "--cache=writeback",
        "--aio=threads",
        &image.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut server = Server::start("qemu-nbd", Path::new("qemu-nbd"), &args, dir.join("qemu-nbd.log"))?;
    let uri = uri(port);
    server.wait_nbd_ready(&uri, volume_bytes, READY_TIMEOUT)?;
    Ok(Target { label: "qemu-nbd".into(), uri, server, admin: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geomirror_config_names_ports_and_volume() {
        let toml = geomirror_config("a", Path::new("/tmp/x/data"), 1000, 1001, VOLUME_BYTES);
        assert!(toml.contains("data_dir = \"/tmp/x/data\""));
        assert!(toml.contains("listen = \"127.0.0.1:1000\"") && toml.contains("listen = \"127.0.0.1:1001\""));
        assert!(toml.contains("name = \"vol0\"") && toml.contains("size = \"1073741824\""));
    }
}
