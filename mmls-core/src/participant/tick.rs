//! Time: delayed commits, periodic updates, fetch retries, rejoins after
//! long blocks, silent-member removal and log retention.

use super::*;

impl Participant {
    /// Advances time: commits imports whose delay passed, periodic updates,
    /// retries fetches and KeyPackage requests, starts rejoins, prunes logs.
    pub fn tick(&mut self, now: u64) -> Vec<Output> {
        self.now = self.now.max(now);
        self.held.expire(self.now, self.config.held_max_age_ms);
        let ids: Vec<Id32> = self.state.universes.keys().cloned().collect();
        for u in ids {
            let r = self.step(|p| p.tick_universe(u));
            if let Err(e) = r {
                tracing::debug!(universe = %u.short(), error = %e, "tick step failed");
            }
        }
        if self.pool_needs_refill() {
            if let Err(e) = self.step(|p| p.refill_pool()) {
                tracing::debug!(error = %e, "KeyPackage pool refill failed");
            }
        }
        if !self.acked.is_empty() {
            let _ = self.step(|_| Ok(()));
        }
        self.take_outputs()
    }

    pub(super) fn tick_universe(&mut self, uid: Id32) -> Result<(), MmlsError> {
        let now = self.now;
        let cfg = self.config.clone();
        let u = self.uni(&uid)?;
        if u.removed {
            return Ok(());
        }
        if !u.certs.is_empty() {
            self.flag_expired(uid)?;
        }
        self.send_gap_rejoins(uid)?;
        let u = self.uni(&uid)?;
        // Own send group not created yet (joined, but KeyPackages missing).
        if u.own_group.is_none() && u.def.is_some() && u.roster.contains(&self.me) {
            self.try_create_own_group(uid)?;
        }
        let u = self.uni(&uid)?;
        if u.own_group.is_some() {
            let due_update = cfg
                .update_interval_ms
                .is_some_and(|iv| now >= u.last_update_at.saturating_add(iv));
            let delay = if u.has_pending_beyond_imports() {
                cfg.commit_delay_ms
            } else {
                cfg.import_window_ms.unwrap_or(cfg.commit_delay_ms)
            };
            let due_commit = u.has_pending()
                && u.pending_since
                    .is_some_and(|t| now >= t.saturating_add(delay));
            if due_update || u.update_due {
                self.mmls_update(uid)?;
            } else if due_commit {
                self.commit_own(uid, false)?;
            }
        }
        self.repropose_stale(uid)?;
        // Missing history: fetch again, and rejoin if it does not come.
        let u = self.uni(&uid)?;
        let mut fetch = vec![];
        let mut rejoin = false;
        // A rejoin is the last resort, and the one before may still be on
        // its way over a slow link: the next waits out the backoff.
        let may_rejoin = u.rejoin_requested_at.is_none_or(|t| {
            now >= t.saturating_add(rejoin_backoff(cfg.rejoin_after_ms, u.rejoin_attempts))
        });
        for (g, gs) in &u.groups {
            if gs.stale {
                if gs
                    .stale_since
                    .is_some_and(|t| now >= t.saturating_add(cfg.rejoin_after_ms))
                    && may_rejoin
                {
                    rejoin = true;
                }
                continue;
            }
            if let Some(since) = gs.blocked_since {
                if now >= gs.last_fetch_at.saturating_add(cfg.fetch_retry_ms) {
                    fetch.push(*g);
                }
                // Slow is not stuck: while other entries of the universe
                // keep arriving (a loaded radio link, a big catch-up), a
                // block waits up to `SLOW_LINK_PATIENCE` times longer. A
                // rejoin re-adds us at a new epoch, and commits importing
                // the epochs it skipped can never be processed by us
                // (`PskError(KeyNotFound)`): the rejoins that followed
                // spread over a whole universe formed across a 256 kbit/s
                // link.
                let progressing = self
                    .last_progress
                    .get(&uid)
                    .is_some_and(|t| now < t.saturating_add(cfg.rejoin_after_ms));
                let patience = if progressing {
                    cfg.rejoin_after_ms.saturating_mul(SLOW_LINK_PATIENCE)
                } else {
                    cfg.rejoin_after_ms
                };
                if now >= since.saturating_add(patience) && may_rejoin {
                    rejoin = true;
                }
            }
        }
        for g in fetch {
            self.fetch_blocked(uid, g);
        }
        if rejoin {
            let u = self.uni_mut(&uid)?;
            let blocked: Vec<Id32> = u
                .groups
                .iter()
                .filter(|(_, g)| g.blocked_since.is_some())
                .map(|(g, _)| *g)
                .collect();
            for g in blocked {
                if let Some(gs) = u.groups.get_mut(&g) {
                    if now
                        >= gs
                            .blocked_since
                            .unwrap_or(now)
                            .saturating_add(cfg.rejoin_after_ms)
                    {
                        gs.stale = true;
                        gs.stale_since.get_or_insert(now);
                    }
                }
            }
            self.send_rejoin(uid, false)?;
        }
        // Members we owe an Add but have no KeyPackage for (in our
        // group's suite).
        let u = self.uni(&uid)?;
        if let Some(own) = u.own_group.and_then(|g| u.groups.get(&g)) {
            let wanted = self.lacking_key_packages(&u.pending_adds, own.suite);
            for m in wanted {
                self.request_kp(&m);
            }
        }
        // Silent members.
        if let Some(limit) = cfg.silent_removal_ms {
            let u = self.uni(&uid)?;
            if u.def.as_ref().is_some_and(|d| d.is_admin(&self.me)) {
                let silent: Vec<MemberId> = u
                    .groups
                    .values()
                    .filter(|g| g.owner != self.me && now >= g.last_commit_at.saturating_add(limit))
                    .map(|g| g.owner.clone())
                    .filter(|m| u.roster.contains(m))
                    .collect();
                if !silent.is_empty() {
                    let u = self.uni_mut(&uid)?;
                    for m in &silent {
                        u.roster.remove(m);
                        u.pending_removes.insert(m.clone());
                    }
                    u.pending_since.get_or_insert(now);
                }
            }
        }
        self.prune_log(uid)?;
        self.prune_sent(uid)?;
        self.prune_psks(uid)?;
        Ok(())
    }

    pub(super) fn prune_log(&mut self, uid: Id32) -> Result<(), MmlsError> {
        let keep = self.config.log_retention;
        let u = self.uni(&uid)?;
        // Only groups with something new to prune: touching a group's row
        // costs its undo image and a rewrite, for every group at every tick.
        let heads: Vec<(Id32, u64)> = u
            .groups
            .iter()
            .filter(|(_, s)| s.next_seq.saturating_sub(keep) > s.pruned_below)
            .map(|(g, s)| (*g, s.next_seq - keep))
            .collect();
        for (g, cut) in heads {
            let old = self.provider.store().range(
                Table::Log,
                &log_key(&g, 0),
                Some(&log_key(&g, cut)),
                256,
            )?;
            // Bounded work per tick: what is left goes at the next one.
            let done_to = if old.len() == 256 {
                old.last()
                    .and_then(|(k, _)| k.get(32..40))
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0)
            } else {
                cut
            };
            for (k, _) in old {
                self.provider.store().delete(Table::Log, &k);
            }
            if let Some(gs) = self.group_state_mut(&uid, &g) {
                gs.pruned_below = gs.pruned_below.max(done_to);
            }
        }
        Ok(())
    }
}

/// How many times `rejoin_after_ms` a blocked group waits while the rest
/// of its universe is still making progress.
const SLOW_LINK_PATIENCE: u64 = 4;

/// How long after a rejoin request the next may go: `rejoin_after_ms`
/// after the first, doubling with each further one up to 8 times that
/// (4 min with the default 30 s). Requests that get no answer mostly did
/// not get through; re-sending each at the same pace is what turned a
/// saturated radio link into a rejoin storm (3,552 rejoins and 15,384
/// Welcomes among 16 members in an hour, BENCHMARKS "Thin links").
pub(super) fn rejoin_backoff(rejoin_after_ms: u64, attempts: u32) -> u64 {
    rejoin_after_ms.saturating_mul(1 << attempts.saturating_sub(1).min(3))
}
