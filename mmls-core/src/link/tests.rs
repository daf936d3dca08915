use super::*;

type L = Links<u32, u32>;

fn links(me: u32) -> L {
    Links::new(me, LinkConfig::default())
}

#[test]
fn simultaneous_dials_leave_one_connection_chosen_alike_at_both_ends() {
    // 1 dials 2 (connection 10), 2 dials 1 (connection 20), and each end
    // sees its own dial first.
    let (mut a, mut b) = (links(1), links(2));
    assert_eq!(a.connected(2, 10, Dialer::Us, 0), Admit::First);
    assert_eq!(b.connected(1, 20, Dialer::Us, 0), Admit::First);
    let at_a = a.connected(2, 20, Dialer::Them, 5);
    let at_b = b.connected(1, 10, Dialer::Them, 5);
    // The lower id's dial (10) survives at both ends.
    assert_eq!(at_a, Admit::Duplicate);
    assert_eq!(at_b, Admit::Replaces(20));
    assert_eq!(a.connection(&2), Some(&10));
    assert_eq!(b.connection(&1), Some(&10));
    // Closing the loser changes nothing at either end.
    assert!(!a.closed(&2, &20, 6));
    assert!(!b.closed(&1, &20, 6));
    assert!(a.is_connected(&2) && b.is_connected(&1));
}

#[test]
fn overlapping_redials_keep_the_older_connection() {
    let mut a = links(5);
    assert_eq!(a.connected(3, 1, Dialer::Us, 0), Admit::First);
    for c in 2..5 {
        assert_eq!(
            a.connected(3, c, Dialer::Us, 100 * c as u64),
            Admit::Duplicate
        );
    }
    assert_eq!(a.connection(&3), Some(&1));
    assert!(!a.may_dial(&3, 1000));
}

#[test]
fn a_silent_peer_is_closed_once_and_redialled_after_backoff() {
    let mut a = links(1);
    a.connected(2, 7, Dialer::Us, 0);
    a.received(&2, 100, 1000);
    let deadline = a.poll_timeout().expect("a deadline");
    a.handle_timeout(deadline - 2);
    assert_eq!(a.poll_action(), None);
    a.handle_timeout(deadline + 1);
    match a.poll_action() {
        Some(LinkAction::Close {
            peer: 2,
            conn: 7,
            reason: CloseReason::Silent { for_ms },
        }) => assert!(for_ms >= LinkConfig::default().min_silence_ms),
        other => panic!("expected a close, got {other:?}"),
    }
    a.handle_timeout(deadline + 1000);
    assert_eq!(a.poll_action(), None, "reported once");
    assert!(!a.may_dial(&2, deadline + 1));
    let t = deadline + 5;
    assert!(a.closed(&2, &7, t));
    // It lived a few seconds only: a young end, the first backoff.
    let base = LinkConfig::default().redial_base_ms;
    assert!(!a.may_dial(&2, t + base - 1));
    assert!(a.may_dial(&2, t + base));
    assert_eq!(a.status(&2, t).map(|s| s.health), Some(LinkHealth::Down));
}

#[test]
fn a_busy_slow_link_stays_up_while_bytes_flow() {
    let mut a = links(1);
    a.connected(2, 7, Dialer::Us, 0);
    // 256 kbit/s each way, pongs 2 s late: 10 minutes of traffic.
    let mut t = 0;
    while t < 600_000 {
        t += 500;
        a.sent(&2, 16_000);
        a.received(&2, 16_000, t);
        if t % 2000 == 0 {
            a.pong(&2, 2000, t);
        }
        a.handle_timeout(t);
        assert_eq!(a.poll_action(), None, "closed at {t} ms");
    }
    let s = a.status(&2, t).unwrap();
    assert_eq!(s.health, LinkHealth::Slow);
    assert_eq!(s.rtt_ms, Some(2000));
}

#[test]
fn repeated_young_ends_back_off_and_a_long_life_resets() {
    let mut a = links(1);
    let mut t = 0;
    let mut waits = vec![];
    for c in 0..6u32 {
        a.connected(2, c, Dialer::Us, t);
        t += 4000;
        assert!(a.closed(&2, &c, t));
        let s = a.status(&2, t).unwrap();
        waits.push(s.redial_in_ms);
        t += s.redial_in_ms;
        assert!(a.may_dial(&2, t));
    }
    assert!(waits.windows(2).all(|w| w[1] == 2 * w[0]), "{waits:?}");
    a.connected(2, 99, Dialer::Us, t);
    t += LinkConfig::default().stable_after_ms;
    a.received(&2, 1, t - 1);
    assert!(a.closed(&2, &99, t));
    assert!(a.may_dial(&2, t), "a stable connection cleared the backoff");
}

#[test]
fn down_peers_are_bounded() {
    let mut a = links(0);
    for p in 1..=(MAX_DOWN as u32 + 50) {
        a.connected(p, p, Dialer::Them, p as u64);
        a.closed(&p, &p, p as u64 + 1);
    }
    assert!(a.statuses(0).len() <= MAX_DOWN);
}
