//! Users and their devices: the signed device-link statement (what the
//! engine does with it is `participant/devices.rs`).
//!
//! With basic credentials a user is an Ed25519 *user key*, apart from every
//! device's identity key: made on the user's first device and copied (as a
//! key file) to each device the user links. A device-link statement says
//! (user, device member id, time, linked or not); the newest statement per
//! device wins, so an unlink is a newer statement with `linked: false`.
//!
//! A link is signed twice: by the user key (only the user can attach a
//! device to the user, so an admin cannot make a device it controls speak
//! as someone else) and by the device's own identity key (so a user cannot
//! claim somebody else's device and have that person's messages shown as
//! its own). An unlink needs the user key alone: a user may always disown
//! a lost or stolen device. Both verify from public data alone, like the
//! PeerId binding of members, wherever they travel.

use crate::error::MmlsError;
use crate::identity::{Identity, MemberId};
use crate::universe::{from_cbor, to_cbor};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use zeroize::Zeroizing;

/// How a key user's id starts (then the base58 public key): never a PeerId
/// (`12D3KooW...`), so a user id and a member id cannot be confused.
pub const USER_PREFIX: &str = "u:";
/// The label every device-link signature is made under (the user key signs
/// nothing else, but labels keep it that way if it ever does).
const LINK_LABEL: &[u8] = b"mmls device link v1";
/// The label of the device's own signature: the identity key signs MLS
/// messages, Welcomes and rejoin requests too, under other labels.
const DEVICE_LABEL: &[u8] = b"mmls device accepts link v1";

/// A user's secret key (basic credentials).
#[derive(Clone)]
pub struct UserKey {
    key: SigningKey,
}

impl UserKey {
    pub fn generate() -> UserKey {
        UserKey {
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    pub fn from_secret_bytes(bytes: &[u8]) -> Result<UserKey, MmlsError> {
        let b: [u8; 32] = bytes
            .try_into()
            .map_err(|_| MmlsError::InvalidIdentityKey)?;
        Ok(UserKey {
            key: SigningKey::from_bytes(&b),
        })
    }

    /// What to export to link devices from elsewhere.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.key.to_bytes())
    }

    /// `u:` and the base58 public key.
    pub fn user_id(&self) -> String {
        format!(
            "{USER_PREFIX}{}",
            bs58::encode(self.key.verifying_key().to_bytes()).into_string()
        )
    }

    /// Links `device` (its identity key at hand: the device consents by
    /// signing too) to this user, at driver time `at` (ms).
    pub fn link(&self, device: &Identity, at: u64) -> SignedDeviceLink {
        let mut s = self.sign(&device.member_id(), at, true);
        s.device_sig = Some(ByteBuf::from(
            device.sign_detached(&labelled(DEVICE_LABEL, &s.link)),
        ));
        s
    }

    /// Says `device` is no longer one of this user's, at `at` (ms).
    pub fn unlink(&self, device: &MemberId, at: u64) -> SignedDeviceLink {
        self.sign(device, at, false)
    }

    fn sign(&self, device: &MemberId, at: u64, linked: bool) -> SignedDeviceLink {
        let link = DeviceLink {
            user: self.user_id(),
            device: device.clone(),
            at,
            linked,
        };
        let bytes = to_cbor(&link);
        let sig = self
            .key
            .sign(&labelled(LINK_LABEL, &bytes))
            .to_bytes()
            .to_vec();
        SignedDeviceLink {
            link: ByteBuf::from(bytes),
            sig: ByteBuf::from(sig),
            device_sig: None,
        }
    }
}

/// "`device` is (or, `linked: false`, no longer is) a device of `user`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceLink {
    pub user: String,
    pub device: MemberId,
    /// Driver time (ms) of the statement: the newest per device wins.
    pub at: u64,
    pub linked: bool,
}

/// A [`DeviceLink`] as the user key signed it (CBOR bytes and signature).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDeviceLink {
    pub link: ByteBuf,
    /// The user key's signature.
    pub sig: ByteBuf,
    /// The device's identity key's signature: required on a link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_sig: Option<ByteBuf>,
}

impl SignedDeviceLink {
    /// The statement, if the key its user id names signed it and, for a
    /// link, the device named signed it too.
    pub fn verify(&self) -> Result<DeviceLink, MmlsError> {
        let link: DeviceLink = from_cbor(&self.link).map_err(MmlsError::Unexpected)?;
        let pk = user_public_key(&link.user)?;
        let sig = Signature::from_slice(&self.sig).map_err(|_| MmlsError::BadSignature)?;
        pk.verify(&labelled(LINK_LABEL, &self.link), &sig)
            .map_err(|_| MmlsError::BadSignature)?;
        if link.linked {
            let dsig = self.device_sig.as_ref().ok_or(MmlsError::BadSignature)?;
            link.device
                .verify(&labelled(DEVICE_LABEL, &self.link), dsig)?;
        }
        Ok(link)
    }

    pub fn encode(&self) -> Vec<u8> {
        to_cbor(self)
    }

    pub fn decode(b: &[u8]) -> Result<SignedDeviceLink, MmlsError> {
        from_cbor(b).map_err(MmlsError::Unexpected)
    }
}

/// The public key a key user's id names.
fn user_public_key(user: &str) -> Result<VerifyingKey, MmlsError> {
    let bad = || MmlsError::InvalidMemberId(user.chars().take(80).collect());
    let b58 = user.strip_prefix(USER_PREFIX).ok_or_else(bad)?;
    let bytes = bs58::decode(b58).into_vec().map_err(|_| bad())?;
    let pk: [u8; 32] = bytes.as_slice().try_into().map_err(|_| bad())?;
    VerifyingKey::from_bytes(&pk).map_err(|_| bad())
}

fn labelled(label: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut m = label.to_vec();
    m.extend_from_slice(bytes);
    m
}

/// The newest verified statement per device wins; older ones, replays and
/// forgeries change nothing. An unlink counts only from the user the device
/// is linked to: it needs no signature of the device, so from anyone else
/// (dated far ahead) it would detach a device from its user for good.
pub fn newer(current: Option<&DeviceLink>, candidate: &DeviceLink) -> bool {
    match current {
        None => candidate.linked,
        Some(c) => candidate.at > c.at && (candidate.linked || c.user == candidate.user),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(i: u8) -> Identity {
        Identity::from_seed([i; 32])
    }

    #[test]
    fn a_link_verifies_for_its_user_and_device_only() {
        let alice = UserKey::generate();
        assert!(alice.user_id().starts_with(USER_PREFIX));
        let s = alice.link(&device(1), 5);
        let link = s.verify().expect("valid");
        assert_eq!(link.user, alice.user_id());
        assert_eq!(link.device, device(1).member_id());
        assert!(link.linked);
        let back = SignedDeviceLink::decode(&s.encode()).expect("decodes");
        assert_eq!(back.verify().expect("valid"), link);

        // Another device, or another user, in the same signatures: refused.
        let mut other = link.clone();
        other.device = device(2).member_id();
        let forged = SignedDeviceLink {
            link: ByteBuf::from(to_cbor(&other)),
            ..s.clone()
        };
        assert!(matches!(forged.verify(), Err(MmlsError::BadSignature)));
        let mallory = UserKey::generate();
        let mut stolen = link;
        stolen.user = mallory.user_id();
        let forged = SignedDeviceLink {
            link: ByteBuf::from(to_cbor(&stolen)),
            ..s.clone()
        };
        assert!(matches!(forged.verify(), Err(MmlsError::BadSignature)));
    }

    #[test]
    fn a_user_cannot_claim_a_device_that_did_not_sign() {
        let mallory = UserKey::generate();
        // Mallory's own signature on "Bob's device is mine", without the
        // device's: refused, whether the device signature is missing or
        // made by another device.
        let claim = mallory.sign(&device(2).member_id(), 5, true);
        assert!(matches!(claim.verify(), Err(MmlsError::BadSignature)));
        let mut borrowed = mallory.link(&device(3), 5);
        let mut link: DeviceLink = from_cbor(&borrowed.link).expect("cbor");
        link.device = device(2).member_id();
        borrowed.link = ByteBuf::from(to_cbor(&link));
        borrowed.sig = mallory.sign(&device(2).member_id(), 5, true).sig;
        assert!(matches!(borrowed.verify(), Err(MmlsError::BadSignature)));
        // An unlink needs the user alone: a lost device cannot sign.
        let gone = mallory.unlink(&device(2).member_id(), 6);
        assert!(!gone.verify().expect("valid unlink").linked);
    }

    #[test]
    fn garbage_is_a_typed_error() {
        let garbage = SignedDeviceLink {
            link: ByteBuf::from(b"\xff\x00".to_vec()),
            sig: ByteBuf::from(vec![0; 64]),
            device_sig: None,
        };
        assert!(garbage.verify().is_err());
        assert!(SignedDeviceLink::decode(b"not cbor").is_err());
        // A member id is not a user id.
        let s = UserKey::generate().link(&device(1), 1);
        let mut link: DeviceLink = from_cbor(&s.link).expect("cbor");
        link.user = device(3).member_id().to_string();
        let bad = SignedDeviceLink {
            link: ByteBuf::from(to_cbor(&link)),
            ..s
        };
        assert!(matches!(bad.verify(), Err(MmlsError::InvalidMemberId(_))));
    }

    #[test]
    fn the_newest_statement_wins_and_an_unlink_is_one() {
        let alice = UserKey::generate();
        let linked = alice.link(&device(1), 10).verify().unwrap();
        let unlinked = alice.unlink(&device(1).member_id(), 20).verify().unwrap();
        assert!(newer(None, &linked));
        assert!(newer(Some(&linked), &unlinked));
        // A replay of the older link does not undo the unlink.
        assert!(!newer(Some(&unlinked), &linked));
        // Another user's unlink, however far ahead it is dated, is nothing.
        let mallory = UserKey::generate();
        let theirs = mallory
            .unlink(&device(1).member_id(), u64::MAX)
            .verify()
            .unwrap();
        assert!(!newer(Some(&linked), &theirs));
        assert!(!newer(None, &theirs));
        let key = UserKey::from_secret_bytes(alice.secret_bytes().as_slice()).unwrap();
        assert_eq!(
            key.user_id(),
            alice.user_id(),
            "an exported key is the user"
        );
    }
}
