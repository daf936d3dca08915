//! Group commit in the driver: the engine inputs that are ready at once
//! (gossip, sync answers and requests, API commands) are handled as one
//! batch whose engine steps reach the disk with one flush
//! (`Participant::begin_batch` / `end_batch`). Nothing of the batch leaves
//! the node before that flush: engine outputs, sync responses (they may
//! carry our own entries, which must never be served before they are
//! durable, or a crash could fork our send group) and API replies (an
//! acknowledged send must survive a crash) wait here.
//!
//! A batch never waits for more input: it takes what is already queued, up
//! to `MAX_EVENTS` or `MAX_TIME` of work, so at low load every input is its
//! own batch (latency as before) and under load one fsync serves many.

use libp2p::request_response::ResponseChannel;
use mmls_core::sync::SyncMessage;
use std::time::{Duration, Instant};

/// Inputs handled per batch at most.
pub(crate) const MAX_EVENTS: usize = 256;
/// Work per batch at most before its flush.
pub(crate) const MAX_TIME: Duration = Duration::from_millis(2);

/// Something to send once the batch is durable.
pub(crate) type Reply = Box<dyn FnOnce() + Send>;

#[derive(Default)]
pub(crate) struct Batch {
    /// When the current batch started (None: outside a batch).
    started: Option<Instant>,
    events: usize,
    replies: Vec<Reply>,
    responses: Vec<(ResponseChannel<SyncMessage>, SyncMessage)>,
}

impl Batch {
    pub(crate) fn begin(&mut self) {
        self.started = Some(Instant::now());
        self.events = 0;
    }

    /// Whether a batch is open (outputs are held).
    pub(crate) fn is_open(&self) -> bool {
        self.started.is_some()
    }

    /// Counts an input; false once the batch is full.
    pub(crate) fn take_more(&mut self) -> bool {
        self.events += 1;
        self.events < MAX_EVENTS && self.started.is_some_and(|t| t.elapsed() < MAX_TIME)
    }

    pub(crate) fn reply(&mut self, r: Reply) {
        self.replies.push(r);
    }

    pub(crate) fn respond(&mut self, channel: ResponseChannel<SyncMessage>, msg: SyncMessage) {
        self.responses.push((channel, msg));
    }

    /// Closes the batch and hands out what waited for its flush.
    pub(crate) fn close(
        &mut self,
    ) -> (Vec<Reply>, Vec<(ResponseChannel<SyncMessage>, SyncMessage)>) {
        self.started = None;
        (
            std::mem::take(&mut self.replies),
            std::mem::take(&mut self.responses),
        )
    }
}
