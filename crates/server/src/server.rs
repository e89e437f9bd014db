//! Wiring only: open the replica from the data dir, start the peer layer and the API on top
//! of it, bind the client and peer ports, and run until a fault or shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::api::{http::client_routes, Api};
use crate::config::{raft_config, seed, ServerConfig};
use crate::error::ServerError;
use crate::pb::skiff::raft::v1::raft_server::RaftServer;
use crate::peer::{faults, Faults, Forwarder, Peers, RaftService, RetryPolicy, PEER_MSG_BYTES_MAX};
use crate::replica::{NodeTask, OpenOptions, INBOUND_QUEUE_MAX};

/// How long a member that learns it was removed keeps serving before it stops: long enough
/// for an answer in flight to leave.
const REMOVED_GRACE: Duration = Duration::from_millis(500);

/// Runs a member until `shutdown` completes (Ok) or something fails (Err).
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    config.validate().map_err(ServerError::Config)?;
    let spec = &config.cluster;
    let me = spec
        .member_by_name(&config.name)
        .ok_or_else(|| ServerError::Config("member vanished".into()))?
        .clone();
    let cluster_id = spec.cluster_id;
    std::fs::create_dir_all(&config.data_dir).map_err(|error| ServerError::Io {
        what: format!("create data dir {}", config.data_dir.display()),
        error,
    })?;

    let opened = crate::replica::open(OpenOptions {
        data_dir: &config.data_dir,
        identity: storage::Identity {
            cluster_id,
            node_id: me.id,
        },
        initial_voters: spec.members.keys().copied().collect(),
        new_cluster: config.new_cluster,
        raft: raft_config(&config, me.id, seed()),
    })?;
    tracing::info!(
        name = %me.name, id = me.id.get(), cluster = format!("{cluster_id:#x}"),
        applied = opened.raw.status().applied.0, last = opened.log.last_index().0,
        "starting member"
    );

    let removal = Arc::new(crate::replica::Removal::new(
        me.id.get(),
        opened.kv.removed_members().map_err(ServerError::Kv)?,
    ));
    if removal.self_removed() {
        return Err(ServerError::Removed);
    }

    let client_listener = bind(config.listen_client, "client").await?;
    let peer_listener = bind(config.listen_peer, "peer").await?;

    let faults = Arc::new(Faults::default());
    if let Some(path) = config.fault_file.clone() {
        tokio::spawn(faults::watch_fault_file(path, spec.clone(), faults.clone()));
    }
    let peers = Arc::new(
        Peers::start(
            cluster_id,
            spec.members
                .values()
                .filter(|m| m.id != me.id)
                .map(|m| (m.id, m.peer_url.clone())),
            faults.clone(),
            removal.clone(),
        )
        .map_err(ServerError::Config)?,
    );
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE_MAX);
    let kv_path = opened.kv_path.clone();
    let (task, handle) = NodeTask::new(
        opened.raw,
        opened.log,
        opened.kv,
        peers.clone(),
        config.heartbeat,
        inbound_rx,
        opened.snapshot,
        config.snapshot_count,
        removal.clone(),
    );
    let forwarder = Forwarder::new(
        handle.clone(),
        peers,
        me.id,
        RetryPolicy::default(),
        cluster_id,
    );
    let members = crate::api::cluster::MemberInfo {
        initial: spec.clone(),
        me: kv::members::Member {
            id: me.id.get(),
            name: me.name.clone(),
            peer_urls: vec![me.peer_url.clone()],
            client_urls: config.advertise_client_urls.clone(),
        },
        election: config.election,
    };
    let api = Api::new(
        handle,
        forwarder,
        cluster_id,
        me.id.get(),
        kv_path,
        members,
        removal.clone(),
    );
    let lessor = api.start_lessor(config.election);
    let publisher = api.start_publisher();
    let compactor = api.start_compactor(config.auto_compaction);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let client_server = tonic::transport::Server::builder()
        // HTTP/1.1 too, for `GET /health` and `GET /metrics` with plain HTTP clients.
        .accept_http1(true)
        .add_routes(client_routes(&api))
        .serve_with_incoming_shutdown(nodelay(client_listener), stopped(stop_rx.clone()));
    let peer_server = tonic::transport::Server::builder()
        .add_service(
            RaftServer::new(RaftService::new(
                cluster_id,
                me.id,
                inbound_tx,
                api,
                faults,
                removal.clone(),
            ))
            .max_decoding_message_size(PEER_MSG_BYTES_MAX)
            .max_encoding_message_size(PEER_MSG_BYTES_MAX),
        )
        .serve_with_incoming_shutdown(nodelay(peer_listener), stopped(stop_rx));
    let mut node = tokio::spawn(task.run());
    let mut client_server = tokio::spawn(client_server);
    let mut peer_server = tokio::spawn(peer_server);

    let result = tokio::select! {
        _ = shutdown => Ok(()),
        _ = removal.wait_self_removed() => {
            tracing::error!("this member was removed from the cluster; stopping");
            // Let the answer to a MemberRemove of this very member (the leader's own) leave.
            tokio::time::sleep(REMOVED_GRACE).await;
            Err(ServerError::Removed)
        }
        r = &mut node => flatten(r),
        r = &mut client_server => flatten(r.map(|r| r.map_err(ServerError::from))),
        r = &mut peer_server => flatten(r.map(|r| r.map_err(ServerError::from))),
    };
    let _ = stop_tx.send(true);
    node.abort();
    lessor.abort();
    publisher.abort();
    if let Some(c) = compactor {
        c.abort();
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = client_server.await;
        let _ = peer_server.await;
    })
    .await;
    result
}

/// Accepted connections with `TCP_NODELAY`: small gRPC responses must not wait for Nagle's
/// algorithm to meet the peer's delayed ACK (a 40 ms floor on every read, BENCHMARKS.md).
fn nodelay(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

fn flatten(r: Result<Result<(), ServerError>, tokio::task::JoinError>) -> Result<(), ServerError> {
    match r {
        Ok(r) => r,
        Err(e) => Err(ServerError::Unsupported(format!("task failed: {e}"))),
    }
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| ServerError::Io {
            what: format!("bind {what} address {addr}"),
            error,
        })
}
