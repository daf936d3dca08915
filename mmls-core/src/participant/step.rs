//! Atomic steps: every state change runs inside `step`, which ends in exactly
//! one store transaction or restores memory to the last committed state.
//! Outputs are queued here and leave only after their step is durable.

use super::*;

impl Participant {
    /// Runs `f` as one atomic step: all or nothing, on disk and in memory.
    pub(super) fn step<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, MmlsError>,
    ) -> Result<T, MmlsError> {
        let mark = self.outputs.len();
        self.buffer_undo.clear();
        let r = f(self).and_then(|v| {
            for id in std::mem::take(&mut self.acked) {
                self.provider
                    .store()
                    .delete(Table::Outbox, &id.to_be_bytes());
            }
            let pending = std::mem::take(&mut self.rejected_pending);
            self.state.rejected_inputs += pending;
            let bytes = to_cbor(&self.state);
            let changed = bytes != self.committed_state;
            if changed {
                self.provider.store().put(Table::Meta, STATE_KEY, &bytes);
            }
            if std::mem::take(&mut self.crash_next_commit) {
                // Fault injection: the process "dies" before the commit.
                self.provider.store().crash_discard();
                self.rejected_pending += pending;
                return Err(MmlsError::Internal("injected crash".into()));
            }
            let commit = if std::mem::take(&mut self.fail_next_commit) {
                Err(MmlsError::Internal("injected commit failure".into()))
            } else {
                self.provider.store().commit().map_err(MmlsError::from)
            };
            if let Err(e) = commit {
                self.rejected_pending += pending;
                return Err(e);
            }
            // Only now is this the state to roll back to.
            if changed {
                self.committed_state = bytes;
            }
            Ok(v)
        });
        if r.is_err() {
            // Back to the state of the last committed step (no per-step
            // clone: failures are rare, successes are the hot path).
            if let Ok(st) = from_cbor(&self.committed_state) {
                self.state = st;
            }
            self.provider.store().rollback();
            for (g, seq, old) in std::mem::take(&mut self.buffer_undo).into_iter().rev() {
                let b = self.buffers.entry(g).or_default();
                match old {
                    Some(v) => {
                        b.insert(seq, v);
                    }
                    None => {
                        b.remove(&seq);
                    }
                }
            }
            // openmls may have changed its in-memory group before failing.
            self.groups.clear();
            self.outputs.truncate(mark);
        }
        r
    }

    pub(super) fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    /// The driver published these own envelopes; they leave the outbox with
    /// the next step.
    pub fn ack_published(&mut self, ids: &[u64]) {
        self.acked.extend_from_slice(ids);
    }

    pub(super) fn emit(&mut self, e: Event) {
        self.outputs.push(Output::Event(e));
    }

    pub(super) fn publish_lobby(&mut self, e: Envelope) {
        self.outputs.push(Output::Publish(Publish {
            topic: Topic::Lobby,
            bytes: e.encode(),
            outbox_id: None,
        }));
    }

    /// Logs an own stream entry (so peers can fetch it) and queues it in the
    /// durable outbox before it is handed out.
    pub(super) fn emit_stream(&mut self, topic: Topic, env: &Envelope) {
        let bytes = env.encode();
        if let Some(g) = env.group {
            self.provider
                .store()
                .put(Table::Log, &log_key(&g, env.seq), &bytes);
        }
        let id = self.state.outbox_next;
        self.state.outbox_next += 1;
        self.provider.store().put(
            Table::Outbox,
            &id.to_be_bytes(),
            &to_cbor(&(topic, ByteBuf::from(bytes.clone()))),
        );
        self.outputs.push(Output::Publish(Publish {
            topic,
            bytes,
            outbox_id: Some(id),
        }));
    }
}
