//! `geomirror demo`: the README's first command. Two sites and a witness on
//! one machine: certificates, two node processes (site A and site B, each
//! with its own data directory), a witness process, and the WAN simulator
//! between the sites' peer links, on an embedded default configuration. A
//! site that dies (killed from another shell, or by `kill a` typed into the
//! demo) leaves the rest running; `start a` brings it back. Runs until
//! Ctrl-C, then stops everything it runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use geomirror_config::{ByteSize, NodeConfig, WitnessConfig};
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

/// One child process of the demo (a site's node or the witness).
struct Site {
    name: &'static str,
    /// `node` or `witness`.
    command: &'static str,
    config: PathBuf,
    /// None once it exited (or was killed) and is not restarted yet.
    child: Option<Child>,
    log: PathBuf,
}

impl Site {
    fn spawn(name: &'static str, command: &'static str, config: &Path, dir: &Path) -> anyhow::Result<Site> {
        let mut site = Site { name, command, config: config.to_path_buf(), child: None, log: dir.join(format!("{name}.log")) };
        site.start()?;
        Ok(site)
    }

    /// Starts the process (its log is appended to).
    fn start(&mut self) -> anyhow::Result<()> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let mut command = Command::new(std::env::current_exe().context("find the geomirror binary")?);
        command.args([self.command, "--config"]).arg(&self.config).stdin(Stdio::null()).stdout(Stdio::null()).stderr(file);
        // The demo's processes end with it, even if it is killed.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = command.spawn().with_context(|| format!("start {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process at once (SIGKILL: the site dies, nothing is flushed).
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it exited since the last call (then it is forgotten, to be
    /// started again on request).
    fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let Some(child) = &mut self.child else { return Ok(None) };
        let status = child.try_wait()?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }
}

impl Site {
    /// Asks the process to stop (SIGTERM); [`Drop`] waits for it.
    fn terminate(&self) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One site's config: its ends of the peer link and of the witness link.
struct SiteConfig<'a> {
    own: &'a str,
    peer: &'a str,
    nbd: SocketAddr,
    admin: SocketAddr,
    listen: &'a str,
    connect: &'a str,
    witness: SocketAddr,
    /// The peer's admin address (for `geomirror top` given one node).
    peer_admin: SocketAddr,
}

fn write_config(dir: &Path, site: SiteConfig<'_>, volume: &str, size: &str) -> anyhow::Result<PathBuf> {
    let SiteConfig { own, peer, nbd, admin, listen, connect, witness, peer_admin } = site;
    let path = dir.join(format!("{own}.toml"));
    let text = format!(
        "# geomirror demo: {own}\n[node]\nname = \"{own}\"\ndata_dir = \"{own}\"\n\n[nbd]\nlisten = \"{nbd}\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [peer]\nname = \"{peer}\"\nlisten = \"{listen}\"\nconnect = \"{connect}\"\npeer_timeout = \"10s\"\nadmin = \"{peer_admin}\"\n\n\
         [witness]\nname = \"witness\"\nconnect = \"{witness}\"\n\n\
         [tls]\nca = \"certs/ca.pem\"\ncert = \"certs/{own}.pem\"\nkey = \"certs/{own}-key.pem\"\n\n\
         [[volume]]\nname = \"{volume}\"\nsize = \"{size}\"\n"
    );
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    NodeConfig::load(&path).with_context(|| format!("check {}", path.display()))?;
    Ok(path)
}

fn write_witness_config(dir: &Path, listen: SocketAddr) -> anyhow::Result<PathBuf> {
    let path = dir.join("witness.toml");
    let text = format!(
        "# geomirror demo: the witness (a third site)\n[node]\nname = \"witness\"\ndata_dir = \"witness\"\n\n\
         [witness]\nlisten = \"{listen}\"\nnodes = [\"site-a\", \"site-b\"]\n\n\
         [tls]\nca = \"certs/ca.pem\"\ncert = \"certs/witness.pem\"\nkey = \"certs/witness-key.pem\"\n"
    );
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    WitnessConfig::load(&path).with_context(|| format!("check {}", path.display()))?;
    Ok(path)
}

async fn wait_until_up(sites: &mut [Site], admins: &[SocketAddr]) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        for site in sites.iter_mut() {
            if let Some(status) = site.exited()? {
                let tail = std::fs::read_to_string(&site.log).unwrap_or_default();
                bail!("{} exited ({status}); its log:\n{tail}", site.name);
            }
        }
        let mut up = 0;
        for admin in admins {
            let connected = |body: &str| body.contains("\"link\":\"up\"") && body.contains("\"witness\":\"connected\"");
            if http_get(*admin, "/status").await.is_ok_and(|body| connected(&body)) {
                up += 1;
            }
        }
        if up == admins.len() {
            return Ok(());
        }
        if Instant::now() > until {
            bail!(
                "the sites did not connect to each other and the witness within 30 s; see the logs in {}",
                sites[0].log.parent().unwrap_or(Path::new(".")).display()
            );
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

    let names = ["site-a".to_string(), "site-b".to_string(), "witness".to_string()];
    geomirror_node::peer::certs::generate(&dir.join("certs"), &names).context("generate certificates")?;
    let b_peer: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let a_peer = format!("127.0.0.1:{}", free_port()?);
    let witness: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let proxy = Proxy::start(ProxyConfig { control: Some(args.sim_control), ..ProxyConfig::new("127.0.0.1:0".parse()?, b_peer, link) })
        .await
        .context("start the WAN simulator")?;
    let via = proxy.local_addr().to_string();
    // site-a dials site-b (names sort that way) through the simulator; both
    // reach the witness directly.
    let a = SiteConfig {
        own: "site-a",
        peer: "site-b",
        nbd: args.nbd_a,
        admin: args.admin_a,
        listen: &a_peer,
        connect: &via,
        witness,
        peer_admin: args.admin_b,
    };
    let a_config = write_config(&dir, a, volume, size)?;
    let b_listen = b_peer.to_string();
    let b = SiteConfig {
        own: "site-b",
        peer: "site-a",
        nbd: args.nbd_b,
        admin: args.admin_b,
        listen: &b_listen,
        connect: &a_peer,
        witness,
        peer_admin: args.admin_a,
    };
    let b_config = write_config(&dir, b, volume, size)?;
    let w_config = write_witness_config(&dir, witness)?;
    let mut sites = vec![
        Site::spawn("witness", "witness", &w_config, &dir)?,
        Site::spawn("site-b", "node", &b_config, &dir)?,
        Site::spawn("site-a", "node", &a_config, &dir)?,
    ];
    wait_until_up(&mut sites, &[args.admin_a, args.admin_b]).await?;

    let (a, b, ctl) = (args.nbd_a, args.nbd_b, args.sim_control);
    let bin = std::env::current_exe().context("find the geomirror binary")?;
    let bin = bin.display();
    let pid = |name: &str| sites.iter().find(|s| s.name == name).and_then(Site::pid).map_or("?".into(), |p| p.to_string());
    println!("geomirror demo is running (files in {}):", dir.display());
    println!();
    println!("  site A   nbd://{a}/{volume}   admin http://{}/status   pid {}", args.admin_a, pid("site-a"));
    println!("  site B   nbd://{b}/{volume}   admin http://{}/status   pid {}", args.admin_b, pid("site-b"));
    println!("  witness  {witness}   pid {}", pid("witness"));
    println!("  WAN      {}   control http://{ctl}/link", proxy.settings().summary());
    println!();
    println!("Try:");
    println!("  qemu-io -f raw -c 'write -P 0xab 0 1M' nbd://{a}/{volume}      # write at A");
    println!("  qemu-io -f raw -c 'read -P 0xab 0 1M' nbd://{b}/{volume}       # read it at B at once (pulled from A)");
    println!("  curl -s http://{}/status                                  # health, claims, pulls, link state", args.admin_b);
    println!("  {bin} sim set --control {ctl} --rtt 80ms     # a longer WAN");
    println!("  {bin} sim partition --control {ctl}          # cut the link (heal: sim heal); the witness picks one survivor");
    println!("  fio --name=w --ioengine=nbd --uri=nbd://{a}/{volume} --rw=randwrite --bs=4k --size=64m --runtime=10 --time_based");
    println!(
        "  {bin} mode --admin {} --volume {volume} --set sync   # acknowledge writes once durable at both sites (async, sync-memory)",
        args.admin_a
    );
    println!();
    println!("The day a site dies (type these here, then Enter):");
    println!("  kill a      # kill -9 site A; B becomes the survivor within ~5 s and writes anywhere but A's extents");
    println!("  start a     # restart site A: it rejoins, resyncs, and keeps what B replaced in its conflict file");
    println!("  kill w      # the witness: nothing stops; but a site lost meanwhile fences the other (no lease to act on)");
    println!("  (or from another shell: kill -9 <pid>; a killed process is restarted here by `start`)");
    println!("At the survivor (B's admin when A died, A's when B died):");
    println!("  {bin} takeover --admin {} --volume {volume}         # what the lost site's extents expose", args.admin_b);
    println!("  {bin} takeover --admin {} --volume {volume} --yes   # take them over: served from B's data at once", args.admin_b);
    println!("  {bin} conflicts list --data-dir {}   # after A's return: what B's data replaced", dir.join("site-a").display());
    println!();
    println!("Logs: {}/{{site-a,site-b,witness}}.log. Ctrl-C stops the demo.", dir.display());

    let shutdown = CancellationToken::new();
    tokio::spawn(crate::cancel_on_signal(shutdown.clone()));
    // Commands typed into the demo, read on a thread of their own (tokio's
    // stdin would hold the runtime's shutdown until the next line). Run in
    // the background (`geomirror demo &`), a read of the terminal fails
    // instead of stopping the demo (SIGTTIN ignored), and commands end.
    // SAFETY: setting a signal's disposition to SIG_IGN.
    unsafe { libc::signal(libc::SIGTTIN, libc::SIG_IGN) };
    let (command_tx, mut commands) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if command_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let mut stdin_open = true;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                for site in sites.iter_mut() {
                    if let Some(status) = site.exited()? {
                        let letter = if site.name == "witness" { "w" } else { &site.name[site.name.len() - 1..] };
                        println!("{} exited ({status}); the rest of the demo keeps running. `start {letter}` restarts it; its log: {}",
                            site.name, site.log.display());
                    }
                }
            }
            line = commands.recv(), if stdin_open => match line {
                Some(line) => demo_command(&mut sites, line.trim()),
                None => stdin_open = false,
            },
        }
    }
    println!("stopping the demo");
    // All at once, then wait for each.
    for site in &sites {
        site.terminate();
    }
    drop(sites);
    proxy.shutdown().await;
    Ok(())
}

/// A command typed into the demo: `kill a|b|w`, `start a|b|w`.
fn demo_command(sites: &mut [Site], line: &str) {
    let mut words = line.split_whitespace();
    let (verb, which) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let name = match which {
        "a" | "site-a" => "site-a",
        "b" | "site-b" => "site-b",
        "w" | "witness" => "witness",
        _ if verb.is_empty() => return,
        _ => return println!("usage: kill a|b|w, start a|b|w"),
    };
    let site = sites.iter_mut().find(|s| s.name == name).expect("the three processes");
    match verb {
        "kill" if site.child.is_some() => {
            site.kill9();
            println!("{name} killed (SIGKILL)");
        }
        "kill" => println!("{name} is not running"),
        "start" if site.child.is_none() => match site.start() {
            Ok(()) => println!("{name} started (pid {})", site.pid().unwrap_or(0)),
            Err(e) => println!("failed to start {name}: {e:#}"),
        },
        "start" => println!("{name} is running (pid {})", site.pid().unwrap_or(0)),
        _ => println!("usage: kill a|b|w, start a|b|w"),
    }
}
