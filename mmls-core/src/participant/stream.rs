//! The ordered stream of each send group: accept an entry, buffer it when
//! early, and drain everything that became ready, across groups.

use super::*;

impl Participant {
    /// A stream entry: buffer it, then process everything that is ready.
    pub(super) fn on_stream(&mut self, env: Envelope, bytes: &[u8]) -> Result<(), MmlsError> {
        let uid = env
            .universe
            .ok_or(crate::envelope::EnvelopeError::MissingField(
                env.kind, "universe",
            ))?;
        let g = env
            .group
            .ok_or(crate::envelope::EnvelopeError::MissingField(
                env.kind, "group",
            ))?;
        if self
            .state
            .universes
            .get(&uid)
            .is_some_and(|u| u.retired.contains(&g))
        {
            return Err(MmlsError::GroupRetired(g));
        }
        // A Welcome for us may open a universe or group we do not know yet.
        if env.kind == Kind::Welcome && self.welcome_is_for_me(&env)? {
            let known = self
                .state
                .universes
                .get(&uid)
                .and_then(|u| u.groups.get(&g))
                .map(|s| (s.stale, s.epoch));
            let can_join = match known {
                None => true,
                Some((stale, epoch)) => {
                    stale
                        || env.epoch > epoch
                            && self
                                .state
                                .universes
                                .get(&uid)
                                .is_some_and(|u| u.owner_group.get(&self.me) != Some(&g))
                }
            };
            // Otherwise it waits with the group's stream for its PSKs.
            if can_join && self.deps_ready(&uid, &env.deps)? {
                self.step(|p| p.join(uid, g, &env, bytes))?;
                self.drain(uid, g);
                return Ok(());
            }
        }
        let u = self
            .state
            .universes
            .get(&uid)
            .ok_or(MmlsError::NotInUniverse(uid))?;
        if u.removed {
            return Err(MmlsError::NotInUniverse(uid));
        }
        let Some(gs) = u.groups.get(&g) else {
            // Nobody we verified owns this group (yet): held, unrelayed.
            return self.hold_unknown(uid, g, &env, bytes);
        };
        if env.seq < gs.next_seq && !gs.stale {
            return Err(MmlsError::Duplicate {
                group: g,
                seq: env.seq,
            });
        }
        if gs.owner == self.me {
            return Err(MmlsError::Duplicate {
                group: g,
                seq: env.seq,
            });
        }
        let buffered = self.buffers.get(&g);
        if let Some(held) = buffered.and_then(|b| b.get(&env.seq)) {
            // A *different* entry for a position we hold: one of the two is
            // forged, and we cannot tell which before MLS does. Keep it
            // aside, so a forgery that got here first (say, one waiting for
            // PSKs that never come) cannot lock the real entry out.
            let dup = Err(MmlsError::Duplicate {
                group: g,
                seq: env.seq,
            });
            if held.as_slice() == bytes || !self.add_alternate(g, env.seq, bytes) {
                return dup;
            }
            self.drain(uid, g);
            return Ok(());
        }
        // The next entry of its stream is processed in the step that
        // received it: one transaction, and its own rejection comes back as
        // this call's error.
        let next = self
            .state
            .universes
            .get(&uid)
            .and_then(|u| u.groups.get(&g))
            .map(|s| (s.next_seq, s.stale));
        if next == Some((env.seq, false)) && self.deps_ready(&uid, &env.deps)? {
            if let Err(e) = self.step(|p| p.process_entry(uid, g, &env, bytes)) {
                self.drop_entry(uid, g, env.seq, &e);
                self.give_up_on_gap(uid, g, &env, &e);
                return Err(e);
            }
            self.drain(uid, g);
            return Ok(());
        }
        // A full buffer keeps the *lowest* positions: they are the ones the
        // stream waits for. A later entry is evicted (peers serve it again);
        // refusing this one could refuse the very entry that unblocks all.
        let mut evict = None;
        if let Some(b) = buffered.filter(|b| b.len() >= self.config.max_buffer_per_group) {
            match b.last_key_value() {
                Some((&highest, _)) if highest > env.seq => evict = Some(highest),
                _ => return Err(MmlsError::BufferFull(g)),
            }
        }
        let owned = bytes.to_vec();
        self.step(|p| {
            if let Some(h) = evict {
                p.buffer_remove(g, h);
            }
            p.buffer_put(g, env.seq, owned);
            Ok(())
        })?;
        self.drain(uid, g);
        Ok(())
    }

    /// A stream entry failed: drop it (the real one may still come), and
    /// record an equivocation it revealed.
    pub(super) fn drop_entry(&mut self, uid: Id32, g: Id32, seq: u64, e: &MmlsError) {
        let reason = e.to_string();
        let eq = match e {
            MmlsError::Equivocation {
                owner,
                group,
                epoch,
            } => Some((owner.clone(), *group, *epoch)),
            _ => None,
        };
        let _ = self.step(|p| {
            p.buffer_remove(g, seq);
            p.record_equivocations(uid, eq.into_iter().collect())?;
            p.emit(Event::Rejected {
                universe: uid,
                group: g,
                seq,
                reason,
            });
            Ok(())
        });
    }

    /// Whether every PSK in `deps` is in our store (or can never be).
    pub(super) fn deps_ready(&self, uid: &Id32, deps: &[(Id32, u64)]) -> Result<bool, MmlsError> {
        let Some(u) = self.state.universes.get(uid) else {
            return Ok(deps.is_empty());
        };
        Ok(deps
            .iter()
            .all(|(g, e)| u.groups.get(g).is_some_and(|s| s.epoch >= *e && !s.stale)))
    }

    /// Processes buffered entries of `g` (and of groups they unblock) in
    /// stream order, each in its own step.
    pub(super) fn drain(&mut self, uid: Id32, first: Id32) {
        let mut work = vec![first];
        let mut rounds = 0;
        while let Some(g) = work.pop() {
            // Entries held while the group was unknown join its stream.
            self.adopt_held(uid, g);
            rounds += 1;
            if rounds > 100_000 {
                break;
            }
            // The caller may just have processed an entry of `first`.
            let mut progressed = rounds == 1;
            while let Some(gs) = self
                .state
                .universes
                .get(&uid)
                .and_then(|u| u.groups.get(&g))
            {
                if gs.stale {
                    break;
                }
                let next = gs.next_seq;
                // Drop what is already behind us.
                if !self.alternates.is_empty() {
                    self.alternates.retain(|(ag, s), _| *ag != g || *s >= next);
                }
                let behind: Vec<u64> = self
                    .buffers
                    .get(&g)
                    .map(|b| b.range(..next).map(|(k, _)| *k).collect())
                    .unwrap_or_default();
                if !behind.is_empty() {
                    let _ = self.step(|p| {
                        for s in behind {
                            p.buffer_remove(g, s);
                        }
                        Ok(())
                    });
                }
                let Some(bytes) = self.buffers.get(&g).and_then(|b| b.get(&next)).cloned() else {
                    let has_later = self.buffers.get(&g).is_some_and(|b| !b.is_empty());
                    self.set_blocked(uid, g, has_later);
                    break;
                };
                let Ok(env) = Envelope::decode(&bytes) else {
                    let _ = self.step(|p| {
                        p.buffer_remove(g, next);
                        Ok(())
                    });
                    continue;
                };
                if !self.deps_ready(&uid, &env.deps).unwrap_or(false) {
                    if self.try_alternates(uid, g, next) {
                        progressed = true;
                        continue;
                    }
                    self.set_blocked(uid, g, true);
                    break;
                }
                match self.step(|p| p.process_entry(uid, g, &env, &bytes)) {
                    Ok(()) => {
                        progressed = true;
                    }
                    Err(e) => {
                        self.drop_entry(uid, g, next, &e);
                        if self.give_up_on_gap(uid, g, &env, &e) {
                            break;
                        }
                        if self.try_alternates(uid, g, next) {
                            progressed = true;
                            continue;
                        }
                        self.set_blocked(uid, g, true);
                        break;
                    }
                }
            }
            if progressed {
                // Our progress may unblock other groups' heads, and groups
                // we are not in yet may hold our Welcome. Walked from the
                // buffers (few, usually none), not from the universe's
                // groups: this runs after every entry processed.
                let mut pending = vec![];
                if let Some(u) = self.state.universes.get(&uid) {
                    for (bg, b) in &self.buffers {
                        if b.is_empty() {
                            continue;
                        }
                        match u.groups.get(bg) {
                            Some(gs) => {
                                if *bg != g
                                    && !gs.stale
                                    && b.contains_key(&gs.next_seq)
                                    && !work.contains(bg)
                                {
                                    work.push(*bg);
                                }
                            }
                            None => pending.push(*bg),
                        }
                    }
                    let ready = |d: &[(Id32, u64)]| self.deps_ready(&uid, d).unwrap_or(false);
                    for hg in self.held.groups_with_welcomes(&uid, ready) {
                        if !u.groups.contains_key(&hg) && !pending.contains(&hg) {
                            pending.push(hg);
                        }
                    }
                }
                for bg in pending {
                    self.retry_orphan_welcomes(uid, bg);
                }
            }
        }
    }

    /// Welcomes buffered or held for groups we are not in (waiting for
    /// PSKs).
    pub(super) fn retry_orphan_welcomes(&mut self, uid: Id32, g: Id32) {
        let mut entries: Vec<Vec<u8>> = self
            .buffers
            .get(&g)
            .map(|b| b.values().cloned().collect())
            .unwrap_or_default();
        entries.extend(self.held.welcomes_of(&uid, &g));
        for bytes in entries {
            let Ok(env) = Envelope::decode(&bytes) else {
                continue;
            };
            if env.kind == Kind::Welcome
                && env.universe == Some(uid)
                && self.welcome_is_for_me(&env).unwrap_or(false)
                && self.deps_ready(&uid, &env.deps).unwrap_or(false)
            {
                if self.step(|p| p.join(uid, g, &env, &bytes)).is_ok() {
                    self.drain(uid, g);
                } else {
                    // Not a Welcome we can join: not worth trying again.
                    self.held.remove(&uid, &g, &bytes);
                }
                return;
            }
        }
    }

    /// Processes the first alternate for position `seq` of `g` that is ready
    /// and valid, in place of the buffered entry. True if one went through.
    pub(super) fn try_alternates(&mut self, uid: Id32, g: Id32, seq: u64) -> bool {
        let Some(alts) = self.alternates.get(&(g, seq)).cloned() else {
            return false;
        };
        for a in alts {
            let ready = Envelope::decode(&a).ok().filter(|e| {
                e.group == Some(g)
                    && e.seq == seq
                    && self.deps_ready(&uid, &e.deps).unwrap_or(false)
            });
            let Some(env) = ready else { continue };
            match self.step(|p| p.process_entry(uid, g, &env, &a)) {
                Ok(()) => {
                    self.alternates.remove(&(g, seq));
                    return true;
                }
                Err(e) => {
                    tracing::debug!(group = %g.short(), seq, error = %e, "alternate entry rejected");
                    if let Some(list) = self.alternates.get_mut(&(g, seq)) {
                        list.retain(|x| *x != a);
                    }
                }
            }
        }
        false
    }

    /// Records whether `g`'s stream waits for something, in a step of its
    /// own: a block must outlive a later step that fails, or the group would
    /// never be fetched for or rejoined.
    pub(super) fn set_blocked(&mut self, uid: Id32, g: Id32, blocked: bool) {
        let current = self
            .state
            .universes
            .get(&uid)
            .and_then(|u| u.groups.get(&g))
            .map(|s| s.blocked_since.is_some());
        if current.is_none() || current == Some(blocked) {
            return;
        }
        let now = self.now;
        let retry = self.config.fetch_retry_ms;
        let r = self.step(|p| {
            let gs = p
                .group_state_mut(&uid, &g)
                .ok_or(MmlsError::UnknownGroup(g))?;
            if !blocked {
                gs.blocked_since = None;
                return Ok(());
            }
            gs.blocked_since = Some(now);
            // A fetch asked moments ago reads up to the peer's head and so
            // covers this gap too (after a partition heals, gossip replays
            // arrive out of order and would open a new gap per entry:
            // hundreds of overlapping fetches). The tick asks again if it
            // did not.
            if gs.last_fetch_at == 0 || now >= gs.last_fetch_at.saturating_add(retry) {
                p.fetch_blocked(uid, g);
            }
            Ok(())
        });
        if let Err(e) = r {
            tracing::debug!(group = %g.short(), error = %e, "recording a blocked stream failed");
        }
    }
}
