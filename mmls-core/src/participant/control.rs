//! Control texts of the driver (a node's display name): ordinary `Text`
//! entries in our send group, so MLS authenticates them and only members
//! read them, but numbered 0. They take no text number (users' texts keep
//! counting 1, 2, ...), are not kept for rejoin re-sends, and receivers
//! deliver them with `seq` 0 like any text (the driver recognises and hides
//! them). No wire or state change.

use super::*;

impl Participant {
    /// Sends `body` as a control text (numbered 0) in our send group,
    /// committing pending imports first, as `send` does.
    pub fn send_control(&mut self, universe: &Id32, body: &[u8]) -> Result<Vec<Output>, MmlsError> {
        let max = crate::envelope::MAX_ENVELOPE_BYTES / 2;
        if body.len() > max {
            return Err(MmlsError::TooLarge(body.len(), max));
        }
        let u = self.uni(universe)?;
        if u.removed {
            return Err(MmlsError::NotInUniverse(*universe));
        }
        if u.own_group.is_none() {
            return Err(MmlsError::UniverseNotReady(*universe));
        }
        if u.commit_due_before_send(&self.config) {
            self.step(|p| p.commit_own(*universe, false).map(|_| ()))?;
        }
        self.step(|p| {
            let payload = Payload::Text {
                seq: 0,
                body: ByteBuf::from(body.to_vec()),
            };
            p.send_payload(*universe, &payload)
        })?;
        Ok(self.take_outputs())
    }
}
