//! End-to-end tests of the engine over the in-memory network.

use crate::envelope::{Envelope, Kind};
use crate::error::MmlsError;
use crate::id::Id32;
use crate::participant::{Event, Output};
use crate::profile::Profile;
use crate::testkit::{config, Net};

mod delivery;
mod hostile;
mod membership;
mod psk;
mod recovery;
mod rejoin;
mod updates;
