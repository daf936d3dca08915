//! Atomic steps: every state change runs inside `step`, which ends in exactly
//! one store transaction or restores memory to the last committed state.
//! Outputs are queued here and leave only after their step is durable.

use super::*;

/// How a step's store transaction reaches the disk.
#[derive(Debug, Default)]
pub(super) enum Durability {
    /// Each step is durable (an fsync on disk) before its outputs leave.
    #[default]
    PerStep,
    /// Group commit: steps commit without waiting for the disk and their
    /// outputs are held until `end_batch`, whose one flush makes them all
    /// durable. Each step stays atomic: a failed one rolls back alone.
    Batch,
    /// A batch's flush failed: memory is ahead of the disk, and nothing
    /// more may be committed or announced from it.
    Failed(String),
}

impl Participant {
    /// Starts a group commit: the steps of the inputs handled until
    /// [`Participant::end_batch`] are made durable together, by one flush,
    /// and their outputs are returned only by `end_batch` (calls in between
    /// return none). Durable before announced still holds; a crash before
    /// the flush loses the whole batch, which nothing outside saw.
    pub fn begin_batch(&mut self) -> Result<(), MmlsError> {
        match &self.durability {
            Durability::Failed(e) => Err(MmlsError::Unflushed(e.clone())),
            _ => {
                self.durability = Durability::Batch;
                Ok(())
            }
        }
    }

    /// Ends a group commit: one flush, then every output of the batch.
    pub fn end_batch(&mut self) -> Result<Vec<Output>, MmlsError> {
        match &self.durability {
            Durability::Failed(e) => return Err(MmlsError::Unflushed(e.clone())),
            Durability::PerStep => return Ok(self.take_outputs()),
            Durability::Batch => {}
        }
        let r = match self.injected_flush_fault() {
            Some(e) => Err(e),
            None => self.provider.store().flush().map_err(|e| e.to_string()),
        };
        match r {
            Ok(()) => {
                self.durability = Durability::PerStep;
                Ok(self.take_outputs())
            }
            Err(e) => {
                // Nothing of the batch may leave: it may not be on disk.
                self.outputs.clear();
                self.durability = Durability::Failed(e.clone());
                Err(MmlsError::Unflushed(e))
            }
        }
    }

    /// Runs `f` as one atomic step: all or nothing, on disk and in memory.
    pub(super) fn step<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, MmlsError>,
    ) -> Result<T, MmlsError> {
        // Every change is made inside a step: one made outside would be
        // written by whichever step comes next, or lost if that one fails.
        #[cfg(test)]
        assert!(
            !self.state.is_touched(),
            "engine state changed outside a step"
        );
        if let Durability::Failed(e) = &self.durability {
            return Err(MmlsError::Unflushed(e.clone()));
        }
        let mark = self.outputs.len();
        self.buffer_undo.clear();
        let r = f(self).and_then(|v| self.commit_step().map(|()| v));
        if r.is_err() {
            self.rollback_step(mark);
        }
        r
    }

    /// Writes the rows the step touched and commits the store transaction.
    pub(super) fn commit_step(&mut self) -> Result<(), MmlsError> {
        for id in std::mem::take(&mut self.acked) {
            self.provider
                .store()
                .delete(Table::Outbox, &id.to_be_bytes());
        }
        let pending = std::mem::take(&mut self.rejected_pending);
        if pending > 0 {
            self.state.node.get_mut().rejected_inputs += pending;
        }
        self.state.write(self.provider.store());
        let deferred = matches!(self.durability, Durability::Batch);
        let r = match self.injected_fault() {
            Some(e) => Err(e),
            None if deferred => self
                .provider
                .store()
                .commit_deferred()
                .map_err(MmlsError::from),
            None => self.provider.store().commit().map_err(MmlsError::from),
        };
        match r {
            Ok(()) => self.state.settle(),
            Err(_) => self.rejected_pending += pending,
        }
        r
    }

    /// Back to the state of the last committed step: the touched rows, the
    /// store's pending writes and openmls's state, the buffers, the outputs.
    fn rollback_step(&mut self, outputs_mark: usize) {
        self.state.rollback();
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
        self.outputs.truncate(outputs_mark);
    }

    #[cfg(not(any(test, feature = "testkit")))]
    fn injected_fault(&mut self) -> Option<MmlsError> {
        None
    }

    #[cfg(not(any(test, feature = "testkit")))]
    fn injected_flush_fault(&mut self) -> Option<String> {
        None
    }

    /// The outputs to hand out now: none inside a batch (held for
    /// `end_batch`).
    pub(super) fn take_outputs(&mut self) -> Vec<Output> {
        if matches!(self.durability, Durability::Batch) {
            return vec![];
        }
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
        let node = self.state.node.get_mut();
        let id = node.outbox_next;
        node.outbox_next += 1;
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
