//! etcd's Maintenance.HashKV and Maintenance.Hash, answered from this member's state machine
//! without the log (as etcd's): HashKV hashes the key-value history up to a revision
//! (`kv::Store::hash_kv`, etcd's `HashByRev`), Hash the whole replicated state
//! (`kv::Store::hash`). Members at the same revision and compacted revision answer HashKV
//! with the same hash; the corruption check compares them.

use tonic::Status;

use super::Api;
use crate::pb::etcdserverpb as epb;

impl Api {
    pub(super) async fn hash_kv_impl(
        &self,
        r: epb::HashKvRequest,
    ) -> Result<epb::HashKvResponse, Status> {
        let revision = r.revision;
        let h = self.read_kv(move |kv| kv.hash_kv(revision)).await?;
        Ok(epb::HashKvResponse {
            header: Some(epb::ResponseHeader {
                revision: h.revision,
                ..self.header()
            }),
            hash: h.hash,
            compact_revision: h.compact_revision,
        })
    }

    pub(super) async fn hash_impl(&self) -> Result<epb::HashResponse, Status> {
        let (revision, hash) = self.read_kv(|kv| kv.hash()).await?;
        Ok(epb::HashResponse {
            header: Some(epb::ResponseHeader {
                revision,
                ..self.header()
            }),
            hash,
        })
    }
}
