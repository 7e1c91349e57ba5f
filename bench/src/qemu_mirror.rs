//! The QEMU mirroring peers of PEERS.md: at site A `qemu-storage-daemon`
//! exports the volume over NBD and runs a `blockdev-mirror` job (sync
//! `none`) to site B's `qemu-nbd`, reached through a `geomirror sim` with
//! the same link settings geomirror gets. Copy mode `write-blocking` (each
//! write waits for B: synchronous mirroring) or `background` (asynchronous).
//!
//! Both raw images start as identical sparse files (all zeros), so the
//! `sync: none` job is ready at once. B's `qemu-nbd` is started with
//! `--shared` so that the freshness probes can read B's replica directly
//! (at site B, not through the simulator) while the mirror writes to it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::procs::{self, Server};
use crate::qmp::{BlockJob, Qmp};
use crate::sim::Sim;
use crate::systems::{EXPORT, VOLUME_BYTES};

/// How long a server may take to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Mirror job id.
const JOB: &str = "geo";

/// `copy-mode` of the mirror job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMode {
    /// Each guest write is copied to the target before it completes.
    WriteBlocking,
    /// Dirty regions are copied later by the job.
    Background,
}

impl CopyMode {
    /// The QMP value.
    pub fn qmp(self) -> &'static str {
        match self {
            CopyMode::WriteBlocking => "write-blocking",
            CopyMode::Background => "background",
        }
    }
}

/// A running QEMU mirror: site A's daemon, site B's qemu-nbd, the simulator.
pub struct QemuMirror {
    /// Column name.
    pub label: String,
    /// Site A's export (`nbd://…/vol0`), where hosts write.
    pub uri_a: String,
    /// Site A's NBD address.
    pub nbd_a: String,
    /// Site B's qemu-nbd address (the replica), read directly at site B.
    pub nbd_b: String,
    /// `qemu-storage-daemon` at A.
    pub qsd: Server,
    /// `qemu-nbd` at B.
    pub qnbd_b: Server,
    /// The simulator between A's mirror job and B.
    pub sim: Sim,
    /// QMP connection to A's daemon.
    pub qmp: Qmp,
    /// A's image.
    pub image_a: PathBuf,
    /// B's image.
    pub image_b: PathBuf,
}

/// A sparse raw image of [`VOLUME_BYTES`].
fn sparse_image(path: &Path) -> Result<()> {
    std::fs::File::create(path).and_then(|f| f.set_len(VOLUME_BYTES)).with_context(|| format!("create the sparse image {}", path.display()))
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// `qemu-storage-daemon` arguments exporting `image` as [`EXPORT`] on `port`
/// with a QMP socket at `qmp_socket` (PEERS.md's wiring; file driver with the
/// default writeback cache and thread-pool AIO, like qemu-nbd
/// `--cache=writeback --aio=threads`).
pub fn qsd_args(image: &Path, port: u16, qmp_socket: &Path) -> Vec<String> {
    strings(&[
        "--blockdev",
        &format!("driver=file,node-name=file0,filename={},aio=threads,cache.direct=off", image.display()),
        "--blockdev",
        "driver=raw,node-name=vol,file=file0",
        "--nbd-server",
        &format!("addr.type=inet,addr.host=127.0.0.1,addr.port={port}"),
        "--export",
        &format!("type=nbd,id=exp0,node-name=vol,name={EXPORT},writable=on"),
        "--chardev",
        &format!("socket,path={},server=on,wait=off,id=qmp0", qmp_socket.display()),
        "--monitor",
        "chardev=qmp0",
    ])
}

impl QemuMirror {
    /// Starts B's qemu-nbd, the simulator (`rtt`, unlimited bandwidth), A's
    /// daemon, then the mirror job, and waits until the job is ready.
    pub fn start(geomirror: &Path, dir: &Path, label: &str, mode: CopyMode, rtt: Duration) -> Result<QemuMirror> {
        let home = dir.join(label);
        std::fs::create_dir_all(&home).with_context(|| format!("create {}", home.display()))?;
        let (image_a, image_b) = (home.join("volA.raw"), home.join("volB.raw"));
        sparse_image(&image_a)?;
        sparse_image(&image_b)?;

        let port_b = procs::free_port()?;
        let qnbd_args = strings(&[
            "-f",
            "raw",
            "-x",
            EXPORT,
            "-b",
            "127.0.0.1",
            "-p",
            &port_b.to_string(),
            "-t",
            "--shared=8",
            "--cache=writeback",
            "--aio=threads",
            &image_b.display().to_string(),
        ]);
        let mut qnbd_b =
            Server::start(&format!("{label} site-B qemu-nbd"), Path::new("qemu-nbd"), &qnbd_args, home.join("qemu-nbd-b.log"))?;
        qnbd_b.wait_nbd_ready(&format!("nbd://127.0.0.1:{port_b}/{EXPORT}"), VOLUME_BYTES, READY_TIMEOUT)?;

        let sim = Sim::start(geomirror, &format!("{label}-sim"), &format!("127.0.0.1:{port_b}"), rtt, None, &home)?;
        let link_port = sim.listen.rsplit(':').next().context("simulator address without a port")?.to_string();

        let port_a = procs::free_port()?;
        let qmp_socket = home.join("qmp.sock");
        let mut qsd = Server::start(
            &format!("{label} qemu-storage-daemon"),
            Path::new("qemu-storage-daemon"),
            &qsd_args(&image_a, port_a, &qmp_socket),
            home.join("qsd.log"),
        )?;
        let uri_a = format!("nbd://127.0.0.1:{port_a}/{EXPORT}");
        qsd.wait_nbd_ready(&uri_a, VOLUME_BYTES, READY_TIMEOUT)?;
        let mut qmp =
            Qmp::connect(&qmp_socket, READY_TIMEOUT).with_context(|| format!("QMP of {label}; daemon log:\n{}", qsd.log_tail(10)))?;
        qmp.execute(
            "blockdev-add",
            Some(json!({
                "driver": "nbd", "node-name": "siteB",
                "server": { "type": "inet", "host": "127.0.0.1", "port": link_port },
                "export": EXPORT,
            })),
        )?;
        qmp.execute(
            "blockdev-mirror",
            Some(json!({ "job-id": JOB, "device": "vol", "target": "siteB", "sync": "none", "copy-mode": mode.qmp() })),
        )?;
        let mut mirror = QemuMirror {
            label: label.to_string(),
            uri_a,
            nbd_a: format!("127.0.0.1:{port_a}"),
            nbd_b: format!("127.0.0.1:{port_b}"),
            qsd,
            qnbd_b,
            sim,
            qmp,
            image_a,
            image_b,
        };
        mirror.wait_job(|j| j.ready, "ready", READY_TIMEOUT)?;
        Ok(mirror)
    }

    /// The pids of A's daemon, B's qemu-nbd and the simulator.
    pub fn pids(&self) -> Vec<u32> {
        vec![self.qsd.pid(), self.qnbd_b.pid(), self.sim.server.pid()]
    }

    /// The mirror job.
    pub fn job(&mut self) -> Result<BlockJob> {
        let jobs = self.qmp.block_jobs()?;
        jobs.into_iter().find(|j| j.device == JOB).with_context(|| format!("{}: mirror job `{JOB}` is gone", self.label))
    }

    /// Polls the job every 20 ms until `done`, at most `timeout`; returns how long it took.
    pub fn wait_job(&mut self, mut done: impl FnMut(&BlockJob) -> bool, what: &str, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            self.qsd.check_alive()?;
            let job = self.job()?;
            if done(&job) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                bail!("{}: mirror job not {what} within {timeout:?}: {job:?}", self.label);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the target has caught up (`offset == len`, not busy).
    pub fn wait_in_sync(&mut self, timeout: Duration) -> Result<Duration> {
        self.wait_job(|j| j.ready && j.behind() == 0 && !j.busy, "in sync", timeout)
    }

    /// Completes the job (`block-job-cancel` on a ready mirror: the target
    /// is brought in sync, then detached), waits for it to disappear, and
    /// compares the two images with `qemu-img compare`. `Ok(true)` when
    /// identical.
    pub fn finish_and_compare(&mut self, work: &Path, timeout: Duration) -> Result<bool> {
        self.qmp.execute("block-job-cancel", Some(json!({ "device": JOB })))?;
        let started = Instant::now();
        while self.qmp.block_jobs()?.iter().any(|j| j.device == JOB) {
            if started.elapsed() > timeout {
                bail!("{}: the mirror job did not complete within {timeout:?}", self.label);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let args =
            strings(&["compare", "-q", "-f", "raw", "-F", "raw", &self.image_a.display().to_string(), &self.image_b.display().to_string()]);
        let out = procs::run_to_completion("qemu-img", &args, work, &format!("{}-compare", self.label), Duration::from_secs(120))?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => bail!("qemu-img compare failed ({}): {}", out.status, procs::tail_lines(&out.stderr, 5)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_arguments_follow_the_peers_wiring() {
        let args = qsd_args(Path::new("/t/volA.raw"), 1234, Path::new("/t/qmp.sock"));
        let joined = args.join(" ");
        for want in [
            "--blockdev driver=file,node-name=file0,filename=/t/volA.raw,aio=threads,cache.direct=off",
            "--blockdev driver=raw,node-name=vol,file=file0",
            "--nbd-server addr.type=inet,addr.host=127.0.0.1,addr.port=1234",
            "--export type=nbd,id=exp0,node-name=vol,name=vol0,writable=on",
            "--chardev socket,path=/t/qmp.sock,server=on,wait=off,id=qmp0",
            "--monitor chardev=qmp0",
        ] {
            assert!(joined.contains(want), "missing {want:?} in {joined}");
        }
        assert_eq!(CopyMode::WriteBlocking.qmp(), "write-blocking");
        assert_eq!(CopyMode::Background.qmp(), "background");
    }
}
