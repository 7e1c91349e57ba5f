//! Admission of connections that have not yet proved who they are (an NBD
//! handshake, the peer link's TLS handshake and hello): at most so many at
//! once from one source address and in all, so a flood of slow or
//! half-open connections from one place cannot hold every slot while the
//! real clients and the peer wait.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts the connections being admitted, per source and in all.
#[derive(Debug)]
pub struct Admission {
    per_source_max: usize,
    total_max: usize,
    inner: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    per_source: HashMap<IpAddr, usize>,
    total: usize,
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Its source has too many connections in progress.
    #[error("{0} connections from this address are already being set up")]
    Source(usize),
    /// Too many connections are in progress in all.
    #[error("{0} connections are already being set up")]
    Total(usize),
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    source: IpAddr,
}

impl Admission {
    /// At most `per_source_max` from one address, `total_max` in all.
    pub fn new(per_source_max: usize, total_max: usize) -> Arc<Admission> {
        assert!(per_source_max > 0 && total_max >= per_source_max, "admission limits");
        Arc::new(Admission { per_source_max, total_max, inner: Mutex::default() })
    }

    /// Admits a connection from `source`, or says why not.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Ticket, Refused> {
        let mut c = self.inner.lock().expect("admission lock");
        if c.total >= self.total_max {
            return Err(Refused::Total(c.total));
        }
        let n = c.per_source.entry(source).or_default();
        if *n >= self.per_source_max {
            return Err(Refused::Source(*n));
        }
        *n += 1;
        c.total += 1;
        Ok(Ticket { admission: self.clone(), source })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut c = self.admission.inner.lock().expect("admission lock");
        c.total -= 1;
        if let Some(n) = c.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.per_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_cannot_take_every_place_and_places_come_back() {
        let a = Admission::new(2, 3);
        let x: IpAddr = "10.0.0.1".parse().unwrap();
        let y: IpAddr = "10.0.0.2".parse().unwrap();
        let t1 = a.admit(x).unwrap();
        let _t2 = a.admit(x).unwrap();
        assert_eq!(a.admit(x).unwrap_err(), Refused::Source(2));
        let _t3 = a.admit(y).unwrap();
        assert_eq!(a.admit(y).unwrap_err(), Refused::Total(3));
        drop(t1);
        assert!(a.admit(x).is_ok(), "a finished setup frees its place");
    }
}

/// Logs refusals of a flood without flooding the log: a line at most once
/// per [`REFUSAL_LOG_INTERVAL`], with how many were refused since.
#[derive(Debug)]
pub struct RefusalLog {
    inner: Mutex<(Option<std::time::Instant>, u64)>,
}

/// The shortest time between two refusal lines of one listener.
pub const REFUSAL_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog { inner: Mutex::new((None, 0)) }
    }
}

impl RefusalLog {
    /// Counts one refusal; `Some(n)` when a line is due now, `n` the
    /// refusals since the last line (this one included).
    pub fn note(&self) -> Option<u64> {
        let mut g = self.inner.lock().expect("refusal log lock");
        g.1 += 1;
        let now = std::time::Instant::now();
        if g.0.is_some_and(|last| now.duration_since(last) < REFUSAL_LOG_INTERVAL) {
            return None;
        }
        g.0 = Some(now);
        Some(std::mem::take(&mut g.1))
    }
}
