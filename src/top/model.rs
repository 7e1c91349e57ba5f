//! What `geomirror top` knows: per node, the last `/status` it answered,
//! whether it still answers, the rates between two answers, short histories
//! for the sparklines, and the recent events. Pure data, updated by
//! [`Model::apply`]; the view draws it.

use std::collections::VecDeque;

use geomirror_wire::status::{EventRecord, EventsPage, NodeStatus};

/// Samples kept per sparkline (one per poll: a few minutes at 1 s).
pub const HISTORY_LEN: usize = 240;
/// Recent events kept per node.
pub const EVENTS_LEN: usize = 50;

/// Rates of one volume between the last two answers, per second.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub writes: f64,
    pub reads: f64,
    pub write_bytes: f64,
    pub read_bytes: f64,
    pub copy_bytes: f64,
    pub claims: f64,
    pub pulls: f64,
    pub handovers: f64,
}

/// The histories of one volume, one sample per answer.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Bytes not yet durable at the peer (the copy stream's lag).
    pub lag_bytes: VecDeque<u64>,
    /// Claim round trips per second (milli-units, for the sparkline's integers).
    pub claims_milli: VecDeque<u64>,
}

/// One node as `top` sees it.
#[derive(Clone, Debug)]
pub struct NodeView {
    /// Where it is asked.
    pub admin: String,
    /// The last status it answered (kept, greyed, while it does not answer).
    pub last: Option<NodeStatus>,
    /// When that answer came (seconds on `top`'s clock).
    pub answered_at: Option<f64>,
    /// Why the last poll failed, if it did.
    pub error: Option<String>,
    /// Per volume of `last`, in its order.
    pub rates: Vec<Rates>,
    pub history: Vec<History>,
    /// Newest last.
    pub events: VecDeque<EventRecord>,
    /// The newest event position seen (asked `since` next).
    pub events_seen: u64,
    /// Events the node dropped before `top` asked for them.
    pub events_missed: u64,
    /// Bytes per second the node sent to its peer (all frames).
    pub link_bytes_per_second: f64,
}

impl NodeView {
    pub fn new(admin: String) -> NodeView {
        NodeView {
            admin,
            last: None,
            answered_at: None,
            error: None,
            rates: Vec::new(),
            history: Vec::new(),
            events: VecDeque::new(),
            events_seen: 0,
            events_missed: 0,
            link_bytes_per_second: 0.0,
        }
    }

    /// Whether the last poll was answered.
    pub fn reachable(&self) -> bool {
        self.error.is_none() && self.last.is_some()
    }
}

/// Everything `top` shows.
#[derive(Clone, Debug)]
pub struct Model {
    pub nodes: Vec<NodeView>,
}

impl Model {
    pub fn new(admins: &[String]) -> Model {
        Model { nodes: admins.iter().cloned().map(NodeView::new).collect() }
    }

    /// One poll of node `n` at `at` seconds: its status and new events, or
    /// why it did not answer.
    pub fn apply(&mut self, n: usize, at: f64, answer: Result<(NodeStatus, EventsPage), String>) {
        let node = &mut self.nodes[n];
        let (status, page) = match answer {
            Ok(x) => x,
            Err(e) => {
                node.error = Some(e);
                return;
            }
        };
        node.error = None;
        let dt = node.answered_at.map(|t| at - t).filter(|dt| *dt > 0.0);
        let same_volumes = node.last.as_ref().is_some_and(|l| l.volumes.iter().map(|v| &v.name).eq(status.volumes.iter().map(|v| &v.name)));
        if !same_volumes {
            node.rates = vec![Rates::default(); status.volumes.len()];
            node.history = vec![History::default(); status.volumes.len()];
        }
        for (i, v) in status.volumes.iter().enumerate() {
            let rates = match (dt, node.last.as_ref().filter(|_| same_volumes).map(|l| &l.volumes[i])) {
                (Some(dt), Some(old)) => {
                    let per = |new: u64, old: u64| new.saturating_sub(old) as f64 / dt;
                    let (r, o) = (v.replication.as_ref(), old.replication.as_ref());
                    let rep = |f: fn(&geomirror_wire::status::ReplicationStatus) -> u64| match (r, o) {
                        (Some(r), Some(o)) => per(f(r), f(o)),
                        _ => 0.0,
                    };
                    Rates {
                        writes: per(v.writes_total, old.writes_total),
                        reads: per(v.reads_total, old.reads_total),
                        write_bytes: per(v.write_bytes_total, old.write_bytes_total),
                        read_bytes: per(v.read_bytes_total, old.read_bytes_total),
                        copy_bytes: rep(|r| r.copy_sent_bytes_total),
                        claims: rep(|r| r.claim_round_trips),
                        pulls: rep(|r| r.pulls),
                        handovers: rep(|r| r.handovers),
                    }
                }
                _ => Rates::default(),
            };
            node.rates[i] = rates;
            let h = &mut node.history[i];
            push_bounded(&mut h.lag_bytes, v.replication.as_ref().map_or(0, |r| r.not_durable_at_peer_bytes));
            push_bounded(&mut h.claims_milli, (rates.claims * 1000.0) as u64);
        }
        let sent = |s: &NodeStatus| s.peer.as_ref().map_or(0, |p| p.sent_bytes_total);
        node.link_bytes_per_second = match (dt, &node.last) {
            (Some(dt), Some(old)) => sent(&status).saturating_sub(sent(old)) as f64 / dt,
            _ => 0.0,
        };
        node.last = Some(status);
        node.answered_at = Some(at);
        node.events_missed += page.missed;
        node.events_seen = node.events_seen.max(page.last);
        for e in page.events {
            if node.events.len() == EVENTS_LEN {
                node.events.pop_front();
            }
            node.events.push_back(e);
        }
    }

    /// The events of every node, newest first, with the node's name.
    pub fn recent_events(&self) -> Vec<(String, &EventRecord)> {
        let mut all: Vec<(String, &EventRecord)> = self
            .nodes
            .iter()
            .flat_map(|n| {
                let name = n.last.as_ref().map_or(n.admin.clone(), |s| s.name.clone());
                n.events.iter().map(move |e| (name.clone(), e))
            })
            .collect();
        all.sort_by(|a, b| b.1.unix_ms.cmp(&a.1.unix_ms).then(b.1.seq.cmp(&a.1.seq)));
        all
    }
}

fn push_bounded(q: &mut VecDeque<u64>, x: u64) {
    if q.len() == HISTORY_LEN {
        q.pop_front();
    }
    q.push_back(x);
}
