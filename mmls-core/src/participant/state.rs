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
}

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
            removed: false,
            equivocations: vec![],
            own_proposals: vec![],
            leaf_updates: BTreeSet::new(),
            update_due: false,
            legacy_received_from: BTreeMap::new(),
            resend_after: BTreeMap::new(),
            certs: BTreeMap::new(),
            anchors_pending: false,
        }
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
        !self.pending_imports.is_empty()
            || !self.own_proposals.is_empty()
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
    /// (`EngineState::my_kp`): read once, on load.
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
    /// Our own current last-resort KeyPackage: apart from the counters,
    /// which change with every message.
    pub(super) my_kp: Cell<Option<ByteBuf>>,
    pub(super) universes: Rows<Id32, UniverseState>,
    /// Latest last-resort KeyPackage heard from each member (TLS bytes).
    pub(super) known_kps: Rows<MemberId, ByteBuf>,
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
const NODE_KEY: &[u8] = b"node";
const LEGACY_KEY: &[u8] = b"engine";
const KP_REQUESTED: &[u8] = b"kp-requested/";
const MY_KP_REFS: &[u8] = b"kp-ref/mine/";
const MY_KP: &[u8] = b"my-kp";
const TEXTS: &[u8] = b"texts/";
const LAST_RESORT_REFS: &[u8] = b"kp-ref/last-resort/";
const USED_KP_REFS: &[u8] = b"kp-ref/used/";

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
            let mut my_kp = Cell::new(old.my_kp);
            my_kp.get_mut();
            let mut universes = old.universes;
            for u in universes.values_mut() {
                u.adopt_texts(Rows::default());
            }
            return Ok(EngineState {
                node,
                my_kp,
                universes: Rows::fresh(universes),
                known_kps: Rows::fresh(old.known_kps),
                my_kp_refs: set(old.my_kp_refs),
                last_resort_refs: set(old.last_resort_refs),
                used_kp_refs: set(old.used_kp_refs),
                kp_requested: Rows::fresh(old.kp_requested),
                pool: Default::default(),
            });
        }
        let mut node: NodeState = match store.get(Table::Meta, NODE_KEY)? {
            Some(b) => {
                from_cbor(&b).map_err(|e| StoreError::Corrupt(format!("engine node row: {e}")))?
            }
            None => NodeState::default(),
        };
        let my_kp = match store.get(Table::Meta, MY_KP)? {
            Some(b) => Cell::new(
                from_cbor(&b)
                    .map_err(|e| StoreError::Corrupt(format!("engine KeyPackage row: {e}")))?,
            ),
            None => {
                // Kept in the node row before: moved to its own with the
                // next step.
                let mut c = Cell::new(node.legacy_my_kp.take());
                if c.get().is_some() {
                    c.get_mut();
                }
                c
            }
        };
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
            node: Cell::new(node),
            my_kp,
            universes,
            known_kps: Rows::load(store, Table::KeyPackages, &[])?,
            my_kp_refs: Rows::load(store, Table::Meta, MY_KP_REFS)?,
            last_resort_refs: Rows::load(store, Table::Meta, LAST_RESORT_REFS)?,
            used_kp_refs: Rows::load(store, Table::Meta, USED_KP_REFS)?,
            kp_requested: Rows::load(store, Table::Meta, KP_REQUESTED)?,
            pool: super::kp_pool::KpPool::load(store)?,
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
        if self.my_kp.is_touched() {
            store.put(Table::Meta, MY_KP, &to_cbor(self.my_kp.get()));
        }
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
    }

    /// Serialized size of every row (metrics only: serializes everything).
    pub(super) fn size(&self) -> usize {
        let mut n = to_cbor(self.node.get()).len() + to_cbor(self.my_kp.get()).len();
        for u in self.universes.values() {
            n += to_cbor(u).len() + u.texts.0.values().count() * 16;
            n += u.groups.values().map(|g| to_cbor(g).len()).sum::<usize>();
        }
        n += self.known_kps.values().map(|k| k.len() + 50).sum::<usize>();
        n + self.pool.size()
            + self.kp_requested.values().count() * 60
            + (self.my_kp_refs.keys().count()
                + self.last_resort_refs.keys().count()
                + self.used_kp_refs.keys().count())
                * 40
    }

    /// Whether any row was touched since the last commit or rollback.
    pub(super) fn is_touched(&self) -> bool {
        self.node.is_touched()
            || self.my_kp.is_touched()
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
    }

    fn each_journal(&mut self, f: impl Fn(&mut dyn Journal)) {
        f(&mut self.node);
        f(&mut self.my_kp);
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
mod tests {
    use super::super::rows::prefix_end;
    use super::*;
    use crate::participant::Participant;
    use crate::profile::Profile;
    use crate::testkit::{config, view, Net};
    use ciborium::Value;

    /// The whole-state blob an older engine wrote for `store`'s rows.
    fn legacy_blob(store: &Store) -> Vec<u8> {
        let st = EngineState::load(store).expect("rows load");
        let node = st.node.get();
        let cbor = |v: &dyn erased::Ser| -> Value { v.value() };
        let mut universes = vec![];
        for (uid, u) in st.universes.iter() {
            let Value::Map(mut fields) = cbor(u) else {
                panic!("a universe row is a map")
            };
            let groups: Vec<(Value, Value)> =
                u.groups.iter().map(|(g, s)| (cbor(g), cbor(s))).collect();
            fields.push((Value::Text("groups".into()), Value::Map(groups)));
            fields.push((
                Value::Text("next_text_seq".into()),
                cbor(&u.texts.next_text_seq()),
            ));
            let received: BTreeMap<&MemberId, u64> = u.texts.received_all().collect();
            fields.push((Value::Text("received_from".into()), cbor(&received)));
            universes.push((cbor(uid), Value::Map(fields)));
        }
        let set = |r: &Rows<ByteBuf, ()>| Value::Array(r.keys().map(|k| cbor(k)).collect());
        let blob = Value::Map(vec![
            (Value::Text("member".into()), cbor(&node.member)),
            (Value::Text("universes".into()), Value::Map(universes)),
            (
                Value::Text("known_kps".into()),
                Value::Map(
                    st.known_kps
                        .iter()
                        .map(|(m, k)| (cbor(m), cbor(k)))
                        .collect(),
                ),
            ),
            (Value::Text("my_kp".into()), cbor(st.my_kp.get())),
            (Value::Text("my_kp_refs".into()), set(&st.my_kp_refs)),
            (
                Value::Text("last_resort_refs".into()),
                set(&st.last_resort_refs),
            ),
            (Value::Text("used_kp_refs".into()), set(&st.used_kp_refs)),
            (
                Value::Text("kp_requested".into()),
                Value::Map(
                    st.kp_requested
                        .iter()
                        .map(|(m, t)| (cbor(m), cbor(t)))
                        .collect(),
                ),
            ),
            (Value::Text("outbox_next".into()), cbor(&node.outbox_next)),
            (
                Value::Text("delivered_next".into()),
                cbor(&node.delivered_next),
            ),
            (
                Value::Text("rejected_inputs".into()),
                cbor(&node.rejected_inputs),
            ),
        ]);
        let mut out = vec![];
        ciborium::into_writer(&blob, &mut out).expect("encode");
        out
    }

    mod erased {
        pub trait Ser {
            fn value(&self) -> ciborium::Value;
        }
        impl<T: serde::Serialize> Ser for T {
            fn value(&self) -> ciborium::Value {
                ciborium::Value::serialized(self).expect("serializable")
            }
        }
    }

    /// Removes every engine row, as a store written by an older engine
    /// would have none.
    fn drop_rows(store: &Store) {
        for t in [
            Table::Universes,
            Table::Groups,
            Table::KeyPackages,
            Table::Meta,
        ] {
            for (k, _) in store.range(t, &[], None, usize::MAX).expect("range") {
                store.delete(t, &k);
            }
        }
    }

    #[test]
    fn a_legacy_state_blob_is_migrated_to_rows_and_the_node_carries_on() {
        let mut net = Net::new(3);
        let uid = net.universe(Profile::Mmls00);
        net.send(1, &uid, "before");
        net.run();
        net.settle();
        let before = view(net.node(0), &uid);
        let status_before = net.node(0).status(&uid).expect("status");

        let store = net.stores[0].clone();
        let blob = legacy_blob(&store);
        drop_rows(&store);
        store.put(Table::Meta, LEGACY_KEY, &blob);
        store.commit().expect("commit");
        net.nodes[0] = None;
        // Nothing of the rows is left: only the blob can bring the state back.
        assert!(EngineState::load_rows_only(&store)
            .universes
            .iter()
            .next()
            .is_none());

        let (p, outs) = Participant::open(net.ids[0].clone(), store.clone(), config(), net.now)
            .expect("a legacy store opens");
        net.nodes[0] = Some(p);
        net.absorb(0, outs);
        assert_eq!(net.node(0).status(&uid).expect("status"), status_before);
        assert_eq!(view(net.node(0), &uid), before);
        // The blob is gone and the rows are written.
        assert!(store.get(Table::Meta, LEGACY_KEY).expect("get").is_none());
        assert!(store
            .get(Table::Universes, uid.as_bytes())
            .expect("get")
            .is_some());

        // It keeps working: messages both ways, and after another restart.
        net.send(0, &uid, "after, from 0");
        net.send(2, &uid, "after, from 2");
        net.run();
        net.settle();
        assert!(net.texts(0).contains(&"after, from 2".to_string()));
        assert!(net.texts(1).contains(&"after, from 0".to_string()));
        net.nodes[0] = None;
        let (p, _) = Participant::open(net.ids[0].clone(), store, config(), net.now)
            .expect("reopen from rows");
        net.nodes[0] = Some(p);
        assert_eq!(
            net.node(0).status(&uid).expect("status").groups.len(),
            status_before.groups.len()
        );
        net.assert_consistent(&uid);
    }

    /// Rewrites `store`'s rows as the first row format wrote them: text
    /// counters inside each universe row, our KeyPackage inside the node
    /// row, neither with rows of its own.
    fn to_first_row_format(store: &Store) {
        let st = EngineState::load(store).expect("rows load");
        for (uid, u) in st.universes.iter() {
            let Value::Map(mut fields) = Value::serialized(u).expect("row") else {
                panic!("a universe row is a map")
            };
            fields.push((
                Value::Text("next_text_seq".into()),
                Value::serialized(&u.texts.next_text_seq()).expect("value"),
            ));
            let received: BTreeMap<&MemberId, u64> = u.texts.received_all().collect();
            fields.push((
                Value::Text("received_from".into()),
                Value::serialized(&received).expect("value"),
            ));
            let mut row = vec![];
            ciborium::into_writer(&Value::Map(fields), &mut row).expect("encode");
            store.put(Table::Universes, uid.as_bytes(), &row);
        }
        let Value::Map(mut node) = Value::serialized(st.node.get()).expect("row") else {
            panic!("the node row is a map")
        };
        node.push((
            Value::Text("my_kp".into()),
            Value::serialized(st.my_kp.get()).expect("value"),
        ));
        let mut row = vec![];
        ciborium::into_writer(&Value::Map(node), &mut row).expect("encode");
        store.put(Table::Meta, NODE_KEY, &row);
        store.delete(Table::Meta, MY_KP);
        let texts_end = prefix_end(TEXTS);
        for (k, _) in store
            .range(Table::Meta, TEXTS, texts_end.as_deref(), usize::MAX)
            .expect("range")
        {
            store.delete(Table::Meta, &k);
        }
        store.commit().expect("commit");
    }

    #[test]
    fn rows_of_the_first_row_format_open_with_their_counters_and_key_package() {
        let mut net = Net::new(3);
        let uid = net.universe(Profile::Mmls00);
        net.send(0, &uid, "mine");
        net.send(1, &uid, "from 1");
        net.send(2, &uid, "from 2");
        net.send(2, &uid, "from 2 again");
        net.run();
        net.settle();
        let before = view(net.node(0), &uid);
        let status_before = net.node(0).status(&uid).expect("status");
        let acks_before = net.node(0).received_acks(&uid);
        assert_eq!(acks_before.len(), 2, "{acks_before:?}");
        let kp_before = net.node(0).state.my_kp.get().clone();
        assert!(kp_before.is_some());

        let store = net.stores[0].clone();
        to_first_row_format(&store);
        net.nodes[0] = None;
        let (p, outs) = Participant::open(net.ids[0].clone(), store.clone(), config(), net.now)
            .expect("first-format rows open");
        net.nodes[0] = Some(p);
        net.absorb(0, outs);
        assert_eq!(net.node(0).status(&uid).expect("status"), status_before);
        assert_eq!(net.node(0).received_acks(&uid), acks_before);
        assert_eq!(net.node(0).state.my_kp.get(), &kp_before);
        assert_eq!(view(net.node(0), &uid), before);
        // Moved to rows of their own.
        assert!(store.get(Table::Meta, MY_KP).expect("get").is_some());
        assert!(!store
            .range(Table::Meta, TEXTS, prefix_end(TEXTS).as_deref(), 1)
            .expect("range")
            .is_empty());

        // The numbering carries on where it was: no text number twice.
        net.send(0, &uid, "mine, after");
        net.run();
        net.settle();
        assert_eq!(
            net.node(0).status(&uid).expect("status").messages_sent,
            status_before.messages_sent + 1
        );
        assert!(net.texts(1).contains(&"mine, after".to_string()));
        net.assert_consistent(&uid);
    }

    #[test]
    fn an_unreadable_legacy_blob_is_a_typed_error_saying_what_it_is() {
        let store = Store::in_memory().expect("store");
        store.put(Table::Meta, LEGACY_KEY, b"\xa1\x66member\x05garbage");
        store.commit().expect("commit");
        let err = EngineState::load(&store).expect_err("garbage must not load");
        assert!(err.to_string().contains("older format"), "{err}");
    }
}
