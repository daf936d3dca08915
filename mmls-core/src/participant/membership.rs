//! Who is in a send group, by verified member id.

use super::*;

impl Participant {
    pub(super) fn group_members(
        &mut self,
        g: &Id32,
    ) -> Result<Vec<(LeafNodeIndex, MemberId)>, MmlsError> {
        let group = self.group(g)?;
        Ok(group
            .members()
            .filter_map(|m| {
                verify_binding(&m.credential, &m.signature_key)
                    .ok()
                    .map(|id| (m.index, id))
            })
            .collect())
    }
}
