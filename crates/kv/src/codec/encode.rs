//! Encoding half of the codec: [`Writer`].

use crate::command::{Request, Response};
use crate::types::{
    CompareTarget, DeleteRangeRequest, DeleteRangeResponse, KeyValue, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseOp, TxnRequest, TxnResponse,
};

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

    pub(super) fn request(&mut self, req: &Request) {
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
            Request::MemberPublish(m) => {
                self.u8(7);
                m.encode_into(self);
            }
            Request::MembersRemoved(ids) => {
                self.u8(8);
                self.u64(ids.len() as u64);
                for &id in ids {
                    self.u64(id);
                }
            }
            Request::MemberAdd(m) => {
                self.u8(9);
                m.encode_into(self);
            }
            Request::MemberUpdate { id, peer_urls } => {
                self.u8(10);
                self.u64(*id);
                self.u64(peer_urls.len() as u64);
                for u in peer_urls {
                    self.bytes(u.as_bytes());
                }
            }
            Request::Alarm { action, alarm } => {
                self.u8(11);
                self.u8(match action {
                    crate::alarms::AlarmAction::Activate => 0,
                    crate::alarms::AlarmAction::Deactivate => 1,
                });
                self.alarm(alarm);
            }
            Request::Auth(a) => {
                self.u8(12);
                a.encode_into(self);
            }
        }
    }

    fn alarm(&mut self, m: &crate::alarms::AlarmMember) {
        self.u64(m.member_id);
        self.u8(m.alarm.code());
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

    pub(super) fn response(&mut self, resp: &Response) {
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
            Response::Members { revision } => {
                self.u8(7);
                self.i64(*revision);
            }
            Response::Alarm { revision, changed } => {
                self.u8(8);
                self.i64(*revision);
                match changed {
                    None => self.u8(0),
                    Some(m) => {
                        self.u8(1);
                        self.alarm(m);
                    }
                }
            }
            Response::Auth { revision, token } => {
                self.u8(9);
                self.i64(*revision);
                match token {
                    None => self.u8(0),
                    Some(t) => {
                        self.u8(1);
                        self.bytes(t.as_bytes());
                    }
                }
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
