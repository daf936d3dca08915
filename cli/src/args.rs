//! The command line, as clap derive definitions.

use clap::{Args, Parser, Subcommand};
use node::Multiaddr;
use std::net::SocketAddr;
use std::path::PathBuf;

const ABOUT: &str = "A peer-to-peer Multi-MLS (MMLS) node: end-to-end encrypted group messaging \
without a server, over libp2p.";

const AFTER_HELP: &str = "\
Start here:
  mmls demo                                   run a local demo universe (no setup)
  mmls init --name alice                      create an identity in the data dir
  mmls run                                    run the node (foreground, Ctrl-C stops it)
  mmls id                                     print the member id to give to others

Every command except `demo` and `run` talks to the node running on the data dir
through its local API (address and token in the data dir); `bundle` also works
on the data dir directly when no node runs.";

#[derive(Debug, Parser)]
#[command(
    name = "mmls",
    version,
    about = ABOUT,
    after_help = AFTER_HELP,
    arg_required_else_help = true,
    propagate_version = true
)]
pub struct Cli {
    /// The node's data dir [default: the platform data dir, e.g. ~/.local/share/mmls]
    #[arg(long, global = true, env = "MMLS_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the data dir with a fresh identity (identity.key) and API token
    Init {
        /// Your display name: `mmls run` announces it to the members of your universes
        /// (only to them, inside MLS); the default `mmls-node` is not announced
        #[arg(long, default_value = "mmls-node")]
        name: String,
        /// An X.509 certificate chain (PEM, leaf first) whose leaf certifies the key of
        /// --x509-key and names you (SAN rfc822Name `you@your.domain` or a URI); it is
        /// your credential in federated universes
        #[arg(long, value_name = "CHAIN.pem", requires = "x509_key")]
        x509_cert: Option<PathBuf>,
        /// The Ed25519 private key (PKCS#8 PEM, `openssl genpkey -algorithm ed25519`)
        /// the certificate is for; it becomes this node's identity key (and PeerId)
        #[arg(long, value_name = "KEY.pem", requires = "x509_cert")]
        x509_key: Option<PathBuf>,
    },
    /// Print this node's member id (= its libp2p PeerId) and, if the node runs, its addresses
    Id {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Run the node in the foreground until Ctrl-C
    Run(RunArgs),
    /// Create, list, inspect universes and change their members
    #[command(subcommand)]
    Universe(UniverseCmd),
    /// Send a text message to a universe
    Send {
        /// Universe id, unique id prefix (>= 8 hex chars) or unique name
        universe: String,
        /// The text; `-` reads it from stdin. Several words are joined with spaces.
        /// A text that starts with `-` goes after `--`: `mmls send U -- -1 from me`.
        // No `allow_hyphen_values`: it made the words swallow a trailing
        // `--json` (`send U hi --json` sent "hi --json").
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Print a universe's conversation: your texts and others', in order, with names and receipts
    #[command(after_help = "\
By default the conversation: your own texts (FROM `you`, in the order you sent them, with \
`received by k of M`) merged by time with the texts others sent; --limit keeps the last N \
(at most 1000). --delivered (implied by --after) prints the delivery log instead: only \
others' texts, oldest first, paged by cursor, as it always was.")]
    Read {
        /// Universe id, unique id prefix (>= 8 hex chars) or unique name
        universe: String,
        /// The delivery log only after this cursor (the `cursor` of the last one you read)
        #[arg(long, value_name = "CURSOR")]
        after: Option<u64>,
        /// At most this many messages (the last N of the conversation; the first N of the log)
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// The delivery log: others' texts only, with cursors (see below)
        #[arg(long)]
        delivered: bool,
        /// One JSON object per line (conversation: mine, sender, sender_name, seq, text, at,
        /// cursor, receipt; log: sender, universe, seq, text, received_at, cursor, ...)
        #[arg(long)]
        json: bool,
    },
    /// Stream a universe's messages and events live until Ctrl-C
    Tail {
        /// Universe id, unique id prefix (>= 8 hex chars) or unique name
        universe: String,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// This node's X.509 identity (federated universes)
    #[command(subcommand)]
    Identity(IdentityCmd),
    /// Force an MMLS update (fresh keys) in this node's send group
    Update {
        /// Universe id, unique id prefix (>= 8 hex chars) or unique name
        universe: String,
    },
    /// Epochs of every send group, stale groups, equivocations, peers
    Status {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// The peers this node is connected to
    Peers {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Ask to be re-added to a universe (after losing the store, or when stale)
    Rejoin {
        /// Universe id (64 hex chars; a prefix or name works if the store still knows it)
        universe: String,
    },
    /// Sync by file when there is no network at all: carry bundles between nodes
    #[command(subcommand)]
    Bundle(BundleCmd),
    /// Open the web app: prints a one-time login link (and opens a browser if one is at hand)
    Open {
        /// Only print the link
        #[arg(long)]
        no_browser: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Names: list the people this node knows, give someone a local nickname
    #[command(subcommand)]
    Contact(ContactCmd),
    /// Users with several devices: link this device to a user, list, unlink
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Run a demo universe of N nodes in this process: partition, heal, update
    Demo(DemoArgs),
    /// Destroy this node's data dir for good (a device about to be lost): stops the
    /// node if it runs, overwrites and removes the keys first, then the store, then the rest
    Wipe {
        /// Confirm: without it nothing is touched
        #[arg(long)]
        yes: bool,
    },
}

/// Nicknames are local to this node (DIR/contacts.json) and override the
/// name a member announced; neither is ever used to decide who someone is.
#[derive(Debug, Subcommand)]
pub enum ContactCmd {
    /// Give a member a local nickname
    Name {
        /// The member id
        member: String,
        /// The nickname (several words are joined with spaces)
        #[arg(required = true, num_args = 1..)]
        name: Vec<String>,
    },
    /// Drop a member's local nickname (its announced name shows again)
    Unname {
        /// The member id
        member: String,
    },
    /// Everyone with an announced name or a nickname
    List {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

/// A user is a key (`u:...`) that signs which devices are its own; each
/// device is its own node and member. Linking takes the device into every
/// universe where another device of the user is a member; unlinking
/// removes it from all of them.
#[derive(Debug, Subcommand)]
pub enum DeviceCmd {
    /// Link this device to a user: with --key, the user whose key file that is
    /// (exported from another device); without, this device's user, made now if
    /// it has none (your first device)
    Link {
        /// The user key file (`--export-key` on a device of the user wrote it)
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// Write the user key to FILE (owner-only), to link more devices with it.
        /// Whoever holds it can link and unlink devices as you: keep it safe
        #[arg(long, value_name = "FILE")]
        export_key: Option<PathBuf>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// This device's user and every device this node has heard of
    List {
        /// Only the devices of this user
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Disown a device of your user (lost, stolen, retired): it is removed from
    /// every universe and reads nothing sent after
    Unlink {
        /// The device's member id
        device: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

/// Bundles work through the running node's API, or, when no node runs on
/// the data dir, on the data dir directly.
#[derive(Debug, Subcommand)]
pub enum BundleCmd {
    /// Write the envelopes of every send group of a universe this node holds to FILE
    #[command(after_help = "\
With --since-peer, \"known to lack\" is based on authenticated data only: the member \
holds all of its own send group, and each of its own commits (which this node holds) \
names the epoch it had reached in every other send group, so it holds those streams up \
to the commit that opened that epoch. Everything after that is exported, even messages \
the member may have received since (importing them twice is harmless: duplicates). If \
nothing is known about the member (no commit of it here), everything is exported.")]
    Export {
        /// Universe id, unique id prefix (>= 8 hex chars) or unique name
        universe: String,
        /// The bundle file to write (replaced if it exists)
        file: PathBuf,
        /// Only what this member is known to lack (see below)
        #[arg(long, value_name = "MEMBER_ID")]
        since_peer: Option<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Feed a bundle file to this node (the same checks as a fetch answer)
    Import {
        /// The bundle file
        file: PathBuf,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Write this node's KeyPackage to FILE, so that someone who never reaches
    /// this node can create a universe with it (or add it) after importing FILE
    Introduce {
        /// The bundle file to write (replaced if it exists)
        file: PathBuf,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// libp2p listen address (repeatable) [default: /ip4/0.0.0.0/tcp/0 and /ip4/0.0.0.0/udp/0/quic-v1]
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<Multiaddr>,
    /// A static peer to dial and keep dialling (repeatable), e.g. /ip4/10.0.0.2/tcp/4001
    #[arg(long, value_name = "MULTIADDR")]
    pub peer: Vec<Multiaddr>,
    /// Turn off mDNS discovery of peers on the local network
    #[arg(long)]
    pub no_mdns: bool,
    /// Local API address (loopback only) [default: 127.0.0.1:0, a free port]
    #[arg(long, value_name = "ADDR")]
    pub api: Option<SocketAddr>,
    /// How long the node gathers changes (PSK imports, re-adds, proposals)
    /// into one commit of its send group. Raise it to a few seconds on
    /// slow multi-hop links (mesh radio): see simulations/README.md
    #[arg(long, value_name = "MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub commit_delay_ms: u64,
    /// Let PSK imports wait up to this long, and not for a send, so one
    /// commit covers every peer update heard meanwhile: fewer commits in
    /// large universes, at the price of a peer's update healing our send
    /// group up to this late [default: import before every send]
    #[arg(long, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    pub import_window_ms: Option<u64>,
    /// How often every connection is pinged. With --ping-timeout-ms, the
    /// least silence after which a connection is closed (its peer is then
    /// re-dialled every 500 ms, with a growing wait if connections keep
    /// dying young)
    #[arg(long, value_name = "MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub ping_interval_ms: u64,
    /// Added to --ping-interval-ms: the least silence that closes a
    /// connection. Slow or busy links get more on their own: the wait
    /// follows the measured round trip and what is queued to the peer
    #[arg(long, value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub ping_timeout_ms: u64,
    /// Forward-secrecy bound on exported PSKs: they are kept while another
    /// member may still import them (a commit from across a partition), but
    /// never longer than this after their epoch ended. A partition longer
    /// than this heals by rejoins instead (SECURITY.md)
    #[arg(long, value_name = "HOURS", default_value_t = 24,
          value_parser = clap::value_parser!(u64).range(1..=8_760))]
    pub psk_max_age_hours: u64,
    /// The ciphersuites this node prefers for its own send groups, best
    /// first: 1 (X25519/AES128GCM/Ed25519), 3 (X25519/ChaCha20Poly1305/Ed25519),
    /// 2 (P-256). In each universe its send group takes the first one the
    /// universe accepts, else the universe's first choice
    #[arg(long, value_name = "LIST", default_value = "1,3,2",
          value_parser = parse_suites)]
    pub suites: Suites,
}

/// A ciphersuite list as `1,3` (clap needs one value type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suites(pub Vec<u16>);

pub fn parse_suites(s: &str) -> Result<Suites, String> {
    mmls_core::ciphersuites::parse_list(s)
        .map(Suites)
        .map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
pub enum UniverseCmd {
    /// Create a universe with the given members (prints its id)
    Create {
        /// The universe's name
        name: String,
        /// A member id (`mmls id` prints it); repeat, or list several
        #[arg(long = "member", value_name = "ID", required_unless_present = "users", num_args = 1..)]
        members: Vec<String>,
        /// A user: a user id (`u:...`, `mmls device list` prints it) or, with X.509, a
        /// certified name (alice@alpha.example); every device of the user this node has
        /// heard of becomes a member; repeat, or list several
        #[arg(long = "user", value_name = "USER", num_args = 1..)]
        users: Vec<String>,
        /// Key-derivation profile: `mmls-00` (draft-xue-multi-mls) or `dmls`
        #[arg(long, default_value = "mmls-00", value_parser = ["mmls-00", "dmls"])]
        profile: String,
        /// Federation: the domain and the CA certificate (PEM) that vouches for its
        /// members, as DOMAIN=CA.pem; repeat for each organisation. Every member then
        /// needs a certificate from its own domain's anchor (`mmls init --x509-cert`)
        #[arg(long = "anchor", value_name = "DOMAIN=CA.pem")]
        anchors: Vec<String>,
        /// The ciphersuites the universe accepts, preferred first, e.g. `1,3`: each
        /// member's send group takes its node's preferred one among them (`mmls run
        /// --suites`); anything else is refused. 2 (P-256) is not allowed with --anchor
        #[arg(long, value_name = "LIST", default_value = "1", value_parser = parse_suites)]
        suites: Suites,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Add a trust-anchor domain, or replace a domain's anchor (admins only);
    /// every member's send group takes it on
    Anchor {
        /// Universe id, unique id prefix (>= 8 hex chars) or unique name
        universe: String,
        /// DOMAIN=CA.pem
        #[arg(value_name = "DOMAIN=CA.pem")]
        anchor: String,
    },
    /// List the universes this node is in
    List {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Show one universe: definition, roster and every send group
    Show {
        /// Universe id, unique id prefix (>= 8 hex chars) or unique name
        universe: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Add a member (admins only)
    Add {
        /// Universe id, unique id prefix (>= 8 hex chars) or unique name
        universe: String,
        /// The member id to add
        id: String,
    },
    /// Remove a member (admins only)
    Remove {
        /// Universe id, unique id prefix (>= 8 hex chars) or unique name
        universe: String,
        /// The member id to remove
        id: String,
    },
    /// Leave a universe: every member removes this node
    Leave {
        /// Universe id, unique id prefix (>= 8 hex chars) or unique name
        universe: String,
    },
    /// Drop the local state of a universe this node left, was removed
    /// from, or never joined (e.g. an id mistyped for `rejoin`)
    Forget {
        /// Universe id, unique id prefix (>= 8 hex chars) or unique name
        universe: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum IdentityCmd {
    /// Renew the certificate (same key): every universe gets an update carrying it,
    /// and the data dir keeps it
    Renew {
        /// The new chain (PEM, leaf first); its leaf must certify this node's key
        #[arg(long, value_name = "CHAIN.pem")]
        x509_cert: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many nodes (2 to 16)
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(2..=16))]
    pub nodes: u16,
    /// Give up on any one waiting step after this many seconds
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub timeout: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_args(argv: &[&str]) -> (Vec<String>, bool) {
        let cli = Cli::try_parse_from(argv).expect("parses");
        match cli.command {
            Command::Send { text, json, .. } => (text, json),
            other => panic!("not a send: {other:?}"),
        }
    }

    #[test]
    fn send_words_do_not_swallow_flags() {
        assert_eq!(
            send_args(&["mmls", "send", "u", "hi", "there", "--json"]),
            (vec!["hi".to_string(), "there".to_string()], true)
        );
        assert_eq!(
            send_args(&["mmls", "send", "u", "-"]),
            (vec!["-".to_string()], false)
        );
        assert_eq!(
            send_args(&["mmls", "send", "--json", "u", "--", "-1", "--json"]),
            (vec!["-1".to_string(), "--json".to_string()], true)
        );
    }
}
