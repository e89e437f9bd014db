//! Applying committed entries: [`Store::apply`], [`Store::apply_batch`] and the replay that
//! answers a retry.
//!
//! A [`Batch`] is one redb write transaction with the overlay of its index changes. Commit
//! order (see [`crate::index`]): a compaction's revisions leave the index before its rows leave
//! redb; every other change reaches redb first and the index after.

use std::sync::MutexGuard;
use std::time::Instant;

use redb::WriteTransaction;

use crate::command::{Command, Request, Response};
use crate::error::{Error, KvError};
use crate::index::{LeaseChange, Overlay};
use crate::lease::{LEASES, LEASE_KEYS};
use crate::mvcc::REVS;
use crate::session::{Lookup, Outcome, Undo, SESSIONS};
use crate::store::{Meta, Store, GROUP_BYTES_MAX, GROUP_ROWS_MAX, META, META_SESSIONS_EVICTED};
use crate::txn;
use crate::write::Writer;

/// Whether a request runs for real or is replayed to answer a retry.
enum Replay<'a> {
    /// For real, as the entry at `index`.
    No(Applying<'a>),
    /// A replay: it passed the auth and alarm gates when it was first applied.
    Yes,
}

/// What a request applied for real needs besides itself.
struct Applying<'a> {
    /// Who sent it (checked against the auth state; `None`: the servers themselves).
    stamp: Option<&'a crate::auth::AuthStamp>,
    /// Its Raft index (part of an Authenticate's token, as etcd's).
    index: u64,
    /// Where an auth request leaves what it did, for the store to take after the commit.
    auth_out: &'a mut Option<crate::auth::Applied>,
}

/// The changes of one apply batch in the apply thread's write transaction: a transaction of
/// its own, or the open grouped one (see `Options::commit_delay`).
struct Batch<'s> {
    store: &'s Store,
    /// The store's transaction slot, held for the whole batch (empty meanwhile: the
    /// transaction is in `txn`), so that nothing else commits or begins a write under it.
    slot: MutexGuard<'s, Option<(WriteTransaction, Instant)>>,
    /// The transaction and when its group began; taken when the batch ends. A batch that is
    /// dropped without ending (an error return) aborts it and fails the store (see Drop).
    txn: Option<(WriteTransaction, Instant)>,
    /// Whether the transaction holds earlier batches (applied, not committed): undoing this
    /// batch then reverts its writes instead of aborting the transaction.
    shared: bool,
    /// Index changes of the transaction, merged after it commits.
    overlay: Overlay,
    /// The meta after the last entry of the transaction.
    meta: Meta,
    /// Store revision of the committed index the transaction started from.
    cap: u64,
    /// A compaction the transaction made (it holds nothing else).
    compact_to: Option<u64>,
    /// How to put the in-memory sessions back if the transaction is aborted.
    undo: Undo,
    /// The batch wrote the member table, which readers see only once committed: it commits
    /// when it ends.
    members_changed: bool,
    /// The alarms after the batch's alarm request, if it ran one: the store's copy in memory
    /// takes them once the batch commits (which it does when it ends).
    alarms_after: Option<Vec<crate::alarms::AlarmMember>>,
    /// What the batch's auth request did, if it ran one: the store's memory (state and
    /// tokens) takes it once the batch commits (which it does when it ends).
    auth_after: Option<crate::auth::Applied>,
}

impl Drop for Batch<'_> {
    /// A batch that did not end (a storage fault or corruption part-way) may have written
    /// part of a request, and earlier batches of its group are applied in memory but not in
    /// redb: dropping the transaction aborts it, and the store refuses all further work, so
    /// that no later commit can store a state with those changes half there.
    fn drop(&mut self) {
        if self.txn.take().is_some() {
            self.store.fail();
        }
    }
}

impl<'s> Batch<'s> {
    fn begin(store: &'s Store) -> Result<Batch<'s>, Error> {
        let mut slot = store.lock_open();
        store.check_failed()?;
        let (txn, shared) = match slot.take() {
            Some(open) => (open, true),
            None => ((store.begin_write()?, Instant::now()), false),
        };
        let meta = store.meta();
        Ok(Batch {
            store,
            slot,
            txn: Some(txn),
            shared,
            overlay: Overlay::default(),
            meta,
            cap: meta.revision,
            compact_to: None,
            members_changed: false,
            alarms_after: None,
            auth_after: None,
            undo: Undo::default(),
        })
    }

    /// The answer a command gets from its session without being executed: the outcome of a
    /// retry (the session is touched at `index`) or a refusal. `None`: execute it.
    fn session_answer(&mut self, cmd: &Command, index: u64) -> Result<Option<Outcome>, Error> {
        let Some(s) = cmd.session else {
            return Ok(None);
        };
        let max = self.store.options.sessions_max;
        // Opened only if a stored row must be read (opening a table per command was 1% of
        // a loaded cluster's CPU).
        let txn = &self.txn.as_ref().expect("open until the batch ends").0;
        let table = || Ok(txn.open_table(SESSIONS)?);
        let mut sessions = self.store.lock_sessions();
        Ok(match sessions.lookup(table, s, max)? {
            Lookup::Apply => None,
            Lookup::Retry(outcome) => {
                sessions.touch(table, s.client_id, index, &mut self.undo)?;
                Some(outcome)
            }
            Lookup::Refuse(e) => Some(Outcome::Stored(Err(e))),
        })
    }

    /// Remembers the outcome of a command of a session, applied at `index` from store
    /// revision `rev_before`.
    fn record(
        &mut self,
        cmd: &Command,
        index: u64,
        result: &Result<Response, KvError>,
        rev_before: u64,
    ) -> Result<(), Error> {
        let Some(s) = cmd.session else {
            return Ok(());
        };
        let outcome = Outcome::encoded(&cmd.request, result, rev_before);
        let max = self.store.options.sessions_max;
        self.store
            .lock_sessions()
            .record(s, index, outcome, max, &mut self.undo);
        Ok(())
    }

    /// Validates and runs one request, updating the meta (`applied` unchanged). On `Err` the
    /// transaction and the overlay may hold part of the request: abort the batch.
    fn execute(&mut self, cmd: &Command, index: u64) -> Result<Response, Error> {
        let began = std::time::Instant::now();
        let result = self.execute_untimed(cmd, index);
        if began.elapsed() > crate::SLOW_APPLY {
            self.store
                .slow_applies
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    /// [`Batch::execute`], untimed.
    fn execute_untimed(&mut self, cmd: &Command, index: u64) -> Result<Response, Error> {
        let req = &cmd.request;
        let (resp, after, compact_to) = execute_as(
            &self.txn.as_ref().expect("open until the batch ends").0,
            self.store,
            &mut self.overlay,
            self.cap,
            self.meta,
            req,
            Replay::No(Applying {
                stamp: cmd.auth.as_ref(),
                index,
                auth_out: &mut self.auth_after,
            }),
        )?;
        if let Some(c) = compact_to {
            assert!(self.compact_to.is_none(), "one compaction per batch");
            self.compact_to = Some(c);
        }
        self.members_changed |= req.is_member_change();
        if matches!(req, Request::Alarm { .. }) {
            let txn = &self.txn.as_ref().expect("open until the batch ends").0;
            let alarms = crate::alarms::all(&txn.open_table(crate::alarms::ALARMS)?)?;
            self.alarms_after = Some(alarms);
        }
        self.meta = after;
        Ok(resp)
    }

    /// Ends the batch: its rows, sessions and the meta go into the transaction, a compaction
    /// leaves the index and then redb, and the overlay joins the index. The transaction is
    /// committed if `force`, if commits are not grouped, or if the group is due (see
    /// `Options::commit_delay`); otherwise it stays open for the next batch, and the rows
    /// become the index's pending rows. An error fails the store.
    fn commit(mut self, force: bool) -> Result<(), Error> {
        let ended = self.end(force);
        if ended.is_err() {
            self.store.fail();
        }
        ended
    }

    fn end(&mut self, force: bool) -> Result<(), Error> {
        let store = self.store;
        let (txn, began) = self.txn.take().expect("open until the batch ends");
        let mut overlay = std::mem::take(&mut self.overlay);
        {
            let mut revs = txn.open_table(REVS)?;
            for (rev, row) in &overlay.rows {
                revs.insert(rev.key(), row.as_slice())?;
            }
        }
        // The sessions changed in memory stay changed and are stored, as one row.
        let evicted = store.lock_sessions().flush(
            &mut txn.open_table(SESSIONS)?,
            std::mem::take(&mut self.undo),
        )?;
        if let Some(evicted) = evicted {
            txn.open_table(META)?
                .insert(META_SESSIONS_EVICTED, evicted)?;
        }
        self.meta.write(&txn)?;
        if let Some(c) = self.compact_to {
            let doomed = {
                let mut index = store.write_index();
                index.meta.compacted = c;
                index.compact(c)
            };
            let mut revs = txn.open_table(REVS)?;
            for rev in doomed {
                revs.remove(rev.key())?;
            }
        }
        let rows = std::mem::take(&mut overlay.rows);
        let delay = store.options.commit_delay;
        // Readers of the lease tables read committed state only.
        let now = force
            || delay.is_zero()
            || self.compact_to.is_some()
            || !overlay.lease_changes.is_empty()
            // ... and of the member table too (publishing is rare), and the apply gate of
            // the alarms, which must see the alarms it holds in memory (alarms are rarer).
            || self.members_changed
            || self.alarms_after.is_some()
            || self.auth_after.is_some()
            || began.elapsed() >= delay
            || {
                let index = store.read_index();
                let bytes: usize = rows.iter().map(|(_, r)| r.len()).sum();
                index.pending.rows() + rows.len() >= GROUP_ROWS_MAX
                    || index.pending.bytes() + bytes >= GROUP_BYTES_MAX
            };
        if now {
            store.commit_txn(txn)?;
            if let Some(alarms) = self.alarms_after.take() {
                store.set_alarms(alarms);
            }
            if let Some(applied) = self.auth_after.take() {
                store.auth_applied(applied);
            }
            let mut index = store.write_index();
            index.merge(overlay, self.meta);
            index.pending.clear();
        } else {
            let mut index = store.write_index();
            index.merge(overlay, self.meta);
            index.pending.push(rows);
            *self.slot = Some((txn, began));
        }
        Ok(())
    }

    /// Ends the batch with nothing of it applied. An error fails the store.
    fn abort(mut self) -> Result<(), Error> {
        self.store
            .lock_sessions()
            .undo(std::mem::take(&mut self.undo));
        let (txn, began) = self.txn.take().expect("open until the batch ends");
        if self.shared {
            // Earlier batches share the transaction: revert this one's writes in it.
            if let Err(e) = undo_writes(&txn, &self.overlay) {
                self.store.fail();
                return Err(e);
            }
            *self.slot = Some((txn, began));
        } else {
            txn.abort()?;
        }
        Ok(())
    }
}

/// Reverts the lease changes of `overlay` in `txn` (rows, the meta and the sessions are
/// written only when a batch ends, so it holds nothing else of the batch).
fn undo_writes(txn: &WriteTransaction, overlay: &Overlay) -> Result<(), Error> {
    if overlay.lease_changes.is_empty() {
        return Ok(());
    }
    let mut leases = txn.open_table(LEASES)?;
    let mut keys = txn.open_table(LEASE_KEYS)?;
    for change in overlay.lease_changes.iter().rev() {
        match change {
            LeaseChange::Granted(id) => {
                leases.remove(*id)?;
            }
            LeaseChange::Revoked { id, ttl } => {
                leases.insert(*id, *ttl)?;
            }
            LeaseChange::Attached(lease, key) => {
                keys.remove((*lease, key.as_slice()))?;
            }
            LeaseChange::Detached(lease, key) => {
                keys.insert((*lease, key.as_slice()), ())?;
            }
        }
    }
    Ok(())
}

impl Store {
    /// Applies the committed Raft entry `index` carrying `cmd`, atomically with recording
    /// `index` as the applied index.
    ///
    /// Returns the response, or `Err(Error::Kv(_))` for a deterministic request failure (also
    /// applied: the index advances and a session remembers it). `Err(Error::AlreadyApplied)`
    /// means `index <= applied_index()` and nothing happened; other errors are storage faults
    /// after which nothing was applied and the store must be reopened.
    pub fn apply(&self, index: u64, cmd: &Command) -> Result<Response, Error> {
        let mut b = Batch::begin(self)?;
        if index <= b.meta.applied {
            let applied = b.meta.applied;
            b.abort()?;
            return Err(Error::AlreadyApplied { index, applied });
        }
        if let Some(answer) = b.session_answer(cmd, index)? {
            b.meta.applied = index;
            b.commit(false)?;
            return self.answer(&cmd.request, answer)?.map_err(Error::Kv);
        }
        let rev_before = b.meta.revision;
        let result = match b.execute(cmd, index) {
            Ok(resp) => Ok(resp),
            Err(Error::Kv(e)) => {
                // Undo the partial writes; the failure itself is still applied.
                b.abort()?;
                b = Batch::begin(self)?;
                Err(e)
            }
            Err(other) => return Err(other),
        };
        b.record(cmd, index, &result, rev_before)?;
        b.meta.applied = index;
        b.commit(false)?;
        result.map_err(Error::Kv)
    }

    /// Applies a run of committed Raft entries in one write transaction (one commit, so the
    /// pages and the sync are shared; etcd's backend batches the same way). `None` marks an
    /// entry without a command (no-op, configuration): only the applied index moves.
    ///
    /// Results match calling [`Store::apply`] / [`Store::advance_applied`] on each entry in
    /// order, with `None` for entries at or below the applied index (already applied) and for
    /// entries without a command. If a request fails (`KvError`), it may have written part
    /// of its effect before failing, so the batch is abandoned and redone one transaction per
    /// entry, which undoes a failed request alone. A compaction gets a transaction of its own.
    /// Storage faults return `Err` with nothing of the uncommitted part of the batch applied.
    pub fn apply_batch(
        &self,
        entries: &[(u64, Option<&Command>)],
    ) -> Result<Vec<Option<Result<Response, KvError>>>, Error> {
        self.apply_batch_answering(entries, |_, _| true)
    }

    /// [`Store::apply_batch`], computing the answer of a retry that must be replayed (see
    /// `session`) only where `wanted(index, command)` says someone waits for it; elsewhere its
    /// result is `None`. A replay runs after the entries before it are committed, so it sees
    /// exactly the state applying entry by entry would show it.
    pub fn apply_batch_answering(
        &self,
        entries: &[(u64, Option<&Command>)],
        wanted: impl Fn(u64, &Command) -> bool,
    ) -> Result<Vec<Option<Result<Response, KvError>>>, Error> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut b = Batch::begin(self)?;
        let mut out = Vec::with_capacity(entries.len());
        // Entries before this position are committed.
        let mut committed = 0;
        for (pos, &(index, cmd)) in entries.iter().enumerate() {
            if index <= b.meta.applied {
                out.push(None);
                continue;
            }
            let Some(cmd) = cmd else {
                b.meta.applied = index;
                out.push(None);
                continue;
            };
            if let Some(answer) = b.session_answer(cmd, index)? {
                b.meta.applied = index;
                match answer {
                    Outcome::Stored(result) => out.push(Some(result)),
                    Outcome::Replay { rev_before } if wanted(index, cmd) => {
                        // A replay needs its own transaction: commit what came before.
                        b.commit(true)?;
                        committed = pos + 1;
                        out.push(Some(self.replay(&cmd.request, rev_before)?));
                        b = Batch::begin(self)?;
                    }
                    Outcome::Replay { .. } => out.push(None),
                }
                continue;
            }
            // A compaction, a change of the member table, an alarm and an auth request
            // (written straight into the transaction, which undoing a failed request in a
            // shared one would not revert; alarms and auth also change how the entries after
            // them apply) get a
            // transaction of their own.
            let members = cmd.request.is_member_change();
            let alone = members
                || matches!(
                    cmd.request,
                    Request::Compact { .. } | Request::Alarm { .. } | Request::Auth(_)
                );
            if alone && pos > committed {
                b.commit(true)?;
                committed = pos;
                b = Batch::begin(self)?;
            }
            let rev_before = b.meta.revision;
            match b.execute(cmd, index) {
                Ok(resp) => {
                    let result = Ok(resp);
                    b.record(cmd, index, &result, rev_before)?;
                    b.meta.applied = index;
                    out.push(Some(result));
                }
                Err(Error::Kv(_)) => {
                    b.abort()?;
                    out.truncate(committed);
                    out.extend(self.apply_each(&entries[committed..])?);
                    return Ok(out);
                }
                Err(other) => return Err(other),
            }
            if alone {
                b.commit(members)?;
                committed = pos + 1;
                b = Batch::begin(self)?;
            }
        }
        b.commit(false)?;
        Ok(out)
    }

    /// The answer to a retry: as stored, or replayed.
    fn answer(
        &self,
        request: &Request,
        outcome: Outcome,
    ) -> Result<Result<Response, KvError>, Error> {
        match outcome {
            Outcome::Stored(result) => Ok(result),
            Outcome::Replay { rev_before } => self.replay(request, rev_before),
        }
    }

    /// Answers a retry of `request`, first applied when the store revision was `rev_before`,
    /// by running it again as of that revision in a write transaction that is never
    /// committed: it reads the index as of `rev_before` (MVCC keeps that state until it is
    /// compacted), so it sees what it saw then, and lease checks are skipped (it passed them
    /// then; only its answer is wanted). If that state was compacted away since, the answer is
    /// [`KvError::AnswerLost`] (applied; the answer is gone). Runs only for retries whose
    /// answer someone waits for, which are rare.
    fn replay(
        &self,
        request: &Request,
        rev_before: u64,
    ) -> Result<Result<Response, KvError>, Error> {
        let meta = self.meta();
        if rev_before < meta.compacted || rev_before > meta.revision {
            return Ok(Err(KvError::AnswerLost));
        }
        // redb has one writer: what the open grouped transaction holds is committed first,
        // and the slot is held so that no group opens meanwhile.
        let mut slot = self.lock_open();
        self.settle_locked(&mut slot)?;
        let txn = self.begin_write()?;
        let then = Meta {
            revision: rev_before,
            ..meta
        };
        let mut overlay = Overlay::default();
        let r = execute_as(
            &txn,
            self,
            &mut overlay,
            rev_before,
            then,
            request,
            Replay::Yes,
        );
        txn.abort()?;
        match r {
            Ok((resp, _, _)) => Ok(Ok(resp)),
            // It succeeded when it was applied (only successes are replayed): what it read
            // then is gone (a range at a revision compacted since).
            Err(Error::Kv(_)) => Ok(Err(KvError::AnswerLost)),
            Err(other) => Err(other),
        }
    }

    /// [`Store::apply_batch`] one transaction per entry.
    fn apply_each(
        &self,
        entries: &[(u64, Option<&Command>)],
    ) -> Result<Vec<Option<Result<Response, KvError>>>, Error> {
        let mut out = Vec::with_capacity(entries.len());
        for &(index, cmd) in entries {
            let r = match cmd {
                Some(cmd) => self.apply(index, cmd).map(Some),
                None => self.advance_applied(index).map(|()| None),
            };
            match r {
                Ok(resp) => out.push(resp.map(Ok)),
                Err(Error::AlreadyApplied { .. }) => out.push(None),
                Err(Error::Kv(e)) => out.push(Some(Err(e))),
                Err(other) => return Err(other),
            }
        }
        Ok(out)
    }

    /// Records that Raft entry `index`, which carries no command (an election no-op, a
    /// configuration change), has been applied. Same skipping rule as [`Store::apply`].
    pub fn advance_applied(&self, index: u64) -> Result<(), Error> {
        let mut b = Batch::begin(self)?;
        if index <= b.meta.applied {
            let applied = b.meta.applied;
            b.abort()?;
            return Err(Error::AlreadyApplied { index, applied });
        }
        b.meta.applied = index;
        b.commit(false)
    }
}

/// Validates and runs one request in `txn` over the index as of `cap` and `overlay`, returning
/// the response, the new meta (`applied` unchanged) and the compaction it asks for. On `Err`
/// the transaction and the overlay may hold partial writes: abort them.
fn execute_as(
    txn: &WriteTransaction,
    store: &Store,
    overlay: &mut Overlay,
    cap: u64,
    meta: Meta,
    req: &Request,
    replay: Replay,
) -> Result<(Response, Meta, Option<u64>), Error> {
    txn::check_request(req)?;
    // A retry's replay passed the gates when it was first applied; only its answer is wanted.
    // Permission first, then the alarms (etcd's auth applier wraps its quota applier).
    if let Replay::No(applying) = &replay {
        let auth = store.auth_state();
        match applying.stamp {
            Some(stamp) => {
                let mut lease_keys = |id| {
                    let table = txn.open_table(crate::lease::LEASE_KEYS)?;
                    crate::lease::keys_of(&table, id)
                };
                auth.check_stamped(stamp, req, &mut lease_keys)?;
            }
            // A client's request that lost its stamp (or one forged on the peer port) is
            // not trusted as the servers' own; those that an older version wrote unstamped
            // apply as they did then, alike on every member.
            None if auth.enabled && req.stamped_by_every_version() => {
                return Err(KvError::PermissionDenied.into());
            }
            None => {}
        }
        if let Some(refused) = store.alarm_refusal(req) {
            return Err(refused.into());
        }
    }
    let index = store.read_index();
    let mut w = Writer::new(txn, &index, overlay, cap, meta.revision, meta.compacted)?;
    w.replay = matches!(replay, Replay::Yes);
    let resp = match req {
        Request::Range(r) => Response::Range(w.range(r)?),
        Request::Put(p) => Response::Put(w.put(p)?),
        Request::DeleteRange(d) => Response::DeleteRange(w.delete(d)?),
        Request::Txn(t) => Response::Txn(txn::execute(&mut w, t)?),
        Request::Compact { revision } => {
            assert!(
                matches!(replay, Replay::No(_)),
                "compactions are never replayed"
            );
            w.compact(*revision)?;
            Response::Compact {
                revision: w.read_rev() as i64,
            }
        }
        Request::LeaseGrant { id, ttl } => {
            w.lease_grant(*id, *ttl)?;
            Response::LeaseGrant {
                revision: w.read_rev() as i64,
                id: *id,
                ttl: *ttl,
            }
        }
        Request::LeaseRevoke { id } => {
            w.lease_revoke(*id)?;
            Response::LeaseRevoke {
                revision: w.read_rev() as i64,
            }
        }
        Request::MemberPublish(m) => {
            crate::members::publish(
                &mut txn.open_table(crate::members::MEMBERS)?,
                &txn.open_table(crate::members::MEMBERS_REMOVED)?,
                m,
            )?;
            Response::Members {
                revision: w.read_rev() as i64,
            }
        }
        Request::MembersRemoved(ids) => {
            crate::members::remove(
                &mut txn.open_table(crate::members::MEMBERS)?,
                &mut txn.open_table(crate::members::MEMBERS_REMOVED)?,
                ids,
            )?;
            Response::Members {
                revision: w.read_rev() as i64,
            }
        }
        Request::MemberAdd(m) => {
            crate::members::add(
                &mut txn.open_table(crate::members::MEMBERS)?,
                &txn.open_table(crate::members::MEMBERS_REMOVED)?,
                m,
            )?;
            Response::Members {
                revision: w.read_rev() as i64,
            }
        }
        Request::MemberUpdate { id, peer_urls } => {
            if let Err(refused) = crate::members::update_peer_urls(
                &mut txn.open_table(crate::members::MEMBERS)?,
                &txn.open_table(crate::members::MEMBERS_REMOVED)?,
                *id,
                peer_urls,
            )? {
                return Err(refused.into());
            }
            Response::Members {
                revision: w.read_rev() as i64,
            }
        }
        Request::Alarm { action, alarm } => {
            let changed = crate::alarms::apply(
                &mut txn.open_table(crate::alarms::ALARMS)?,
                *action,
                *alarm,
            )??;
            Response::Alarm {
                revision: w.read_rev() as i64,
                changed,
            }
        }
        Request::Auth(a) => {
            let Replay::No(applying) = replay else {
                panic!("auth answers are small and stored, never replayed: {a:?}");
            };
            let applied = crate::auth::apply(&store.auth_state(), a, applying.index)?;
            if let Some(state) = &applied.state {
                crate::auth::store(&mut txn.open_table(crate::auth::AUTH)?, state)?;
            }
            let token = applied.token.as_ref().map(|(t, _)| t.clone());
            *applying.auth_out = Some(applied);
            Response::Auth {
                revision: w.read_rev() as i64,
                token,
            }
        }
    };
    let after = Meta {
        revision: w.read_rev(),
        compacted: w.compacted(),
        applied: meta.applied,
    };
    let compact_to = w.compact_to;
    drop(w);
    assert!(after.revision == meta.revision || after.revision == meta.revision + 1);
    Ok((resp, after, compact_to))
}
