#!/usr/bin/env python3
"""Breaks, one at a time, each rule of the protocol engine that enforces an
invariant, and shows the deterministic simulator catching it within the CI
seed budget (the first failing seed, the invariant it broke, and the seeds
it took). Prints a Markdown table (README, "Proof that the simulator can
fail"). Restores every file afterwards, also when interrupted.

Usage: scripts/mutants.sh [--seeds N] [--match TEXT]
  --seeds N     seeds per mutant (default 2000, the test command's batch)
  --match TEXT  only the mutants whose name contains TEXT (repeatable)
"""
import os, re, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = os.path.join(ROOT, "node/core/src")

# (name, file, original text, mutated text[, simulator arguments: a scenario])
MUTANTS = [
    ("skip persist-before-grant (a claim is answered before the claims file records it)",
     "peer.rs",
     "        if self.volumes[vi].claims.file_version() <= self.volumes[vi].file.durable {\n            self.send(Lane::Priority, reply);",
     "        if true {\n            self.send(Lane::Priority, reply);"),
    ("serve a read from the own store while the extent is being acquired from the peer",
     "claims.rs",
     "            Some(ExtentState::PeerOwned { .. }) | Some(ExtentState::Acquiring { released: false, .. }) => ReadSource::Peer,",
     "            Some(ExtentState::PeerOwned { .. }) => ReadSource::Peer,"),
    ("release before durable (an extent with blocks not yet durable at the peer is releasable)",
     "claims.rs",
     "            && o.dirt.is_none()\n            && !o.suspect",
     "            && !o.suspect"),
    ("accept an older epoch's release",
     "claims.rs",
     "                Some(ExtentState::PeerOwned { epoch }) if epoch == c.epoch => self.set(c.extent, None),",
     "                Some(ExtentState::PeerOwned { .. }) => self.set(c.extent, None),"),
    ("accept an older epoch's copy",
     "claims.rs",
     "            Some(ExtentState::PeerOwned { epoch: mine }) | Some(ExtentState::Acquiring { epoch: mine, released: false, .. }) if *mine == epoch)",
     "            Some(ExtentState::PeerOwned { epoch: mine }) | Some(ExtentState::Acquiring { epoch: mine, released: false, .. }) if *mine <= epoch || *mine > epoch)"),
    ("drop a reserved outbox place (a reply that waited on I/O goes to the back of the lane)",
     "outbox.rs",
     "        entry.filled = true;\n        self.messages += messages.len();\n        entry.messages.extend(messages);",
     "        entry.filled = true;\n        for m in messages { self.push(m); }"),
    ("lose the received/durable split (copies the peer received count as durable)",
     "peer.rs",
     "                c.on_copy_received(received);\n                c.on_copy_durable(durable);",
     "                c.on_copy_received(received);\n                c.on_copy_durable(received);"),
    ("hand an extent out before a write that waited for it ran (two sites pass it back and forth)",
     "node.rs",
     "                self.run_parked(vi);\n                self.run_gives(vi);",
     "                self.run_gives(vi);\n                self.run_parked(vi);"),
    ("a sync-mode write is acknowledged before it is durable here (no local fdatasync)",
     "host.rs",
     "            let mark = self.want_local_sync(vi);\n            let task = self.tasks.get_mut(&id).expect(\"live\");",
     "            let mark = 0;\n            let task = self.tasks.get_mut(&id).expect(\"live\");"),
    ("a sync-mode write is acknowledged before the peer reports it",
     "host.rs",
     "        let progress = if self.volumes[vi].replication.peer_need(peer.need == CopyReport::Durable).is_none() {\n            PeerProgress::Reached",
     "        let progress = if self.volumes[vi].replication.peer_need(peer.need == CopyReport::Durable).is_none() || offset < u64::MAX {\n            PeerProgress::Reached"),
    ("a sync-mode write that sent its own buffer is not sent again when its extents changed meanwhile",
     "host.rs",
     "                && self.volumes[vi].claims.changes_in(offset, length) == d.changes",
     "                && self.volumes[vi].claims.changes_in(offset, length) >= d.changes"),
    ("the peer reports a copy durable after writing it without the fdatasync of its job",
     "copy.rs",
     "                        IoOp::Write { writes, sync },",
     "                        IoOp::Write { writes, sync: false },"),
    ("give an extent without syncing the giver's store first",
     "copy.rs",
     "        self.issue_sync(vi, IoPurpose::StoreSync { volume: vi });\n        let version",
     "        let version"),
    ("the survivor acts alone at once, without waiting out the other node's lease and the drift bound",
     "standing.rs",
     "                let wait = lease.max(Duration::from_millis(other_lease_ms)) + drift;",
     "                let wait = Duration::ZERO.min(lease.max(Duration::from_millis(other_lease_ms)) + drift);"),
    ("a node whose lease ended keeps answering hosts while the link is down (no self-fencing)",
     "standing.rs",
     "        self.acting_alone() || w.lease_until.is_some_and(|until| self.now < until)",
     "        self.acting_alone() || w.lease_until.is_some() || true"),
    ("the witness grants the survivor role of one outage to both nodes",
     "witness.rs",
     "                Some(s) if s != node => WitnessMessage::Denied { id, survivor: s, generation: self.state.generation },\n                held => {",
     "                Some(s) if s != node && false => WitnessMessage::Denied { id, survivor: s, generation: self.state.generation },\n                held => {"),
    ("a claims file journal record misses a change (a confirmed release)",
     "claims.rs",
     "                self.touched.insert(c.extent);\n                self.released.remove(&c.extent);",
     "                self.released.remove(&c.extent);"),
    ("a returning node lets the survivor's data overwrite its differing blocks without saving them to the conflict file",
     "resync.rs",
     "            JobKind::Conflict(_) if runs.is_empty() => {",
     "            JobKind::Conflict(_) if true => {"),
    ("a resync's or checksum comparison's marking is not counted as a change to a flying sync write's extents",
     "claims.rs",
     "            if let Some(ExtentState::Owned(o)) = self.extents.get_mut(&e) {\n                o.changes += 1;\n",
     "            if let Some(ExtentState::Owned(o)) = self.extents.get_mut(&e) {\n",
     ["--scenario", "resync-race"]),
]

EXTRA = {}


def sh(cmd, **kw):
    return subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, **kw)


def main():
    seeds = 2000
    if "--seeds" in sys.argv:
        seeds = int(sys.argv[sys.argv.index("--seeds") + 1])
    wanted = [sys.argv[i + 1] for i, a in enumerate(sys.argv) if a == "--match"]
    rows = []
    for name, fname, old, new, *dst_args in MUTANTS:
        dst_args = dst_args[0] if dst_args else []
        if wanted and not any(w in name for w in wanted):
            continue
        edits = [(fname, old, new)]
        if name in EXTRA:
            edits.append(EXTRA[name])
        saved = {}
        try:
            for f, o, n in edits:
                path = os.path.join(CORE, f)
                text = saved.get(path) or open(path).read()
                saved.setdefault(path, text)
                current = open(path).read()
                assert current.count(o) == 1, f"mutant '{name}': the rule's code was not found exactly once in {f}"
                open(path, "w").write(current.replace(o, n))
            build = sh(["cargo", "build", "-q", "-p", "geomirror-dst"])
            if build.returncode != 0:
                rows.append((name, "build failed", "", ""))
                print(build.stderr[-2000:], file=sys.stderr)
                continue
            started = time.time()
            run = sh(["target/debug/geomirror-dst", "--seeds", str(seeds), "--threads", "2", *dst_args])
            secs = time.time() - started
            m = re.search(r"seed (\d+) FAILED: (.*)", run.stdout)
            if m:
                seed, why = m.group(1), re.sub(r"^block \d+: ", "", m.group(2))
                rule = re.match(r"(invariant \d+ \([^)]*\)|[^:]*history not linearizable|convergence|node [^:]*: [A-Za-z]+ \{[^}]*\} failed in a run without faults|[^:]+)", why)
                caught = rule.group(1) if rule else why[:80]
                where = f" ({' '.join(dst_args)})" if dst_args else ""
                rows.append((name, f"seed {seed}{where}", caught, f"{secs:.0f} s"))
            else:
                rows.append((name, "NOT CAUGHT", f"{seeds} seeds passed", f"{secs:.0f} s"))
            print(f"{name}: {rows[-1][1]} — {rows[-1][2]}", file=sys.stderr)
        finally:
            for path, text in saved.items():
                open(path, "w").write(text)
    sh(["cargo", "build", "-q", "-p", "geomirror-dst"])
    print(f"| rule broken on purpose | first failing seed (of {seeds}) | what caught it | time |")
    print("|---|---|---|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |")
    if any(r[1] in ("NOT CAUGHT", "build failed") for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
