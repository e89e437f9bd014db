//! A small driver over `Store` for tests: numbers Raft indexes and unwraps response kinds.
#![allow(dead_code)]

use skiff_kv::*;

/// A store plus the next Raft index to apply at.
pub struct Kv {
    pub store: Store,
    pub index: u64,
}

impl Kv {
    pub fn new() -> Kv {
        Kv {
            // Grouped commits, as the server runs: reads see the open transaction's rows.
            store: Store::in_memory(Options {
                commit_delay: std::time::Duration::from_secs(10),
                ..Options::default()
            })
            .expect("in-memory store"),
            index: 0,
        }
    }

    pub fn apply(&mut self, request: Request) -> Result<Response, Error> {
        self.index += 1;
        self.store.apply(self.index, &Command::new(request))
    }

    pub fn kv_err(&mut self, request: Request) -> KvError {
        match self.apply(request) {
            Err(Error::Kv(e)) => e,
            other => panic!("expected a KvError, got {other:?}"),
        }
    }

    pub fn put_req(&mut self, p: PutRequest) -> PutResponse {
        match self.apply(Request::Put(p)) {
            Ok(Response::Put(r)) => r,
            other => panic!("put: {other:?}"),
        }
    }

    pub fn put(&mut self, k: &str, v: &str) -> PutResponse {
        self.put_req(PutRequest::new(k, v))
    }

    pub fn del_req(&mut self, d: DeleteRangeRequest) -> DeleteRangeResponse {
        match self.apply(Request::DeleteRange(d)) {
            Ok(Response::DeleteRange(r)) => r,
            other => panic!("delete: {other:?}"),
        }
    }

    pub fn del(&mut self, k: &str) -> DeleteRangeResponse {
        self.del_req(DeleteRangeRequest::key(k))
    }

    pub fn txn(&mut self, t: TxnRequest) -> TxnResponse {
        match self.apply(Request::Txn(t)) {
            Ok(Response::Txn(r)) => r,
            other => panic!("txn: {other:?}"),
        }
    }

    pub fn range(&self, r: &RangeRequest) -> RangeResponse {
        self.store.range(r).expect("range")
    }

    pub fn get(&self, k: &str) -> Option<KeyValue> {
        let mut r = self.range(&RangeRequest::key(k));
        assert!(r.kvs.len() <= 1);
        r.kvs.pop()
    }

    pub fn keys(&self, r: &RangeRequest) -> Vec<String> {
        self.range(r)
            .kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect()
    }

    pub fn rev(&self) -> i64 {
        self.store.revision().expect("revision")
    }
}

/// What `Store::apply_batch` answers for each entry.
pub type Answers = Vec<Option<Result<Response, KvError>>>;

/// Applies `cmds` one entry per transaction, at indexes `first..`, answered as
/// `apply_batch` would answer them.
pub fn apply_one_by_one(s: &Store, first: u64, cmds: &[Command]) -> Answers {
    cmds.iter()
        .enumerate()
        .map(|(i, c)| match s.apply(first + i as u64, c) {
            Ok(r) => Some(Ok(r)),
            Err(Error::Kv(e)) => Some(Err(e)),
            Err(other) => panic!("storage fault: {other}"),
        })
        .collect()
}

/// Applies `cmds` at indexes `1..` in batches whose sizes cycle through `cuts`, checking the
/// store's invariants after each batch.
pub fn apply_in_batches(s: &Store, cmds: &[Command], cuts: &[usize]) -> Answers {
    let mut got = Vec::new();
    let mut start = 0;
    for cut in cuts.iter().cycle() {
        if start >= cmds.len() {
            break;
        }
        let end = (start + cut).min(cmds.len());
        let entries: Vec<(u64, Option<&Command>)> = (start..end)
            .map(|i| (i as u64 + 1, Some(&cmds[i])))
            .collect();
        got.extend(s.apply_batch(&entries).expect("apply batch"));
        s.check_invariants().expect("invariants");
        start = end;
    }
    got
}
