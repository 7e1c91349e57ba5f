//! The witness's protocol engine, without I/O: which node holds the
//! survivor role of an outage, under which generation, and whose lease may
//! be renewed (DESIGN.md 5.1). The witness process (`geomirror witness`)
//! and the deterministic simulator drive it the same way.
//!
//! Rules:
//! - A lease is renewed for a node while no other node holds the survivor
//!   role.
//! - The survivor role goes to the first node that asks while nobody holds
//!   it, under the next generation; the grant is answered only once the
//!   state that records it is durable (a witness restart does not forget
//!   it). A node that asks again gets the same answer.
//! - The survivor ends the outage ([`WitnessMessage::Resolved`]) once its
//!   peer is back and resynced; then both leases are renewed again.

use std::collections::BTreeMap;

use geomirror_wire::witness::WitnessMessage;

/// One connection of a node to the witness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WitnessConn(pub u64);

/// What the witness keeps durably.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WitnessState {
    /// Grows with every survivor grant.
    pub generation: u64,
    /// The node holding the survivor role of the current outage.
    pub survivor: Option<String>,
}

/// What the witness engine asks its runtime to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WitnessOutput {
    /// Send a message on a connection.
    Send {
        /// The connection.
        conn: WitnessConn,
        /// The message.
        message: WitnessMessage,
    },
    /// Write the state durably and atomically, then report
    /// [`WitnessCore::persisted`] with this version.
    Persist {
        /// The state.
        state: WitnessState,
        /// Its version.
        version: u64,
    },
    /// Something to log.
    Log(String),
}

/// The witness engine.
#[derive(Debug)]
pub struct WitnessCore {
    nodes: [String; 2],
    state: WitnessState,
    version: u64,
    durable: u64,
    /// Per connection: the node and its lease length in milliseconds.
    conns: BTreeMap<WitnessConn, (String, u64)>,
    /// Lease lengths announced by each node (the last hello).
    leases: BTreeMap<String, u64>,
    /// Answers waiting for a version to be durable.
    waiting: Vec<(u64, WitnessConn, WitnessMessage)>,
    outputs: Vec<WitnessOutput>,
}

impl WitnessCore {
    /// An engine for the pair `nodes`, from its durable state.
    pub fn new(nodes: [String; 2], state: WitnessState) -> WitnessCore {
        WitnessCore {
            nodes,
            state,
            version: 0,
            durable: 0,
            conns: BTreeMap::new(),
            leases: BTreeMap::new(),
            waiting: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// The state.
    pub fn state(&self) -> &WitnessState {
        &self.state
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<WitnessOutput> {
        if self.outputs.is_empty() { None } else { Some(self.outputs.remove(0)) }
    }

    /// A node's hello on a new connection: accepted (None) or refused (why).
    pub fn hello(&mut self, conn: WitnessConn, node: &str, lease_ms: u64) -> Option<String> {
        if !self.nodes.iter().any(|n| n == node) {
            return Some(format!("`{node}` is not one of the two nodes this witness serves ({} and {})", self.nodes[0], self.nodes[1]));
        }
        if lease_ms == 0 {
            return Some("a lease of 0 ms".into());
        }
        self.conns.insert(conn, (node.to_string(), lease_ms));
        self.leases.insert(node.to_string(), lease_ms);
        None
    }

    /// A connection ended.
    pub fn closed(&mut self, conn: WitnessConn) {
        self.conns.remove(&conn);
        self.waiting.retain(|(_, c, _)| *c != conn);
    }

    /// A frame from a connection that said hello. Err: a protocol
    /// violation (close the connection).
    pub fn frame(&mut self, conn: WitnessConn, message: WitnessMessage) -> Result<(), String> {
        let Some((node, lease_ms)) = self.conns.get(&conn).cloned() else {
            return Err("a frame before the hello".into());
        };
        let reply = match message {
            WitnessMessage::Renew { id } => match &self.state.survivor {
                Some(s) if *s != node => WitnessMessage::Denied { id, survivor: s.clone(), generation: self.state.generation },
                _ => WitnessMessage::Lease { id },
            },
            WitnessMessage::Claim { id } => match self.state.survivor.clone() {
                Some(s) if s != node => WitnessMessage::Denied { id, survivor: s, generation: self.state.generation },
                held => {
                    if held.is_none() {
                        self.state.generation += 1;
                        self.state.survivor = Some(node.clone());
                        self.outputs.push(WitnessOutput::Log(format!("{node} is the survivor of outage {}", self.state.generation)));
                        self.persist();
                    }
                    let other = self.nodes.iter().find(|n| **n != node).expect("two nodes");
                    let other_lease_ms = self.leases.get(other).copied().unwrap_or(lease_ms);
                    let answer = WitnessMessage::Survivor { id, generation: self.state.generation, other_lease_ms };
                    self.answer_when_durable(conn, answer);
                    return Ok(());
                }
            },
            WitnessMessage::Resolved { id, generation } => {
                if self.state.survivor.as_deref() == Some(node.as_str()) && generation == self.state.generation {
                    self.state.survivor = None;
                    self.outputs.push(WitnessOutput::Log(format!("outage {generation} is over ({node} reports its peer resynced)")));
                    self.persist();
                }
                let answer = WitnessMessage::Cleared { id, generation: self.state.generation };
                self.answer_when_durable(conn, answer);
                return Ok(());
            }
            other => return Err(format!("unexpected {} from a node", other.kind())),
        };
        self.answer_when_durable(conn, reply);
        Ok(())
    }

    fn persist(&mut self) {
        self.version += 1;
        self.outputs.push(WitnessOutput::Persist { state: self.state.clone(), version: self.version });
    }

    /// Answers once the state as it is now is durable (a lease must not be
    /// renewed, nor a role granted, on a state that a restart could undo).
    fn answer_when_durable(&mut self, conn: WitnessConn, message: WitnessMessage) {
        if self.durable >= self.version {
            self.outputs.push(WitnessOutput::Send { conn, message });
        } else {
            self.waiting.push((self.version, conn, message));
        }
    }

    /// The state of `version` is durable. Err: the write failed (the
    /// witness must stop: it cannot tell what it granted).
    pub fn persisted(&mut self, version: u64) {
        self.durable = self.durable.max(version);
        let durable = self.durable;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting).into_iter().partition(|(v, _, _)| *v <= durable);
        self.waiting = waiting;
        for (_, conn, message) in ready {
            if self.conns.contains_key(&conn) {
                self.outputs.push(WitnessOutput::Send { conn, message });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use geomirror_wire::peer::RequestId;

    fn witness() -> WitnessCore {
        let mut w = WitnessCore::new(["site-a".into(), "site-b".into()], WitnessState::default());
        assert_eq!(w.hello(WitnessConn(1), "site-a", 2000), None);
        assert_eq!(w.hello(WitnessConn(2), "site-b", 3000), None);
        w
    }

    fn drain(w: &mut WitnessCore) -> Vec<WitnessOutput> {
        std::iter::from_fn(|| w.poll_output()).collect()
    }

    fn sent(out: &[WitnessOutput]) -> Vec<(WitnessConn, WitnessMessage)> {
        out.iter()
            .filter_map(|o| if let WitnessOutput::Send { conn, message } = o { Some((*conn, message.clone())) } else { None })
            .collect()
    }

    #[test]
    fn one_survivor_per_outage_granted_only_once_durable() {
        let mut w = witness();
        w.frame(WitnessConn(1), WitnessMessage::Claim { id: RequestId(1) }).unwrap();
        let out = drain(&mut w);
        assert!(sent(&out).is_empty(), "no grant before the state is durable: {out:?}");
        assert!(out.iter().any(|o| matches!(o, WitnessOutput::Persist { state, version: 1 } if state.survivor.as_deref() == Some("site-a") && state.generation == 1)));
        w.frame(WitnessConn(2), WitnessMessage::Claim { id: RequestId(7) }).unwrap();
        w.persisted(1);
        let out = sent(&drain(&mut w));
        assert_eq!(out[0], (WitnessConn(1), WitnessMessage::Survivor { id: RequestId(1), generation: 1, other_lease_ms: 3000 }));
        assert_eq!(out[1], (WitnessConn(2), WitnessMessage::Denied { id: RequestId(7), survivor: "site-a".into(), generation: 1 }));
        // The loser's lease is not renewed; the survivor's is.
        w.frame(WitnessConn(2), WitnessMessage::Renew { id: RequestId(8) }).unwrap();
        w.frame(WitnessConn(1), WitnessMessage::Renew { id: RequestId(2) }).unwrap();
        let out = sent(&drain(&mut w));
        assert!(matches!(out[0].1, WitnessMessage::Denied { .. }));
        assert_eq!(out[1].1, WitnessMessage::Lease { id: RequestId(2) });
    }

    #[test]
    fn the_outage_ends_when_the_survivor_says_so_and_the_next_one_has_a_new_generation() {
        let mut w = witness();
        w.frame(WitnessConn(2), WitnessMessage::Claim { id: RequestId(1) }).unwrap();
        w.persisted(1);
        drain(&mut w);
        // The loser cannot end it.
        w.frame(WitnessConn(1), WitnessMessage::Resolved { id: RequestId(2), generation: 1 }).unwrap();
        assert_eq!(w.state().survivor.as_deref(), Some("site-b"));
        w.frame(WitnessConn(2), WitnessMessage::Resolved { id: RequestId(3), generation: 1 }).unwrap();
        assert_eq!(w.state().survivor, None);
        w.persisted(2);
        drain(&mut w);
        w.frame(WitnessConn(1), WitnessMessage::Claim { id: RequestId(4) }).unwrap();
        w.persisted(3);
        let out = sent(&drain(&mut w));
        assert!(matches!(out.last().unwrap().1, WitnessMessage::Survivor { generation: 2, .. }), "{out:?}");
    }

    #[test]
    fn a_restarted_witness_keeps_the_survivor_and_strangers_are_refused() {
        let state = WitnessState { generation: 4, survivor: Some("site-b".into()) };
        let mut w = WitnessCore::new(["site-a".into(), "site-b".into()], state);
        assert!(w.hello(WitnessConn(1), "site-c", 2000).is_some());
        assert!(w.frame(WitnessConn(1), WitnessMessage::Renew { id: RequestId(1) }).is_err(), "no frame before an accepted hello");
        w.hello(WitnessConn(2), "site-a", 2000);
        w.frame(WitnessConn(2), WitnessMessage::Claim { id: RequestId(1) }).unwrap();
        assert_eq!(sent(&drain(&mut w))[0].1, WitnessMessage::Denied { id: RequestId(1), survivor: "site-b".into(), generation: 4 });
        assert!(w.frame(WitnessConn(2), WitnessMessage::Lease { id: RequestId(2) }).is_err());
    }
}
