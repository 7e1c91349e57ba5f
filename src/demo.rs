//! `geomirror demo`: the README's first command. Two sites on one machine:
//! certificates, two node processes (site A and site B, each with its own
//! data directory), and the WAN simulator between their peer links, on an
//! embedded default configuration. Runs until Ctrl-C, then stops everything.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use geomirror_config::{ByteSize, NodeConfig};
use geomirror_sim::cli::LinkArgs;
use geomirror_sim::{LinkSettings, Proxy, ProxyConfig};
use tokio_util::sync::CancellationToken;

/// Flags of `geomirror demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Directory for configs, certificates, data and logs (default: a fresh
    /// temporary directory, removed on exit).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The volume, as NAME:SIZE.
    #[arg(long, default_value = "vol0:1GiB")]
    volume: String,
    /// NBD address of site A.
    #[arg(long, default_value = "127.0.0.1:10809")]
    nbd_a: SocketAddr,
    /// NBD address of site B.
    #[arg(long, default_value = "127.0.0.1:10810")]
    nbd_b: SocketAddr,
    /// Admin address of site A.
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin_a: SocketAddr,
    /// Admin address of site B.
    #[arg(long, default_value = "127.0.0.1:9091")]
    admin_b: SocketAddr,
    /// Control API of the WAN simulator.
    #[arg(long, default_value = "127.0.0.1:9099")]
    sim_control: SocketAddr,
    /// The simulated WAN (default: 20 ms round trip, 1 Gbit/s).
    #[command(flatten)]
    link: LinkArgs,
}

struct Site {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Drop for Site {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[allow(clippy::too_many_arguments)]
fn write_config(
    dir: &Path,
    own: &str,
    peer: &str,
    nbd: SocketAddr,
    admin: SocketAddr,
    listen: &str,
    connect: &str,
    volume: &str,
    size: &str,
) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{own}.toml"));
    let text = format!(
        "# geomirror demo: {own}\n[node]\nname = \"{own}\"\ndata_dir = \"{own}\"\n\n[nbd]\nlisten = \"{nbd}\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [peer]\nname = \"{peer}\"\nlisten = \"{listen}\"\nconnect = \"{connect}\"\npeer_timeout = \"10s\"\n\n\
         [tls]\nca = \"certs/ca.pem\"\ncert = \"certs/{own}.pem\"\nkey = \"certs/{own}-key.pem\"\n\n\
         [[volume]]\nname = \"{volume}\"\nsize = \"{size}\"\n"
    );
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    NodeConfig::load(&path).with_context(|| format!("check {}", path.display()))?;
    Ok(path)
}

fn spawn_site(name: &'static str, config: &Path, dir: &Path) -> anyhow::Result<Site> {
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
    let child = Command::new(std::env::current_exe().context("find the geomirror binary")?)
        .args(["node", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .with_context(|| format!("start {name}"))?;
    Ok(Site { name, child, log })
}

async fn wait_until_up(sites: &mut [Site], admins: &[SocketAddr]) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        for site in sites.iter_mut() {
            if let Some(status) = site.child.try_wait()? {
                let tail = std::fs::read_to_string(&site.log).unwrap_or_default();
                bail!("{} exited ({status}); its log:\n{tail}", site.name);
            }
        }
        let mut up = 0;
        for admin in admins {
            if http_get(*admin, "/status").await.is_ok_and(|body| body.contains("\"link\":\"up\"")) {
                up += 1;
            }
        }
        if up == admins.len() {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("the sites did not connect within 30 s; see {}", sites[0].log.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await??;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut body)).await??;
    Ok(body)
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
    let (volume, size) = args.volume.split_once(':').context("--volume takes NAME:SIZE, e.g. vol0:1GiB")?;
    ByteSize::parse(size).map_err(|e| anyhow::anyhow!("--volume: {e}"))?;

    // The WAN: 20 ms and 1 Gbit/s unless flags say otherwise.
    let mut update = args.link.to_update();
    if update.is_empty() {
        update = LinkArgs { profile: Some("regional".into()), ..Default::default() }.to_update();
    }
    let link = update.apply(&LinkSettings::default()).map_err(|e| anyhow::anyhow!("link settings: {e}"))?;

    geomirror_node::peer::certs::generate(&dir.join("certs"), &["site-a".into(), "site-b".into()]).context("generate certificates")?;
    let b_peer: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let a_peer = format!("127.0.0.1:{}", free_port()?);
    let proxy = Proxy::start(ProxyConfig { control: Some(args.sim_control), ..ProxyConfig::new("127.0.0.1:0".parse()?, b_peer, link) })
        .await
        .context("start the WAN simulator")?;
    let via = proxy.local_addr().to_string();
    // site-a dials site-b (names sort that way) through the simulator.
    let a_config = write_config(&dir, "site-a", "site-b", args.nbd_a, args.admin_a, &a_peer, &via, volume, size)?;
    let b_config = write_config(&dir, "site-b", "site-a", args.nbd_b, args.admin_b, &b_peer.to_string(), &a_peer, volume, size)?;
    let mut sites = vec![spawn_site("site-b", &b_config, &dir)?, spawn_site("site-a", &a_config, &dir)?];
    wait_until_up(&mut sites, &[args.admin_a, args.admin_b]).await?;

    let (a, b, ctl) = (args.nbd_a, args.nbd_b, args.sim_control);
    println!("geomirror demo is running (files in {}):", dir.display());
    println!();
    println!("  site A  nbd://{a}/{volume}   admin http://{}/status", args.admin_a);
    println!("  site B  nbd://{b}/{volume}   admin http://{}/status", args.admin_b);
    println!("  WAN     {}   control http://{ctl}/link", proxy.settings().summary());
    println!();
    println!("Try:");
    println!("  qemu-io -f raw -c 'write -P 0xab 0 1M' nbd://{a}/{volume}      # write at A");
    println!("  qemu-io -f raw -c 'read -P 0xab 0 1M' nbd://{b}/{volume}       # read it at B at once (pulled from A)");
    println!("  curl -s http://{}/status                                  # claims, pulls, link state", args.admin_b);
    println!("  geomirror sim set --control {ctl} --rtt 80ms                # a longer WAN");
    println!("  geomirror sim partition --control {ctl}                     # cut the link (heal: geomirror sim heal)");
    println!("  fio --name=w --ioengine=nbd --uri=nbd://{a}/{volume} --rw=randwrite --bs=4k --size=64m --runtime=10 --time_based");
    println!();
    println!("Logs: {} and {}. Ctrl-C stops the demo.", sites[1].log.display(), sites[0].log.display());

    let shutdown = CancellationToken::new();
    tokio::spawn(crate::cancel_on_signal(shutdown.clone()));
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                for site in sites.iter_mut() {
                    if let Some(status) = site.child.try_wait()? {
                        bail!("{} exited unexpectedly ({status}); see {}", site.name, site.log.display());
                    }
                }
            }
        }
    }
    println!("stopping the demo");
    drop(sites);
    proxy.shutdown().await;
    Ok(())
}
