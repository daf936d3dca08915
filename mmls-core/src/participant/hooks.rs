//! Fault injection and test-only accessors: compiled only for tests and the
//! `testkit` feature, never in a production build.

use super::*;

/// A fault injected into the next step's commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// The commit fails (as on a full disk) and the process carries on.
    CommitFails,
    /// The process "dies" just before the commit: the transaction is dropped
    /// without restoring memory (reopen the store to go on).
    CrashBeforeCommit,
    /// The flush ending a group commit fails (as an fsync error).
    FlushFails,
}

impl Participant {
    /// The injected fault of this step's commit, if any.
    pub(super) fn injected_fault(&mut self) -> Option<MmlsError> {
        // A flush fault waits for the flush (`injected_flush_fault`).
        let e = match self.fault? {
            Fault::FlushFails => return None,
            Fault::CommitFails => MmlsError::Internal("injected commit failure".into()),
            Fault::CrashBeforeCommit => {
                self.provider.store().crash_discard();
                MmlsError::Internal("injected crash".into())
            }
        };
        self.fault = None;
        Some(e)
    }

    /// Test only: whether the exported PSK of `g` at `epoch` is still in
    /// the store (the forward-secrecy window deletes old ones).
    #[cfg(test)]
    pub(crate) fn holds_psk(&self, g: &Id32, epoch: u64) -> bool {
        self.psk_held(g, epoch)
    }

    /// Test only: we give up on `g` as after a long block (the rejoin
    /// request follows with `request_rejoin`).
    #[cfg(test)]
    pub(crate) fn mark_stale(&mut self, uid: &Id32, g: &Id32) {
        let now = self.now;
        let (uid, g) = (*uid, *g);
        let _ = self.step(|p| {
            let gs = p
                .group_state_mut(&uid, &g)
                .ok_or(MmlsError::UnknownGroup(g))?;
            gs.stale = true;
            gs.stale_since = Some(now);
            Ok(())
        });
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

    /// Test only: forget the last-resort KeyPackage we heard from `m`, as
    /// if its announcement had never reached us.
    #[cfg(test)]
    pub(crate) fn forget_key_package(&mut self, m: &MemberId) {
        let _ = self.step(|p| {
            p.state.known_kps.remove(m);
            Ok(())
        });
    }

    /// Test only: how many members' announced KeyPackages we keep.
    #[cfg(test)]
    pub(crate) fn known_key_package_count(&self) -> usize {
        self.state.known_kps.keys().count()
    }

    /// Test only: out-of-order entries buffered (persisted) over all groups.
    #[cfg(test)]
    pub(crate) fn buffered_entries(&self) -> usize {
        self.buffers.values().map(|b| b.len()).sum()
    }

    /// The injected fault of a group commit's flush, if any.
    pub(super) fn injected_flush_fault(&mut self) -> Option<String> {
        (self.fault == Some(Fault::FlushFails)).then(|| {
            self.fault = None;
            "injected flush failure".to_string()
        })
    }

    /// Fault injection: the flush that ends the current group commit fails.
    pub fn inject_flush_failure(&mut self) {
        self.fault = Some(Fault::FlushFails);
    }

    /// Fault injection: the next step's store commit fails (as on a full
    /// disk) and the process carries on.
    pub fn inject_commit_failure(&mut self) {
        self.fault = Some(Fault::CommitFails);
    }

    /// Fault injection for crash tests: the next step's transaction is
    /// dropped as if the process died just before committing it.
    pub fn inject_crash_before_commit(&mut self) {
        self.fault = Some(Fault::CrashBeforeCommit);
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
            update: None,
        };
        group.set_aad(to_cbor(&aad));
        let epoch = group.epoch().as_u64();
        let signer = identity.signer(suite_of(group));
        let msg = if commit {
            group
                .commit_builder()
                .force_self_update(true)
                .load_psks(provider.storage())
                .map_err(MmlsError::mls)?
                .build(provider.rand(), provider.crypto(), &signer, |_| true)
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
                .create_message(provider, &signer, &to_cbor(&payload))
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
}

impl Participant {
    /// Test only: this node believes the universe's anchors are `anchors`
    /// and puts them in its own send group with its next commit, as a
    /// non-admin owner forging an anchor change would.
    #[cfg(test)]
    pub(crate) fn forge_anchor_change(
        &mut self,
        uid: &Id32,
        anchors: Vec<crate::federation::DomainAnchor>,
    ) -> Result<Vec<Output>, MmlsError> {
        self.step(|p| {
            let u = p.uni_mut(uid)?;
            if let Some(d) = u.def.as_mut() {
                d.anchors = anchors;
            }
            u.anchors_pending = true;
            p.commit_own(*uid, false)?;
            Ok(())
        })?;
        Ok(self.take_outputs())
    }

    /// Test only: this node's own idea of the universe's anchors changes,
    /// nothing else (its send group keeps the real ones): the engine of a
    /// corrupt admin that would vouch for anyone these anchors accept.
    #[cfg(test)]
    pub(crate) fn forge_local_anchors(
        &mut self,
        uid: &Id32,
        anchors: Vec<crate::federation::DomainAnchor>,
    ) -> Result<(), MmlsError> {
        self.step(|p| {
            if let Some(d) = p.uni_mut(uid)?.def.as_mut() {
                d.anchors = anchors;
            }
            Ok(())
        })
    }

    /// Test only: sends `payload` in our own send group as it is, as a
    /// member's own (possibly malicious) engine could.
    #[cfg(test)]
    pub(crate) fn send_test_payload(
        &mut self,
        uid: &Id32,
        payload: &Payload,
    ) -> Result<Vec<Output>, MmlsError> {
        self.step(|p| p.send_payload(*uid, payload))?;
        Ok(self.take_outputs())
    }

    /// Test only: our next send group takes `suite` whatever the universe
    /// accepts, as a node ignoring the universe's list would.
    #[cfg(test)]
    pub(crate) fn force_suite(&mut self, suite: u16) {
        self.forced_suite = Some(suite);
    }

    /// Test only: the suite of send group `g`, as openmls has it.
    #[cfg(test)]
    pub(crate) fn suite_of_group(&mut self, g: &Id32) -> Result<u16, MmlsError> {
        Ok(suite_of(self.group(g)?))
    }

    /// Test only: the trust anchors in send group `g`'s GroupContext.
    #[cfg(test)]
    pub(crate) fn anchors_of_group(
        &mut self,
        g: &Id32,
    ) -> Result<Vec<crate::federation::DomainAnchor>, MmlsError> {
        let group = self.group(g)?;
        Self::group_anchors(group)
    }
}
