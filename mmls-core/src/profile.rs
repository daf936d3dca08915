//! The exporter labels a universe derives its cross-group PSKs with.
//!
//! `mmls-00` follows draft-xue-multi-mls (`exportPSK`, context = universe id,
//! the universe's export length); `dmls` follows its successor
//! draft-xue-distributed-mls (`exporter-psk`, context `"psk_id"`). Every
//! member of a universe derives with the profile its definition names, so
//! mixing is impossible.
//!
//! Both export the universe's `export_len` bytes. DMLS says KDF.Nh, the
//! exporting group's hash length; but send groups of one universe may use
//! different suites (MMLS draft section 6), and what they must share is the
//! length of what they export to each other, so it is the universe's, not
//! a suite's. Every suite we implement has Nh = 32 = the default export
//! length, so a `dmls` universe exports what it always did.

use crate::error::MmlsError;
use crate::id::Id32;
use openmls::prelude::MlsGroup;
use openmls_traits::crypto::OpenMlsCrypto;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Profile {
    #[default]
    #[serde(rename = "mmls-00")]
    Mmls00,
    #[serde(rename = "dmls")]
    Dmls,
}

impl Profile {
    /// The PSK id the drafts define: 8-byte big-endian epoch || group id.
    pub fn psk_id(group: &Id32, epoch: u64) -> Vec<u8> {
        let mut v = epoch.to_be_bytes().to_vec();
        v.extend_from_slice(group.as_bytes());
        v
    }

    /// Parses a PSK id back into (group, epoch); None if it is not ours.
    pub fn parse_psk_id(id: &[u8]) -> Option<(Id32, u64)> {
        if id.len() != 40 {
            return None;
        }
        let epoch = u64::from_be_bytes(id[..8].try_into().ok()?);
        Some((Id32::from_slice(&id[8..])?, epoch))
    }

    /// Exports the PSK of `group`'s *current* epoch (openmls can only export
    /// the current epoch, which is why the engine calls this on every merge).
    pub fn export_psk(
        self,
        crypto: &impl OpenMlsCrypto,
        group: &MlsGroup,
        universe: &Id32,
        export_len: usize,
    ) -> Result<Vec<u8>, MmlsError> {
        let r = match self {
            Profile::Mmls00 => {
                group.export_secret(crypto, "exportPSK", universe.as_bytes(), export_len)
            }
            Profile::Dmls => group.export_secret(crypto, "exporter-psk", b"psk_id", export_len),
        };
        r.map_err(MmlsError::mls)
    }

    /// draft-xue-multi-mls `derivedGroupId`: the id of a member's send group,
    /// exported from the group through which it learned the universe.
    pub fn derived_group_id(
        crypto: &impl OpenMlsCrypto,
        group: &MlsGroup,
        signature_key: &[u8],
    ) -> Result<Id32, MmlsError> {
        let b = group
            .export_secret(crypto, "derivedGroupId", signature_key, 32)
            .map_err(MmlsError::mls)?;
        Id32::from_slice(&b).ok_or_else(|| MmlsError::Internal("derived id length".into()))
    }

    pub fn name(self) -> &'static str {
        match self {
            Profile::Mmls00 => "mmls-00",
            Profile::Dmls => "dmls",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mmls-00" | "mmls" => Ok(Profile::Mmls00),
            "dmls" => Ok(Profile::Dmls),
            o => Err(format!("unknown profile {o:?} (expected mmls-00 or dmls)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn psk_id_round_trips() {
        let g = Id32([9; 32]);
        let id = Profile::psk_id(&g, 0x0102);
        assert_eq!(&id[..8], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(Profile::parse_psk_id(&id), Some((g, 0x0102)));
        assert_eq!(Profile::parse_psk_id(&id[..39]), None);
    }
}
