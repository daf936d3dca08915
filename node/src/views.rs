//! What people see, on the driver task: display names (announced in-band,
//! see `names.rs`), our own texts next to others' (the engine's `Sent`
//! table plus `own.rs`'s send positions), receipts, members' last contact.
//!
//! Receipts need no extra traffic. A member holds our text (entry `s` of
//! our send group, sent in epoch `e`) once
//! * its catch-up summary, which every directly connected peer sends each
//!   `sync_interval`, says it holds our stream beyond `s` (a summary is
//!   authenticated by the Noise connection to that PeerId, and counts only
//!   entries the member processed), or
//! * one of its own commits we processed (MLS-authenticated) named our
//!   group at an epoch after `e` (streams are processed in order).
//!
//! A member can only over-claim its own receipt; nothing here feeds any
//! security decision.

use crate::driver::{now_ms, Driver};
use crate::error::NodeError;
use crate::names::{self, Names};
use crate::own::{OwnIndex, SentMeta};
use crate::types::{ConversationEntry, MemberView, Receipt};
use libp2p::PeerId;
use mmls_core::{Event, Id32, MemberId, MmlsError, SyncSummary};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;

/// Most texts one conversation answer holds.
pub const MAX_CONVERSATION: usize = 1000;
/// Name announcements of a universe not ready yet are retried this long.
const ANNOUNCE_RETRY_FOR_MS: u64 = 10 * 60_000;
/// The `init` default name: not worth announcing.
const DEFAULT_NAME: &str = "mmls-node";

/// Shared names (the driver writes announced ones, the API reads them and
/// sets nicknames).
pub type SharedNames = Arc<Mutex<Names>>;

pub(crate) fn lock(n: &SharedNames) -> MutexGuard<'_, Names> {
    n.lock().unwrap_or_else(|p| p.into_inner())
}

/// One of our texts, for the event stream.
#[derive(Debug, Clone)]
pub struct SentText {
    pub universe: Id32,
    pub entry: ConversationEntry,
}

pub(crate) struct Ux {
    pub names: SharedNames,
    own: OwnIndex,
    /// Announce our name in our universes.
    announce: bool,
    /// Per universe: the next seq of our send group each member's summary
    /// reported (how much of our stream it holds).
    heads: HashMap<Id32, HashMap<MemberId, u64>>,
    /// Unix ms of the last direct contact or text per member.
    last_seen: HashMap<MemberId, u64>,
    /// Universes to announce our name in, since when.
    pending: BTreeMap<Id32, u64>,
    sent_tx: broadcast::Sender<SentText>,
    /// The delivery cursor after the newest delivered text (cursors are
    /// global and grow); None until known.
    next_cursor: Option<u64>,
}

impl Ux {
    pub(crate) fn new(
        dir: &std::path::Path,
        names: SharedNames,
        announce: bool,
        sent_tx: broadcast::Sender<SentText>,
    ) -> Ux {
        Ux {
            names,
            own: OwnIndex::load(dir),
            announce,
            heads: HashMap::new(),
            last_seen: HashMap::new(),
            pending: BTreeMap::new(),
            sent_tx,
            next_cursor: None,
        }
    }

    pub(crate) fn seen_peer(&mut self, peer: &PeerId) {
        if let Ok(m) = MemberId::parse(&peer.to_string()) {
            self.last_seen.insert(m, now_ms());
        }
    }
}

fn text_of(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

impl Driver {
    /// Looks at an engine event before it is broadcast: records names and
    /// contacts, queues announcements. False for the node's own control
    /// texts, which nobody should see as messages.
    pub(crate) fn observe(&mut self, e: &Event) -> bool {
        match e {
            Event::Message(d) => {
                let next = d.cursor.saturating_add(1);
                self.ux.next_cursor = Some(self.ux.next_cursor.map_or(next, |c| c.max(next)));
                let seen = self.ux.last_seen.entry(d.sender.clone()).or_insert(0);
                *seen = (*seen).max(d.received_at);
                if names::is_control(&d.body) {
                    if let Some(n) = names::parse_announcement(&d.body) {
                        if d.sender != self.me {
                            lock(&self.ux.names).announced(&d.sender, &n);
                        }
                    }
                    return false;
                }
            }
            Event::UniverseJoined { universe, .. } => self.queue_announcement(*universe),
            Event::MemberAdded { universe, member } if *member != self.me => {
                // The new member has not seen our earlier announcement.
                self.queue_announcement(*universe)
            }
            _ => {}
        }
        true
    }

    pub(crate) fn queue_announcement(&mut self, u: Id32) {
        if self.ux.announce && self.name != DEFAULT_NAME {
            self.ux.pending.entry(u).or_insert_with(now_ms);
        }
    }

    /// Sends the queued name announcements whose universe is ready.
    pub(crate) fn flush_announcements(&mut self) {
        if self.ux.pending.is_empty() {
            return;
        }
        let body = names::announcement(&self.name);
        let now = now_ms();
        let pending = std::mem::take(&mut self.ux.pending);
        for (u, since) in pending {
            match self.p.send_control(&u, &body) {
                Ok(outs) => {
                    tracing::debug!(universe = %u.short(), "name announced");
                    self.handle_outputs(outs);
                }
                Err(MmlsError::UniverseNotReady(_))
                    if now < since.saturating_add(ANNOUNCE_RETRY_FOR_MS) =>
                {
                    self.ux.pending.insert(u, since);
                }
                Err(e) => tracing::debug!(universe = %u.short(), error = %e, "name not announced"),
            }
        }
    }

    /// Remembers how much of our stream a peer holds, from its summaries.
    pub(crate) fn note_heads(&mut self, peer: PeerId, theirs: &[SyncSummary]) {
        let Ok(m) = MemberId::parse(&peer.to_string()) else {
            return;
        };
        for s in theirs.iter().take(1024) {
            let Some(own) = self.p.group_of(&s.universe, &self.me) else {
                continue;
            };
            if let Some((_, next)) = s.heads.iter().find(|(g, _)| *g == own) {
                let h = self
                    .ux
                    .heads
                    .entry(s.universe)
                    .or_default()
                    .entry(m.clone())
                    .or_insert(0);
                *h = (*h).max(*next);
            }
        }
    }

    /// The delivery cursor after the newest text delivered in `u` (learnt
    /// once from the store, then from events).
    fn next_cursor(&mut self, u: &Id32) -> Option<u64> {
        if self.ux.next_cursor.is_none() {
            let mut after = None;
            while let Ok(page) = self.p.messages(u, after, 1000) {
                let Some(last) = page.last() else { break };
                after = Some(last.cursor);
            }
            self.ux.next_cursor = Some(after.map_or(0, |c| c.saturating_add(1)));
        }
        self.ux.next_cursor
    }

    /// After a send: its position (for receipts) and the `sent` event.
    pub(crate) fn sent(&mut self, u: &Id32, seq: u64, body: &[u8]) {
        let at = now_ms();
        let seen = self.next_cursor(u);
        let meta = self.p.status(u).ok().and_then(|st| {
            let own = st.own_group?;
            let g = st.groups.iter().find(|g| g.group == own)?;
            Some(SentMeta {
                stream_seq: g.next_seq.checked_sub(1)?,
                epoch: g.epoch,
                at,
                seen,
            })
        });
        if let Some(m) = meta {
            self.ux.own.record(*u, seq, m);
        }
        if names::is_control(body) {
            return;
        }
        let receipt = meta.and_then(|m| self.receipts(u).ok().map(|r| r.receipt(&m)));
        let entry = ConversationEntry {
            mine: true,
            sender: self.me.to_string(),
            sender_name: Some(self.name.clone()),
            seq,
            text: text_of(body),
            at,
            cursor: None,
            receipt,
            user: self.p.user_of(&self.me),
        };
        let _ = self.ux.sent_tx.send(SentText {
            universe: *u,
            entry,
        });
    }

    fn receipts(&mut self, u: &Id32) -> Result<Receipts, NodeError> {
        let st = self.p.status(u)?;
        let others: Vec<MemberId> = st.roster.into_iter().filter(|m| *m != self.me).collect();
        let acked: HashMap<MemberId, u64> = match st.own_group {
            Some(g) => self.p.acked_epochs(u, &g)?.into_iter().collect(),
            None => HashMap::new(),
        };
        let heads = self.ux.heads.get(u).cloned().unwrap_or_default();
        Ok(Receipts {
            others,
            acked,
            heads,
        })
    }

    /// The last `limit` texts of a universe, ours and others', in order.
    pub(crate) fn cmd_conversation(
        &mut self,
        u: &Id32,
        limit: usize,
    ) -> Result<Vec<ConversationEntry>, NodeError> {
        if !self.p.universes().contains(u) {
            return Err(MmlsError::UnknownUniverse(*u).into());
        }
        let limit = limit.clamp(1, MAX_CONVERSATION);
        let names = lock(&self.ux.names);
        let mut name_cache: HashMap<MemberId, Option<String>> = HashMap::new();
        let mut name_of = |m: &MemberId| {
            name_cache
                .entry(m.clone())
                .or_insert_with(|| names.display(m))
                .clone()
        };
        // Others' texts, in delivery order (the last `limit` of them).
        let mut theirs: VecDeque<ConversationEntry> = VecDeque::new();
        let mut after = None;
        loop {
            let page = self.p.messages(u, after, 1000)?;
            let Some(last) = page.last() else { break };
            after = Some(last.cursor);
            for d in page {
                if names::is_control(&d.body) {
                    continue;
                }
                theirs.push_back(ConversationEntry {
                    mine: false,
                    sender_name: name_of(&d.sender),
                    sender: d.sender.to_string(),
                    seq: d.seq,
                    text: text_of(&d.body),
                    at: d.received_at,
                    cursor: Some(d.cursor),
                    receipt: None,
                    user: d.user.clone(),
                });
                if theirs.len() > limit {
                    theirs.pop_front();
                }
            }
        }
        drop(names);
        // Ours, in send order.
        let mut mine: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
        let mut after = None;
        loop {
            let page = self.p.own_texts(u, after, 1000)?;
            let Some(last) = page.last() else { break };
            after = Some(last.0);
            for t in page {
                if !names::is_control(&t.1) {
                    mine.push_back(t);
                    if mine.len() > limit {
                        mine.pop_front();
                    }
                }
            }
        }
        let r = self.receipts(u)?;
        let me = self.me.to_string();
        let my_user = self.p.user_of(&self.me);
        let mine: Vec<(ConversationEntry, Option<u64>)> = mine
            .into_iter()
            .map(|(seq, body)| {
                let meta = self.ux.own.get(u, seq);
                let e = ConversationEntry {
                    mine: true,
                    sender: me.clone(),
                    sender_name: Some(self.name.clone()),
                    seq,
                    text: text_of(&body),
                    at: meta.map(|m| m.at).unwrap_or(0),
                    cursor: None,
                    receipt: meta.map(|m| r.receipt(&m)),
                    user: my_user.clone(),
                };
                (e, meta.and_then(|m| m.seen))
            })
            .collect();
        Ok(merge(mine, theirs.into_iter().collect(), limit))
    }

    /// The members of a universe with names, contact and lag.
    pub(crate) fn cmd_members(&mut self, u: &Id32) -> Result<Vec<MemberView>, NodeError> {
        let st = self.p.status(u)?;
        let acked: HashMap<MemberId, u64> = match st.own_group {
            Some(g) => self.p.acked_epochs(u, &g)?.into_iter().collect(),
            None => HashMap::new(),
        };
        let own_epoch = st
            .own_group
            .and_then(|g| st.groups.iter().find(|x| x.group == g))
            .map(|g| g.epoch);
        let received: HashMap<MemberId, u64> = self.p.received_texts(u).into_iter().collect();
        let connected: Vec<String> = self.peers.keys().map(|p| p.to_string()).collect();
        let names = lock(&self.ux.names);
        let mut out = vec![];
        for m in &st.roster {
            let me = *m == self.me;
            let info = names.info(m);
            let group = st.groups.iter().find(|g| g.owner == *m);
            let acked_epoch = if me { own_epoch } else { acked.get(m).copied() };
            out.push(MemberView {
                member: m.to_string(),
                name: if me {
                    Some(self.name.clone())
                } else {
                    info.display
                },
                nickname: info.nickname,
                announced: info.announced,
                me,
                admin: st.admins.contains(m),
                connected: connected.iter().any(|c| c == m.as_str()),
                last_seen: if me {
                    Some(now_ms())
                } else {
                    self.ux.last_seen.get(m).copied()
                },
                group: group.map(|g| g.group.hex()),
                group_epoch: group.map(|g| g.epoch),
                acked_epoch,
                epoch_lag: match (own_epoch, acked_epoch) {
                    (Some(o), Some(a)) => Some(o.saturating_sub(a)),
                    _ => None,
                },
                stale: group.is_some_and(|g| g.stale),
                received_texts: received.get(m).copied().unwrap_or(0),
                user: self.p.speaks_for(u, m),
            });
        }
        Ok(out)
    }
}

struct Receipts {
    others: Vec<MemberId>,
    acked: HashMap<MemberId, u64>,
    heads: HashMap<MemberId, u64>,
}

impl Receipts {
    fn receipt(&self, m: &SentMeta) -> Receipt {
        let by: Vec<String> = self
            .others
            .iter()
            .filter(|o| {
                self.heads.get(*o).is_some_and(|h| *h > m.stream_seq)
                    || self.acked.get(*o).is_some_and(|e| *e > m.epoch)
            })
            .map(|o| o.to_string())
            .collect();
        Receipt {
            received_by: by.len(),
            of: self.others.len(),
            by,
        }
    }
}

/// Merges ours (send order) and theirs (delivery order), keeping each
/// side's order: one of ours goes before the first of theirs delivered at
/// or after the cursor it saw when sent (by time when that is unknown);
/// the last `limit`.
fn merge(
    mine: Vec<(ConversationEntry, Option<u64>)>,
    theirs: Vec<ConversationEntry>,
    limit: usize,
) -> Vec<ConversationEntry> {
    let mut out = Vec::with_capacity(mine.len() + theirs.len());
    let (mut a, mut b) = (mine.into_iter().peekable(), theirs.into_iter().peekable());
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some((x, seen)), Some(y)) => match (seen, y.cursor) {
                (Some(s), Some(c)) => *s <= c,
                _ => x.at <= y.at,
            },
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        if take_a {
            out.extend(a.next().map(|(e, _)| e));
        } else {
            out.extend(b.next());
        }
    }
    let skip = out.len().saturating_sub(limit);
    out.split_off(skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(mine: bool, seq: u64, at: u64) -> ConversationEntry {
        ConversationEntry {
            mine,
            sender: String::new(),
            sender_name: None,
            seq,
            text: String::new(),
            at,
            cursor: None,
            receipt: None,
            user: None,
        }
    }

    #[test]
    fn merge_keeps_each_sides_order_and_the_last_ones() {
        let mine = vec![
            (e(true, 1, 10), None),
            (e(true, 2, 30), None),
            (e(true, 3, 30), None),
        ];
        let theirs = vec![e(false, 7, 20), e(false, 8, 30), e(false, 9, 40)];
        let m = merge(mine, theirs, 10);
        let order: Vec<(bool, u64)> = m.iter().map(|x| (x.mine, x.seq)).collect();
        assert_eq!(
            order,
            vec![
                (true, 1),
                (false, 7),
                (true, 2),
                (true, 3),
                (false, 8),
                (false, 9)
            ]
        );
        assert!(!merge(vec![(e(true, 1, 1), None)], vec![e(false, 1, 2)], 1)[0].mine);
        // What we had seen when sending beats clocks: sent after cursor 4
        // was delivered, though stamped earlier.
        let mut t = e(false, 5, 100);
        t.cursor = Some(4);
        let mut t2 = e(false, 6, 101);
        t2.cursor = Some(5);
        let m = merge(vec![(e(true, 1, 50), Some(5))], vec![t, t2], 10);
        let order: Vec<u64> = m.iter().map(|x| x.seq).collect();
        assert_eq!(order, vec![5, 1, 6]);
    }

    #[test]
    fn receipts_count_summaries_and_frontiers() {
        let a = MemberId::parse("12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA").unwrap();
        let r = Receipts {
            others: vec![a.clone()],
            acked: HashMap::new(),
            heads: [(a.clone(), 5)].into_iter().collect(),
        };
        let meta = |s, ep| SentMeta {
            stream_seq: s,
            epoch: ep,
            at: 0,
            seen: None,
        };
        assert_eq!(r.receipt(&meta(4, 1)).received_by, 1);
        assert_eq!(r.receipt(&meta(5, 1)).received_by, 0);
        let r2 = Receipts {
            others: vec![a.clone()],
            acked: [(a, 2)].into_iter().collect(),
            heads: HashMap::new(),
        };
        assert_eq!(r2.receipt(&meta(9, 1)).received_by, 1);
        assert_eq!(r2.receipt(&meta(9, 2)).of, 1);
        assert_eq!(r2.receipt(&meta(9, 2)).received_by, 0);
    }
}
