//! Compact, versioned binary encoding of [`Command`] (for the Raft log) and of apply results
//! (for the session table).
//!
//! Layout: one version byte ([`CODEC_VERSION`]), then the body. Integers are LEB128 varints
//! (`i64` zigzag-encoded), byte strings are a varint length followed by the bytes, enums a tag
//! byte. Decoding checks every length against the remaining input (no allocation larger than
//! the input), bounds nesting by [`crate::TXN_DEPTH_MAX`], rejects trailing bytes, and returns
//! [`Error::Decode`] on anything malformed: it never panics.

use crate::command::{Command, Request, Response, Session};
use crate::error::{Error, KvError};
use crate::types::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, KeyValue,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseOp, SortOrder,
    SortTarget, TxnRequest, TxnResponse,
};
use crate::TXN_DEPTH_MAX;

/// Version byte of the encoding; bump it (and keep decoding older ones) on any change.
pub const CODEC_VERSION: u8 = 1;

/// Encodes a command for the Raft log.
pub fn encode_command(cmd: &Command) -> Vec<u8> {
    let mut w = Writer(vec![CODEC_VERSION]);
    match cmd.session {
        None => w.u8(0),
        Some(s) => {
            w.u8(1);
            w.u64(s.client_id);
            w.u64(s.seq);
        }
    }
    w.request(&cmd.request);
    w.0
}

/// Decodes a command written by [`encode_command`].
pub fn decode_command(bytes: &[u8]) -> Result<Command, Error> {
    let mut r = Reader::new(bytes)?;
    let session = match r.u8()? {
        0 => None,
        1 => Some(Session {
            client_id: r.u64()?,
            seq: r.u64()?,
        }),
        t => return Err(bad(format!("session tag {t}"))),
    };
    let request = r.request()?;
    r.finish()?;
    Ok(Command { session, request })
}

/// Encodes the result of applying a command (stored for retries).
pub(crate) fn encode_result(result: &Result<Response, KvError>) -> Vec<u8> {
    let mut w = Writer(vec![CODEC_VERSION]);
    match result {
        Ok(resp) => {
            w.u8(0);
            w.response(resp);
        }
        Err(e) => {
            w.u8(1);
            w.u8(e.code());
        }
    }
    w.0
}

/// Decodes a result written by [`encode_result`].
pub(crate) fn decode_result(bytes: &[u8]) -> Result<Result<Response, KvError>, Error> {
    let mut r = Reader::new(bytes)?;
    let result = match r.u8()? {
        0 => Ok(r.response(0)?),
        1 => {
            let code = r.u8()?;
            Err(KvError::from_code(code).ok_or_else(|| bad(format!("error code {code}")))?)
        }
        t => return Err(bad(format!("result tag {t}"))),
    };
    r.finish()?;
    Ok(result)
}

fn bad(msg: String) -> Error {
    Error::Decode(msg)
}

/// Appends encoded values to a buffer.
pub(crate) struct Writer(pub(crate) Vec<u8>);

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    pub(crate) fn u64(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    pub(crate) fn i64(&mut self, v: i64) {
        self.u64(((v << 1) ^ (v >> 63)) as u64);
    }

    pub(crate) fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.u64(v.len() as u64);
        self.0.extend_from_slice(v);
    }

    fn request(&mut self, req: &Request) {
        match req {
            Request::Range(r) => {
                self.u8(0);
                self.range_req(r);
            }
            Request::Put(p) => {
                self.u8(1);
                self.put_req(p);
            }
            Request::DeleteRange(d) => {
                self.u8(2);
                self.delete_req(d);
            }
            Request::Txn(t) => {
                self.u8(3);
                self.txn_req(t);
            }
            Request::Compact { revision } => {
                self.u8(4);
                self.i64(*revision);
            }
            Request::LeaseGrant { id, ttl } => {
                self.u8(5);
                self.i64(*id);
                self.i64(*ttl);
            }
            Request::LeaseRevoke { id } => {
                self.u8(6);
                self.i64(*id);
            }
        }
    }

    fn range_req(&mut self, r: &RangeRequest) {
        self.bytes(&r.key);
        self.bytes(&r.range_end);
        self.i64(r.limit);
        self.i64(r.revision);
        self.u8(r.sort_order as u8);
        self.u8(r.sort_target as u8);
        self.bool(r.keys_only);
        self.bool(r.count_only);
        self.i64(r.min_mod_revision);
        self.i64(r.max_mod_revision);
        self.i64(r.min_create_revision);
        self.i64(r.max_create_revision);
    }

    fn put_req(&mut self, p: &PutRequest) {
        self.bytes(&p.key);
        self.bytes(&p.value);
        self.i64(p.lease);
        self.bool(p.prev_kv);
        self.bool(p.ignore_value);
        self.bool(p.ignore_lease);
    }

    fn delete_req(&mut self, d: &DeleteRangeRequest) {
        self.bytes(&d.key);
        self.bytes(&d.range_end);
        self.bool(d.prev_kv);
    }

    fn txn_req(&mut self, t: &TxnRequest) {
        self.u64(t.compare.len() as u64);
        for c in &t.compare {
            self.bytes(&c.key);
            self.bytes(&c.range_end);
            self.u8(c.result as u8);
            match &c.target {
                CompareTarget::Version(v) => {
                    self.u8(0);
                    self.i64(*v);
                }
                CompareTarget::Create(v) => {
                    self.u8(1);
                    self.i64(*v);
                }
                CompareTarget::Mod(v) => {
                    self.u8(2);
                    self.i64(*v);
                }
                CompareTarget::Value(v) => {
                    self.u8(3);
                    self.bytes(v);
                }
                CompareTarget::Lease(v) => {
                    self.u8(4);
                    self.i64(*v);
                }
            }
        }
        for ops in [&t.success, &t.failure] {
            self.u64(ops.len() as u64);
            for op in ops {
                match op {
                    RequestOp::Range(r) => {
                        self.u8(0);
                        self.range_req(r);
                    }
                    RequestOp::Put(p) => {
                        self.u8(1);
                        self.put_req(p);
                    }
                    RequestOp::DeleteRange(d) => {
                        self.u8(2);
                        self.delete_req(d);
                    }
                    RequestOp::Txn(t) => {
                        self.u8(3);
                        self.txn_req(t);
                    }
                }
            }
        }
    }

    pub(crate) fn kv(&mut self, kv: &KeyValue) {
        self.bytes(&kv.key);
        self.i64(kv.create_revision);
        self.i64(kv.mod_revision);
        self.i64(kv.version);
        self.bytes(&kv.value);
        self.i64(kv.lease);
    }

    fn kvs(&mut self, kvs: &[KeyValue]) {
        self.u64(kvs.len() as u64);
        for kv in kvs {
            self.kv(kv);
        }
    }

    fn response(&mut self, resp: &Response) {
        match resp {
            Response::Range(r) => {
                self.u8(0);
                self.range_resp(r);
            }
            Response::Put(p) => {
                self.u8(1);
                self.put_resp(p);
            }
            Response::DeleteRange(d) => {
                self.u8(2);
                self.delete_resp(d);
            }
            Response::Txn(t) => {
                self.u8(3);
                self.txn_resp(t);
            }
            Response::Compact { revision } => {
                self.u8(4);
                self.i64(*revision);
            }
            Response::LeaseGrant { revision, id, ttl } => {
                self.u8(5);
                self.i64(*revision);
                self.i64(*id);
                self.i64(*ttl);
            }
            Response::LeaseRevoke { revision } => {
                self.u8(6);
                self.i64(*revision);
            }
        }
    }

    fn range_resp(&mut self, r: &RangeResponse) {
        self.i64(r.revision);
        self.kvs(&r.kvs);
        self.bool(r.more);
        self.i64(r.count);
    }

    fn put_resp(&mut self, p: &PutResponse) {
        self.i64(p.revision);
        match &p.prev_kv {
            None => self.u8(0),
            Some(kv) => {
                self.u8(1);
                self.kv(kv);
            }
        }
    }

    fn delete_resp(&mut self, d: &DeleteRangeResponse) {
        self.i64(d.revision);
        self.i64(d.deleted);
        self.kvs(&d.prev_kvs);
    }

    fn txn_resp(&mut self, t: &TxnResponse) {
        self.i64(t.revision);
        self.bool(t.succeeded);
        self.u64(t.responses.len() as u64);
        for r in &t.responses {
            match r {
                ResponseOp::Range(r) => {
                    self.u8(0);
                    self.range_resp(r);
                }
                ResponseOp::Put(p) => {
                    self.u8(1);
                    self.put_resp(p);
                }
                ResponseOp::DeleteRange(d) => {
                    self.u8(2);
                    self.delete_resp(d);
                }
                ResponseOp::Txn(t) => {
                    self.u8(3);
                    self.txn_resp(t);
                }
            }
        }
    }
}

/// Reads encoded values from a byte slice, failing on truncation.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks the version byte.
    fn new(bytes: &'a [u8]) -> Result<Self, Error> {
        let mut r = Reader { buf: bytes };
        let version = r.u8()?;
        if version != CODEC_VERSION {
            return Err(bad(format!("unknown codec version {version}")));
        }
        Ok(r)
    }

    /// A reader over raw bytes without a version byte.
    pub(crate) fn raw(bytes: &'a [u8]) -> Self {
        Reader { buf: bytes }
    }

    pub(crate) fn finish(&self) -> Result<(), Error> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(bad(format!("{} trailing bytes", self.buf.len())))
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Error> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or_else(|| bad("truncated".into()))?;
        self.buf = rest;
        Ok(b)
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Error> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return Err(bad("varint overflow".into()));
            }
            v |= part << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint too long".into()))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, Error> {
        let u = self.u64()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    pub(crate) fn bool(&mut self) -> Result<bool, Error> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(bad(format!("bool byte {b}"))),
        }
    }

    pub(crate) fn bytes(&mut self) -> Result<Vec<u8>, Error> {
        let len = self.len()?;
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head.to_vec())
    }

    /// A length or count, at most the remaining input (each item takes at least one byte).
    pub(crate) fn len(&mut self) -> Result<usize, Error> {
        let len = self.u64()?;
        if len > self.buf.len() as u64 {
            return Err(bad(format!("length {len} beyond input")));
        }
        Ok(len as usize)
    }

    fn request(&mut self) -> Result<Request, Error> {
        Ok(match self.u8()? {
            0 => Request::Range(self.range_req()?),
            1 => Request::Put(self.put_req()?),
            2 => Request::DeleteRange(self.delete_req()?),
            3 => Request::Txn(self.txn_req(0)?),
            4 => Request::Compact {
                revision: self.i64()?,
            },
            5 => Request::LeaseGrant {
                id: self.i64()?,
                ttl: self.i64()?,
            },
            6 => Request::LeaseRevoke { id: self.i64()? },
            t => return Err(bad(format!("request tag {t}"))),
        })
    }

    fn range_req(&mut self) -> Result<RangeRequest, Error> {
        Ok(RangeRequest {
            key: self.bytes()?,
            range_end: self.bytes()?,
            limit: self.i64()?,
            revision: self.i64()?,
            sort_order: match self.u8()? {
                0 => SortOrder::None,
                1 => SortOrder::Ascend,
                2 => SortOrder::Descend,
                t => return Err(bad(format!("sort order {t}"))),
            },
            sort_target: match self.u8()? {
                0 => SortTarget::Key,
                1 => SortTarget::Version,
                2 => SortTarget::Create,
                3 => SortTarget::Mod,
                4 => SortTarget::Value,
                t => return Err(bad(format!("sort target {t}"))),
            },
            keys_only: self.bool()?,
            count_only: self.bool()?,
            min_mod_revision: self.i64()?,
            max_mod_revision: self.i64()?,
            min_create_revision: self.i64()?,
            max_create_revision: self.i64()?,
        })
    }

    fn put_req(&mut self) -> Result<PutRequest, Error> {
        Ok(PutRequest {
            key: self.bytes()?,
            value: self.bytes()?,
            lease: self.i64()?,
            prev_kv: self.bool()?,
            ignore_value: self.bool()?,
            ignore_lease: self.bool()?,
        })
    }

    fn delete_req(&mut self) -> Result<DeleteRangeRequest, Error> {
        Ok(DeleteRangeRequest {
            key: self.bytes()?,
            range_end: self.bytes()?,
            prev_kv: self.bool()?,
        })
    }

    fn depth(depth: usize) -> Result<(), Error> {
        if depth > TXN_DEPTH_MAX {
            return Err(bad(format!("txn nested deeper than {TXN_DEPTH_MAX}")));
        }
        Ok(())
    }

    fn txn_req(&mut self, depth: usize) -> Result<TxnRequest, Error> {
        Self::depth(depth)?;
        let mut compare = Vec::new();
        for _ in 0..self.len()? {
            let key = self.bytes()?;
            let range_end = self.bytes()?;
            let result = match self.u8()? {
                0 => CompareResult::Equal,
                1 => CompareResult::Greater,
                2 => CompareResult::Less,
                3 => CompareResult::NotEqual,
                t => return Err(bad(format!("compare result {t}"))),
            };
            let target = match self.u8()? {
                0 => CompareTarget::Version(self.i64()?),
                1 => CompareTarget::Create(self.i64()?),
                2 => CompareTarget::Mod(self.i64()?),
                3 => CompareTarget::Value(self.bytes()?),
                4 => CompareTarget::Lease(self.i64()?),
                t => return Err(bad(format!("compare target {t}"))),
            };
            compare.push(Compare {
                key,
                range_end,
                result,
                target,
            });
        }
        let mut branches = [Vec::new(), Vec::new()];
        for ops in &mut branches {
            for _ in 0..self.len()? {
                ops.push(match self.u8()? {
                    0 => RequestOp::Range(self.range_req()?),
                    1 => RequestOp::Put(self.put_req()?),
                    2 => RequestOp::DeleteRange(self.delete_req()?),
                    3 => RequestOp::Txn(self.txn_req(depth + 1)?),
                    t => return Err(bad(format!("op tag {t}"))),
                });
            }
        }
        let [success, failure] = branches;
        Ok(TxnRequest {
            compare,
            success,
            failure,
        })
    }

    pub(crate) fn kv(&mut self) -> Result<KeyValue, Error> {
        Ok(KeyValue {
            key: self.bytes()?,
            create_revision: self.i64()?,
            mod_revision: self.i64()?,
            version: self.i64()?,
            value: self.bytes()?,
            lease: self.i64()?,
        })
    }

    fn kvs(&mut self) -> Result<Vec<KeyValue>, Error> {
        let mut kvs = Vec::new();
        for _ in 0..self.len()? {
            kvs.push(self.kv()?);
        }
        Ok(kvs)
    }

    fn response(&mut self, depth: usize) -> Result<Response, Error> {
        Ok(match self.u8()? {
            0 => Response::Range(self.range_resp()?),
            1 => Response::Put(self.put_resp()?),
            2 => Response::DeleteRange(self.delete_resp()?),
            3 => Response::Txn(self.txn_resp(depth)?),
            4 => Response::Compact {
                revision: self.i64()?,
            },
            5 => Response::LeaseGrant {
                revision: self.i64()?,
                id: self.i64()?,
                ttl: self.i64()?,
            },
            6 => Response::LeaseRevoke {
                revision: self.i64()?,
            },
            t => return Err(bad(format!("response tag {t}"))),
        })
    }

    fn range_resp(&mut self) -> Result<RangeResponse, Error> {
        Ok(RangeResponse {
            revision: self.i64()?,
            kvs: self.kvs()?,
            more: self.bool()?,
            count: self.i64()?,
        })
    }

    fn put_resp(&mut self) -> Result<PutResponse, Error> {
        let revision = self.i64()?;
        let prev_kv = match self.u8()? {
            0 => None,
            1 => Some(self.kv()?),
            t => return Err(bad(format!("option tag {t}"))),
        };
        Ok(PutResponse { revision, prev_kv })
    }

    fn delete_resp(&mut self) -> Result<DeleteRangeResponse, Error> {
        Ok(DeleteRangeResponse {
            revision: self.i64()?,
            deleted: self.i64()?,
            prev_kvs: self.kvs()?,
        })
    }

    fn txn_resp(&mut self, depth: usize) -> Result<TxnResponse, Error> {
        Self::depth(depth)?;
        let revision = self.i64()?;
        let succeeded = self.bool()?;
        let mut responses = Vec::new();
        for _ in 0..self.len()? {
            responses.push(match self.u8()? {
                0 => ResponseOp::Range(self.range_resp()?),
                1 => ResponseOp::Put(self.put_resp()?),
                2 => ResponseOp::DeleteRange(self.delete_resp()?),
                3 => ResponseOp::Txn(self.txn_resp(depth + 1)?),
                t => return Err(bad(format!("response op tag {t}"))),
            });
        }
        Ok(TxnResponse {
            revision,
            succeeded,
            responses,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Command {
        let inner = TxnRequest {
            compare: vec![Compare::new(
                "k",
                CompareResult::Less,
                CompareTarget::Value(b"v".to_vec()),
            )],
            success: vec![RequestOp::DeleteRange(DeleteRangeRequest::range("a", "z"))],
            failure: vec![RequestOp::Range(RangeRequest::prefix("p"))],
        };
        Command::with_session(
            u64::MAX,
            7,
            Request::Txn(TxnRequest {
                compare: vec![Compare::new(
                    "k",
                    CompareResult::Equal,
                    CompareTarget::Version(-3),
                )],
                success: vec![
                    RequestOp::Put(PutRequest::new("k", "v")),
                    RequestOp::Txn(inner),
                ],
                failure: vec![],
            }),
        )
    }

    #[test]
    fn command_round_trips() {
        let cmds = [
            sample(),
            Command::new(Request::Compact { revision: i64::MIN }),
            Command::new(Request::LeaseGrant {
                id: i64::MAX,
                ttl: 10,
            }),
            Command::new(Request::LeaseRevoke { id: -1 }),
        ];
        for cmd in cmds {
            assert_eq!(decode_command(&encode_command(&cmd)).ok(), Some(cmd));
        }
    }

    #[test]
    fn every_truncation_and_garbage_is_an_error() {
        let bytes = encode_command(&sample());
        for len in 0..bytes.len() {
            assert!(
                decode_command(&bytes[..len]).is_err(),
                "prefix {len} decoded"
            );
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(decode_command(&extra).is_err());
        assert!(decode_command(&[2, 0]).is_err(), "unknown version");
        assert!(decode_command(&[1, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let mut bytes = vec![CODEC_VERSION, 0, 3];
        for _ in 0..100_000 {
            bytes.extend_from_slice(&[0, 1, 3]); // no compares, one success op: a txn
        }
        assert!(decode_command(&bytes).is_err());
    }

    #[test]
    fn results_round_trip() {
        let ok: Result<Response, KvError> = Ok(Response::Txn(TxnResponse {
            revision: 5,
            succeeded: true,
            responses: vec![ResponseOp::Put(PutResponse {
                revision: 5,
                prev_kv: Some(KeyValue {
                    key: b"k".to_vec(),
                    version: 1,
                    ..Default::default()
                }),
            })],
        }));
        assert_eq!(decode_result(&encode_result(&ok)).ok(), Some(ok));
        let err: Result<Response, KvError> = Err(KvError::SessionExpired);
        assert_eq!(decode_result(&encode_result(&err)).ok(), Some(err));
    }
}
