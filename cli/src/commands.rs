//! The commands that work on a data dir and talk to the node running on it
//! through its local API (`node::Client`).

use crate::args::{BundleCmd, UniverseCmd};
use crate::output::{bytes, short_hex, short_member, utc, Table};
use anyhow::{anyhow, bail, Context as _};
use mmls_core::MemberId;
use node::types::{self, StreamEvent};
use node::{Client, ClientError, DataDir};
use serde_json::json;
use std::io::{Read as _, Write as _};
use std::path::Path;

/// `writeln!` to stdout, with `?` (a closed pipe ends the command quietly,
/// see [`crate::main`]).
macro_rules! outln {
    () => { writeln!(std::io::stdout().lock())? };
    ($($arg:tt)*) => { writeln!(std::io::stdout().lock(), $($arg)*)? };
}
pub(crate) use outln;

/// The data dir, which must hold an identity (else: "run `mmls init`").
pub fn open_data_dir(dir: &Path) -> anyhow::Result<DataDir> {
    Ok(DataDir::open(dir)?)
}

/// A client of the node running on `dir`.
pub fn client(dir: &Path) -> anyhow::Result<Client> {
    open_data_dir(dir)?;
    Client::from_data_dir(dir).map_err(|e| api_error(dir, e))
}

/// A client error in words for the command line.
pub fn api_error(dir: &Path, e: ClientError) -> anyhow::Error {
    match e {
        ClientError::NotRunning(_) => anyhow!(
            "the node is not running (data dir {}): start it with `mmls run` first",
            dir.display()
        ),
        ClientError::Api { code, message, .. } if code == "unauthorized" => anyhow!(
            "the node refused our API token: {message} (was the data dir re-initialised while it ran?)"
        ),
        ClientError::Api { code, message, .. } if code == "missing_key_package" => anyhow!(
            "{message} (is that member's node running and connected? see `mmls peers`)"
        ),
        ClientError::Api { message, .. } => anyhow!("{message}"),
        other => anyhow!(other),
    }
}

/// Parses a member id as `mmls id` prints it (before any node is contacted).
pub fn parse_member(s: &str) -> anyhow::Result<MemberId> {
    MemberId::parse(s).map_err(|_| {
        anyhow!(
            "invalid member id {:?}: a member id is the PeerId that `mmls id` prints (12D3KooW..., 52 characters)",
            s.chars().take(80).collect::<String>()
        )
    })
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Resolves a universe argument to its 64-hex id: the full id as is, else a
/// unique id prefix (>= 8 hex chars) or a unique name among the node's
/// universes.
pub fn resolve_universe(c: &Client, dir: &Path, arg: &str) -> anyhow::Result<String> {
    let a = arg.trim();
    if a.len() == 64 && is_hex(a) {
        return Ok(a.to_ascii_lowercase());
    }
    let list = c.universes().map_err(|e| api_error(dir, e))?;
    pick_universe(&list, a)
}

/// [`resolve_universe`] against a list of universes (from the API or from
/// the engine of a data dir whose node is not running).
pub fn pick_universe(list: &[types::Universe], arg: &str) -> anyhow::Result<String> {
    let a = arg.trim();
    if a.len() == 64 && is_hex(a) {
        return Ok(a.to_ascii_lowercase());
    }
    let prefix = (a.len() >= 8 && is_hex(a)).then(|| a.to_ascii_lowercase());
    let mut hits: Vec<&types::Universe> = list
        .iter()
        .filter(|u| {
            prefix.as_deref().is_some_and(|p| u.id.starts_with(p)) || u.name.as_deref() == Some(a)
        })
        .collect();
    hits.dedup_by(|x, y| x.id == y.id);
    match hits.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => {
            let hint = if is_hex(a) && a.len() < 8 {
                " (an id prefix needs at least 8 hex characters)"
            } else {
                ""
            };
            bail!(
                "no universe matches {a:?}{hint}: give its id, a unique id prefix or its name (see `mmls universe list`)"
            )
        }
        many => bail!(
            "{a:?} is ambiguous: it matches {}; give more of the id",
            many.iter()
                .map(|u| format!(
                    "{} ({})",
                    short_hex(&u.id, 16),
                    u.name.as_deref().unwrap_or("?")
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Appends `/p2p/<peer>` unless the address names its peer already.
pub fn with_p2p(addr: &str, peer: &str) -> String {
    if addr.contains("/p2p/") {
        addr.to_string()
    } else {
        format!("{addr}/p2p/{peer}")
    }
}

// ------------------------------------------------------------ commands --

pub fn init(
    dir: &Path,
    name: &str,
    x509: Option<(std::path::PathBuf, std::path::PathBuf)>,
) -> anyhow::Result<()> {
    let name = name.trim();
    if name.is_empty() {
        bail!("--name must not be empty");
    }
    let dd = match &x509 {
        None => DataDir::init(dir, name)?,
        Some((cert, key)) => {
            let chain =
                std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
            let key_pem =
                std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
            // One line: the engine's error already says what is wrong.
            DataDir::init_x509(dir, name, &chain, &key_pem).map_err(|e| anyhow::anyhow!("{e}"))?
        }
    };
    let identity = dd.identity()?;
    let member = identity.member_id();
    outln!("initialised {}", dir.display());
    outln!("member id  {member}");
    if let Some(chain) = identity.x509_chain() {
        let cred = mmls_core::federation::x509_credential(chain)?;
        let info = mmls_core::federation::inspect(&cred, &identity.public_key())?;
        outln!(
            "certificate {} (domain {}, valid until {})",
            info.name,
            info.domain,
            unix_date(info.not_after)
        );
    }
    outln!();
    outln!("Next: `mmls run` starts the node; give your member id to whoever creates a universe.");
    outln!(
        "Back up {} (your identity).",
        dd.file("identity.key").display()
    );
    Ok(())
}

pub fn id(dir: &Path, json: bool) -> anyhow::Result<()> {
    let dd = open_data_dir(dir)?;
    let member = dd.identity()?.member_id().to_string();
    let name = dd.info()?.name;
    // The addresses only if the node runs.
    let (running, addrs, problem) = match Client::from_data_dir(dir).and_then(|c| c.id()) {
        Ok(info) => (true, info.listen_addrs, None),
        Err(ClientError::NotRunning(_)) => (false, vec![], None),
        Err(e) => (false, vec![], Some(api_error(dir, e).to_string())),
    };
    if json {
        return print_json(&json!({
            "member": member,
            "peer_id": member,
            "name": name,
            "data_dir": dir,
            "running": running,
            "listen_addrs": addrs,
        }));
    }
    outln!("member id  {member}");
    outln!("name       {name}");
    outln!("data dir   {}", dir.display());
    if running {
        outln!("node       running");
        for a in &addrs {
            outln!("address    {}", with_p2p(a, &member));
        }
    } else if let Some(p) = problem {
        outln!("node       unreachable: {p}");
    } else {
        outln!("node       not running (`mmls run` starts it)");
    }
    Ok(())
}

pub fn universe(dir: &Path, cmd: UniverseCmd) -> anyhow::Result<()> {
    match cmd {
        UniverseCmd::Create {
            name,
            members,
            users,
            profile,
            anchors,
            suites,
            json,
        } => {
            // Validate everything before contacting the node.
            let name = name.trim().to_string();
            if name.is_empty() {
                bail!("the universe name must not be empty");
            }
            let members: Vec<String> = members
                .iter()
                .map(|m| parse_member(m).map(|m| m.to_string()))
                .collect::<anyhow::Result<_>>()?;
            let anchors = anchors
                .iter()
                .map(|a| read_anchor(a))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if users.iter().any(|u| u.trim().is_empty()) {
                bail!("--user needs a user: a user id (`u:...`, `mmls device list` shows them) or a certified name (alice@alpha.example)");
            }
            let c = client(dir)?;
            let body = node::types::CreateUniverse {
                name: name.clone(),
                members: members.clone(),
                profile: Some(profile.clone()),
                admins: None,
                anchors,
                ciphersuites: Some(suites.0.clone()),
                users: users.clone(),
            };
            let id = c
                .create_universe_from(&body)
                .map_err(|e| api_error(dir, e))?;
            if json {
                print_json(
                    &json!({"id": id, "name": name, "profile": profile, "members": members,
                            "users": users, "ciphersuites": suites.0}),
                )
            } else {
                outln!("{id}");
                Ok(())
            }
        }
        UniverseCmd::List { json } => {
            let c = client(dir)?;
            let list = c.universes().map_err(|e| api_error(dir, e))?;
            if json {
                return print_json(&list);
            }
            if list.is_empty() {
                eprintln!("(no universes: `mmls universe create NAME --member ID...` makes one)");
                return Ok(());
            }
            let mut t = Table::new(&["ID", "NAME", "MEMBERS", "JOINED", "SENT", "STATE"]);
            for u in &list {
                let joined = u.groups.iter().filter(|g| !g.stale).count();
                t.row(vec![
                    short_hex(&u.id, 16).to_string(),
                    u.name.clone().unwrap_or_else(|| "(joining)".into()),
                    u.roster.len().to_string(),
                    format!("{joined}/{}", u.roster.len()),
                    u.messages_sent.to_string(),
                    universe_state(u),
                ]);
            }
            outln!("{t}");
            Ok(())
        }
        UniverseCmd::Show { universe, json } => {
            let c = client(dir)?;
            let id = resolve_universe(&c, dir, &universe)?;
            let me = open_data_dir(dir)?.identity()?.member_id().to_string();
            let u = c.universe(&id).map_err(|e| api_error(dir, e))?;
            if json {
                return print_json(&u);
            }
            show_universe(&u, &me)
        }
        UniverseCmd::Anchor { universe, anchor } => {
            let a = read_anchor(&anchor)?;
            let c = client(dir)?;
            let u = resolve_universe(&c, dir, &universe)?;
            c.set_anchor(&u, &a).map_err(|e| api_error(dir, e))?;
            outln!(
                "domain {} now anchored in universe {} (every member's send group takes it on)",
                a.domain,
                short_hex(&u, 16)
            );
            Ok(())
        }
        UniverseCmd::Add { universe, id } => {
            let m = parse_member(&id)?;
            let c = client(dir)?;
            let u = resolve_universe(&c, dir, &universe)?;
            c.add_member(&u, m.as_str())
                .map_err(|e| api_error(dir, e))?;
            outln!(
                "added {m} to universe {} (every member adds it to its own send group)",
                short_hex(&u, 16)
            );
            Ok(())
        }
        UniverseCmd::Remove { universe, id } => {
            let m = parse_member(&id)?;
            let c = client(dir)?;
            let u = resolve_universe(&c, dir, &universe)?;
            c.remove_member(&u, m.as_str())
                .map_err(|e| api_error(dir, e))?;
            outln!(
                "removed {m} from universe {} (every member removes it from its own send group)",
                short_hex(&u, 16)
            );
            Ok(())
        }
        UniverseCmd::Leave { universe } => {
            let c = client(dir)?;
            let u = resolve_universe(&c, dir, &universe)?;
            c.leave(&u).map_err(|e| api_error(dir, e))?;
            outln!(
                "left universe {}: every member removes this node; `mmls universe forget` drops what is left here",
                short_hex(&u, 16)
            );
            Ok(())
        }
        UniverseCmd::Forget { universe } => {
            let c = client(dir)?;
            let u = resolve_universe(&c, dir, &universe)?;
            c.forget(&u).map_err(|e| api_error(dir, e))?;
            outln!("forgot universe {}", short_hex(&u, 16));
            Ok(())
        }
    }
}

fn universe_state(u: &types::Universe) -> String {
    if u.removed {
        return "removed".into();
    }
    let mut s = vec![];
    if !u.equivocations.is_empty() {
        s.push(format!("EQUIVOCATION x{}", u.equivocations.len()));
    }
    let stale = u.groups.iter().filter(|g| g.stale).count();
    if stale > 0 {
        s.push(format!("{stale} stale"));
    }
    let blocked = u.groups.iter().filter(|g| g.blocked).count();
    if blocked > 0 {
        s.push(format!("{blocked} catching up"));
    }
    if u.name.is_none() {
        s.push("joining".into());
    }
    if s.is_empty() {
        "ok".into()
    } else {
        s.join(", ")
    }
}

fn group_state(g: &types::Group) -> String {
    if g.stale {
        "stale (rejoin pending)".into()
    } else if g.blocked {
        match &g.waiting_for {
            Some(w) => format!("catching up (waiting for {w})"),
            None => "catching up".into(),
        }
    } else {
        "ok".into()
    }
}

fn groups_table(u: &types::Universe, me: &str, indent: usize) -> Table {
    let mut t = Table::new(&[
        "OWNER", "GROUP", "SUITE", "EPOCH", "AUTH", "MEMBERS", "NEXT SEQ", "BUFFERED", "STATE",
    ])
    .indent(indent);
    for g in &u.groups {
        let owner = if g.owner == me {
            format!("{} (me)", short_member(&g.owner))
        } else {
            short_member(&g.owner).to_string()
        };
        t.row(vec![
            owner,
            short_hex(&g.group, 8).to_string(),
            format!("{:#06x}", g.ciphersuite),
            g.epoch.to_string(),
            g.auth.clone(),
            g.members.to_string(),
            g.next_seq.to_string(),
            g.buffered.to_string(),
            group_state(g),
        ]);
    }
    t
}

fn show_universe(u: &types::Universe, me: &str) -> anyhow::Result<()> {
    let mark = |m: &str| {
        if m == me {
            format!("{m} (me)")
        } else {
            m.to_string()
        }
    };
    outln!("universe   {}", u.id);
    outln!("name       {}", u.name.as_deref().unwrap_or("(joining)"));
    outln!("profile    {}", u.profile.as_deref().unwrap_or("?"));
    if let Some(c) = &u.creator {
        outln!("creator    {}", mark(c));
    }
    for (i, a) in u.admins.iter().enumerate() {
        outln!(
            "{}{}",
            if i == 0 { "admins     " } else { "           " },
            mark(a)
        );
    }
    for (i, m) in u.roster.iter().enumerate() {
        outln!(
            "{}{}",
            if i == 0 { "members    " } else { "           " },
            mark(m)
        );
    }
    if !u.ciphersuites.is_empty() {
        let suites: Vec<String> = u
            .ciphersuites
            .iter()
            .map(|c| mmls_core::ciphersuites::describe(*c))
            .collect();
        outln!("suites     {}", suites.join(", "));
    }
    // Each member's send-group suite (its owner's choice among those).
    for (i, g) in u.groups.iter().enumerate() {
        outln!(
            "{}{}  {}",
            if i == 0 { "suite of   " } else { "           " },
            mark(&g.owner),
            mmls_core::ciphersuites::describe(g.ciphersuite)
        );
    }
    for (i, a) in u.anchors.iter().enumerate() {
        outln!(
            "{}{}  {}  until {}  sha256 {}",
            if i == 0 { "anchors    " } else { "           " },
            a.domain,
            a.subject,
            unix_date(a.not_after),
            short_hex(&a.fingerprint, 16)
        );
    }
    for (i, c) in u.certificates.iter().enumerate() {
        outln!(
            "{}{}  {}  domain {}  until {}{}",
            if i == 0 { "certs      " } else { "           " },
            mark(&c.member),
            c.name,
            c.domain,
            unix_date(c.not_after),
            if c.expired { "  EXPIRED" } else { "" }
        );
    }
    outln!("state      {}", universe_state(u));
    outln!(
        "sent       {} message(s); pending imports {}",
        u.messages_sent,
        u.pending_imports
    );
    for e in &u.equivocations {
        outln!(
            "WARNING    equivocation: {} sent conflicting commits for epoch {} of group {}",
            e.owner,
            e.epoch,
            short_hex(&e.group, 8)
        );
    }
    outln!();
    outln!("send groups:");
    outln!("{}", groups_table(u, me, 2));
    Ok(())
}

/// `DOMAIN=CA.pem` as the API takes it.
fn read_anchor(arg: &str) -> anyhow::Result<node::types::AnchorIn> {
    let Some((domain, path)) = arg.split_once('=') else {
        bail!("--anchor wants DOMAIN=CA.pem, got {arg:?}");
    };
    let domain = domain.trim();
    if domain.is_empty() {
        bail!("--anchor {arg:?}: the domain is empty");
    }
    let pem = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let chain = mmls_core::federation::chain_from_pem(pem.as_bytes())
        .with_context(|| format!("{path}: not a PEM certificate"))?;
    if chain.len() != 1 {
        bail!(
            "{path}: an anchor is exactly one certificate, found {}",
            chain.len()
        );
    }
    Ok(node::types::AnchorIn {
        domain: domain.to_string(),
        pem,
    })
}

/// Unix seconds as a UTC date and time.
fn unix_date(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// The text argument: the words joined, or stdin for `-`.
fn message_text(words: &[String]) -> anyhow::Result<String> {
    if words.len() == 1 && words[0] == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the message from stdin")?;
        let s = s.strip_suffix('\n').unwrap_or(&s);
        let s = s.strip_suffix('\r').unwrap_or(s).to_string();
        return Ok(s);
    }
    Ok(words.join(" "))
}

pub fn send(dir: &Path, universe: &str, words: &[String], json: bool) -> anyhow::Result<()> {
    let text = message_text(words)?;
    if text.is_empty() {
        bail!("the message is empty");
    }
    let c = client(dir)?;
    let u = resolve_universe(&c, dir, universe)?;
    let seq = c.send(&u, &text).map_err(|e| api_error(dir, e))?;
    if json {
        outln!("{}", json!({"universe": u, "seq": seq}));
    } else {
        outln!("sent message #{seq} to universe {}", short_hex(&u, 16));
    }
    Ok(())
}

/// Table cells hold one line: control characters become spaces.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

pub fn read(
    dir: &Path,
    universe: &str,
    after: Option<u64>,
    limit: Option<usize>,
    json: bool,
) -> anyhow::Result<()> {
    let c = client(dir)?;
    let u = resolve_universe(&c, dir, universe)?;
    let mut all: Vec<types::Message> = vec![];
    let mut cursor = after;
    let want = limit.unwrap_or(usize::MAX);
    loop {
        let page = (want - all.len()).min(node::api::MAX_PAGE);
        let batch = c
            .messages(&u, cursor, Some(page))
            .map_err(|e| api_error(dir, e))?;
        let n = batch.len();
        if let Some(last) = batch.last() {
            cursor = Some(last.cursor);
        }
        all.extend(batch);
        if n < page || all.len() >= want {
            break;
        }
    }
    if json {
        let mut out = std::io::stdout().lock();
        for m in &all {
            writeln!(out, "{}", serde_json::to_string(m)?)?;
        }
        return Ok(());
    }
    if all.is_empty() {
        eprintln!("(no messages)");
        return Ok(());
    }
    let mut t = Table::new(&["CURSOR", "RECEIVED (UTC)", "FROM", "SEQ", "TEXT"]);
    for m in &all {
        t.row(vec![
            m.cursor.to_string(),
            utc(m.received_at),
            sender_label(false, None, &m.sender, m.user.as_deref()),
            m.seq.to_string(),
            one_line(&m.text),
        ]);
    }
    outln!("{t}");
    Ok(())
}

/// `read` (default): the conversation, own texts included.
pub fn conversation(
    dir: &Path,
    universe: &str,
    limit: Option<usize>,
    json: bool,
) -> anyhow::Result<()> {
    let c = client(dir)?;
    let u = resolve_universe(&c, dir, universe)?;
    let limit = limit.unwrap_or(node::views::MAX_CONVERSATION);
    let all = c
        .conversation(&u, Some(limit))
        .map_err(|e| api_error(dir, e))?;
    if json {
        let mut out = std::io::stdout().lock();
        for m in &all {
            let mut v = serde_json::to_value(m)?;
            v["universe"] = serde_json::Value::String(u.clone());
            writeln!(out, "{}", serde_json::to_string(&v)?)?;
        }
        return Ok(());
    }
    if all.is_empty() {
        eprintln!("(no messages)");
        return Ok(());
    }
    let mut t = Table::new(&["TIME (UTC)", "FROM", "SEQ", "TEXT", "STATE"]);
    for m in &all {
        t.row(vec![
            if m.at == 0 {
                "-".to_string()
            } else {
                utc(m.at)
            },
            sender_label(
                m.mine,
                m.sender_name.as_deref(),
                &m.sender,
                m.user.as_deref(),
            ),
            m.seq.to_string(),
            one_line(&m.text),
            receipt_label(m),
        ]);
    }
    outln!("{t}");
    Ok(())
}

/// Who sent a text, for people: `you`, a name, or the member id's suffix.
/// A linked device's texts are the user's: `u:AbCdEf (laptop)`, the
/// device named in brackets.
fn sender_label(mine: bool, name: Option<&str>, member: &str, user: Option<&str>) -> String {
    let device = match name {
        Some(n) => one_line(n),
        None => short_member(member).to_string(),
    };
    match (mine, user) {
        (true, None) => "you".into(),
        (true, Some(_)) => format!("you ({device})"),
        (false, Some(u)) => format!("{} ({device})", short_user(u)),
        (false, None) => device,
    }
}

/// `u:` and the first 6 characters of the key: enough to tell users apart
/// in a table (`mmls device list` shows whole ids).
pub(crate) fn short_user(u: &str) -> String {
    u.chars().take(8).collect()
}

fn receipt_label(m: &types::ConversationEntry) -> String {
    match (&m.receipt, m.mine) {
        (_, false) => String::new(),
        (None, true) => "sent".into(),
        (Some(r), true) if r.of == 0 => "sent".into(),
        (Some(r), true) => format!("received by {} of {}", r.received_by, r.of),
    }
}

/// `mmls open`: a one-time login link for the web app.
pub fn open(dir: &Path, no_browser: bool, json: bool) -> anyhow::Result<()> {
    let c = client(dir)?;
    let link = c.web_login().map_err(|e| api_error(dir, e))?;
    if json {
        outln!("{}", serde_json::to_string(&link)?);
        return Ok(());
    }
    outln!("{}", link.url);
    eprintln!(
        "(a one-time link, valid {} min; it logs this browser in for 12 h)",
        link.expires_in / 60
    );
    let gui =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if !no_browser && (gui || cfg!(target_os = "macos")) {
        let opener = if cfg!(target_os = "macos") {
            "open"
        } else {
            "xdg-open"
        };
        let spawned = std::process::Command::new(opener)
            .arg(&link.url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if spawned.is_err() {
            eprintln!("(no {opener}: open the link yourself)");
        }
    }
    Ok(())
}

/// `mmls contact ...`
pub fn contact(dir: &Path, cmd: crate::args::ContactCmd) -> anyhow::Result<()> {
    use crate::args::ContactCmd;
    let c = client(dir)?;
    match cmd {
        ContactCmd::Name { member, name } => {
            let name = name.join(" ");
            c.set_nickname(&member, Some(&name))
                .map_err(|e| api_error(dir, e))?;
            outln!("{member} is now {name:?} on this node");
        }
        ContactCmd::Unname { member } => {
            c.set_nickname(&member, None)
                .map_err(|e| api_error(dir, e))?;
            outln!("nickname of {member} dropped");
        }
        ContactCmd::List { json } => {
            let all = c.contacts().map_err(|e| api_error(dir, e))?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(());
            }
            if all.is_empty() {
                eprintln!("(nobody named yet)");
                return Ok(());
            }
            let mut t = Table::new(&["MEMBER", "NAME", "NICKNAME", "ANNOUNCED"]);
            for x in &all {
                t.row(vec![
                    x.member.clone(),
                    one_line(x.name.as_deref().unwrap_or("")),
                    one_line(x.nickname.as_deref().unwrap_or("")),
                    one_line(x.announced.as_deref().unwrap_or("")),
                ]);
            }
            outln!("{t}");
        }
    }
    Ok(())
}

pub fn tail(dir: &Path, universe: &str, json: bool) -> anyhow::Result<()> {
    let c = client(dir)?;
    let u = resolve_universe(&c, dir, universe)?;
    let stream = c.stream(&u).map_err(|e| api_error(dir, e))?;
    if !json {
        eprintln!("following universe {} (Ctrl-C to stop)", short_hex(&u, 16));
    }
    for ev in stream {
        let ev = ev.map_err(|e| api_error(dir, e))?;
        if json {
            outln!("{}", serde_json::to_string(&ev)?);
            continue;
        }
        match &ev {
            StreamEvent::Message(m) => outln!(
                "{}  {}  {}",
                &utc(m.received_at)[11..],
                sender_label(
                    false,
                    m.sender_name.as_deref(),
                    &m.sender,
                    m.user.as_deref()
                ),
                m.text
            ),
            StreamEvent::Sent(m) => outln!(
                "{}  {}  {}",
                &utc(m.at)[11..],
                sender_label(true, None, &m.sender, m.user.as_deref()),
                m.text
            ),
            other => outln!("-- {}", describe_event(other)),
        }
    }
    bail!("the node stopped")
}

fn describe_event(e: &StreamEvent) -> String {
    match e {
        StreamEvent::UniverseJoined { name, .. } => format!("joined universe {name:?}"),
        StreamEvent::Message(m) => format!("message from {}", short_member(&m.sender)),
        StreamEvent::MemberAdded { member, .. } => format!("member added: {member}"),
        StreamEvent::MemberRemoved { member, .. } => format!("member removed: {member}"),
        StreamEvent::RemovedFromUniverse { .. } => "this node was removed from the universe".into(),
        StreamEvent::Stale { owner, .. } => format!(
            "stale in {}'s send group: a rejoin was requested",
            short_member(owner)
        ),
        StreamEvent::Rejoined { owner, .. } => {
            format!("rejoined {}'s send group", short_member(owner))
        }
        StreamEvent::Equivocation { owner, epoch, .. } => format!(
            "EQUIVOCATION: {owner} sent conflicting commits for epoch {epoch} of its send group"
        ),
        StreamEvent::Rejected { seq, reason, .. } => {
            format!("rejected stream entry #{seq}: {reason}")
        }
        StreamEvent::Committed {
            epoch,
            imports,
            path,
            ..
        } => format!(
            "committed epoch {epoch} of own send group ({imports} PSK import(s){})",
            if *path { ", fresh keys" } else { "" }
        ),
        StreamEvent::Lagged { missed } => {
            format!("fell behind: {missed} event(s) skipped (see `mmls read`)")
        }
        StreamEvent::Sent(m) => format!("you sent #{}", m.seq),
        StreamEvent::CertificateExpired {
            member, not_after, ..
        } => format!(
            "CERTIFICATE EXPIRED: {member}'s certificate ran out at {} (it must renew)",
            unix_date(*not_after)
        ),
        StreamEvent::AnchorsChanged { by, .. } => {
            format!("trust anchors changed by admin {}", short_member(by))
        }
        StreamEvent::DeviceLinked { user, device, .. } => {
            format!("device {} linked to user {user}", short_member(device))
        }
        StreamEvent::DeviceUnlinked { user, device, .. } => format!(
            "device {} unlinked by user {user}: removed from the universe",
            short_member(device)
        ),
    }
}

pub fn identity(dir: &Path, cmd: crate::args::IdentityCmd) -> anyhow::Result<()> {
    match cmd {
        crate::args::IdentityCmd::Renew { x509_cert } => {
            let pem = std::fs::read_to_string(&x509_cert)
                .with_context(|| format!("reading {}", x509_cert.display()))?;
            let c = client(dir)?;
            c.renew_certificate(&pem).map_err(|e| api_error(dir, e))?;
            outln!("certificate renewed: every universe gets an update that carries it");
            Ok(())
        }
    }
}

pub fn update(dir: &Path, universe: &str) -> anyhow::Result<()> {
    let c = client(dir)?;
    let u = resolve_universe(&c, dir, universe)?;
    c.update(&u).map_err(|e| api_error(dir, e))?;
    let st = c.universe(&u).map_err(|e| api_error(dir, e))?;
    let epoch = st
        .own_group
        .as_ref()
        .and_then(|g| st.groups.iter().find(|x| &x.group == g))
        .map(|g| g.epoch);
    match epoch {
        Some(e) => outln!(
            "MMLS update committed: own send group of {} now at epoch {e}",
            short_hex(&u, 16)
        ),
        None => outln!("MMLS update committed in {}", short_hex(&u, 16)),
    }
    Ok(())
}

pub fn status(dir: &Path, json: bool) -> anyhow::Result<()> {
    let c = client(dir)?;
    let st = c.status().map_err(|e| api_error(dir, e))?;
    if json {
        return print_json(&st);
    }
    outln!("member id  {}", st.member);
    outln!("name       {}", st.name);
    for a in &st.listen_addrs {
        outln!("listening  {}", with_p2p(a, &st.peer_id));
    }
    outln!("peers      {} connected", st.peers.len());
    outln!(
        "store      {}; rejected inputs {}; queued publishes {}",
        bytes(st.store_bytes),
        st.rejected_inputs,
        st.queued_publishes
    );
    for l in &st.links {
        outln!("link       {}", link_line(l));
    }
    if st.universes.is_empty() {
        outln!();
        outln!("no universes yet");
    }
    for u in &st.universes {
        outln!();
        outln!(
            "universe {} {:?}: {} members, {}, {}",
            short_hex(&u.id, 16),
            u.name.as_deref().unwrap_or("(joining)"),
            u.roster.len(),
            u.profile.as_deref().unwrap_or("?"),
            universe_state(u)
        );
        for e in &u.equivocations {
            outln!(
                "  WARNING: {} equivocated at epoch {} of group {}",
                e.owner,
                e.epoch,
                short_hex(&e.group, 8)
            );
        }
        outln!("{}", groups_table(u, &st.member, 2));
    }
    Ok(())
}

/// One peer's link for `status`: health first, so a slow or saturated
/// radio link is seen at a glance.
fn link_line(l: &node::types::Link) -> String {
    use mmls_core::link::LinkHealth;
    let s = &l.status;
    let health = match s.health {
        LinkHealth::Good => "good",
        LinkHealth::Slow => "SLOW",
        LinkHealth::Saturated => "SATURATED",
        LinkHealth::Silent => "SILENT",
        LinkHealth::Down => "down",
    };
    let peer = short_hex(&l.peer_id, 16);
    if s.health == LinkHealth::Down {
        return format!(
            "{peer}  {health}, redial in {:.1} s ({} short-lived connections in a row)",
            s.redial_in_ms as f64 / 1000.0,
            s.failures
        );
    }
    let rtt = s
        .rtt_ms
        .map_or("rtt ?".to_string(), |r| format!("rtt {r} ms"));
    format!(
        "{peer}  {health}, {rtt}, ~{}/s, queued {:.1} s, closes after {:.1} s of silence; in {} out {}",
        bytes(s.rate_bytes_per_s),
        s.queue_ms as f64 / 1000.0,
        s.allowance_ms as f64 / 1000.0,
        bytes(s.received_bytes),
        bytes(s.sent_bytes)
    )
}

pub fn peers(dir: &Path, json: bool) -> anyhow::Result<()> {
    let c = client(dir)?;
    let ps = c.peers().map_err(|e| api_error(dir, e))?;
    if json {
        return print_json(&ps);
    }
    if ps.is_empty() {
        eprintln!("(no peers connected)");
        return Ok(());
    }
    let mut t = Table::new(&["PEER", "ADDRESS"]);
    for p in &ps {
        let addr = match p.addrs.len() {
            0 => String::new(),
            1 => p.addrs[0].clone(),
            n => format!("{} (+{} more)", p.addrs[0], n - 1),
        };
        t.row(vec![p.peer_id.clone(), addr]);
    }
    outln!("{t}");
    Ok(())
}

pub fn rejoin(dir: &Path, universe: &str) -> anyhow::Result<()> {
    let c = client(dir)?;
    let u = resolve_universe(&c, dir, universe)?;
    c.rejoin(&u).map_err(|e| api_error(dir, e))?;
    outln!(
        "rejoin requested for universe {}: each member re-adds this node to its send group \
         (watch `mmls status`)",
        short_hex(&u, 16)
    );
    Ok(())
}

/// `mmls wipe`: stop the node if it runs (its process holds the keys in
/// memory), then destroy the data dir, keys first (`node::wipe`).
pub fn wipe(dir: &Path, yes: bool) -> anyhow::Result<()> {
    if !yes {
        bail!(
            "`mmls wipe` destroys this node's identity and every message in {} and cannot be \
             undone: run `mmls wipe --yes` to do it",
            dir.display()
        );
    }
    let still_running = match Client::from_data_dir(dir) {
        Ok(c) if c.id().is_ok() => {
            // Asked to stop, the node flushes, closes its store and removes
            // api.addr on its way out.
            let asked = c.shutdown().is_ok();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            let stopped =
                || c.id().is_err() && DataDir::open(dir).is_ok_and(|d| d.read_api_addr().is_none());
            while asked && !stopped() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            let gone = asked && stopped();
            if gone {
                outln!("stopped the node running on {}", dir.display());
            }
            !gone
        }
        _ => false,
    };
    let r = node::wipe::wipe(dir)?;
    outln!(
        "wiped {}: {} files overwritten and removed, keys first",
        dir.display(),
        r.destroyed.len()
    );
    for p in &r.left {
        outln!("left (not the node's): {}", p.display());
    }
    if still_running {
        bail!(
            "the node running on {} did not stop: its process still holds the keys in memory; \
             kill it",
            dir.display()
        );
    }
    Ok(())
}

// ------------------------------------------------------------- bundles --

/// The running node's API, or None when no node runs on `dir` (then the
/// data dir is opened directly: the store allows one process at a time).
fn node_or_offline(dir: &Path) -> anyhow::Result<Option<Client>> {
    open_data_dir(dir)?;
    match Client::from_data_dir(dir).and_then(|c| c.id().map(|_| c)) {
        Ok(c) => Ok(Some(c)),
        Err(ClientError::NotRunning(_)) => Ok(None),
        Err(e) => Err(api_error(dir, e)),
    }
}

/// Writes `bytes` to `file` whole or not at all (temp file + rename), so an
/// interrupted export never leaves a half bundle under the final name.
fn write_file(file: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(".part");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("cannot write {}", file.display()))
}

fn read_bundle_file(file: &Path) -> anyhow::Result<Vec<u8>> {
    let max = mmls_core::bundle::MAX_BUNDLE_BYTES as u64;
    let f = std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut bytes = vec![];
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", file.display()))?;
    Ok(bytes)
}

pub fn bundle(dir: &Path, cmd: BundleCmd) -> anyhow::Result<()> {
    match cmd {
        BundleCmd::Export {
            universe,
            file,
            since_peer,
            json,
        } => {
            let since = since_peer.as_deref().map(parse_member).transpose()?;
            let (data, known) = match node_or_offline(dir)? {
                Some(c) => {
                    let u = resolve_universe(&c, dir, &universe)?;
                    c.bundle_export(Some(&u), since.as_ref().map(|m| m.as_str()))
                        .map_err(|e| api_error(dir, e))?
                }
                None => node::offline::with_engine(dir, |p| {
                    let list = node::offline::universes(p);
                    let u = pick_universe(&list, &universe)
                        .map_err(|e| node::NodeError::InvalidInput(e.to_string()))?;
                    let id = mmls_core::Id32::parse_hex(&u)
                        .ok_or_else(|| node::NodeError::InvalidInput(format!("bad id {u}")))?;
                    let (b, r) = mmls_core::bundle::export_file(p, Some(&id), since.as_ref())?;
                    Ok((b, r.known_groups))
                })?,
            };
            let b = mmls_core::Bundle::decode(&data)
                .context("the node answered with an invalid bundle")?;
            write_file(&file, &data)?;
            let report = types::BundleExported {
                universe: b.universe.map(|u| u.hex()),
                groups: b.groups.len(),
                entries: b.entries(),
                bytes: data.len(),
                truncated: b.truncated,
                known_groups: known,
            };
            if json {
                return print_json(&report);
            }
            outln!(
                "wrote {}: {} entries of {} send groups, {}",
                file.display(),
                report.entries,
                report.groups,
                bytes(report.bytes as u64)
            );
            if let Some(m) = &since {
                outln!(
                    "only what {} is known to lack ({} of its send groups known)",
                    short_member(m.as_str()),
                    known
                );
            }
            if report.truncated {
                outln!("the bundle is full (size limit): export again after it is imported");
            }
            Ok(())
        }
        BundleCmd::Introduce { file, json } => {
            let data = match node_or_offline(dir)? {
                Some(c) => {
                    c.bundle_export(None, None)
                        .map_err(|e| api_error(dir, e))?
                        .0
                }
                None => node::offline::with_engine(dir, |p| {
                    Ok(mmls_core::bundle::export_file(p, None, None)?.0)
                })?,
            };
            write_file(&file, &data)?;
            let me = open_data_dir(dir)?.identity()?.member_id().to_string();
            if json {
                return print_json(&json!({"file": file, "member": me, "bytes": data.len()}));
            }
            outln!("wrote {}: the KeyPackage of {me}", file.display());
            outln!("Whoever imports it can create a universe with you (`mmls universe create NAME --member {me}`) and send you the bundle.");
            Ok(())
        }
        BundleCmd::Import { file, json } => {
            let data = read_bundle_file(&file)?;
            // Refused here already, so a bad file never reaches the node.
            mmls_core::Bundle::decode(&data)
                .with_context(|| format!("cannot import {}", file.display()))?;
            let r = match node_or_offline(dir)? {
                Some(c) => c.bundle_import(&data).map_err(|e| api_error(dir, e)),
                None => {
                    node::offline::with_engine(dir, |p| Ok(mmls_core::bundle::import(p, &data)?.0))
                        .map(|r| types::BundleImported::from(&r))
                        .map_err(anyhow::Error::from)
                }
            }
            .with_context(|| format!("cannot import {}", file.display()))?;
            if json {
                return print_json(&r);
            }
            match &r.universe {
                None => outln!(
                    "imported the KeyPackage of {}{}",
                    r.exporter.as_deref().unwrap_or("?"),
                    if r.key_package_ok {
                        ""
                    } else {
                        " (refused: see the log)"
                    }
                ),
                Some(u) => {
                    outln!(
                        "imported {} into universe {}: {} accepted, {} duplicate, {} rejected",
                        file.display(),
                        short_hex(u, 16),
                        r.accepted,
                        r.duplicate,
                        r.rejected
                    );
                    if r.waiting > 0 {
                        outln!(
                            "{} entries wait for earlier ones another bundle or peer must bring",
                            r.waiting
                        );
                    }
                    if r.held > 0 {
                        outln!(
                            "{} entries are of send groups this node is not in (no Welcome \
                             for it came): not kept",
                            r.held
                        );
                    }
                }
            }
            Ok(())
        }
    }
}
