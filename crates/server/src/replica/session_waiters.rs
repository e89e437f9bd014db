//! Writers on this member waiting for a session's entry to be applied here. A write this
//! member forwarded to the leader is normally answered by the leader; when that answer is too
//! large to ship over the peer port, the leader says so and this member answers from its own
//! apply of the same entry (every member applies every entry, and computes the same answer).
//! The writer registers before the leader can propose the entry, so the apply never comes
//! first; a snapshot install (which skips entries) fails every waiter as "leader changed", and
//! the writer retries under the same session (a retry is answered without being applied).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::reply::{WriteError, WriteReply};

/// Registered waiters, at most; more are refused as busy.
pub const SESSION_WAITERS_MAX: usize = 4096;

/// The registry, shared by the handles and the apply task.
#[derive(Debug, Default)]
pub struct SessionWaiters {
    /// Client id -> where its entry's result goes. Invariant: at most
    /// [`SESSION_WAITERS_MAX`] entries; an entry is removed when answered or when its
    /// [`SessionWait`] is dropped.
    waiting: Mutex<HashMap<u64, WriteReply>>,
}

impl SessionWaiters {
    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<u64, WriteReply>> {
        // A panic while holding the lock leaves a consistent map (single inserts/removes).
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a waiter for `client_id`'s next applied entry.
    pub fn register(self: &Arc<Self>, client_id: u64) -> Result<SessionWait, WriteError> {
        let (reply, rx) = oneshot::channel();
        let mut waiting = self.waiting();
        if waiting.len() >= SESSION_WAITERS_MAX && !waiting.contains_key(&client_id) {
            return Err(WriteError::Busy);
        }
        waiting.insert(client_id, reply);
        Ok(SessionWait {
            client_id,
            rx: Some(rx),
            waiters: self.clone(),
        })
    }

    /// Whether anyone waits for `client_id` (cheap; checked before cloning a result).
    pub fn is_waiting(&self, client_id: u64) -> bool {
        self.waiting().contains_key(&client_id)
    }

    /// Answers, from one applied batch (each entry's result and session client), every
    /// waiter whose session's entry it holds. One lock per batch, and nothing cloned unless a
    /// waiter is there: this runs after every apply.
    pub fn answer_applied(
        &self,
        results: &[Option<Result<kv::Response, kv::KvError>>],
        clients: &[Option<u64>],
    ) {
        let mut waiting = self.waiting();
        if waiting.is_empty() {
            return;
        }
        for (result, client) in results.iter().zip(clients) {
            let (Some(result), Some(client)) = (result, client) else {
                continue;
            };
            if let Some(reply) = waiting.remove(client) {
                let _ = reply.send(result.clone().map_err(WriteError::Kv));
            }
        }
    }

    /// Fails every waiter (their entries may never be applied here).
    pub fn fail_all(&self, why: WriteError) {
        for (_, reply) in self.waiting().drain() {
            let _ = reply.send(Err(why.clone()));
        }
    }
}

/// One registered waiter; dropping it unregisters it.
#[derive(Debug)]
pub struct SessionWait {
    client_id: u64,
    rx: Option<oneshot::Receiver<Result<kv::Response, WriteError>>>,
    waiters: Arc<SessionWaiters>,
}

impl SessionWait {
    /// Waits for this member's apply of the session's entry.
    pub async fn applied(mut self) -> Result<kv::Response, WriteError> {
        match self.rx.take() {
            Some(rx) => rx.await.unwrap_or(Err(WriteError::Stopped)),
            None => Err(WriteError::Stopped),
        }
    }
}

impl Drop for SessionWait {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut waiting = self.waiters.waiting();
        // Only a registration nobody listens to any more (ours, now): a newer one for the
        // same client still has its receiver.
        if waiting
            .get(&self.client_id)
            .is_some_and(|reply| reply.is_closed())
        {
            waiting.remove(&self.client_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_gets_its_answer_once_and_unregisters_when_dropped() {
        let w = Arc::new(SessionWaiters::default());
        let wait = w.register(7).expect("room");
        assert!(w.is_waiting(7) && !w.is_waiting(8));
        // An entry without a result (a retry nobody here asked to rebuild) answers nobody.
        w.answer_applied(
            &[None, Some(Ok(kv::Response::Compact { revision: 3 }))],
            &[Some(7), Some(7)],
        );
        assert!(!w.is_waiting(7), "answered once");
        assert_eq!(
            wait.applied().await.expect("answer"),
            kv::Response::Compact { revision: 3 }
        );
        let dropped = w.register(9).expect("room");
        drop(dropped);
        assert!(!w.is_waiting(9), "unregistered on drop");
        let failed = w.register(10).expect("room");
        w.fail_all(WriteError::LeaderChanged);
        assert_eq!(failed.applied().await, Err(WriteError::LeaderChanged));
        let held: Vec<_> = (0..SESSION_WAITERS_MAX as u64)
            .map(|i| w.register(100 + i).expect("room"))
            .collect();
        assert_eq!(w.register(1).err(), Some(WriteError::Busy), "bounded");
        drop(held);
        assert!(w.register(1).is_ok());
    }
}
