//! The thread count changes wall time only: a run on 1 and on 2 worker
//! threads gives the same metrics; so does a bounded group cache (the
//! engine decodes evicted send groups from the store again). The scenario has loss (RNG draws in the
//! merge), churn with state loss, a compromise (the attacker taps gossip in
//! event order) and a wide slice (50 ms links, many nodes busy in one
//! slice), so an order that followed the workers' completion, or an RNG or
//! counter touched from the parallel work, would show in the metrics.

use simulations::{run, Metrics, RunOptions, Scenario};

const BUSY: &str = r#"
members = 8
duration_s = 90
seed = 21
[network]
latency_ms = 50
jitter_ms = 30
loss = 0.05
topology = "random"
degree = 3
[workload]
message_interval_s = 2
message_bytes = 100
update_interval_s = 20
[[offline]]
member = 3
at_s = 30
back_s = 60
lose_state = true
[[compromise]]
member = 5
at_s = 40
[sim]
quiet_s = 60
"#;

fn metrics(threads: usize, seed: Option<u64>) -> Metrics {
    metrics_cached(threads, seed, None)
}

fn metrics_cached(threads: usize, seed: Option<u64>, group_cache: Option<usize>) -> Metrics {
    let mut sc = match Scenario::from_toml(BUSY, "threads-test") {
        Ok(s) => s,
        Err(e) => panic!("test scenario does not parse: {e}"),
    };
    sc.engine.group_cache = group_cache;
    let opts = RunOptions {
        seed,
        progress: false,
        threads,
    };
    match run(sc, &opts) {
        Ok(out) => out.metrics,
        Err(e) => panic!("simulation failed: {e:#}"),
    }
}

/// The metrics without wall-clock fields and without the random group ids
/// (the crypto's own randomness, which names groups differently per run).
fn comparable(m: &Metrics) -> serde_json::Value {
    let mut v = m.deterministic_json();
    if let Some(pcs) = v.get_mut("pcs").and_then(|p| p.as_array_mut()) {
        for p in pcs {
            if let Some(groups) = p.get_mut("groups").and_then(|g| g.as_array_mut()) {
                for g in groups {
                    if let Some(g) = g.as_object_mut() {
                        g.remove("group");
                    }
                }
            }
        }
    }
    v
}

#[test]
fn one_and_two_threads_give_identical_metrics() {
    let one = metrics(1, None);
    let two = metrics(2, None);
    // The run did something worth comparing.
    assert!(one.messages_sent > 100, "{} messages", one.messages_sent);
    assert!(one.commits > 0 && one.frames_lost > 0 && !one.pcs.is_empty());
    assert_eq!(one.cost.threads, 1);
    assert_eq!(two.cost.threads, 2);
    assert_eq!(
        comparable(&one),
        comparable(&two),
        "the thread count changed the metrics"
    );
    // Equality is not equality of constants: another seed differs.
    let other = metrics(2, Some(22));
    assert_ne!(comparable(&one), comparable(&other));
}

/// Evicting decoded send groups between steps changes nothing a member
/// sees: with two of eight groups kept per node (every other use a decode
/// from the store, through churn with state loss, a compromise and loss)
/// the run gives the metrics of one that keeps them all.
#[test]
fn a_bounded_group_cache_gives_identical_metrics() {
    let all = metrics_cached(2, None, None);
    let two = metrics_cached(2, None, Some(2));
    assert!(
        two.cost.group_decodes_per_member > 10 * all.cost.group_decodes_per_member.max(1),
        "the bound evicted groups: {} decodes per member against {}",
        two.cost.group_decodes_per_member,
        all.cost.group_decodes_per_member
    );
    let strip = |m: &Metrics| {
        let mut v = comparable(m);
        if let Some(c) = v.get_mut("cost").and_then(|c| c.as_object_mut()) {
            c.remove("group_decodes_per_member");
        }
        v
    };
    assert_eq!(
        strip(&all),
        strip(&two),
        "the group cache changed the metrics"
    );
}
