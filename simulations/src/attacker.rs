//! The compromise model and the PCS measurement.
//!
//! At the compromise time the attacker copies the victim's whole store
//! (`Store::snapshot`: every table and openmls's state) and opens a second
//! `Participant` on it with the victim's identity. From then on it is a
//! *global passive* network attacker: every envelope that crosses any link
//! (gossip frames and the envelopes inside fetch answers) is handed to the
//! copy's `handle_incoming` the first time the attacker sees it after the
//! compromise. The copy never sends and is never ticked; its outputs other
//! than delivered messages are dropped, and its errors ignored.
//!
//! PCS healing time of a send group G (owner o != victim): look at the
//! application messages o sent in G after the compromise, in send order.
//! The attacker *read* a message if its copy delivered it at any time
//! during the run. G is *healed* if some message sent after the last one
//! the attacker read was not read; the healing time is the send time of
//! the first such unread message minus the compromise time. A group where
//! every message after the compromise was read never healed (within the
//! run); one with no message after the compromise gives no evidence and
//! counts as not healed. The compromise as a whole is healed when every
//! measured group is, at the largest of their healing times.
//!
//! Not measured: the victim's own send group. openmls never decrypts a
//! message sent from the member's own leaf (the own sender ratchet only
//! produces encryption keys), so a copy of the victim cannot read the
//! victim's own traffic, although a real attacker holding the same secrets
//! could until the victim's next commit with a path.

use crate::metrics::{Pcs, PcsGroup};
use mmls_core::{Event, Output, Participant};
use std::collections::BTreeMap;

/// A seen-set over interned envelope ids.
#[derive(Debug, Clone, Default)]
pub struct BitSet(Vec<u64>);

impl BitSet {
    /// Marks `i`; true if it was not marked before.
    pub fn insert(&mut self, i: u32) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        let was = self.0[w] & (1 << b) != 0;
        self.0[w] |= 1 << b;
        !was
    }

    pub fn contains(&self, i: u32) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        self.0.get(w).is_some_and(|x| x & (1 << b) != 0)
    }
}

pub struct Attacker {
    pub victim: usize,
    /// Compromise time (µs).
    pub at_us: u64,
    pub copy: Participant,
    seen: BitSet,
    /// Simulator message id -> when the copy decrypted it (µs).
    pub read: BTreeMap<u64, u64>,
    pub inputs: u64,
    pub errors: u64,
}

impl Attacker {
    pub fn new(victim: usize, at_us: u64, copy: Participant) -> Attacker {
        Attacker {
            victim,
            at_us,
            copy,
            seen: BitSet::default(),
            read: BTreeMap::new(),
            inputs: 0,
            errors: 0,
        }
    }

    /// An envelope crossed a link at `now` (µs).
    pub fn observe(&mut self, id: u32, bytes: &[u8], now: u64) {
        if !self.seen.insert(id) {
            return;
        }
        self.inputs += 1;
        match self.copy.handle_incoming(bytes) {
            Ok(outs) => {
                for o in outs {
                    if let Output::Event(Event::Message(d)) = o {
                        if let Some(mid) = crate::sim::message_id(&d.body) {
                            self.read.entry(mid).or_insert(now);
                        }
                    }
                }
            }
            Err(e) if e.is_duplicate() => {}
            Err(_) => self.errors += 1,
        }
    }
}

/// One application message as the PCS analysis needs it.
pub struct SentMessage {
    pub id: u64,
    pub sender: usize,
    pub group: mmls_core::Id32,
    pub sent_us: u64,
}

/// Computes the PCS report of one attacker from the messages sent in the
/// run (in send order). `victim_updates` are the victim's path commits (µs).
pub fn analyse(att: &Attacker, msgs: &[SentMessage], victim_updates: &[u64]) -> Pcs {
    analyse_reads(att.victim, att.at_us, &att.read, msgs, victim_updates)
}

/// [`analyse`] on plain data: `read` maps message ids to when they were read.
pub fn analyse_reads(
    victim: usize,
    t0: u64,
    read: &BTreeMap<u64, u64>,
    msgs: &[SentMessage],
    victim_updates: &[u64],
) -> Pcs {
    let secs = |us: u64| ((us.saturating_sub(t0)) as f64 / 1e6 * 1000.0).round() / 1000.0;
    // (owner, group) -> [(sent, read)] in send order.
    type Sends = Vec<(u64, bool)>;
    let mut per: BTreeMap<(usize, [u8; 32]), Sends> = BTreeMap::new();
    for m in msgs {
        if m.sender == victim || m.sent_us < t0 {
            continue;
        }
        per.entry((m.sender, m.group.0))
            .or_default()
            .push((m.sent_us, read.contains_key(&m.id)));
    }
    let mut groups = vec![];
    for ((owner, g), list) in per {
        let last_read = list.iter().filter(|(_, r)| *r).map(|(t, _)| *t).max();
        let first_unread_after = list
            .iter()
            .filter(|(t, r)| !*r && last_read.is_none_or(|lr| *t > lr))
            .map(|(t, _)| *t)
            .min();
        let first_unread = list.iter().filter(|(_, r)| !*r).map(|(t, _)| *t).min();
        let monotone = match (first_unread, last_read) {
            (Some(u), Some(r)) => r < u,
            _ => true,
        };
        groups.push(PcsGroup {
            owner,
            group: mmls_core::Id32(g).short(),
            sent_after: list.len(),
            read: list.iter().filter(|(_, r)| *r).count(),
            last_read_s: last_read.map(secs),
            healed: first_unread_after.is_some(),
            heal_seconds: first_unread_after.map(secs),
            monotone,
        });
    }
    let healed = !groups.is_empty() && groups.iter().all(|g| g.healed);
    let heal_seconds = if healed {
        groups
            .iter()
            .filter_map(|g| g.heal_seconds)
            .reduce(f64::max)
    } else {
        None
    };
    let mut hs: Vec<f64> = groups.iter().filter_map(|g| g.heal_seconds).collect();
    hs.sort_by(|a, b| a.total_cmp(b));
    let median = if hs.is_empty() {
        None
    } else {
        Some(hs[(hs.len() - 1) / 2])
    };
    Pcs {
        member: victim,
        at_s: (t0 as f64 / 1e6 * 1000.0).round() / 1000.0,
        healed,
        heal_seconds,
        median_group_heal_seconds: median,
        victim_first_update_s: victim_updates
            .iter()
            .copied()
            .filter(|t| *t >= t0)
            .min()
            .map(secs),
        sent_after: groups.iter().map(|g| g.sent_after).sum(),
        read: groups.iter().map(|g| g.read).sum(),
        own_group_measured: false,
        groups,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitset() {
        let mut b = BitSet::default();
        assert!(b.insert(3));
        assert!(!b.insert(3));
        assert!(b.contains(3));
        assert!(!b.contains(200));
        assert!(b.insert(200));
    }

    fn msg(id: u64, sender: usize, t: u64) -> SentMessage {
        SentMessage {
            id,
            sender,
            group: mmls_core::Id32([sender as u8; 32]),
            sent_us: t * 1_000_000,
        }
    }

    #[test]
    fn healing_is_the_first_unread_after_the_last_read() {
        let msgs = vec![
            msg(1, 1, 5),
            msg(2, 1, 12),
            msg(3, 2, 13),
            msg(4, 1, 20),
            msg(5, 2, 30),
            msg(6, 1, 40),
        ];
        // Compromise at t=10 of member 0; reads 2 and 3 only.
        let read = BTreeMap::from([(2, 0), (3, 0), (1, 0)]);
        let p = analyse_reads(0, 10_000_000, &read, &msgs, &[15_000_000]);
        assert!(p.healed);
        assert_eq!(p.groups.len(), 2);
        assert_eq!(p.groups[0].heal_seconds, Some(10.0)); // msg 4 at 20 s
        assert_eq!(p.groups[1].heal_seconds, Some(20.0)); // msg 5 at 30 s
        assert_eq!(p.heal_seconds, Some(20.0));
        assert_eq!(p.victim_first_update_s, Some(5.0));
        assert_eq!(p.sent_after, 5);
        assert_eq!(p.read, 2);
        // Everything read: never healed.
        let all: BTreeMap<u64, u64> = (1..=6).map(|i| (i, 0)).collect();
        let p = analyse_reads(0, 10_000_000, &all, &msgs, &[]);
        assert!(!p.healed);
        assert_eq!(p.heal_seconds, None);
    }
}
