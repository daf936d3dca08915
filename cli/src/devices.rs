//! `mmls device link|list|unlink`: users with several devices.

use crate::args::DeviceCmd;
use crate::commands::{api_error, client, outln, parse_member, short_user};
use crate::output::{utc, Table};
use anyhow::{bail, Context as _};
use node::types::Devices;
use node::DataDir;
use std::io::Write as _;
use std::path::Path;

pub fn device(dir: &Path, cmd: DeviceCmd) -> anyhow::Result<()> {
    let c = client(dir)?;
    match cmd {
        DeviceCmd::Link {
            key,
            export_key,
            json,
        } => {
            let text = key
                .as_ref()
                .map(|f| {
                    std::fs::read_to_string(f)
                        .with_context(|| format!("reading the user key file {}", f.display()))
                })
                .transpose()?;
            let d = c
                .link_device(text.as_deref())
                .map_err(|e| api_error(dir, e))?;
            if let Some(out) = &export_key {
                export(dir, out)?;
            }
            let user = d.user.clone().unwrap_or_default();
            if json {
                outln!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                outln!("this device ({}) is a device of user {user}", d.me);
                if let Some(out) = &export_key {
                    outln!(
                        "user key written to {}: `mmls device link --key {}` on another \
                         device links it too (keep the file safe, then delete it)",
                        out.display(),
                        out.display()
                    );
                }
                print(&d, Some(&user))?;
            }
        }
        DeviceCmd::List { user, json } => {
            let d = c.devices().map_err(|e| api_error(dir, e))?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                match &d.user {
                    Some(u) => outln!("this device ({}) is a device of user {u}", d.me),
                    None => outln!(
                        "this device ({}) is linked to no user (`mmls device link`)",
                        d.me
                    ),
                }
                print(&d, user.as_deref())?;
            }
        }
        DeviceCmd::Unlink { device, json } => {
            let m = parse_member(&device)?;
            let d = c.unlink_device(m.as_str()).map_err(|e| api_error(dir, e))?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                outln!(
                    "{device} unlinked: every universe it shares with a device of your user \
                     removes it"
                );
            }
        }
    }
    Ok(())
}

/// The devices known here (of `only`, if given).
fn print(d: &Devices, only: Option<&str>) -> anyhow::Result<()> {
    let rows: Vec<_> = d
        .devices
        .iter()
        .filter(|x| only.is_none_or(|u| x.user == u))
        .collect();
    if rows.is_empty() {
        eprintln!("(no devices heard of)");
        return Ok(());
    }
    let mut t = Table::new(&["USER", "DEVICE", "STATE", "SINCE (UTC)"]);
    for x in rows {
        t.row(vec![
            short_user(&x.user),
            x.device.clone(),
            if x.linked { "linked" } else { "unlinked" }.into(),
            utc(x.at),
        ]);
    }
    outln!("{t}");
    Ok(())
}

/// Copies this device's user key file to `out`, readable by its owner only.
fn export(dir: &Path, out: &Path) -> anyhow::Result<()> {
    let d = DataDir::open(dir)?;
    // Parsed first: a corrupt key file is reported, not copied.
    d.user_key()?.context("this device holds no user key")?;
    let src = d.file(node::datadir::USER_KEY_FILE);
    let text = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
    if out.exists() {
        bail!("{} exists: refusing to overwrite it", out.display());
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(out)
        .with_context(|| format!("writing {}", out.display()))?;
    f.write_all(&text)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
