//! The MMLS participant: one node's whole protocol state, as a sans-IO state
//! machine.
//!
//! Every public method is one or more *steps*. A step runs one openmls call
//! plus the engine's bookkeeping and ends in exactly one store transaction
//! (`Store::commit`), or, on any error, in a rollback that restores the
//! in-memory state too. Outputs (envelopes to publish, events) are only
//! handed to the driver after their step is durable, so nothing announced is
//! ever lost, and an own commit is on disk before anyone can see it (no fork
//! after a crash: the commit we published is the one we merged).
//!
//! Each send group is a single ordered *stream* numbered by its owner
//! (commits, Welcomes and application messages share one `seq`), so
//! receivers process it strictly in order, dedupe by position, and sync is
//! "give me group G from seq n". Commits additionally wait for the PSKs they
//! import (their `deps`): the cross-group causal order of the drafts.

use crate::envelope::{Envelope, Kind};
use crate::error::MmlsError;
use crate::id::Id32;
use crate::identity::{verify_binding, Identity, MemberId};
use crate::profile::Profile;
use crate::store::{MmlsProvider, Store, Table};
use crate::sync::{
    self, FetchRequest, FetchResponse, SyncSummary, FETCH_ANSWER_BYTES, MAX_FETCH_BYTES,
    MAX_FETCH_ENVELOPES,
};
use crate::universe::{
    auth8, from_cbor, to_cbor, Aad, FrontierEntry, Payload, RejoinRequest, SignedRejoin,
    UniverseDef,
};
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::*;
use openmls::schedule::{ExternalPsk, PreSharedKeyId, Psk};
use openmls_traits::storage::StorageProvider as _;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::collections::{BTreeMap, BTreeSet, HashMap};

mod catch_up;
mod commands;
mod commit_builder;
mod commit_processing;
mod config;
mod control;
mod conversation;
mod creation;
mod devices;
mod equivocation;
mod group_cache;
mod held;
#[cfg(any(test, feature = "testkit"))]
mod hooks;
mod incoming;
mod join;
mod key_packages;
mod kp_pool;
mod leaf_rotation;
mod leaving;
mod lobby_bounds;
mod membership;
mod output;
mod processing;
mod psk;
mod psk_gap;
mod rejoin;
mod reproposal;
mod resend;
mod rows;
mod state;
mod step;
mod stream;
mod stream_buffer;
mod tick;
mod trust;
mod views;

pub use config::Config;
pub use devices::{DeviceInfo, MAX_LINK_AHEAD_MS};
pub use held::HeldCount;
pub use kp_pool::{handed_signed_bytes, KpPoolStatus, KpRefusal};
pub use lobby_bounds::MAX_DIRECTORY;
pub use output::{
    AnchorStatus, Delivered, Event, GroupStatus, MemberCert, Output, Publish, Topic, UniverseStatus,
};
use reproposal::Reproposals;
use state::{EngineState, GroupState, MemberKps, UniverseState, UniverseTexts};
pub use step::SealedBatch;

/// One node's MMLS engine.
pub struct Participant {
    identity: Identity,
    me: MemberId,
    provider: MmlsProvider,
    config: Config,
    state: EngineState,
    /// Out-of-order stream entries per group (also for groups not joined
    /// yet), mirrored in `Table::Buffer`.
    buffers: BTreeMap<Id32, BTreeMap<u64, Vec<u8>>>,
    buffer_undo: Vec<(Id32, u64, Option<Vec<u8>>)>,
    /// When a peer's stream entry last advanced a group of each universe
    /// (in memory: a hint for the rejoin rule in `tick.rs`, not state).
    last_progress: BTreeMap<Id32, u64>,
    /// Entries of send groups we do not know: in memory, bounded per
    /// universe, never relayed (`held.rs`).
    held: held::Held,
    /// Arrival order of the lobby rows a stranger can make us keep
    /// (`lobby_bounds.rs`).
    lobby: lobby_bounds::LobbyArrivals,
    /// Decoded send groups (a cache of the store, bounded by
    /// `Config::group_cache`).
    groups: group_cache::GroupCache,
    now: u64,
    outputs: Vec<Output>,
    acked: Vec<u64>,
    /// A fault the next step's commit runs into (tests only).
    #[cfg(any(test, feature = "testkit"))]
    fault: Option<hooks::Fault>,
    /// Tests only: the suite our next send group takes, whatever the
    /// universe accepts (a node that ignores the list).
    #[cfg(test)]
    forced_suite: Option<u16>,
    /// Other candidates for buffered stream positions (see `on_stream`):
    /// in memory only, bounded; peers serve the real entry again.
    alternates: BTreeMap<(Id32, u64), Vec<Vec<u8>>>,
    /// Rejections counted since the last committed step. Kept out of
    /// `state`, which a failed step rolls back, and written with the next
    /// successful step rather than on their own: a flood of garbage must not
    /// turn into a flood of disk writes.
    rejected_pending: u64,
    /// When PSK retention was last evaluated per universe (in memory: after
    /// a restart it simply runs at the first tick).
    psk_pruned_at: HashMap<Id32, u64>,
    /// Verified members per send group at one (epoch, authenticator).
    members_cache: HashMap<Id32, MembersAt>,
    /// Member ids of the keys met in group trees.
    known_ids: crate::identity::KnownIds,
    /// Per-step durability or a group commit in progress.
    durability: step::Durability,
}

type MembersAt = ((u64, [u8; 8]), Vec<(LeafNodeIndex, MemberId)>);

const AUTH_HISTORY: usize = 16;
/// Candidates kept per stream position besides the buffered one, and in all.
const MAX_ALTERNATES_PER_POSITION: usize = 4;
const MAX_ALTERNATES: usize = 4096;

fn gid(id: &Id32) -> GroupId {
    GroupId::from_slice(id.as_bytes())
}

/// Leaf capabilities: last-resort KeyPackages need their extension listed,
/// federated send groups the trust-anchors one, and every member must
/// support every credential type in a group (X.509 next to basic). Every
/// suite we implement is listed, whichever the group's.
fn capabilities() -> Capabilities {
    Capabilities::new(
        None,
        Some(&crate::ciphersuites::all()),
        Some(&[
            ExtensionType::LastResort,
            ExtensionType::Unknown(crate::federation::GROUP_TRUST_ANCHORS),
        ]),
        None,
        Some(&[CredentialType::Basic, CredentialType::X509]),
    )
}

/// A new send group's config, in ciphersuite `suite`; a federated
/// universe's carries its anchors in the GroupContext.
fn create_config(
    anchors: &[crate::federation::DomainAnchor],
    suite: u16,
) -> Result<MlsGroupCreateConfig, MmlsError> {
    let ext = crate::federation::group_context_extensions(anchors)?;
    Ok(MlsGroupCreateConfig::builder()
        .with_group_context_extensions(ext)
        .capabilities(capabilities())
        .ciphersuite(crate::ciphersuites::suite(suite)?)
        .use_ratchet_tree_extension(true)
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(0)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(64, 10_000))
        .build())
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(0)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(64, 10_000))
        .build()
}

/// A group's ciphersuite as a code point.
fn suite_of(group: &MlsGroup) -> u16 {
    u16::from(group.ciphersuite())
}

fn log_key(group: &Id32, seq: u64) -> Vec<u8> {
    let mut k = group.as_bytes().to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Members may send exactly one kind of proposal in a send group: an Update
/// of their own leaf, keeping their identity.
fn check_update_proposal(q: &QueuedProposal) -> Result<(), MmlsError> {
    let Proposal::Update(upd) = q.proposal() else {
        return Err(MmlsError::Unexpected(
            "only Update proposals may be sent in another member's send group".into(),
        ));
    };
    match q.sender() {
        Sender::Member(i) if *i != LeafNodeIndex::new(0) => {}
        _ => {
            return Err(MmlsError::Unexpected(
                "Update proposal from a non-member or the owner".into(),
            ))
        }
    }
    let leaf = upd.leaf_node();
    verify_binding(leaf.credential(), leaf.signature_key().as_slice())?;
    Ok(())
}

fn tls<T: tls_codec::Serialize>(v: &T) -> Result<Vec<u8>, MmlsError> {
    v.tls_serialize_detached()
        .map_err(|e| MmlsError::Internal(format!("tls encode: {e:?}")))
}

impl Participant {
    /// Opens (or initialises) the participant stored in `store`. Returns the
    /// envelopes that were durably queued but maybe not published before a
    /// crash, plus our KeyPackage announcement.
    pub fn open(
        identity: Identity,
        store: Store,
        config: Config,
        now: u64,
    ) -> Result<(Participant, Vec<Output>), MmlsError> {
        let me = identity.member_id();
        let state = EngineState::load(&store)?;
        if let Some(m) = &state.node.get().member {
            if m != &me {
                return Err(MmlsError::Internal(format!(
                    "this store belongs to {m}, not to {me}"
                )));
            }
        }
        let mut buffers: BTreeMap<Id32, BTreeMap<u64, Vec<u8>>> = BTreeMap::new();
        for (k, v) in store.range(Table::Buffer, &[], None, usize::MAX)? {
            if k.len() == 40 {
                if let Some(g) = Id32::from_slice(&k[..32]) {
                    let seq = u64::from_be_bytes(k[32..].try_into().unwrap_or([0; 8]));
                    buffers.entry(g).or_default().insert(seq, v);
                }
            }
        }
        let cache_bound = config.group_cache;
        let mut p = Participant {
            identity,
            me: me.clone(),
            provider: MmlsProvider::new(store),
            config,
            state,
            buffers,
            last_progress: BTreeMap::new(),
            buffer_undo: vec![],
            held: held::Held::default(),
            lobby: Default::default(),
            groups: group_cache::GroupCache::new(cache_bound),
            now,
            outputs: vec![],
            acked: vec![],
            #[cfg(any(test, feature = "testkit"))]
            fault: None,
            #[cfg(test)]
            forced_suite: None,
            rejected_pending: 0,
            psk_pruned_at: HashMap::new(),
            members_cache: HashMap::new(),
            known_ids: Default::default(),
            alternates: BTreeMap::new(),
            durability: step::Durability::default(),
        };
        if p.state.is_touched() {
            // A migrated legacy blob: its rows are written, and the blob
            // deleted, in one transaction before anything else.
            p.commit_step()?;
        }
        p.step(|p| {
            if p.state.node.get().member.as_ref() != Some(&me) {
                p.state.node.get_mut().member = Some(me.clone());
            }
            // One last-resort KeyPackage per suite we implement (a store
            // of before suite choice has only 0x0001's).
            for suite in crate::ciphersuites::IMPLEMENTED {
                if !p.state.my_kps.contains_key(suite) {
                    p.refresh_key_package(*suite)?;
                }
            }
            p.refill_pool()
        })?;
        p.drop_unknown_buffers()?;
        // Re-publish whatever a crash may have kept from the network.
        let mut outs = vec![];
        for (k, v) in p
            .provider
            .store()
            .range(Table::Outbox, &[], None, usize::MAX)?
        {
            let id = u64::from_be_bytes(k.as_slice().try_into().unwrap_or([0; 8]));
            if let Ok((topic, bytes)) = from_cbor::<(Topic, ByteBuf)>(&v) {
                outs.push(Output::Publish(Publish {
                    topic,
                    bytes: bytes.into_vec(),
                    outbox_id: Some(id),
                }));
            }
        }
        outs.push(p.announcement());
        outs.extend(p.device_announcement());
        Ok((p, outs))
    }

    pub fn me(&self) -> &MemberId {
        &self.me
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn store(&self) -> &Store {
        self.provider.store()
    }

    /// Our KeyPackages, to publish on the lobby (at start, on request, and
    /// whenever a peer connects): one envelope with our 0x0001 KeyPackage as
    /// its body, which every node reads (nodes older than suite choice
    /// too), and those of our other suites attached (see
    /// `Envelope::proposals`), which older nodes ignore rather than refuse.
    pub fn announcement(&self) -> Output {
        let mandatory = crate::ciphersuites::X25519_AES128GCM;
        let mut e = Envelope::new(
            Kind::KeyPackage,
            self.announced_key_package()
                .map(|b| b.into_vec())
                .unwrap_or_default(),
        );
        // Without last-resort KeyPackages (`publish_last_resort` off) the
        // body is a single-use one no owner uses, and nothing is attached.
        if self.config.publish_last_resort {
            e.proposals = self
                .state
                .my_kps
                .iter()
                .filter(|(s, _)| **s != mandatory)
                .map(|(_, kp)| kp.clone())
                .collect();
        }
        e.sender = Some(self.me.to_string());
        Output::Publish(Publish {
            topic: Topic::Lobby,
            bytes: e.encode(),
            outbox_id: None,
        })
    }

    pub(crate) fn group(&mut self, id: &Id32) -> Result<&mut MlsGroup, MmlsError> {
        self.groups.load(self.provider.storage(), id)
    }

    /// Applies `Config::group_cache` between steps; a group's verified
    /// members go with it (they are N member ids per group: at hundreds of
    /// members, as large as the group).
    fn trim_groups(&mut self) {
        for g in self.groups.trim() {
            self.members_cache.remove(&g);
        }
    }

    fn uni(&self, u: &Id32) -> Result<&UniverseState, MmlsError> {
        self.state
            .universes
            .get(u)
            .ok_or(MmlsError::UnknownUniverse(*u))
    }

    /// A send group's state, journaled alone (its universe's row is not
    /// touched).
    fn group_state_mut(&mut self, u: &Id32, g: &Id32) -> Option<&mut GroupState> {
        self.state
            .universes
            .get_untracked_mut(u)
            .and_then(|u| u.groups.get_mut(g))
    }

    /// A universe's text counters, journaled alone (its row is not
    /// touched): sending or receiving a text writes one small row.
    fn texts_mut(&mut self, u: &Id32) -> Result<&mut UniverseTexts, MmlsError> {
        self.state
            .universes
            .get_untracked_mut(u)
            .map(|u| &mut u.texts)
            .ok_or(MmlsError::UnknownUniverse(*u))
    }

    fn uni_mut(&mut self, u: &Id32) -> Result<&mut UniverseState, MmlsError> {
        self.state
            .universes
            .get_mut(u)
            .ok_or(MmlsError::UnknownUniverse(*u))
    }
}
