//! The coalition example of the README, end to end with real processes on
//! 127.0.0.1: three organisations, each with its own CA (certificates made
//! here with rcgen, written as PEM files as openssl would), members
//! initialised with `--x509-cert/--x509-key`, a universe created with
//! `--anchor DOMAIN=CA.pem`; a certificate from the wrong organisation's CA
//! is refused.

mod common;

use common::*;
use node::types;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType, PKCS_ED25519};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn at(secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs).expect("time")
}

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pem: PathBuf,
}

/// An organisation's CA (ECDSA P-256), its certificate written to
/// `dir/ORG-ca.pem`.
fn ca(dir: &Path, org: &str) -> Ca {
    let key = KeyPair::generate().expect("CA key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name
        .push(DnType::CommonName, format!("{org}.example CA"));
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.not_before = at(now() - 86_400);
    p.not_after = at(now() + 365 * 86_400);
    let cert = p.self_signed(&key).expect("CA cert");
    let pem = dir.join(format!("{org}-ca.pem"));
    std::fs::write(&pem, cert.pem()).expect("write CA");
    Ca { cert, key, pem }
}

/// A member's Ed25519 key (`USER.key`, PKCS#8) and its certificate from
/// `issuer` naming `USER@DOMAIN` (`USER.pem`).
fn member(dir: &Path, user: &str, domain: &str, issuer: &Ca) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate_for(&PKCS_ED25519).expect("member key");
    let k = dir.join(format!("{user}.key"));
    std::fs::write(&k, key.serialize_pem()).expect("write key");
    let c = certify(dir, &format!("{user}.pem"), &key, user, domain, issuer, 90);
    (c, k)
}

/// A certificate for `key` naming `USER@DOMAIN`, valid for `days`, written
/// to `dir/FILE`.
fn certify(
    dir: &Path,
    file: &str,
    key: &KeyPair,
    user: &str,
    domain: &str,
    issuer: &Ca,
    days: i64,
) -> PathBuf {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, user);
    p.subject_alt_names = vec![SanType::Rfc822Name(
        format!("{user}@{domain}").try_into().expect("ia5"),
    )];
    p.not_before = at(now() - 3600);
    p.not_after = at(now() + days * 86_400);
    let cert = p
        .signed_by(key, &issuer.cert, &issuer.key)
        .expect("member cert");
    let c = dir.join(file);
    std::fs::write(&c, cert.pem()).expect("write cert");
    c
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn coalition_of_three_organisations_end_to_end() {
    let _wd = Watchdog::arm(
        "coalition_of_three_organisations_end_to_end",
        Duration::from_secs(170),
    );
    let root = root();
    let pki = root.path().join("pki");
    std::fs::create_dir_all(&pki).expect("pki dir");
    let (alpha, beta, charlie) = (ca(&pki, "alpha"), ca(&pki, "beta"), ca(&pki, "charlie"));
    let (alice_c, alice_k) = member(&pki, "alice", "alpha.example", &alpha);
    let (bob_c, bob_k) = member(&pki, "bob", "beta.example", &beta);
    let (cathy_c, cathy_k) = member(&pki, "cathy", "charlie.example", &charlie);
    // Mallory says beta.example, but alpha's CA signed it.
    let (mal_c, mal_k) = member(&pki, "mallory", "beta.example", &alpha);

    // A certificate for another key than the one given is refused, and no
    // identity is written.
    let wrong = root.path().join("wrong");
    let e = mmls(&[
        "--data-dir",
        s(&wrong),
        "init",
        "--x509-cert",
        s(&alice_c),
        "--x509-key",
        s(&bob_k),
    ])
    .one_line_error();
    assert!(e.contains("does not certify"), "{e}");
    assert!(!wrong.join("identity.key").exists());

    let x = |c: &PathBuf, k: &PathBuf| -> Vec<String> {
        vec![
            "--x509-cert".into(),
            s(c).into(),
            "--x509-key".into(),
            s(k).into(),
        ]
    };
    let init = |name: &str, args: Vec<String>| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        NodeProc::init_with(root.path(), name, None, &a)
    };
    let mut alice = init("alice", x(&alice_c, &alice_k));
    let mut bob = init("bob", x(&bob_c, &bob_k));
    let mut cathy = init("cathy", x(&cathy_c, &cathy_k));
    let mut mallory = init("mallory", x(&mal_c, &mal_k));
    // `init` reads the certificate back: name, domain.
    let out = bob.cmd(&["id", "--json"]).ok().json();
    assert_eq!(out["member"], bob.member.as_str());

    alice.start(&[]);
    let a = alice.addr.clone().expect("addr");
    bob.start(std::slice::from_ref(&a));
    cathy.start(&[a.clone(), bob.addr.clone().expect("addr")]);
    mallory.start(std::slice::from_ref(&a));
    wait_mesh(&[&alice, &bob, &cathy], Duration::from_secs(30));

    let anchors = [
        format!("alpha.example={}", s(&alpha.pem)),
        format!("beta.example={}", s(&beta.pem)),
        format!("charlie.example={}", s(&charlie.pem)),
    ];
    // Bob by his certified name (his node's published KeyPackage carries
    // the certificate), Cathy by her member id.
    let mut args = vec![
        "universe",
        "create",
        "coalition",
        "--user",
        "bob@beta.example",
        "--member",
        &cathy.member,
    ];
    for x in &anchors {
        args.extend(["--anchor", x.as_str()]);
    }
    let mut u = String::new();
    wait_for(
        "alice knows bob@beta.example",
        Duration::from_secs(30),
        || {
            let out = alice.cmd(&args);
            if out.success() {
                u = out.stdout.trim().to_string();
                Ok(())
            } else {
                Err(out.one_line_error())
            }
        },
    );
    assert_eq!(u.len(), 64, "{u}");
    let nodes = [&alice, &bob, &cathy];
    wait_for("the coalition ready", Duration::from_secs(40), || {
        ready(&nodes, &u)
    });

    bob.cmd(&["send", "coalition", "hello from beta"]).ok();
    wait_for("cathy reads bob", Duration::from_secs(30), || {
        let got = cathy.read(&u);
        if got.iter().any(|m| m.text == "hello from beta") {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });
    // His certified name is the user his messages are from.
    let m = cathy
        .read(&u)
        .into_iter()
        .find(|m| m.text == "hello from beta")
        .expect("read");
    assert_eq!(m.user.as_deref(), Some("bob@beta.example"));

    // Every node shows the domains, anchors and each member's certificate.
    for n in nodes {
        let show: types::Universe = n
            .cmd(&["universe", "show", "coalition", "--json"])
            .ok()
            .typed();
        let domains: Vec<&str> = show.anchors.iter().map(|a| a.domain.as_str()).collect();
        assert_eq!(
            domains,
            ["alpha.example", "beta.example", "charlie.example"],
            "{}",
            n.name
        );
        assert_eq!(show.ciphersuites, [1], "{}", n.name);
        wait_for("certificates known", Duration::from_secs(20), || {
            let show: types::Universe = n
                .cmd(&["universe", "show", "coalition", "--json"])
                .ok()
                .typed();
            let mut names: Vec<(String, String, String)> = show
                .certificates
                .iter()
                .filter(|c| !c.expired && c.not_after > now())
                .map(|c| (c.member.clone(), c.name.clone(), c.domain.clone()))
                .collect();
            names.sort_by(|x, y| x.1.cmp(&y.1));
            let want = vec![
                (
                    alice.member.clone(),
                    "alice@alpha.example".to_string(),
                    "alpha.example".to_string(),
                ),
                (
                    bob.member.clone(),
                    "bob@beta.example".into(),
                    "beta.example".into(),
                ),
                (
                    cathy.member.clone(),
                    "cathy@charlie.example".into(),
                    "charlie.example".into(),
                ),
            ];
            if names == want {
                Ok(())
            } else {
                Err(format!("{}: {names:?}", n.name))
            }
        });
        let text = n.cmd(&["universe", "show", "coalition"]).ok().stdout;
        for want in [
            "anchors",
            "charlie.example CA",
            "bob@beta.example",
            "suites",
        ] {
            assert!(text.contains(want), "{}: {want:?} not in\n{text}", n.name);
        }
    }

    // Mallory's certificate names beta.example but comes from alpha's CA:
    // refused, naming both domains, and the roster is unchanged.
    let e = alice
        .cmd(&["universe", "add", "coalition", &mallory.member])
        .one_line_error();
    assert!(
        e.contains("beta.example") && e.contains("alpha.example"),
        "{e}"
    );
    let show: types::Universe = alice
        .cmd(&["universe", "show", "coalition", "--json"])
        .ok()
        .typed();
    assert_eq!(show.roster.len(), 3, "{show:?}");
    assert!(!show.roster.contains(&mallory.member));

    // Bob renews (same key, a year this time): the others see the new
    // expiry, and the universe still works.
    let bob_key = KeyPair::from_pem(&std::fs::read_to_string(&bob_k).expect("bob key"))
        .expect("bob key parses");
    let renewed = certify(
        &pki,
        "bob2.pem",
        &bob_key,
        "bob",
        "beta.example",
        &beta,
        365,
    );
    bob.cmd(&["identity", "renew", "--x509-cert", s(&renewed)])
        .ok();
    wait_for(
        "bob's renewed certificate seen",
        Duration::from_secs(30),
        || {
            let show: types::Universe = cathy
                .cmd(&["universe", "show", "coalition", "--json"])
                .ok()
                .typed();
            match show.certificates.iter().find(|c| c.member == bob.member) {
                Some(c) if c.not_after > now() + 300 * 86_400 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    );
    // A renewal from another organisation's CA is refused.
    let wrong = certify(
        &pki,
        "bob3.pem",
        &bob_key,
        "bob",
        "beta.example",
        &alpha,
        365,
    );
    let e = bob
        .cmd(&["identity", "renew", "--x509-cert", s(&wrong)])
        .one_line_error();
    assert!(e.contains("alpha.example"), "{e}");
    bob.cmd(&["send", "coalition", "renewed"]).ok();
    wait_for(
        "alice reads bob after renewal",
        Duration::from_secs(30),
        || {
            let got = alice.read(&u);
            if got.iter().any(|m| m.text == "renewed") {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    );
    // The data dir keeps the renewed chain for the next start.
    let kept = std::fs::read(bob.dir.join("identity.x509.pem")).expect("kept chain");
    assert_eq!(kept, std::fs::read(&renewed).expect("renewed"));

    // A non-admin may not change the anchors.
    let e = bob
        .cmd(&[
            "universe",
            "anchor",
            "coalition",
            &format!("beta.example={}", s(&alpha.pem)),
        ])
        .one_line_error();
    assert!(e.contains("admin"), "{e}");
}
