//! A member that loses its device state and rejoins gets the conversation
//! back: each owner re-sends what it missed, so every message is expected
//! of every member, the rejoiner included, and delivered exactly once.

use simulations::{run, RunOptions, Scenario};

const STATE_LOSS: &str = r#"
members = 6
duration_s = 240
seed = 11
[network]
latency_ms = 10
jitter_ms = 3
loss = 0.0
topology = "mesh"
[workload]
message_interval_s = 5
message_bytes = 120
update_interval_s = 60
[engine]
rejoin_after_ms = 10000
[[offline]]
member = 4
at_s = 60
back_s = 150
lose_state = true
"#;

#[test]
fn a_member_that_lost_its_state_is_re_sent_everything_it_missed() {
    let sc = match Scenario::from_toml(STATE_LOSS, "state-loss") {
        Ok(s) => s,
        Err(e) => panic!("scenario: {e}"),
    };
    let members = sc.members as u64;
    let opts = RunOptions {
        seed: None,
        progress: false,
    };
    let m = match run(sc, &opts) {
        Ok(out) => out.metrics,
        Err(e) => panic!("simulation failed: {e:#}"),
    };
    assert!(m.messages_sent > 100, "workload: {}", m.messages_sent);
    // Nothing optional: what the member had before the loss, and what was
    // sent while it was away, are both owed to its new incarnation.
    assert_eq!(
        m.deliveries_expected,
        m.messages_sent * (members - 1),
        "every message is expected of every other member"
    );
    assert_eq!(m.deliveries, m.deliveries_expected, "{:?}", m.convergence);
    assert_eq!(m.duplicates, 0);
    assert_eq!(m.unexpected_deliveries, 0);
    assert_eq!(m.deliveries_lost_with_sender_state, 0);
    assert!(m.converged, "{:?}", m.convergence);
}
