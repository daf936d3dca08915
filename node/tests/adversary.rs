//! A hostile peer on the real wire: it speaks the node's own protocols (built
//! with `node::swarm::build`) and floods garbage gossip and sync requests at
//! one node while two honest nodes keep talking; and one that holds sync
//! streams open. Bounded in time.

mod common;

use common::*;
use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::{identity, noise, swarm::SwarmEvent, tcp, yamux, StreamProtocol};
use node::mmls_core::sync::{FetchRequest, SyncMessage, MAX_FRAME_BYTES};
use node::mmls_core::{Envelope, Id32, Kind};
use node::swarm::{
    lobby_topic, universe_topic, BehaviourEvent, MAX_INBOUND_STREAMS, SYNC_PROTOCOL,
};
use std::io;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

/// Garbage number `i`: every one different (so gossip's duplicate cache
/// does not absorb the flood for us), half of it well-formed envelopes that
/// claim a position in a real send group.
fn garbage(i: u64, u: Id32, g: Id32) -> Vec<u8> {
    if i.is_multiple_of(2) {
        let mut b = format!("garbage {i} ").into_bytes();
        b.resize(200, 0xa5);
        return b;
    }
    let mut e = Envelope::new(Kind::Application, i.to_be_bytes().repeat(20));
    e.universe = Some(u);
    e.group = Some(g);
    e.seq = 1_000_000 + i;
    e.encode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_is_refused_and_honest_traffic_flows() {
    init_tracing();
    timeout(Duration::from_secs(120), async {
        let root = root();
        // The flood stalls the attacker's connection for seconds (its pongs
        // wait behind it), and A would close it as dead after 3 s: a refusal
        // too, but this test is about validation and rate limits over the
        // whole flood, so A waits a minute for pongs here.
        let a = start_with(root.path(), "a", |c| {
            c.timing.ping_timeout = Duration::from_secs(60)
        })
        .await;
        let b = start(root.path(), "b").await;
        link(&a, &b).await;
        let u = create_and_wait(&a, &[&b], Duration::from_secs(30)).await;
        let g = a.h.universe_status(u).await.unwrap().own_group.unwrap();

        // The attacker: a fresh identity, not a member, dialling A.
        let cfg = node::Config::new(root.path().join("attacker"));
        let mut evil = node::swarm::build(identity::Keypair::generate_ed25519(), &cfg).unwrap();
        evil.dial(a.addr.clone()).unwrap();
        for t in [lobby_topic(), universe_topic(&u)] {
            evil.behaviour_mut().gossipsub.subscribe(&t).unwrap();
        }
        let a_peer = a.h.peer_id();
        let rejected_before = a.h.status().await.unwrap().rejected_inputs;
        let flood = tokio::spawn(async move {
            let (mut published, mut requests, mut answered) = (0u64, 0u64, 0u64);
            // Sync requests of ours without an answer or a failure yet. A
            // node reads at most 8 sync streams of a connection at once, and
            // past 32 streams in all yamux resets the connection: the flood
            // stays within that, as fast as answers and refusals come back.
            // Sync first (4 s), then gossip (8 s): a gossip flood this size
            // keeps A's loop so busy that few sync requests would come back.
            let mut open = 0usize;
            let start = tokio::time::Instant::now();
            let gossip_from = start + Duration::from_secs(4);
            let deadline = start + Duration::from_secs(12);
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            let mut i = 0u64;
            while tokio::time::Instant::now() < deadline {
                tokio::select! {
                    ev = evil.select_next_some() => match ev {
                        SwarmEvent::Behaviour(BehaviourEvent::Sync(
                            request_response::Event::Message {
                                message: request_response::Message::Response { .. },
                                ..
                            },
                        )) => {
                            answered += 1;
                            open = open.saturating_sub(1);
                        }
                        SwarmEvent::Behaviour(BehaviourEvent::Sync(
                            request_response::Event::OutboundFailure { .. },
                        )) => open = open.saturating_sub(1),
                        _ => {}
                    },
                    _ = tick.tick(), if tokio::time::Instant::now() >= gossip_from => {
                        // 100 gossip messages per 5 ms.
                        for _ in 0..100 {
                            i += 1;
                            let topic = if i.is_multiple_of(3) { lobby_topic() } else { universe_topic(&u) };
                            if evil
                                .behaviour_mut()
                                .gossipsub
                                .publish(topic, garbage(i, u, g))
                                .is_ok()
                            {
                                published += 1;
                            }
                        }
                    }
                    _ = tokio::time::sleep_until(gossip_from), if tokio::time::Instant::now() < gossip_from => {}
                }
                if tokio::time::Instant::now() < gossip_from && evil.is_connected(&a_peer) {
                    while open < MAX_INBOUND_STREAMS - 2 {
                        let req = SyncMessage::Fetch(FetchRequest::Range {
                            universe: u,
                            group: g,
                            from: requests % 20,
                        });
                        evil.behaviour_mut().sync.send_request(&a_peer, req);
                        requests += 1;
                        open += 1;
                    }
                }
            }
            (published, requests, answered)
        });

        // Meanwhile (both phases) A and B talk as usual.
        let mut sent = vec![];
        for k in 0..40 {
            sent.push(a.h.send(u, format!("honest {k}")).await.unwrap());
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let ma = a.member();
        wait_for("B has every honest message", Duration::from_secs(30), || async {
            count_from(&b, u, &ma).await == sent.len()
        })
        .await;
        let (published, requests, answered) = flood.await.unwrap();
        eprintln!(
            "attacker published {published} gossip messages and sent {requests} sync requests; {answered} answered"
        );
        assert!(published > 5_000, "the flood did not happen ({published})");
        assert!(requests > 1_000, "the request flood did not happen ({requests})");
        // Per-peer rate limit: 50/s with a burst of 200 over the 4 s of
        // sync flood (12 s allowed: answers may come late).
        assert!(
            answered < 200 + 50 * 12,
            "{answered} of {requests} sync requests were served"
        );
        // `published` counts publish calls: the attacker's gossipsub drops
        // what its send queue to A cannot hold ("Send Queue full"), so how
        // much reaches A depends on how fast A drains it (451 to over 1,000
        // on this 2-core machine, the same with the code before this
        // threshold was lowered). A few hundred refused shows the
        // validation; B below shows none of it was forwarded.
        let st_a = a.h.status().await.unwrap();
        assert!(
            st_a.rejected_inputs > rejected_before + 200,
            "A counted {} rejected inputs",
            st_a.rejected_inputs - rejected_before
        );
        // A validated the garbage and did not pass it on to B.
        let st_b = b.h.status().await.unwrap();
        assert!(
            st_b.rejected_inputs < 50,
            "B saw {} rejected inputs: garbage was forwarded",
            st_b.rejected_inputs
        );
        // Nothing the attacker sent moved any stream.
        check_order("b", &all_messages(&b, u).await);
        wait_for("A and B agree", Duration::from_secs(20), || async {
            converged(&[&a, &b], u).await
        })
        .await;
        shutdown_all(&[&a, &b]).await;
    })
    .await
    .expect("test timed out");
}

/// A sync client whose requests each hold a stream open at the server: it
/// writes the request whole but does not end its stream (the server's
/// codec reads to the end) until `release` says so. Client side only.
#[derive(Clone)]
struct Stall {
    started: mpsc::UnboundedSender<()>,
    release: watch::Receiver<bool>,
}

impl request_response::Codec for Stall {
    type Protocol = StreamProtocol;
    type Request = SyncMessage;
    type Response = SyncMessage;

    async fn read_request<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<SyncMessage>
    where
        T: AsyncRead + Unpin + Send,
    {
        Err(io::Error::other("client only"))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SyncMessage>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut buf = vec![];
        io.take(MAX_FRAME_BYTES as u64)
            .read_to_end(&mut buf)
            .await?;
        SyncMessage::decode(&buf).map_err(io::Error::other)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: SyncMessage,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&req.encode()).await?;
        io.flush().await?;
        let _ = self.started.send(());
        let _ = self.release.wait_for(|go| *go).await;
        Ok(())
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: SyncMessage,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Err(io::Error::other("client only"))
    }
}

/// Issue 29: a peer gets at most 8 sync streams read at once on one
/// connection (each may hold a 1 MiB frame while it is read); streams past
/// that are reset, not buffered. 20 requests that each keep their stream
/// open: 8 are read and, once let go, answered; 12 fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_gets_at_most_eight_sync_streams_read_at_once() {
    init_tracing();
    timeout(Duration::from_secs(60), async {
        let root = root();
        let a = start(root.path(), "a").await;
        let (started_tx, mut started) = mpsc::unbounded_channel();
        let (release, release_rx) = watch::channel(false);
        let codec = Stall {
            started: started_tx,
            release: release_rx,
        };
        let sync = request_response::Behaviour::with_codec(
            codec,
            [(StreamProtocol::new(SYNC_PROTOCOL), ProtocolSupport::Outbound)],
            request_response::Config::default()
                .with_request_timeout(Duration::from_secs(50))
                .with_max_concurrent_streams(100),
        );
        let mut evil = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .expect("tcp")
            .with_behaviour(|_| sync)
            .expect("behaviour")
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        evil.dial(a.addr.clone()).expect("dial");
        let a_peer = a.h.peer_id();
        const N: usize = 20;
        let (mut begun, mut answered, mut failed, mut asked) = (0, 0, 0, false);
        while answered + failed < N {
            tokio::select! {
                ev = evil.select_next_some() => match ev {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } if !asked && peer_id == a_peer => {
                        asked = true;
                        for k in 0..N as u64 {
                            let req = SyncMessage::Fetch(FetchRequest::Range {
                                universe: Id32([1; 32]),
                                group: Id32([2; 32]),
                                from: k,
                            });
                            evil.behaviour_mut().send_request(&a_peer, req);
                        }
                    }
                    SwarmEvent::Behaviour(request_response::Event::Message {
                        message: request_response::Message::Response { .. },
                        ..
                    }) => answered += 1,
                    SwarmEvent::Behaviour(request_response::Event::OutboundFailure { .. }) => {
                        failed += 1
                    }
                    _ => {}
                },
                Some(()) = started.recv() => begun += 1,
            }
            // Every request holds its stream open, or has failed already:
            // let them finish.
            if begun + failed >= N && !*release.borrow() {
                eprintln!("{begun} streams open, {failed} failed: releasing");
                release.send_replace(true);
            }
        }
        eprintln!("{answered} answered, {failed} failed");
        assert!(answered >= 1, "A served none");
        assert!(
            answered <= MAX_INBOUND_STREAMS,
            "{answered} streams of one connection were read at once"
        );
        assert_eq!(failed, N - answered);
        shutdown_all(&[&a]).await;
    })
    .await
    .expect("test timed out");
}
