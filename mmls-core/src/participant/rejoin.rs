//! Rejoin (draft REJOIN): asking owners to re-add us to groups we fell out
//! of, and answering such requests for our own group.

use super::*;

impl Participant {
    /// Asks to be re-added to every group we are stale in (after a state
    /// loss: to everything).
    pub(super) fn send_rejoin(&mut self, uid: Id32, lost_state: bool) -> Result<(), MmlsError> {
        self.rejoin_request(uid, lost_state, None)
    }

    /// Asks to be re-added to those of `groups` we are stale in, and no
    /// others (see `psk_gap`): not counted as a repeat for the backoff.
    pub(super) fn send_rejoin_for(
        &mut self,
        uid: Id32,
        groups: Option<&BTreeSet<Id32>>,
    ) -> Result<(), MmlsError> {
        self.rejoin_request(uid, false, groups)
    }

    fn rejoin_request(
        &mut self,
        uid: Id32,
        lost_state: bool,
        only: Option<&BTreeSet<Id32>>,
    ) -> Result<(), MmlsError> {
        let now = self.now;
        let u = self.uni(&uid)?;
        let stale: Vec<(Id32, MemberId, u16)> = u
            .groups
            .iter()
            .filter(|(_, g)| g.stale && g.owner != self.me)
            .filter(|(id, _)| only.is_none_or(|o| o.contains(id)))
            .map(|(id, g)| (*id, g.owner.clone(), g.suite))
            .collect();
        if stale.is_empty() && !lost_state {
            return Ok(());
        }
        let mut kps = vec![];
        for (_, owner, suite) in &stale {
            let kp = self
                .issue_key_package(owner, *suite, true)?
                .unwrap_or_default();
            kps.push((owner.clone(), ByteBuf::from(kp)));
        }
        // After a state loss we know no owner's suite: every last-resort
        // KeyPackage we have.
        let mandatory = crate::ciphersuites::X25519_AES128GCM;
        let (any, any_others) = if lost_state {
            (
                self.state.my_kps.get(&mandatory).cloned(),
                self.state
                    .my_kps
                    .iter()
                    .filter(|(s, _)| **s != mandatory)
                    .map(|(_, kp)| kp.clone())
                    .collect(),
            )
        } else {
            (None, vec![])
        };
        // Owners refuse a nonce not above the last one they saw from us,
        // and two requests may leave within one millisecond.
        let nonce = rejoin_nonce(self.uni(&uid)?.rejoin_requested_at, now);
        let req = RejoinRequest {
            universe: uid,
            member: self.me.clone(),
            key_packages: kps,
            lost_state,
            any_key_package: any,
            any_key_packages: any_others,
            nonce,
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
        let u = self.uni_mut(&uid)?;
        u.rejoin_requested_at = Some(nonce);
        if only.is_none() {
            u.rejoin_attempts = u.rejoin_attempts.saturating_add(1);
        }
        for (g, owner, _) in stale {
            self.emit(Event::Stale {
                universe: uid,
                group: g,
                owner,
            });
        }
        Ok(())
    }

    pub(super) fn on_rejoin(&mut self, env: &Envelope) -> Result<(), MmlsError> {
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
        // Whether or not we are asked: our imports must wait (`psk_gap`).
        let asked: BTreeSet<MemberId> = if req.lost_state {
            u.roster
                .iter()
                .filter(|m| **m != req.member)
                .cloned()
                .collect()
        } else {
            req.key_packages.iter().map(|(o, _)| o.clone()).collect()
        };
        self.note_rejoining(uid, &req.member, asked)?;
        let u = self.uni(&uid)?;
        let Some(suite) = u.own_group.and_then(|g| u.groups.get(&g)).map(|s| s.suite) else {
            return Ok(());
        };
        if u.rejoin_nonces
            .get(&req.member)
            .is_some_and(|n| *n >= req.nonce)
        {
            return Err(MmlsError::Duplicate {
                group: uid,
                seq: req.nonce,
            });
        }
        // The KeyPackage addressed to us must be in our group's suite (and
        // one the universe accepts); after a state loss, the one of our
        // suite among those offered, else the member's last announced one.
        let addressed = req
            .key_packages
            .iter()
            .find(|(o, _)| *o == me)
            .map(|(_, k)| k.clone());
        let kp = match addressed {
            Some(kp) => Some(kp),
            None if req.lost_state => req
                .any_key_package
                .iter()
                .chain(&req.any_key_packages)
                .find(|k| crate::ciphersuites::of_key_package(k) == Some(suite))
                .or_else(|| {
                    self.state
                        .known_kps
                        .get(&req.member)
                        .and_then(|k| k.0.get(&suite))
                })
                .cloned(),
            None => None,
        };
        let Some(kp) = kp else { return Ok(()) };
        let k = self.validate_kp(&kp, Some(&req.member))?;
        self.check_kp_suite(&uid, suite, &k)?;
        if !k.last_resort() {
            let r = k.hash_ref(self.provider.crypto()).map_err(MmlsError::mls)?;
            let r = ByteBuf::from(r.as_slice().to_vec());
            if self.state.used_kp_refs.contains_key(&r) {
                return Err(MmlsError::Duplicate {
                    group: uid,
                    seq: req.nonce,
                });
            }
            self.state.used_kp_refs.insert(r, ());
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
}

/// A rejoin request's nonce: its time, but above the previous one's.
fn rejoin_nonce(previous: Option<u64>, now: u64) -> u64 {
    previous
        .map_or(now, |p| now.max(p.saturating_add(1)))
        .max(1)
}
