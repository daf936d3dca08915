//! End-to-end tests of the engine over the in-memory network.

use crate::envelope::{Envelope, Kind};
use crate::error::MmlsError;
use crate::id::Id32;
use crate::participant::{Event, Output};
use crate::profile::Profile;
use crate::store::Table;
use crate::testkit::{config, Net};

mod delivery;
mod devices;
mod federation;
mod flood;
mod group_cache;
mod group_commit;
mod hostile;
mod key_packages;
mod membership;
mod psk;
mod psk_gap;
mod recovery;
mod rejoin;
mod suites;
mod updates;
mod welcomes;
mod wire_size;

/// The commits published in `owner`'s send group, in stream order.
pub(super) fn commits_of(net: &mut Net, uid: &Id32, owner: usize) -> Vec<(Envelope, Vec<u8>)> {
    let m = net.member(owner);
    let g = net.node(owner).group_of(uid, &m).unwrap();
    net.all_bytes
        .iter()
        .filter_map(|b| {
            Envelope::decode(b)
                .ok()
                .filter(|e| e.kind == Kind::Commit && e.group == Some(g))
                .map(|e| (e, b.clone()))
        })
        .collect()
}
