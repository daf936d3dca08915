//! Display names. Each node announces the name of its `node.json` to the
//! members of its universes as an in-band text in its own send group (so it
//! is authenticated by MLS exactly like a message from that member, and
//! travels only to members); receivers record it and hide it from the
//! conversation. A local nickname (`mmls contact name ID NAME`) overrides
//! what a member announced. Both live in `DIR/contacts.json`.
//!
//! A name is a label for people, never an identity: every security decision
//! (membership, admin rights, who sent what) uses the member id.

use crate::datadir::write_private;
use crate::error::NodeError;
use mmls_core::MemberId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The contacts file in the data dir.
pub const CONTACTS_FILE: &str = "contacts.json";

/// The first bytes of a name announcement (a text no user can type: the
/// API refuses texts that start with NUL).
pub const NAME_PREFIX: &[u8] = b"\0mmls-name\0";

/// Longest name kept, in bytes (longer ones are cut at a char boundary).
pub const MAX_NAME_BYTES: usize = 64;

/// Most contacts kept (announced plus nicknames): a bound on the file.
const MAX_CONTACTS: usize = 10_000;

/// A name cleaned for display: control characters (Cc) and format
/// characters (Cf: bidi overrides and isolates such as U+202E, zero-width
/// spaces and joiners, U+FEFF) dropped, whitespace trimmed, at most
/// `MAX_NAME_BYTES`. None if nothing is left. Format characters are
/// invisible or reorder what follows: "Alice" with a zero-width space in
/// it looks like Alice and is another name, and a right-to-left override
/// makes a name read as something else.
pub fn clean_name(s: &str) -> Option<String> {
    let mut out = String::new();
    for c in s.chars().filter(|c| !c.is_control() && !is_format(*c)) {
        if out.len() + c.len_utf8() > MAX_NAME_BYTES {
            break;
        }
        out.push(c);
    }
    let t = out.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Whether `c` is a Unicode format character (general category Cf).
fn is_format(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    c.general_category() == GeneralCategory::Format
}

/// The body of a name announcement.
pub fn announcement(name: &str) -> Vec<u8> {
    let mut b = NAME_PREFIX.to_vec();
    b.extend_from_slice(clean_name(name).unwrap_or_default().as_bytes());
    b
}

/// The announced name in a message body, if it is an announcement (Some("")
/// for an empty or unusable one: still not a user text).
pub fn parse_announcement(body: &[u8]) -> Option<String> {
    let rest = body.strip_prefix(NAME_PREFIX)?;
    Some(clean_name(&String::from_utf8_lossy(rest)).unwrap_or_default())
}

/// Whether a body is a control text of the node (hidden from people).
pub fn is_control(body: &[u8]) -> bool {
    body.first() == Some(&0)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct ContactsFile {
    #[serde(default)]
    nicknames: BTreeMap<String, String>,
    #[serde(default)]
    announced: BTreeMap<String, String>,
}

/// A name another member also shows gets the member's short id (the end
/// of its id, as `MemberId::short`): names are chosen by their bearers, and
/// two "Alice"s must not read as one person.
fn with_short_id(name: String, id: &str, twins: usize) -> String {
    if twins == 0 {
        return name;
    }
    let short = id.get(id.len().saturating_sub(6)..).unwrap_or(id);
    format!("{name} ({short})")
}

/// Names known to this node.
#[derive(Debug)]
pub struct Names {
    path: PathBuf,
    file: ContactsFile,
}

/// One member's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameInfo {
    /// What the user calls them here (nickname, else announced name).
    pub display: Option<String>,
    pub nickname: Option<String>,
    pub announced: Option<String>,
}

impl Names {
    /// Loads `DIR/contacts.json`; a missing file is empty, an unreadable
    /// one is reported and then replaced at the next change.
    pub fn load(dir: &Path) -> Names {
        let path = dir.join(CONTACTS_FILE);
        let file = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "contacts file unreadable; starting empty");
                ContactsFile::default()
            }),
            Err(_) => ContactsFile::default(),
        };
        // Names stored before format characters were stripped are cleaned
        // as they are read (and an unusable one dropped).
        let clean = |m: BTreeMap<String, String>| -> BTreeMap<String, String> {
            m.into_iter()
                .filter_map(|(k, v)| clean_name(&v).map(|v| (k, v)))
                .collect()
        };
        let file = ContactsFile {
            nicknames: clean(file.nicknames),
            announced: clean(file.announced),
        };
        Names { path, file }
    }

    fn save(&self) -> Result<(), NodeError> {
        let b = serde_json::to_vec_pretty(&self.file)
            .map_err(|e| NodeError::InvalidInput(format!("contacts: {e}")))?;
        write_private(&self.path, &b, false)
    }

    pub fn info(&self, m: &MemberId) -> NameInfo {
        let nickname = self.file.nicknames.get(m.as_str()).cloned();
        let announced = self.file.announced.get(m.as_str()).cloned();
        let display = self.plain(m.as_str()).map(|name| {
            let twins = self
                .ids()
                .filter(|o| *o != m.as_str() && self.plain(o).as_deref() == Some(&name))
                .count();
            with_short_id(name, m.as_str(), twins)
        });
        NameInfo {
            display,
            nickname,
            announced,
        }
    }

    /// Nickname, else announced name, as given.
    fn plain(&self, id: &str) -> Option<String> {
        self.file
            .nicknames
            .get(id)
            .or_else(|| self.file.announced.get(id))
            .cloned()
    }

    /// Every member with a name (a member with both kinds appears twice).
    fn ids(&self) -> impl Iterator<Item = &str> {
        self.file
            .nicknames
            .keys()
            .chain(self.file.announced.keys())
            .map(String::as_str)
    }

    /// The name to show for `m`, if any.
    pub fn display(&self, m: &MemberId) -> Option<String> {
        self.info(m).display
    }

    /// Records what `m` announced (saved only if it changed).
    pub fn announced(&mut self, m: &MemberId, name: &str) {
        let Some(name) = clean_name(name) else {
            return;
        };
        if self.file.announced.get(m.as_str()) == Some(&name) {
            return;
        }
        if self.file.announced.len() >= MAX_CONTACTS
            && !self.file.announced.contains_key(m.as_str())
        {
            return;
        }
        self.file.announced.insert(m.to_string(), name);
        if let Err(e) = self.save() {
            tracing::warn!(error = %e, "cannot save contacts");
        }
    }

    /// Sets (Some) or clears (None) the local nickname of `m`.
    pub fn set_nickname(&mut self, m: &MemberId, name: Option<&str>) -> Result<(), NodeError> {
        match name {
            Some(n) => {
                let n = clean_name(n).ok_or_else(|| {
                    NodeError::InvalidInput("a nickname needs a visible character".into())
                })?;
                if self.file.nicknames.len() >= MAX_CONTACTS
                    && !self.file.nicknames.contains_key(m.as_str())
                {
                    return Err(NodeError::InvalidInput("too many contacts".into()));
                }
                self.file.nicknames.insert(m.to_string(), n);
            }
            None => {
                self.file.nicknames.remove(m.as_str());
            }
        }
        self.save()
    }

    /// Every member with a name: (member, info).
    pub fn all(&self) -> Vec<(String, NameInfo)> {
        let mut ids: Vec<&String> = self
            .file
            .nicknames
            .keys()
            .chain(self.file.announced.keys())
            .collect();
        ids.sort();
        ids.dedup();
        let mut shown_by: HashMap<String, usize> = HashMap::new();
        for id in &ids {
            if let Some(n) = self.plain(id) {
                *shown_by.entry(n).or_default() += 1;
            }
        }
        ids.into_iter()
            .map(|id| {
                let nickname = self.file.nicknames.get(id).cloned();
                let announced = self.file.announced.get(id).cloned();
                let display = self.plain(id).map(|name| {
                    let twins = shown_by.get(&name).map_or(0, |c| c.saturating_sub(1));
                    with_short_id(name, id, twins)
                });
                (
                    id.clone(),
                    NameInfo {
                        display,
                        nickname,
                        announced,
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_round_trip_and_are_cleaned() {
        let b = announcement("  alice\n\u{7}  ");
        assert!(is_control(&b));
        assert_eq!(parse_announcement(&b).as_deref(), Some("alice"));
        assert_eq!(parse_announcement(b"hello"), None);
        assert!(!is_control(b"hello"));
        let long = "é".repeat(100);
        let n = clean_name(&long).unwrap();
        assert!(n.len() <= MAX_NAME_BYTES && n.chars().all(|c| c == 'é'));
        assert_eq!(clean_name(" \t\n"), None);
    }

    /// Bidi and format characters (Unicode Cf) are stripped where names
    /// come in: announced, set as nicknames, and read from an older file.
    #[test]
    fn bidi_and_format_characters_are_stripped() {
        for (raw, clean) in [
            ("Al\u{200B}ice", "Alice"),
            ("\u{202E}ecilA", "ecilA"),
            ("\u{2066}Alice\u{2069}", "Alice"),
            ("\u{FEFF}Alice\u{200D}\u{200C}\u{200E}\u{200F}", "Alice"),
            ("\u{202A}\u{202B}\u{202C}\u{202D}Bob\u{2067}\u{2068}", "Bob"),
            ("Ali\u{00AD}ce\u{2060}", "Alice"),
            ("Zoë 🙂 李", "Zoë 🙂 李"),
        ] {
            assert_eq!(clean_name(raw).as_deref(), Some(clean), "{raw:?}");
            let b = announcement(raw);
            assert_eq!(parse_announcement(&b).as_deref(), Some(clean));
        }
        assert_eq!(clean_name("\u{200B}\u{202E}\u{FEFF}"), None);
        let dir = tempfile::tempdir().unwrap();
        let m = MemberId::parse("12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA").unwrap();
        let mut n = Names::load(dir.path());
        n.announced(&m, "Al\u{200B}ice");
        assert_eq!(n.display(&m).as_deref(), Some("Alice"));
        assert!(n.set_nickname(&m, Some("\u{202E}\u{200B}")).is_err());
        n.set_nickname(&m, Some("\u{2067}Bob")).unwrap();
        assert_eq!(n.display(&m).as_deref(), Some("Bob"));
        // A file written before the rule.
        let old = format!(r#"{{"nicknames":{{}},"announced":{{"{m}":"A\u202Elice"}}}}"#);
        std::fs::write(dir.path().join(CONTACTS_FILE), old).unwrap();
        assert_eq!(
            Names::load(dir.path()).display(&m).as_deref(),
            Some("Alice")
        );
    }

    #[test]
    fn two_members_with_one_name_both_show_their_short_id() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<MemberId> = (1..=3u8)
            .map(|i| MemberId::from_public_key(&[i; 32]))
            .collect();
        let mut n = Names::load(dir.path());
        n.announced(&ids[0], "Alice");
        assert_eq!(n.display(&ids[0]).as_deref(), Some("Alice"));
        // A second "Alice" (here with an invisible character, stripped).
        n.announced(&ids[1], "Al\u{200B}ice");
        let shown = |n: &Names, m: &MemberId| n.display(m).unwrap_or_default();
        assert_eq!(shown(&n, &ids[0]), format!("Alice ({})", ids[0].short()));
        assert_eq!(shown(&n, &ids[1]), format!("Alice ({})", ids[1].short()));
        n.announced(&ids[2], "Bob");
        assert_eq!(shown(&n, &ids[2]), "Bob");
        // The list of contacts says the same as one lookup.
        for (id, info) in n.all() {
            let m = ids.iter().find(|m| m.as_str() == id).unwrap();
            assert_eq!(info.display, n.display(m), "{id}");
        }
        // A nickname that tells them apart ends the clash; the announced
        // name stays as it was announced.
        n.set_nickname(&ids[1], Some("Alice from HQ")).unwrap();
        assert_eq!(shown(&n, &ids[0]), "Alice");
        assert_eq!(n.info(&ids[1]).announced.as_deref(), Some("Alice"));
        // A nickname can clash too.
        n.set_nickname(&ids[2], Some("Alice")).unwrap();
        assert_eq!(shown(&n, &ids[2]), format!("Alice ({})", ids[2].short()));
    }

    #[test]
    fn nickname_overrides_announced_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let m = MemberId::parse("12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA").unwrap();
        let mut n = Names::load(dir.path());
        assert_eq!(n.display(&m), None);
        n.announced(&m, "bob");
        assert_eq!(n.display(&m).as_deref(), Some("bob"));
        n.set_nickname(&m, Some("Bobby")).unwrap();
        assert_eq!(n.display(&m).as_deref(), Some("Bobby"));
        assert!(n.set_nickname(&m, Some("\n")).is_err());
        let again = Names::load(dir.path());
        assert_eq!(again.info(&m).announced.as_deref(), Some("bob"));
        assert_eq!(again.display(&m).as_deref(), Some("Bobby"));
        std::fs::write(dir.path().join(CONTACTS_FILE), b"{garbage").unwrap();
        assert_eq!(Names::load(dir.path()).display(&m), None);
    }
}
