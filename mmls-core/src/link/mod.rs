//! The per-peer link policy: when a connection counts as dead, which of two
//! connections to one peer is kept, and when a peer is dialled again.
//!
//! Sans-IO like the rest of the engine: drivers report connections,
//! bytes, pongs and the time, and carry out the [`LinkAction`]s it queues.
//! The node runs it over libp2p connections; it is in the engine so the
//! simulator can run the same rules over its modelled links (not wired
//! there yet), and what it measures on a slow link is what the node does.
//!
//! - **Liveness** (`progress.rs`): any progress counts as life, and the
//!   silence tolerated follows the measured round trip and the bytes we
//!   queued in front of our own ping, between `min_silence_ms` (a LAN
//!   outage is noticed in seconds) and `max_silence_ms`.
//! - **One connection per peer** (`Links::connected`): simultaneous dials
//!   and overlapping redials end in one connection, chosen the same way at
//!   both ends (the one dialled by the lower id, else the older), so the
//!   handshakes and summary exchange run once.
//! - **Backoff** (`backoff.rs`): a connection that ends young delays the
//!   next dial, doubling up to `redial_max_ms`.

mod backoff;
mod progress;
mod rtt;
#[cfg(test)]
mod tests;

use backoff::Backoff;
use progress::Progress;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// The link policy's knobs (node: `Timing`; simulator: the scenario).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    /// How often drivers ping a connection (the allowance includes one).
    pub ping_interval_ms: u64,
    /// Never dead sooner than this much silence.
    pub min_silence_ms: u64,
    /// Dead after this much silence, whatever the link's measurements.
    pub max_silence_ms: u64,
    /// The slowest link planned for (bits per second): what we queued is
    /// assumed to drain at least this fast.
    pub min_rate_bps: u64,
    /// The first wait after a connection ended young, doubled per young end.
    pub redial_base_ms: u64,
    pub redial_max_ms: u64,
    /// A connection that lived this long was not a failure.
    pub stable_after_ms: u64,
    /// Above this smoothed round trip, a link is reported slow.
    pub slow_rtt_ms: u64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            ping_interval_ms: 2000,
            min_silence_ms: 3000,
            max_silence_ms: 120_000,
            min_rate_bps: 64_000,
            redial_base_ms: 1000,
            redial_max_ms: 60_000,
            stable_after_ms: 60_000,
            slow_rtt_ms: 1000,
        }
    }
}

/// Who opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialer {
    Us,
    Them,
}

/// What a driver does with a connection that just opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit<C> {
    /// The peer's only connection: start the summary exchange.
    First,
    /// It replaces the peer's connection `C`, which the driver closes; the
    /// summary exchange starts again (the old one was likely dead).
    Replaces(C),
    /// The peer's connection carries on: close this one, nothing else.
    Duplicate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Nothing heard for `for_ms`, beyond what the link's round trip and
    /// our queue explain.
    Silent { for_ms: u64 },
}

/// What the policy asks of the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkAction<P, C> {
    Close {
        peer: P,
        conn: C,
        reason: CloseReason,
    },
}

/// How a peer's link is doing, for `status` and the web app's health view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkHealth {
    Good,
    /// Round trips above `slow_rtt_ms`.
    Slow,
    /// What we queued takes longer to drain than two ping intervals.
    Saturated,
    /// Silent past halfway from a ping interval to its allowance.
    Silent,
    /// Being closed, or not connected.
    Down,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub health: LinkHealth,
    pub rtt_ms: Option<u64>,
    pub min_rtt_ms: Option<u64>,
    /// Silence tolerated now before the connection is closed.
    pub allowance_ms: u64,
    /// Our queued bytes' drain time at the link's known rate.
    pub queue_ms: u64,
    /// Receive rate the link has shown (bytes per second, floor included).
    pub rate_bytes_per_s: u64,
    pub received_bytes: u64,
    pub sent_bytes: u64,
    /// When the peer may be dialled again (Down only).
    pub redial_in_ms: u64,
    /// Connections in a row that ended young.
    pub failures: u32,
}

#[derive(Debug, Clone)]
struct Conn<C> {
    id: C,
    dialer: Dialer,
    opened_ms: u64,
}

/// One peer's lifecycle.
#[derive(Debug, Clone)]
enum PeerLink<C> {
    Up {
        conn: Conn<C>,
        progress: Progress,
        backoff: Backoff,
    },
    /// We asked the driver to close `conn`; its `closed` is awaited.
    Closing {
        conn: Conn<C>,
        backoff: Backoff,
    },
    Down {
        backoff: Backoff,
        since_ms: u64,
    },
}

/// Down peers remembered at most (their backoff); the oldest go first.
const MAX_DOWN: usize = 4096;

/// The link policy of every peer of one node.
#[derive(Debug, Clone)]
pub struct Links<P, C> {
    me: P,
    cfg: LinkConfig,
    peers: BTreeMap<P, PeerLink<C>>,
    actions: VecDeque<LinkAction<P, C>>,
}

impl<P: Ord + Clone, C: Clone + PartialEq> Links<P, C> {
    pub fn new(me: P, cfg: LinkConfig) -> Links<P, C> {
        Links {
            me,
            cfg,
            peers: BTreeMap::new(),
            actions: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &LinkConfig {
        &self.cfg
    }

    /// A connection to `peer` opened.
    pub fn connected(&mut self, peer: P, conn: C, dialer: Dialer, now_ms: u64) -> Admit<C> {
        let new = Conn {
            id: conn,
            dialer,
            opened_ms: now_ms,
        };
        let preferred = if self.me < peer {
            Dialer::Us
        } else {
            Dialer::Them
        };
        let (admit, next) = match self.peers.remove(&peer) {
            Some(PeerLink::Up {
                conn: old,
                progress,
                backoff,
            }) => {
                // Both ends pick the same survivor: the lower id's dial,
                // else the older (a dialler's own dials are ordered).
                if new.dialer == preferred && old.dialer != preferred {
                    // Same peer, same path: what we learnt of the link stays.
                    let mut fresh = Progress::new(now_ms);
                    fresh.rtt = progress.rtt;
                    let next = PeerLink::Up {
                        conn: new,
                        progress: fresh,
                        backoff,
                    };
                    (Admit::Replaces(old.id), next)
                } else {
                    let next = PeerLink::Up {
                        conn: old,
                        progress,
                        backoff,
                    };
                    (Admit::Duplicate, next)
                }
            }
            Some(PeerLink::Closing {
                conn: old,
                mut backoff,
            }) => {
                // The one we are closing ended now, as far as backoff goes.
                backoff.ended(old.opened_ms, now_ms, &self.cfg);
                (
                    Admit::First,
                    PeerLink::Up {
                        conn: new,
                        progress: Progress::new(now_ms),
                        backoff,
                    },
                )
            }
            Some(PeerLink::Down { backoff, .. }) => (
                Admit::First,
                PeerLink::Up {
                    conn: new,
                    progress: Progress::new(now_ms),
                    backoff,
                },
            ),
            None => (
                Admit::First,
                PeerLink::Up {
                    conn: new,
                    progress: Progress::new(now_ms),
                    backoff: Backoff::default(),
                },
            ),
        };
        self.peers.insert(peer, next);
        admit
    }

    /// A connection closed. True if it was the peer's connection (the
    /// peer is gone now); closes of duplicates and replaced connections
    /// change nothing.
    pub fn closed(&mut self, peer: &P, conn: &C, now_ms: u64) -> bool {
        let ours = match self.peers.get(peer) {
            Some(PeerLink::Up { conn: c, .. }) | Some(PeerLink::Closing { conn: c, .. }) => {
                c.id == *conn
            }
            _ => false,
        };
        if !ours {
            return false;
        }
        let (opened, mut backoff) = match self.peers.remove(peer) {
            Some(PeerLink::Up { conn, backoff, .. })
            | Some(PeerLink::Closing { conn, backoff }) => (conn.opened_ms, backoff),
            _ => return false,
        };
        backoff.ended(opened, now_ms, &self.cfg);
        self.peers.insert(
            peer.clone(),
            PeerLink::Down {
                backoff,
                since_ms: now_ms,
            },
        );
        self.bound_down();
        true
    }

    /// Bytes arrived from `peer` (any stream, any protocol).
    pub fn received(&mut self, peer: &P, bytes: u64, now_ms: u64) {
        if let Some(PeerLink::Up { progress, .. }) = self.peers.get_mut(peer) {
            progress.received(bytes, now_ms);
        }
    }

    /// We wrote bytes to `peer`.
    pub fn sent(&mut self, peer: &P, bytes: u64) {
        if let Some(PeerLink::Up { progress, .. }) = self.peers.get_mut(peer) {
            progress.sent(bytes);
        }
    }

    /// A ping to `peer` was answered after `rtt_ms`.
    pub fn pong(&mut self, peer: &P, rtt_ms: u64, now_ms: u64) {
        if let Some(PeerLink::Up { progress, .. }) = self.peers.get_mut(peer) {
            progress.pong(rtt_ms, now_ms);
        }
    }

    /// Whether a dial to `peer` may start now (not connected, and past any
    /// backoff).
    pub fn may_dial(&self, peer: &P, now_ms: u64) -> bool {
        match self.peers.get(peer) {
            None => true,
            Some(PeerLink::Down { backoff, .. }) => backoff.may_dial(now_ms),
            Some(PeerLink::Up { .. }) | Some(PeerLink::Closing { .. }) => false,
        }
    }

    pub fn is_connected(&self, peer: &P) -> bool {
        matches!(self.peers.get(peer), Some(PeerLink::Up { .. }))
    }

    /// The connection kept for `peer`.
    pub fn connection(&self, peer: &P) -> Option<&C> {
        match self.peers.get(peer) {
            Some(PeerLink::Up { conn, .. }) => Some(&conn.id),
            _ => None,
        }
    }

    /// Closes the connections that stayed silent past their allowance.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let cfg = &self.cfg;
        let dead: Vec<P> = self
            .peers
            .iter()
            .filter_map(|(p, l)| match l {
                PeerLink::Up { progress, .. } if now_ms > progress.deadline_ms(cfg) => {
                    Some(p.clone())
                }
                _ => None,
            })
            .collect();
        for p in dead {
            if let Some(PeerLink::Up {
                conn,
                progress,
                backoff,
            }) = self.peers.remove(&p)
            {
                self.actions.push_back(LinkAction::Close {
                    peer: p.clone(),
                    conn: conn.id.clone(),
                    reason: CloseReason::Silent {
                        for_ms: progress.silent_for_ms(now_ms),
                    },
                });
                self.peers.insert(p, PeerLink::Closing { conn, backoff });
            }
        }
    }

    pub fn poll_action(&mut self) -> Option<LinkAction<P, C>> {
        self.actions.pop_front()
    }

    /// When `handle_timeout` next has something to do: the earliest
    /// deadline of a connected peer, or the end of a backoff.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.peers
            .values()
            .filter_map(|l| match l {
                PeerLink::Up { progress, .. } => Some(progress.deadline_ms(&self.cfg) + 1),
                PeerLink::Down { backoff, .. } if backoff.failures() > 0 => {
                    Some(backoff.next_dial_ms())
                }
                _ => None,
            })
            .min()
    }

    pub fn status(&self, peer: &P, now_ms: u64) -> Option<LinkStatus> {
        let cfg = &self.cfg;
        Some(match self.peers.get(peer)? {
            PeerLink::Up {
                progress, backoff, ..
            } => {
                let allowance = progress.allowance_ms(cfg);
                let queue = progress.queue_ms(cfg);
                let rtt = progress.rtt.smoothed_ms();
                // Halfway from a ping interval (an idle link's normal
                // silence) to the allowance.
                let silent_after = (cfg.ping_interval_ms + allowance) / 2;
                let health = if progress.silent_for_ms(now_ms) > silent_after {
                    LinkHealth::Silent
                } else if queue > 2 * cfg.ping_interval_ms {
                    LinkHealth::Saturated
                } else if rtt.is_some_and(|r| r > cfg.slow_rtt_ms) {
                    LinkHealth::Slow
                } else {
                    LinkHealth::Good
                };
                LinkStatus {
                    health,
                    rtt_ms: rtt,
                    min_rtt_ms: progress.rtt.min_ms(),
                    allowance_ms: allowance,
                    queue_ms: queue,
                    rate_bytes_per_s: progress.rate_bytes_per_s(cfg) as u64,
                    received_bytes: progress.received,
                    sent_bytes: progress.sent,
                    redial_in_ms: 0,
                    failures: backoff.failures(),
                }
            }
            PeerLink::Closing { backoff, .. } | PeerLink::Down { backoff, .. } => LinkStatus {
                health: LinkHealth::Down,
                rtt_ms: None,
                min_rtt_ms: None,
                allowance_ms: 0,
                queue_ms: 0,
                rate_bytes_per_s: 0,
                received_bytes: 0,
                sent_bytes: 0,
                redial_in_ms: backoff.next_dial_ms().saturating_sub(now_ms),
                failures: backoff.failures(),
            },
        })
    }

    /// Every peer the policy knows of, with its status.
    pub fn statuses(&self, now_ms: u64) -> Vec<(P, LinkStatus)> {
        self.peers
            .keys()
            .filter_map(|p| Some((p.clone(), self.status(p, now_ms)?)))
            .collect()
    }

    /// Forgets down peers whose backoff ended long ago (they start afresh).
    pub fn gc(&mut self, now_ms: u64) {
        let keep = self.cfg.redial_max_ms + self.cfg.stable_after_ms;
        self.peers.retain(|_, l| match l {
            PeerLink::Down { backoff, .. } => now_ms < backoff.next_dial_ms().saturating_add(keep),
            _ => true,
        });
    }

    /// Down peers are kept for their backoff only; a stranger connecting
    /// from many identities cannot grow this beyond `MAX_DOWN`.
    fn bound_down(&mut self) {
        let down = self
            .peers
            .values()
            .filter(|l| matches!(l, PeerLink::Down { .. }))
            .count();
        if down <= MAX_DOWN {
            return;
        }
        let oldest = self
            .peers
            .iter()
            .filter_map(|(p, l)| match l {
                PeerLink::Down { since_ms, .. } => Some((*since_ms, p.clone())),
                _ => None,
            })
            .min_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, p)| p);
        if let Some(p) = oldest {
            self.peers.remove(&p);
        }
    }
}
