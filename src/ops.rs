//! The operator's commands for the day a site dies: `takeover` (online,
//! through a node's admin API; or offline, on a stopped node's data
//! directory) and `conflicts` (list, extract, repair the blocks saved when
//! a returning site's data was replaced).

use std::io::{Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use geomirror_core::ConflictKind;
use geomirror_node::engine::claims_file::ClaimsFile;
use geomirror_node::engine::conflict_file::ConflictFile;
use geomirror_node::store::file::DataDirLock;
use geomirror_node::store::meta::VolumeMeta;
use geomirror_wire::status::{ModeChange, TakeoverStatus};

/// A client of a node's admin API; with `GEOMIRROR_ADMIN_TOKEN` set, its
/// requests carry that bearer token (a node with `admin.token_file`
/// requires it).
pub fn admin_client(admin: SocketAddr) -> geomirror_sim::client::ControlClient {
    let token = std::env::var("GEOMIRROR_ADMIN_TOKEN").ok().filter(|t| !t.is_empty());
    geomirror_sim::client::ControlClient::new(admin).with_token(token)
}

/// `geomirror takeover`.
#[derive(Args, Debug)]
pub struct TakeoverArgs {
    /// A running node's admin address (online takeover).
    #[arg(long, conflicts_with = "data_dir", required_unless_present = "data_dir")]
    pub admin: Option<SocketAddr>,
    /// A stopped node's data directory (offline takeover: the volume is then
    /// served without its peer and never mirrored again automatically).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The volume.
    #[arg(long)]
    pub volume: String,
    /// Take over (without it, only show what a takeover takes).
    #[arg(long)]
    pub yes: bool,
    /// Confirm the peer is down (needed without a witness, and offline): if
    /// it is in fact alive and serving, both sites diverge.
    #[arg(long)]
    pub peer_is_down: bool,
}

/// `geomirror mode`.
#[derive(Args, Debug)]
pub struct ModeArgs {
    /// A running node's admin address.
    #[arg(long)]
    pub admin: SocketAddr,
    /// The volume.
    #[arg(long)]
    pub volume: String,
    /// The new mode: async, sync-memory or sync (the config file's mode
    /// holds again at the next start).
    #[arg(long)]
    pub set: geomirror_config::ReplicationMode,
}

/// `geomirror mode`: changes a volume's replication mode on a running node;
/// a switch to a sync mode returns once the backlog is durable at the peer.
pub async fn mode(args: ModeArgs) -> anyhow::Result<()> {
    let client = crate::ops::admin_client(args.admin);
    let path = format!("/mode?volume={}&set={}", args.volume, args.set.as_str());
    let answer = client.request("POST", &path, None).await.context("the node did not change the mode")?;
    let change: ModeChange = serde_json::from_value(answer)?;
    println!("volume {}: mode {} -> {}", change.volume, change.from, change.to);
    match (&change.backlog_error, change.backlog_durable) {
        (Some(e), _) => {
            bail!("the mode is {} now, but the writes acknowledged before the switch are not known durable at the peer: {e}", change.to)
        }
        (None, true) => println!("every write acknowledged before the switch is durable at both sites"),
        (None, false) => {}
    }
    Ok(())
}

/// `geomirror conflicts`.
#[derive(Subcommand, Debug)]
pub enum ConflictsCommand {
    /// List the saved blocks of every volume (or one).
    List {
        /// The node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Only this volume.
        #[arg(long)]
        volume: Option<String>,
    },
    /// Write a raw image of the volume's size holding the saved blocks at
    /// their offsets (holes elsewhere): `qemu-img` reads it as raw, and
    /// `qemu-img compare` against the volume shows what the outage replaced.
    Extract {
        /// The node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The volume.
        #[arg(long)]
        volume: String,
        /// The image to write (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Only the blocks saved when returning from the outage of this
        /// generation (the `theirs` column of `list`).
        #[arg(long)]
        generation: Option<u64>,
    },
    /// Remove an incomplete last record (a crash while saving it; the block
    /// it was saving had not been overwritten yet).
    Repair {
        /// The node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The volume.
        #[arg(long)]
        volume: String,
    },
}

fn volume_dir(data_dir: &Path, volume: &str) -> PathBuf {
    data_dir.join("volumes").join(volume)
}

fn meta_of(data_dir: &Path, volume: &str) -> anyhow::Result<VolumeMeta> {
    let path = volume_dir(data_dir, volume).join("meta");
    let bytes =
        std::fs::read(&path).with_context(|| format!("read {} (is `{volume}` a volume of this data directory?)", path.display()))?;
    VolumeMeta::decode(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn human_bytes(b: u64) -> String {
    if b >= 1 << 30 { format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64) } else { format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64) }
}

fn print_exposure(s: &TakeoverStatus) {
    println!("volume {}: {} extents ({}) owned by the lost peer", s.volume, s.extents.len(), human_bytes(s.bytes));
    for e in s.extents.iter().take(50) {
        match e.since_last_copy_seconds {
            Some(secs) => println!("  extent {:>8}  last copy from the peer {secs:.1} s ago", e.extent),
            None => println!("  extent {:>8}  no copy from the peer since this node started", e.extent),
        }
    }
    if s.extents.len() > 50 {
        println!("  ... and {} more", s.extents.len() - 50);
    }
}

/// `geomirror takeover`.
pub async fn takeover(args: TakeoverArgs) -> anyhow::Result<()> {
    match (&args.admin, &args.data_dir) {
        (Some(admin), _) => online(*admin, &args).await,
        (None, Some(dir)) => offline(dir, &args),
        (None, None) => bail!("give --admin ADDR (a running node) or --data-dir DIR (a stopped one)"),
    }
}

async fn online(admin: SocketAddr, args: &TakeoverArgs) -> anyhow::Result<()> {
    let client = crate::ops::admin_client(admin);
    let volume = &args.volume;
    let mut query = format!("/takeover?volume={volume}");
    if args.peer_is_down {
        query.push_str("&peer_is_down=yes");
    }
    let shown: TakeoverStatus = serde_json::from_value(client.request("GET", &query, None).await?)?;
    print_exposure(&shown);
    if !args.yes {
        println!(
            "A takeover serves these extents from this site's data at once. Writes the peer acknowledged and had not copied here \
             are lost to hosts; the peer saves its differing blocks to its conflict file when it returns."
        );
        if !shown.witness {
            println!(
                "This node has no witness, so nothing proves the peer is down: take over only if you know it is (--peer-is-down). \
                 If it is in fact alive and serving its hosts, both sites write the same extents and diverge until it returns, \
                 when its differing blocks go to its conflict file."
            );
        }
        match &shown.refused {
            Some(reason) => println!("A takeover now would be refused: {reason}."),
            None => println!("Run again with --yes to take over."),
        }
        return Ok(());
    }
    let mut path = format!("/takeover?volume={volume}&confirm=yes");
    if args.peer_is_down {
        path.push_str("&peer_is_down=yes");
    }
    let taken: TakeoverStatus =
        serde_json::from_value(client.request("POST", &path, None).await.context("the node refused the takeover")?)?;
    println!("took over {} extents ({}) under outage generation {}", taken.extents.len(), human_bytes(taken.bytes), taken.generation);
    Ok(())
}

fn offline(data_dir: &Path, args: &TakeoverArgs) -> anyhow::Result<()> {
    let volume = &args.volume;
    if args.yes && !args.peer_is_down {
        bail!("an offline takeover needs --peer-is-down too: nothing but you can tell that the peer is down");
    }
    // Not while the node runs: it would rewrite the claims file after us.
    let _lock = DataDirLock::acquire(data_dir).context("lock the data directory (is the node still running?)")?;
    let meta = meta_of(data_dir, volume)?;
    let file = ClaimsFile::new(&volume_dir(data_dir, volume));
    let mut contents = file.load()?;
    let extent_bytes = u64::from(meta.extent_bytes);
    println!(
        "volume {volume} (offline): {} extents ({}) owned by the peer; {} extents owned here and perhaps not yet at the peer",
        contents.record.len(),
        human_bytes(contents.record.len() as u64 * extent_bytes),
        contents.own.len()
    );
    if contents.detached {
        println!("it was already taken over offline: nothing to do");
        return Ok(());
    }
    if !args.yes {
        println!(
            "An offline takeover serves the whole volume from this site's data without its peer (start the node without [peer]); \
             the volume is then never mirrored again automatically. Run again with --yes --peer-is-down to take over."
        );
        return Ok(());
    }
    contents.detached = true;
    contents.record.clear();
    contents.own.clear();
    contents.gives.clear();
    contents.released.clear();
    contents.taken.clear();
    file.store(&contents)?;
    println!("volume {volume} is taken over: start the node without [peer] to serve it alone");
    Ok(())
}

/// `geomirror conflicts ...`.
pub fn conflicts(cmd: ConflictsCommand) -> anyhow::Result<()> {
    match cmd {
        ConflictsCommand::List { data_dir, volume } => {
            let volumes: Vec<String> = match volume {
                Some(v) => vec![v],
                None => std::fs::read_dir(data_dir.join("volumes"))
                    .with_context(|| format!("list {}", data_dir.join("volumes").display()))?
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| !n.starts_with('.'))
                    .collect(),
            };
            for v in volumes {
                let meta = meta_of(&data_dir, &v)?;
                let file = ConflictFile::new(&volume_dir(&data_dir, &v), &v, meta.volume_id);
                let Some((records, problem)) = file.read_intact()? else {
                    println!("volume {v}: no conflict file");
                    continue;
                };
                println!("volume {v}: {} saved blocks in {}", records.len(), file.path().display());
                if let Some(problem) = problem {
                    println!("  WARNING: {problem}; what follows it is not listed (`geomirror conflicts repair` cuts a torn last record)");
                }
                println!("  {:>14} {:>8} {:<14} {:>5} {:>5}  saved at (UTC)", "offset", "length", "kind", "ours", "theirs");
                for r in &records {
                    let kind = match r.kind {
                        ConflictKind::TakenOver => "taken-over",
                        ConflictKind::ClaimedAlone => "claimed-alone",
                    };
                    println!(
                        "  {:>14} {:>8} {:<14} {:>5} {:>5}  {}",
                        r.offset,
                        r.data.len(),
                        kind,
                        r.our_generation,
                        r.their_generation,
                        utc(r.saved_at_ms)
                    );
                }
            }
            Ok(())
        }
        ConflictsCommand::Extract { data_dir, volume, out, generation } => {
            let meta = meta_of(&data_dir, &volume)?;
            let file = ConflictFile::new(&volume_dir(&data_dir, &volume), &volume, meta.volume_id);
            let (records, problem) = file.read_intact()?.unwrap_or_default();
            if let Some(problem) = problem {
                eprintln!("warning: {problem}; only the records before it are extracted");
            }
            if let Some(r) = records.iter().find(|r| r.offset.checked_add(r.data.len() as u64).is_none_or(|end| end > meta.size)) {
                bail!(
                    "a saved block at {} lies outside the volume ({} bytes): the conflict file does not belong to it",
                    r.offset,
                    meta.size
                );
            }
            let mut image = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&out)
                .with_context(|| format!("create {} (it must not exist)", out.display()))?;
            image.set_len(meta.size).with_context(|| format!("size {}", out.display()))?;
            let mut written = 0;
            // In file order: a block saved again later (a newer outage) wins.
            for r in records.iter().filter(|r| generation.is_none_or(|g| r.their_generation == g)) {
                image.seek(SeekFrom::Start(r.offset))?;
                image.write_all(&r.data)?;
                written += 1;
            }
            image.sync_all()?;
            println!("wrote {written} saved blocks into {} ({} bytes, raw)", out.display(), meta.size);
            Ok(())
        }
        ConflictsCommand::Repair { data_dir, volume } => {
            // Not while the node runs: an append in progress looks torn.
            let _lock = DataDirLock::acquire(&data_dir).context("lock the data directory (is the node still running?)")?;
            let meta = meta_of(&data_dir, &volume)?;
            let file = ConflictFile::new(&volume_dir(&data_dir, &volume), &volume, meta.volume_id);
            let cut = file.repair()?;
            println!("removed {cut} bytes of an incomplete last record from {}", file.path().display());
            Ok(())
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS` of a Unix time in milliseconds.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(1_764_064_800_000), "2025-11-25 10:00:00");
    }
}
