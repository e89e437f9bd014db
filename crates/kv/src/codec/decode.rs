//! Decoding half of the codec: [`Reader`], which never panics on any input.

use crate::command::{Request, Response};
use crate::error::Error;
use crate::types::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, KeyValue,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseOp, SortOrder,
    SortTarget, TxnRequest, TxnResponse,
};
use crate::TXN_DEPTH_MAX;

use super::{bad, CODEC_VERSION};

/// Decodes a LEB128 varint from bytes handed out by `next` (a slice here, a stream in
/// [`crate::snapshot`]); overlong or overflowing encodings are errors.
pub(crate) fn read_varint(mut next: impl FnMut() -> Result<u8, Error>) -> Result<u64, Error> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = next()?;
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

/// The signed value of a zigzag-encoded varint.
pub(crate) fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

/// Reads encoded values from a byte slice, failing on truncation.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks the version byte.
    pub(super) fn new(bytes: &'a [u8]) -> Result<Self, Error> {
        let mut r = Reader { buf: bytes };
        let version = r.u8()?;
        if version != CODEC_VERSION {
            return Err(bad(format!("unknown codec version {version}")));
        }
        Ok(r)
    }

    /// A reader of bytes without a version byte (a part of a larger encoding).
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
        read_varint(|| self.u8())
    }

    pub(crate) fn i64(&mut self) -> Result<i64, Error> {
        Ok(unzigzag(self.u64()?))
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

    pub(super) fn request(&mut self) -> Result<Request, Error> {
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
            7 => Request::MemberPublish(crate::members::Member::decode_from(self)?),
            8 => {
                let mut ids = Vec::new();
                for _ in 0..self.len()? {
                    ids.push(self.u64()?);
                }
                Request::MembersRemoved(ids)
            }
            9 => Request::MemberAdd(crate::members::Member::decode_from(self)?),
            10 => {
                let id = self.u64()?;
                let mut peer_urls = Vec::new();
                for _ in 0..self.len()? {
                    let url = String::from_utf8(self.bytes()?)
                        .map_err(|_| bad("member update: URL is not UTF-8".to_string()))?;
                    peer_urls.push(url);
                }
                Request::MemberUpdate { id, peer_urls }
            }
            11 => {
                let action = match self.u8()? {
                    0 => crate::alarms::AlarmAction::Activate,
                    1 => crate::alarms::AlarmAction::Deactivate,
                    t => return Err(bad(format!("alarm action {t}"))),
                };
                Request::Alarm {
                    action,
                    alarm: self.alarm()?,
                }
            }
            12 => Request::Auth(crate::auth::AuthRequest::decode_from(self)?),
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

    pub(super) fn response(&mut self, depth: usize) -> Result<Response, Error> {
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
            7 => Response::Members {
                revision: self.i64()?,
            },
            8 => Response::Alarm {
                revision: self.i64()?,
                changed: match self.u8()? {
                    0 => None,
                    1 => Some(self.alarm()?),
                    t => return Err(bad(format!("alarm answer tag {t}"))),
                },
            },
            9 => Response::Auth {
                revision: self.i64()?,
                token: match self.u8()? {
                    0 => None,
                    1 => Some(
                        String::from_utf8(self.bytes()?)
                            .map_err(|_| bad("auth answer: token is not UTF-8".to_string()))?,
                    ),
                    t => return Err(bad(format!("auth answer tag {t}"))),
                },
            },
            t => return Err(bad(format!("response tag {t}"))),
        })
    }

    pub(crate) fn alarm(&mut self) -> Result<crate::alarms::AlarmMember, Error> {
        let member_id = self.u64()?;
        let code = self.u8()?;
        let alarm = crate::alarms::AlarmType::from_code(code)
            .ok_or_else(|| bad(format!("alarm type {code}")))?;
        Ok(crate::alarms::AlarmMember { member_id, alarm })
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
