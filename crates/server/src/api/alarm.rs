//! etcd's Maintenance.Alarm (`etcdserver/v3_server.go` `Alarm`, `apply.go` `Alarm`): GET
//! lists the active alarms (of one type, or all for NONE), ACTIVATE raises one and
//! DEACTIVATE clears one, both through the log as [`kv::Request::Alarm`], so every member
//! refuses the same requests while it is active (see `kv::alarms`). `etcdctl alarm disarm`
//! lists and then clears each alarm, as etcd's client does.

use tonic::Status;

use super::Api;
use crate::pb::etcdserverpb as epb;
use crate::rpctypes::ERR_MEMBER_NOT_FOUND;

use epb::alarm_request::AlarmAction as PbAction;

/// An alarm as etcd's wire carries it.
pub(super) fn alarm_member(m: kv::AlarmMember) -> epb::AlarmMember {
    let alarm = match m.alarm {
        kv::AlarmType::NoSpace => epb::AlarmType::Nospace,
        kv::AlarmType::Corrupt => epb::AlarmType::Corrupt,
    };
    epb::AlarmMember {
        member_id: m.member_id,
        alarm: alarm as i32,
    }
}

/// The alarm type of a request: `None` for NONE (every type, for GET) and for values etcd
/// does not know (which etcd would store but never act on: here nothing is stored).
fn alarm_type(code: i32) -> Option<kv::AlarmType> {
    u8::try_from(code).ok().and_then(kv::AlarmType::from_code)
}

/// etcd's Alarm answers carry no header at all (its maintenance server fills every other
/// answer's; `etcdctl alarm list -w json` shows none), and clients read none.
const ALARM_HEADER: Option<epb::ResponseHeader> = None;

impl Api {
    /// `stamp`: the client's, checked at apply (see [`super::auth`]).
    pub(super) async fn alarm_impl(
        &self,
        r: epb::AlarmRequest,
        stamp: Option<kv::AuthStamp>,
    ) -> Result<epb::AlarmResponse, Status> {
        let kind = alarm_type(r.alarm);
        let action = match PbAction::try_from(r.action) {
            Ok(PbAction::Get) => {
                // etcd reads the alarms through the log: a linearizable read gives the same
                // answer without an entry.
                self.linearizable_read().await?;
                let alarms = self
                    .inner
                    .node
                    .kv
                    .alarms()
                    .into_iter()
                    .filter(|m| kind.is_none_or(|k| m.alarm == k))
                    .map(alarm_member)
                    .collect();
                return Ok(epb::AlarmResponse {
                    header: ALARM_HEADER,
                    alarms,
                });
            }
            Ok(PbAction::Activate) => kv::AlarmAction::Activate,
            Ok(PbAction::Deactivate) => kv::AlarmAction::Deactivate,
            // etcd answers an unknown action with nothing.
            Err(_) => return Ok(self.no_alarm()),
        };
        let Some(kind) = kind else {
            return Ok(self.no_alarm());
        };
        // Only members of the configuration (and 0, the cluster itself, as etcd's corruption
        // checker raises it) hold alarms: the table stays bounded by the configuration.
        if action == kv::AlarmAction::Activate && r.member_id != 0 {
            let membership = self.inner.node.membership();
            if !membership
                .members()
                .iter()
                .any(|id| id.get() == r.member_id)
            {
                return Err(Status::not_found(ERR_MEMBER_NOT_FOUND));
            }
        }
        let alarm = kv::AlarmMember {
            member_id: r.member_id,
            alarm: kind,
        };
        self.propose_alarm(action, alarm, stamp).await
    }

    /// Raises or clears `alarm` through the log, as the client `stamp` names (`None`: this
    /// member raises it itself); answers with the alarm changed, if any.
    pub(super) async fn propose_alarm(
        &self,
        action: kv::AlarmAction,
        alarm: kv::AlarmMember,
        stamp: Option<kv::AuthStamp>,
    ) -> Result<epb::AlarmResponse, Status> {
        let request = kv::Request::Alarm { action, alarm };
        match self.write_kv_as(request, stamp).await? {
            // Every member logs the change when it applies it (see `kv::alarms`).
            kv::Response::Alarm {
                revision: _,
                changed,
            } => Ok(epb::AlarmResponse {
                header: ALARM_HEADER,
                alarms: changed.into_iter().map(alarm_member).collect(),
            }),
            other => Err(super::unexpected(&other)),
        }
    }

    fn no_alarm(&self) -> epb::AlarmResponse {
        epb::AlarmResponse {
            header: ALARM_HEADER,
            alarms: Vec::new(),
        }
    }

    /// The active alarms as etcd lists them in Status `errors` (their text format).
    pub(super) fn alarm_errors(&self) -> Vec<String> {
        self.inner
            .node
            .kv
            .alarms()
            .into_iter()
            .map(|m| m.to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_types_map_to_etcds_enum() {
        assert_eq!(alarm_type(0), None);
        assert_eq!(alarm_type(1), Some(kv::AlarmType::NoSpace));
        assert_eq!(alarm_type(2), Some(kv::AlarmType::Corrupt));
        assert_eq!(alarm_type(3), None);
        assert_eq!(alarm_type(-1), None);
        let m = alarm_member(kv::AlarmMember {
            member_id: 5,
            alarm: kv::AlarmType::Corrupt,
        });
        assert_eq!((m.member_id, m.alarm), (5, epb::AlarmType::Corrupt as i32));
    }
}
