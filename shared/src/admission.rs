//! Connection admission for the mesh's listeners: a count of open connections in all and per
//! peer address, so a flood from one client (or from all) is refused at accept while everyone
//! else is still served. This module only counts; each server decides what a refusal looks
//! like (a closed socket, a 503).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open connections a listener (or several sharing one [`Admission`]) accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ConnectionLimits {
    /// In all.
    pub total: usize,
    /// From one peer address.
    pub per_peer: usize,
}

/// The live counts behind [`ConnectionLimits`].
#[derive(Debug)]
pub struct Admission {
    limits: ConnectionLimits,
    open: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

impl Admission {
    pub fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Admission { limits, open: Mutex::default() })
    }

    /// A slot for one connection from `peer`, or `None` when the peer or the listener is full.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mine = open.per_peer.get(&peer).copied().unwrap_or(0);
        if open.total >= self.limits.total || mine >= self.limits.per_peer {
            return None;
        }
        open.per_peer.insert(peer, mine + 1);
        open.total += 1;
        Some(Slot { admission: self.clone(), peer })
    }

    /// Open connections: in all, and from `peer`.
    pub fn open(&self, peer: IpAddr) -> (usize, usize) {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        (open.total, open.per_peer.get(&peer).copied().unwrap_or(0))
    }
}

/// One admitted connection; gives its slot back when dropped.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    peer: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.admission.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(mine) = open.per_peer.get_mut(&self.peer) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                open.per_peer.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_apply_per_peer_and_in_all_and_slots_come_back() {
        let admission = Admission::new(ConnectionLimits { total: 3, per_peer: 2 });
        let (a, b, c): (IpAddr, IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        let a1 = admission.admit(a).expect("first from a");
        let _a2 = admission.admit(a).expect("second from a");
        assert!(admission.admit(a).is_none(), "a is at its per-peer limit");
        let _b1 = admission.admit(b).expect("b has its own budget");
        assert!(admission.admit(c).is_none(), "the listener is full");
        assert_eq!(admission.open(a), (3, 2));
        drop(a1);
        assert_eq!(admission.open(a), (2, 1));
        assert!(admission.admit(c).is_some(), "a freed slot is reused");
        assert_eq!(admission.open(c), (2, 0), "the temporary slot was returned");
    }
}
