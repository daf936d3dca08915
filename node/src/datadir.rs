//! The node's data directory.
//!
//! ```text
//! DIR/identity.key   Ed25519 secret, 32 bytes as hex (mode 0600): the libp2p
//!                    key *and* the MLS signature key
//! DIR/identity.x509.pem  optional: the certificate chain (leaf first) whose
//!                    leaf certifies that key; presented as an X.509
//!                    credential (federated universes)
//! DIR/node.json      {"name": ..., "created": unix seconds}
//! DIR/store.redb     the engine's store (mmls_core::Store)
//! DIR/api.token      local API bearer token, 32 random bytes as hex (0600)
//! DIR/api.addr       the API's bound address while the node runs
//! ```
//!
//! The directory is private: mode 0700, every file in it 0600 (created so,
//! and tightened at every `init` and `open`, so a data dir made by an older
//! version, or copied with a loose umask, is fixed on start). It holds the
//! identity key, MLS secrets, PSKs and the texts received and sent.

use crate::error::NodeError;
use mmls_core::devices::UserKey;
use mmls_core::{Identity, MmlsError, Store};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

pub const IDENTITY_FILE: &str = "identity.key";
pub const CERT_FILE: &str = "identity.x509.pem";
pub const NODE_FILE: &str = "node.json";
pub const STORE_FILE: &str = "store.redb";
pub const TOKEN_FILE: &str = "api.token";
pub const ADDR_FILE: &str = "api.addr";
/// The user key of the user this device is linked to (`mmls device link`).
pub const USER_KEY_FILE: &str = "user.key";

/// `node.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// Unix seconds.
    pub created: u64,
}

/// An initialised data directory (it holds an identity).
#[derive(Debug, Clone)]
pub struct DataDir {
    path: PathBuf,
}

impl DataDir {
    /// Creates the data dir (and the directory itself if missing) with a
    /// fresh identity, `node.json` and an API token. Fails if an identity is
    /// already there.
    pub fn init(dir: &Path, name: &str) -> Result<DataDir, NodeError> {
        Self::init_with(dir, name, None)
    }

    /// As `init`, but with an X.509 identity: `key_pem` (an Ed25519 PKCS#8
    /// key, e.g. from `openssl genpkey -algorithm ed25519`) becomes the
    /// node's identity key, and `chain_pem` (leaf first) must certify it.
    /// Checked before anything is written.
    pub fn init_x509(
        dir: &Path,
        name: &str,
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<DataDir, NodeError> {
        let seed =
            mmls_core::federation::ed25519_seed_from_pem(key_pem).map_err(MmlsError::from)?;
        let chain = mmls_core::federation::chain_from_pem(chain_pem).map_err(MmlsError::from)?;
        Identity::from_seed(seed).with_x509_chain(chain)?;
        let d = Self::init_with(dir, name, Some(seed))?;
        write_private(&d.file(CERT_FILE), chain_pem, false)?;
        Ok(d)
    }

    fn init_with(dir: &Path, name: &str, seed: Option<[u8; 32]>) -> Result<DataDir, NodeError> {
        fs::create_dir_all(dir).map_err(|e| NodeError::io(dir, e))?;
        let d = DataDir {
            path: dir.to_path_buf(),
        };
        d.tighten()?;
        if d.file(IDENTITY_FILE).exists() {
            return Err(NodeError::IdentityExists(dir.to_path_buf()));
        }
        let identity = match seed {
            Some(s) => Identity::from_seed(s),
            None => Identity::generate(),
        };
        let secret = Zeroizing::new(hex::encode(identity.secret_bytes().as_slice()));
        write_private(&d.file(IDENTITY_FILE), secret.as_bytes(), true)?;
        let info = NodeInfo {
            name: name.to_string(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let json = serde_json::to_vec_pretty(&info)
            .map_err(|e| NodeError::InvalidInput(format!("node.json: {e}")))?;
        write_private(&d.file(NODE_FILE), &json, false)?;
        d.api_token()?;
        Ok(d)
    }

    /// Opens an existing data dir (it must hold an identity).
    pub fn open(dir: &Path) -> Result<DataDir, NodeError> {
        let d = DataDir {
            path: dir.to_path_buf(),
        };
        if !d.file(IDENTITY_FILE).exists() {
            return Err(NodeError::NoIdentity(dir.to_path_buf()));
        }
        d.tighten()?;
        Ok(d)
    }

    /// Makes the directory 0700 and every file in it 0600. Nothing else
    /// on the machine may read the store: it holds every text in clear and
    /// the MLS secrets.
    #[cfg(unix)]
    pub fn tighten(&self) -> Result<(), NodeError> {
        tighten_tree(&self.path)
    }

    #[cfg(not(unix))]
    pub fn tighten(&self) -> Result<(), NodeError> {
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The identity key (the same bytes feed libp2p and the engine).
    pub fn identity_secret(&self) -> Result<Zeroizing<[u8; 32]>, NodeError> {
        let path = self.file(IDENTITY_FILE);
        let text = Zeroizing::new(fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                NodeError::NoIdentity(self.path.clone())
            } else {
                NodeError::io(&path, e)
            }
        })?);
        let bytes =
            Zeroizing::new(
                hex::decode(text.trim()).map_err(|e| NodeError::CorruptIdentity {
                    path: path.clone(),
                    reason: format!("not hex: {e}"),
                })?,
            );
        let arr: [u8; 32] =
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| NodeError::CorruptIdentity {
                    path: path.clone(),
                    reason: format!("expected 32 bytes, found {}", bytes.len()),
                })?;
        Ok(Zeroizing::new(arr))
    }

    /// The user key of the user this device is linked to, if any
    /// (`user.key`, hex, like the identity key).
    pub fn user_key(&self) -> Result<Option<UserKey>, NodeError> {
        let path = self.file(USER_KEY_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(NodeError::io(&path, e)),
        };
        parse_user_key(&text)
            .map(Some)
            .map_err(|reason| NodeError::CorruptUserKey { path, reason })
    }

    /// Keeps `key` as this device's user key (owner-only file).
    pub fn set_user_key(&self, key: &UserKey) -> Result<(), NodeError> {
        let text = Zeroizing::new(hex::encode(key.secret_bytes().as_slice()));
        write_private(&self.file(USER_KEY_FILE), text.as_bytes(), false)
    }

    /// The engine identity, with its certificate chain if the data dir
    /// holds one.
    pub fn identity(&self) -> Result<Identity, NodeError> {
        let s = self.identity_secret()?;
        let id = Identity::from_secret_bytes(s.as_slice())?;
        match self.certificate_chain()? {
            Some(chain) => id
                .with_x509_chain(chain)
                .map_err(|e| NodeError::CorruptIdentity {
                    path: self.file(CERT_FILE),
                    reason: e.to_string(),
                }),
            None => Ok(id),
        }
    }

    /// The certificate chain (DER, leaf first), if any.
    pub fn certificate_chain(&self) -> Result<Option<Vec<Vec<u8>>>, NodeError> {
        let path = self.file(CERT_FILE);
        match fs::read(&path) {
            Ok(pem) => mmls_core::federation::chain_from_pem(&pem)
                .map(Some)
                .map_err(|e| NodeError::CorruptIdentity {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(NodeError::io(path, e)),
        }
    }

    /// Replaces the certificate chain (a renewal), once it certifies our key.
    pub fn set_certificate(&self, chain_pem: &[u8]) -> Result<Vec<Vec<u8>>, NodeError> {
        let chain = mmls_core::federation::chain_from_pem(chain_pem).map_err(MmlsError::from)?;
        let s = self.identity_secret()?;
        Identity::from_secret_bytes(s.as_slice())?.with_x509_chain(chain.clone())?;
        write_private(&self.file(CERT_FILE), chain_pem, false)?;
        Ok(chain)
    }

    /// `node.json` (a default name if the file is missing).
    pub fn info(&self) -> Result<NodeInfo, NodeError> {
        let path = self.file(NODE_FILE);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| NodeError::CorruptNodeInfo {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NodeInfo {
                name: "mmls-node".into(),
                created: 0,
            }),
            Err(e) => Err(NodeError::io(path, e)),
        }
    }

    /// Opens (or creates) the engine's store, with typed errors for a
    /// corrupt file or one held by another process.
    pub fn open_store(&self) -> Result<Store, NodeError> {
        let path = self.file(STORE_FILE);
        let store = Store::open(&path).map_err(|e| store_error(&path, MmlsError::Store(e)))?;
        // redb creates it with the umask's mode (the 0700 directory already
        // kept others out meanwhile).
        set_mode(&path, 0o600)?;
        Ok(store)
    }

    /// The API token, created (random 32 bytes, hex, mode 0600) if missing.
    pub fn api_token(&self) -> Result<String, NodeError> {
        let path = self.file(TOKEN_FILE);
        match fs::read_to_string(&path) {
            Ok(t) if t.trim().len() >= 32 => return Ok(t.trim().to_string()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(NodeError::io(path, e)),
        }
        self.rotate_api_token()
    }

    /// Writes a fresh API token, at every start of the node, before its API
    /// listens: a token read during an earlier run (or kept in a copy of
    /// the dir) is worth nothing once the node restarts.
    pub fn rotate_api_token(&self) -> Result<String, NodeError> {
        let mut b = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
        let token = hex::encode(b);
        write_private(&self.file(TOKEN_FILE), token.as_bytes(), false)?;
        Ok(token)
    }

    pub fn write_api_addr(&self, addr: SocketAddr) -> Result<(), NodeError> {
        write_private(&self.file(ADDR_FILE), addr.to_string().as_bytes(), false)
    }

    pub fn remove_api_addr(&self) {
        let _ = fs::remove_file(self.file(ADDR_FILE));
    }

    pub fn read_api_addr(&self) -> Option<SocketAddr> {
        fs::read_to_string(self.file(ADDR_FILE))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
}

/// Maps an engine error met while opening the store to a typed node error.
/// A user key file's text (hex of the 32 secret bytes) as a key.
pub fn parse_user_key(text: &str) -> Result<UserKey, String> {
    let bytes = Zeroizing::new(hex::decode(text.trim()).map_err(|e| format!("not hex: {e}"))?);
    UserKey::from_secret_bytes(&bytes)
        .map_err(|_| format!("expected 32 bytes, found {}", bytes.len()))
}

pub(crate) fn store_error(path: &Path, e: MmlsError) -> NodeError {
    match e {
        MmlsError::Store(se) => {
            let reason = se.to_string();
            if reason.contains("already open") || reason.contains("DatabaseAlreadyOpen") {
                NodeError::StoreInUse(path.to_path_buf())
            } else {
                NodeError::CorruptStore {
                    path: path.to_path_buf(),
                    reason,
                }
            }
        }
        other => NodeError::Engine(other),
    }
}

/// `dir` 0700 and every regular file in it 0600. The node's files all sit
/// at the top; subdirectories (none of ours) and symlinks are left alone,
/// not followed: a data dir pointed at a shared folder by mistake must not
/// get its whole tree rewritten.
#[cfg(unix)]
fn tighten_tree(dir: &Path) -> Result<(), NodeError> {
    set_mode(dir, 0o700)?;
    for entry in fs::read_dir(dir).map_err(|e| NodeError::io(dir, e))? {
        let entry = entry.map_err(|e| NodeError::io(dir, e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| NodeError::io(&path, e))?;
        if kind.is_file() {
            set_mode(&path, 0o600)?;
        }
    }
    Ok(())
}

/// Sets `path`'s permission bits if they differ (Unix; elsewhere nothing).
fn set_mode(path: &Path, mode: u32) -> Result<(), NodeError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::symlink_metadata(path).map_err(|e| NodeError::io(path, e))?;
        if meta.permissions().mode() & 0o777 != mode {
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .map_err(|e| NodeError::io(path, e))?;
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// Writes a file atomically (temp file + rename), mode 0600 on Unix.
pub(crate) fn write_private(path: &Path, data: &[u8], create_new: bool) -> Result<(), NodeError> {
    let tmp = path.with_extension("tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(|e| NodeError::io(&tmp, e))?;
    f.write_all(data).map_err(|e| NodeError::io(&tmp, e))?;
    f.sync_all().map_err(|e| NodeError::io(&tmp, e))?;
    drop(f);
    if create_new && path.exists() {
        let _ = fs::remove_file(&tmp);
        return Err(NodeError::IdentityExists(
            path.parent().map(Path::to_path_buf).unwrap_or_default(),
        ));
    }
    fs::rename(&tmp, path).map_err(|e| NodeError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_open_and_refuse_reinit() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::init(dir.path(), "alice").unwrap();
        assert_eq!(d.info().unwrap().name, "alice");
        let token = d.api_token().unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(
            DataDir::open(dir.path()).unwrap().api_token().unwrap(),
            token
        );
        assert!(matches!(
            DataDir::init(dir.path(), "again"),
            Err(NodeError::IdentityExists(_))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in [IDENTITY_FILE, TOKEN_FILE] {
                let mode = fs::metadata(d.file(f)).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
        }
    }

    /// The data dir is 0700 and every file in it 0600: as created, and an
    /// older, loose one (0755 dir, 0644 files) is tightened on open.
    #[cfg(unix)]
    #[test]
    fn the_data_dir_is_private_and_a_loose_one_is_tightened_on_open() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        let d = DataDir::init(&dir, "alice").unwrap();
        drop(d.open_store().unwrap());
        d.write_api_addr("127.0.0.1:9".parse().unwrap()).unwrap();
        let mut own = crate::own::OwnIndex::load(&dir);
        own.record(
            mmls_core::Id32([1; 32]),
            1,
            crate::own::SentMeta {
                stream_seq: 1,
                epoch: 1,
                at: 1,
                seen: None,
            },
        );
        let files = [
            IDENTITY_FILE,
            NODE_FILE,
            TOKEN_FILE,
            STORE_FILE,
            ADDR_FILE,
            crate::own::SENT_INDEX_FILE,
        ];
        assert_eq!(mode(&dir), 0o700);
        for f in files {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
        // As an older version (or a loose umask) left it.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        for f in files {
            fs::set_permissions(dir.join(f), fs::Permissions::from_mode(0o644)).unwrap();
        }
        fs::write(dir.join(crate::names::CONTACTS_FILE), b"{}").unwrap();
        fs::set_permissions(
            dir.join(crate::names::CONTACTS_FILE),
            fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        let d = DataDir::open(&dir).unwrap();
        assert_eq!(mode(d.path()), 0o700);
        for f in files.iter().chain(&[crate::names::CONTACTS_FILE]) {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
    }

    #[test]
    fn missing_and_corrupt_identity_are_typed() {
        let dir = tempfile::tempdir().unwrap();
        let e = DataDir::open(dir.path()).unwrap_err();
        assert!(matches!(e, NodeError::NoIdentity(_)));
        assert!(e.to_string().contains("mmls init"), "{e}");
        fs::write(dir.path().join(IDENTITY_FILE), "zz").unwrap();
        let Err(e) = DataDir::open(dir.path()).unwrap().identity() else {
            panic!("a corrupt identity was accepted")
        };
        assert!(matches!(e, NodeError::CorruptIdentity { .. }), "{e}");
    }

    #[test]
    fn corrupt_store_names_the_file_and_the_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::init(dir.path(), "x").unwrap();
        fs::write(d.file(STORE_FILE), vec![0x5a; 64 * 1024]).unwrap();
        let e = d.open_store().unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, NodeError::CorruptStore { .. }), "{msg}");
        assert!(
            msg.contains("store.redb") && msg.contains("rejoin"),
            "{msg}"
        );
    }
}
