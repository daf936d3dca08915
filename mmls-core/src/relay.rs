//! The relay rule: what a gossip hop does with an input after the engine's
//! verdict on it. Every driver forwards by this rule (the node maps it to
//! gossipsub's validation result, the simulator to its flooding), so that
//! what the simulator measures is what the node does.

use crate::MmlsError;

/// What a relay does with one gossip input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    /// Accepted: pass it on.
    Forward,
    /// Not for us or not judgeable now (a duplicate, a group we are not in,
    /// a universe still joining, a full buffer, our own disk failing):
    /// dropped without blaming the sender.
    Drop,
    /// Wrong in itself (bad signature, malformed, forged): dropped and the
    /// sender penalised.
    Penalise,
}

/// The relay rule for the engine's result on one input. Lobby traffic for
/// universes we are not in (Welcomes, rejoin requests of others) is
/// forwarded: we cannot judge it, and its addressees may sit behind us.
/// Duplicates are dropped (sync repairs stream entries), and so are entries
/// of send groups we do not know, held unverified (`MmlsError::Held`):
/// nothing a stranger makes up is passed on. A re-announced
/// KeyPackage is not a duplicate but a valid input (`Ok`), so it travels.
pub fn relay<T>(r: &Result<T, MmlsError>, lobby: bool) -> Relay {
    use MmlsError as E;
    match r {
        Ok(_) => Relay::Forward,
        Err(e) if e.is_duplicate() => Relay::Drop,
        Err(E::NotInUniverse(_) | E::UnknownUniverse(_) | E::NotInGroup(_)) if lobby => {
            Relay::Forward
        }
        Err(
            E::NotInUniverse(_)
            | E::UnknownUniverse(_)
            | E::NotInGroup(_)
            | E::UnknownGroup(_)
            | E::UniverseNotReady(_)
            | E::Held(_)
            | E::DeviceLinkFromFuture { .. }
            | E::BufferFull(_)
            | E::Store(_)
            | E::Internal(_),
        ) => Relay::Drop,
        Err(_) => Relay::Penalise,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Id32;

    #[test]
    fn relay_rule() {
        let ok: Result<(), MmlsError> = Ok(());
        assert_eq!(relay(&ok, false), Relay::Forward);
        let dup: Result<(), MmlsError> = Err(MmlsError::Duplicate {
            group: Id32([0; 32]),
            seq: 1,
        });
        assert_eq!(relay(&dup, false), Relay::Drop);
        // A stream entry replayed on the lobby is not passed on.
        assert_eq!(relay(&dup, true), Relay::Drop);
        let foreign: Result<(), MmlsError> = Err(MmlsError::NotInUniverse(Id32([0; 32])));
        assert_eq!(relay(&foreign, true), Relay::Forward);
        assert_eq!(relay(&foreign, false), Relay::Drop);
        let bad: Result<(), MmlsError> = Err(MmlsError::BadSignature);
        assert_eq!(relay(&bad, true), Relay::Penalise);
        let busy: Result<(), MmlsError> = Err(MmlsError::BufferFull(Id32([0; 32])));
        assert_eq!(relay(&busy, false), Relay::Drop);
        // Held unverified (a send group we do not know): never passed on.
        let held: Result<(), MmlsError> = Err(MmlsError::Held(Id32([0; 32])));
        assert_eq!(relay(&held, false), Relay::Drop);
        assert_eq!(relay(&held, true), Relay::Drop);
    }
}
