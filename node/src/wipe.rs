//! `mmls wipe`: the panic button for a device about to be lost or taken.
//!
//! Keys go first: the identity key (our libp2p and MLS signature key), the
//! user key of a linked device and the API token, each overwritten with
//! random bytes, synced and unlinked, so that if the wipe is cut short (the
//! battery, a hand on the power switch) nobody can act as us any more.
//! Then the store (MLS secrets, PSKs, texts received and sent), then every
//! other file of ours, then the directory.
//!
//! Only regular files at the top of a directory that holds a data dir's
//! marks (`identity.key` or `store.redb`) are touched: a `--data-dir`
//! pointed at a home directory by mistake is refused, and subdirectories
//! and symlinks (none are ours) are left and reported. Overwriting in place
//! reaches the old blocks on ordinary filesystems; on flash storage and
//! copy-on-write filesystems it may not (SECURITY.md says so): there, disk
//! encryption is what protects a captured device.

use crate::datadir::{IDENTITY_FILE, STORE_FILE, TOKEN_FILE, USER_KEY_FILE};
use crate::error::NodeError;
use rand::RngCore;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Secrets destroyed before anything else, in this order.
const KEY_FILES: [&str; 3] = [IDENTITY_FILE, USER_KEY_FILE, TOKEN_FILE];

/// What a wipe did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WipeReport {
    /// Files overwritten and removed, in the order they went.
    pub destroyed: Vec<PathBuf>,
    /// What was not ours to remove (subdirectories, symlinks): the
    /// directory itself then stays too.
    pub left: Vec<PathBuf>,
    /// Whether the directory itself is gone.
    pub dir_removed: bool,
}

/// Destroys the data dir `dir`: keys first, then the store, then the rest.
pub fn wipe(dir: &Path) -> Result<WipeReport, NodeError> {
    let meta = fs::symlink_metadata(dir).map_err(|e| NodeError::io(dir, e))?;
    if !meta.is_dir() {
        return Err(NodeError::NotADataDir(dir.to_path_buf()));
    }
    let marked = [IDENTITY_FILE, STORE_FILE]
        .iter()
        .any(|f| is_regular(&dir.join(f)));
    if !marked {
        return Err(NodeError::NotADataDir(dir.to_path_buf()));
    }
    let mut report = WipeReport::default();
    let first: Vec<PathBuf> = KEY_FILES
        .iter()
        .chain(std::iter::once(&STORE_FILE))
        .map(|f| dir.join(f))
        .filter(|p| is_regular(p))
        .collect();
    for path in first {
        shred(&path)?;
        report.destroyed.push(path);
    }
    let mut rest: Vec<PathBuf> = vec![];
    for entry in fs::read_dir(dir).map_err(|e| NodeError::io(dir, e))? {
        let entry = entry.map_err(|e| NodeError::io(dir, e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| NodeError::io(&path, e))?;
        if kind.is_file() {
            rest.push(path);
        } else {
            report.left.push(path);
        }
    }
    rest.sort();
    report.left.sort();
    for path in rest {
        shred(&path)?;
        report.destroyed.push(path);
    }
    if report.left.is_empty() {
        fs::remove_dir(dir).map_err(|e| NodeError::io(dir, e))?;
        report.dir_removed = true;
    }
    Ok(report)
}

fn is_regular(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.is_file())
}

/// Overwrites `path` in place with random bytes, syncs, then unlinks it.
fn shred(path: &Path) -> Result<(), NodeError> {
    let io = |e| NodeError::io(path, e);
    let mut f = fs::OpenOptions::new().write(true).open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rand::thread_rng().fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n]).map_err(io)?;
        left -= n as u64;
    }
    f.sync_all().map_err(io)?;
    drop(f);
    fs::remove_file(path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datadir::DataDir;

    #[test]
    fn keys_go_first_then_the_store_then_the_rest_and_the_dir() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("node");
        let d = DataDir::init(&dir, "field").unwrap();
        drop(d.open_store().unwrap());
        fs::write(dir.join(USER_KEY_FILE), b"00").unwrap();
        fs::write(dir.join("contacts.json"), b"{}").unwrap();
        let r = wipe(&dir).unwrap();
        let names: Vec<String> = r
            .destroyed
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names[..4],
            [IDENTITY_FILE, USER_KEY_FILE, TOKEN_FILE, STORE_FILE],
            "{names:?}"
        );
        assert!(names.contains(&"contacts.json".to_string()), "{names:?}");
        assert!(names.contains(&"node.json".to_string()), "{names:?}");
        assert!(r.dir_removed && r.left.is_empty());
        assert!(!dir.exists());
    }

    #[test]
    fn a_directory_that_is_no_data_dir_is_refused_untouched() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("notes.txt"), b"mine").unwrap();
        let r = wipe(root.path());
        assert!(matches!(r, Err(NodeError::NotADataDir(_))), "{r:?}");
        assert_eq!(fs::read(root.path().join("notes.txt")).unwrap(), b"mine");
        assert!(matches!(
            wipe(&root.path().join("absent")),
            Err(NodeError::Io { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn what_is_not_ours_stays_and_keeps_the_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("node");
        DataDir::init(&dir, "field").unwrap();
        let outside = root.path().join("outside.txt");
        fs::write(&outside, b"keep me").unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();
        fs::create_dir(dir.join("sub")).unwrap();
        let r = wipe(&dir).unwrap();
        assert!(!dir.join(IDENTITY_FILE).exists());
        assert_eq!(r.left, vec![dir.join("link"), dir.join("sub")]);
        assert!(!r.dir_removed && dir.exists());
        assert_eq!(
            fs::read(&outside).unwrap(),
            b"keep me",
            "a symlink is not followed"
        );
    }
}
