//! The node's recent events: a bounded ring served at `GET /events?since=N`
//! for operators' tools (`geomirror top`). Each event is also logged once
//! where it happens; the ring only keeps the last [`EVENTS_KEPT`].

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use geomirror_wire::status::{EventRecord, EventsPage, NodeEvent};

use crate::limits::EVENTS_KEPT;

/// The ring of recent events.
#[derive(Debug, Default)]
pub struct EventRing {
    inner: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    events: VecDeque<EventRecord>,
    last: u64,
}

impl EventRing {
    /// Records `event` (about `volume`, if one) now.
    pub fn push(&self, volume: Option<&str>, event: NodeEvent) {
        let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut ring = self.inner.lock().expect("event ring lock");
        ring.last += 1;
        let seq = ring.last;
        if ring.events.len() == EVENTS_KEPT {
            ring.events.pop_front();
        }
        ring.events.push_back(EventRecord { seq, unix_ms, volume: volume.map(str::to_string), event });
    }

    /// The events after `since` still held, and how many after it are gone.
    pub fn since(&self, since: u64) -> EventsPage {
        let ring = self.inner.lock().expect("event ring lock");
        let events: Vec<EventRecord> = ring.events.iter().filter(|e| e.seq > since).cloned().collect();
        let first_held = ring.events.front().map_or(ring.last + 1, |e| e.seq);
        let missed = first_held.saturating_sub(since.saturating_add(1)).min(ring.last.saturating_sub(since));
        EventsPage { events, last: ring.last, missed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link_down(i: usize) -> NodeEvent {
        NodeEvent::LinkDown { reason: format!("cut {i}") }
    }

    #[test]
    fn events_are_served_after_a_position_and_the_ring_keeps_the_newest() {
        let ring = EventRing::default();
        assert_eq!(ring.since(0), EventsPage::default());
        ring.push(None, NodeEvent::LinkUp);
        ring.push(Some("vol0"), NodeEvent::ModeChanged { from: "async".into(), to: "sync".into() });
        let page = ring.since(0);
        assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!((page.last, page.missed), (2, 0));
        assert_eq!(page.events[1].volume.as_deref(), Some("vol0"));
        assert!(ring.since(2).events.is_empty());
        for i in 0..EVENTS_KEPT + 10 {
            ring.push(None, link_down(i));
        }
        let page = ring.since(2);
        assert_eq!(page.events.len(), EVENTS_KEPT, "bounded");
        assert_eq!(page.events[0].seq, 13, "the oldest went first");
        assert_eq!(page.missed, 10, "what fell out after position 2 is counted");
        assert_eq!(ring.since(page.last).missed, 0);
    }

    #[test]
    fn an_event_record_is_json_with_its_kind() {
        let ring = EventRing::default();
        ring.push(Some("vol0"), NodeEvent::Degraded { mode: "sync".into(), reason: "the peer is unreachable".into() });
        let json = serde_json::to_value(ring.since(0)).unwrap();
        assert_eq!(json["events"][0]["event"]["kind"], "degraded");
        assert_eq!(json["events"][0]["volume"], "vol0");
        let back: EventsPage = serde_json::from_value(json).unwrap();
        assert_eq!(back, ring.since(0));
    }
}
