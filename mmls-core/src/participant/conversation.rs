//! Conversation views for user interfaces: our own sent texts (kept in
//! `Table::Sent` for rejoin re-sends, `resend.rs`) and what each member has
//! acknowledged of a send group (the `PskViews` rows its processed commits
//! wrote, `psk.rs`). Nothing here changes state or adds storage.

use super::*;

impl Participant {
    /// Our own texts in `universe` numbered after `after` (all when None),
    /// in send order, at most `limit`: `(per-sender seq, body)`. Only those
    /// still within `Config::sent_retention`.
    pub fn own_texts(
        &self,
        universe: &Id32,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, MmlsError> {
        self.uni(universe)?;
        self.page_after(Table::Sent, universe, after, limit)?
            .into_iter()
            .map(|(k, v)| Ok((super::resend::sent_seq(&k)?, v)))
            .collect()
    }

    /// For send group `group` of `universe`: the newest epoch of it that
    /// each member named in a commit of its own that we processed (its
    /// frontier, authenticated by MLS). A member that names epoch `e` has
    /// processed every entry of `group`'s stream before the commit that
    /// opened `e`. Members that never named it are absent.
    pub fn acked_epochs(
        &self,
        universe: &Id32,
        group: &Id32,
    ) -> Result<Vec<(MemberId, u64)>, MmlsError> {
        let u = self.uni(universe)?;
        let mut out = vec![];
        for m in &u.roster {
            let key = super::psk::view_key(group, m);
            if let Some(v) = self.provider.store().get(Table::PskViews, &key)? {
                if let Ok(b) = <[u8; 8]>::try_from(v.as_slice()) {
                    out.push((m.clone(), u64::from_be_bytes(b)));
                }
            }
        }
        Ok(out)
    }

    /// The highest text number we received from each member of `universe`.
    pub fn received_texts(&self, universe: &Id32) -> Vec<(MemberId, u64)> {
        self.received_acks(universe)
    }
}
