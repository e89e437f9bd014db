//! etcd's Maintenance service (`etcdserverpb.Maintenance`): Status and Alarm so far.

use tonic::{Request, Response, Status};

use super::{Api, API_VERSION};
use crate::pb::etcdserverpb as epb;
use crate::rpctypes::ERR_NO_LEADER;

#[tonic::async_trait]
impl epb::maintenance_server::Maintenance for Api {
    async fn alarm(
        &self,
        _request: Request<epb::AlarmRequest>,
    ) -> Result<Response<epb::AlarmResponse>, Status> {
        // No alarms are raised yet (no space quota, no corruption checker).
        Ok(Response::new(epb::AlarmResponse {
            header: Some(self.header()),
            alarms: Vec::new(),
        }))
    }

    async fn status(
        &self,
        _request: Request<epb::StatusRequest>,
    ) -> Result<Response<epb::StatusResponse>, Status> {
        let st = self.inner.node.status();
        let revision = self.read_kv(|kv| kv.revision()).await?;
        let db_size = std::fs::metadata(&self.inner.kv_path)
            .map(|m| i64::try_from(m.len()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let mut errors = Vec::new();
        if st.leader.is_none() {
            errors.push(ERR_NO_LEADER.to_string());
        }
        Ok(Response::new(epb::StatusResponse {
            header: Some(epb::ResponseHeader {
                revision,
                ..self.header()
            }),
            version: API_VERSION.to_string(),
            db_size,
            leader: st.leader.map_or(0, |l| l.get()),
            raft_index: st.commit,
            raft_term: st.term,
            raft_applied_index: st.applied,
            errors,
            db_size_in_use: db_size,
            is_learner: false,
        }))
    }
}
