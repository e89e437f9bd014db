//! Joining a running cluster with an empty data dir (`--initial-cluster-state existing`, after
//! `etcdctl member add`): ask the members named in `--initial-cluster` who this member is, as
//! etcd asks its peers for the cluster's members before it starts.

use std::time::Duration;

use crate::error::ServerError;
use crate::pb::skiff::raft::v1 as pb;
use crate::pb::skiff::raft::v1::raft_client::RaftClient;
use crate::tls::PeerClientTls;

/// How long one peer may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between rounds over the peers.
const ROUND_PAUSE: Duration = Duration::from_millis(500);

/// Asks each of `peer_urls` in turn, in rounds, until one says who `my_url` is or `deadline`
/// passes; then the error is the last answer (e.g. that no member has that URL: it was not
/// added). `https://` peers are asked with `tls`.
pub async fn ask(
    peer_urls: &[String],
    my_url: &str,
    deadline: Duration,
    tls: &PeerClientTls,
) -> Result<pb::JoinResponse, ServerError> {
    if peer_urls.is_empty() {
        return Err(ServerError::Config(
            "--initial-cluster-state existing: --initial-cluster names no other member to join \
             through"
                .into(),
        ));
    }
    let until = tokio::time::Instant::now() + deadline;
    let mut last = String::new();
    loop {
        for url in peer_urls {
            match ask_one(url, my_url, tls).await {
                Ok(answer) => return Ok(answer),
                // Final: this member ran before; the cluster counts on the state it had.
                Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                    return Err(ServerError::Config(format!(
                        "--initial-cluster-state existing: {url} answered: {}",
                        status.message()
                    )))
                }
                // Not final: a member that has not applied the addition yet says so too.
                Err(status) => last = format!("{url} answered: {}", describe(&status)),
            }
        }
        if tokio::time::Instant::now() + ROUND_PAUSE >= until {
            return Err(ServerError::Config(format!(
                "--initial-cluster-state existing: no member in --initial-cluster told this \
                 member who it is within {} s; last: {last}",
                deadline.as_secs()
            )));
        }
        tokio::time::sleep(ROUND_PAUSE).await;
    }
}

async fn ask_one(
    url: &str,
    my_url: &str,
    tls: &PeerClientTls,
) -> Result<pb::JoinResponse, tonic::Status> {
    let endpoint = tls
        .endpoint(url)
        .map_err(tonic::Status::invalid_argument)?
        .connect_timeout(Duration::from_secs(1))
        .timeout(ASK_TIMEOUT);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("cannot connect: {}", error_chain(&e))))?;
    let answer = RaftClient::new(channel)
        .join(pb::JoinRequest {
            peer_url: my_url.to_string(),
        })
        .await?
        .into_inner();
    if answer.member_id == 0 || answer.cluster_id == 0 || answer.bootstrap_voters.is_empty() {
        return Err(tonic::Status::internal("a malformed join answer"));
    }
    Ok(answer)
}

/// A status's message and, for a connection failure, its cause.
pub(crate) fn describe(status: &tonic::Status) -> String {
    match std::error::Error::source(status) {
        Some(source) => format!("{}: {}", status.message(), error_chain(source)),
        None => status.message().to_string(),
    }
}

/// `error` and its sources, `: `-separated: tonic's transport error alone says only
/// "transport error", where the cause (a refused connection, a TLS certificate the peer
/// rejected) is what an operator needs.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
