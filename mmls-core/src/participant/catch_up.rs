//! Catch-up sync: our heads for peers, what to fetch from a peer's heads,
//! serving peers from our log, and absorbing what they answer.

use super::*;

impl Participant {
    pub(super) fn fetch_blocked(&mut self, uid: Id32, g: Id32) {
        let now = self.now;
        let Some(u) = self.state.universes.get_mut(&uid) else {
            return;
        };
        let mut reqs = vec![];
        if let Some(gs) = u.groups.get_mut(&g) {
            gs.last_fetch_at = now;
            reqs.push(FetchRequest::Range {
                universe: uid,
                group: g,
                from: gs.next_seq,
            });
        }
        // And the groups its head waits for.
        if let Some(head) = self
            .buffers
            .get(&g)
            .and_then(|b| b.first_key_value())
            .map(|(_, v)| v.clone())
        {
            if let Ok(env) = Envelope::decode(&head) {
                for (dg, de) in &env.deps {
                    match u.groups.get(dg) {
                        Some(ds) if ds.epoch < *de => reqs.push(FetchRequest::Range {
                            universe: uid,
                            group: *dg,
                            from: ds.next_seq,
                        }),
                        Some(_) => {}
                        None if u.retired.contains(dg) => {}
                        None => reqs.push(FetchRequest::Welcomes {
                            universe: uid,
                            member: self.me.clone(),
                            groups: vec![*dg],
                        }),
                    }
                }
            }
        }
        for r in reqs {
            if !self
                .outputs
                .iter()
                .any(|o| matches!(o, Output::Fetch(x) if *x == r))
            {
                self.outputs.push(Output::Fetch(r));
            }
        }
    }

    /// Our position in every send group of every universe, for peers.
    pub fn summaries(&self) -> Vec<SyncSummary> {
        self.state
            .universes
            .values()
            .filter(|u| !u.removed)
            .map(|u| SyncSummary {
                universe: u.id,
                heads: u.groups.iter().map(|(g, s)| (*g, s.next_seq)).collect(),
            })
            .collect()
    }

    /// Compares a peer's summary with ours: what to fetch from that peer.
    pub fn plan_fetches(&self, theirs: &SyncSummary) -> Vec<FetchRequest> {
        let Some(u) = self.state.universes.get(&theirs.universe) else {
            return vec![];
        };
        if u.removed {
            return vec![];
        }
        let ours: BTreeMap<Id32, u64> = u
            .groups
            .iter()
            .map(|(g, s)| {
                (
                    *g,
                    if s.stale {
                        u64::MAX
                    } else {
                        s.next_seq.max(self.buffer_head(g, s.next_seq))
                    },
                )
            })
            // Retired groups count as known and complete: nothing of them
            // is fetched, and no Welcome into them asked for.
            .chain(u.retired.iter().map(|g| (*g, u64::MAX)))
            .collect();
        sync::plan(theirs.universe, &ours, theirs, &self.me)
    }

    /// Serves a peer's fetch from our envelope log (read-only).
    pub fn serve_fetch(&self, req: &FetchRequest) -> Result<FetchResponse, MmlsError> {
        match req {
            FetchRequest::Range {
                universe,
                group,
                from,
            } => {
                let u = self
                    .uni(universe)
                    .map_err(|_| MmlsError::NotInUniverse(*universe))?;
                let gs = u.groups.get(group).ok_or(MmlsError::NotInGroup(*group))?;
                let store = self.provider.store();
                let seq_of = |k: &[u8]| {
                    k.get(32..40)
                        .and_then(|s| s.try_into().ok())
                        .map(u64::from_be_bytes)
                };
                let oldest = store
                    .range(
                        Table::Log,
                        &log_key(group, 0),
                        Some(&log_key(group, u64::MAX)),
                        1,
                    )?
                    .first()
                    .and_then(|(k, _)| seq_of(k));
                let rows = store.range(
                    Table::Log,
                    &log_key(group, *from),
                    Some(&log_key(group, u64::MAX)),
                    MAX_FETCH_ENVELOPES + 1,
                )?;
                let mut resp = FetchResponse {
                    envelopes: vec![],
                    oldest,
                    more: false,
                    pruned: *from < gs.pruned_below,
                };
                // Only a contiguous run starting at `from` is useful: the
                // requester processes its stream strictly in order.
                let mut size = 0;
                for (expect, (k, v)) in (*from..).zip(rows) {
                    if seq_of(&k) != Some(expect) {
                        break;
                    }
                    let full = size + v.len() > FETCH_ANSWER_BYTES && !resp.envelopes.is_empty();
                    if resp.envelopes.len() == MAX_FETCH_ENVELOPES
                        || full
                        || size + v.len() > MAX_FETCH_BYTES
                    {
                        resp.more = true;
                        break;
                    }
                    size += v.len();
                    resp.envelopes.push(ByteBuf::from(v));
                }
                Ok(resp)
            }
            FetchRequest::Welcomes {
                universe,
                member,
                groups,
            } => {
                let u = self
                    .uni(universe)
                    .map_err(|_| MmlsError::NotInUniverse(*universe))?;
                let mut resp = FetchResponse::default();
                for (g, seq) in u.welcomes.get(member).cloned().unwrap_or_default() {
                    if let Some(v) = self.provider.store().get(Table::Log, &log_key(&g, seq))? {
                        resp.envelopes.push(ByteBuf::from(v));
                    }
                }
                for v in self.held_welcomes(u, member, groups)? {
                    if !resp.envelopes.contains(&v) {
                        resp.envelopes.push(v);
                    }
                }
                // Also the Hello after each Welcome and the rest of the stream
                // is fetched by the joiner with Range requests.
                Ok(resp)
            }
        }
    }

    /// Feeds a peer's fetch answer in. A gap the peer has pruned means we
    /// can only rejoin that group.
    pub fn handle_fetch_response(
        &mut self,
        req: &FetchRequest,
        resp: FetchResponse,
    ) -> Vec<Output> {
        let mut outs = vec![];
        for e in resp.envelopes.iter().take(MAX_FETCH_ENVELOPES) {
            match self.handle_incoming(e) {
                Ok(o) => outs.extend(o),
                Err(err) if err.is_duplicate() => {}
                Err(err) => tracing::debug!(error = %err, "fetched envelope rejected"),
            }
        }
        if let FetchRequest::Range {
            universe,
            group,
            from,
        } = req
        {
            let pruned = resp.pruned && resp.oldest.is_none_or(|o| o > *from);
            let still_behind = self
                .state
                .universes
                .get(universe)
                .and_then(|u| u.groups.get(group))
                .is_some_and(|s| s.next_seq < resp.oldest.unwrap_or(u64::MAX) && !s.stale);
            if pruned && still_behind {
                let now = self.now;
                let (u, g) = (*universe, *group);
                let rejoin = self.step(|p| {
                    if let Some(gs) = p.group_state_mut(&u, &g) {
                        gs.stale = true;
                        gs.stale_since = Some(now);
                    }
                    p.send_rejoin(u, false)
                });
                if rejoin.is_ok() {
                    outs.extend(self.take_outputs());
                }
            } else if resp.more {
                let next = self
                    .state
                    .universes
                    .get(universe)
                    .and_then(|u| u.groups.get(group))
                    .map(|s| self.buffer_head(group, s.next_seq));
                if let Some(n) = next {
                    outs.push(Output::Fetch(FetchRequest::Range {
                        universe: *universe,
                        group: *group,
                        from: n,
                    }));
                }
            }
        }
        outs
    }
}

/// Welcomes of each group whose place in the log we remember.
const WELCOMES_KEPT_PER_GROUP: usize = 4;

impl Participant {
    /// Notes that the Welcome at `seq` of `g` is in our log, so that we can
    /// hand it to a recipient whose copy was lost.
    pub(super) fn index_welcome(&mut self, uid: Id32, g: Id32, seq: u64) -> Result<(), MmlsError> {
        let v = self.uni_mut(&uid)?.welcome_log.entry(g).or_default();
        if !v.contains(&seq) {
            v.push(seq);
            if v.len() > WELCOMES_KEPT_PER_GROUP {
                v.remove(0);
            }
        }
        Ok(())
    }

    /// For each of `groups` (groups `member` holds nothing of), the newest
    /// Welcome we hold that has secrets for one of `member`'s KeyPackages.
    /// Older ones are left: a newer Welcome naming it supersedes them.
    fn held_welcomes(
        &self,
        u: &UniverseState,
        member: &MemberId,
        groups: &[Id32],
    ) -> Result<Vec<ByteBuf>, MmlsError> {
        let wanted: Vec<(&Id32, &Vec<u64>)> = groups
            .iter()
            .take(sync::MAX_WELCOME_GROUPS)
            .filter(|g| !u.retired.contains(g))
            .filter_map(|g| u.welcome_log.get(g).map(|seqs| (g, seqs)))
            .collect();
        if wanted.is_empty() {
            return Ok(vec![]);
        }
        let refs = self.key_package_refs_of(member);
        let mut out = vec![];
        for (g, seqs) in wanted {
            for seq in seqs.iter().rev() {
                let Some(v) = self.provider.store().get(Table::Log, &log_key(g, *seq))? else {
                    continue;
                };
                if welcome_names(&v, &refs) {
                    out.push(ByteBuf::from(v));
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The hash references of the KeyPackages we know for `m`, in every
    /// suite (a Welcome names its recipients by these).
    fn key_package_refs_of(&self, m: &MemberId) -> Vec<Vec<u8>> {
        let Some(kps) = self.state.known_kps.get(m) else {
            return vec![];
        };
        kps.0
            .values()
            .filter_map(|b| self.validate_kp(b, Some(m)).ok())
            .filter_map(|kp| kp.hash_ref(self.provider.crypto()).ok())
            .map(|r| r.as_slice().to_vec())
            .collect()
    }
}

/// Whether the Welcome envelope `raw` has secrets for one of `refs`.
fn welcome_names(raw: &[u8], refs: &[Vec<u8>]) -> bool {
    let Ok(env) = Envelope::decode(raw) else {
        return false;
    };
    let Ok(msg) = MlsMessageIn::tls_deserialize_exact(env.body.as_slice()) else {
        return false;
    };
    let MlsMessageBodyIn::Welcome(w) = msg.extract() else {
        return false;
    };
    w.secrets().iter().any(|s| {
        refs.iter()
            .any(|r| r.as_slice() == s.new_member().as_slice())
    })
}
