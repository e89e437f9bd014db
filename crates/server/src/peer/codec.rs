//! The wire codec for Raft messages: [`raft::Message`] <-> protobuf (`skiff.raft.v1`). The core
//! has no wire types; peers are not trusted to send well-formed messages, so decoding validates
//! what the core's types promise (non-zero node ids, a body, contiguous entries) and reports a
//! [`CodecError`] instead of panicking.

use std::collections::BTreeSet;

use raft::{
    Entry, EntryId, EntryKind, Index, Membership, Message, MessageBody, NodeId, ReadCtx,
    RejectHint, SnapshotMeta, Term,
};

use crate::pb::skiff::raft::v1 as pb;

/// A peer message that does not hold together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed raft message: {0}")]
pub struct CodecError(pub String);

fn bad<T>(what: impl Into<String>) -> Result<T, CodecError> {
    Err(CodecError(what.into()))
}

fn node_id(raw: u64, field: &str) -> Result<NodeId, CodecError> {
    NodeId::new(raw).ok_or_else(|| CodecError(format!("{field} is 0, not a node id")))
}

/// Encodes one message for the wire.
pub fn encode_message(m: &Message) -> pb::Message {
    use pb::message::Body;
    let body = match &m.body {
        MessageBody::PreVote {
            last_log_index,
            last_log_term,
        } => Body::PreVote(pb::PreVote {
            last_log_index: last_log_index.0,
            last_log_term: last_log_term.0,
        }),
        MessageBody::PreVoteResp { reject } => Body::PreVoteResp(pb::VoteResp { reject: *reject }),
        MessageBody::Vote {
            last_log_index,
            last_log_term,
            leader_transfer,
        } => Body::Vote(pb::Vote {
            last_log_index: last_log_index.0,
            last_log_term: last_log_term.0,
            leader_transfer: *leader_transfer,
        }),
        MessageBody::VoteResp { reject } => Body::VoteResp(pb::VoteResp { reject: *reject }),
        MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        } => Body::Append(pb::Append {
            prev_index: prev_index.0,
            prev_term: prev_term.0,
            entries: entries.iter().map(encode_entry).collect(),
            commit: commit.0,
        }),
        MessageBody::AppendResp { index, reject } => Body::AppendResp(pb::AppendResp {
            index: index.0,
            reject: reject.map(|h| pb::RejectHint {
                conflict_term: h.conflict_term.map(|t| t.0),
                conflict_index: h.conflict_index.0,
            }),
        }),
        MessageBody::Heartbeat { commit, read_round } => Body::Heartbeat(pb::Heartbeat {
            commit: commit.0,
            read_round: *read_round,
        }),
        MessageBody::HeartbeatResp { read_round } => Body::HeartbeatResp(pb::HeartbeatResp {
            read_round: *read_round,
        }),
        MessageBody::TimeoutNow => Body::TimeoutNow(pb::TimeoutNow {}),
        MessageBody::ReadIndex { ctx } => Body::ReadIndex(pb::ReadIndex { ctx: ctx.0 }),
        MessageBody::InstallSnapshot {
            meta,
            offset,
            len,
            data,
        } => Body::InstallSnapshot(pb::InstallSnapshot {
            meta: Some(encode_snapshot_meta(meta)),
            offset: *offset,
            len: *len,
            data: data.clone(),
        }),
        MessageBody::SnapshotResp {
            last,
            offset,
            reject,
        } => Body::SnapshotResp(pb::SnapshotResp {
            last: Some(encode_entry_id(*last)),
            offset: *offset,
            reject: *reject,
        }),
        MessageBody::ReadIndexResp { ctx, index } => Body::ReadIndexResp(pb::ReadIndexResp {
            ctx: ctx.0,
            index: index.map(|i| i.0),
        }),
    };
    pb::Message {
        from: m.from.get(),
        to: m.to.get(),
        term: m.term.0,
        body: Some(body),
    }
}

/// Decodes and validates one message from the wire.
pub fn decode_message(m: pb::Message) -> Result<Message, CodecError> {
    use pb::message::Body;
    let from = node_id(m.from, "from")?;
    let to = node_id(m.to, "to")?;
    let Some(body) = m.body else {
        return bad("no body");
    };
    let body = match body {
        Body::PreVote(b) => MessageBody::PreVote {
            last_log_index: Index(b.last_log_index),
            last_log_term: Term(b.last_log_term),
        },
        Body::PreVoteResp(b) => MessageBody::PreVoteResp { reject: b.reject },
        Body::Vote(b) => MessageBody::Vote {
            last_log_index: Index(b.last_log_index),
            last_log_term: Term(b.last_log_term),
            leader_transfer: b.leader_transfer,
        },
        Body::VoteResp(b) => MessageBody::VoteResp { reject: b.reject },
        Body::Append(b) => {
            let entries = b
                .entries
                .into_iter()
                .map(decode_entry)
                .collect::<Result<Vec<_>, _>>()?;
            let mut prev = Index(b.prev_index);
            for e in &entries {
                if Some(e.index.0) != prev.0.checked_add(1) {
                    return bad(format!("entry {} does not follow {}", e.index, prev));
                }
                prev = e.index;
            }
            MessageBody::Append {
                prev_index: Index(b.prev_index),
                prev_term: Term(b.prev_term),
                entries,
                commit: Index(b.commit),
            }
        }
        Body::AppendResp(b) => MessageBody::AppendResp {
            index: Index(b.index),
            reject: b.reject.map(|h| RejectHint {
                conflict_term: h.conflict_term.map(Term),
                conflict_index: Index(h.conflict_index),
            }),
        },
        Body::Heartbeat(b) => MessageBody::Heartbeat {
            commit: Index(b.commit),
            read_round: b.read_round,
        },
        Body::HeartbeatResp(b) => MessageBody::HeartbeatResp {
            read_round: b.read_round,
        },
        Body::TimeoutNow(_) => MessageBody::TimeoutNow,
        Body::ReadIndex(b) => MessageBody::ReadIndex {
            ctx: ReadCtx(b.ctx),
        },
        Body::InstallSnapshot(b) => {
            let Some(meta) = b.meta else {
                return bad("install snapshot without meta");
            };
            if b.len != b.data.len() as u64 && !b.data.is_empty() {
                return bad(format!(
                    "snapshot chunk says {} bytes but carries {}",
                    b.len,
                    b.data.len()
                ));
            }
            MessageBody::InstallSnapshot {
                meta: decode_snapshot_meta(meta)?,
                offset: b.offset,
                len: b.len,
                data: b.data,
            }
        }
        Body::SnapshotResp(b) => {
            let Some(last) = b.last else {
                return bad("snapshot response without last");
            };
            MessageBody::SnapshotResp {
                last: decode_entry_id(last),
                offset: b.offset,
                reject: b.reject,
            }
        }
        Body::ReadIndexResp(b) => MessageBody::ReadIndexResp {
            ctx: ReadCtx(b.ctx),
            index: b.index.map(Index),
        },
    };
    Ok(Message {
        from,
        to,
        term: Term(m.term),
        body,
    })
}

fn encode_entry(e: &Entry) -> pb::Entry {
    use pb::entry::Kind;
    let kind = match &e.kind {
        EntryKind::Normal => Kind::Normal(e.data.clone()),
        EntryKind::Noop => Kind::Noop(pb::Noop {}),
        EntryKind::Membership(m) => Kind::Membership(encode_membership(m)),
    };
    let context = match &e.kind {
        EntryKind::Membership(_) => e.data.clone(),
        _ => Vec::new(),
    };
    pb::Entry {
        term: e.term.0,
        index: e.index.0,
        kind: Some(kind),
        context,
    }
}

fn decode_entry(e: pb::Entry) -> Result<Entry, CodecError> {
    use pb::entry::Kind;
    if e.index == 0 {
        return bad("entry index 0");
    }
    let (kind, data) = match e.kind {
        Some(Kind::Normal(data)) => (EntryKind::Normal, data),
        Some(Kind::Noop(_)) => (EntryKind::Noop, Vec::new()),
        Some(Kind::Membership(m)) => (EntryKind::Membership(decode_membership(m)?), e.context),
        None => return bad(format!("entry {} has no kind", e.index)),
    };
    Ok(Entry {
        term: Term(e.term),
        index: Index(e.index),
        kind,
        data,
    })
}

fn encode_membership(m: &Membership) -> pb::Membership {
    let ids = |s: &BTreeSet<NodeId>| s.iter().map(|n| n.get()).collect();
    pb::Membership {
        voters: ids(&m.voters),
        voters_outgoing: ids(&m.voters_outgoing),
        learners: ids(&m.learners),
    }
}

fn decode_membership(m: pb::Membership) -> Result<Membership, CodecError> {
    let ids = |v: Vec<u64>| -> Result<BTreeSet<NodeId>, CodecError> {
        v.into_iter().map(|id| node_id(id, "member id")).collect()
    };
    Ok(Membership {
        voters: ids(m.voters)?,
        voters_outgoing: ids(m.voters_outgoing)?,
        learners: ids(m.learners)?,
    })
}

fn encode_entry_id(id: EntryId) -> pb::EntryId {
    pb::EntryId {
        term: id.term.0,
        index: id.index.0,
    }
}

fn decode_entry_id(id: pb::EntryId) -> EntryId {
    EntryId {
        term: Term(id.term),
        index: Index(id.index),
    }
}

fn encode_snapshot_meta(m: &SnapshotMeta) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        last: Some(encode_entry_id(m.last)),
        membership: Some(encode_membership(&m.membership)),
        size_bytes: m.size_bytes,
    }
}

fn decode_snapshot_meta(m: pb::SnapshotMeta) -> Result<SnapshotMeta, CodecError> {
    let (Some(last), Some(membership)) = (m.last, m.membership) else {
        return bad("snapshot meta without last entry or membership");
    };
    Ok(SnapshotMeta {
        last: decode_entry_id(last),
        membership: decode_membership(membership)?,
        size_bytes: m.size_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> NodeId {
        NodeId::new(n).expect("non-zero")
    }

    fn msg(body: MessageBody) -> Message {
        Message {
            from: id(1),
            to: id(2),
            term: Term(7),
            body,
        }
    }

    #[test]
    fn every_body_round_trips() {
        let meta = SnapshotMeta {
            last: EntryId {
                term: Term(3),
                index: Index(9),
            },
            membership: Membership::new([id(1), id(2), id(3)]),
            size_bytes: 5,
        };
        let entries = vec![
            Entry {
                term: Term(7),
                index: Index(5),
                kind: EntryKind::Noop,
                data: Vec::new(),
            },
            Entry {
                term: Term(7),
                index: Index(6),
                kind: EntryKind::Normal,
                data: b"put".to_vec(),
            },
            Entry {
                term: Term(7),
                index: Index(7),
                kind: EntryKind::Membership(Membership::new([id(1), id(4)])),
                data: b"a new member's description".to_vec(),
            },
        ];
        let bodies = vec![
            MessageBody::PreVote {
                last_log_index: Index(4),
                last_log_term: Term(6),
            },
            MessageBody::PreVoteResp { reject: true },
            MessageBody::Vote {
                last_log_index: Index(4),
                last_log_term: Term(6),
                leader_transfer: true,
            },
            MessageBody::VoteResp { reject: false },
            MessageBody::Append {
                prev_index: Index(4),
                prev_term: Term(6),
                entries,
                commit: Index(3),
            },
            MessageBody::AppendResp {
                index: Index(4),
                reject: Some(RejectHint {
                    conflict_term: None,
                    conflict_index: Index(2),
                }),
            },
            MessageBody::AppendResp {
                index: Index(4),
                reject: Some(RejectHint {
                    conflict_term: Some(Term(0)),
                    conflict_index: Index(2),
                }),
            },
            MessageBody::AppendResp {
                index: Index(4),
                reject: None,
            },
            MessageBody::Heartbeat {
                commit: Index(3),
                read_round: 9,
            },
            MessageBody::HeartbeatResp { read_round: 9 },
            MessageBody::TimeoutNow,
            MessageBody::ReadIndex { ctx: ReadCtx(11) },
            MessageBody::InstallSnapshot {
                meta: meta.clone(),
                offset: 0,
                len: 5,
                data: b"hello".to_vec(),
            },
            MessageBody::SnapshotResp {
                last: meta.last,
                offset: 5,
                reject: false,
            },
            MessageBody::ReadIndexResp {
                ctx: ReadCtx(11),
                index: Some(Index(0)),
            },
            MessageBody::ReadIndexResp {
                ctx: ReadCtx(11),
                index: None,
            },
        ];
        for body in bodies {
            let m = msg(body);
            assert_eq!(decode_message(encode_message(&m)), Ok(m));
        }
    }

    #[test]
    fn malformed_messages_are_errors() {
        let good = encode_message(&msg(MessageBody::TimeoutNow));
        let mut zero_from = good.clone();
        zero_from.from = 0;
        assert!(decode_message(zero_from).is_err());
        let mut no_body = good;
        no_body.body = None;
        assert!(decode_message(no_body).is_err());
        let gap = pb::Message {
            from: 1,
            to: 2,
            term: 1,
            body: Some(pb::message::Body::Append(pb::Append {
                prev_index: 1,
                prev_term: 1,
                entries: vec![pb::Entry {
                    term: 1,
                    index: 3,
                    kind: Some(pb::entry::Kind::Noop(pb::Noop {})),
                    context: Vec::new(),
                }],
                commit: 0,
            })),
        };
        assert!(decode_message(gap).is_err());
    }
}
