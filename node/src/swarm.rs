//! The libp2p side: transports (TCP and QUIC, Noise, Yamux), the network
//! behaviour (gossipsub, catch-up sync over request-response, identify,
//! mDNS, ping, block list, connection limits) and the sync codec.

use crate::config::Config;
use crate::error::NodeError;
use crate::meter::Meter;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::upgrade;
use libp2p::futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::Transport;
use libp2p::{
    allow_block_list, connection_limits, gossipsub, identify, identity, mdns, noise, ping, quic,
    request_response, tcp, yamux, StreamProtocol, Swarm,
};
use mmls_core::sync::{SyncMessage, MAX_FRAME_BYTES};
use mmls_core::{Envelope, Id32, Topic};
use std::io;
use std::time::Duration;

/// The request-response protocol of catch-up sync.
pub const SYNC_PROTOCOL: &str = "/mmls/sync/1";
/// Identify's protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/mmls/id/1";
/// The lobby topic: KeyPackages, their requests, Welcomes, rejoin requests.
pub const LOBBY_TOPIC: &str = "mmls/lobby";
/// How often mDNS asks the LAN who is there. libp2p's default (5 min)
/// leaves a peer whose address changed unseen for minutes; a query is one
/// small multicast packet.
pub const MDNS_QUERY_INTERVAL: Duration = Duration::from_secs(30);
/// Envelopes at least this large are announced with IDONTWANT to the
/// mesh when received (a text envelope is ~300 B, a commit more).
pub const IDONTWANT_THRESHOLD: usize = 200;
/// What one connection's peer can make us read at once, in streams (issue
/// 29: each may hold a frame, `MAX_FRAME_BYTES`, while it is read): sync
/// streams being read or answered (request-response's pool, which our own
/// requests to that peer share: the sync agent sends at most 4, half),
/// inbound streams still negotiating their protocol, and streams the peer
/// opens at once over QUIC (more wait for QUIC's flow control). An honest
/// peer opens at most 7: 4 sync, gossipsub, ping, identify.
pub const MAX_INBOUND_STREAMS: usize = 8;
/// Yamux counts both ends' streams together and resets the connection past
/// its limit rather than making the peer wait: room for ours and the
/// peer's (7 each) and for closed ones not yet reaped. It bounds what
/// unread streams can buffer (256 KiB each) while negotiation waits.
const YAMUX_STREAMS: usize = 4 * MAX_INBOUND_STREAMS;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A ping unanswered this long is given up (the connection is judged by
/// the link policy, not by this).
const PING_GIVE_UP: Duration = Duration::from_secs(60);
/// QUIC's idle timeout: above the link policy's longest allowance.
const QUIC_IDLE: Duration = Duration::from_secs(150);

/// The gossipsub topic of a universe.
pub fn universe_topic(u: &Id32) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("mmls/u/{}", u.hex()))
}

pub fn lobby_topic() -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(LOBBY_TOPIC)
}

/// Where an engine `Topic` goes.
pub fn topic_of(t: &Topic) -> gossipsub::IdentTopic {
    match t {
        Topic::Lobby => lobby_topic(),
        Topic::Universe(u) => universe_topic(u),
    }
}

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// First, so denied peers never reach the others.
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub limits: connection_limits::Behaviour,
    pub gossipsub: gossipsub::Behaviour,
    pub sync: request_response::Behaviour<SyncCodec>,
    pub identify: identify::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    /// Liveness: the driver closes a connection whose ping fails, so a dead
    /// link is noticed in seconds and the peer re-dialled.
    pub ping: ping::Behaviour,
}

/// Builds the swarm for `key` (the node's identity key).
pub fn build(key: identity::Keypair, cfg: &Config) -> Result<Swarm<Behaviour>, NodeError> {
    build_metered(key, cfg, &Meter::default())
}

/// [`build`], with `meter` counting the bytes of every connection for the
/// link policy.
pub(crate) fn build_metered(
    key: identity::Keypair,
    cfg: &Config,
    meter: &Meter,
) -> Result<Swarm<Behaviour>, NodeError> {
    let net = |e: &dyn std::fmt::Display| NodeError::Network(e.to_string());
    let gcfg = gossipsub::ConfigBuilder::default()
        // Gossip carries engine envelopes whose MLS messages are signed by
        // their sender and checked by the engine before they are relayed
        // (`validate_messages`); nothing reads gossipsub's own `source`.
        // Verifying its signature too was 15 % of a node's CPU under load.
        // Messages are still signed, so nodes that verify keep working.
        .validation_mode(gossipsub::ValidationMode::None)
        .message_id_fn(|m: &gossipsub::Message| {
            gossipsub::MessageId::from(Envelope::id_of(&m.data).to_vec())
        })
        .validate_messages()
        // Envelopes are at most a frame less its framing: the limit bounds
        // what a peer's RPC can make us buffer, both ways.
        .max_transmit_size(MAX_FRAME_BYTES)
        // Engine envelopes are deduplicated by the engine itself (stream
        // position, KeyPackage equality); gossip only has to stop echoes.
        // A short window lets a KeyPackage announcement (identical bytes
        // every time) be published again for newcomers.
        .duplicate_cache_time(Duration::from_secs(10))
        .heartbeat_interval(Duration::from_millis(700))
        // Our own envelopes go to our mesh peers only, as relayed ones do:
        // flooding every subscribed peer sent each envelope over every
        // connection (on a radio, many times over one shared link), and
        // peers out of the mesh still learn it from IHAVE gossip or sync.
        .flood_publish(false)
        // Gossipsub 1.2: a peer that has an envelope tells its mesh, so
        // they do not send it a second copy. Our envelopes are a few
        // hundred bytes; an IDONTWANT costs ~40.
        .idontwant_message_size_threshold(IDONTWANT_THRESHOLD)
        .idontwant_on_publish(true)
        .build()
        .map_err(|e| net(&e))?;
    let gossipsub =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gcfg)
            .map_err(|e| net(&e))?;
    let sync = request_response::Behaviour::with_codec(
        SyncCodec,
        [(
            StreamProtocol::new(SYNC_PROTOCOL),
            request_response::ProtocolSupport::Full,
        )],
        request_response::Config::default()
            .with_request_timeout(cfg.timing.request_timeout)
            .with_max_concurrent_streams(MAX_INBOUND_STREAMS),
    );
    let identify = identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
            .with_agent_version(format!("mmls-node/{}", env!("CARGO_PKG_VERSION"))),
    );
    let peer_id = key.public().to_peer_id();
    let mdns = if cfg.mdns {
        let mcfg = mdns::Config {
            query_interval: MDNS_QUERY_INTERVAL,
            ..mdns::Config::default()
        };
        Some(mdns::tokio::Behaviour::new(mcfg, peer_id).map_err(|e| net(&e))?)
    } else {
        None
    };
    let limits = connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_established(Some(cfg.limits.max_connections))
            .with_max_established_per_peer(Some(cfg.limits.max_connections_per_peer))
            .with_max_pending_incoming(Some(64))
            .with_max_pending_outgoing(Some(256)),
    );
    let behaviour = Behaviour {
        blocked: Default::default(),
        limits,
        gossipsub,
        sync,
        identify,
        mdns: mdns.into(),
        ping: ping::Behaviour::new(
            // The ping's own timeout only ends a ping that never came
            // back; whether the connection lives is the link policy's call
            // (`mmls_core::link`), on any progress, not on one late pong.
            ping::Config::new()
                .with_interval(cfg.timing.ping_interval)
                .with_timeout(PING_GIVE_UP),
        ),
    };
    let (m_tcp, m_quic) = (meter.clone(), meter.clone());
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(move |key| {
            let mut ymx = yamux::Config::default();
            ymx.set_max_num_streams(YAMUX_STREAMS);
            let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                .upgrade(upgrade::Version::V1Lazy)
                .authenticate(noise::Config::new(key).map_err(|e| Box::new(e) as BoxError)?)
                .multiplex(ymx)
                .map(move |(p, m), _| (p, StreamMuxerBox::new(m_tcp.wrap(p, m))));
            let mut q = quic::Config::new(key);
            // Silence is judged by the link policy; QUIC's own idle timer
            // (10 s by default) must not end a slow link first.
            q.max_idle_timeout = QUIC_IDLE.as_millis() as u32;
            q.max_concurrent_stream_limit = MAX_INBOUND_STREAMS as u32;
            let quic = quic::tokio::Transport::new(q)
                .map(move |(p, c), _| (p, StreamMuxerBox::new(m_quic.wrap(p, c))));
            Ok::<_, BoxError>(tcp.or_transport(quic).map(|either, _| either.into_inner()))
        })
        .map_err(|e| net(&e))?
        .with_behaviour(|_| behaviour)
        .map_err(|e| net(&e))?
        // Smart dial: of a peer's addresses, QUIC goes first (no
        // head-of-line blocking between streams, its own loss detection),
        // TCP a moment later if QUIC has not connected.
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(Duration::from_secs(60))
                .with_max_negotiating_inbound_streams(MAX_INBOUND_STREAMS)
                .with_smart_dial()
        })
        .with_connection_timeout(cfg.timing.dial_timeout)
        .build();
    Ok(swarm)
}

/// The sync codec: one `SyncMessage` per stream, in the engine's own CBOR
/// encoding (`SyncMessage::encode`/`decode`, strict and size-checked), read
/// with a hard size limit so a peer cannot make us buffer more.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncCodec;

async fn read_msg<T>(io: &mut T) -> io::Result<SyncMessage>
where
    T: libp2p::futures::AsyncRead + Unpin + Send,
{
    let mut buf = Vec::new();
    io.take(MAX_FRAME_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .await?;
    if buf.len() > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("sync message larger than {MAX_FRAME_BYTES} bytes"),
        ));
    }
    SyncMessage::decode(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn write_msg<T>(io: &mut T, msg: SyncMessage) -> io::Result<()>
where
    T: libp2p::futures::AsyncWrite + Unpin + Send,
{
    let bytes = msg.encode();
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "sync message too large",
        ));
    }
    io.write_all(&bytes).await?;
    io.close().await
}

impl request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = SyncMessage;
    type Response = SyncMessage;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SyncMessage>
    where
        T: libp2p::futures::AsyncRead + Unpin + Send,
    {
        read_msg(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SyncMessage>
    where
        T: libp2p::futures::AsyncRead + Unpin + Send,
    {
        read_msg(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: SyncMessage,
    ) -> io::Result<()>
    where
        T: libp2p::futures::AsyncWrite + Unpin + Send,
    {
        write_msg(io, req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: SyncMessage,
    ) -> io::Result<()>
    where
        T: libp2p::futures::AsyncWrite + Unpin + Send,
    {
        write_msg(io, res).await
    }
}

/// The libp2p keypair of an identity secret.
pub fn keypair(secret: &[u8; 32]) -> Result<identity::Keypair, NodeError> {
    let mut s = *secret;
    identity::Keypair::ed25519_from_bytes(&mut s)
        .map_err(|e| NodeError::InvalidInput(format!("identity key: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmls_core::Identity;

    #[test]
    fn peer_id_is_the_member_id() {
        for seed in [[1u8; 32], [7; 32], [200; 32]] {
            let id = Identity::from_seed(seed);
            let kp = keypair(&seed).unwrap();
            assert_eq!(
                kp.public().to_peer_id().to_string(),
                id.member_id().to_string()
            );
            assert_eq!(
                kp.public().to_peer_id().to_bytes(),
                id.member_id().to_peer_id_bytes()
            );
        }
    }

    /// Issue 29: what a peer sends is read into memory a frame at a time,
    /// so a frame is at most 1 MiB, on sync and on gossip, both ways.
    #[tokio::test]
    async fn frames_are_at_most_one_mebibyte() {
        use libp2p::futures::io::Cursor;
        use libp2p::gossipsub::PublishError;
        use libp2p::request_response::Codec;
        use mmls_core::envelope::MAX_ENVELOPE_BYTES;
        use mmls_core::FetchResponse;
        use serde_bytes::ByteBuf;
        const MIB: usize = 1 << 20;
        let proto = StreamProtocol::new(SYNC_PROTOCOL);
        // Sync: a 2 MiB stream is refused one byte past 1 MiB.
        let mut over = Cursor::new(vec![0x80u8; 2 * MIB]);
        let e = SyncCodec
            .read_request(&proto, &mut over)
            .await
            .expect_err("2 MiB");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(over.position(), MIB as u64 + 1);
        // Nor do we send one over 1 MiB ...
        let big = |n: usize| {
            SyncMessage::Fetched(FetchResponse {
                envelopes: vec![ByteBuf::from(vec![1u8; n])],
                ..FetchResponse::default()
            })
        };
        let mut out = Cursor::new(vec![]);
        let e = SyncCodec
            .write_response(&proto, &mut out, big(MIB))
            .await
            .expect_err("over 1 MiB");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(out.get_ref().is_empty());
        // ... while the largest envelope goes, alone, and is read back.
        let mut out = Cursor::new(vec![]);
        SyncCodec
            .write_response(&proto, &mut out, big(MAX_ENVELOPE_BYTES))
            .await
            .expect("the largest envelope fits");
        let mut back = Cursor::new(out.into_inner());
        let m = SyncCodec
            .read_response(&proto, &mut back)
            .await
            .expect("read");
        assert_eq!(m, big(MAX_ENVELOPE_BYTES));
        // Gossip: gossipsub's limit is the same both ways (publish here,
        // the RPC frames its codec reads).
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = Config::new(dir.path());
        cfg.mdns = false;
        let mut sw = build(identity::Keypair::generate_ed25519(), &cfg).expect("swarm");
        let g = &mut sw.behaviour_mut().gossipsub;
        g.subscribe(&lobby_topic()).expect("subscribe");
        let r = g.publish(lobby_topic(), vec![2u8; MIB + 1]);
        assert!(matches!(r, Err(PublishError::MessageTooLarge)), "{r:?}");
        // The largest envelope is refused only for want of peers.
        let r = g.publish(lobby_topic(), vec![3u8; MAX_ENVELOPE_BYTES]);
        assert!(
            matches!(r, Err(PublishError::NoPeersSubscribedToTopic)),
            "{r:?}"
        );
    }

    #[test]
    fn topics_are_per_universe() {
        let u = Id32([0xab; 32]);
        assert_eq!(
            universe_topic(&u).to_string(),
            format!("mmls/u/{}", "ab".repeat(32))
        );
        assert_eq!(topic_of(&Topic::Lobby).to_string(), LOBBY_TOPIC);
    }
}
