//! Group commit in the driver: the engine inputs that are ready at once
//! (gossip, sync answers and requests, API commands) are handled as one
//! batch whose engine steps reach the disk with one flush. Nothing of the
//! batch leaves the node before that flush: engine outputs, the sync
//! agent's actions (its summaries name our heads), sync responses (they
//! may carry our own entries, which must never be served before they are
//! durable, or a crash could fork our send group) and API replies (an
//! acknowledged send must survive a crash) wait here.
//!
//! The flush is pipelined: a sealed batch is written on a blocking thread
//! (`Participant::seal_batch`, `SealedBatch::write`) while the next batch
//! runs, and what it held is released when the write is done, before the
//! next batch is sealed. The fsync no longer stops the node's work.
//!
//! A batch never waits for more input: it takes what is already queued, up
//! to `MAX_EVENTS` or `MAX_TIME` of work, so at low load every input is its
//! own batch (latency as before) and under load one fsync serves many.
//! While the previous batch's flush is still being written, the open batch
//! goes on taking inputs as they arrive (up to `MAX_EVENTS`): a slow disk
//! makes batches larger, not the node idle.

use libp2p::request_response::ResponseChannel;
use mmls_core::sync::SyncMessage;
use mmls_core::{MmlsError, SealedBatch};
use std::time::{Duration, Instant};

/// Inputs handled per batch at most.
pub(crate) const MAX_EVENTS: usize = 256;
/// Work per batch at most before its flush.
pub(crate) const MAX_TIME: Duration = Duration::from_millis(2);

/// Something to send once the batch is durable.
pub(crate) type Reply = Box<dyn FnOnce() + Send>;

/// A sync agent action.
pub(crate) type Action = mmls_core::sync::Action<libp2p::PeerId>;

/// What a batch holds back until it is durable.
#[derive(Default)]
pub(crate) struct Held {
    pub(crate) actions: Vec<Action>,
    pub(crate) responses: Vec<(ResponseChannel<SyncMessage>, SyncMessage)>,
    pub(crate) replies: Vec<Reply>,
}

/// The open batch.
#[derive(Default)]
pub(crate) struct Batch {
    /// When the current batch started (None: outside a batch).
    started: Option<Instant>,
    events: usize,
    held: Held,
}

impl Batch {
    /// Opens a batch (or goes on with the open one).
    pub(crate) fn begin(&mut self) {
        if self.started.is_none() {
            self.started = Some(Instant::now());
            self.events = 0;
        }
    }

    /// Whether a batch is open (outputs are held).
    pub(crate) fn is_open(&self) -> bool {
        self.started.is_some()
    }

    /// Counts an input; false once the batch is full or has worked long
    /// enough for now.
    pub(crate) fn take_more(&mut self) -> bool {
        self.events += 1;
        self.events < MAX_EVENTS && self.started.is_some_and(|t| t.elapsed() < MAX_TIME)
    }

    /// Whether the batch must be sealed, even if it has to wait for the
    /// previous flush.
    pub(crate) fn is_full(&self) -> bool {
        self.events >= MAX_EVENTS
    }

    pub(crate) fn reply(&mut self, r: Reply) {
        self.held.replies.push(r);
    }

    pub(crate) fn respond(&mut self, channel: ResponseChannel<SyncMessage>, msg: SyncMessage) {
        self.held.responses.push((channel, msg));
    }

    pub(crate) fn hold(&mut self, actions: impl IntoIterator<Item = Action>) {
        self.held.actions.extend(actions);
    }

    /// Closes the batch and hands out what waits for its flush.
    pub(crate) fn close(&mut self) -> Held {
        self.started = None;
        std::mem::take(&mut self.held)
    }
}

/// A sealed batch whose flush a blocking thread is writing.
pub(crate) struct InFlight {
    pub(crate) task: tokio::task::JoinHandle<(SealedBatch, Result<(), MmlsError>)>,
    pub(crate) held: Held,
}

/// A sealed batch back from its write.
pub(crate) struct Written {
    pub(crate) sealed: Option<SealedBatch>,
    pub(crate) result: Result<(), MmlsError>,
    pub(crate) held: Held,
}

impl InFlight {
    /// Starts writing `sealed` on a blocking thread.
    pub(crate) fn start(sealed: SealedBatch, held: Held) -> InFlight {
        let task = tokio::task::spawn_blocking(move || {
            let r = sealed.write();
            (sealed, r)
        });
        InFlight { task, held }
    }
}

/// Waits for the write in `slot` (forever if there is none: for `select!`).
pub(crate) async fn written(slot: &mut Option<InFlight>) -> Written {
    let Some(f) = slot.as_mut() else {
        return std::future::pending().await;
    };
    let joined = (&mut f.task).await;
    let held = slot.take().map(|f| f.held).unwrap_or_default();
    match joined {
        Ok((sealed, result)) => Written {
            sealed: Some(sealed),
            result,
            held,
        },
        Err(e) => Written {
            sealed: None,
            result: Err(MmlsError::Internal(format!("the flush task failed: {e}"))),
            held,
        },
    }
}
