//! Where and when our own texts went out: for each (universe, per-sender
//! seq), the stream position and epoch of its entry in our send group and
//! the send time. The texts themselves are the engine's (`Table::Sent`,
//! kept for rejoin re-sends); this only adds what a receipt needs and the
//! engine does not keep. One line per send in `DIR/sent.idx`, appended
//! after the engine's step is durable (a crash in between loses a receipt,
//! never a message); bounded by `MAX_ENTRIES` (oldest dropped on load).

use mmls_core::Id32;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

pub const SENT_INDEX_FILE: &str = "sent.idx";

/// Entries kept at most (the engine keeps 100,000 texts per universe by
/// default; older ones show without receipt).
const MAX_ENTRIES: usize = 200_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentMeta {
    /// Position of the entry in our send group's stream.
    pub stream_seq: u64,
    /// Our send group's epoch when it was sent.
    pub epoch: u64,
    /// Unix milliseconds.
    pub at: u64,
    /// The delivery cursor after the last text delivered here before this
    /// send (orders our texts among the others' exactly, whatever the
    /// clocks; None in lines of older versions).
    pub seen: Option<u64>,
}

#[derive(Debug)]
pub struct OwnIndex {
    path: PathBuf,
    map: BTreeMap<(Id32, u64), SentMeta>,
}

fn parse_line(l: &str) -> Option<((Id32, u64), SentMeta)> {
    let mut it = l.split_ascii_whitespace();
    let u = Id32::parse_hex(it.next()?)?;
    let seq = it.next()?.parse().ok()?;
    let stream_seq = it.next()?.parse().ok()?;
    let epoch = it.next()?.parse().ok()?;
    let at = it.next()?.parse().ok()?;
    let seen = it.next().and_then(|s| s.parse().ok());
    Some((
        (u, seq),
        SentMeta {
            stream_seq,
            epoch,
            at,
            seen,
        },
    ))
}

fn line(u: &Id32, seq: u64, m: &SentMeta) -> String {
    let seen = m.seen.map(|c| format!(" {c}")).unwrap_or_default();
    format!(
        "{} {} {} {} {}{seen}\n",
        u.hex(),
        seq,
        m.stream_seq,
        m.epoch,
        m.at
    )
}

impl OwnIndex {
    /// Loads the index; bad lines (a torn last write) are skipped.
    pub fn load(dir: &Path) -> OwnIndex {
        let path = dir.join(SENT_INDEX_FILE);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let mut map = BTreeMap::new();
        for l in lines.iter().skip(lines.len().saturating_sub(MAX_ENTRIES)) {
            if let Some((k, v)) = parse_line(l) {
                map.insert(k, v);
            }
        }
        let me = OwnIndex { path, map };
        if lines.len() > MAX_ENTRIES {
            me.rewrite();
        }
        me
    }

    fn rewrite(&self) {
        let mut s = String::new();
        for ((u, seq), m) in &self.map {
            s.push_str(&line(u, *seq, m));
        }
        if let Err(e) = crate::datadir::write_private(&self.path, s.as_bytes(), false) {
            tracing::warn!(error = %e, "cannot rewrite the sent index");
        }
    }

    pub fn record(&mut self, u: Id32, seq: u64, meta: SentMeta) {
        self.map.insert((u, seq), meta);
        let mut opts = std::fs::OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        {
            // What we sent, and when: private like the rest of the data dir.
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let r = opts
            .open(&self.path)
            .and_then(|mut f| f.write_all(line(&u, seq, &meta).as_bytes()));
        if let Err(e) = r {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot append to the sent index");
        }
        if self.map.len() > MAX_ENTRIES {
            if let Some(k) = self.map.keys().next().copied() {
                self.map.remove(&k);
            }
        }
    }

    pub fn get(&self, u: &Id32, seq: u64) -> Option<SentMeta> {
        self.map.get(&(*u, seq)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_survives_reload_and_skips_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let u = Id32([7; 32]);
        let mut ix = OwnIndex::load(dir.path());
        let m = SentMeta {
            stream_seq: 5,
            epoch: 2,
            at: 1000,
            seen: Some(3),
        };
        ix.record(u, 1, m);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(SENT_INDEX_FILE))
            .unwrap();
        f.write_all(b"zz 1 2\nnot a line at all\n").unwrap();
        let ix = OwnIndex::load(dir.path());
        assert_eq!(ix.get(&u, 1), Some(m));
        assert_eq!(ix.get(&u, 2), None);
    }
}
