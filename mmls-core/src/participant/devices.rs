//! Users and their devices: the directory of device-link statements and
//! what a statement does to the universes we are in.
//!
//! A statement (`crate::devices`) verifies from public data alone, so the
//! directory is node-wide: statements come from the lobby (every device
//! announces its own link), from `Payload::Devices` in a send group, and
//! from the links a Hello carries for joiners. The newest per device wins.
//!
//! Admins admit members; a member that is a device of a user may bring the
//! user's other devices in and take them out, because the user key (which
//! only the user holds) signed those statements and the device itself
//! signed its link. The device of user U that learns of a new link of U
//! says so in its own send group (ordered, authenticated, fetched like any
//! entry: `Payload::Devices`, its own link first) and then commits adding
//! the new device; every reader has therefore seen both statements before
//! the add, and accepts it from a non-admin because both devices name the
//! same user. Other owners mirror that add with a dependency on the
//! linking device's group, as mirrors of admin adds depend on the admin's.
//! An unlink is the same with a removal, which every owner mirrors like a
//! Leave; a device unlinked reads nothing sent after its removal.

use super::rows::{plain_row, Row};
use super::*;
use crate::devices::{newer, DeviceLink, SignedDeviceLink};

/// How far ahead of our clock a statement may be dated: a later date
/// would outrank every honest statement about the device for as long
/// (one dated `u64::MAX` could never be overridden). Ten minutes absorbs
/// clock skew.
pub const MAX_LINK_AHEAD_MS: u64 = 10 * 60_000;
/// Statements a Hello or a `Payload::Devices` may carry.
pub(super) const MAX_LINKS_PER_ENTRY: usize = 1024;

/// A statement as the directory keeps it: verified once, when it came in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct KnownLink {
    pub(super) link: DeviceLink,
    pub(super) signed: SignedDeviceLink,
}

plain_row!(KnownLink);

/// A device as this node knows it (`mmls device list`, the API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub user: String,
    pub device: MemberId,
    /// Linked now; `false` once the user unlinked it.
    pub linked: bool,
    /// Driver time (ms) of the newest statement.
    pub at: u64,
}

impl Participant {
    /// Links or unlinks a device with `signed`, made by the driver with the
    /// user key (and, for a link, the device's identity key). It is kept,
    /// announced on the lobby, and applied to every universe where we are a
    /// device of that user.
    pub fn publish_device_link(
        &mut self,
        signed: SignedDeviceLink,
    ) -> Result<Vec<Output>, MmlsError> {
        let link = signed.verify()?;
        self.check_link_date(&link)?;
        let current = self.state.device_links.get(&link.device).map(|k| &k.link);
        if !newer(current, &link) {
            return Err(match current {
                Some(c) if link.linked || c.user == link.user => MmlsError::StaleDeviceLink,
                _ => MmlsError::NotYourDevice(link.device.to_string()),
            });
        }
        self.step(|p| {
            p.learn_link(&link, &signed);
            p.publish_lobby(link_envelope(&signed));
            p.apply_link(&link, &signed)
        })?;
        Ok(self.take_outputs())
    }

    /// Our own newest link, to announce on the lobby (at start and to every
    /// peer that connects, like our KeyPackage).
    pub fn device_announcement(&self) -> Option<Output> {
        self.user_of(&self.me)?;
        Some(Output::Publish(Publish {
            topic: Topic::Lobby,
            bytes: self.device_link_envelope(&self.me)?,
            outbox_id: None,
        }))
    }

    /// The newest statement about `device` as a lobby envelope: what a
    /// KeyPackage answer for a user carries next to each device's
    /// KeyPackage, so the requester learns which devices are the user's.
    pub fn device_link_envelope(&self, device: &MemberId) -> Option<Vec<u8>> {
        let k = self.state.device_links.get(device)?;
        Some(link_envelope(&k.signed).encode())
    }

    /// The user `member` is a linked device of, if any.
    pub fn user_of(&self, member: &MemberId) -> Option<String> {
        self.state
            .device_links
            .get(member)
            .filter(|k| k.link.linked)
            .map(|k| k.link.user.clone())
    }

    /// Who `member` speaks for in universe `uid`: the user it is a linked
    /// device of, else, in a federated universe, the name its certificate
    /// certifies (with X.509 the CA vouches for the name, so each device
    /// of alice@org, certified as such, is alice@org's).
    pub fn speaks_for(&self, uid: &Id32, member: &MemberId) -> Option<String> {
        self.user_of(member).or_else(|| {
            let u = self.state.universes.get(uid)?;
            let federated = u.def.as_ref().is_some_and(|d| !d.anchors.is_empty());
            federated
                .then(|| u.certs.get(member).map(|c| c.name.clone()))
                .flatten()
        })
    }

    /// The devices of `user` that this node has heard of: for a key user
    /// (`u:...`) its linked devices; for any other name, the members whose
    /// published KeyPackage carries a certificate naming it
    /// (`alice@alpha.example`). The latter is no trust decision: a
    /// federated universe's anchors judge each device when it is added.
    pub fn devices_of(&self, user: &str) -> Vec<MemberId> {
        if !user.starts_with(crate::devices::USER_PREFIX) {
            return self.certified_as(user);
        }
        self.state
            .device_links
            .iter()
            .filter(|(_, k)| k.link.linked && k.link.user == user)
            .map(|(m, _)| m.clone())
            .collect()
    }

    /// Members whose published KeyPackages carry a certificate naming
    /// `name` (their first suite's; parsed and checked in itself).
    fn certified_as(&self, name: &str) -> Vec<MemberId> {
        self.state
            .known_kps
            .iter()
            .filter(|(m, kps)| {
                kps.0.values().next().is_some_and(|b| {
                    self.validate_kp(b, Some(m)).is_ok_and(|kp| {
                        let leaf = kp.leaf_node();
                        crate::federation::inspect(
                            leaf.credential(),
                            leaf.signature_key().as_slice(),
                        )
                        .is_ok_and(|c| c.name == name)
                    })
                })
            })
            .map(|(m, _)| m.clone())
            .collect()
    }

    /// Every device this node has a statement about.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.state
            .device_links
            .iter()
            .map(|(m, k)| DeviceInfo {
                user: k.link.user.clone(),
                device: m.clone(),
                linked: k.link.linked,
                at: k.link.at,
            })
            .collect()
    }

    /// A statement from the lobby: kept if newest, and applied to our
    /// universes if it is about a device of our own user.
    pub(super) fn on_device_link(&mut self, env: &Envelope) -> Result<(), MmlsError> {
        let signed = SignedDeviceLink::decode(&env.body)?;
        let link = signed.verify()?;
        self.check_link_date(&link)?;
        if !self.wants_link(&link) {
            return Err(MmlsError::StaleDeviceLink);
        }
        self.learn_link(&link, &signed);
        self.apply_link(&link, &signed)
    }

    /// Statements `owner` made in its send group of `uid`: its own link
    /// (or unlink: it leaves), or one of a device of the same user, whose
    /// add or removal follows in the owner's next commit.
    pub(super) fn on_devices(
        &mut self,
        uid: Id32,
        owner: &MemberId,
        links: Vec<SignedDeviceLink>,
    ) -> Result<(), MmlsError> {
        if links.len() > MAX_LINKS_PER_ENTRY {
            return Err(MmlsError::Unexpected("too many device links".into()));
        }
        for signed in links {
            let link = signed.verify()?;
            if link.device != *owner && self.link_user(owner) != Some(link.user.as_str()) {
                return Err(MmlsError::NotYourDevice(link.device.to_string()));
            }
            // One dated too far ahead is not kept (as a stale one is not):
            // the owner's entry still goes through.
            if self.check_link_date(&link).is_ok() && self.wants_link(&link) {
                self.learn_link(&link, &signed);
            }
            let e = if link.linked {
                Event::DeviceLinked {
                    universe: uid,
                    user: link.user.clone(),
                    device: link.device.clone(),
                }
            } else {
                Event::DeviceUnlinked {
                    universe: uid,
                    user: link.user.clone(),
                    device: link.device.clone(),
                }
            };
            self.emit(e);
            if !link.linked && link.device == *owner {
                self.on_leave(uid, owner)?;
            }
        }
        Ok(())
    }

    /// The links a Hello carries: kept where newest; one that does not
    /// verify is left out (it attributes nothing), not the Hello.
    pub(super) fn learn_hello_links(&mut self, links: &[SignedDeviceLink]) {
        for signed in links.iter().take(MAX_LINKS_PER_ENTRY) {
            if let Ok(link) = signed.verify() {
                if self.check_link_date(&link).is_ok() && self.wants_link(&link) {
                    self.learn_link(&link, signed);
                }
            }
        }
    }

    /// The statements a Hello carries: those of the roster's devices.
    pub(super) fn roster_links(&self, roster: &[MemberId]) -> Vec<SignedDeviceLink> {
        roster
            .iter()
            .filter_map(|m| self.state.device_links.get(m))
            .take(MAX_LINKS_PER_ENTRY)
            .map(|k| k.signed.clone())
            .collect()
    }

    /// Refuses a statement dated more than `MAX_LINK_AHEAD_MS` after our
    /// clock.
    fn check_link_date(&self, link: &DeviceLink) -> Result<(), MmlsError> {
        if link.at > self.now.saturating_add(MAX_LINK_AHEAD_MS) {
            return Err(MmlsError::DeviceLinkFromFuture {
                at: link.at,
                now: self.now,
            });
        }
        Ok(())
    }

    /// Whether a new statement is worth keeping: newer than what we hold,
    /// and with room in the directory (`lobby_bounds`: past its bound, the
    /// oldest statement about a stranger makes way).
    fn wants_link(&mut self, link: &DeviceLink) -> bool {
        let current = self.state.device_links.get(&link.device);
        newer(current.map(|k| &k.link), link) && self.room_for_link(&link.device)
    }

    fn learn_link(&mut self, link: &DeviceLink, signed: &SignedDeviceLink) {
        self.lobby.links.touch(&link.device);
        self.state.device_links.insert(
            link.device.clone(),
            KnownLink {
                link: link.clone(),
                signed: signed.clone(),
            },
        );
    }

    /// The user `m`'s newest statement names, linked or not: what decides
    /// who may add or remove whom (an unlink that crossed an add in flight
    /// must not turn the add into an error that wedges the group).
    fn link_user(&self, m: &MemberId) -> Option<&str> {
        self.state.device_links.get(m).map(|k| k.link.user.as_str())
    }

    /// Whether `a` and `b` are (or were) devices of one user.
    pub(super) fn same_user(&self, a: &MemberId, b: &MemberId) -> bool {
        matches!((self.link_user(a), self.link_user(b)), (Some(x), Some(y)) if x == y)
    }

    /// Whether `owner` may remove `m` from the universe as its user's
    /// device: `m` was unlinked by that user.
    pub(super) fn unlinked_by_user_of(&self, owner: &MemberId, m: &MemberId) -> bool {
        self.same_user(owner, m)
            && self
                .state
                .device_links
                .get(m)
                .is_some_and(|k| !k.link.linked)
    }

    /// A statement about a device of our own user: said in each universe we
    /// are in, with the add or removal it calls for.
    fn apply_link(
        &mut self,
        link: &DeviceLink,
        signed: &SignedDeviceLink,
    ) -> Result<(), MmlsError> {
        let me = self.me.clone();
        if self.link_user(&me) != Some(link.user.as_str()) {
            return Ok(());
        }
        let Some(mine) = self.state.device_links.get(&me).map(|k| k.signed.clone()) else {
            return Ok(());
        };
        let universes: Vec<Id32> = self
            .state
            .universes
            .iter()
            .filter(|(_, u)| {
                !u.removed && u.own_group.is_some() && u.def.is_some() && u.roster.contains(&me)
            })
            .map(|(id, _)| *id)
            .collect();
        for uid in universes {
            let now = self.now;
            let d = &link.device;
            let present = self.uni(&uid)?.roster.contains(d);
            if *d == me {
                self.send_payload(uid, &Payload::Devices(vec![signed.clone()]))?;
                if !link.linked {
                    let u = self.uni_mut(&uid)?;
                    u.removed = true;
                    self.emit(Event::RemovedFromUniverse { universe: uid });
                }
                continue;
            }
            if link.linked == present {
                continue;
            }
            self.send_payload(uid, &Payload::Devices(vec![mine.clone(), signed.clone()]))?;
            let u = self.uni_mut(&uid)?;
            let e = if link.linked {
                u.roster.insert(d.clone());
                u.pending_adds.insert(d.clone());
                u.pending_removes.remove(d);
                Event::MemberAdded {
                    universe: uid,
                    member: d.clone(),
                }
            } else {
                u.roster.remove(d);
                u.pending_removes.insert(d.clone());
                u.pending_adds.remove(d);
                if let Some(og) = u.owner_group.remove(d) {
                    u.retire(og);
                }
                Event::MemberRemoved {
                    universe: uid,
                    member: d.clone(),
                }
            };
            u.pending_since.get_or_insert(now);
            self.emit(e);
        }
        Ok(())
    }
}

/// A statement as a lobby envelope.
fn link_envelope(signed: &SignedDeviceLink) -> Envelope {
    Envelope::new(Kind::DeviceLink, signed.encode())
}
