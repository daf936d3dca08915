//! The engine's protocol state beside openmls' own: per universe, per send
//! group, and node-wide (KeyPackages, counters).

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct GroupState {
    pub(super) owner: MemberId,
    pub(super) next_seq: u64,
    pub(super) epoch: u64,
    /// Short epoch-authenticator hashes of recent epochs (equivocation check).
    pub(super) auth: BTreeMap<u64, [u8; 8]>,
    /// Oldest epoch whose exported PSK we still hold.
    pub(super) psk_min: u64,
    pub(super) blocked_since: Option<u64>,
    pub(super) last_fetch_at: u64,
    pub(super) stale: bool,
    pub(super) stale_since: Option<u64>,
    /// When the owner last committed (silence detection).
    pub(super) last_commit_at: u64,
    /// Log entries below this seq were deleted by retention (as opposed to
    /// never held, because we joined later): peers asking for them are told
    /// the history is gone.
    #[serde(default)]
    pub(super) pruned_below: u64,
    /// Coarse (epoch, time) checkpoints: at that time that epoch was
    /// current, so every older one had ended (for `psk_max_age_ms`).
    #[serde(default)]
    pub(super) psk_marks: Vec<(u64, u64)>,
    /// The epoch our last own commit's frontier named for this group: the
    /// next commit names it only if it moved since.
    #[serde(default)]
    pub(super) named_epoch: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct UniverseState {
    pub(super) id: Id32,
    pub(super) def: Option<UniverseDef>,
    pub(super) roster: BTreeSet<MemberId>,
    pub(super) own_group: Option<Id32>,
    pub(super) groups: BTreeMap<Id32, GroupState>,
    pub(super) owner_group: BTreeMap<MemberId, Id32>,
    /// Groups that made an MMLS update since our last commit.
    pub(super) pending_imports: BTreeSet<Id32>,
    pub(super) pending_adds: BTreeSet<MemberId>,
    pub(super) pending_removes: BTreeSet<MemberId>,
    /// Rejoin: re-add this member with this KeyPackage.
    pub(super) readds: BTreeMap<MemberId, ByteBuf>,
    pub(super) pending_since: Option<u64>,
    pub(super) last_commit_at: u64,
    pub(super) last_update_at: u64,
    pub(super) next_text_seq: u64,
    /// Where Welcomes for each member sit in our log (to serve fetches).
    pub(super) welcomes: BTreeMap<MemberId, Vec<(Id32, u64)>>,
    pub(super) rejoin_nonces: BTreeMap<MemberId, u64>,
    pub(super) rejoin_requested_at: Option<u64>,
    pub(super) removed: bool,
    pub(super) equivocations: Vec<(MemberId, Id32, u64)>,
    /// Update proposals received in our own group (TLS MLS messages), to
    /// embed in the commit that covers them.
    #[serde(default)]
    pub(super) own_proposals: Vec<ByteBuf>,
    /// Groups where our leaf rotation is proposed but not yet committed.
    #[serde(default)]
    pub(super) leaf_updates: BTreeSet<Id32>,
    /// Policy: an own MMLS update is due (after rejoining).
    #[serde(default)]
    pub(super) update_due: bool,
    /// The highest text number delivered from each owner.
    #[serde(default)]
    pub(super) received_from: BTreeMap<MemberId, u64>,
    /// Rejoiners to re-send our texts to once re-added: after this number.
    #[serde(default)]
    pub(super) resend_after: BTreeMap<MemberId, u64>,
}

impl UniverseState {
    pub(super) fn new(id: Id32) -> Self {
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
    pub(super) fn has_pending(&self) -> bool {
        !self.pending_imports.is_empty()
            || !self.own_proposals.is_empty()
            || !self.pending_adds.is_empty()
            || !self.pending_removes.is_empty()
            || !self.readds.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub(super) struct EngineState {
    pub(super) member: Option<MemberId>,
    pub(super) universes: BTreeMap<Id32, UniverseState>,
    /// Latest last-resort KeyPackage heard from each member (TLS bytes).
    pub(super) known_kps: BTreeMap<MemberId, ByteBuf>,
    /// Our own current last-resort KeyPackage.
    pub(super) my_kp: Option<ByteBuf>,
    /// Hash refs of KeyPackages we made (to recognise our Welcomes).
    pub(super) my_kp_refs: BTreeSet<ByteBuf>,
    /// Those of them that are last-resort (reused across Welcomes).
    #[serde(default)]
    pub(super) last_resort_refs: BTreeSet<ByteBuf>,
    /// Non-last-resort KeyPackages others gave us, once used (never twice).
    pub(super) used_kp_refs: BTreeSet<ByteBuf>,
    pub(super) kp_requested: BTreeMap<MemberId, u64>,
    pub(super) outbox_next: u64,
    pub(super) delivered_next: u64,
    pub(super) rejected_inputs: u64,
}
