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
    /// outputs are held until the batch is sealed and its one flush is
    /// written. Each step stays atomic: a failed one rolls back alone.
    /// `flushing`: the previous batch's flush is still being written
    /// ([`SealedBatch`]); this one cannot be sealed before it is done.
    Batch { flushing: bool },
    /// A batch's flush failed: memory is ahead of the disk, and nothing
    /// more may be committed or announced from it.
    Failed(String),
}

/// A group commit, closed: its flush (to be written, possibly on another
/// thread, by [`SealedBatch::write`]) and the outputs that may leave only
/// once it is written ([`Participant::batch_written`]).
#[derive(Debug)]
pub struct SealedBatch {
    flush: Option<crate::store::FlushWrite>,
    outputs: Vec<Output>,
}

impl SealedBatch {
    /// Makes the batch durable: one transaction, one fsync (blocks). A
    /// batch that wrote nothing has nothing to write.
    pub fn write(&self) -> Result<(), MmlsError> {
        match &self.flush {
            Some(w) => w.write().map_err(MmlsError::from),
            None => Ok(()),
        }
    }

    /// Whether there is anything to write.
    pub fn needs_write(&self) -> bool {
        self.flush.is_some()
    }
}

impl Participant {
    /// Starts a group commit: the steps of the inputs handled until the
    /// batch is sealed ([`Participant::seal_batch`] or
    /// [`Participant::end_batch`]) are made durable together, by one flush,
    /// and their outputs are handed out only once it is written (calls in
    /// between return none). Durable before announced still holds; a crash
    /// before the flush loses the whole batch, which nothing outside saw.
    /// While a sealed batch is being written the next one is already open.
    pub fn begin_batch(&mut self) -> Result<(), MmlsError> {
        match &self.durability {
            Durability::Failed(e) => Err(MmlsError::Unflushed(e.clone())),
            Durability::Batch { .. } => Ok(()),
            Durability::PerStep => {
                self.durability = Durability::Batch { flushing: false };
                Ok(())
            }
        }
    }

    /// Closes the open batch and freezes its flush, so that the next batch
    /// can run while it is written (pipelined group commit). The next
    /// batch is open at once; it can be sealed only after this one's
    /// [`Participant::batch_written`].
    pub fn seal_batch(&mut self) -> Result<SealedBatch, MmlsError> {
        match &self.durability {
            Durability::Failed(e) => return Err(MmlsError::Unflushed(e.clone())),
            Durability::PerStep => {
                return Ok(SealedBatch {
                    flush: None,
                    outputs: self.take_outputs(),
                })
            }
            Durability::Batch { flushing: true } => {
                return Err(MmlsError::Internal(
                    "the previous batch is still being flushed".into(),
                ))
            }
            Durability::Batch { flushing: false } => {}
        }
        let flush = self.provider.store().begin_flush()?;
        self.durability = Durability::Batch {
            flushing: flush.is_some(),
        };
        Ok(SealedBatch {
            flush,
            outputs: std::mem::take(&mut self.outputs),
        })
    }

    /// Takes back a sealed batch with the result of its write: its outputs
    /// if it is durable; otherwise nothing of it (or of anything after it)
    /// may leave, and every later step is refused.
    pub fn batch_written(
        &mut self,
        sealed: SealedBatch,
        written: Result<(), MmlsError>,
    ) -> Result<Vec<Output>, MmlsError> {
        if let Durability::Failed(e) = &self.durability {
            return Err(MmlsError::Unflushed(e.clone()));
        }
        let written = match self.injected_flush_fault() {
            Some(e) => Err(e),
            None => written.map_err(|e| e.to_string()),
        };
        let durable = written.is_ok();
        if let Some(w) = sealed.flush {
            self.provider.store().end_flush(w, durable);
        }
        match written {
            Ok(()) => {
                if let Durability::Batch { flushing } = &mut self.durability {
                    *flushing = false;
                }
                Ok(sealed.outputs)
            }
            Err(e) => Err(self.fail_flush(e)),
        }
    }

    /// Ends a group commit in one go: seals it, writes its flush here and
    /// hands out its outputs; per-step durability follows.
    pub fn end_batch(&mut self) -> Result<Vec<Output>, MmlsError> {
        let sealed = self.seal_batch()?;
        let written = sealed.write();
        let outs = self.batch_written(sealed, written)?;
        self.durability = Durability::PerStep;
        Ok(outs)
    }

    /// A flush failed: nothing of its batch or after it may leave (it may
    /// not be on disk), and memory is ahead of the disk for good.
    fn fail_flush(&mut self, e: String) -> MmlsError {
        self.outputs.clear();
        self.durability = Durability::Failed(e.clone());
        MmlsError::Unflushed(e)
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
        match r {
            Ok(_) => self.trim_groups(),
            Err(_) => self.rollback_step(mark),
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
        let deferred = matches!(self.durability, Durability::Batch { .. });
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
        if matches!(self.durability, Durability::Batch { .. }) {
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
