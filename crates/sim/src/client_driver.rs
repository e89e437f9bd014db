//! Driving the clients ([`crate::client`]) inside the simulated world: issuing operations
//! to servers, retrying on refusal or timeout, and completing them when the contacted server
//! applies the write or releases the read.

use raft::ProposeError;

use crate::client::{Client, Pending};
use crate::cluster::{Cluster, DriverBug, Event};
use crate::machine::{Operation, Output, StateMachine};

impl<M: StateMachine> Cluster<M> {
    /// Adds a client that talks to `servers`; returns its index.
    pub fn add_client(&mut self, servers: Vec<u64>) -> usize {
        let id = self.clients.len();
        let rng = self.rng.fork(100 + id as u64);
        self.clients.push(Client::new(id as u64 + 1, servers, rng));
        self.schedule(
            1,
            Event::ClientWake {
                client: id,
                generation: 0,
            },
        );
        id
    }

    /// Starts or stops a client issuing new operations (a pending one continues).
    pub fn set_client_active(&mut self, client: usize, active: bool) {
        self.clients[client].active = active;
        if active && self.clients[client].pending.is_none() {
            self.wake_client(client, 1);
        }
    }

    /// How long the client retries one operation before recording it as unknown.
    pub fn set_client_give_up(&mut self, client: usize, ms: u64) {
        self.clients[client].give_up_ms = ms;
    }

    /// Restricts the servers a client talks to.
    pub fn set_client_servers(&mut self, client: usize, servers: Vec<u64>) {
        self.clients[client].servers = servers;
    }

    /// Queues a specific operation for a client (it runs when the client is idle).
    pub fn client_queue(&mut self, client: usize, key: &str, op: M::Op) {
        self.clients[client].queue.push_back((key.to_string(), op));
        if self.clients[client].pending.is_none() {
            self.wake_client(client, 1);
        }
    }

    /// Whether the client has an operation in progress or queued.
    pub fn client_busy(&self, client: usize) -> bool {
        self.clients[client].pending.is_some() || !self.clients[client].queue.is_empty()
    }

    /// Operations the client completed.
    pub fn client_completed(&self, client: usize) -> u64 {
        self.clients[client].completed
    }

    pub(crate) fn wake_client(&mut self, client: usize, delay: u64) {
        let c = &mut self.clients[client];
        c.generation += 1;
        let generation = c.generation;
        self.schedule(delay, Event::ClientWake { client, generation });
    }

    pub(crate) fn client_wake(&mut self, ci: usize) {
        if self.clients[ci].pending.is_none() {
            let now = self.now;
            let c = &mut self.clients[ci];
            let next = c.queue.pop_front().or_else(|| {
                c.active
                    .then(|| M::random_op(&mut c.rng, c.id, c.seq + 1, &self.keys))
            });
            let Some((key, op)) = next else {
                return;
            };
            c.seq += 1;
            let hist = self.history.invoke(c.id, &key, op.clone(), now);
            c.pending = Some(Pending {
                hist,
                key,
                op,
                seq: c.seq,
                at: None,
                read_ctx: None,
                give_up_at: now + c.give_up_ms,
            });
        }
        let now = self.now;
        let c = &mut self.clients[ci];
        let p = c.pending.as_mut().expect("set above");
        if let Some(node) = p.at.take() {
            // The attempt timed out: try the next server with the same sequence number.
            if let Some(ctx) = p.read_ctx.take() {
                self.reads.remove(&(node, ctx));
            }
            c.next += 1;
        }
        if now >= p.give_up_at {
            // Unknown outcome: it may still take effect; the history says so.
            c.pending = None;
            self.wake_client(ci, 1);
            return;
        }
        let node = c.servers[c.next % c.servers.len()];
        if !self.up(node) || self.paused(node) {
            self.clients[ci].next += 1;
            self.wake_client(ci, 20);
            return;
        }
        let (op, key, seq, client_id) = {
            let p = self.clients[ci].pending.as_ref().expect("pending");
            (p.op.clone(), p.key.clone(), p.seq, self.clients[ci].id)
        };
        if op.is_read() && self.driver_bug == Some(DriverBug::LocalReads) {
            let value = self.host(node).machine.read(&key, &op);
            self.complete_client(ci, Some(value));
        } else if op.is_read() {
            let ctx = self.next_read_ctx;
            self.next_read_ctx += 1;
            // Register first: the read may be released within this very call.
            self.reads.insert((node, ctx), ci);
            {
                let p = self.clients[ci].pending.as_mut().expect("pending");
                p.at = Some(node);
                p.read_ctx = Some(ctx);
            }
            let generation = self.clients[ci].generation;
            match self.try_read(node, ctx) {
                Some(Ok(())) => {
                    if self.clients[ci].generation == generation {
                        self.wake_client(ci, crate::client::ATTEMPT_MS);
                    }
                }
                _ => {
                    self.reads.remove(&(node, ctx));
                    let c = &mut self.clients[ci];
                    let p = c.pending.as_mut().expect("pending");
                    p.at = None;
                    p.read_ctx = None;
                    c.next += 1;
                    self.wake_client(ci, 20);
                }
            }
        } else {
            let cmd = M::encode(client_id, seq, &key, &op);
            self.clients[ci].pending.as_mut().expect("pending").at = Some(node);
            let generation = self.clients[ci].generation;
            match self.try_propose(node, cmd) {
                Some(Ok(_)) => {
                    if self.clients[ci].generation == generation {
                        self.wake_client(ci, crate::client::ATTEMPT_MS);
                    }
                }
                Some(Err(ProposeError::NotLeader { leader })) => {
                    let c = &mut self.clients[ci];
                    c.pending.as_mut().expect("pending").at = None;
                    let hint = leader.and_then(|l| c.servers.iter().position(|&s| s == l.get()));
                    match (c.resume.take(), hint) {
                        // The hinted server was no leader either: go on from the hinter.
                        (Some(resume), _) => c.next = resume,
                        (None, Some(pos)) => {
                            c.resume = Some(c.next + 1);
                            c.next = pos;
                        }
                        (None, None) => c.next += 1,
                    }
                    self.wake_client(ci, 10);
                }
                _ => {
                    self.clients[ci].pending.as_mut().expect("pending").at = None;
                    self.wake_client(ci, 50);
                }
            }
        }
    }

    pub(crate) fn complete_client(&mut self, ci: usize, output: Option<Output<M>>) {
        let p = self.clients[ci].pending.take().expect("pending");
        self.clients[ci].resume = None;
        if self.verbose {
            eprintln!(
                "{:>7} client {} {:?} {:?} at n{:?} -> {:?}",
                self.now,
                ci + 1,
                p.key,
                p.op,
                p.at,
                output
            );
        }
        self.history.complete(p.hist, output, self.now);
        self.clients[ci].completed += 1;
        let think = self.clients[ci]
            .rng
            .range(crate::client::THINK_MS_MIN, crate::client::THINK_MS_MAX);
        self.wake_client(ci, think);
    }

    pub(crate) fn on_write_applied(
        &mut self,
        node: u64,
        client: u64,
        seq: u64,
        output: Option<Output<M>>,
    ) {
        let ci = (client - 1) as usize;
        let Some(c) = self.clients.get(ci) else {
            return;
        };
        if c.pending
            .as_ref()
            .is_some_and(|p| p.seq == seq && p.at == Some(node) && p.read_ctx.is_none())
        {
            self.complete_client(ci, output);
        }
    }

    pub(crate) fn on_read_ready(&mut self, node: u64, ctx: u64) {
        let Some(ci) = self.reads.remove(&(node, ctx)) else {
            return;
        };
        let Some(p) = self.clients[ci].pending.as_ref() else {
            return;
        };
        if p.read_ctx != Some(ctx) {
            return;
        }
        let value = self.host(node).machine.read(&p.key, &p.op);
        self.complete_client(ci, Some(value));
    }

    pub(crate) fn on_read_failed(&mut self, node: u64, ctx: u64) {
        let Some(ci) = self.reads.remove(&(node, ctx)) else {
            return;
        };
        let c = &mut self.clients[ci];
        if let Some(p) = c.pending.as_mut() {
            if p.read_ctx == Some(ctx) {
                p.read_ctx = None;
                p.at = None;
                c.next += 1;
                self.wake_client(ci, 10);
            }
        }
    }
}
