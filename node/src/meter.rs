//! Bytes per peer, counted on every substream of every connection, so the
//! link policy (`mmls_core::link`) sees progress as it happens: a fetch
//! answer arriving for half a minute over a radio, or the peer's own pings
//! arriving while ours wait behind what we send, is a live link, though no
//! complete message or pong has come back yet.
//!
//! A `StreamMuxer` wrapper around each authenticated connection; the
//! counters are shared with the driver, which drains them on its timer.

use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};
use libp2p::futures::{AsyncRead, AsyncWrite};
use libp2p::PeerId;
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    sent: AtomicU64,
}

/// Per-peer byte counters shared between the transport and the driver.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meter {
    peers: Arc<Mutex<HashMap<PeerId, Arc<Counters>>>>,
}

/// Bytes moved since the last `take`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Moved {
    pub peer: PeerId,
    pub received: u64,
    pub sent: u64,
}

impl Meter {
    fn counters(&self, peer: PeerId) -> Arc<Counters> {
        let mut m = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(peer).or_default().clone()
    }

    /// What moved since the last call; peers without a live connection
    /// (no counter held by a muxer any more) are dropped once drained.
    pub(crate) fn take(&self) -> Vec<Moved> {
        let mut m = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = vec![];
        m.retain(|peer, c| {
            let received = c.received.swap(0, Ordering::Relaxed);
            let sent = c.sent.swap(0, Ordering::Relaxed);
            if received > 0 || sent > 0 {
                out.push(Moved {
                    peer: *peer,
                    received,
                    sent,
                });
            }
            Arc::strong_count(c) > 1
        });
        out
    }

    /// Wraps an authenticated connection's muxer.
    pub(crate) fn wrap<M>(&self, peer: PeerId, inner: M) -> Metered<M> {
        Metered {
            inner,
            counters: self.counters(peer),
        }
    }
}

/// A connection's muxer whose substreams count their bytes.
pub(crate) struct Metered<M> {
    inner: M,
    counters: Arc<Counters>,
}

impl<M> StreamMuxer for Metered<M>
where
    M: StreamMuxer + Unpin,
    M::Substream: Unpin,
{
    type Substream = MeteredStream<M::Substream>;
    type Error = M::Error;

    fn poll_inbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        Pin::new(&mut this.inner)
            .poll_inbound(cx)
            .map_ok(|s| MeteredStream {
                inner: s,
                counters: this.counters.clone(),
            })
    }

    fn poll_outbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        Pin::new(&mut this.inner)
            .poll_outbound(cx)
            .map_ok(|s| MeteredStream {
                inner: s,
                counters: this.counters.clone(),
            })
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll(cx)
    }
}

pub(crate) struct MeteredStream<S> {
    inner: S,
    counters: Arc<Counters>,
}

impl<S: AsyncRead + Unpin> AsyncRead for MeteredStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            this.counters
                .received
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MeteredStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            this.counters.sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_drain_and_are_dropped_with_their_last_connection() {
        let meter = Meter::default();
        let p = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let c = meter.counters(p);
        c.received.fetch_add(10, Ordering::Relaxed);
        c.sent.fetch_add(3, Ordering::Relaxed);
        assert_eq!(
            meter.take(),
            vec![Moved {
                peer: p,
                received: 10,
                sent: 3
            }]
        );
        assert!(meter.take().is_empty());
        drop(c);
        meter.take();
        assert!(meter.peers.lock().unwrap().is_empty());
    }
}
