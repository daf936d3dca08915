//! Single-use KeyPackages (RFC 9420 section 16.8: a KeyPackage that is not
//! last-resort is used for one Welcome only).
//!
//! Which of a member's KeyPackages an owner may use: its last-resort one
//! (every owner may, and the joiner rotates its leaf at once), or a
//! single-use one that was *handed to that owner alone*: the member made
//! it for this owner and signed the addressee next to it. A single-use
//! KeyPackage announced to everyone (as AWS mls-rs does) is used by no
//! owner: every owner that lacks one asks the member for its own, or
//! waits. Several owners building their send groups from one broadcast
//! KeyPackage was the interop bug: mls-rs deletes a KeyPackage once used,
//! so it could join only the first of those groups.
//!
//! Our side of it: a pool of fresh single-use KeyPackages (refilled at
//! every tick, bounded), handed out on request (a request-response over
//! libp2p, or a lobby request); once handed, each waits for its Welcome
//! (openmls deletes its private keys when the Welcome is processed, and we
//! forget its reference) or expires when too many are outstanding. The
//! last-resort KeyPackage stays the fallback when the pool is empty.

use super::rows::{Cell, Journal, Row, Rows};
use super::state::MemberKps;
use super::*;
use crate::store::StoreError;
use sha2::{Digest, Sha256};

/// KeyPackages built per refill (one tick): bounds the CPU a drained pool
/// costs (about a millisecond each).
const REFILL_PER_TICK: usize = 4;

/// The suite the pool is kept in: the mandatory one, which every universe
/// accepts unless it says otherwise. One in another suite is built when
/// asked for (or, without `build`, the last-resort one in that suite
/// answers).
const POOL_SUITE: u16 = crate::ciphersuites::X25519_AES128GCM;

const FRESH: &[u8] = b"kp-pool/fresh/";
const ISSUED: &[u8] = b"kp-pool/issued/";
const HANDED: &[u8] = b"kp-pool/handed/";
const ANNOUNCED: &[u8] = b"kp-pool/announced";

/// One of our single-use KeyPackages handed out and not used yet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Issued {
    /// The owner it was made for.
    pub(super) to: MemberId,
    /// Driver time it was handed out (oldest expire first).
    pub(super) at: u64,
    /// The KeyPackage (TLS): a request repeated soon after (the lobby and
    /// the direct one of the same need) gets it again, not another.
    pub(super) kp: ByteBuf,
}

/// The single-use KeyPackage we announce (not publishing a last-resort
/// one).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Announced {
    /// Its hash ref (to notice it was used).
    r: ByteBuf,
    kp: ByteBuf,
}

super::rows::plain_row!(Issued, Option<Announced>);

/// The single-use KeyPackage rows (store rows under `Table::Meta`).
#[derive(Debug, Default)]
pub(super) struct KpPool {
    /// Ours, not handed out yet: hash ref -> KeyPackage (TLS).
    fresh: Rows<ByteBuf, ByteBuf>,
    /// Ours, handed out and waiting for their Welcome: hash ref -> whom.
    issued: Rows<ByteBuf, Issued>,
    /// Others', handed to us alone: member -> its KeyPackage per suite
    /// (a row of before suites holds one, read as its suite's).
    pub(super) handed: Rows<MemberId, MemberKps>,
    /// The single-use KeyPackage we announce when we publish no
    /// last-resort one (`Config::publish_last_resort` off): apart from the
    /// pool, so it is never handed to an owner as well.
    announced: Cell<Option<Announced>>,
}

impl KpPool {
    pub(super) fn load(store: &Store) -> Result<KpPool, StoreError> {
        let announced = match store.get(Table::Meta, ANNOUNCED)? {
            Some(b) => from_cbor(&b)
                .map_err(|e| StoreError::Corrupt(format!("announced KeyPackage row: {e}")))?,
            None => None,
        };
        Ok(KpPool {
            fresh: Rows::load(store, Table::Meta, FRESH)?,
            issued: Rows::load(store, Table::Meta, ISSUED)?,
            handed: Rows::load(store, Table::Meta, HANDED)?,
            announced: Cell::new(announced),
        })
    }

    pub(super) fn write(&self, store: &Store) {
        self.fresh.write(store, Table::Meta, FRESH);
        self.issued.write(store, Table::Meta, ISSUED);
        self.handed.write(store, Table::Meta, HANDED);
        if self.announced.is_touched() {
            store.put(Table::Meta, ANNOUNCED, &to_cbor(self.announced.get()));
        }
    }

    pub(super) fn is_touched(&self) -> bool {
        self.fresh.is_touched()
            || self.issued.is_touched()
            || self.handed.is_touched()
            || self.announced.is_touched()
    }

    pub(super) fn each_journal(&mut self, f: &impl Fn(&mut dyn Journal)) {
        f(&mut self.fresh);
        f(&mut self.issued);
        f(&mut self.handed);
        f(&mut self.announced);
    }

    pub(super) fn size(&self) -> usize {
        self.fresh.values().map(|k| k.len() + 40).sum::<usize>()
            + self.issued.keys().count() * 100
            + self
                .handed
                .values()
                .map(|k| k.0.values().map(|b| b.len() + 8).sum::<usize>() + 50)
                .sum::<usize>()
    }

    /// How many fresh ones are ready to hand out.
    pub(super) fn fresh_len(&self) -> usize {
        self.fresh.keys().count()
    }
}

/// Why a KeyPackage request got no KeyPackage (typed, on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum KpRefusal {
    /// The requester asked more often than the responder allows.
    #[error("too many KeyPackage requests; ask again later")]
    RateLimited,
    /// The responder neither is the target nor holds a published
    /// KeyPackage of it.
    #[error("no KeyPackage of {0} here")]
    Unknown(String),
    /// None of the requester's ciphersuites is one the target can use.
    #[error("no common ciphersuite (the target supports {supported:?})")]
    NoCommonSuite { supported: Vec<u16> },
    /// The request names as requester someone else than the peer that sent
    /// it.
    #[error("the request names another requester than its sender")]
    WrongRequester,
}

/// What the target signs next to a KeyPackage it hands to one owner: the
/// addressee and the KeyPackage, under a label of its own. Whoever relays
/// it cannot re-address it, so no second owner can use it.
pub fn handed_signed_bytes(to: &str, key_package: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"mmls handed key package v1");
    h.update((to.len() as u64).to_be_bytes());
    h.update(to.as_bytes());
    h.update(Sha256::digest(key_package));
    h.finalize().to_vec()
}

/// A KeyPackage hash ref from its bytes (openmls builds one from a slice
/// only in its tests; its TLS form is the bytes with a length prefix).
fn key_package_ref(r: &[u8]) -> Result<KeyPackageRef, MmlsError> {
    use openmls::prelude::tls_codec::{Serialize as _, VLBytes};
    let encoded = VLBytes::new(r.to_vec())
        .tls_serialize_detached()
        .map_err(|e| MmlsError::Internal(format!("KeyPackage ref: {e:?}")))?;
    KeyPackageRef::tls_deserialize_exact(encoded.as_slice())
        .map_err(|e| MmlsError::Internal(format!("KeyPackage ref: {e:?}")))
}

impl Participant {
    /// A single-use KeyPackage of ours in `suite` (its hash ref and TLS
    /// bytes), recognised in Welcomes from now on.
    fn build_single_use(&mut self, suite: u16) -> Result<(ByteBuf, ByteBuf), MmlsError> {
        let bundle = KeyPackage::builder()
            .leaf_node_capabilities(capabilities())
            .build(
                crate::ciphersuites::suite(suite)?,
                &self.provider,
                &self.identity.signer(suite),
                self.identity.credential_for(suite),
            )
            .map_err(MmlsError::mls)?;
        let kp = bundle.key_package();
        let r = kp
            .hash_ref(self.provider.crypto())
            .map_err(MmlsError::mls)?;
        let r = ByteBuf::from(r.as_slice().to_vec());
        self.state.my_kp_refs.insert(r.clone(), ());
        Ok((r, ByteBuf::from(tls(kp)?)))
    }

    /// Tops the pool up (at most `REFILL_PER_TICK` new ones), makes the
    /// announced single-use KeyPackage if we announce one, and expires the
    /// oldest handed-out ones beyond `kp_issued_max`.
    pub(super) fn refill_pool(&mut self) -> Result<(), MmlsError> {
        let mut built = 0;
        while self.state.pool.fresh_len() < self.config.kp_pool_size && built < REFILL_PER_TICK {
            let (r, kp) = self.build_single_use(POOL_SUITE)?;
            self.state.pool.fresh.insert(r, kp);
            built += 1;
        }
        if !self.config.publish_last_resort && self.state.pool.announced.get().is_none() {
            let (r, kp) = self.build_single_use(POOL_SUITE)?;
            *self.state.pool.announced.get_mut() = Some(Announced { r, kp });
        }
        let outstanding = self.state.pool.issued.keys().count();
        if outstanding > self.config.kp_issued_max {
            let mut by_age: Vec<(u64, ByteBuf)> = self
                .state
                .pool
                .issued
                .iter()
                .map(|(r, i)| (i.at, r.clone()))
                .collect();
            by_age.sort();
            for (_, r) in by_age
                .into_iter()
                .take(outstanding - self.config.kp_issued_max)
            {
                self.forget_own_kp(&r)?;
            }
        }
        Ok(())
    }

    /// Our credential changed (a renewed certificate): the KeyPackages not
    /// handed out yet carry the old one, so they are replaced.
    pub(super) fn renew_pool(&mut self) -> Result<(), MmlsError> {
        let old: Vec<ByteBuf> = self.state.pool.fresh.keys().cloned().collect();
        for r in old {
            self.forget_own_kp(&r)?;
        }
        if let Some(a) = self.state.pool.announced.get().clone() {
            self.forget_own_kp(&a.r)?;
            *self.state.pool.announced.get_mut() = None;
        }
        self.refill_pool()
    }

    /// Whether `refill_pool` has anything to do.
    pub(super) fn pool_needs_refill(&self) -> bool {
        let pool = &self.state.pool;
        pool.fresh_len() < self.config.kp_pool_size
            || (!self.config.publish_last_resort && pool.announced.get().is_none())
            || pool.issued.keys().count() > self.config.kp_issued_max
    }

    /// Deletes one of our single-use KeyPackages: its private keys (in
    /// openmls' storage) and every record of it.
    fn forget_own_kp(&mut self, r: &ByteBuf) -> Result<(), MmlsError> {
        self.provider
            .storage()
            .delete_key_package(&key_package_ref(r)?)
            .map_err(|e| MmlsError::Internal(format!("delete KeyPackage: {e:?}")))?;
        self.state.pool.issued.remove(r);
        self.state.pool.fresh.remove(r);
        self.state.my_kp_refs.remove(r);
        Ok(())
    }

    /// Takes a single-use KeyPackage in `suite` out of the pool for `to`
    /// (building one if there is none and `build` says so). None: there is
    /// none.
    pub(super) fn issue_key_package(
        &mut self,
        to: &MemberId,
        suite: u16,
        build: bool,
    ) -> Result<Option<Vec<u8>>, MmlsError> {
        let now = self.now;
        let in_suite = |kp: &[u8]| crate::ciphersuites::of_key_package(kp) == Some(suite);
        let recent = self.state.pool.issued.values().find(|i| {
            i.to == *to && in_suite(&i.kp) && now < i.at.saturating_add(self.config.kp_retry_ms)
        });
        if let Some(i) = recent {
            return Ok(Some(i.kp.to_vec()));
        }
        let first = self
            .state
            .pool
            .fresh
            .iter()
            .find(|(_, k)| in_suite(k))
            .map(|(r, k)| (r.clone(), k.clone()));
        let (r, kp) = match first {
            Some((r, kp)) => {
                self.state.pool.fresh.remove(&r);
                (r, kp)
            }
            None if build => self.build_single_use(suite)?,
            None => return Ok(None),
        };
        self.state.pool.issued.insert(
            r,
            Issued {
                to: to.clone(),
                at: now,
                kp: kp.clone(),
            },
        );
        Ok(Some(kp.into_vec()))
    }

    /// A KeyPackage envelope handed to `to` alone: addressed and signed.
    fn handed_envelope(&self, to: &MemberId, kp: Vec<u8>) -> Envelope {
        let mut e = Envelope::new(Kind::KeyPackage, kp);
        e.sender = Some(self.me.to_string());
        e.to = Some(to.to_string());
        e.sig = Some(ByteBuf::from(
            self.identity
                .sign_detached(&handed_signed_bytes(to.as_str(), &e.body)),
        ));
        e
    }

    /// Answers a KeyPackage request for us: a single-use KeyPackage made
    /// for `requester` alone, or our last-resort one when the pool is
    /// empty. Each is an encoded lobby KeyPackage envelope, as the
    /// requester feeds it to [`Participant::handle_incoming`].
    pub fn hand_key_packages(
        &mut self,
        target: &str,
        requester: &MemberId,
        ciphersuites: &[u16],
    ) -> Result<(Vec<Vec<u8>>, Vec<Output>), KpRefusal> {
        if !self.answers_for(target) {
            return Err(KpRefusal::Unknown(target.to_string()));
        }
        // One in each of the requester's suites that we implement (the
        // requester does not say which send group it is for, so which suite
        // its owner's group is in).
        let mut suites: Vec<u16> = vec![];
        for s in ciphersuites {
            if crate::ciphersuites::implemented(*s) && !suites.contains(s) {
                suites.push(*s);
            }
        }
        if suites.is_empty() {
            return Err(KpRefusal::NoCommonSuite {
                supported: Participant::ciphersuites(),
            });
        }
        let mut envs = vec![];
        let mut short = *requester == self.me;
        if !short {
            // Without a last-resort KeyPackage to fall back on, one is
            // built now (the agent's rate limit bounds the cost).
            let build = !self.config.publish_last_resort;
            for suite in suites {
                let issued = self
                    .step(|p| p.issue_key_package(requester, suite, build))
                    .unwrap_or_else(|e| {
                        tracing::debug!(error = %e, "cannot hand out a KeyPackage");
                        None
                    });
                match issued {
                    Some(kp) => envs.push(self.handed_envelope(requester, kp).encode()),
                    None => short = true,
                }
            }
        }
        // A suite without a single-use one: our last-resort ones.
        if short {
            if let Output::Publish(p) = self.announcement() {
                envs.push(p.bytes);
            }
        }
        Ok((envs, self.take_outputs()))
    }

    /// The ciphersuites we can make KeyPackages in (code points).
    pub fn ciphersuites() -> Vec<u16> {
        crate::ciphersuites::IMPLEMENTED.to_vec()
    }

    /// Whether a KeyPackage request for `target` is one we answer with our
    /// own KeyPackages.
    pub fn answers_for(&self, target: &str) -> bool {
        target == self.me.as_str()
    }

    /// A published (last-resort) KeyPackage of `member` we hold, as a lobby
    /// envelope: what a peer may answer for a target it cannot reach.
    pub fn published_key_package(&self, member: &str) -> Option<Vec<u8>> {
        let m = MemberId::parse(member).ok()?;
        let kps = &self.state.known_kps.get(&m)?.0;
        // As the member announces them: 0x0001's in the body (every node
        // reads it), the other suites' attached.
        let mandatory = crate::ciphersuites::X25519_AES128GCM;
        let (body_suite, body) = kps
            .get_key_value(&mandatory)
            .or_else(|| kps.iter().next())?;
        let mut e = Envelope::new(Kind::KeyPackage, body.to_vec());
        e.proposals = kps
            .iter()
            .filter(|(s, _)| *s != body_suite)
            .map(|(_, kp)| kp.clone())
            .collect();
        e.sender = Some(m.to_string());
        Some(e.encode())
    }

    /// A lobby request for our KeyPackage from `requester`: a single-use
    /// one for it alone goes out on the lobby (gossip carries it to the
    /// requester, however many hops away); asked again within
    /// `kp_retry_ms`, the same one.
    pub(super) fn hand_on_lobby(&mut self, requester: &str) -> Result<(), MmlsError> {
        let Ok(to) = MemberId::parse(requester) else {
            return Ok(());
        };
        if to == self.me {
            return Ok(());
        }
        if let Some(kp) = self.issue_key_package(&to, POOL_SUITE, false)? {
            let e = self.handed_envelope(&to, kp);
            self.publish_lobby(e);
        }
        Ok(())
    }

    /// A single-use KeyPackage of `who` arrived: kept if it was handed to
    /// us alone (addressed to us, the addressee signed by `who`, not used
    /// yet); otherwise no owner here may use it (announced to everyone, or
    /// made for another owner).
    pub(super) fn on_single_use_kp(
        &mut self,
        env: &Envelope,
        kp: &KeyPackage,
        who: MemberId,
    ) -> Result<(), MmlsError> {
        if env.to.as_deref() != Some(self.me.as_str()) {
            return Ok(());
        }
        let sig = env.sig.as_ref().ok_or(MmlsError::BadSignature)?;
        who.verify(&handed_signed_bytes(self.me.as_str(), &env.body), sig)?;
        let r = kp
            .hash_ref(self.provider.crypto())
            .map_err(MmlsError::mls)?;
        // Spent already, or a second copy: nothing to do.
        let spent = self
            .state
            .used_kp_refs
            .contains_key(&ByteBuf::from(r.as_slice().to_vec()));
        let suite = u16::from(kp.ciphersuite());
        let held = self
            .state
            .pool
            .handed
            .get(&who)
            .and_then(|k| k.0.get(&suite))
            .is_some_and(|b| b.as_slice() == env.body.as_slice());
        if spent || held {
            return Ok(());
        }
        let mut kps = self
            .state
            .pool
            .handed
            .get(&who)
            .cloned()
            .unwrap_or_default();
        kps.0.insert(suite, ByteBuf::from(env.body.to_vec()));
        self.state.pool.handed.insert(who.clone(), kps);
        self.bound_handed_kps(&who);
        self.state.kp_requested.remove(&who);
        self.key_package_arrived(&who)
    }

    /// A usable KeyPackage of `who` arrived: builds our send group or the
    /// commit that waited for it.
    pub(super) fn key_package_arrived(&mut self, who: &MemberId) -> Result<(), MmlsError> {
        let ids: Vec<Id32> = self.state.universes.keys().cloned().collect();
        for uid in ids {
            let u = self.uni(&uid)?;
            if u.removed {
                continue;
            }
            if u.own_group.is_none() && u.def.is_some() && u.roster.contains(&self.me) {
                self.try_create_own_group(uid)?;
            } else if u.own_group.is_some() && u.pending_adds.contains(who) {
                self.commit_own(uid, false)?;
            }
        }
        Ok(())
    }

    /// Whether we hold a KeyPackage of `m` in `suite` we may use (handed
    /// to us, or its last-resort one).
    pub(super) fn has_usable_kp(&self, m: &MemberId, suite: u16) -> bool {
        self.usable_kp(m, suite).is_ok()
    }

    /// The KeyPackage of `m` in `suite` our next add uses: one handed to
    /// us alone if we hold one in that suite, else its last-resort one. A
    /// single-use KeyPackage that was not handed to us is never used.
    pub(super) fn usable_kp(&self, m: &MemberId, suite: u16) -> Result<KeyPackage, MmlsError> {
        if let Some(b) = self.state.pool.handed.get(m).and_then(|k| k.0.get(&suite)) {
            if let Ok(kp) = self.validate_kp(b, Some(m)) {
                return Ok(kp);
            }
        }
        let kp = self.key_package_of(m, suite)?;
        if !kp.last_resort() {
            // Stored by an older version, which kept any announced one.
            return Err(MmlsError::MissingKeyPackage(m.to_string()));
        }
        Ok(kp)
    }

    /// `kp` of `m` went into a commit: a single-use one is spent (never
    /// used again, by us or as a rejoin's).
    pub(super) fn consume_kp(&mut self, m: &MemberId, kp: &KeyPackage) -> Result<(), MmlsError> {
        if kp.last_resort() {
            return Ok(());
        }
        let r = kp
            .hash_ref(self.provider.crypto())
            .map_err(MmlsError::mls)?;
        let r = r.as_slice();
        self.state
            .used_kp_refs
            .insert(ByteBuf::from(r.to_vec()), ());
        let suite = u16::from(kp.ciphersuite());
        let handed_is_it = self
            .state
            .pool
            .handed
            .get(m)
            .and_then(|k| k.0.get(&suite))
            .and_then(|b| self.validate_kp(b, Some(m)).ok())
            .and_then(|h| h.hash_ref(self.provider.crypto()).ok())
            .is_some_and(|h| h.as_slice() == r);
        if handed_is_it {
            // Those of its other suites stay, for our groups in those.
            let mut kps = self.state.pool.handed.get(m).cloned().unwrap_or_default();
            kps.0.remove(&suite);
            if kps.0.is_empty() {
                self.state.pool.handed.remove(m);
            } else {
                self.state.pool.handed.insert(m.clone(), kps);
            }
        }
        Ok(())
    }

    /// We joined through the KeyPackages `refs` name: a single-use one of
    /// ours is spent (openmls deleted its private keys; we forget it, so a
    /// second Welcome to it is not for us).
    ///
    /// Those handed with it in the owner's other suites stay issued: the
    /// owner may still use one for a send group in that suite (another
    /// universe's), and they expire beyond `kp_issued_max` like any.
    pub(super) fn single_use_spent(&mut self, refs: &[ByteBuf]) {
        for r in refs {
            if self.state.last_resort_refs.contains_key(r) || !self.state.my_kp_refs.contains_key(r)
            {
                continue;
            }
            self.state.my_kp_refs.remove(r);
            self.state.pool.issued.remove(r);
            self.state.pool.fresh.remove(r);
            if self
                .state
                .pool
                .announced
                .get()
                .as_ref()
                .is_some_and(|a| a.r == *r)
            {
                *self.state.pool.announced.get_mut() = None;
            }
        }
    }

    /// What we announce on the lobby: the last-resort KeyPackage, or (not
    /// publishing one) the announced single-use one.
    pub(super) fn announced_key_package(&self) -> Option<ByteBuf> {
        if self.config.publish_last_resort {
            self.state
                .my_kps
                .get(&crate::ciphersuites::X25519_AES128GCM)
                .cloned()
        } else {
            self.state
                .pool
                .announced
                .get()
                .as_ref()
                .map(|a| a.kp.clone())
        }
    }

    /// Test and status: our single-use KeyPackages (fresh, handed out) and
    /// theirs handed to us.
    pub fn key_package_pool(&self) -> KpPoolStatus {
        KpPoolStatus {
            fresh: self.state.pool.fresh_len(),
            issued: self.state.pool.issued.keys().count(),
            issued_suites: self
                .state
                .pool
                .issued
                .values()
                .filter_map(|i| crate::ciphersuites::of_key_package(&i.kp))
                .collect(),
            handed_to_us: self.state.pool.handed.keys().cloned().collect(),
            handed_suites: self
                .state
                .pool
                .handed
                .values()
                .flat_map(|k| k.0.keys().copied())
                .collect(),
        }
    }
}

/// The KeyPackage pool, for status and tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KpPoolStatus {
    /// Ours, ready to hand out.
    pub fresh: usize,
    /// Ours, handed out and waiting for their Welcome.
    pub issued: usize,
    /// The suite of each of those.
    #[serde(default)]
    pub issued_suites: Vec<u16>,
    /// Members whose single-use KeyPackage was handed to us and not used.
    pub handed_to_us: Vec<MemberId>,
    /// The suite of each of those KeyPackages.
    #[serde(default)]
    pub handed_suites: Vec<u16>,
}
