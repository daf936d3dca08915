//! Leaf rotation: an MMLS update renews our leaf in every other send group
//! through an Update proposal its owner commits (DESIGN "Leaf rotation
//! everywhere").

use super::*;

impl Participant {
    /// An MMLS update: a commit with a fresh path in our group, and a fresh
    /// leaf (Update proposal) in every other send group.
    pub(super) fn mmls_update(&mut self, uid: Id32) -> Result<(), MmlsError> {
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
            let epoch = self.propose_leaf_update(uid, g)?;
            self.uni_mut(&uid)?.leaf_updates.proposed(g, epoch);
        }
        self.uni_mut(&uid)?.update_due = false;
        Ok(())
    }

    /// Re-sends our Update proposal in the groups that moved on without it,
    /// where its backoff has passed (see `reproposal`).
    pub(super) fn repropose_stale(&mut self, uid: Id32) -> Result<(), MmlsError> {
        let now = self.now;
        let u = self.uni_mut(&uid)?;
        let groups = &u.groups;
        let due = u.leaf_updates.due(now, |g| {
            groups
                .get(g)
                .map(|s| (!s.stale && s.blocked_since.is_none()).then_some(s.epoch))
        });
        for g in due {
            let epoch = self.propose_leaf_update(uid, g)?;
            self.uni_mut(&uid)?.leaf_updates.resent(g, epoch);
        }
        Ok(())
    }

    /// Sends an Update proposal with a fresh leaf in `g` (someone else's
    /// send group); its owner commits it with its next commit. Returns the
    /// epoch it was made in.
    pub(super) fn propose_leaf_update(&mut self, uid: Id32, g: Id32) -> Result<u64, MmlsError> {
        let provider = &self.provider;
        let group = self.groups.load(provider.storage(), &g)?;
        let leaf = Self::leaf_params(&self.identity, group);
        let (msg, _) = group
            .propose_self_update(provider, &self.identity.signer(suite_of(group)), leaf)
            .map_err(MmlsError::mls)?;
        let mut e = Envelope::new(Kind::Proposal, tls(&msg)?);
        e.universe = Some(uid);
        e.group = Some(g);
        e.epoch = group.epoch().as_u64();
        e.sender = Some(self.me.to_string());
        let epoch = e.epoch;
        self.outputs.push(Output::Publish(Publish {
            topic: Topic::Universe(uid),
            bytes: e.encode(),
            outbox_id: None,
        }));
        Ok(epoch)
    }

    /// An Update proposal for a send group: only its owner acts on it.
    pub(super) fn on_proposal(&mut self, env: &Envelope) -> Result<(), MmlsError> {
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
        let group = self.groups.load(provider.storage(), &g)?;
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
        // Federation: a renewed certificate must hold now; an unchanged one
        // was checked when it came in (see `check_peer_commit`).
        let anchors = Self::group_anchors(group)?;
        let cert = match (q.proposal(), q.sender()) {
            (Proposal::Update(upd), Sender::Member(i))
                if group.member(*i) != Some(upd.leaf_node().credential()) =>
            {
                let leaf = upd.leaf_node();
                let (cred, key) = (
                    leaf.credential().clone(),
                    leaf.signature_key().as_slice().to_vec(),
                );
                self.check_credential(&anchors, &cred, &key, true)?
            }
            _ => None,
        };
        let provider = &self.provider;
        let group = self.groups.load(provider.storage(), &g)?;
        group
            .store_pending_proposal(provider.storage(), *q)
            .map_err(MmlsError::mls)?;
        if let Some(c) = cert {
            self.record_cert(&uid, c)?;
        }
        let now = self.now;
        let u = self.uni_mut(&uid)?;
        u.own_proposals.push(ByteBuf::from(env.body.to_vec()));
        u.pending_since.get_or_insert(now);
        Ok(())
    }
}
