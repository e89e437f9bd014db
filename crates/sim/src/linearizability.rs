//! A linearizability checker for client histories: the Wing–Gong algorithm with Lowe's
//! memoization (as in Porcupine), run separately per key since operations on different keys
//! commute (linearizability is compositional, Herlihy and Wing §3.3). It judges a history
//! against the sequential model of its operation type ([`Operation::step`]): the built-in
//! key-value store's [`KvOp`](crate::kv::KvOp), or your own.
//!
//! An unknown operation (no completion) is given a completion at infinity: it may take effect
//! at any point after its invocation, or (equivalently, for a write nobody later reads) never.
//! Unknown reads constrain nothing and are dropped.

use std::collections::{BTreeMap, HashSet};

use crate::history::{History, OpRecord};
use crate::machine::Operation;

/// Outcome of a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's history is linearizable.
    Ok,
    /// Some key's history is not; a small sub-history that still fails, printed.
    Violation(String),
    /// The search hit its step bound on some key; nothing is claimed for that key.
    Inconclusive(String),
}

/// Search steps allowed per key before giving up.
const SEARCH_STEPS_MAX: u64 = 20_000_000;
/// Re-checks spent shrinking a failing history.
const SHRINK_CHECKS_MAX: usize = 400;

/// Checks the whole history.
pub fn check<O: Operation>(history: &History<O>) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<OpRecord<O>>> = BTreeMap::new();
    for op in &history.ops {
        if op.ret.is_none() && op.op.is_read() {
            continue;
        }
        by_key.entry(op.key.as_str()).or_default().push(op.clone());
    }
    let mut inconclusive = Vec::new();
    for (key, ops) in by_key {
        match check_ops(&ops) {
            Some(true) => {}
            Some(false) => return Verdict::Violation(describe(key, &shrink(ops))),
            None => inconclusive.push(key.to_string()),
        }
    }
    if inconclusive.is_empty() {
        Verdict::Ok
    } else {
        Verdict::Inconclusive(format!("search bound hit on keys {inconclusive:?}"))
    }
}

/// Applies `op` to `state` if its observed output allows it.
fn step<O: Operation>(state: &O::State, op: &OpRecord<O>) -> Option<O::State> {
    op.op.step(state, op.output.as_ref())
}

const NIL: usize = usize::MAX;

#[derive(Clone, Copy, Debug)]
struct Ev {
    op: usize,
    is_call: bool,
    matching: usize,
    prev: usize,
    next: usize,
}

fn unlink(ev: &mut [Ev], i: usize) {
    let (p, n) = (ev[i].prev, ev[i].next);
    ev[p].next = n;
    if n != NIL {
        ev[n].prev = p;
    }
}

fn relink(ev: &mut [Ev], i: usize) {
    let (p, n) = (ev[i].prev, ev[i].next);
    ev[p].next = i;
    if n != NIL {
        ev[n].prev = i;
    }
}

/// `Some(linearizable?)`, or `None` if the search bound was hit. Operations of one key.
fn check_ops<O: Operation>(ops: &[OpRecord<O>]) -> Option<bool> {
    // Events sorted by logical time; an unknown completion sorts last.
    let mut times: Vec<(u64, usize, bool)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        times.push((op.invoke, i, true));
        times.push((op.ret.unwrap_or(u64::MAX), i, false));
    }
    times.sort();
    // Index 0 is the list head.
    let mut ev = vec![Ev {
        op: NIL,
        is_call: false,
        matching: NIL,
        prev: NIL,
        next: NIL,
    }];
    let mut call_pos = vec![NIL; ops.len()];
    for &(_, op, is_call) in &times {
        let pos = ev.len();
        let prev = pos - 1;
        ev[prev].next = pos;
        let mut e = Ev {
            op,
            is_call,
            matching: NIL,
            prev,
            next: NIL,
        };
        if is_call {
            call_pos[op] = pos;
        } else {
            e.matching = call_pos[op];
        }
        ev.push(e);
    }
    for pos in 1..ev.len() {
        if !ev[pos].is_call {
            let c = ev[pos].matching;
            ev[c].matching = pos;
        }
    }
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, O::State)> = HashSet::new();
    let mut calls: Vec<(usize, O::State)> = Vec::new();
    let mut state = O::State::default();
    let mut entry = ev[0].next;
    let mut steps = 0u64;
    while ev[0].next != NIL {
        steps += 1;
        if steps > SEARCH_STEPS_MAX {
            return None;
        }
        if entry == NIL {
            // Only possible when the list is non-empty but every remaining call failed and the
            // walk fell off the end, which cannot happen: a return event always ends the walk.
            unreachable!("walked past the last event");
        }
        let e = ev[entry];
        if e.is_call {
            if let Some(next_state) = step(&state, &ops[e.op]) {
                let mut bits = linearized.clone();
                bits[e.op / 64] |= 1 << (e.op % 64);
                if cache.insert((bits.clone(), next_state.clone())) {
                    calls.push((entry, std::mem::replace(&mut state, next_state)));
                    linearized = bits;
                    unlink(&mut ev, entry);
                    unlink(&mut ev, e.matching);
                    entry = ev[0].next;
                    continue;
                }
            }
            entry = e.next;
        } else {
            let Some((call, prev_state)) = calls.pop() else {
                return Some(false);
            };
            state = prev_state;
            let op = ev[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            let m = ev[call].matching;
            relink(&mut ev, m);
            relink(&mut ev, call);
            entry = ev[call].next;
        }
    }
    Some(true)
}

/// The part of `ops` a reader could know by time `r`: operations that completed by `r`, plus
/// every write invoked by `r` (made unknown if it completed later). If `ops` is linearizable, so
/// is this prefix: every read in it returned by `r`, and every write it could have observed was
/// invoked before that, so restricting a linearization of `ops` to the prefix still explains it.
fn prefix<O: Operation>(ops: &[OpRecord<O>], r: u64) -> Vec<OpRecord<O>> {
    ops.iter()
        .filter(|o| {
            if o.op.is_read() {
                o.ret.is_some_and(|t| t <= r)
            } else {
                o.invoke <= r
            }
        })
        .map(|o| {
            let mut o = o.clone();
            if o.ret.is_some_and(|t| t > r) {
                o.ret = None;
                o.ret_ms = None;
            }
            o
        })
        .collect()
}

/// Shrinks a failing history: first to the shortest failing prefix (binary search on the
/// completion time), then drops reads, then writes whose value no remaining read shows
/// (removing those cannot create a violation that was not there; [`Operation::may_be_seen_in`]
/// says which).
fn shrink<O: Operation>(ops: Vec<OpRecord<O>>) -> Vec<OpRecord<O>> {
    let mut rets: Vec<u64> = ops.iter().filter_map(|o| o.ret).collect();
    rets.sort_unstable();
    let (mut lo, mut hi) = (0, rets.len());
    // Invariant: the prefix at rets[hi - 1] fails (the whole history does).
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        if check_ops(&prefix(&ops, rets[mid - 1])) == Some(false) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let mut ops = if hi > 0 && check_ops(&prefix(&ops, rets[hi - 1])) == Some(false) {
        prefix(&ops, rets[hi - 1])
    } else {
        ops
    };
    let mut budget = SHRINK_CHECKS_MAX;
    for pass in 0..2 {
        let mut i = ops.len();
        while i > 0 && budget > 0 {
            i -= 1;
            let op = &ops[i].op;
            let removable = if op.is_read() {
                pass == 0
            } else {
                pass == 1
                    && !ops
                        .iter()
                        .any(|o| o.output.as_ref().is_some_and(|out| op.may_be_seen_in(out)))
            };
            if !removable {
                continue;
            }
            let mut fewer = ops.clone();
            fewer.remove(i);
            budget -= 1;
            if check_ops(&fewer) == Some(false) {
                ops = fewer;
            }
        }
    }
    ops
}

fn describe<O: Operation>(key: &str, ops: &[OpRecord<O>]) -> String {
    let mut s = format!(
        "history of key {key:?} is not linearizable; smallest failing sub-history found \
         ({} ops, virtual ms):\n",
        ops.len()
    );
    for o in ops {
        let ret = o.ret_ms.map_or("unknown".to_string(), |r| format!("{r}"));
        let what = o.op.describe(o.output.as_ref());
        s.push_str(&format!(
            "  client {:>3} [{:>7} .. {:>7}] {what}\n",
            o.client, o.invoke_ms, ret
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvOp;

    /// `(client, invoke, return, op, output)`.
    type Row<'a> = (u64, u64, Option<u64>, KvOp, Option<&'a str>);

    fn h(ops: &[Row<'_>]) -> History {
        let mut hist = History::default();
        for (client, invoke, ret, op, out) in ops {
            hist.ops.push(OpRecord {
                client: *client,
                key: "k".into(),
                op: op.clone(),
                invoke: *invoke,
                ret: *ret,
                output: out.map(str::to_string),
                invoke_ms: *invoke,
                ret_ms: *ret,
            });
        }
        hist
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let hist = h(&[
            (1, 1, Some(2), KvOp::Append("a".into()), None),
            (1, 3, Some(4), KvOp::Get, Some("a")),
            (2, 5, Some(6), KvOp::Put("b".into()), None),
            (2, 7, Some(8), KvOp::Get, Some("b")),
        ]);
        assert_eq!(check(&hist), Verdict::Ok);
    }

    #[test]
    fn stale_read_is_caught() {
        let hist = h(&[
            (1, 1, Some(2), KvOp::Append("a".into()), None),
            (2, 3, Some(4), KvOp::Get, Some("")),
        ]);
        assert!(matches!(check(&hist), Verdict::Violation(_)));
    }

    #[test]
    fn concurrent_ops_may_reorder_and_unknown_writes_may_apply() {
        let hist = h(&[
            (1, 1, Some(4), KvOp::Append("a".into()), None),
            (2, 2, Some(3), KvOp::Get, Some("")),
            (3, 5, None, KvOp::Append("b".into()), None),
            (2, 6, Some(7), KvOp::Get, Some("ab")),
            (2, 8, Some(9), KvOp::Get, Some("ab")),
        ]);
        assert_eq!(check(&hist), Verdict::Ok);
        let bad = h(&[
            (3, 5, None, KvOp::Append("b".into()), None),
            (2, 6, Some(7), KvOp::Get, Some("b")),
            (2, 8, Some(9), KvOp::Get, Some("")),
        ]);
        assert!(matches!(check(&bad), Verdict::Violation(_)));
    }
}
