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
            self.uni_mut(&uid)?.leaf_updates.insert(g);
            self.propose_leaf_update(uid, g)?;
        }
        self.uni_mut(&uid)?.update_due = false;
        Ok(())
    }

    /// Sends an Update proposal with a fresh leaf in `g` (someone else's
    /// send group); its owner commits it with its next commit.
    pub(super) fn propose_leaf_update(&mut self, uid: Id32, g: Id32) -> Result<(), MmlsError> {
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
        self.outputs.push(Output::Publish(Publish {
            topic: Topic::Universe(uid),
            bytes: e.encode(),
            outbox_id: None,
        }));
        Ok(())
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
