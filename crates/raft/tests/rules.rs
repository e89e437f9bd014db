//! One test per rule of the Raft paper's Figure 2 (and the rules around it), each naming the
//! section it comes from. Single nodes are fed hand-made messages; clusters use the harness.

mod harness;

use harness::{entries_with_terms, entry, nid, Cluster, Disk};
use skiff_raft::{
    Config, EntryId, EntryKind, HardState, Index, InitialState, Membership, Message, MessageBody,
    NodeId, ProposeError, RawNode, ReadCtx, Ready, Role, StartError, StepError, Term,
};

fn config(id: u64) -> Config {
    let mut c = Config::new(nid(id));
    c.pre_vote = false;
    c.check_quorum = false;
    c.seed = 7;
    c
}

/// Node `id` of a 3-voter cluster starting from this log and term.
fn node_with(id: u64, terms: &[u64], term: u64, commit: u64) -> RawNode {
    let state = InitialState {
        hard_state: HardState {
            term: Term(term),
            vote: None,
            commit: Index(commit),
        },
        membership: Membership::new([nid(1), nid(2), nid(3)]),
        snapshot: EntryId::default(),
        entries: entries_with_terms(terms),
        applied: Index(0),
    };
    RawNode::new(config(id), state).expect("valid node")
}

fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message {
        from: nid(from),
        to: nid(to),
        term: Term(term),
        body,
    }
}

fn vote_req(from: u64, to: u64, term: u64, last_index: u64, last_term: u64) -> Message {
    msg(
        from,
        to,
        term,
        MessageBody::Vote {
            last_log_index: Index(last_index),
            last_log_term: Term(last_term),
            leader_transfer: false,
        },
    )
}

fn append(
    from: u64,
    to: u64,
    term: u64,
    prev: (u64, u64),
    ents: &[(u64, u64)],
    commit: u64,
) -> Message {
    msg(
        from,
        to,
        term,
        MessageBody::Append {
            prev_index: Index(prev.0),
            prev_term: Term(prev.1),
            entries: ents.iter().map(|&(i, t)| entry(i, t, "")).collect(),
            commit: Index(commit),
        },
    )
}

/// Takes one batch, treating it as persisted and applied.
fn drain(node: &mut RawNode) -> Ready {
    assert!(node.has_ready());
    let rd = node.ready();
    node.advance(rd.number);
    node.check_invariants();
    rd
}

fn all_messages(rd: &Ready) -> Vec<Message> {
    rd.messages
        .iter()
        .chain(&rd.persisted_messages)
        .cloned()
        .collect()
}

fn vote_granted(rd: &Ready, to: u64) -> Option<bool> {
    all_messages(rd).iter().find_map(|m| match m.body {
        MessageBody::VoteResp { reject } if m.to == nid(to) => Some(!reject),
        _ => None,
    })
}

fn append_resp(rd: &Ready) -> (Index, Option<skiff_raft::RejectHint>) {
    all_messages(rd)
        .iter()
        .find_map(|m| match m.body {
            MessageBody::AppendResp { index, reject } => Some((index, reject)),
            _ => None,
        })
        .expect("an append response")
}

// ---- RequestVote receiver (Figure 2) ----

#[test]
fn vote_rule1_reject_stale_term() {
    // §5.1: "Reply false if term < currentTerm", with our term, so the candidate catches up
    // (Swarm seed 2159289: unanswered, a candidate that needed our vote stayed one term behind
    // us forever).
    let mut n = node_with(1, &[1, 1], 3, 0);
    n.step(vote_req(2, 1, 2, 5, 2)).unwrap();
    let rd = n.ready();
    let answers = all_messages(&rd);
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].to, nid(2));
    assert_eq!(answers[0].term, Term(3), "the answer carries our term");
    assert_eq!(answers[0].body, MessageBody::VoteResp { reject: true });
    assert_eq!(n.status().term, Term(3));
    assert_eq!(n.status().vote, None);
}

#[test]
fn vote_rule2_one_vote_per_term() {
    // §5.2: each server votes for at most one candidate in a given term, first come first served.
    let mut n = node_with(1, &[1], 1, 0);
    n.step(vote_req(2, 1, 2, 1, 1)).unwrap();
    n.step(vote_req(3, 1, 2, 1, 1)).unwrap();
    let rd = drain(&mut n);
    assert_eq!(vote_granted(&rd, 2), Some(true));
    assert_eq!(vote_granted(&rd, 3), Some(false));
    // The same candidate asking again (a retry) is granted again.
    n.step(vote_req(2, 1, 2, 1, 1)).unwrap();
    assert_eq!(vote_granted(&drain(&mut n), 2), Some(true));
}

#[test]
fn vote_rule2_election_restriction() {
    // §5.4.1: grant only if the candidate's log is at least as up to date: compare the last
    // terms, then the lengths.
    let cases = [
        // (candidate last index, last term, granted)
        (3, 2, true),  // same last entry
        (4, 2, true),  // longer, same term
        (2, 2, false), // shorter, same term
        (1, 3, true),  // later term wins even when shorter
        (9, 1, false), // earlier term loses even when longer
    ];
    for (i, (idx, t, granted)) in cases.into_iter().enumerate() {
        let mut n = node_with(1, &[1, 2, 2], 2, 0);
        n.step(vote_req(2, 1, 5, idx, t)).unwrap();
        assert_eq!(vote_granted(&drain(&mut n), 2), Some(granted), "case {i}");
    }
}

#[test]
fn vote_is_persisted_before_the_reply() {
    // Figure 2: "respond to RPCs only after updating stable storage"; a forgotten vote could
    // elect two leaders in one term (§5.2).
    let mut n = node_with(1, &[1], 1, 0);
    n.step(vote_req(2, 1, 2, 1, 1)).unwrap();
    let rd = n.ready();
    assert_eq!(
        rd.hard_state.map(|h| (h.term, h.vote)),
        Some((Term(2), Some(nid(2))))
    );
    assert!(rd.messages.is_empty());
    assert!(matches!(
        rd.persisted_messages[0].body,
        MessageBody::VoteResp { reject: false }
    ));
}

// ---- AppendEntries receiver (Figure 2) ----

#[test]
fn append_rule1_stale_term_is_refused_and_the_sender_told() {
    // §5.1: "Reply false if term < currentTerm". The answer carries our term so that a stale
    // leader steps down; the entries are not taken. With or without PreVote and CheckQuorum:
    // without both, a member whose log lacks its configuration never reaches the leader
    // with its own vote requests (Swarm seed 221436).
    for (pre_vote, check_quorum) in [(false, false), (true, false), (false, true), (true, true)] {
        let mut cfg = config(1);
        cfg.pre_vote = pre_vote;
        cfg.check_quorum = check_quorum;
        let state = InitialState::new_cluster([nid(1), nid(2), nid(3)]);
        let mut n = RawNode::new(cfg, state).unwrap();
        n.step(vote_req(3, 1, 5, 0, 0)).unwrap();
        let _ = drain(&mut n);
        n.step(append(2, 1, 4, (0, 0), &[(1, 4)], 0)).unwrap();
        let rd = drain(&mut n);
        assert_eq!(
            n.status().last.index,
            Index(0),
            "stale entries not appended"
        );
        let m = &all_messages(&rd)[0];
        assert_eq!(
            (m.to, m.term),
            (nid(2), Term(5)),
            "pre_vote {pre_vote} check_quorum {check_quorum}"
        );
    }
}

#[test]
fn append_rule2_reject_without_matching_prev() {
    // §5.3: "Reply false if log doesn't contain an entry at prevLogIndex whose term matches
    // prevLogTerm", with the conflict hint for fast backtracking.
    let mut n = node_with(1, &[1, 1, 2], 2, 0);
    n.step(append(2, 1, 3, (3, 3), &[(4, 3)], 0)).unwrap();
    let (index, hint) = append_resp(&drain(&mut n));
    let hint = hint.expect("rejected");
    assert_eq!(index, Index(3));
    assert_eq!(
        (hint.conflict_term, hint.conflict_index),
        (Some(Term(2)), Index(3))
    );
    n.step(append(2, 1, 3, (7, 3), &[], 0)).unwrap();
    let (_, hint) = append_resp(&drain(&mut n));
    assert_eq!(
        hint.map(|h| (h.conflict_term, h.conflict_index)),
        Some((None, Index(4)))
    );
}

#[test]
fn append_rule3_conflicts_truncate_the_suffix() {
    // §5.3: "If an existing entry conflicts with a new one (same index but different terms),
    // delete the existing entry and all that follow it".
    let mut n = node_with(1, &[1, 1, 2, 2], 2, 0);
    n.step(append(2, 1, 3, (2, 1), &[(3, 3)], 0)).unwrap();
    let rd = drain(&mut n);
    assert_eq!(rd.entries.len(), 1, "only the new entry is written");
    assert_eq!(
        rd.entries[0].id(),
        EntryId {
            term: Term(3),
            index: Index(3)
        }
    );
    assert_eq!(
        n.status().last,
        EntryId {
            term: Term(3),
            index: Index(3)
        }
    );
}

#[test]
fn append_rule4_append_new_entries_but_keep_matching_ones() {
    // §5.3: "Append any new entries not already in the log"; a delayed, shorter append must
    // not truncate entries that follow it.
    let mut n = node_with(1, &[1, 1, 1], 1, 0);
    n.step(append(2, 1, 1, (1, 1), &[(2, 1)], 0)).unwrap();
    let rd = drain(&mut n);
    assert!(rd.entries.is_empty());
    assert_eq!(n.status().last.index, Index(3));
    assert_eq!(append_resp(&rd).0, Index(2));
    n.step(append(2, 1, 1, (3, 1), &[(4, 1), (5, 1)], 0))
        .unwrap();
    assert_eq!(drain(&mut n).entries.len(), 2);
}

#[test]
fn append_rule5_commit_to_min_of_leader_commit_and_last_new() {
    // Figure 2: "If leaderCommit > commitIndex, set commitIndex = min(leaderCommit, index of
    // last new entry)": entries after the last new one may still differ from the leader's.
    let mut n = node_with(1, &[1, 1, 1, 1], 1, 0);
    n.step(append(2, 1, 2, (1, 1), &[(2, 1)], 4)).unwrap();
    assert_eq!(n.status().commit, Index(2));
    let rd = drain(&mut n);
    assert_eq!(
        rd.committed_entries.len(),
        2,
        "persisted, committed entries are applied"
    );
}

#[test]
fn append_ack_waits_for_persistence() {
    // Figure 2: an acknowledgement promises the entries are on stable storage.
    let mut n = node_with(1, &[1], 1, 0);
    n.step(append(2, 1, 1, (1, 1), &[(2, 1)], 0)).unwrap();
    let rd = n.ready();
    assert!(rd.messages.is_empty());
    assert_eq!(rd.persisted_messages.len(), 1);
    assert_eq!(rd.entries.len(), 1);
}

// ---- Rules for servers (Figure 2) ----

#[test]
fn all_servers_higher_term_converts_to_follower() {
    // §5.1: "If RPC request or response contains term T > currentTerm: set currentTerm = T,
    // convert to follower".
    let mut c = Cluster::new(3, |cfg| cfg.pre_vote = false);
    assert!(c.elect(1));
    c.node(1)
        .step(msg(2, 1, 9, MessageBody::HeartbeatResp { read_round: 0 }))
        .unwrap();
    let s = c.nodes[&1].status();
    assert_eq!((s.role, s.term, s.vote), (Role::Follower, Term(9), None));
}

#[test]
fn all_servers_apply_committed_entries_in_order() {
    // §5.3: "If commitIndex > lastApplied: increment lastApplied, apply log[lastApplied]".
    let mut c = Cluster::new(3, |_| {});
    assert!(c.elect(1));
    for i in 0..5 {
        c.node(1).propose(format!("v{i}").into_bytes()).unwrap();
    }
    c.stabilize();
    // Followers learn the commit index with the next heartbeat.
    c.tick_all();
    for id in 1..=3 {
        assert_eq!(c.applied_data(id), ["v0", "v1", "v2", "v3", "v4"]);
    }
}

#[test]
fn followers_campaign_after_a_randomized_election_timeout() {
    // §5.2: a follower that hears nothing for an election timeout becomes a candidate; the
    // timeout is randomized in [election, 2 * election) so that split votes are rare.
    let mut fired_at = Vec::new();
    for seed in 0..50 {
        let mut cfg = config(1);
        cfg.seed = seed;
        let mut n = RawNode::new(cfg, InitialState::new_cluster([nid(1), nid(2), nid(3)])).unwrap();
        let mut ticks = 0;
        while n.status().role == Role::Follower {
            n.tick();
            ticks += 1;
            assert!(ticks < 20, "no election within 2 * election_ticks");
        }
        assert!(ticks >= 10, "election before election_ticks");
        fired_at.push(ticks);
        assert_eq!(
            (n.status().role, n.status().term),
            (Role::Candidate, Term(1))
        );
    }
    fired_at.sort_unstable();
    fired_at.dedup();
    assert!(
        fired_at.len() > 3,
        "timeouts are not randomized: {fired_at:?}"
    );
}

#[test]
fn refusing_a_higher_term_vote_does_not_restart_the_election_timer() {
    // Figure 2 (Followers): the election timer restarts on granting a vote or hearing from the
    // current leader, not on merely moving to a candidate's term. A node with a more up-to-date
    // log must not be kept from campaigning by candidates that cannot win.
    let mut n = node_with(1, &[1, 2], 2, 0);
    for _ in 0..9 {
        n.tick();
    }
    for term in 3..40 {
        n.step(vote_req(2, 1, term, 1, 1)).unwrap();
        assert_eq!(
            vote_granted(&drain(&mut n), 2),
            Some(false),
            "log is behind"
        );
        n.tick();
        if n.status().role != Role::Follower {
            return;
        }
    }
    panic!("a stream of hopeless candidates kept the up-to-date node from campaigning");
}

#[test]
fn followers_that_hear_from_the_leader_do_not_campaign() {
    // §5.2: "Followers remain followers as long as they receive valid RPCs from a leader".
    let mut c = Cluster::new(3, |_| {});
    assert!(c.elect(1));
    for _ in 0..100 {
        c.tick_all();
    }
    assert_eq!(c.leader(), Some(1));
    assert_eq!(c.nodes[&2].status().term, c.nodes[&1].status().term);
}

#[test]
fn candidates_vote_for_themselves_in_a_new_term_and_ask_everyone() {
    // §5.2: "On conversion to candidate: increment currentTerm, vote for self, reset election
    // timer, send RequestVote RPCs to all other servers".
    let mut n = node_with(1, &[1, 1], 1, 0);
    n.campaign();
    let rd = drain(&mut n);
    assert_eq!(
        rd.hard_state.map(|h| (h.term, h.vote)),
        Some((Term(2), Some(nid(1))))
    );
    let to: Vec<NodeId> = rd.persisted_messages.iter().map(|m| m.to).collect();
    assert_eq!(to, [nid(2), nid(3)]);
    assert!(rd.persisted_messages.iter().all(|m| matches!(
        m.body,
        MessageBody::Vote {
            last_log_index: Index(2),
            last_log_term: Term(1),
            leader_transfer: false,
        }
    )));
}

#[test]
fn candidates_become_leader_on_a_majority_and_append_a_noop() {
    // §5.2 "If votes received from majority of servers: become leader"; §8: a new leader
    // commits a blank no-op entry at the start of its term.
    let mut n = node_with(1, &[], 0, 0);
    n.campaign();
    let _ = drain(&mut n);
    n.step(msg(2, 1, 1, MessageBody::VoteResp { reject: false }))
        .unwrap();
    assert_eq!(n.status().role, Role::Leader);
    let rd = drain(&mut n);
    assert_eq!(rd.entries.len(), 1);
    assert_eq!(rd.entries[0].kind, EntryKind::Noop);
    assert_eq!(rd.entries[0].term, Term(1));
}

#[test]
fn candidates_lose_on_a_majority_of_refusals() {
    // §5.2: a candidate that cannot win goes back to being a follower and waits for a timeout.
    let mut n = node_with(1, &[], 0, 0);
    n.campaign();
    let _ = drain(&mut n);
    n.step(msg(2, 1, 1, MessageBody::VoteResp { reject: true }))
        .unwrap();
    assert_eq!(
        n.status().role,
        Role::Candidate,
        "one refusal of three is not final"
    );
    n.step(msg(3, 1, 1, MessageBody::VoteResp { reject: true }))
        .unwrap();
    assert_eq!(n.status().role, Role::Follower);
}

#[test]
fn candidates_that_lost_pre_vote_until_they_hear_from_a_leader() {
    // Thesis §9.6, PreVote off: a candidate a majority refused may be unable to win (§5.4.1),
    // so its next campaigns ask about the next term without moving to it; a leader's message
    // shows elections succeed, and real campaigns resume (Swarm seed 8760087).
    let mut n = node_with(1, &[], 0, 0);
    n.campaign();
    let _ = drain(&mut n);
    for from in [2, 3] {
        n.step(msg(from, 1, 1, MessageBody::VoteResp { reject: true }))
            .unwrap();
    }
    assert_eq!(
        (n.status().role, n.status().term),
        (Role::Follower, Term(1))
    );
    n.campaign();
    assert_eq!(
        (n.status().role, n.status().term),
        (Role::PreCandidate, Term(1)),
        "a lost candidate raised its term again"
    );
    let asked = all_messages(&drain(&mut n));
    assert_eq!(asked.len(), 2);
    assert!(asked
        .iter()
        .all(|m| m.term == Term(2) && matches!(m.body, MessageBody::PreVote { .. })));
    // Refused again: still by pre-vote.
    for from in [2, 3] {
        n.step(msg(from, 1, 1, MessageBody::PreVoteResp { reject: true }))
            .unwrap();
    }
    n.campaign();
    assert_eq!(n.status().role, Role::PreCandidate);
    let _ = drain(&mut n);
    // Node 2 wins term 2; hearing from it ends the doubt.
    n.step(append(2, 1, 2, (0, 0), &[(1, 2)], 0)).unwrap();
    let _ = drain(&mut n);
    n.campaign();
    assert_eq!(
        (n.status().role, n.status().term),
        (Role::Candidate, Term(3))
    );
}

#[test]
fn candidates_follow_a_leader_of_their_term() {
    // §5.2: "If AppendEntries RPC received from new leader: convert to follower".
    let mut n = node_with(1, &[], 0, 0);
    n.campaign();
    let _ = drain(&mut n);
    n.step(append(2, 1, 1, (0, 0), &[(1, 1)], 0)).unwrap();
    let s = n.status();
    assert_eq!(
        (s.role, s.leader, s.term),
        (Role::Follower, Some(nid(2)), Term(1))
    );
}

#[test]
fn candidates_start_a_new_election_on_timeout() {
    // §5.2: "If election timeout elapses: start new election".
    let mut n = node_with(1, &[], 0, 0);
    n.campaign();
    for _ in 0..20 {
        n.tick();
    }
    assert_eq!(
        (n.status().role, n.status().term),
        (Role::Candidate, Term(2))
    );
}

#[test]
fn leaders_retry_with_an_earlier_next_index_on_rejection() {
    // §5.3: "If AppendEntries fails because of log inconsistency: decrement nextIndex and
    // retry" (here by a whole term at a time).
    let mut c = Cluster::new(3, |cfg| cfg.pre_vote = false);
    c.disks.insert(
        1,
        Disk {
            hard_state: HardState {
                term: Term(3),
                vote: None,
                commit: Index(0),
            },
            entries: entries_with_terms(&[1, 3, 3, 3]),
            ..Disk::default()
        },
    );
    c.disks.insert(
        2,
        Disk {
            hard_state: HardState {
                term: Term(2),
                vote: None,
                commit: Index(0),
            },
            entries: entries_with_terms(&[1, 2, 2, 2, 2, 2]),
            ..Disk::default()
        },
    );
    c.restart(1);
    c.restart(2);
    assert!(c.elect(1));
    assert_eq!(c.log_terms(2), [1, 3, 3, 3, 4]);
    assert_eq!(c.log_terms(3), [1, 3, 3, 3, 4]);
}

#[test]
fn leaders_commit_only_current_term_entries_by_counting() {
    // §5.4.2 and Figure 8: "If there exists an N such that N > commitIndex, a majority of
    // matchIndex[i] >= N, and log[N].term == currentTerm: set commitIndex = N".
    let mut n = node_with(1, &[1, 1], 2, 0);
    n.campaign();
    let _ = drain(&mut n);
    n.step(msg(2, 1, 3, MessageBody::VoteResp { reject: false }))
        .unwrap();
    assert_eq!(n.status().role, Role::Leader);
    let _ = drain(&mut n); // no-op 3/3 persisted
                           // A follower acknowledges only the old-term entries: index 2 is on a majority, but of
                           // term 1, so it must not commit.
    n.step(msg(
        2,
        1,
        3,
        MessageBody::AppendResp {
            index: Index(2),
            reject: None,
        },
    ))
    .unwrap();
    assert_eq!(n.status().commit, Index(0));
    // The no-op of term 3 on a majority commits it and everything before it.
    n.step(msg(
        2,
        1,
        3,
        MessageBody::AppendResp {
            index: Index(3),
            reject: None,
        },
    ))
    .unwrap();
    assert_eq!(n.status().commit, Index(3));
}

#[test]
fn leaders_count_themselves_only_once_persisted() {
    // Figure 2: the leader's own entries count toward a majority only once on its own stable
    // storage (thesis §10.2.1 lets it write in parallel with sending).
    let mut n = node_with(1, &[], 0, 0);
    n.campaign();
    let _ = drain(&mut n);
    n.step(msg(2, 1, 1, MessageBody::VoteResp { reject: false }))
        .unwrap();
    let rd = n.ready();
    assert!(
        !rd.messages.is_empty(),
        "appends leave before the leader's own write"
    );
    n.step(msg(
        2,
        1,
        1,
        MessageBody::AppendResp {
            index: Index(1),
            reject: None,
        },
    ))
    .unwrap();
    n.step(msg(
        3,
        1,
        1,
        MessageBody::AppendResp {
            index: Index(1),
            reject: None,
        },
    ))
    .unwrap();
    assert_eq!(
        n.status().commit,
        Index(1),
        "two followers are a majority without the leader"
    );
    n.advance(rd.number);
}

#[test]
fn leader_counts_own_persistence_in_a_single_node_cluster() {
    let id = nid(1);
    let mut n = RawNode::new(config(1), InitialState::new_cluster([id])).unwrap();
    n.campaign();
    // It leads once its vote is durable (see `own_vote_durable`).
    assert_eq!(n.status().role, Role::Candidate);
    let rd = n.ready();
    assert_eq!(rd.hard_state.map(|h| h.vote), Some(Some(id)));
    n.advance(rd.number);
    assert_eq!(n.status().role, Role::Leader);
    let rd = drain(&mut n);
    assert_eq!(rd.entries.len(), 1);
    assert_eq!(
        n.status().commit,
        Index(1),
        "commits once its own write is durable"
    );
    n.propose(b"x".to_vec()).unwrap();
    let _ = drain(&mut n);
    let rd = drain(&mut n);
    assert_eq!(
        rd.committed_entries.last().map(|e| e.data.clone()),
        Some(b"x".to_vec())
    );
}

// ---- Proposals, limits and errors ----

#[test]
fn proposals_on_followers_name_the_leader() {
    let mut c = Cluster::new(3, |_| {});
    assert!(c.elect(2));
    let err = c.node(1).propose(b"x".to_vec()).unwrap_err();
    assert_eq!(
        err,
        ProposeError::NotLeader {
            leader: Some(nid(2))
        }
    );
    assert_eq!(err.to_string(), "not the leader; leader is 2");
}

#[test]
fn proposals_beyond_the_uncommitted_limit_are_busy() {
    let mut c = Cluster::new(3, |cfg| {
        cfg.msg_bytes_max = 1000;
        cfg.inflight_bytes_max = 1000;
        cfg.uncommitted_bytes_max = 1000;
    });
    assert!(c.elect(1));
    c.isolate(1);
    let mut accepted = 0;
    let err = loop {
        match c.node(1).propose(vec![0; 100]) {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(err, ProposeError::Busy);
    assert_eq!(accepted, 1000 / 124);
    let too_big = c.node(1).propose(vec![0; 2000]).unwrap_err();
    assert!(matches!(too_big, ProposeError::TooLarge { .. }));
    // Once the cluster heals and commits, proposals are accepted again.
    c.heal();
    c.stabilize();
    for _ in 0..3 {
        c.tick_all();
    }
    assert!(c.node(1).propose(vec![0; 100]).is_ok());
}

#[test]
fn reads_need_a_leader() {
    let mut n = node_with(1, &[], 0, 0);
    assert_eq!(
        n.read_index(ReadCtx(1)),
        Err(skiff_raft::ReadError::NoLeader)
    );
}

#[test]
fn bad_messages_are_errors_not_panics() {
    let mut n = node_with(1, &[], 0, 0);
    assert_eq!(
        n.step(msg(2, 3, 1, MessageBody::HeartbeatResp { read_round: 0 })),
        Err(StepError::WrongRecipient { to: nid(3) })
    );
    assert_eq!(
        n.step(msg(1, 1, 1, MessageBody::HeartbeatResp { read_round: 0 })),
        Err(StepError::FromSelf)
    );
}

#[test]
fn start_rejects_bad_config_and_inconsistent_state() {
    let mut cfg = config(1);
    cfg.heartbeat_ticks = 0;
    let err = RawNode::new(cfg, InitialState::new_cluster([nid(1)])).unwrap_err();
    assert!(matches!(err, StartError::Config(ref e) if e.field == "heartbeat_ticks"));
    let mut state = InitialState::new_cluster([nid(1)]);
    state.entries = entries_with_terms(&[1, 2]);
    state.hard_state.term = Term(1);
    let err = RawNode::new(config(1), state).unwrap_err();
    assert!(
        err.to_string().contains("above the persisted term"),
        "{err}"
    );
    let mut state = InitialState::new_cluster([nid(1)]);
    state.entries = vec![entry(2, 1, "")];
    state.hard_state.term = Term(1);
    assert!(matches!(
        RawNode::new(config(1), state),
        Err(StartError::CorruptState(_))
    ));
}

#[test]
#[should_panic(expected = "ready() called before advance()")]
fn one_batch_at_a_time() {
    let mut n = node_with(1, &[], 0, 0);
    n.campaign();
    let _ = n.ready();
    n.campaign();
    let _ = n.ready();
}

#[test]
fn restart_keeps_term_vote_and_log() {
    // Figure 2 "persistent state on all servers": currentTerm, votedFor, log[].
    let mut c = Cluster::new(3, |_| {});
    assert!(c.elect(1));
    c.node(1).propose(b"a".to_vec()).unwrap();
    c.stabilize();
    let before = c.nodes[&2].status();
    c.crash(2);
    c.restart(2);
    let after = c.nodes[&2].status();
    assert_eq!(
        (after.term, after.vote, after.last),
        (before.term, before.vote, before.last)
    );
    assert_eq!(after.commit, before.commit);
}

#[test]
fn same_inputs_same_outputs() {
    // Determinism: the core has no hidden randomness or clock.
    let run = || {
        let mut c = Cluster::new(5, |cfg| cfg.seed = 99);
        for round in 0..200 {
            if round == 50 {
                c.isolate(c.leader().unwrap_or(1));
            }
            if round == 120 {
                c.heal();
            }
            if let Some(l) = c.leader() {
                let _ = c.node(l).propose(format!("r{round}").into_bytes());
            }
            c.tick_all();
        }
        c.take_trace()
    };
    let (a, b) = (run(), run());
    assert!(a.len() > 1000);
    assert_eq!(a, b);
}

// ---- Regressions found in review ----

/// A delayed heartbeat from a leader's previous term reaches a follower after that leader was
/// re-elected. The follower's answer must not read as a match (it used to carry the
/// follower's last index, and the leader committed an entry only it held).
#[test]
fn stale_term_answer_is_not_a_match() {
    let mut a = node_with(1, &[1, 3], 3, 1);
    let mut cfg = config(2);
    cfg.check_quorum = true;
    let state = InitialState {
        hard_state: HardState {
            term: Term(4),
            vote: None,
            commit: Index(1),
        },
        membership: Membership::new([nid(1), nid(2), nid(3)]),
        snapshot: EntryId::default(),
        entries: entries_with_terms(&[1, 2, 2, 2]),
        applied: Index(0),
    };
    let mut b = RawNode::new(cfg, state).unwrap();
    a.campaign();
    let _ = drain(&mut a);
    a.step(msg(3, 1, 4, MessageBody::VoteResp { reject: false }))
        .unwrap();
    assert_eq!(a.status().role, Role::Leader);
    a.propose(b"w".to_vec()).unwrap();
    let _ = drain(&mut a);
    let heartbeat = MessageBody::Heartbeat {
        commit: Index(1),
        read_round: 0,
    };
    b.step(msg(1, 2, 3, heartbeat)).unwrap();
    let answer = all_messages(&drain(&mut b));
    assert_eq!(answer.len(), 1);
    a.step(answer[0].clone()).unwrap();
    assert_eq!(a.status().commit, Index(1), "no commit on a stale answer");
}

/// Reads asked before a round's heartbeats leave share that round (§6.4, batching); the
/// node counts rounds, not requests, so operators can see the batching.
#[test]
fn reads_before_the_heartbeats_leave_share_one_round() {
    let mut c = Cluster::new(3, |_| {});
    c.verbose = false;
    c.pass_startup();
    assert!(c.elect(1));
    c.stabilize();
    let before = c.nodes[&1].read_rounds();
    for ctx in 10..13 {
        c.node(1).read_index(ReadCtx(ctx)).unwrap();
    }
    c.stabilize();
    assert_eq!(
        c.nodes[&1].read_rounds(),
        before + 1,
        "three reads, one round"
    );
    let mut got: Vec<u64> = c.reads[&1].iter().map(|r| r.ctx.0).collect();
    got.sort_unstable();
    assert_eq!(got, vec![10, 11, 12]);
    c.node(1).read_index(ReadCtx(13)).unwrap();
    c.stabilize();
    assert_eq!(
        c.nodes[&1].read_rounds(),
        before + 2,
        "a later read, a new round"
    );
    assert_eq!(c.nodes[&2].read_rounds(), 0, "a follower starts no round");
}

/// Lease reads end before the followers' leases do: a leader cut off after its last
/// acknowledged heartbeat round does not serve lease reads past `election_ticks` from it.
#[test]
fn lease_reads_stop_when_the_followers_leases_may_have_ended() {
    let mut c = Cluster::new(3, |cfg| {
        cfg.read_only = skiff_raft::ReadOnlyOption::LeaseBased
    });
    c.verbose = false;
    c.pass_startup();
    assert!(c.elect(1));
    c.tick_all();
    c.isolate(1);
    let e = c.configs[&1].election_ticks;
    // Still leader (CheckQuorum steps down only at the end of its window), but the lease is
    // gone: the read needs a round that cannot complete.
    c.tick(1, e - 1);
    c.stabilize();
    assert_eq!(c.nodes[&1].status().role, Role::Leader);
    c.node(1).read_index(ReadCtx(5)).unwrap();
    c.stabilize();
    assert!(c.reads.get(&1).is_none_or(|r| r.is_empty()));
    // Once it steps down the read fails.
    c.tick(1, 2 * e);
    c.stabilize();
    assert_eq!(c.failed_reads[&1], vec![5]);
}

/// A forwarded read that expired and is retried with the same tag is not answered by the late
/// reply to the first attempt.
#[test]
fn late_answer_to_an_expired_forwarded_read_is_ignored() {
    let mut f = node_with(2, &[1, 1], 1, 2);
    let hb = || {
        msg(
            1,
            2,
            1,
            MessageBody::Heartbeat {
                commit: Index(2),
                read_round: 0,
            },
        )
    };
    f.step(hb()).unwrap();
    let _ = drain(&mut f);
    f.read_index(ReadCtx(7)).unwrap();
    let first_id = match &drain(&mut f).messages[0].body {
        MessageBody::ReadIndex { ctx } => *ctx,
        other => panic!("expected ReadIndex, got {other:?}"),
    };
    let mut failed = Vec::new();
    for _ in 0..20 {
        f.tick();
        f.step(hb()).unwrap();
        failed.extend(drain(&mut f).failed_reads);
    }
    assert_eq!(failed, [ReadCtx(7)]);
    f.read_index(ReadCtx(7)).unwrap();
    let _ = drain(&mut f);
    let late = MessageBody::ReadIndexResp {
        ctx: first_id,
        index: Some(Index(2)),
    };
    f.step(msg(1, 2, 1, late)).unwrap();
    assert!(!f.has_ready() || drain(&mut f).read_states.is_empty());
}

/// Figure 2 "persist before responding", extended to every message of a new term: nothing of a
/// term (or a vote) this node has not made durable may leave, or after a crash it can come back
/// in an older term and live the same term again differently. A sole voter wins at once, with no
/// Vote message to wait for: found by the simulator (Swarm seed 2262450), where two incarnations
/// of node 1 each led term 3 and a learner received two different entries 24@3. etcd's rule:
/// no message before the latest HardState is persisted.
#[test]
fn nothing_of_a_new_term_leaves_before_the_term_is_durable() {
    // A sole voter with a learner leads only once its term and vote are durable.
    let mut membership = Membership::new([nid(1)]);
    membership.learners.insert(nid(2));
    let state = InitialState {
        hard_state: HardState {
            term: Term(2),
            vote: None,
            commit: Index(0),
        },
        membership,
        snapshot: EntryId::default(),
        entries: Vec::new(),
        applied: Index(0),
    };
    let mut n = RawNode::new(config(1), state).expect("valid node");
    n.campaign();
    assert_eq!(
        n.status().role,
        Role::Candidate,
        "not before its vote is durable"
    );
    let rd = n.ready();
    assert_eq!(
        rd.hard_state.map(|h| (h.term, h.vote)),
        Some((Term(3), Some(nid(1))))
    );
    assert!(rd.messages.is_empty() && rd.persisted_messages.is_empty());
    n.advance(rd.number);
    assert_eq!(n.status().role, Role::Leader);
    let rd = n.ready();
    assert!(rd
        .messages
        .iter()
        .any(|m| m.term == Term(3) && matches!(m.body, MessageBody::Append { .. })));
    n.advance(rd.number);
    // A follower moved to a higher term by a heartbeat answers only after the term is durable.
    let mut f = node_with(2, &[1], 1, 0);
    let hb = MessageBody::Heartbeat {
        commit: Index(0),
        read_round: 1,
    };
    f.step(msg(1, 2, 2, hb)).unwrap();
    let rd = f.ready();
    assert_eq!(rd.hard_state.map(|h| h.term), Some(Term(2)));
    assert!(
        rd.messages.is_empty(),
        "sent before the sync: {:?}",
        rd.messages
    );
    assert!(rd
        .persisted_messages
        .iter()
        .any(|m| matches!(m.body, MessageBody::HeartbeatResp { .. })));
}

// ---- Durability of each batch (Figure 2: persistent and volatile state) ----

#[test]
fn only_term_vote_entries_and_snapshots_must_be_synced() {
    // Figure 2: currentTerm, votedFor and log[] are persistent state; commitIndex is volatile.
    // A batch that changes nothing but the commit index may be written without a sync
    // (etcd's MustSync); one that changes anything persistent must be synced.
    let mut n = node_with(2, &[1], 1, 0);
    let rd = drain(&mut n);
    assert!(
        rd.hard_state.is_none() || !rd.must_sync,
        "a start batch with nothing new needs no sync: {rd:?}"
    );

    // A new term (and the append's entry): synced.
    n.step(append(1, 2, 2, (1, 1), &[(2, 2)], 0))
        .expect("append");
    let rd = drain(&mut n);
    assert_eq!(rd.hard_state.map(|h| h.term), Some(Term(2)));
    assert!(rd.must_sync, "new term and entries");

    // Only the commit index moves: no sync needed, yet the entry is handed out to apply.
    n.step(append(1, 2, 2, (2, 2), &[], 2)).expect("commit");
    let rd = drain(&mut n);
    assert_eq!(rd.hard_state.map(|h| h.commit), Some(Index(2)));
    assert!(rd.entries.is_empty());
    assert!(!rd.must_sync, "a commit-only hard state: {rd:?}");
    assert_eq!(rd.committed_entries.len(), 2);

    // A vote in a new term: synced, and its answer waits for the sync.
    n.step(vote_req(3, 2, 3, 2, 2)).expect("vote");
    let rd = drain(&mut n);
    assert_eq!(rd.hard_state.map(|h| h.vote), Some(Some(nid(3))));
    assert!(rd.must_sync);
    assert_eq!(vote_granted(&rd, 3), Some(true));
    assert!(rd.messages.is_empty(), "the vote goes after the sync");
}

/// The leader's view of its followers (`RawNode::followers`, for operators) tells what
/// Figure 2's `matchIndex[]`/`nextIndex[]` hold: a cut-off follower falls behind by exactly the
/// entries it missed and is caught up once the network heals; off the leader it is empty.
#[test]
fn followers_view_reports_match_next_and_lag() {
    let mut c = Cluster::new(3, |_| {});
    assert!(c.elect(1));
    c.node(1).propose(b"a".to_vec()).expect("leader takes it");
    c.stabilize();
    let last = c.node(1).status().last.index;
    let views = c.node(1).followers();
    assert_eq!(
        views.iter().map(|v| v.id.get()).collect::<Vec<_>>(),
        vec![2, 3]
    );
    for v in &views {
        assert_eq!(v.matched, last, "{v:?}");
        assert_eq!(v.next, Index(last.0 + 1), "{v:?}");
        assert!(!v.learner);
        assert_eq!(v.inflight_msgs, 0, "{v:?}");
        assert_eq!(v.lag_bytes, 0, "caught up: {v:?}");
    }
    assert!(c.node(2).followers().is_empty(), "a follower has no view");

    c.isolate(3);
    for d in ["b", "c", "d"] {
        c.node(1)
            .propose(d.as_bytes().to_vec())
            .expect("leader takes it");
    }
    c.stabilize();
    let views = c.node(1).followers();
    let last = c.node(1).status().last.index;
    assert_eq!(views[0].matched, last);
    assert_eq!(views[1].matched.0, last.0 - 3, "{:?}", views[1]);
    // Three one-byte entries behind, each charged its payload and the fixed overhead.
    assert_eq!(views[0].lag_bytes, 0, "{:?}", views[0]);
    assert_eq!(
        views[1].lag_bytes,
        3 * (1 + skiff_raft::ENTRY_OVERHEAD_BYTES),
        "{:?}",
        views[1]
    );

    c.heal();
    for _ in 0..10 {
        c.tick_all();
        c.stabilize();
    }
    let views = c.node(1).followers();
    assert!(views.iter().all(|v| v.matched == last), "{views:?}");
    assert!(views.iter().all(|v| v.lag_bytes == 0), "{views:?}");
}
