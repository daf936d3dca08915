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
    self, FetchRequest, FetchResponse, SyncSummary, MAX_FETCH_BYTES, MAX_FETCH_ENVELOPES,
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

mod control;
mod psk;
mod resend;
mod views;

/// Policy knobs. Times are in the driver's milliseconds.
#[derive(Debug, Clone)]
pub struct Config {
    /// Commit pending PSK imports at the latest this long after they arose
    /// (they are also committed before every send).
    pub commit_delay_ms: u64,
    /// Issue an own MMLS update (commit with path) this often; None = only
    /// when asked.
    pub update_interval_ms: Option<u64>,
    /// Forward-secrecy bound (ms): an exported PSK is kept while a member
    /// may still import it (see `participant::psk`), but never longer than
    /// this after its epoch ended, whoever still lags. A commit importing
    /// an older one cannot be processed; its reader rejoins that group.
    pub psk_max_age_ms: u64,
    /// Envelopes kept per send group in the log peers fetch from.
    pub log_retention: u64,
    /// Own texts kept per universe to re-send to a member we re-add (a
    /// rejoin after pruned history or state loss).
    pub sent_retention: u64,
    /// Out-of-order envelopes held per group.
    pub max_buffer_per_group: usize,
    /// Re-ask a peer for missing stream entries after this long.
    pub fetch_retry_ms: u64,
    /// A group blocked on missing history for this long is rejoined.
    pub rejoin_after_ms: u64,
    /// Re-ask for a missing KeyPackage after this long.
    pub kp_retry_ms: u64,
    /// Remove members whose send group has been silent this long (None = never).
    pub silent_removal_ms: Option<u64>,
    /// Leaf rotation: an MMLS update also sends an Update proposal in every
    /// other send group (DESIGN "Leaf rotation everywhere"). Costs one path
    /// commit per other member per update; large simulations may turn it off
    /// to study the PSK mechanism alone.
    pub rotate_leaves: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            commit_delay_ms: 500,
            update_interval_ms: None,
            psk_max_age_ms: 24 * 3_600_000,
            log_retention: 100_000,
            sent_retention: 100_000,
            max_buffer_per_group: 4096,
            fetch_retry_ms: 1_000,
            rejoin_after_ms: 30_000,
            kp_retry_ms: 2_000,
            silent_removal_ms: None,
            rotate_leaves: true,
        }
    }
}

/// Where the driver publishes an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Topic {
    /// Everyone: KeyPackages, requests, Welcomes, rejoin requests.
    Lobby,
    /// The members of one universe.
    Universe(Id32),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    pub topic: Topic,
    pub bytes: Vec<u8>,
    /// Outbox id to acknowledge once published (own stream entries only).
    pub outbox_id: Option<u64>,
}

/// A delivered application message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    pub universe: Id32,
    pub sender: MemberId,
    /// The sender's per-universe message number (1, 2, ...).
    pub seq: u64,
    pub body: ByteBuf,
    /// Position in this node's delivered log (for paging).
    pub cursor: u64,
    pub group: Id32,
    pub epoch: u64,
    /// Driver time (ms) when it was delivered here.
    pub received_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    UniverseJoined {
        universe: Id32,
        name: String,
    },
    Message(Delivered),
    MemberAdded {
        universe: Id32,
        member: MemberId,
    },
    MemberRemoved {
        universe: Id32,
        member: MemberId,
    },
    /// We were removed from the universe.
    RemovedFromUniverse {
        universe: Id32,
    },
    /// Our state in this group cannot be brought forward; a rejoin was asked.
    Stale {
        universe: Id32,
        group: Id32,
        owner: MemberId,
    },
    Rejoined {
        universe: Id32,
        group: Id32,
        owner: MemberId,
    },
    /// Two views of the same (group, epoch) disagree: the owner equivocated.
    Equivocation {
        universe: Id32,
        owner: MemberId,
        group: Id32,
        epoch: u64,
    },
    /// A stream entry we had accepted failed to process and was dropped.
    Rejected {
        universe: Id32,
        group: Id32,
        seq: u64,
        reason: String,
    },
    /// Own commit made (for metrics: `path` = it was an MMLS update).
    Committed {
        universe: Id32,
        epoch: u64,
        imports: usize,
        path: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Output {
    Publish(Publish),
    Event(Event),
    /// Ask peers for this; feed the answer to `handle_fetch_response`.
    Fetch(FetchRequest),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupStatus {
    pub group: Id32,
    pub owner: MemberId,
    pub epoch: u64,
    pub next_seq: u64,
    pub buffered: usize,
    pub blocked: bool,
    pub stale: bool,
    /// Short hash of the current epoch authenticator (compare across nodes).
    pub auth: String,
    pub members: usize,
    /// Why the stream is stuck, if it is: the missing seq, or the
    /// (group, epoch) PSKs its next commit waits for.
    pub waiting_for: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UniverseStatus {
    pub id: Id32,
    pub name: Option<String>,
    pub profile: Option<String>,
    pub creator: Option<MemberId>,
    pub admins: Vec<MemberId>,
    pub roster: Vec<MemberId>,
    pub own_group: Option<Id32>,
    pub groups: Vec<GroupStatus>,
    pub pending_imports: usize,
    pub messages_sent: u64,
    pub equivocations: Vec<(MemberId, Id32, u64)>,
    pub removed: bool,
}

// ---------------------------------------------------------------- state --

#[derive(Debug, Clone, Serialize, Deserialize)]
struct GroupState {
    owner: MemberId,
    next_seq: u64,
    epoch: u64,
    /// Short epoch-authenticator hashes of recent epochs (equivocation check).
    auth: BTreeMap<u64, [u8; 8]>,
    /// Oldest epoch whose exported PSK we still hold.
    psk_min: u64,
    blocked_since: Option<u64>,
    last_fetch_at: u64,
    stale: bool,
    stale_since: Option<u64>,
    /// When the owner last committed (silence detection).
    last_commit_at: u64,
    /// Log entries below this seq were deleted by retention (as opposed to
    /// never held, because we joined later): peers asking for them are told
    /// the history is gone.
    #[serde(default)]
    pruned_below: u64,
    /// Coarse (epoch, time) checkpoints: at that time that epoch was
    /// current, so every older one had ended (for `psk_max_age_ms`).
    #[serde(default)]
    psk_marks: Vec<(u64, u64)>,
    /// The epoch our last own commit's frontier named for this group: the
    /// next commit names it only if it moved since.
    #[serde(default)]
    named_epoch: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct UniverseState {
    id: Id32,
    def: Option<UniverseDef>,
    roster: BTreeSet<MemberId>,
    own_group: Option<Id32>,
    groups: BTreeMap<Id32, GroupState>,
    owner_group: BTreeMap<MemberId, Id32>,
    /// Groups that made an MMLS update since our last commit.
    pending_imports: BTreeSet<Id32>,
    pending_adds: BTreeSet<MemberId>,
    pending_removes: BTreeSet<MemberId>,
    /// Rejoin: re-add this member with this KeyPackage.
    readds: BTreeMap<MemberId, ByteBuf>,
    pending_since: Option<u64>,
    last_commit_at: u64,
    last_update_at: u64,
    next_text_seq: u64,
    /// Where Welcomes for each member sit in our log (to serve fetches).
    welcomes: BTreeMap<MemberId, Vec<(Id32, u64)>>,
    rejoin_nonces: BTreeMap<MemberId, u64>,
    rejoin_requested_at: Option<u64>,
    removed: bool,
    equivocations: Vec<(MemberId, Id32, u64)>,
    /// Update proposals received in our own group (TLS MLS messages), to
    /// embed in the commit that covers them.
    #[serde(default)]
    own_proposals: Vec<ByteBuf>,
    /// Groups where our leaf rotation is proposed but not yet committed.
    #[serde(default)]
    leaf_updates: BTreeSet<Id32>,
    /// Policy: an own MMLS update is due (after rejoining).
    #[serde(default)]
    update_due: bool,
    /// The highest text number delivered from each owner.
    #[serde(default)]
    received_from: BTreeMap<MemberId, u64>,
    /// Rejoiners to re-send our texts to once re-added: after this number.
    #[serde(default)]
    resend_after: BTreeMap<MemberId, u64>,
}

impl UniverseState {
    fn new(id: Id32) -> Self {
        UniverseState {
            id,
            def: None,
            roster: BTreeSet::new(),
            own_group: None,
            groups: BTreeMap::new(),
            owner_group: BTreeMap::new(),
            pending_imports: BTreeSet::new(),
            pending_adds: BTreeSet::new(),
            pending_removes: BTreeSet::new(),
            readds: BTreeMap::new(),
            pending_since: None,
            last_commit_at: 0,
            last_update_at: 0,
            next_text_seq: 1,
            welcomes: BTreeMap::new(),
            rejoin_nonces: BTreeMap::new(),
            rejoin_requested_at: None,
            removed: false,
            equivocations: vec![],
            own_proposals: vec![],
            leaf_updates: BTreeSet::new(),
            update_due: false,
            received_from: BTreeMap::new(),
            resend_after: BTreeMap::new(),
        }
    }
    fn has_pending(&self) -> bool {
        !self.pending_imports.is_empty()
            || !self.own_proposals.is_empty()
            || !self.pending_adds.is_empty()
            || !self.pending_removes.is_empty()
            || !self.readds.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct EngineState {
    member: Option<MemberId>,
    universes: BTreeMap<Id32, UniverseState>,
    /// Latest last-resort KeyPackage heard from each member (TLS bytes).
    known_kps: BTreeMap<MemberId, ByteBuf>,
    /// Our own current last-resort KeyPackage.
    my_kp: Option<ByteBuf>,
    /// Hash refs of KeyPackages we made (to recognise our Welcomes).
    my_kp_refs: BTreeSet<ByteBuf>,
    /// Those of them that are last-resort (reused across Welcomes).
    #[serde(default)]
    last_resort_refs: BTreeSet<ByteBuf>,
    /// Non-last-resort KeyPackages others gave us, once used (never twice).
    used_kp_refs: BTreeSet<ByteBuf>,
    kp_requested: BTreeMap<MemberId, u64>,
    outbox_next: u64,
    delivered_next: u64,
    rejected_inputs: u64,
}

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
    groups: HashMap<Id32, MlsGroup>,
    now: u64,
    outputs: Vec<Output>,
    acked: Vec<u64>,
    crash_next_commit: bool,
    fail_next_commit: bool,
    /// CBOR of `state` as of the last committed step.
    committed_state: Vec<u8>,
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
}

const CS: Ciphersuite = crate::DEFAULT_CIPHERSUITE;
const STATE_KEY: &[u8] = b"engine";
const AUTH_HISTORY: usize = 16;
/// Candidates kept per stream position besides the buffered one, and in all.
const MAX_ALTERNATES_PER_POSITION: usize = 4;
const MAX_ALTERNATES: usize = 4096;

fn gid(id: &Id32) -> GroupId {
    GroupId::from_slice(id.as_bytes())
}

/// Leaf capabilities: last-resort KeyPackages need their extension listed.
fn capabilities() -> Capabilities {
    Capabilities::new(
        None,
        Some(&[CS]),
        Some(&[ExtensionType::LastResort]),
        None,
        None,
    )
}

fn create_config() -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .capabilities(capabilities())
        .ciphersuite(CS)
        .use_ratchet_tree_extension(true)
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(0)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(64, 10_000))
        .build()
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(0)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(64, 10_000))
        .build()
}

/// The in-memory copy of a group, loaded from the store on first use. A free
/// function so callers can borrow the provider alongside.
fn cached<'a>(
    groups: &'a mut HashMap<Id32, MlsGroup>,
    storage: &crate::store::MlsStorage,
    id: &Id32,
) -> Result<&'a mut MlsGroup, MmlsError> {
    match groups.entry(*id) {
        std::collections::hash_map::Entry::Occupied(o) => Ok(o.into_mut()),
        std::collections::hash_map::Entry::Vacant(v) => {
            let g = MlsGroup::load(storage, &gid(id))
                .map_err(MmlsError::mls)?
                .ok_or(MmlsError::UnknownGroup(*id))?;
            Ok(v.insert(g))
        }
    }
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
    // ------------------------------------------------------------ setup --

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
        let state: EngineState = match store.get(Table::Meta, STATE_KEY)? {
            Some(b) => {
                from_cbor(&b).map_err(|e| MmlsError::Store(crate::store::StoreError::Corrupt(e)))?
            }
            None => EngineState::default(),
        };
        if let Some(m) = &state.member {
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
        let mut p = Participant {
            identity,
            me: me.clone(),
            provider: MmlsProvider::new(store),
            config,
            state,
            buffers,
            buffer_undo: vec![],
            groups: HashMap::new(),
            now,
            outputs: vec![],
            acked: vec![],
            crash_next_commit: false,
            fail_next_commit: false,
            committed_state: vec![],
            rejected_pending: 0,
            psk_pruned_at: HashMap::new(),
            alternates: BTreeMap::new(),
        };
        p.committed_state = to_cbor(&p.state);
        p.step(|p| {
            p.state.member = Some(me.clone());
            if p.state.my_kp.is_none() {
                p.refresh_key_package()?;
            }
            Ok(())
        })?;
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

    /// Our KeyPackage, to publish on the lobby (at start, on request, and
    /// whenever a peer connects).
    pub fn announcement(&self) -> Output {
        let mut e = Envelope::new(
            Kind::KeyPackage,
            self.state
                .my_kp
                .clone()
                .map(|b| b.into_vec())
                .unwrap_or_default(),
        );
        e.sender = Some(self.me.to_string());
        Output::Publish(Publish {
            topic: Topic::Lobby,
            bytes: e.encode(),
            outbox_id: None,
        })
    }

    fn refresh_key_package(&mut self) -> Result<(), MmlsError> {
        let bundle = KeyPackage::builder()
            .leaf_node_capabilities(capabilities())
            .mark_as_last_resort()
            .build(
                CS,
                &self.provider,
                &self.identity,
                self.identity.credential_with_key(),
            )
            .map_err(MmlsError::mls)?;
        let kp = bundle.key_package();
        let r = kp
            .hash_ref(self.provider.crypto())
            .map_err(MmlsError::mls)?;
        self.state
            .my_kp_refs
            .insert(ByteBuf::from(r.as_slice().to_vec()));
        self.state
            .last_resort_refs
            .insert(ByteBuf::from(r.as_slice().to_vec()));
        self.state.my_kp = Some(ByteBuf::from(tls(kp)?));
        Ok(())
    }

    /// A fresh single-use KeyPackage (for rejoin requests).
    fn fresh_key_package(&mut self) -> Result<Vec<u8>, MmlsError> {
        let bundle = KeyPackage::builder()
            .leaf_node_capabilities(capabilities())
            .build(
                CS,
                &self.provider,
                &self.identity,
                self.identity.credential_with_key(),
            )
            .map_err(MmlsError::mls)?;
        let kp = bundle.key_package();
        let r = kp
            .hash_ref(self.provider.crypto())
            .map_err(MmlsError::mls)?;
        self.state
            .my_kp_refs
            .insert(ByteBuf::from(r.as_slice().to_vec()));
        tls(kp)
    }

    // ------------------------------------------------------------- steps --

    /// Runs `f` as one atomic step: all or nothing, on disk and in memory.
    fn step<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, MmlsError>,
    ) -> Result<T, MmlsError> {
        let mark = self.outputs.len();
        self.buffer_undo.clear();
        let r = f(self).and_then(|v| {
            for id in std::mem::take(&mut self.acked) {
                self.provider
                    .store()
                    .delete(Table::Outbox, &id.to_be_bytes());
            }
            let pending = std::mem::take(&mut self.rejected_pending);
            self.state.rejected_inputs += pending;
            let bytes = to_cbor(&self.state);
            let changed = bytes != self.committed_state;
            if changed {
                self.provider.store().put(Table::Meta, STATE_KEY, &bytes);
            }
            if std::mem::take(&mut self.crash_next_commit) {
                // Fault injection: the process "dies" before the commit.
                self.provider.store().crash_discard();
                self.rejected_pending += pending;
                return Err(MmlsError::Internal("injected crash".into()));
            }
            let commit = if std::mem::take(&mut self.fail_next_commit) {
                Err(MmlsError::Internal("injected commit failure".into()))
            } else {
                self.provider.store().commit().map_err(MmlsError::from)
            };
            if let Err(e) = commit {
                self.rejected_pending += pending;
                return Err(e);
            }
            // Only now is this the state to roll back to.
            if changed {
                self.committed_state = bytes;
            }
            Ok(v)
        });
        if r.is_err() {
            // Back to the state of the last committed step (no per-step
            // clone: failures are rare, successes are the hot path).
            if let Ok(st) = from_cbor(&self.committed_state) {
                self.state = st;
            }
            self.provider.store().rollback();
            for (g, seq, old) in std::mem::take(&mut self.buffer_undo).into_iter().rev() {
                let b = self.buffers.entry(g).or_default();
                match old {
                    Some(v) => {
                        b.insert(seq, v);
                    }
                    None => {
                        b.remove(&seq);
                    }
                }
            }
            // openmls may have changed its in-memory group before failing.
            self.groups.clear();
            self.outputs.truncate(mark);
        }
        r
    }

    fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    /// The driver published these own envelopes; they leave the outbox with
    /// the next step.
    pub fn ack_published(&mut self, ids: &[u64]) {
        self.acked.extend_from_slice(ids);
    }

    fn buffer_put(&mut self, g: Id32, seq: u64, v: Vec<u8>) {
        let old = self.buffers.entry(g).or_default().insert(seq, v.clone());
        self.buffer_undo.push((g, seq, old));
        self.provider
            .store()
            .put(Table::Buffer, &log_key(&g, seq), &v);
    }

    fn buffer_remove(&mut self, g: Id32, seq: u64) {
        if let Some(old) = self.buffers.get_mut(&g).and_then(|b| b.remove(&seq)) {
            self.buffer_undo.push((g, seq, Some(old)));
            self.provider
                .store()
                .delete(Table::Buffer, &log_key(&g, seq));
        }
    }

    pub(crate) fn group(&mut self, id: &Id32) -> Result<&mut MlsGroup, MmlsError> {
        cached(&mut self.groups, self.provider.storage(), id)
    }

    fn uni(&self, u: &Id32) -> Result<&UniverseState, MmlsError> {
        self.state
            .universes
            .get(u)
            .ok_or(MmlsError::UnknownUniverse(*u))
    }
    fn uni_mut(&mut self, u: &Id32) -> Result<&mut UniverseState, MmlsError> {
        self.state
            .universes
            .get_mut(u)
            .ok_or(MmlsError::UnknownUniverse(*u))
    }

    fn emit(&mut self, e: Event) {
        self.outputs.push(Output::Event(e));
    }

    fn publish_lobby(&mut self, e: Envelope) {
        self.outputs.push(Output::Publish(Publish {
            topic: Topic::Lobby,
            bytes: e.encode(),
            outbox_id: None,
        }));
    }

    /// Logs an own stream entry (so peers can fetch it) and queues it in the
    /// durable outbox before it is handed out.
    fn emit_stream(&mut self, topic: Topic, env: &Envelope) {
        let bytes = env.encode();
        if let Some(g) = env.group {
            self.provider
                .store()
                .put(Table::Log, &log_key(&g, env.seq), &bytes);
        }
        let id = self.state.outbox_next;
        self.state.outbox_next += 1;
        self.provider.store().put(
            Table::Outbox,
            &id.to_be_bytes(),
            &to_cbor(&(topic, ByteBuf::from(bytes.clone()))),
        );
        self.outputs.push(Output::Publish(Publish {
            topic,
            bytes,
            outbox_id: Some(id),
        }));
    }

    // --------------------------------------------------- user commands --

    /// INIT (draft 6.1): creates our send group with every member, whose id
    /// becomes the universe id, and sends the Welcome plus the universe
    /// definition.
    pub fn create_universe(
        &mut self,
        name: &str,
        members: &[MemberId],
        admins: &[MemberId],
        profile: Profile,
    ) -> Result<(Id32, Vec<Output>), MmlsError> {
        let others: BTreeSet<MemberId> =
            members.iter().filter(|m| **m != self.me).cloned().collect();
        if others.is_empty() {
            return Err(MmlsError::NoMembers);
        }
        let missing: Vec<MemberId> = others
            .iter()
            .filter(|m| !self.state.known_kps.contains_key(*m))
            .cloned()
            .collect();
        if !missing.is_empty() {
            let _ = self.step(|p| {
                for m in &missing {
                    p.request_kp(m);
                }
                Ok(())
            });
            let outs = self.take_outputs();
            // Report the first missing one; the requests go out regardless.
            let _ = outs;
            return Err(MmlsError::MissingKeyPackage(missing[0].to_string()));
        }
        let mut id = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        let uid = Id32(id);
        let mut admin_set: Vec<MemberId> = admins.to_vec();
        if !admin_set.contains(&self.me) {
            admin_set.insert(0, self.me.clone());
        }
        let def = UniverseDef {
            id: uid,
            name: name.to_string(),
            creator: self.me.clone(),
            admins: admin_set,
            profile,
            export_len: 32,
            ciphersuites: vec![u16::from(CS)],
        };
        self.step(|p| {
            let mut u = UniverseState::new(uid);
            u.def = Some(def.clone());
            u.roster = others.iter().cloned().collect();
            u.roster.insert(p.me.clone());
            p.state.universes.insert(uid, u);
            p.create_own_group(uid, uid)?;
            let ev = Event::UniverseJoined {
                universe: uid,
                name: def.name.clone(),
            };
            p.emit(ev);
            Ok(())
        })?;
        Ok((uid, self.take_outputs()))
    }

    /// PROTECT: commits pending imports first, then sends `body` to the
    /// universe as an application message in our send group.
    pub fn send(&mut self, universe: &Id32, body: &[u8]) -> Result<(u64, Vec<Output>), MmlsError> {
        if body.len() > crate::envelope::MAX_ENVELOPE_BYTES / 2 {
            return Err(MmlsError::TooLarge(
                body.len(),
                crate::envelope::MAX_ENVELOPE_BYTES / 2,
            ));
        }
        let u = self.uni(universe)?;
        if u.removed {
            return Err(MmlsError::NotInUniverse(*universe));
        }
        if u.own_group.is_none() {
            return Err(MmlsError::UniverseNotReady(*universe));
        }
        if u.has_pending() {
            self.step(|p| p.commit_own(*universe, false).map(|_| ()))?;
        }
        let seq = self.step(|p| {
            let u = p.uni_mut(universe)?;
            let seq = u.next_text_seq;
            u.next_text_seq += 1;
            let payload = Payload::Text {
                seq,
                body: ByteBuf::from(body.to_vec()),
            };
            p.send_payload(*universe, &payload)?;
            p.remember_sent(universe, seq, body);
            Ok(seq)
        })?;
        Ok((seq, self.take_outputs()))
    }

    /// UPDATE: an own MMLS update (commit with a fresh path), carrying any
    /// pending imports.
    pub fn update(&mut self, universe: &Id32) -> Result<Vec<Output>, MmlsError> {
        let u = self.uni(universe)?;
        if u.own_group.is_none() {
            return Err(MmlsError::UniverseNotReady(*universe));
        }
        self.step(|p| p.mmls_update(*universe))?;
        Ok(self.take_outputs())
    }

    /// An MMLS update: a commit with a fresh path in our group, and a fresh
    /// leaf (Update proposal) in every other send group.
    fn mmls_update(&mut self, uid: Id32) -> Result<(), MmlsError> {
        self.commit_own(uid, true)?;
        if !self.config.rotate_leaves {
            self.uni_mut(&uid)?.update_due = false;
            return Ok(());
        }
        let others: Vec<Id32> = self
            .uni(&uid)?
            .groups
            .iter()
            .filter(|(_, s)| s.owner != self.me && !s.stale)
            .map(|(g, _)| *g)
            .collect();
        for g in others {
            self.uni_mut(&uid)?.leaf_updates.insert(g);
            self.propose_leaf_update(uid, g)?;
        }
        self.uni_mut(&uid)?.update_due = false;
        Ok(())
    }

    /// Sends an Update proposal with a fresh leaf in `g` (someone else's
    /// send group); its owner commits it with its next commit.
    fn propose_leaf_update(&mut self, uid: Id32, g: Id32) -> Result<(), MmlsError> {
        let identity = self.identity.clone();
        let provider = &self.provider;
        let group = cached(&mut self.groups, provider.storage(), &g)?;
        let (msg, _) = group
            .propose_self_update(provider, &identity, LeafNodeParameters::default())
            .map_err(MmlsError::mls)?;
        let mut e = Envelope::new(Kind::Proposal, tls(&msg)?);
        e.universe = Some(uid);
        e.group = Some(g);
        e.epoch = group.epoch().as_u64();
        e.sender = Some(self.me.to_string());
        self.outputs.push(Output::Publish(Publish {
            topic: Topic::Universe(uid),
            bytes: e.encode(),
            outbox_id: None,
        }));
        Ok(())
    }

    /// Admin: add a member to the universe. Every owner mirrors it.
    pub fn add_member(
        &mut self,
        universe: &Id32,
        member: &MemberId,
    ) -> Result<Vec<Output>, MmlsError> {
        let u = self.uni(universe)?;
        let def = u
            .def
            .as_ref()
            .ok_or(MmlsError::UniverseNotReady(*universe))?;
        if !def.is_admin(&self.me) {
            return Err(MmlsError::NotAdmin);
        }
        if u.roster.contains(member) {
            return Err(MmlsError::AlreadyMember(member.to_string()));
        }
        if !self.state.known_kps.contains_key(member) {
            let m = member.clone();
            self.step(|p| {
                p.request_kp(&m);
                Ok(())
            })?;
            return Err(MmlsError::MissingKeyPackage(member.to_string()));
        }
        self.step(|p| {
            let m = member.clone();
            let u = p.uni_mut(universe)?;
            u.roster.insert(m.clone());
            u.pending_adds.insert(m.clone());
            p.commit_own(*universe, false)?;
            p.emit(Event::MemberAdded {
                universe: *universe,
                member: m,
            });
            Ok(())
        })?;
        Ok(self.take_outputs())
    }

    /// Remove a member from the universe (admins; every owner mirrors it).
    pub fn remove_member(
        &mut self,
        universe: &Id32,
        member: &MemberId,
    ) -> Result<Vec<Output>, MmlsError> {
        let u = self.uni(universe)?;
        let def = u
            .def
            .as_ref()
            .ok_or(MmlsError::UniverseNotReady(*universe))?;
        if !def.is_admin(&self.me) {
            return Err(MmlsError::NotAdmin);
        }
        if !u.roster.contains(member) || *member == self.me {
            return Err(MmlsError::NotAMember(member.to_string()));
        }
        self.step(|p| {
            let m = member.clone();
            let u = p.uni_mut(universe)?;
            u.roster.remove(&m);
            u.pending_removes.insert(m.clone());
            u.pending_adds.remove(&m);
            p.commit_own(*universe, false)?;
            p.emit(Event::MemberRemoved {
                universe: *universe,
                member: m,
            });
            Ok(())
        })?;
        Ok(self.take_outputs())
    }

    /// REJOIN: asks the owners of `groups` (all stale groups if empty) to
    /// re-add us.
    pub fn request_rejoin(&mut self, universe: &Id32) -> Result<Vec<Output>, MmlsError> {
        self.uni(universe)?;
        self.step(|p| p.send_rejoin(*universe, false))?;
        Ok(self.take_outputs())
    }

    /// A node that lost its state (but kept its identity key) asks every
    /// owner of `universe` to re-add it; it then recreates its send group.
    pub fn recover_universe(&mut self, universe: &Id32) -> Result<Vec<Output>, MmlsError> {
        self.step(|p| {
            p.state
                .universes
                .entry(*universe)
                .or_insert_with(|| UniverseState::new(*universe));
            p.send_rejoin(*universe, true)
        })?;
        Ok(self.take_outputs())
    }

    // ------------------------------------------------------------ time --

    /// Advances time: commits imports whose delay passed, periodic updates,
    /// retries fetches and KeyPackage requests, starts rejoins, prunes logs.
    pub fn tick(&mut self, now: u64) -> Vec<Output> {
        self.now = self.now.max(now);
        let ids: Vec<Id32> = self.state.universes.keys().cloned().collect();
        for u in ids {
            let r = self.step(|p| p.tick_universe(u));
            if let Err(e) = r {
                tracing::debug!(universe = %u.short(), error = %e, "tick step failed");
            }
        }
        if !self.acked.is_empty() {
            let _ = self.step(|_| Ok(()));
        }
        self.take_outputs()
    }

    fn tick_universe(&mut self, uid: Id32) -> Result<(), MmlsError> {
        let now = self.now;
        let cfg = self.config.clone();
        let u = self.uni(&uid)?;
        if u.removed {
            return Ok(());
        }
        // Own send group not created yet (joined, but KeyPackages missing).
        if u.own_group.is_none() && u.def.is_some() && u.roster.contains(&self.me) {
            self.try_create_own_group(uid)?;
        }
        let u = self.uni(&uid)?;
        if u.own_group.is_some() {
            let due_update = cfg
                .update_interval_ms
                .is_some_and(|iv| now >= u.last_update_at.saturating_add(iv));
            let due_commit = u.has_pending()
                && u.pending_since
                    .is_some_and(|t| now >= t.saturating_add(cfg.commit_delay_ms));
            if due_update || u.update_due {
                self.mmls_update(uid)?;
            } else if due_commit {
                self.commit_own(uid, false)?;
            }
        }
        // Missing history: fetch again, and rejoin if it does not come.
        let u = self.uni(&uid)?;
        let mut fetch = vec![];
        let mut rejoin = false;
        for (g, gs) in &u.groups {
            if gs.stale {
                if gs
                    .stale_since
                    .is_some_and(|t| now >= t.saturating_add(cfg.rejoin_after_ms))
                    && u.rejoin_requested_at
                        .is_none_or(|t| now >= t.saturating_add(cfg.rejoin_after_ms))
                {
                    rejoin = true;
                }
                continue;
            }
            if let Some(since) = gs.blocked_since {
                if now >= gs.last_fetch_at.saturating_add(cfg.fetch_retry_ms) {
                    fetch.push(*g);
                }
                if now >= since.saturating_add(cfg.rejoin_after_ms) {
                    rejoin = true;
                }
            }
        }
        for g in fetch {
            self.fetch_blocked(uid, g);
        }
        if rejoin {
            let u = self.uni_mut(&uid)?;
            let blocked: Vec<Id32> = u
                .groups
                .iter()
                .filter(|(_, g)| g.blocked_since.is_some())
                .map(|(g, _)| *g)
                .collect();
            for g in blocked {
                if let Some(gs) = u.groups.get_mut(&g) {
                    if now
                        >= gs
                            .blocked_since
                            .unwrap_or(now)
                            .saturating_add(cfg.rejoin_after_ms)
                    {
                        gs.stale = true;
                        gs.stale_since.get_or_insert(now);
                    }
                }
            }
            self.send_rejoin(uid, false)?;
        }
        // Members we owe an Add but have no KeyPackage for.
        let u = self.uni(&uid)?;
        let wanted: Vec<MemberId> = u
            .pending_adds
            .iter()
            .filter(|m| !self.state.known_kps.contains_key(*m))
            .cloned()
            .collect();
        for m in wanted {
            self.request_kp(&m);
        }
        // Silent members.
        if let Some(limit) = cfg.silent_removal_ms {
            let u = self.uni(&uid)?;
            if u.def.as_ref().is_some_and(|d| d.is_admin(&self.me)) {
                let silent: Vec<MemberId> = u
                    .groups
                    .values()
                    .filter(|g| g.owner != self.me && now >= g.last_commit_at.saturating_add(limit))
                    .map(|g| g.owner.clone())
                    .filter(|m| u.roster.contains(m))
                    .collect();
                if !silent.is_empty() {
                    let u = self.uni_mut(&uid)?;
                    for m in &silent {
                        u.roster.remove(m);
                        u.pending_removes.insert(m.clone());
                    }
                    u.pending_since.get_or_insert(now);
                }
            }
        }
        self.prune_log(uid)?;
        self.prune_sent(uid)?;
        self.prune_psks(uid)?;
        Ok(())
    }

    fn prune_log(&mut self, uid: Id32) -> Result<(), MmlsError> {
        let keep = self.config.log_retention;
        let u = self.uni(&uid)?;
        let heads: Vec<(Id32, u64)> = u.groups.iter().map(|(g, s)| (*g, s.next_seq)).collect();
        for (g, next) in heads {
            if next <= keep {
                continue;
            }
            let cut = next - keep;
            let old = self.provider.store().range(
                Table::Log,
                &log_key(&g, 0),
                Some(&log_key(&g, cut)),
                256,
            )?;
            // Bounded work per tick: what is left goes at the next one.
            let done_to = if old.len() == 256 {
                old.last()
                    .and_then(|(k, _)| k.get(32..40))
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0)
            } else {
                cut
            };
            for (k, _) in old {
                self.provider.store().delete(Table::Log, &k);
            }
            if let Some(gs) = self.uni_mut(&uid)?.groups.get_mut(&g) {
                gs.pruned_below = gs.pruned_below.max(done_to);
            }
        }
        Ok(())
    }

    // ------------------------------------------------------ own group --

    fn try_create_own_group(&mut self, uid: Id32) -> Result<(), MmlsError> {
        let u = self.uni(&uid)?;
        let missing: Vec<MemberId> = u
            .roster
            .iter()
            .filter(|m| **m != self.me && !self.state.known_kps.contains_key(*m))
            .cloned()
            .collect();
        if !missing.is_empty() {
            for m in missing {
                self.request_kp(&m);
            }
            return Ok(());
        }
        // draft-xue-multi-mls derivedGroupId, from the first group we joined.
        let anchor = *u
            .groups
            .iter()
            .find(|(_, g)| !g.stale)
            .map(|(id, _)| id)
            .ok_or(MmlsError::UniverseNotReady(uid))?;
        let pk = self.identity.public_key();
        self.group(&anchor)?;
        let group = self
            .groups
            .get(&anchor)
            .ok_or(MmlsError::UnknownGroup(anchor))?;
        let gid_new = Profile::derived_group_id(self.provider.crypto(), group, &pk)?;
        self.create_own_group(uid, gid_new)
    }

    fn key_package_of(&self, m: &MemberId) -> Result<KeyPackage, MmlsError> {
        let b = self
            .state
            .known_kps
            .get(m)
            .ok_or_else(|| MmlsError::MissingKeyPackage(m.to_string()))?;
        self.validate_kp(b, Some(m))
    }

    fn validate_kp(
        &self,
        bytes: &[u8],
        expect: Option<&MemberId>,
    ) -> Result<KeyPackage, MmlsError> {
        let kpi = KeyPackageIn::tls_deserialize_exact(bytes)
            .map_err(|e| MmlsError::MalformedMls(format!("{e:?}")))?;
        let kp = kpi
            .validate(self.provider.crypto(), ProtocolVersion::Mls10)
            .map_err(MmlsError::mls)?;
        if kp.ciphersuite() != CS {
            return Err(MmlsError::CiphersuiteRefused(u16::from(kp.ciphersuite())));
        }
        let who = verify_binding(
            kp.leaf_node().credential(),
            kp.leaf_node().signature_key().as_slice(),
        )?;
        if let Some(e) = expect {
            if &who != e {
                return Err(MmlsError::BadCredential);
            }
        }
        Ok(kp)
    }

    /// Creates our send group `gid_new` in universe `uid` with every other
    /// roster member: commit (seq 0), Welcome (seq 1), Hello (seq 2).
    fn create_own_group(&mut self, uid: Id32, gid_new: Id32) -> Result<(), MmlsError> {
        let u = self.uni(&uid)?;
        let others: Vec<MemberId> = u
            .roster
            .iter()
            .filter(|m| **m != self.me)
            .cloned()
            .collect();
        let kps = others
            .iter()
            .map(|m| self.key_package_of(m))
            .collect::<Result<Vec<_>, _>>()?;
        let mut group = MlsGroup::new_with_group_id(
            &self.provider,
            &self.identity,
            &create_config(),
            gid(&gid_new),
            self.identity.credential_with_key(),
        )
        .map_err(MmlsError::mls)?;
        let aad = Aad {
            seq: 0,
            deps: vec![],
            frontier: self.frontier(&uid),
        };
        group.set_aad(to_cbor(&aad));
        let bundle = group
            .commit_builder()
            .propose_adds(kps)
            .load_psks(self.provider.storage())
            .map_err(MmlsError::mls)?
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                &self.identity,
                |_| true,
            )
            .map_err(MmlsError::mls)?
            .stage_commit(&self.provider)
            .map_err(MmlsError::mls)?;
        let (commit, welcome, _) = bundle.into_contents();
        group
            .merge_pending_commit(&self.provider)
            .map_err(MmlsError::mls)?;
        let epoch = group.epoch().as_u64();
        let auth = auth8(group.epoch_authenticator().as_slice());
        self.groups.insert(gid_new, group);
        let gs = GroupState {
            owner: self.me.clone(),
            next_seq: 0,
            epoch,
            auth: BTreeMap::from([(epoch, auth)]),
            psk_min: epoch,
            blocked_since: None,
            last_fetch_at: 0,
            stale: false,
            stale_since: None,
            last_commit_at: self.now,
            pruned_below: 0,
            psk_marks: vec![],
            named_epoch: None,
        };
        let now = self.now;
        let me = self.me.clone();
        let u = self.uni_mut(&uid)?;
        // A previous own group (before a state loss) is abandoned.
        if let Some(old) = u.own_group.replace(gid_new) {
            u.groups.remove(&old);
        }
        u.groups.insert(gid_new, gs);
        u.owner_group.insert(me, gid_new);
        u.last_commit_at = now;
        u.last_update_at = now;
        self.export_psk(uid, gid_new)?;
        let commit_env = self.own_envelope(uid, gid_new, Kind::Commit, 0, tls(&commit)?, vec![])?;
        self.emit_stream(Topic::Universe(uid), &commit_env);
        if let Some(w) = welcome {
            self.emit_welcome(
                uid,
                gid_new,
                epoch,
                MlsMessageOut::from_welcome(w, ProtocolVersion::Mls10),
                others.clone(),
            )?;
        }
        Ok(())
    }

    /// Appends the next entry of our own stream.
    fn own_envelope(
        &mut self,
        uid: Id32,
        g: Id32,
        kind: Kind,
        epoch: u64,
        body: Vec<u8>,
        deps: Vec<(Id32, u64)>,
    ) -> Result<Envelope, MmlsError> {
        let gs = self
            .uni_mut(&uid)?
            .groups
            .get_mut(&g)
            .ok_or(MmlsError::UnknownGroup(g))?;
        let seq = gs.next_seq;
        gs.next_seq += 1;
        let mut e = Envelope::new(kind, body);
        e.universe = Some(uid);
        e.group = Some(g);
        e.epoch = epoch;
        e.seq = seq;
        e.deps = deps;
        Ok(e)
    }

    fn emit_welcome(
        &mut self,
        uid: Id32,
        g: Id32,
        epoch: u64,
        welcome: MlsMessageOut,
        to: Vec<MemberId>,
    ) -> Result<(), MmlsError> {
        let mut env = self.own_envelope(uid, g, Kind::Welcome, epoch, tls(&welcome)?, vec![])?;
        env.to = None;
        env.sig = Some(ByteBuf::from(
            self.identity.sign_detached(&env.welcome_signed_bytes()),
        ));
        let seq = env.seq;
        // Welcomes go to the lobby: joiners are not on the universe topic yet.
        self.emit_stream(Topic::Lobby, &env);
        let u = self.uni_mut(&uid)?;
        for m in to {
            let v = u.welcomes.entry(m).or_default();
            v.push((g, seq));
            if v.len() > 4 {
                v.remove(0);
            }
        }
        // Every Welcome is followed by a Hello naming the universe.
        let u = self.uni(&uid)?;
        let def = u.def.clone().ok_or(MmlsError::UniverseNotReady(uid))?;
        let roster: Vec<MemberId> = u.roster.iter().cloned().collect();
        self.send_payload(uid, &Payload::Hello { def, roster })
    }

    fn send_payload(&mut self, uid: Id32, payload: &Payload) -> Result<(), MmlsError> {
        let g = self
            .uni(&uid)?
            .own_group
            .ok_or(MmlsError::UniverseNotReady(uid))?;
        let seq = self
            .uni(&uid)?
            .groups
            .get(&g)
            .map(|s| s.next_seq)
            .ok_or(MmlsError::UnknownGroup(g))?;
        let aad = Aad {
            seq,
            deps: vec![],
            frontier: vec![],
        };
        let identity = self.identity.clone();
        let provider = &self.provider;
        let group = cached(&mut self.groups, provider.storage(), &g)?;
        group.set_aad(to_cbor(&aad));
        let msg = group
            .create_message(provider, &identity, &to_cbor(payload))
            .map_err(MmlsError::mls)?;
        let epoch = group.epoch().as_u64();
        let env = self.own_envelope(uid, g, Kind::Application, epoch, tls(&msg)?, vec![])?;
        self.emit_stream(Topic::Universe(uid), &env);
        Ok(())
    }

    /// The frontier for our next commit's AAD: the groups whose epoch moved
    /// since our previous commit named them (all of them the first time).
    /// Readers process our commits in order, so over the stream they see
    /// every epoch we named, as with a full frontier in every commit; but a
    /// full one is ~55 bytes per group in every commit (3.5 KB of a 4.4 KB
    /// commit at 64 members, flooded to everyone and kept in every log).
    fn frontier(&mut self, uid: &Id32) -> Vec<FrontierEntry> {
        let Some(u) = self.state.universes.get_mut(uid) else {
            return vec![];
        };
        let mut out = vec![];
        for (g, s) in u.groups.iter_mut() {
            if s.named_epoch == Some(s.epoch) {
                continue;
            }
            s.named_epoch = Some(s.epoch);
            out.push(FrontierEntry {
                group: *g,
                epoch: s.epoch,
                auth: s.auth.get(&s.epoch).copied().unwrap_or_default(),
            });
        }
        out
    }

    /// COMMIT: one commit in our send group with a PSK proposal for every
    /// group that made an MMLS update since our last commit, plus pending
    /// adds, removes and re-adds; with a path if `force_path`.
    fn commit_own(&mut self, uid: Id32, force_path: bool) -> Result<bool, MmlsError> {
        let own = self
            .uni(&uid)?
            .own_group
            .ok_or(MmlsError::UniverseNotReady(uid))?;
        let now = self.now;
        let u = self.uni(&uid)?.clone();
        let own_members: BTreeSet<MemberId> = self
            .group_members(&own)?
            .into_iter()
            .map(|(_, m)| m)
            .collect();

        // Adds and removes.
        let mut adds: Vec<KeyPackage> = vec![];
        let mut added: Vec<MemberId> = vec![];
        let mut removals: Vec<LeafNodeIndex> = vec![];
        let leaf_of = |members: &[(LeafNodeIndex, MemberId)], m: &MemberId| {
            members.iter().find(|(_, x)| x == m).map(|(i, _)| *i)
        };
        let members = self.group_members(&own)?;
        for m in &u.pending_removes {
            if let Some(i) = leaf_of(&members, m) {
                removals.push(i);
            }
        }
        let mut readded = vec![];
        for (m, kp) in &u.readds {
            match self.validate_kp(kp, Some(m)) {
                Ok(kp) => {
                    if let Some(i) = leaf_of(&members, m) {
                        if !removals.contains(&i) {
                            removals.push(i);
                        }
                    }
                    adds.push(kp);
                    added.push(m.clone());
                    readded.push(m.clone());
                }
                Err(e) => {
                    tracing::debug!(member = %m.short(), error = %e, "rejoin KeyPackage unusable")
                }
            }
        }
        let mut waiting_kp = vec![];
        for m in &u.pending_adds {
            if own_members.contains(m) || added.contains(m) {
                continue;
            }
            match self.key_package_of(m) {
                Ok(kp) => {
                    adds.push(kp);
                    added.push(m.clone());
                }
                Err(_) => waiting_kp.push(m.clone()),
            }
        }
        // PSK imports: only where every reader of our group can derive the
        // PSK, i.e. is a member of that group now (we import its current
        // epoch, which every current member has reached or will reach), and
        // never together with Welcomes (joiners could be stale there) or
        // removals (the removed member must still process this commit to
        // learn it is out, and may never reach the imported epoch). Deferred
        // imports go with the next commit.
        let mut imports: Vec<(Id32, u64)> = vec![];
        let mut deferred = BTreeSet::new();
        if adds.is_empty() && removals.is_empty() {
            // Compared by signature key: bound 1:1 to the member id.
            let removed_keys: BTreeSet<Vec<u8>> = {
                let group = self.group(&own)?;
                group
                    .members()
                    .filter(|m| {
                        members
                            .iter()
                            .any(|(i, id)| *i == m.index && u.pending_removes.contains(id))
                    })
                    .map(|m| m.signature_key)
                    .collect()
            };
            let readers: BTreeSet<Vec<u8>> = self
                .group(&own)?
                .members()
                .map(|m| m.signature_key)
                .filter(|k| !removed_keys.contains(k))
                .collect();
            for g in &u.pending_imports {
                let Some(gs) = u.groups.get(g) else { continue };
                if *g == own || gs.stale {
                    continue;
                }
                let e = gs.epoch;
                let theirs: BTreeSet<Vec<u8>> =
                    self.group(g)?.members().map(|m| m.signature_key).collect();
                let ok = gs.psk_min <= e && readers.is_subset(&theirs);
                if ok {
                    imports.push((*g, e));
                } else {
                    deferred.insert(*g);
                }
            }
        } else {
            deferred = u.pending_imports.clone();
        }
        let proposals_in = u.own_proposals.clone();
        if !force_path
            && imports.is_empty()
            && adds.is_empty()
            && removals.is_empty()
            && proposals_in.is_empty()
        {
            let u = self.uni_mut(&uid)?;
            u.pending_imports = deferred;
            if u.pending_imports.is_empty() && u.pending_adds.iter().all(|m| waiting_kp.contains(m))
            {
                u.pending_since = None;
            }
            return Ok(false);
        }
        let mut proposals = vec![];
        for (g, e) in &imports {
            let mut nonce = vec![0u8; CS.hash_length()];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
            let psk = PreSharedKeyId::external(Profile::psk_id(g, *e), nonce);
            proposals.push(Proposal::PreSharedKey(Box::new(PreSharedKeyProposal::new(
                psk,
            ))));
        }
        // Adding a member the admin added: our readers must have processed
        // the admin's commit (their roster) first, or they would refuse ours
        // as a non-admin's add. A dependency on the admin's send group at the
        // epoch we hold makes them wait (and fetch) instead. Commits with
        // adds carry no PSK imports, so the two kinds of deps never mix.
        let mut deps = imports.clone();
        let me_admin = u.def.as_ref().is_some_and(|d| d.is_admin(&self.me));
        if !me_admin && added.iter().any(|m| !readded.contains(m)) {
            for (g, gs) in &u.groups {
                let admin = u.def.as_ref().is_some_and(|d| d.is_admin(&gs.owner));
                if admin && !gs.stale && gs.owner != self.me {
                    deps.push((*g, gs.epoch));
                }
            }
        }
        let seq = u.groups.get(&own).map(|s| s.next_seq).unwrap_or(0);
        let aad = Aad {
            seq,
            deps: deps.clone(),
            frontier: self.frontier(&uid),
        };
        let identity = self.identity.clone();
        let group = self.group(&own)?;
        group.set_aad(to_cbor(&aad));
        let provider = &self.provider;
        let group = self
            .groups
            .get_mut(&own)
            .ok_or(MmlsError::UnknownGroup(own))?;
        let bundle = group
            .commit_builder()
            .propose_removals(removals.clone())
            .propose_adds(adds)
            .add_proposals(proposals)
            .force_self_update(force_path)
            .load_psks(provider.storage())
            .map_err(MmlsError::mls)?
            // An Update from a member we remove in this commit is void.
            .build(provider.rand(), provider.crypto(), &identity, |q| {
                match q.sender() {
                    Sender::Member(i) => !removals.contains(i),
                    _ => false,
                }
            })
            .map_err(MmlsError::mls)?
            .stage_commit(provider)
            .map_err(MmlsError::mls)?;
        let path = group
            .pending_commit()
            .is_some_and(|c| c.update_path_leaf_node().is_some());
        let (commit, welcome, _) = bundle.into_contents();
        group
            .merge_pending_commit(provider)
            .map_err(MmlsError::mls)?;
        let epoch = group.epoch().as_u64();
        let prev_epoch = epoch - 1;
        let auth = auth8(group.epoch_authenticator().as_slice());
        {
            let u = self.uni_mut(&uid)?;
            let gs = u.groups.get_mut(&own).ok_or(MmlsError::UnknownGroup(own))?;
            gs.epoch = epoch;
            gs.auth.insert(epoch, auth);
            while gs.auth.len() > AUTH_HISTORY {
                gs.auth.pop_first();
            }
            gs.last_commit_at = now;
            u.pending_imports = deferred;
            u.own_proposals.clear();
            u.pending_adds.retain(|m| waiting_kp.contains(m));
            u.pending_removes.clear();
            for m in &readded {
                u.readds.remove(m);
            }
            u.pending_since = if u.has_pending() { Some(now) } else { None };
            u.last_commit_at = now;
            if path {
                u.last_update_at = now;
            }
        }
        self.export_psk(uid, own)?;
        let mut env = self.own_envelope(uid, own, Kind::Commit, prev_epoch, tls(&commit)?, deps)?;
        env.proposals = proposals_in;
        self.emit_stream(Topic::Universe(uid), &env);
        if let Some(w) = welcome {
            self.emit_welcome(
                uid,
                own,
                epoch,
                MlsMessageOut::from_welcome(w, ProtocolVersion::Mls10),
                added,
            )?;
            for m in &readded {
                self.resend_history(uid, m)?;
            }
        }
        self.emit(Event::Committed {
            universe: uid,
            epoch,
            imports: imports.len(),
            path,
        });
        Ok(true)
    }

    fn group_members(&mut self, g: &Id32) -> Result<Vec<(LeafNodeIndex, MemberId)>, MmlsError> {
        let group = self.group(g)?;
        Ok(group
            .members()
            .filter_map(|m| {
                verify_binding(&m.credential, &m.signature_key)
                    .ok()
                    .map(|id| (m.index, id))
            })
            .collect())
    }

    fn request_kp(&mut self, m: &MemberId) {
        let now = self.now;
        let last = self.state.kp_requested.get(m).copied();
        if last.is_some_and(|t| now < t.saturating_add(self.config.kp_retry_ms)) {
            return;
        }
        self.state.kp_requested.insert(m.clone(), now);
        let mut e = Envelope::new(Kind::KeyPackageRequest, vec![]);
        e.sender = Some(self.me.to_string());
        e.to = Some(m.to_string());
        self.publish_lobby(e);
    }

    fn send_rejoin(&mut self, uid: Id32, lost_state: bool) -> Result<(), MmlsError> {
        let now = self.now;
        let u = self.uni(&uid)?;
        let stale: Vec<(Id32, MemberId)> = u
            .groups
            .iter()
            .filter(|(_, g)| g.stale && g.owner != self.me)
            .map(|(id, g)| (*id, g.owner.clone()))
            .collect();
        if stale.is_empty() && !lost_state {
            return Ok(());
        }
        let mut kps = vec![];
        for (_, owner) in &stale {
            kps.push((owner.clone(), ByteBuf::from(self.fresh_key_package()?)));
        }
        let any = if lost_state {
            self.state.my_kp.clone()
        } else {
            None
        };
        let req = RejoinRequest {
            universe: uid,
            member: self.me.clone(),
            key_packages: kps,
            lost_state,
            any_key_package: any,
            nonce: now.max(1),
            received: if lost_state {
                vec![]
            } else {
                self.received_acks(&uid)
            },
        };
        let bytes = to_cbor(&req);
        let signed = SignedRejoin {
            signature: ByteBuf::from(self.identity.sign_detached(&bytes)),
            request: ByteBuf::from(bytes),
        };
        let mut e = Envelope::new(Kind::Rejoin, to_cbor(&signed));
        e.universe = Some(uid);
        e.sender = Some(self.me.to_string());
        self.publish_lobby(e);
        self.uni_mut(&uid)?.rejoin_requested_at = Some(now);
        for (g, owner) in stale {
            self.emit(Event::Stale {
                universe: uid,
                group: g,
                owner,
            });
        }
        Ok(())
    }

    fn fetch_blocked(&mut self, uid: Id32, g: Id32) {
        let now = self.now;
        let Some(u) = self.state.universes.get_mut(&uid) else {
            return;
        };
        let mut reqs = vec![];
        if let Some(gs) = u.groups.get_mut(&g) {
            gs.last_fetch_at = now;
            reqs.push(FetchRequest::Range {
                universe: uid,
                group: g,
                from: gs.next_seq,
            });
        }
        // And the groups its head waits for.
        if let Some(head) = self
            .buffers
            .get(&g)
            .and_then(|b| b.first_key_value())
            .map(|(_, v)| v.clone())
        {
            if let Ok(env) = Envelope::decode(&head) {
                for (dg, de) in &env.deps {
                    match u.groups.get(dg) {
                        Some(ds) if ds.epoch < *de => reqs.push(FetchRequest::Range {
                            universe: uid,
                            group: *dg,
                            from: ds.next_seq,
                        }),
                        Some(_) => {}
                        None => reqs.push(FetchRequest::Welcomes {
                            universe: uid,
                            member: self.me.clone(),
                        }),
                    }
                }
            }
        }
        for r in reqs {
            if !self
                .outputs
                .iter()
                .any(|o| matches!(o, Output::Fetch(x) if *x == r))
            {
                self.outputs.push(Output::Fetch(r));
            }
        }
    }

    // ---------------------------------------------------------- incoming --

    /// Handles one envelope from the network. `Err` means the envelope itself
    /// was rejected (typed) and nothing changed; entries it unblocks are
    /// processed too, and their own failures come back as `Event::Rejected`.
    pub fn handle_incoming(&mut self, bytes: &[u8]) -> Result<Vec<Output>, MmlsError> {
        let env = Envelope::decode(bytes).inspect_err(|_| self.rejected_pending += 1)?;
        let r = match env.kind {
            Kind::KeyPackage => self.step(|p| p.on_key_package(&env)),
            Kind::KeyPackageRequest => self.step(|p| p.on_kp_request(&env)),
            Kind::Rejoin => self.step(|p| p.on_rejoin(&env)),
            Kind::Proposal => self.step(|p| p.on_proposal(&env)),
            Kind::Welcome | Kind::Commit | Kind::Application => self.on_stream(env, bytes),
        };
        match r {
            Ok(()) => Ok(self.take_outputs()),
            Err(e) => {
                if !e.is_duplicate() {
                    self.rejected_pending += 1;
                }
                // Outputs of steps that did commit stay queued and go out
                // with the next call.
                Err(e)
            }
        }
    }

    fn on_key_package(&mut self, env: &Envelope) -> Result<(), MmlsError> {
        let kp = self.validate_kp(&env.body, None)?;
        let who = verify_binding(
            kp.leaf_node().credential(),
            kp.leaf_node().signature_key().as_slice(),
        )?;
        if who == self.me {
            return Ok(());
        }
        if self
            .state
            .known_kps
            .get(&who)
            .is_some_and(|b| b.as_slice() == env.body.as_slice())
        {
            // A re-announcement (an owner answering a KeyPackage request
            // with the KeyPackage everyone else holds): valid, nothing to
            // do, and it must travel on. As a Duplicate the first relay that
            // knows it would drop it, and a member back from state loss more
            // than one hop away could never build its send group (found by
            // the simulator's churn scenario). Gossip's duplicate cache
            // stops loops.
            return Ok(());
        }
        self.state
            .known_kps
            .insert(who.clone(), ByteBuf::from(env.body.to_vec()));
        self.state.kp_requested.remove(&who);
        // Someone may have been waiting for it.
        let ids: Vec<Id32> = self.state.universes.keys().cloned().collect();
        for uid in ids {
            let u = self.uni(&uid)?;
            if u.removed {
                continue;
            }
            if u.own_group.is_none() && u.def.is_some() && u.roster.contains(&self.me) {
                self.try_create_own_group(uid)?;
            } else if u.own_group.is_some() && u.pending_adds.contains(&who) {
                self.commit_own(uid, false)?;
            }
        }
        Ok(())
    }

    fn on_kp_request(&mut self, env: &Envelope) -> Result<(), MmlsError> {
        if env.to.as_deref() == Some(self.me.as_str()) {
            if let Output::Publish(p) = self.announcement() {
                self.outputs.push(Output::Publish(p));
            }
        }
        Ok(())
    }

    /// An Update proposal for a send group: only its owner acts on it.
    fn on_proposal(&mut self, env: &Envelope) -> Result<(), MmlsError> {
        let uid = env
            .universe
            .ok_or(crate::envelope::EnvelopeError::MissingField(
                env.kind, "universe",
            ))?;
        let g = env
            .group
            .ok_or(crate::envelope::EnvelopeError::MissingField(
                env.kind, "group",
            ))?;
        let u = self.uni(&uid).map_err(|_| MmlsError::NotInUniverse(uid))?;
        if u.own_group != Some(g) {
            // Readers get it embedded in the owner's commit.
            return Ok(());
        }
        if u.own_proposals
            .iter()
            .any(|p| p.as_slice() == env.body.as_slice())
        {
            return Err(MmlsError::Duplicate {
                group: g,
                seq: env.epoch,
            });
        }
        let pm = Self::protocol_message(env)?;
        let provider = &self.provider;
        let group = cached(&mut self.groups, provider.storage(), &g)?;
        if pm.epoch() != group.epoch() {
            return Err(MmlsError::Unexpected(format!(
                "proposal for epoch {} but our group is at {} (the member re-proposes)",
                pm.epoch().as_u64(),
                group.epoch().as_u64()
            )));
        }
        let processed = group
            .process_message(provider, pm)
            .map_err(MmlsError::mls)?;
        let ProcessedMessageContent::ProposalMessage(q) = processed.into_content() else {
            return Err(MmlsError::Unexpected("not a proposal".into()));
        };
        check_update_proposal(&q)?;
        group
            .store_pending_proposal(provider.storage(), *q)
            .map_err(MmlsError::mls)?;
        let now = self.now;
        let u = self.uni_mut(&uid)?;
        u.own_proposals.push(ByteBuf::from(env.body.to_vec()));
        u.pending_since.get_or_insert(now);
        Ok(())
    }

    fn on_rejoin(&mut self, env: &Envelope) -> Result<(), MmlsError> {
        let signed: SignedRejoin = from_cbor(&env.body).map_err(MmlsError::Unexpected)?;
        let req: RejoinRequest = from_cbor(&signed.request).map_err(MmlsError::Unexpected)?;
        req.member.verify(&signed.request, &signed.signature)?;
        let uid = req.universe;
        let me = self.me.clone();
        let u = self.uni(&uid).map_err(|_| MmlsError::NotInUniverse(uid))?;
        if req.member == me || u.removed {
            return Ok(());
        }
        if !u.roster.contains(&req.member) {
            return Err(MmlsError::NotAMember(req.member.to_string()));
        }
        if u.own_group.is_none() {
            return Ok(());
        }
        if u.rejoin_nonces
            .get(&req.member)
            .is_some_and(|n| *n >= req.nonce)
        {
            return Err(MmlsError::Duplicate {
                group: uid,
                seq: req.nonce,
            });
        }
        let kp = req
            .key_packages
            .iter()
            .find(|(o, _)| *o == me)
            .map(|(_, k)| k.clone())
            .or(if req.lost_state {
                req.any_key_package.clone()
            } else {
                None
            });
        let Some(kp) = kp else { return Ok(()) };
        let k = self.validate_kp(&kp, Some(&req.member))?;
        if !k.last_resort() {
            let r = k.hash_ref(self.provider.crypto()).map_err(MmlsError::mls)?;
            if !self
                .state
                .used_kp_refs
                .insert(ByteBuf::from(r.as_slice().to_vec()))
            {
                return Err(MmlsError::Duplicate {
                    group: uid,
                    seq: req.nonce,
                });
            }
        }
        let u = self.uni_mut(&uid)?;
        u.rejoin_nonces.insert(req.member.clone(), req.nonce);
        u.readds.insert(req.member.clone(), kp);
        let acked = req
            .received
            .iter()
            .find(|(o, _)| *o == me)
            .map_or(0, |(_, s)| *s);
        u.resend_after.insert(req.member.clone(), acked);
        // A member that lost its state also lost its send group.
        if req.lost_state {
            if let Some(old) = u.owner_group.get(&req.member).copied() {
                if let Some(gs) = u.groups.get_mut(&old) {
                    gs.stale = true;
                }
            }
        }
        self.commit_own(uid, false)?;
        Ok(())
    }

    /// A stream entry: buffer it, then process everything that is ready.
    fn on_stream(&mut self, env: Envelope, bytes: &[u8]) -> Result<(), MmlsError> {
        let uid = env
            .universe
            .ok_or(crate::envelope::EnvelopeError::MissingField(
                env.kind, "universe",
            ))?;
        let g = env
            .group
            .ok_or(crate::envelope::EnvelopeError::MissingField(
                env.kind, "group",
            ))?;
        // A Welcome for us may open a universe or group we do not know yet.
        if env.kind == Kind::Welcome && self.welcome_is_for_me(&env)? {
            let known = self
                .state
                .universes
                .get(&uid)
                .and_then(|u| u.groups.get(&g))
                .map(|s| (s.stale, s.epoch));
            let can_join = match known {
                None => true,
                Some((stale, epoch)) => {
                    stale
                        || env.epoch > epoch
                            && self
                                .state
                                .universes
                                .get(&uid)
                                .is_some_and(|u| u.owner_group.get(&self.me) != Some(&g))
                }
            };
            // Otherwise it waits with the group's stream for its PSKs.
            if can_join && self.deps_ready(&uid, &env.deps)? {
                self.step(|p| p.join(uid, g, &env, bytes))?;
                self.drain(uid, g);
                return Ok(());
            }
        }
        let u = self
            .state
            .universes
            .get(&uid)
            .ok_or(MmlsError::NotInUniverse(uid))?;
        if u.removed {
            return Err(MmlsError::NotInUniverse(uid));
        }
        if let Some(gs) = u.groups.get(&g) {
            if env.seq < gs.next_seq && !gs.stale {
                return Err(MmlsError::Duplicate {
                    group: g,
                    seq: env.seq,
                });
            }
            if gs.owner == self.me {
                return Err(MmlsError::Duplicate {
                    group: g,
                    seq: env.seq,
                });
            }
        }
        let buffered = self.buffers.get(&g);
        if let Some(held) = buffered.and_then(|b| b.get(&env.seq)) {
            // A *different* entry for a position we hold: one of the two is
            // forged, and we cannot tell which before MLS does. Keep it
            // aside, so a forgery that got here first (say, one waiting for
            // PSKs that never come) cannot lock the real entry out.
            let dup = Err(MmlsError::Duplicate {
                group: g,
                seq: env.seq,
            });
            if held.as_slice() == bytes || !self.add_alternate(g, env.seq, bytes) {
                return dup;
            }
            self.drain(uid, g);
            return Ok(());
        }
        // A full buffer keeps the *lowest* positions: they are the ones the
        // stream waits for. A later entry is evicted (peers serve it again);
        // refusing this one could refuse the very entry that unblocks all.
        let mut evict = None;
        if let Some(b) = buffered.filter(|b| b.len() >= self.config.max_buffer_per_group) {
            match b.last_key_value() {
                Some((&highest, _)) if highest > env.seq => evict = Some(highest),
                _ => return Err(MmlsError::BufferFull(g)),
            }
        }
        let owned = bytes.to_vec();
        self.step(|p| {
            if let Some(h) = evict {
                p.buffer_remove(g, h);
            }
            p.buffer_put(g, env.seq, owned);
            Ok(())
        })?;
        // Process the new entry directly when it is next, so that its own
        // rejection comes back as this call's error.
        let next = self
            .state
            .universes
            .get(&uid)
            .and_then(|u| u.groups.get(&g))
            .map(|s| (s.next_seq, s.stale));
        if let Some((n, false)) = next {
            if n == env.seq && self.deps_ready(&uid, &env.deps)? {
                if let Err(e) = self.step(|p| p.process_entry(uid, g, &env, bytes)) {
                    self.drop_entry(uid, g, env.seq, &e);
                    return Err(e);
                }
            }
        }
        self.drain(uid, g);
        Ok(())
    }

    /// A stream entry failed: drop it (the real one may still come), and
    /// record an equivocation it revealed.
    fn drop_entry(&mut self, uid: Id32, g: Id32, seq: u64, e: &MmlsError) {
        let reason = e.to_string();
        let eq = match e {
            MmlsError::Equivocation {
                owner,
                group,
                epoch,
            } => Some((owner.clone(), *group, *epoch)),
            _ => None,
        };
        let _ = self.step(|p| {
            p.buffer_remove(g, seq);
            if let Some((owner, group, epoch)) = eq {
                let u = p.uni_mut(&uid)?;
                if !u.equivocations.contains(&(owner.clone(), group, epoch)) {
                    u.equivocations.push((owner.clone(), group, epoch));
                }
                p.emit(Event::Equivocation {
                    universe: uid,
                    owner,
                    group,
                    epoch,
                });
            }
            p.emit(Event::Rejected {
                universe: uid,
                group: g,
                seq,
                reason,
            });
            Ok(())
        });
    }

    fn welcome_is_for_me(&self, env: &Envelope) -> Result<bool, MmlsError> {
        let msg = MlsMessageIn::tls_deserialize_exact(env.body.as_slice())
            .map_err(|e| MmlsError::MalformedMls(format!("{e:?}")))?;
        let MlsMessageBodyIn::Welcome(w) = msg.extract() else {
            return Err(MmlsError::Unexpected(
                "Welcome envelope without a Welcome".into(),
            ));
        };
        Ok(w.secrets().iter().any(|s| {
            self.state
                .my_kp_refs
                .contains(&ByteBuf::from(s.new_member().as_slice().to_vec()))
        }))
    }

    /// Whether every PSK in `deps` is in our store (or can never be).
    fn deps_ready(&self, uid: &Id32, deps: &[(Id32, u64)]) -> Result<bool, MmlsError> {
        let Some(u) = self.state.universes.get(uid) else {
            return Ok(deps.is_empty());
        };
        Ok(deps
            .iter()
            .all(|(g, e)| u.groups.get(g).is_some_and(|s| s.epoch >= *e && !s.stale)))
    }

    /// Processes buffered entries of `g` (and of groups they unblock) in
    /// stream order, each in its own step.
    fn drain(&mut self, uid: Id32, first: Id32) {
        let mut work = vec![first];
        let mut rounds = 0;
        while let Some(g) = work.pop() {
            rounds += 1;
            if rounds > 100_000 {
                break;
            }
            // The caller may just have processed an entry of `first`.
            let mut progressed = rounds == 1;
            while let Some(gs) = self
                .state
                .universes
                .get(&uid)
                .and_then(|u| u.groups.get(&g))
            {
                if gs.stale {
                    break;
                }
                let next = gs.next_seq;
                // Drop what is already behind us.
                if !self.alternates.is_empty() {
                    self.alternates.retain(|(ag, s), _| *ag != g || *s >= next);
                }
                let behind: Vec<u64> = self
                    .buffers
                    .get(&g)
                    .map(|b| b.range(..next).map(|(k, _)| *k).collect())
                    .unwrap_or_default();
                if !behind.is_empty() {
                    let _ = self.step(|p| {
                        for s in behind {
                            p.buffer_remove(g, s);
                        }
                        Ok(())
                    });
                }
                let Some(bytes) = self.buffers.get(&g).and_then(|b| b.get(&next)).cloned() else {
                    let has_later = self.buffers.get(&g).is_some_and(|b| !b.is_empty());
                    self.set_blocked(uid, g, has_later);
                    break;
                };
                let Ok(env) = Envelope::decode(&bytes) else {
                    let _ = self.step(|p| {
                        p.buffer_remove(g, next);
                        Ok(())
                    });
                    continue;
                };
                if !self.deps_ready(&uid, &env.deps).unwrap_or(false) {
                    if self.try_alternates(uid, g, next) {
                        progressed = true;
                        continue;
                    }
                    self.set_blocked(uid, g, true);
                    break;
                }
                match self.step(|p| p.process_entry(uid, g, &env, &bytes)) {
                    Ok(()) => {
                        progressed = true;
                    }
                    Err(e) => {
                        self.drop_entry(uid, g, next, &e);
                        if self.try_alternates(uid, g, next) {
                            progressed = true;
                            continue;
                        }
                        self.set_blocked(uid, g, true);
                        break;
                    }
                }
            }
            if progressed {
                // Our progress may unblock other groups' heads.
                if let Some(u) = self.state.universes.get(&uid) {
                    for (og, gs) in &u.groups {
                        if *og != g
                            && !gs.stale
                            && self
                                .buffers
                                .get(og)
                                .is_some_and(|b| b.contains_key(&gs.next_seq))
                            && !work.contains(og)
                        {
                            work.push(*og);
                        }
                    }
                }
                // Groups we are not in yet may hold our Welcome.
                let pending: Vec<Id32> = self
                    .buffers
                    .iter()
                    .filter(|(bg, b)| {
                        !b.is_empty()
                            && self
                                .state
                                .universes
                                .get(&uid)
                                .is_some_and(|u| !u.groups.contains_key(*bg))
                    })
                    .map(|(bg, _)| *bg)
                    .collect();
                for bg in pending {
                    self.retry_orphan_welcomes(uid, bg);
                }
            }
        }
    }

    /// Welcomes buffered for groups we are not in (waiting for PSKs).
    fn retry_orphan_welcomes(&mut self, uid: Id32, g: Id32) {
        let entries: Vec<Vec<u8>> = self
            .buffers
            .get(&g)
            .map(|b| b.values().cloned().collect())
            .unwrap_or_default();
        for bytes in entries {
            let Ok(env) = Envelope::decode(&bytes) else {
                continue;
            };
            if env.kind == Kind::Welcome
                && env.universe == Some(uid)
                && self.welcome_is_for_me(&env).unwrap_or(false)
                && self.deps_ready(&uid, &env.deps).unwrap_or(false)
            {
                if self.step(|p| p.join(uid, g, &env, &bytes)).is_ok() {
                    self.drain(uid, g);
                }
                return;
            }
        }
    }

    /// Remembers another candidate for stream position `seq` of `g`
    /// (bounded; false if it is known or there is no room).
    fn add_alternate(&mut self, g: Id32, seq: u64, bytes: &[u8]) -> bool {
        let total: usize = self.alternates.values().map(Vec::len).sum();
        let list = self.alternates.entry((g, seq)).or_default();
        if list.iter().any(|a| a.as_slice() == bytes) {
            return false;
        }
        if list.len() >= MAX_ALTERNATES_PER_POSITION || total >= MAX_ALTERNATES {
            // Keep the newest: the real entry is fetched again on every
            // retry, a flood of forgeries must not pin the slots.
            if list.is_empty() {
                return false;
            }
            list.remove(0);
        }
        list.push(bytes.to_vec());
        true
    }

    /// Processes the first alternate for position `seq` of `g` that is ready
    /// and valid, in place of the buffered entry. True if one went through.
    fn try_alternates(&mut self, uid: Id32, g: Id32, seq: u64) -> bool {
        let Some(alts) = self.alternates.get(&(g, seq)).cloned() else {
            return false;
        };
        for a in alts {
            let ready = Envelope::decode(&a).ok().filter(|e| {
                e.group == Some(g)
                    && e.seq == seq
                    && self.deps_ready(&uid, &e.deps).unwrap_or(false)
            });
            let Some(env) = ready else { continue };
            match self.step(|p| p.process_entry(uid, g, &env, &a)) {
                Ok(()) => {
                    self.alternates.remove(&(g, seq));
                    return true;
                }
                Err(e) => {
                    tracing::debug!(group = %g.short(), seq, error = %e, "alternate entry rejected");
                    if let Some(list) = self.alternates.get_mut(&(g, seq)) {
                        list.retain(|x| *x != a);
                    }
                }
            }
        }
        false
    }

    fn set_blocked(&mut self, uid: Id32, g: Id32, blocked: bool) {
        let now = self.now;
        let retry = self.config.fetch_retry_ms;
        let mut fetch = false;
        if let Some(gs) = self
            .state
            .universes
            .get_mut(&uid)
            .and_then(|u| u.groups.get_mut(&g))
        {
            if blocked {
                if gs.blocked_since.is_none() {
                    gs.blocked_since = Some(now);
                    // A fetch asked moments ago reads up to the peer's head
                    // and so covers this gap too (after a partition heals,
                    // gossip replays arrive out of order and would open a
                    // new gap per entry: hundreds of overlapping fetches).
                    // The tick asks again if it did not.
                    fetch = gs.last_fetch_at == 0 || now >= gs.last_fetch_at.saturating_add(retry);
                }
            } else {
                gs.blocked_since = None;
            }
        }
        if fetch {
            self.fetch_blocked(uid, g);
        }
    }

    /// Joins send group `g` through a Welcome addressed to one of our
    /// KeyPackages.
    fn join(&mut self, uid: Id32, g: Id32, env: &Envelope, raw: &[u8]) -> Result<(), MmlsError> {
        let msg = MlsMessageIn::tls_deserialize_exact(env.body.as_slice())
            .map_err(|e| MmlsError::MalformedMls(format!("{e:?}")))?;
        let MlsMessageBodyIn::Welcome(w) = msg.extract() else {
            return Err(MmlsError::Unexpected("not a Welcome".into()));
        };
        if w.ciphersuite() != CS {
            return Err(MmlsError::CiphersuiteRefused(u16::from(w.ciphersuite())));
        }
        // Joined through our last-resort KeyPackage: its leaf key is shared
        // with every other group joined that way, so rotate it at once.
        let via_last_resort = w.secrets().iter().any(|s| {
            self.state
                .last_resort_refs
                .contains(&ByteBuf::from(s.new_member().as_slice().to_vec()))
        });
        let staged = StagedWelcome::build_from_welcome(&self.provider, &join_config(), w)
            .map_err(MmlsError::mls)?
            .replace_old_group()
            .build()
            .map_err(MmlsError::mls)?;
        if staged.group_context().group_id().as_slice() != g.as_bytes() {
            return Err(MmlsError::AadMismatch("Welcome is for another group"));
        }
        let owner_leaf = staged.welcome_sender().map_err(MmlsError::mls)?;
        if staged.welcome_sender_index() != LeafNodeIndex::new(0) {
            return Err(MmlsError::NotOwner {
                what: "Welcomes",
                group: g,
            });
        }
        let owner = verify_binding(
            owner_leaf.credential(),
            owner_leaf.signature_key().as_slice(),
        )?;
        // The envelope's epoch and seq are hints the owner signs: a replayed
        // Welcome with a forged epoch or position is refused, and no Welcome
        // takes a group we know back to an epoch we are past (found by
        // fuzzing: a replay rewound the group, so its next messages failed).
        // A stale group may sit at the very epoch of the commit that removed
        // us, which is the epoch of the Welcome that re-adds us.
        let sig = env.sig.as_ref().ok_or(MmlsError::BadSignature)?;
        owner.verify(&env.welcome_signed_bytes(), sig)?;
        let epoch = staged.group_context().epoch().as_u64();
        let known = self
            .state
            .universes
            .get(&uid)
            .and_then(|u| u.groups.get(&g));
        if known.is_some_and(|s| epoch < s.epoch || (epoch == s.epoch && !s.stale)) {
            return Err(MmlsError::Duplicate {
                group: g,
                seq: env.seq,
            });
        }
        let mut members = vec![];
        for m in staged.members() {
            members.push(verify_binding(&m.credential, &m.signature_key)?);
        }
        if let Some(u) = self.state.universes.get(&uid) {
            if u.def.is_some() && !u.roster.contains(&owner) {
                return Err(MmlsError::NotAMember(owner.to_string()));
            }
        }
        let group = staged.into_group(&self.provider).map_err(MmlsError::mls)?;
        let epoch = group.epoch().as_u64();
        let auth = auth8(group.epoch_authenticator().as_slice());
        self.groups.insert(g, group);
        let now = self.now;
        let me = self.me.clone();
        let is_new_universe = !self.state.universes.contains_key(&uid);
        let u = self
            .state
            .universes
            .entry(uid)
            .or_insert_with(|| UniverseState::new(uid));
        let rejoined = u.groups.get(&g).is_some_and(|s| s.stale);
        // The owner's previous send group is abandoned (it lost its state).
        if let Some(old) = u.owner_group.insert(owner.clone(), g) {
            if old != g {
                u.groups.remove(&old);
                u.pending_imports.remove(&old);
            }
        }
        u.groups.insert(
            g,
            GroupState {
                owner: owner.clone(),
                next_seq: env.seq.saturating_add(1),
                epoch,
                auth: BTreeMap::from([(epoch, auth)]),
                psk_min: epoch,
                blocked_since: None,
                last_fetch_at: 0,
                stale: false,
                stale_since: None,
                last_commit_at: now,
                pruned_below: 0,
                psk_marks: vec![],
                named_epoch: None,
            },
        );
        u.pending_imports.insert(g);
        u.pending_since.get_or_insert(now);
        if u.groups.values().all(|s| !s.stale) {
            u.rejoin_requested_at = None;
        }
        let _ = me;
        // Our Welcome is part of the stream peers behind us need to pass.
        self.log_entry(g, env.seq, raw);
        self.export_psk(uid, g)?;
        let stale_below: Vec<u64> = self
            .buffers
            .get(&g)
            .map(|b| b.range(..=env.seq).map(|(k, _)| *k).collect())
            .unwrap_or_default();
        for s in stale_below {
            self.buffer_remove(g, s);
        }
        if via_last_resort && self.config.rotate_leaves {
            self.uni_mut(&uid)?.leaf_updates.insert(g);
            self.propose_leaf_update(uid, g)?;
        }
        if rejoined {
            // Policy: an own MMLS update after rejoining.
            self.uni_mut(&uid)?.update_due = true;
            self.emit(Event::Rejoined {
                universe: uid,
                group: g,
                owner,
            });
        }
        // A joiner needs the Hello that follows; it may have gone by
        // before we could read it.
        if is_new_universe || self.uni(&uid)?.def.is_none() {
            self.outputs.push(Output::Fetch(FetchRequest::Range {
                universe: uid,
                group: g,
                from: env.seq.saturating_add(1),
            }));
        }
        Ok(())
    }

    /// Processes the next entry of send group `g`'s stream.
    fn process_entry(
        &mut self,
        uid: Id32,
        g: Id32,
        env: &Envelope,
        raw: &[u8],
    ) -> Result<(), MmlsError> {
        self.buffer_remove(g, env.seq);
        self.process_entry_kind(uid, g, env)?;
        self.log_entry(g, env.seq, raw);
        Ok(())
    }

    /// Store-and-forward: every member keeps the entries it has processed
    /// (bounded by `log_retention`) and serves them to peers that missed
    /// them, so a partition heals through whoever carried the history, not
    /// only through the owner. Only processed entries are kept: we never
    /// hand on what we could not authenticate.
    fn log_entry(&mut self, g: Id32, seq: u64, raw: &[u8]) {
        self.provider
            .store()
            .put(Table::Log, &log_key(&g, seq), raw);
    }

    fn process_entry_kind(&mut self, uid: Id32, g: Id32, env: &Envelope) -> Result<(), MmlsError> {
        match env.kind {
            Kind::Welcome => {
                // For other members (ours came through `join`): we cannot
                // decrypt it, so the owner's signature is what proves it is
                // the real entry at this position.
                let owner = self
                    .uni(&uid)?
                    .groups
                    .get(&g)
                    .map(|s| s.owner.clone())
                    .ok_or(MmlsError::UnknownGroup(g))?;
                let sig = env.sig.as_ref().ok_or(MmlsError::BadSignature)?;
                owner.verify(&env.welcome_signed_bytes(), sig)?;
                self.advance(uid, g)?;
                Ok(())
            }
            Kind::Commit => self.process_commit(uid, g, env),
            Kind::Application => self.process_application(uid, g, env),
            k => Err(MmlsError::Unexpected(format!(
                "{k:?} in a send-group stream"
            ))),
        }
    }

    fn advance(&mut self, uid: Id32, g: Id32) -> Result<(), MmlsError> {
        let gs = self
            .uni_mut(&uid)?
            .groups
            .get_mut(&g)
            .ok_or(MmlsError::UnknownGroup(g))?;
        gs.next_seq = gs.next_seq.saturating_add(1);
        gs.blocked_since = None;
        Ok(())
    }

    fn protocol_message(env: &Envelope) -> Result<ProtocolMessage, MmlsError> {
        let msg = MlsMessageIn::tls_deserialize_exact(env.body.as_slice())
            .map_err(|e| MmlsError::MalformedMls(format!("{e:?}")))?;
        msg.try_into_protocol_message()
            .map_err(|e| MmlsError::MalformedMls(format!("{e:?}")))
    }

    fn check_owner_and_aad(
        g: &Id32,
        processed: &ProcessedMessage,
        env: &Envelope,
        what: &'static str,
    ) -> Result<Aad, MmlsError> {
        if *processed.sender() != Sender::Member(LeafNodeIndex::new(0)) {
            return Err(MmlsError::NotOwner { what, group: *g });
        }
        let aad: Aad =
            from_cbor(processed.aad()).map_err(|_| MmlsError::AadMismatch("unreadable"))?;
        if aad.seq != env.seq {
            return Err(MmlsError::AadMismatch("seq"));
        }
        if aad.deps != env.deps {
            return Err(MmlsError::AadMismatch("deps"));
        }
        Ok(aad)
    }

    fn process_application(&mut self, uid: Id32, g: Id32, env: &Envelope) -> Result<(), MmlsError> {
        let pm = Self::protocol_message(env)?;
        if pm.group_id().as_slice() != g.as_bytes() {
            return Err(MmlsError::AadMismatch("group"));
        }
        let provider = &self.provider;
        let group = cached(&mut self.groups, provider.storage(), &g)?;
        let epoch = group.epoch().as_u64();
        let processed = group
            .process_message(provider, pm)
            .map_err(MmlsError::mls)?;
        Self::check_owner_and_aad(&g, &processed, env, "application messages")?;
        let ProcessedMessageContent::ApplicationMessage(app) = processed.into_content() else {
            return Err(MmlsError::Unexpected(
                "expected an application message".into(),
            ));
        };
        let payload: Payload = from_cbor(&app.into_bytes()).map_err(MmlsError::Unexpected)?;
        self.advance(uid, g)?;
        let owner = self
            .uni(&uid)?
            .groups
            .get(&g)
            .map(|s| s.owner.clone())
            .ok_or(MmlsError::UnknownGroup(g))?;
        match payload {
            Payload::Text { seq, body } => self.deliver_text(uid, g, &owner, epoch, seq, body)?,
            Payload::Hello { def, roster } => self.on_hello(uid, &owner, def, roster)?,
            Payload::Resend { to, texts } => self.on_resend(uid, g, &owner, epoch, &to, texts)?,
        }
        Ok(())
    }

    fn on_hello(
        &mut self,
        uid: Id32,
        owner: &MemberId,
        def: UniverseDef,
        roster: Vec<MemberId>,
    ) -> Result<(), MmlsError> {
        if def.id != uid {
            return Err(MmlsError::AadMismatch("Hello names another universe"));
        }
        if !def.ciphersuites.contains(&u16::from(CS)) {
            return Err(MmlsError::CiphersuiteRefused(
                def.ciphersuites.first().copied().unwrap_or(0),
            ));
        }
        let me = self.me.clone();
        let u = self.uni_mut(&uid)?;
        if u.def.is_none() {
            // The creator's Hello is authoritative; another owner's Hello
            // only teaches a joiner that does not know the universe yet.
            if !roster.contains(owner) || !roster.contains(&me) {
                return Err(MmlsError::NotAMember(me.to_string()));
            }
            let name = def.name.clone();
            u.def = Some(def);
            u.roster = roster.into_iter().collect();
            // PSKs exported before we knew the universe's profile were
            // derived with the default labels: derive them again (every
            // group is still at its join epoch, as a Hello follows each
            // Welcome).
            let gs: Vec<Id32> = u.groups.keys().cloned().collect();
            for g in gs {
                self.export_psk(uid, g)?;
            }
            self.emit(Event::UniverseJoined {
                universe: uid,
                name,
            });
            self.try_create_own_group(uid)?;
        }
        Ok(())
    }

    fn process_commit(&mut self, uid: Id32, g: Id32, env: &Envelope) -> Result<(), MmlsError> {
        let pm = Self::protocol_message(env)?;
        if pm.group_id().as_slice() != g.as_bytes() {
            return Err(MmlsError::AadMismatch("group"));
        }
        let u = self.uni(&uid)?;
        let def = u.def.clone();
        let roster = u.roster.clone();
        let owner = u
            .groups
            .get(&g)
            .map(|s| s.owner.clone())
            .ok_or(MmlsError::UnknownGroup(g))?;
        let members_before = self.group_members(&g)?;
        let provider = &self.provider;
        let group = self.groups.get_mut(&g).ok_or(MmlsError::UnknownGroup(g))?;
        if pm.epoch().as_u64() != group.epoch().as_u64() {
            return Err(MmlsError::Unexpected(format!(
                "commit for epoch {} but group is at {}",
                pm.epoch().as_u64(),
                group.epoch().as_u64()
            )));
        }
        // The proposals the commit covers travel with it.
        for raw in &env.proposals {
            let msg = MlsMessageIn::tls_deserialize_exact(raw.as_slice())
                .map_err(|e| MmlsError::MalformedMls(format!("{e:?}")))?;
            let ppm = msg
                .try_into_protocol_message()
                .map_err(|e| MmlsError::MalformedMls(format!("{e:?}")))?;
            let pp = group
                .process_message(provider, ppm)
                .map_err(MmlsError::mls)?;
            match pp.into_content() {
                ProcessedMessageContent::ProposalMessage(q) => {
                    check_update_proposal(&q)?;
                    group
                        .store_pending_proposal(provider.storage(), *q)
                        .map_err(MmlsError::mls)?;
                }
                // Our own proposal: already in our proposal store.
                ProcessedMessageContent::OwnPrivateMessage => {}
                _ => {
                    return Err(MmlsError::Unexpected(
                        "a commit attachment that is not a proposal".into(),
                    ))
                }
            }
        }
        let raw_aad = match &pm {
            ProtocolMessage::PrivateMessage(m) => m.aad().to_vec(),
            ProtocolMessage::PublicMessage(_) => vec![],
        };
        let processed = match group.process_message(provider, pm) {
            Ok(p) => p,
            Err(ProcessMessageError::InvalidCommit(err)) => {
                // Decrypted and signature-checked, so the AAD is the
                // owner's: a commit importing a (group, epoch) whose state
                // differs from ours is how an equivocation shows.
                let u = self.uni(&uid)?;
                if let Ok(aad) = from_cbor::<Aad>(&raw_aad) {
                    for f in &aad.frontier {
                        if let Some(gs) = u.groups.get(&f.group) {
                            if gs
                                .auth
                                .get(&f.epoch)
                                .is_some_and(|a| *a != f.auth && f.auth != [0; 8])
                            {
                                return Err(MmlsError::Equivocation {
                                    owner: gs.owner.clone(),
                                    group: f.group,
                                    epoch: f.epoch,
                                });
                            }
                        }
                    }
                }
                return Err(MmlsError::mls(err));
            }
            Err(e) => return Err(MmlsError::mls(e)),
        };
        let aad = Self::check_owner_and_aad(&g, &processed, env, "commits")?;
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            return Err(MmlsError::Unexpected(
                "only the owner's commits are accepted in a send group".into(),
            ));
        };
        let my_leaf = group.own_leaf_index();
        let mut my_update_committed = false;
        for up in staged.update_proposals() {
            let Sender::Member(i) = up.sender() else {
                return Err(MmlsError::Unexpected(
                    "Update proposal from a non-member".into(),
                ));
            };
            let new_id = {
                let leaf = up.update_proposal().leaf_node();
                verify_binding(leaf.credential(), leaf.signature_key().as_slice())?
            };
            // A leaf may rotate its keys, never change whose it is.
            match members_before.iter().find(|(l, _)| l == i) {
                Some((_, m)) if *m == new_id => {}
                _ => return Err(MmlsError::BadCredential),
            }
            if *i == my_leaf {
                my_update_committed = true;
            }
        }
        let path = staged.update_path_leaf_node().is_some();
        let mut added = vec![];
        for a in staged.add_proposals() {
            let leaf = a.add_proposal().key_package().leaf_node();
            added.push(verify_binding(
                leaf.credential(),
                leaf.signature_key().as_slice(),
            )?);
        }
        let mut removed = vec![];
        for r in staged.remove_proposals() {
            let idx = r.remove_proposal().removed();
            if let Some((_, m)) = members_before.iter().find(|(i, _)| *i == idx) {
                removed.push(m.clone());
            }
        }
        // Adds of new members need an admin; re-adds (rejoin) are fine.
        let is_admin = def.as_ref().is_some_and(|d| d.is_admin(&owner));
        for m in &added {
            if !roster.contains(m) && !is_admin {
                return Err(MmlsError::NotAdmin);
            }
        }
        let self_removed = staged.self_removed();
        let group = self.groups.get_mut(&g).ok_or(MmlsError::UnknownGroup(g))?;
        group
            .merge_staged_commit(&self.provider, *staged)
            .map_err(MmlsError::mls)?;
        let epoch = group.epoch().as_u64();
        let auth = auth8(group.epoch_authenticator().as_slice());
        let now = self.now;
        let me = self.me.clone();
        self.advance(uid, g)?;
        // Equivocation: the owner's frontier against what we saw.
        let mut equivocations = vec![];
        {
            let u = self.uni(&uid)?;
            for f in &aad.frontier {
                if let Some(gs) = u.groups.get(&f.group) {
                    if let Some(a) = gs.auth.get(&f.epoch) {
                        if *a != f.auth && f.auth != [0; 8] {
                            equivocations.push((gs.owner.clone(), f.group, f.epoch));
                        }
                    }
                }
            }
        }
        let u = self.uni_mut(&uid)?;
        for (o, eg, ee) in &equivocations {
            if !u.equivocations.contains(&(o.clone(), *eg, *ee)) {
                u.equivocations.push((o.clone(), *eg, *ee));
            }
        }
        if self_removed {
            if added.contains(&me) || !is_admin {
                // Re-added in the same commit (our Welcome follows), or
                // dropped by an owner who is not an admin: that owner may
                // stop sending to us, as it always could by staying silent,
                // but only an admin removes us from the universe.
                let gs = u.groups.get_mut(&g).ok_or(MmlsError::UnknownGroup(g))?;
                gs.stale = true;
                gs.stale_since = Some(now);
                gs.epoch = epoch;
            } else {
                u.removed = true;
                self.emit(Event::RemovedFromUniverse { universe: uid });
            }
            for (o, eg, ee) in equivocations {
                self.emit(Event::Equivocation {
                    universe: uid,
                    owner: o,
                    group: eg,
                    epoch: ee,
                });
            }
            return Ok(());
        }
        {
            let gs = u.groups.get_mut(&g).ok_or(MmlsError::UnknownGroup(g))?;
            gs.epoch = epoch;
            gs.auth.insert(epoch, auth);
            while gs.auth.len() > AUTH_HISTORY {
                gs.auth.pop_first();
            }
            gs.last_commit_at = now;
        }
        if path {
            u.pending_imports.insert(g);
            u.pending_since.get_or_insert(now);
        }
        let mut events = vec![];
        // Mirror membership changes into our own send group. Only an
        // admin's removals are the universe's; any other owner's only shape
        // who reads that owner (else any member could evict anyone).
        for m in &removed {
            if added.contains(m) || *m == me || !is_admin {
                continue;
            }
            if u.roster.remove(m) {
                events.push(Event::MemberRemoved {
                    universe: uid,
                    member: m.clone(),
                });
            }
            u.pending_removes.insert(m.clone());
            u.pending_adds.remove(m);
            u.pending_since.get_or_insert(now);
            if let Some(og) = u.owner_group.remove(m) {
                u.groups.remove(&og);
                u.pending_imports.remove(&og);
            }
        }
        for m in &added {
            if removed.contains(m) || *m == me {
                continue;
            }
            if u.roster.insert(m.clone()) {
                events.push(Event::MemberAdded {
                    universe: uid,
                    member: m.clone(),
                });
            }
            u.pending_adds.insert(m.clone());
            u.pending_since.get_or_insert(now);
        }
        // Our leaf rotation here: done, or re-proposed at the new epoch.
        let wants_update = u.leaf_updates.contains(&g);
        if wants_update && my_update_committed {
            u.leaf_updates.remove(&g);
        }
        for e in events {
            self.emit(e);
        }
        for (o, eg, ee) in equivocations {
            self.emit(Event::Equivocation {
                universe: uid,
                owner: o,
                group: eg,
                epoch: ee,
            });
        }
        self.record_psk_views(&owner, &g, &aad);
        self.export_psk(uid, g)?;
        if wants_update && !my_update_committed {
            self.propose_leaf_update(uid, g)?;
        }
        Ok(())
    }

    // -------------------------------------------------------------- sync --

    /// Our position in every send group of every universe, for peers.
    pub fn summaries(&self) -> Vec<SyncSummary> {
        self.state
            .universes
            .values()
            .filter(|u| !u.removed)
            .map(|u| SyncSummary {
                universe: u.id,
                heads: u.groups.iter().map(|(g, s)| (*g, s.next_seq)).collect(),
            })
            .collect()
    }

    /// Compares a peer's summary with ours: what to fetch from that peer.
    pub fn plan_fetches(&self, theirs: &SyncSummary) -> Vec<FetchRequest> {
        let Some(u) = self.state.universes.get(&theirs.universe) else {
            return vec![];
        };
        if u.removed {
            return vec![];
        }
        let ours: BTreeMap<Id32, u64> = u
            .groups
            .iter()
            .map(|(g, s)| {
                (
                    *g,
                    if s.stale {
                        u64::MAX
                    } else {
                        s.next_seq.max(self.buffer_head(g, s.next_seq))
                    },
                )
            })
            .collect();
        sync::plan(theirs.universe, &ours, theirs, &self.me)
    }

    /// The first seq not yet in our buffer, starting at `next`.
    fn buffer_head(&self, g: &Id32, next: u64) -> u64 {
        let mut n = next;
        if let Some(b) = self.buffers.get(g) {
            while b.contains_key(&n) {
                n += 1;
            }
        }
        n
    }

    /// Serves a peer's fetch from our envelope log (read-only).
    pub fn serve_fetch(&self, req: &FetchRequest) -> Result<FetchResponse, MmlsError> {
        match req {
            FetchRequest::Range {
                universe,
                group,
                from,
            } => {
                let u = self
                    .uni(universe)
                    .map_err(|_| MmlsError::NotInUniverse(*universe))?;
                let gs = u.groups.get(group).ok_or(MmlsError::NotInGroup(*group))?;
                let store = self.provider.store();
                let seq_of = |k: &[u8]| {
                    k.get(32..40)
                        .and_then(|s| s.try_into().ok())
                        .map(u64::from_be_bytes)
                };
                let oldest = store
                    .range(
                        Table::Log,
                        &log_key(group, 0),
                        Some(&log_key(group, u64::MAX)),
                        1,
                    )?
                    .first()
                    .and_then(|(k, _)| seq_of(k));
                let rows = store.range(
                    Table::Log,
                    &log_key(group, *from),
                    Some(&log_key(group, u64::MAX)),
                    MAX_FETCH_ENVELOPES + 1,
                )?;
                let mut resp = FetchResponse {
                    envelopes: vec![],
                    oldest,
                    more: false,
                    pruned: *from < gs.pruned_below,
                };
                // Only a contiguous run starting at `from` is useful: the
                // requester processes its stream strictly in order.
                let mut size = 0;
                for (expect, (k, v)) in (*from..).zip(rows) {
                    if seq_of(&k) != Some(expect) {
                        break;
                    }
                    if resp.envelopes.len() == MAX_FETCH_ENVELOPES
                        || size + v.len() > MAX_FETCH_BYTES
                    {
                        resp.more = true;
                        break;
                    }
                    size += v.len();
                    resp.envelopes.push(ByteBuf::from(v));
                }
                Ok(resp)
            }
            FetchRequest::Welcomes { universe, member } => {
                let u = self
                    .uni(universe)
                    .map_err(|_| MmlsError::NotInUniverse(*universe))?;
                let mut resp = FetchResponse::default();
                for (g, seq) in u.welcomes.get(member).cloned().unwrap_or_default() {
                    if let Some(v) = self.provider.store().get(Table::Log, &log_key(&g, seq))? {
                        resp.envelopes.push(ByteBuf::from(v));
                    }
                }
                // Also the Hello after each Welcome and the rest of the stream
                // is fetched by the joiner with Range requests.
                Ok(resp)
            }
        }
    }

    /// Feeds a peer's fetch answer in. A gap the peer has pruned means we
    /// can only rejoin that group.
    pub fn handle_fetch_response(
        &mut self,
        req: &FetchRequest,
        resp: FetchResponse,
    ) -> Vec<Output> {
        let mut outs = vec![];
        for e in resp.envelopes.iter().take(MAX_FETCH_ENVELOPES) {
            match self.handle_incoming(e) {
                Ok(o) => outs.extend(o),
                Err(err) if err.is_duplicate() => {}
                Err(err) => tracing::debug!(error = %err, "fetched envelope rejected"),
            }
        }
        if let FetchRequest::Range {
            universe,
            group,
            from,
        } = req
        {
            let pruned = resp.pruned && resp.oldest.is_none_or(|o| o > *from);
            let still_behind = self
                .state
                .universes
                .get(universe)
                .and_then(|u| u.groups.get(group))
                .is_some_and(|s| s.next_seq < resp.oldest.unwrap_or(u64::MAX) && !s.stale);
            if pruned && still_behind {
                let now = self.now;
                if let Some(gs) = self
                    .state
                    .universes
                    .get_mut(universe)
                    .and_then(|u| u.groups.get_mut(group))
                {
                    gs.stale = true;
                    gs.stale_since = Some(now);
                }
                let u = *universe;
                if self.step(|p| p.send_rejoin(u, false)).is_ok() {
                    outs.extend(self.take_outputs());
                }
            } else if resp.more {
                let next = self
                    .state
                    .universes
                    .get(universe)
                    .and_then(|u| u.groups.get(group))
                    .map(|s| self.buffer_head(group, s.next_seq));
                if let Some(n) = next {
                    outs.push(Output::Fetch(FetchRequest::Range {
                        universe: *universe,
                        group: *group,
                        from: n,
                    }));
                }
            }
        }
        outs
    }

    // ------------------------------------------------------------ views --

    pub fn universes(&self) -> Vec<Id32> {
        self.state.universes.keys().cloned().collect()
    }

    pub fn status(&mut self, uid: &Id32) -> Result<UniverseStatus, MmlsError> {
        let u = self.uni(uid)?.clone();
        let mut groups = vec![];
        for (g, s) in &u.groups {
            let members = if s.stale {
                0
            } else {
                self.group(g).map(|grp| grp.members().count()).unwrap_or(0)
            };
            let head = self.buffers.get(g).and_then(|b| b.get(&s.next_seq));
            let waiting_for = if s.blocked_since.is_none() {
                None
            } else {
                match head.and_then(|h| Envelope::decode(h).ok()) {
                    None => Some(format!("seq {}", s.next_seq)),
                    Some(e) => Some(
                        e.deps
                            .iter()
                            .filter(|(dg, de)| u.groups.get(dg).is_none_or(|x| x.epoch < *de))
                            .map(|(dg, de)| format!("{}@{}", dg.short(), de))
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                }
            };
            groups.push(GroupStatus {
                waiting_for,
                group: *g,
                owner: s.owner.clone(),
                epoch: s.epoch,
                next_seq: s.next_seq,
                buffered: self.buffers.get(g).map(|b| b.len()).unwrap_or(0),
                blocked: s.blocked_since.is_some(),
                stale: s.stale,
                auth: hex::encode(s.auth.get(&s.epoch).copied().unwrap_or_default()),
                members,
            });
        }
        Ok(UniverseStatus {
            id: u.id,
            name: u.def.as_ref().map(|d| d.name.clone()),
            profile: u.def.as_ref().map(|d| d.profile.to_string()),
            creator: u.def.as_ref().map(|d| d.creator.clone()),
            admins: u.def.as_ref().map(|d| d.admins.clone()).unwrap_or_default(),
            roster: u.roster.iter().cloned().collect(),
            own_group: u.own_group,
            groups,
            pending_imports: u.pending_imports.len(),
            messages_sent: u.next_text_seq - 1,
            equivocations: u.equivocations.clone(),
            removed: u.removed,
        })
    }

    /// Delivered messages of a universe after `after` (a cursor), oldest
    /// first.
    pub fn messages(
        &self,
        uid: &Id32,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Delivered>, MmlsError> {
        // Nothing comes after the last cursor (and `a + 1` would wrap to 0).
        let start = match after {
            None => 0,
            Some(a) => match a.checked_add(1) {
                Some(s) => s,
                None => return Ok(vec![]),
            },
        };
        let rows = self.provider.store().range(
            Table::Delivered,
            &log_key(uid, start),
            Some(&log_key(uid, u64::MAX)),
            limit,
        )?;
        rows.into_iter()
            .map(|(_, v)| {
                from_cbor(&v).map_err(|e| MmlsError::Store(crate::store::StoreError::Corrupt(e)))
            })
            .collect()
    }

    /// Inputs rejected since this node's store was created.
    pub fn rejected_inputs(&self) -> u64 {
        self.state.rejected_inputs + self.rejected_pending
    }

    /// Exports the current epoch's secret of a group under a test label: lets
    /// tests compare group state across participants without touching
    /// internals (same value = same epoch secrets).
    pub fn epoch_fingerprint(&mut self, g: &Id32) -> Result<(u64, Vec<u8>), MmlsError> {
        self.group(g)?;
        let group = self.groups.get(g).ok_or(MmlsError::UnknownGroup(*g))?;
        let v = group
            .export_secret(self.provider.crypto(), "mmls test fingerprint", b"", 16)
            .map_err(MmlsError::mls)?;
        Ok((group.epoch().as_u64(), v))
    }

    /// Test only: whether the exported PSK of `g` at `epoch` is still in
    /// the store (the forward-secrecy window deletes old ones).
    #[cfg(test)]
    pub(crate) fn holds_psk(&self, g: &Id32, epoch: u64) -> bool {
        use openmls_traits::storage::{traits, Entity, CURRENT_VERSION};
        #[derive(Serialize, Deserialize)]
        #[serde(transparent)]
        struct AnyBundle(serde_json::Value);
        impl Entity<CURRENT_VERSION> for AnyBundle {}
        impl traits::PskBundle<CURRENT_VERSION> for AnyBundle {}
        let psk = Psk::External(ExternalPsk::new(Profile::psk_id(g, epoch)));
        matches!(
            self.provider.storage().psk::<AnyBundle, Psk>(&psk),
            Ok(Some(_))
        )
    }

    /// Test only: a malicious owner drops `member` from its own send group
    /// without being an admin.
    #[cfg(test)]
    pub(crate) fn drop_from_own_group(
        &mut self,
        uid: &Id32,
        member: &MemberId,
    ) -> Result<Vec<Output>, MmlsError> {
        self.step(|p| {
            p.uni_mut(uid)?.pending_removes.insert(member.clone());
            p.commit_own(*uid, false).map(|_| ())
        })?;
        Ok(self.take_outputs())
    }

    /// Fault injection: the next step's store commit fails (as on a full
    /// disk) and the process carries on.
    #[doc(hidden)]
    pub fn inject_commit_failure(&mut self) {
        self.fail_next_commit = true;
    }

    /// Fault injection for crash tests: the next step's transaction is
    /// dropped as if the process died just before committing it.
    #[doc(hidden)]
    pub fn inject_crash_before_commit(&mut self) {
        self.crash_next_commit = true;
    }

    /// Test only: builds a message a *non-owner* member could send in send
    /// group `g` (an application message, or a commit when `commit`), as a
    /// malicious member would, without changing our own state.
    #[cfg(test)]
    pub(crate) fn forge_in_group(
        &mut self,
        uid: &Id32,
        g: &Id32,
        commit: bool,
    ) -> Result<Vec<u8>, MmlsError> {
        let seq = self
            .uni(uid)?
            .groups
            .get(g)
            .map(|s| s.next_seq)
            .ok_or(MmlsError::UnknownGroup(*g))?;
        let identity = self.identity.clone();
        self.group(g)?;
        let provider = &self.provider;
        let group = self.groups.get_mut(g).ok_or(MmlsError::UnknownGroup(*g))?;
        let aad = Aad {
            seq,
            deps: vec![],
            frontier: vec![],
        };
        group.set_aad(to_cbor(&aad));
        let epoch = group.epoch().as_u64();
        let msg = if commit {
            group
                .commit_builder()
                .force_self_update(true)
                .load_psks(provider.storage())
                .map_err(MmlsError::mls)?
                .build(provider.rand(), provider.crypto(), &identity, |_| true)
                .map_err(MmlsError::mls)?
                .stage_commit(provider)
                .map_err(MmlsError::mls)?
                .into_commit()
        } else {
            let payload = Payload::Text {
                seq: 99,
                body: ByteBuf::from(b"forged".to_vec()),
            };
            group
                .create_message(provider, &identity, &to_cbor(&payload))
                .map_err(MmlsError::mls)?
        };
        let mut e = Envelope::new(
            if commit {
                Kind::Commit
            } else {
                Kind::Application
            },
            tls(&msg)?,
        );
        e.universe = Some(*uid);
        e.group = Some(*g);
        e.epoch = epoch;
        e.seq = seq;
        self.provider.store().rollback();
        self.groups.clear();
        Ok(e.encode())
    }

    /// The send group of `member` in `uid`, as we know it.
    pub fn group_of(&self, uid: &Id32, member: &MemberId) -> Option<Id32> {
        self.state
            .universes
            .get(uid)
            .and_then(|u| u.owner_group.get(member).copied())
    }
}
