//! The engine's protocol state beside openmls' own: per universe, per send
//! group, and node-wide (KeyPackages, counters).

use super::rows::{plain_row, Cell, Journal, Row, RowKey, Rows};
use super::*;
use crate::store::StoreError;

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
    /// When its owner last renewed its keys (a commit with a path) as far
    /// as we saw; None: not since we joined. Shown in the health view.
    #[serde(default)]
    pub(super) last_key_update: Option<u64>,
    /// Its ciphersuite (code point). Rows written before suite choice have
    /// none: every group was 0x0001 then.
    #[serde(default = "mandatory_suite")]
    pub(super) suite: u16,
}

fn mandatory_suite() -> u16 {
    crate::ciphersuites::X25519_AES128GCM
}

/// A member's KeyPackages by ciphersuite (TLS bytes): its last-resort ones
/// as it announced them together (`Participant::announcement`), or the
/// single-use ones it handed to us (`kp_pool`). A row written before suite
/// choice is one KeyPackage, read as the member's only one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct MemberKps(pub(super) BTreeMap<u16, ByteBuf>);

impl Serialize for MemberKps {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for MemberKps {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = MemberKps;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("KeyPackages by ciphersuite, or one KeyPackage")
            }
            fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<MemberKps, E> {
                Ok(MemberKps::legacy(ByteBuf::from(b.to_vec())))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<MemberKps, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = m.next_entry::<u16, ByteBuf>()? {
                    out.insert(k, v);
                }
                Ok(MemberKps(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl MemberKps {
    /// One KeyPackage of the time before suite choice (then always
    /// 0x0001; its header says which).
    pub(super) fn legacy(kp: ByteBuf) -> MemberKps {
        let suite = crate::ciphersuites::of_key_package(&kp).unwrap_or_else(mandatory_suite);
        MemberKps(BTreeMap::from([(suite, kp)]))
    }
}

plain_row!(MemberKps);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct UniverseState {
    pub(super) id: Id32,
    pub(super) def: Option<UniverseDef>,
    pub(super) roster: BTreeSet<MemberId>,
    pub(super) own_group: Option<Id32>,
    /// Its send groups: rows of their own (`Table::Groups`), journaled
    /// apart from the universe's row. A legacy whole-state blob carries them
    /// inline; they are read from it once, when it is migrated.
    #[serde(default, skip_serializing, deserialize_with = "legacy_groups")]
    pub(super) groups: Rows<Id32, GroupState>,
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
    /// Text counters: rows of their own (`TextKey`), so that sending or
    /// receiving a text writes one small row, not the universe's.
    #[serde(skip)]
    pub(super) texts: UniverseTexts,
    /// Where the counters lived before they had rows: read once, on load.
    #[serde(default, rename = "next_text_seq", skip_serializing)]
    legacy_next_text_seq: Option<u64>,
    /// Where Welcomes for each member sit in our log (to serve fetches).
    pub(super) welcomes: BTreeMap<MemberId, Vec<(Id32, u64)>>,
    pub(super) rejoin_nonces: BTreeMap<MemberId, u64>,
    pub(super) rejoin_requested_at: Option<u64>,
    /// Rejoin requests sent since no group was last stale: each waits
    /// twice as long as the one before (see `rejoin_backoff`), so a member
    /// whose requests do not get through (a saturated link, an owner out of
    /// reach) does not re-send one every `rejoin_after_ms` and add to the
    /// congestion that stalled it.
    #[serde(default)]
    pub(super) rejoin_attempts: u32,
    pub(super) removed: bool,
    pub(super) equivocations: Vec<(MemberId, Id32, u64)>,
    /// Update proposals received in our own group (TLS MLS messages), to
    /// embed in the commit that covers them.
    #[serde(default)]
    pub(super) own_proposals: Vec<ByteBuf>,
    /// Groups where our leaf rotation is proposed but not yet committed,
    /// and when to re-send it there.
    #[serde(default)]
    pub(super) leaf_updates: Reproposals,
    /// Policy: an own MMLS update is due (after rejoining).
    #[serde(default)]
    pub(super) update_due: bool,
    #[serde(default, rename = "received_from", skip_serializing)]
    legacy_received_from: BTreeMap<MemberId, u64>,
    /// Rejoiners to re-send our texts to once re-added: after this number.
    #[serde(default)]
    pub(super) resend_after: BTreeMap<MemberId, u64>,
    /// Federation: the certificate each member last presented (validated).
    #[serde(default)]
    pub(super) certs: BTreeMap<MemberId, MemberCert>,
    /// Our send group's trust anchors differ from the universe's: the next
    /// own commit carries a GroupContextExtensions proposal.
    #[serde(default)]
    pub(super) anchors_pending: bool,
    /// Where the last Welcomes of each send group sit in our log, ours or
    /// not: a member whose copy was lost asks for a group it holds nothing
    /// of, and any member can hand it over, not only the owner (who may be
    /// out of its reach for hours).
    #[serde(default)]
    pub(super) welcome_log: BTreeMap<Id32, Vec<u64>>,
    /// Send groups dropped for good: an owner that lost its state and made
    /// a new one, a removed member's, a refused suite's. A Welcome into one
    /// (an old copy a peer still holds) must not bring it back: joining it
    /// would displace the owner's live group.
    #[serde(default)]
    pub(super) retired: BTreeSet<Id32>,
    /// Groups given up on for a PSK gap, whose rejoin request is still to
    /// be sent (see `psk_gap`).
    #[serde(default)]
    pub(super) gap_rejoins: BTreeSet<Id32>,
    /// Members whose rejoin requests we saw, and the owners they asked:
    /// we do not import those owners' groups meanwhile (see `psk_gap`).
    #[serde(default)]
    pub(super) rejoining: BTreeMap<MemberId, super::psk_gap::Rejoining>,
}

impl UniverseState {
    pub(super) fn new(id: Id32) -> Self {
        UniverseState {
            id,
            def: None,
            roster: BTreeSet::new(),
            own_group: None,
            groups: Rows::default(),
            owner_group: BTreeMap::new(),
            pending_imports: BTreeSet::new(),
            pending_adds: BTreeSet::new(),
            pending_removes: BTreeSet::new(),
            readds: BTreeMap::new(),
            pending_since: None,
            last_commit_at: 0,
            last_update_at: 0,
            texts: UniverseTexts::default(),
            legacy_next_text_seq: None,
            welcomes: BTreeMap::new(),
            rejoin_nonces: BTreeMap::new(),
            rejoin_requested_at: None,
            rejoin_attempts: 0,
            removed: false,
            equivocations: vec![],
            own_proposals: vec![],
            leaf_updates: Reproposals::default(),
            update_due: false,
            legacy_received_from: BTreeMap::new(),
            resend_after: BTreeMap::new(),
            certs: BTreeMap::new(),
            anchors_pending: false,
            welcome_log: BTreeMap::new(),
            retired: BTreeSet::new(),
            gap_rejoins: BTreeSet::new(),
            rejoining: BTreeMap::new(),
        }
    }

    /// Drops send group `g` for good (see [`retired`](Self::retired)).
    pub(super) fn retire(&mut self, g: Id32) {
        self.groups.remove(&g);
        self.pending_imports.remove(&g);
        self.welcome_log.remove(&g);
        self.owner_group.retain(|_, og| *og != g);
        if self.retired.len() >= MAX_RETIRED_GROUPS {
            self.retired.pop_first();
        }
        self.retired.insert(g);
    }
    /// Moves counters read from an older universe row under `stored`, the
    /// counter rows (newer wherever both have a value).
    fn adopt_texts(&mut self, stored: Rows<TextKey, u64>) {
        let mut legacy: BTreeMap<TextKey, u64> = std::mem::take(&mut self.legacy_received_from)
            .into_iter()
            .map(|(m, v)| (TextKey::From(m), v))
            .collect();
        if let Some(n) = self.legacy_next_text_seq.take() {
            legacy.insert(TextKey::Next, n);
        }
        if legacy.is_empty() {
            self.texts = UniverseTexts(stored);
            return;
        }
        // Written with the next step, so the universe row can drop them.
        for (k, v) in stored.iter() {
            legacy.insert(k.clone(), *v);
        }
        self.texts = UniverseTexts(Rows::fresh(legacy));
    }

    pub(super) fn has_pending(&self) -> bool {
        !self.pending_imports.is_empty() || self.has_pending_beyond_imports()
    }

    /// PROTECT commits what is pending first (the draft: "before encrypting
    /// an application message, Bob should incorporate any MMLS updates he
    /// has received"), except imports an import window lets wait.
    pub(super) fn commit_due_before_send(&self, cfg: &super::Config) -> bool {
        self.has_pending_beyond_imports()
            || (!self.pending_imports.is_empty() && cfg.import_window_ms.is_none())
    }

    /// Pending changes other than PSK imports: these never wait for an
    /// import window (a removal, above all, must be in before we send).
    pub(super) fn has_pending_beyond_imports(&self) -> bool {
        !self.own_proposals.is_empty()
            || !self.pending_adds.is_empty()
            || !self.pending_removes.is_empty()
            || !self.readds.is_empty()
            || self.anchors_pending
    }
}

fn legacy_groups<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Rows<Id32, GroupState>, D::Error> {
    Ok(Rows::fresh(BTreeMap::deserialize(d)?))
}

plain_row!(GroupState);

impl RowKey for u16 {
    fn to_key(&self) -> Vec<u8> {
        self.to_be_bytes().to_vec()
    }
    fn from_key(k: &[u8]) -> Option<Self> {
        Some(u16::from_be_bytes(k.try_into().ok()?))
    }
}

impl Row for UniverseState {
    fn undo_image(&mut self) -> Self {
        // Its groups and counters have their own journals: leave them out.
        let groups = std::mem::take(&mut self.groups);
        let texts = std::mem::take(&mut self.texts);
        let image = self.clone();
        self.groups = groups;
        self.texts = texts;
        image
    }
    fn restore(&mut self, image: Self) {
        let groups = std::mem::take(&mut self.groups);
        let texts = std::mem::take(&mut self.texts);
        *self = image;
        self.groups = groups;
        self.texts = texts;
    }
}

/// A universe's text counters, one row each (`TextKey`).
#[derive(Debug, Clone, Default)]
pub(super) struct UniverseTexts(pub(super) Rows<TextKey, u64>);

impl UniverseTexts {
    /// The number our next own text takes.
    pub(super) fn next_text_seq(&self) -> u64 {
        self.0.get(&TextKey::Next).copied().unwrap_or(1)
    }

    /// Takes the next own text number.
    pub(super) fn take_text_seq(&mut self) -> u64 {
        let next = self.0.get_or_insert_with(TextKey::Next, || 1);
        let seq = *next;
        *next += 1;
        seq
    }

    /// The highest text number delivered from `owner`.
    pub(super) fn received_from(&self, owner: &MemberId) -> u64 {
        self.0
            .get(&TextKey::From(owner.clone()))
            .copied()
            .unwrap_or(0)
    }

    /// Every owner we received texts from, with the highest number.
    pub(super) fn received_all(&self) -> impl Iterator<Item = (&MemberId, u64)> {
        self.0.iter().filter_map(|(k, v)| match k {
            TextKey::From(m) => Some((m, *v)),
            TextKey::Next => None,
        })
    }

    /// Notes that text `seq` of `owner` was delivered.
    pub(super) fn note_received(&mut self, owner: &MemberId, seq: u64) {
        let high = self
            .0
            .get_or_insert_with(TextKey::From(owner.clone()), || 0);
        *high = (*high).max(seq);
    }
}

/// A universe's text counter row: our next own text number, or the highest
/// number delivered from an owner.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum TextKey {
    Next,
    From(MemberId),
}

impl RowKey for TextKey {
    fn to_key(&self) -> Vec<u8> {
        match self {
            TextKey::Next => b"next".to_vec(),
            TextKey::From(m) => {
                let mut k = b"from/".to_vec();
                k.extend_from_slice(m.as_str().as_bytes());
                k
            }
        }
    }
    fn from_key(k: &[u8]) -> Option<Self> {
        if k == b"next" {
            return Some(TextKey::Next);
        }
        MemberId::from_key(k.strip_prefix(b"from/")?).map(TextKey::From)
    }
}

/// Where a universe's text counters live in `Table::Meta`.
fn texts_prefix(uid: &Id32) -> Vec<u8> {
    let mut k = TEXTS.to_vec();
    k.extend_from_slice(uid.as_bytes());
    k.push(b'/');
    k
}

/// Node-wide state that is small and changes often (counters).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub(super) struct NodeState {
    pub(super) member: Option<MemberId>,
    /// Where our KeyPackage lived before it had a row of its own
    /// (`EngineState::my_kps`): read once, on load.
    #[serde(default, rename = "my_kp", skip_serializing)]
    legacy_my_kp: Option<ByteBuf>,
    pub(super) outbox_next: u64,
    pub(super) delivered_next: u64,
    pub(super) rejected_inputs: u64,
}

plain_row!(NodeState, Option<ByteBuf>);

/// The engine's state, one store row per entity (see `rows`).
#[derive(Debug, Default)]
pub(super) struct EngineState {
    pub(super) node: Cell<NodeState>,
    /// Our own current last-resort KeyPackage in each ciphersuite we
    /// implement: apart from the counters, which change with every message.
    pub(super) my_kps: Rows<u16, ByteBuf>,
    pub(super) universes: Rows<Id32, UniverseState>,
    /// Latest last-resort KeyPackages heard from each member, by suite.
    pub(super) known_kps: Rows<MemberId, MemberKps>,
    /// Hash refs of KeyPackages we made (to recognise our Welcomes).
    pub(super) my_kp_refs: Rows<ByteBuf, ()>,
    /// Those of them that are last-resort (reused across Welcomes).
    pub(super) last_resort_refs: Rows<ByteBuf, ()>,
    /// Non-last-resort KeyPackages others gave us, once used (never twice).
    pub(super) used_kp_refs: Rows<ByteBuf, ()>,
    pub(super) kp_requested: Rows<MemberId, u64>,
    /// Single-use KeyPackages: ours (fresh, handed out) and others' handed
    /// to us (`kp_pool`).
    pub(super) pool: super::kp_pool::KpPool,
    /// The newest device-link statement heard about each device
    /// (`participant/devices.rs`).
    pub(super) device_links: Rows<MemberId, super::devices::KnownLink>,
}

/// The whole-state blob of stores written before state was kept in rows.
#[derive(Deserialize)]
struct LegacyState {
    member: Option<MemberId>,
    universes: BTreeMap<Id32, UniverseState>,
    known_kps: BTreeMap<MemberId, ByteBuf>,
    my_kp: Option<ByteBuf>,
    my_kp_refs: BTreeSet<ByteBuf>,
    #[serde(default)]
    last_resort_refs: BTreeSet<ByteBuf>,
    used_kp_refs: BTreeSet<ByteBuf>,
    kp_requested: BTreeMap<MemberId, u64>,
    outbox_next: u64,
    delivered_next: u64,
    rejected_inputs: u64,
}

/// Where each part lives: `Table::Meta` holds the node row and the small
/// per-member sets under these prefixes.
/// Retired group ids a universe remembers (an arbitrary one goes beyond).
const MAX_RETIRED_GROUPS: usize = 1024;
const NODE_KEY: &[u8] = b"node";
const LEGACY_KEY: &[u8] = b"engine";
const KP_REQUESTED: &[u8] = b"kp-requested/";
const MY_KP_REFS: &[u8] = b"kp-ref/mine/";
/// Our KeyPackage before suite choice (one, in 0x0001); now one row per
/// suite under `MY_KPS`.
const MY_KP: &[u8] = b"my-kp";
const MY_KPS: &[u8] = b"my-kp/";
const TEXTS: &[u8] = b"texts/";
const LAST_RESORT_REFS: &[u8] = b"kp-ref/last-resort/";
const USED_KP_REFS: &[u8] = b"kp-ref/used/";
const DEVICE_LINKS: &[u8] = b"device-link/";

fn set(refs: BTreeSet<ByteBuf>) -> Rows<ByteBuf, ()> {
    Rows::fresh(refs.into_iter().map(|r| (r, ())).collect())
}

impl EngineState {
    /// Loads the state from its rows, migrating a legacy blob if the store
    /// has one (the migrated rows are written with the first step).
    pub(super) fn load(store: &Store) -> Result<EngineState, StoreError> {
        if let Some(b) = store.get(Table::Meta, LEGACY_KEY)? {
            let old: LegacyState = from_cbor(&b).map_err(|e| {
                StoreError::Corrupt(format!(
                    "the engine state of this data dir (an older format) does not parse: {e}"
                ))
            })?;
            store.delete(Table::Meta, LEGACY_KEY);
            let mut node = Cell::new(NodeState {
                member: old.member,
                legacy_my_kp: None,
                outbox_next: old.outbox_next,
                delivered_next: old.delivered_next,
                rejected_inputs: old.rejected_inputs,
            });
            node.get_mut();
            let mut my_kps = Rows::default();
            if let Some(kp) = old.my_kp {
                my_kps.insert(crate::ciphersuites::X25519_AES128GCM, kp);
            }
            let mut universes = old.universes;
            for u in universes.values_mut() {
                u.adopt_texts(Rows::default());
            }
            return Ok(EngineState {
                node,
                my_kps,
                universes: Rows::fresh(universes),
                known_kps: Rows::fresh(
                    old.known_kps
                        .into_iter()
                        .map(|(m, kp)| (m, MemberKps::legacy(kp)))
                        .collect(),
                ),
                my_kp_refs: set(old.my_kp_refs),
                last_resort_refs: set(old.last_resort_refs),
                used_kp_refs: set(old.used_kp_refs),
                kp_requested: Rows::fresh(old.kp_requested),
                pool: Default::default(),
                device_links: Rows::default(),
            });
        }
        let mut node: NodeState = match store.get(Table::Meta, NODE_KEY)? {
            Some(b) => {
                from_cbor(&b).map_err(|e| StoreError::Corrupt(format!("engine node row: {e}")))?
            }
            None => NodeState::default(),
        };
        let mut my_kps: Rows<u16, ByteBuf> = Rows::load(store, Table::Meta, MY_KPS)?;
        // Our one KeyPackage of before suite choice (0x0001), in its own
        // row or, earlier still, in the node row: moved to the per-suite
        // rows with the step that `open` commits at once (which also
        // rewrites the node row without it, so it is never read again).
        let node_kp = node.legacy_my_kp.take();
        let legacy_kp: Option<ByteBuf> = match store.get(Table::Meta, MY_KP)? {
            Some(b) => {
                store.delete(Table::Meta, MY_KP);
                from_cbor(&b)
                    .map_err(|e| StoreError::Corrupt(format!("engine KeyPackage row: {e}")))?
            }
            None => node_kp.clone(),
        };
        if let (Some(kp), true) = (legacy_kp, my_kps.keys().next().is_none()) {
            my_kps.insert(crate::ciphersuites::X25519_AES128GCM, kp);
        }
        let mut node = Cell::new(node);
        if node_kp.is_some() {
            node.get_mut();
        }
        let mut universes: Rows<Id32, UniverseState> = Rows::load(store, Table::Universes, &[])?;
        for (uid, u) in universes.iter_untracked_mut() {
            u.adopt_texts(Rows::load(store, Table::Meta, &texts_prefix(uid))?);
        }
        let groups: Rows<GroupKey, GroupState> = Rows::load(store, Table::Groups, &[])?;
        let mut by_universe: BTreeMap<Id32, BTreeMap<Id32, GroupState>> = BTreeMap::new();
        for (k, g) in groups.iter() {
            by_universe.entry(k.0).or_default().insert(k.1, g.clone());
        }
        for (uid, gs) in by_universe {
            if let Some(u) = universes.get_untracked_mut(&uid) {
                u.groups = Rows::from_committed(gs);
            }
        }
        Ok(EngineState {
            node,
            my_kps,
            universes,
            known_kps: Rows::load(store, Table::KeyPackages, &[])?,
            my_kp_refs: Rows::load(store, Table::Meta, MY_KP_REFS)?,
            last_resort_refs: Rows::load(store, Table::Meta, LAST_RESORT_REFS)?,
            used_kp_refs: Rows::load(store, Table::Meta, USED_KP_REFS)?,
            kp_requested: Rows::load(store, Table::Meta, KP_REQUESTED)?,
            pool: super::kp_pool::KpPool::load(store)?,
            device_links: Rows::load(store, Table::Meta, DEVICE_LINKS)?,
        })
    }

    /// The state from its rows alone, ignoring a legacy blob (tests).
    #[cfg(test)]
    fn load_rows_only(store: &Store) -> EngineState {
        let mut universes: Rows<Id32, UniverseState> =
            Rows::load(store, Table::Universes, &[]).expect("rows");
        universes.settle();
        EngineState {
            universes,
            ..EngineState::default()
        }
    }

    /// Writes the rows this step touched into the store's pending step.
    pub(super) fn write(&self, store: &Store) {
        if self.node.is_touched() {
            store.put(Table::Meta, NODE_KEY, &to_cbor(self.node.get()));
        }
        self.my_kps.write(store, Table::Meta, MY_KPS);
        if self.universes.is_touched() {
            self.universes.write(store, Table::Universes, &[]);
            for gone in self.universes.removed() {
                for g in gone.groups.keys() {
                    store.delete(Table::Groups, &GroupKey(gone.id, *g).to_key());
                }
                let prefix = texts_prefix(&gone.id);
                for k in gone.texts.0.keys() {
                    let mut key = prefix.clone();
                    key.extend_from_slice(&k.to_key());
                    store.delete(Table::Meta, &key);
                }
            }
        }
        for (uid, u) in self.universes.iter() {
            if u.groups.is_touched() {
                u.groups.write(store, Table::Groups, uid.as_bytes());
            }
            if u.texts.0.is_touched() {
                u.texts.0.write(store, Table::Meta, &texts_prefix(uid));
            }
        }
        self.known_kps.write(store, Table::KeyPackages, &[]);
        self.my_kp_refs.write(store, Table::Meta, MY_KP_REFS);
        self.last_resort_refs
            .write(store, Table::Meta, LAST_RESORT_REFS);
        self.used_kp_refs.write(store, Table::Meta, USED_KP_REFS);
        self.kp_requested.write(store, Table::Meta, KP_REQUESTED);
        self.pool.write(store);
        self.device_links.write(store, Table::Meta, DEVICE_LINKS);
    }

    /// Serialized size of every row (metrics only: serializes everything).
    pub(super) fn size(&self) -> usize {
        let mut n = to_cbor(self.node.get()).len()
            + self.my_kps.values().map(|k| k.len() + 8).sum::<usize>();
        for u in self.universes.values() {
            n += to_cbor(u).len() + u.texts.0.values().count() * 16;
            n += u.groups.values().map(|g| to_cbor(g).len()).sum::<usize>();
        }
        n += self
            .known_kps
            .values()
            .map(|k| k.0.values().map(|b| b.len() + 8).sum::<usize>() + 50)
            .sum::<usize>();
        n + self.pool.size()
            + self.kp_requested.values().count() * 60
            + self.device_links.values().count() * 300
            + (self.my_kp_refs.keys().count()
                + self.last_resort_refs.keys().count()
                + self.used_kp_refs.keys().count())
                * 40
    }

    /// Whether any row was touched since the last commit or rollback.
    pub(super) fn is_touched(&self) -> bool {
        self.node.is_touched()
            || self.my_kps.is_touched()
            || self.universes.is_touched()
            || self
                .universes
                .values()
                .any(|u| u.groups.is_touched() || u.texts.0.is_touched())
            || self.known_kps.is_touched()
            || self.my_kp_refs.is_touched()
            || self.last_resort_refs.is_touched()
            || self.used_kp_refs.is_touched()
            || self.kp_requested.is_touched()
            || self.pool.is_touched()
            || self.device_links.is_touched()
    }

    fn each_journal(&mut self, f: impl Fn(&mut dyn Journal)) {
        f(&mut self.node);
        f(&mut self.my_kps);
        f(&mut self.universes);
        for (_, u) in self.universes.iter_untracked_mut() {
            f(&mut u.groups);
            f(&mut u.texts.0);
        }
        f(&mut self.known_kps);
        f(&mut self.my_kp_refs);
        f(&mut self.last_resort_refs);
        f(&mut self.used_kp_refs);
        f(&mut self.kp_requested);
        f(&mut self.device_links);
        self.pool.each_journal(&f);
    }

    /// The step is durable.
    pub(super) fn settle(&mut self) {
        self.each_journal(|j| j.settle());
    }

    /// The step failed: every touched row back to its committed value.
    pub(super) fn rollback(&mut self) {
        // Universes first: a universe removed in the step comes back with
        // its groups, whose own journal then rolls back too.
        self.universes.rollback();
        self.each_journal(|j| j.rollback());
    }
}

/// A send group's row key: universe, then group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct GroupKey(pub(super) Id32, pub(super) Id32);

impl RowKey for GroupKey {
    fn to_key(&self) -> Vec<u8> {
        let mut k = self.0.as_bytes().to_vec();
        k.extend_from_slice(self.1.as_bytes());
        k
    }
    fn from_key(k: &[u8]) -> Option<Self> {
        Some(GroupKey(
            Id32::from_slice(k.get(..32)?)?,
            Id32::from_slice(k.get(32..)?)?,
        ))
    }
}

#[cfg(test)]
mod tests;
