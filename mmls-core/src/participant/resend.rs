//! History re-send on rejoin: a member re-added after it fell behind beyond
//! what peers still log, or after it lost its state, gets from each owner the
//! owner's own messages it had not received.
//!
//! Only the owner can do this: its old entries are encrypted under epochs the
//! rejoiner no longer has (and the owner cannot decrypt its own messages
//! either), so the owner keeps its sent plaintexts (`Table::Sent`, bounded
//! by `sent_retention`) and re-sends them in the new epoch, in its own stream
//! right after the re-add's Welcome and Hello, with their original
//! per-sender numbers. They travel as ordinary stream entries in the owner's
//! send group, addressed to the rejoiner: the other members decrypt them and
//! drop them without a delivery (ARCHITECTURE.md argues this against an
//! encryption to the rejoiner alone). What the rejoiner had is what its
//! signed rejoin request says it received from that owner.

use super::*;

/// Texts per re-send entry at most (each entry also stays under the
/// envelope size limit).
const MAX_TEXTS_PER_ENTRY: usize = 256;

fn sent_key(uid: &Id32, seq: u64) -> Vec<u8> {
    log_key(uid, seq)
}

/// The text number in a `sent_key`.
pub(super) fn sent_seq(key: &[u8]) -> Result<u64, MmlsError> {
    key.get(32..40)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| MmlsError::Internal("bad sent-message key".into()))
}

impl Participant {
    /// Keeps an own text for a later re-send (same step as its send).
    pub(super) fn remember_sent(&mut self, uid: &Id32, seq: u64, body: &[u8]) {
        self.provider
            .store()
            .put(Table::Sent, &sent_key(uid, seq), body);
    }

    /// Forgets own texts beyond `sent_retention` (bounded work per call).
    pub(super) fn prune_sent(&mut self, uid: Id32) -> Result<(), MmlsError> {
        let next = self.uni(&uid)?.texts.next_text_seq();
        let keep = self.config.sent_retention;
        if next <= keep {
            return Ok(());
        }
        let old = self.provider.store().range(
            Table::Sent,
            &sent_key(&uid, 0),
            Some(&sent_key(&uid, next - keep)),
            256,
        )?;
        for (k, _) in old {
            self.provider.store().delete(Table::Sent, &k);
        }
        Ok(())
    }

    /// The highest text number received from each owner, for a rejoin
    /// request (empty after a state loss: everything retained comes back).
    pub(super) fn received_acks(&self, uid: &Id32) -> Vec<(MemberId, u64)> {
        self.state
            .universes
            .get(uid)
            .map(|u| {
                u.texts
                    .received_all()
                    .map(|(m, s)| (m.clone(), s))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Re-sends to `member`, just re-added, our texts numbered after what
    /// its rejoin request acknowledged.
    pub(super) fn resend_history(&mut self, uid: Id32, member: &MemberId) -> Result<(), MmlsError> {
        let Some(after) = self.uni_mut(&uid)?.resend_after.remove(member) else {
            return Ok(());
        };
        let next = self.uni(&uid)?.texts.next_text_seq();
        if after.saturating_add(1) >= next {
            return Ok(());
        }
        let limit = crate::envelope::MAX_ENVELOPE_BYTES / 2;
        let mut from = after.saturating_add(1);
        loop {
            let rows = self.provider.store().range(
                Table::Sent,
                &sent_key(&uid, from),
                Some(&sent_key(&uid, next)),
                MAX_TEXTS_PER_ENTRY,
            )?;
            if rows.is_empty() {
                return Ok(());
            }
            let mut texts = vec![];
            let mut size = 0;
            for (k, body) in rows {
                let seq = sent_seq(&k)?;
                if !texts.is_empty() && size + body.len() + 16 > limit {
                    self.send_resend(uid, member, std::mem::take(&mut texts))?;
                    size = 0;
                }
                size += body.len() + 16;
                from = seq + 1;
                texts.push((seq, ByteBuf::from(body)));
            }
            self.send_resend(uid, member, texts)?;
        }
    }

    fn send_resend(
        &mut self,
        uid: Id32,
        member: &MemberId,
        texts: Vec<(u64, ByteBuf)>,
    ) -> Result<(), MmlsError> {
        if texts.is_empty() {
            return Ok(());
        }
        let payload = Payload::Resend {
            to: member.clone(),
            texts,
        };
        self.send_payload(uid, &payload)
    }

    /// A text from `owner`'s stream: delivered, and its number remembered.
    pub(super) fn deliver_text(
        &mut self,
        uid: Id32,
        g: Id32,
        owner: &MemberId,
        epoch: u64,
        seq: u64,
        body: ByteBuf,
    ) -> Result<(), MmlsError> {
        self.texts_mut(&uid)?.note_received(owner, seq);
        let node = self.state.node.get_mut();
        let cursor = node.delivered_next;
        node.delivered_next += 1;
        let d = Delivered {
            universe: uid,
            sender: owner.clone(),
            seq,
            body,
            cursor,
            group: g,
            epoch,
            received_at: self.now,
            user: self.speaks_for(&uid, owner),
        };
        self.provider
            .store()
            .put(Table::Delivered, &log_key(&uid, cursor), &to_cbor(&d));
        self.emit(Event::Message(d));
        Ok(())
    }

    /// A re-send in `owner`'s stream: ours if addressed to us, and only the
    /// texts we do not have; anyone else's is stepped over.
    pub(super) fn on_resend(
        &mut self,
        uid: Id32,
        g: Id32,
        owner: &MemberId,
        epoch: u64,
        to: &MemberId,
        texts: Vec<(u64, ByteBuf)>,
    ) -> Result<(), MmlsError> {
        if *to != self.me {
            return Ok(());
        }
        let have = self.uni(&uid)?.texts.received_from(owner);
        let mut texts: Vec<_> = texts.into_iter().filter(|(s, _)| *s > have).collect();
        texts.sort_by_key(|(s, _)| *s);
        texts.dedup_by_key(|(s, _)| *s);
        for (seq, body) in texts {
            self.deliver_text(uid, g, owner, epoch, seq, body)?;
        }
        Ok(())
    }
}
