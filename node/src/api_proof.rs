//! The listener proves it is our node before the CLI sends it our token.
//!
//! The CLI finds the node through `api.addr`. After a `kill -9` that file
//! stays, and whatever program binds that loopback port next would receive
//! the bearer token with the CLI's first request. So a client built from a
//! data dir first sends a random nonce, unauthenticated, to
//! `POST /v1/prove`; only a node that holds the token can answer with
//! HMAC-SHA256(token, label | its API port | nonce). The port is in it so a
//! program squatting the old port cannot relay the challenge to the real
//! node on its new port and pass the answer back.

use hmac::{Hmac, Mac};
use sha2::Sha256;

const LABEL: &[u8] = b"mmls api proof v1";

/// Longest nonce accepted (hex decoded): bounds the work a stranger can ask.
pub const MAX_NONCE: usize = 64;

/// The proof for `nonce`, by the holder of `token` serving on `port`.
pub fn proof(token: &str, port: u16, nonce: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length: `new_from_slice` cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(token.as_bytes()) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    mac.update(LABEL);
    mac.update(&port.to_be_bytes());
    mac.update(nonce);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proof_depends_on_token_port_and_nonce() {
        let p = proof("t", 4000, b"n");
        assert_eq!(p, proof("t", 4000, b"n"));
        assert_ne!(p, proof("u", 4000, b"n"));
        assert_ne!(p, proof("t", 4001, b"n"));
        assert_ne!(p, proof("t", 4000, b"m"));
    }
}
