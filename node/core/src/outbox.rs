//! One lane's outgoing queue. Messages leave in the order the core produced
//! them; a message that waits on I/O (a reply waiting for the claims file
//! or a read, a copy waiting for its blocks, a request waiting for the
//! releases it carries to be durable) reserves its place and is filled in
//! later, holding back everything behind it. This is what keeps, for example, a claim's grant ahead of a
//! later handover request for the same extent on the same lane.

use std::collections::VecDeque;

use geomirror_wire::peer::Message;

/// A reserved place in an outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place(u64);

#[derive(Debug)]
struct Entry {
    place: u64,
    messages: VecDeque<Message>,
    filled: bool,
}

/// The outgoing queue of one lane of one session.
#[derive(Debug, Default)]
pub struct Outbox {
    entries: VecDeque<Entry>,
    next_place: u64,
    messages: usize,
}

impl Outbox {
    /// Queues a message behind everything queued or reserved.
    pub fn push(&mut self, message: Message) {
        match self.entries.back_mut() {
            Some(last) if last.filled => last.messages.push_back(message),
            _ => {
                let place = self.take_place();
                self.entries.push_back(Entry { place, messages: VecDeque::from([message]), filled: true });
            }
        }
        self.messages += 1;
    }

    /// Reserves the next place for messages produced later.
    pub fn reserve(&mut self) -> Place {
        let place = self.take_place();
        self.entries.push_back(Entry { place, messages: VecDeque::new(), filled: false });
        Place(place)
    }

    fn take_place(&mut self) -> u64 {
        self.next_place += 1;
        self.next_place
    }

    /// Fills a reserved place (with nothing, to give it up). A place that
    /// is not reserved here (filled already) is ignored.
    pub fn fill(&mut self, place: Place, messages: Vec<Message>) {
        let Ok(i) = self.entries.binary_search_by_key(&place.0, |e| e.place) else { return };
        let entry = &mut self.entries[i];
        if entry.filled {
            return;
        }
        entry.filled = true;
        self.messages += messages.len();
        entry.messages.extend(messages);
    }

    /// The next message that may leave, if the front is not waiting.
    pub fn pop_ready(&mut self) -> Option<Message> {
        loop {
            let front = self.entries.front_mut()?;
            if !front.filled {
                return None;
            }
            if let Some(m) = front.messages.pop_front() {
                self.messages -= 1;
                return Some(m);
            }
            self.entries.pop_front();
        }
    }

    /// Messages queued, ready or behind a reserved place.
    pub fn len(&self) -> usize {
        self.messages
    }

    /// Whether nothing is queued or reserved.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use geomirror_wire::peer::RequestId;

    fn hb(id: u64) -> Message {
        Message::Heartbeat { id: RequestId(id) }
    }

    #[test]
    fn a_reserved_place_holds_back_what_follows() {
        let mut o = Outbox::default();
        o.push(hb(1));
        let p = o.reserve();
        o.push(hb(3));
        assert_eq!(o.pop_ready(), Some(hb(1)));
        assert_eq!(o.pop_ready(), None, "the reserved place is not filled yet");
        o.fill(p, vec![hb(2), hb(22)]);
        assert_eq!(o.pop_ready(), Some(hb(2)));
        assert_eq!(o.pop_ready(), Some(hb(22)));
        assert_eq!(o.pop_ready(), Some(hb(3)));
        assert_eq!(o.pop_ready(), None);
        assert!(o.is_empty());
        assert_eq!(o.len(), 0);
    }

    #[test]
    fn places_filled_out_of_order_leave_in_order() {
        let mut o = Outbox::default();
        let a = o.reserve();
        let b = o.reserve();
        o.fill(b, vec![hb(2)]);
        assert_eq!(o.pop_ready(), None);
        o.fill(a, vec![]);
        assert_eq!(o.pop_ready(), Some(hb(2)));
        o.fill(a, vec![hb(9)]);
        assert_eq!(o.pop_ready(), None, "a place is filled once");
    }
}
