//! Entry point for bytes from the network: decode, dispatch, count
//! rejections.

use super::*;

impl Participant {
    /// Handles one envelope from the network. `Err` means the envelope itself
    /// was rejected (typed) and nothing changed; entries it unblocks are
    /// processed too, and their own failures come back as `Event::Rejected`.
    pub fn handle_incoming(&mut self, bytes: &[u8]) -> Result<Vec<Output>, MmlsError> {
        let env = Envelope::decode(bytes).inspect_err(|_| self.rejected_pending += 1)?;
        let r = match env.kind {
            Kind::KeyPackage => self.step(|p| p.on_key_package(&env)),
            Kind::KeyPackageRequest => self.step(|p| p.on_kp_request(&env)),
            Kind::Rejoin => self.step(|p| p.on_rejoin(&env)),
            Kind::Proposal => self.step(|p| p.on_proposal(&env)),
            Kind::DeviceLink => self.step(|p| p.on_device_link(&env)),
            Kind::Welcome | Kind::Commit | Kind::Application => self.on_stream(env, bytes),
        };
        match r {
            Ok(()) => Ok(self.take_outputs()),
            Err(e) => {
                // A held entry is not refused, only not judged yet.
                if !e.is_duplicate() && !matches!(e, MmlsError::Held(_)) {
                    self.rejected_pending += 1;
                }
                // Outputs of steps that did commit stay queued and go out
                // with the next call.
                Err(e)
            }
        }
    }
}
