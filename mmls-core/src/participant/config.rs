//! Policy knobs of the engine: every timeout and bound a deployment may tune.

/// Policy knobs. Times are in the driver's milliseconds.
#[derive(Debug, Clone)]
pub struct Config {
    /// Commit pending changes (membership, anchors, Update proposals, and
    /// PSK imports unless `import_window_ms` says otherwise) at the latest
    /// this long after they arose; they are also committed before every
    /// send, so nothing we send is readable by a member we removed.
    pub commit_delay_ms: u64,
    /// When set, PSK imports alone wait up to this long and are not
    /// committed before a send: one commit then covers every MMLS update
    /// heard in the window, instead of one commit per update in each of the
    /// N - 1 other send groups. The draft's default (None) imports before
    /// every send; a window trades post-compromise healing latency (a peer's
    /// update reaches our group at most this late) for N times fewer
    /// commits, which is what lets universes of 64+ members update at all.
    pub import_window_ms: Option<u64>,
    /// Issue an own MMLS update (commit with path) this often; None = only
    /// when asked.
    pub update_interval_ms: Option<u64>,
    /// Forward-secrecy bound (ms): an exported PSK is kept while a member
    /// may still import it (see `participant::psk`), but never longer than
    /// this after its epoch ended, whoever still lags. A commit importing
    /// an older one cannot be processed; its reader rejoins that group.
    pub psk_max_age_ms: u64,
    /// Envelopes kept per send group in the log peers fetch from.
    pub log_retention: u64,
    /// Own texts kept per universe to re-send to a member we re-add (a
    /// rejoin after pruned history or state loss).
    pub sent_retention: u64,
    /// Out-of-order envelopes held per group.
    pub max_buffer_per_group: usize,
    /// Entries of send groups we do not know (see `participant::held`)
    /// held per universe, at most: in number, in bytes, and in age (ms).
    /// Beyond them the oldest go. A real one (a member's new group whose
    /// Welcome is on its way) is fetched again once we join the group.
    pub held_per_universe: usize,
    pub held_bytes_per_universe: usize,
    pub held_max_age_ms: u64,
    /// Announced KeyPackages of strangers (members of none of our
    /// universes) kept, at most; beyond it the longest-ago arrival goes
    /// (`participant::lobby_bounds`).
    pub kp_strangers_max: usize,
    /// Single-use KeyPackages strangers handed to us kept, at most.
    pub kp_handed_max: usize,
    /// Re-ask a peer for missing stream entries after this long.
    pub fetch_retry_ms: u64,
    /// A group blocked on missing history for this long is rejoined.
    pub rejoin_after_ms: u64,
    /// Re-ask for a missing KeyPackage after this long.
    pub kp_retry_ms: u64,
    /// Remove members whose send group has been silent this long (None = never).
    pub silent_removal_ms: Option<u64>,
    /// Leaf rotation: an MMLS update also sends an Update proposal in every
    /// other send group (DESIGN "Leaf rotation everywhere"). Costs one path
    /// commit per other member per update; large simulations may turn it off
    /// to study the PSK mechanism alone.
    pub rotate_leaves: bool,
    /// Leaf rotation: a proposal its owner did not commit before moving
    /// its group on is re-sent (once per new epoch) when the group has been
    /// quiet this long, twice as long after each further miss (up to 64
    /// times), and at the latest 4 such delays after it went stale:
    /// re-sending at once raced the owner's next commit again (see
    /// `participant::reproposal`). Longer than `commit_delay_ms` plus a
    /// round trip, so that an owner's next commit is seen before.
    pub proposal_retry_ms: u64,
    /// Fresh single-use KeyPackages kept ready to hand to owners that ask.
    pub kp_pool_size: usize,
    /// Single-use KeyPackages handed out and not used yet, at most: beyond
    /// it the oldest are deleted (a requester that never adds us must not
    /// make us keep private keys forever).
    pub kp_issued_max: usize,
    /// Announce a last-resort KeyPackage (every owner may use it, and we
    /// rotate our leaf after joining through it). Off: we announce a
    /// single-use one that no owner uses, and every owner must ask for one
    /// of its own, as with a client that has no last-resort KeyPackage
    /// (e.g. AWS mls-rs).
    pub publish_last_resort: bool,
    /// The ciphersuites this node prefers for its own send groups, best
    /// first (code points). In each universe it takes the first one the
    /// universe accepts, else the universe's own first choice; it joins
    /// others' groups in any suite it implements and the universe accepts.
    pub ciphersuites: Vec<u16>,
    /// Decoded send groups kept in memory between steps, the most recently
    /// used; None keeps every one. Each costs its tree, secret tree and
    /// caches (grows with the universe), a miss one decode from the store
    /// (see BENCHMARKS, "Group cache"). Bounded, a node's memory no longer
    /// grows as members times groups.
    pub group_cache: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            commit_delay_ms: 500,
            import_window_ms: None,
            update_interval_ms: None,
            psk_max_age_ms: 24 * 3_600_000,
            log_retention: 100_000,
            sent_retention: 100_000,
            max_buffer_per_group: 4096,
            held_per_universe: 64,
            held_bytes_per_universe: 256 * 1024,
            held_max_age_ms: 10 * 60_000,
            kp_strangers_max: 1024,
            kp_handed_max: 256,
            fetch_retry_ms: 1_000,
            rejoin_after_ms: 30_000,
            kp_retry_ms: 2_000,
            silent_removal_ms: None,
            rotate_leaves: true,
            proposal_retry_ms: 2_000,
            kp_pool_size: 8,
            kp_issued_max: 64,
            publish_last_resort: true,
            ciphersuites: crate::ciphersuites::IMPLEMENTED.to_vec(),
            group_cache: None,
        }
    }
}
