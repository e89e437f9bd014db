//! Compact, versioned binary encoding of [`Command`] (for the Raft log) and of apply results
//! (for the session table).
//!
//! Layout: one version byte ([`CODEC_VERSION`]), then the body. Integers are LEB128 varints
//! (`i64` zigzag-encoded), byte strings are a varint length followed by the bytes, enums a tag
//! byte. Decoding checks every length against the remaining input (no allocation larger than
//! the input), bounds nesting by [`crate::TXN_DEPTH_MAX`], rejects trailing bytes, and returns
//! [`Error::Decode`] on anything malformed: it never panics.

use crate::command::{Command, Response, Session};
use crate::error::{Error, KvError};

mod decode;
mod encode;

pub(crate) use decode::{read_varint, unzigzag, Reader};
pub(crate) use encode::Writer;

/// Version byte of the encoding; bump it (and keep decoding older ones) on any change.
pub const CODEC_VERSION: u8 = 1;

/// Encodes a command for the Raft log.
///
/// The first byte after the version is the session tag (0: none, 1: without
/// `opened_after`, 2: with it), plus `STAMPED` when an auth stamp follows the session: a
/// command without one encodes exactly as before stamps existed.
pub fn encode_command(cmd: &Command) -> Vec<u8> {
    let mut w = Writer(vec![CODEC_VERSION]);
    let stamped = if cmd.auth.is_some() { STAMPED } else { 0 };
    match cmd.session {
        None => w.u8(stamped),
        Some(Session {
            client_id,
            seq,
            opened_after: None,
        }) => {
            w.u8(1 | stamped);
            w.u64(client_id);
            w.u64(seq);
        }
        Some(Session {
            client_id,
            seq,
            opened_after: Some(after),
        }) => {
            w.u8(2 | stamped);
            w.u64(client_id);
            w.u64(seq);
            w.u64(after);
        }
    }
    if let Some(stamp) = &cmd.auth {
        w.bytes(stamp.user.as_bytes());
        w.u64(stamp.revision);
    }
    w.request(&cmd.request);
    w.0
}

/// Added to the session tag of a command carrying an [`crate::auth::AuthStamp`].
const STAMPED: u8 = 8;

/// Decodes a command written by [`encode_command`].
pub fn decode_command(bytes: &[u8]) -> Result<Command, Error> {
    let mut r = Reader::new(bytes)?;
    let tag = r.u8()?;
    let session = match tag & !STAMPED {
        0 => None,
        1 => Some(Session {
            client_id: r.u64()?,
            seq: r.u64()?,
            opened_after: None,
        }),
        2 => Some(Session {
            client_id: r.u64()?,
            seq: r.u64()?,
            opened_after: Some(r.u64()?),
        }),
        _ => return Err(bad(format!("session tag {tag}"))),
    };
    let auth = if tag & STAMPED != 0 {
        let user = String::from_utf8(r.bytes()?)
            .map_err(|_| bad("auth stamp: user is not UTF-8".to_string()))?;
        Some(crate::auth::AuthStamp {
            user,
            revision: r.u64()?,
        })
    } else {
        None
    };
    let request = r.request()?;
    r.finish()?;
    Ok(Command {
        session,
        request,
        auth,
    })
}

/// Encodes the result of applying a command (stored for retries, shipped to a follower that
/// forwarded the command).
pub fn encode_result(result: &Result<Response, KvError>) -> Vec<u8> {
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
pub fn decode_result(bytes: &[u8]) -> Result<Result<Response, KvError>, Error> {
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

pub(crate) fn bad(msg: String) -> Error {
    Error::Decode(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthRequest;
    use crate::command::Request;
    use crate::types::*;

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
            Command::new(Request::MembersRemoved(vec![1, u64::MAX])),
            Command::new(Request::MembersRemoved(vec![])),
            Command::new(Request::Alarm {
                action: crate::alarms::AlarmAction::Activate,
                alarm: crate::alarms::AlarmMember {
                    member_id: u64::MAX,
                    alarm: crate::alarms::AlarmType::NoSpace,
                },
            }),
            Command {
                session: Some(Session::opened(5, 1, 2)),
                request: Request::Alarm {
                    action: crate::alarms::AlarmAction::Deactivate,
                    alarm: crate::alarms::AlarmMember {
                        member_id: 0,
                        alarm: crate::alarms::AlarmType::Corrupt,
                    },
                },
                auth: None,
            },
            Command::new(Request::MemberAdd(crate::members::Member {
                id: 7,
                name: String::new(),
                peer_urls: vec!["http://10.0.0.7:2380".into()],
                client_urls: vec![],
            })),
            Command::new(Request::MemberUpdate {
                id: 3,
                peer_urls: vec!["http://b:2380".into(), "http://c:2380".into()],
            }),
            Command {
                session: Some(Session::opened(4, 1, 9)),
                request: Request::MemberPublish(crate::members::Member {
                    id: u64::MAX,
                    name: "n\u{e9}".into(),
                    peer_urls: vec!["http://a:2380".into(), String::new()],
                    client_urls: vec![],
                }),
                auth: None,
            },
            Command {
                session: Some(Session::opened(3, 1, u64::MAX - 1)),
                request: Request::Put(PutRequest::new("k", "v")),
                auth: Some(crate::auth::AuthStamp {
                    user: "\u{e9}l\u{e8}ve".into(),
                    revision: u64::MAX,
                }),
            },
            Command {
                session: None,
                request: Request::Range(RangeRequest::prefix("p")),
                auth: Some(crate::auth::AuthStamp::default()),
            },
        ];
        let auth = [
            AuthRequest::Enable,
            AuthRequest::Disable,
            AuthRequest::Authenticate {
                name: "u".into(),
                token_prefix: "abcdefghijklmnop".into(),
                checked_revision: 7,
            },
            AuthRequest::UserAdd {
                name: "u".into(),
                password_hash: None,
            },
            AuthRequest::UserAdd {
                name: "u".into(),
                password_hash: Some("$2b$10$h".into()),
            },
            AuthRequest::UserDelete { name: "u".into() },
            AuthRequest::UserChangePassword {
                name: "u".into(),
                password_hash: "$2b$10$i".into(),
            },
            AuthRequest::UserGrantRole {
                user: "u".into(),
                role: "r".into(),
            },
            AuthRequest::UserRevokeRole {
                name: "u".into(),
                role: "r".into(),
            },
            AuthRequest::RoleAdd { name: "r".into() },
            AuthRequest::RoleDelete { role: "r".into() },
            AuthRequest::RoleGrantPermission {
                name: "r".into(),
                perm: crate::auth::Permission {
                    perm_type: crate::auth::PermType::ReadWrite,
                    key: b"/a/".to_vec(),
                    range_end: vec![0],
                },
            },
            AuthRequest::RoleRevokePermission {
                role: "r".into(),
                key: b"/a/".to_vec(),
                range_end: vec![],
            },
        ];
        let cmds = cmds
            .into_iter()
            .chain(auth.into_iter().map(|a| Command::new(Request::Auth(a))));
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
        for other in [
            Ok(Response::Members { revision: 7 }),
            Ok(Response::Alarm {
                revision: 3,
                changed: None,
            }),
            Ok(Response::Alarm {
                revision: 3,
                changed: Some(crate::alarms::AlarmMember {
                    member_id: 9,
                    alarm: crate::alarms::AlarmType::Corrupt,
                }),
            }),
            Err(KvError::NoSpace),
            Err(KvError::Corrupt),
            Err(KvError::TooManyAlarms),
            Err(KvError::PermissionDenied),
            Err(KvError::AuthStateFull),
            Ok(Response::Auth {
                revision: 3,
                token: Some("abcdefghijklmnop.12".into()),
            }),
            Ok(Response::Auth {
                revision: 3,
                token: None,
            }),
            Err(KvError::SessionExpired),
            Err(KvError::BadMember),
        ] {
            assert_eq!(decode_result(&encode_result(&other)).ok(), Some(other));
        }
    }
}
