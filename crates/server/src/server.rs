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
use crate::pb::skiff::raft::v1::JoinMember;
use crate::peer::{
    faults, Faults, Forwarder, PeerTimeouts, Peers, RaftService, RetryPolicy, PEER_MSG_BYTES_MAX,
};
use crate::replica::member_file::{self, MemberFile};
use crate::replica::{NodeTask, OpenOptions, INBOUND_QUEUE_MAX};
use crate::tls;

/// How long a member that learns it was removed keeps serving before it stops: long enough
/// for an answer in flight to leave.
const REMOVED_GRACE: Duration = Duration::from_millis(500);
/// How long a member joining with an empty data dir keeps asking the cluster who it is.
const JOIN_DEADLINE: Duration = Duration::from_secs(30);
/// Application protocols over TLS on the client port: gRPC (HTTP/2), and HTTP/1.1 for
/// `/health` and `/metrics`.
const CLIENT_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];
/// The peer port speaks gRPC only.
const PEER_ALPN: &[&[u8]] = &[b"h2"];

/// Runs a member until `shutdown` completes (Ok) or something fails (Err).
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    config.validate().map_err(ServerError::Config)?;
    let spec = &config.cluster;
    let mut me = spec
        .member_by_name(&config.name)
        .ok_or_else(|| ServerError::Config("member vanished".into()))?
        .clone();
    // Certificates and keys are checked before anything else: a bad file stops the member
    // with one line naming the flag and the file.
    let tls = &config.tls;
    let client_tls = tls::load_server(
        &tls.client,
        tls::Side::Client,
        tls.client_https,
        CLIENT_ALPN,
    )
    .map_err(ServerError::Config)?;
    let peer_tls = tls::load_server(&tls.peer, tls::Side::Peer, tls.peer_https, PEER_ALPN)
        .map_err(ServerError::Config)?;
    let peer_client_tls = tls::PeerClientTls::load(&tls.peer).map_err(ServerError::Config)?;
    std::fs::create_dir_all(&config.data_dir).map_err(|error| ServerError::Io {
        what: format!("create data dir {}", config.data_dir.display()),
        error,
    })?;

    let (member, joined) = who_am_i(&config, &me, &peer_client_tls).await?;
    let cluster_id = member.identity.cluster_id;
    me.id = member.identity.node_id;
    let metrics = Arc::new(crate::metrics::Metrics::new(me.id.get()));
    let mut opened = crate::replica::open(OpenOptions {
        data_dir: &config.data_dir,
        identity: member.identity,
        initial_voters: member.bootstrap.clone(),
        may_create: config.new_cluster || member_file::read(&config.data_dir)?.is_some(),
        raft: raft_config(&config, me.id, seed()),
    })?;
    let mut member = member;
    if member_file::read(&config.data_dir)?.is_none() {
        // A data dir from before member files (or just created): the voters its log starts
        // from are what the log recorded, when it still starts at the beginning; the flags
        // only for a log compacted since (a joining member then gets a snapshot, never the
        // first entries, from a member whose log is compacted too).
        if opened.log.log_start().index.0 == 0 && !opened.log.membership().voters.is_empty() {
            member.bootstrap = opened.log.membership().voters.iter().copied().collect();
        }
        member_file::write(&config.data_dir, &member)?;
    }
    tracing::info!(
        name = %me.name, id = format!("{:x}", me.id.get()), cluster = format!("{cluster_id:#x}"),
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

    {
        let (fsync, commit) = (metrics.clone(), metrics.backend_commit.clone());
        opened
            .log
            .observe_syncs(Box::new(move |d| fsync.observe_fsync(d)));
        opened.kv.observe_commits(Box::new(move |d| {
            commit.observe(crate::metrics::seconds(d))
        }));
    }

    let client_listener = bind(config.listen_client, "client").await?;
    let peer_listener = bind(config.listen_peer, "peer").await?;
    let mut metrics_listeners = Vec::new();
    for addr in &config.listen_metrics {
        metrics_listeners.push(bind(*addr, "metrics").await?);
    }

    let faults = Arc::new(Faults::default());
    if let Some(path) = config.fault_file.clone() {
        tokio::spawn(faults::watch_fault_file(path, spec.clone(), faults.clone()));
    }
    // Where the others are: the initial cluster, what a join was told, and the replicated
    // member table (newest last, so it wins); kept current by the address book task.
    let described = opened.kv.members().map_err(ServerError::Kv)?;
    let mut addresses: std::collections::BTreeMap<raft::NodeId, String> = spec
        .members
        .values()
        .map(|m| (m.id, m.peer_url.clone()))
        .collect();
    let known = joined
        .iter()
        .map(|m| (m.id, m.peer_urls.first()))
        .chain(described.iter().map(|m| (m.id, m.peer_urls.first())));
    for (id, url) in known {
        if let (Some(id), Some(url)) = (raft::NodeId::new(id), url) {
            addresses.insert(id, url.clone());
        }
    }
    let peers = Arc::new(
        Peers::start(
            cluster_id,
            me.peer_url.clone(),
            addresses
                .into_iter()
                .filter(|(id, url)| *id != me.id && *url != me.peer_url),
            PeerTimeouts::for_election(config.election),
            faults.clone(),
            removal.clone(),
            metrics.clone(),
            peer_client_tls,
        )
        .map_err(ServerError::Config)?,
    );
    if config.data_checks.initial_corrupt_check {
        crate::api::corrupt::initial_check(&opened.kv, me.id.get(), &peers)
            .await
            .map_err(ServerError::Corrupt)?;
    }
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE_MAX);
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
        metrics.clone(),
    );
    let peers_for_service = peers.clone();
    let forwarder = Forwarder::new(
        handle.clone(),
        peers.clone(),
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
        bootstrap: member.bootstrap.iter().map(|v| v.get()).collect(),
        peers,
    };
    let api = Api::new(
        handle,
        forwarder,
        cluster_id,
        me.id.get(),
        members,
        removal.clone(),
    )
    .with_data_checks(config.data_checks)
    .with_auth(crate::api::auth::AuthConfig {
        client_cert_auth: config.tls.client_https && config.tls.client.client_cert_auth,
        ..config.auth
    });
    let lessor = api.start_lessor(config.election);
    let publisher = api.start_publisher();
    let address_book = api.start_address_book();
    let dashboard = api.start_dashboard();
    let prober = crate::peer::probe::start(
        peers_for_service.clone(),
        removal.clone(),
        me.id,
        cluster_id,
        config.election,
    );
    let rtt_prober = crate::peer::probe::start_rtt(
        peers_for_service.clone(),
        metrics.clone(),
        me.id,
        cluster_id,
        config.election,
    );
    let compactor = api.start_compactor(config.auto_compaction);
    let corruption_check = api.start_corruption_check(config.data_checks.corrupt_check_every);
    let disk_space_watch = api.start_disk_space_watch(
        config.data_dir.clone(),
        config.data_checks.disk_reserve_bytes,
        metrics.clone(),
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let client_router = tonic::transport::Server::builder()
        // HTTP/1.1 too, for `GET /health` and `GET /metrics` with plain HTTP clients.
        .accept_http1(true)
        .add_routes(client_routes(&api));
    let client_server = tls::serve(
        client_router,
        client_listener,
        client_tls,
        "client",
        stopped(stop_rx.clone()),
    );
    // `--listen-metrics-urls`: /metrics and /health alone, over plain HTTP/1.1 or h2c.
    let metrics_servers: Vec<_> = metrics_listeners
        .into_iter()
        .map(|l| {
            let serve = tonic::transport::Server::builder()
                .accept_http1(true)
                .add_routes(tonic::service::Routes::from(
                    crate::api::http::metrics_routes(&api),
                ))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true)),
                    stopped(stop_rx.clone()),
                );
            tokio::spawn(async move {
                if let Err(e) = serve.await {
                    tracing::warn!(error = %e, "a metrics listener stopped");
                }
            })
        })
        .collect();
    let timeouts = PeerTimeouts::for_election(config.election);
    let peer_router = tonic::transport::Server::builder()
        // A peer that vanished (a partition) is noticed from this side too.
        .http2_keepalive_interval(Some(timeouts.keepalive_interval))
        .http2_keepalive_timeout(Some(timeouts.keepalive_timeout))
        .add_service(
            RaftServer::new(
                RaftService::new(cluster_id, me.id, inbound_tx, api, faults, removal.clone())
                    .with_peers(peers_for_service)
                    .with_metrics(metrics),
            )
            .max_decoding_message_size(PEER_MSG_BYTES_MAX)
            .max_encoding_message_size(PEER_MSG_BYTES_MAX),
        );
    let peer_server = tls::serve(
        peer_router,
        peer_listener,
        peer_tls,
        "peer",
        stopped(stop_rx),
    );
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
    address_book.abort();
    prober.abort();
    rtt_prober.abort();
    dashboard.abort();
    for s in metrics_servers {
        s.abort();
    }
    if let Some(c) = compactor {
        c.abort();
    }
    if let Some(c) = corruption_check {
        c.abort();
    }
    disk_space_watch.abort();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = client_server.await;
        let _ = peer_server.await;
    })
    .await;
    result
}

/// Who this member is: its data dir's member file; else, for a data dir from before member
/// files or a new cluster's member, the ids `--initial-cluster` gives; else (an empty data dir
/// and `--initial-cluster-state existing`) what the running cluster says, after `member add`,
/// written to the member file before anything else. Also returns the members a join was told
/// of.
async fn who_am_i(
    config: &ServerConfig,
    me: &crate::cluster::Member,
    tls: &tls::PeerClientTls,
) -> Result<(MemberFile, Vec<JoinMember>), ServerError> {
    let spec = &config.cluster;
    let from_flags = storage::Identity {
        cluster_id: spec.cluster_id,
        node_id: me.id,
    };
    if let Some(file) = member_file::read(&config.data_dir)? {
        // `new` names the cluster this member bootstraps: a data dir of another cluster or
        // member is the wrong one (a typo in --data-dir). A member that joined later, or one
        // whose --initial-cluster changed since, restarts with `existing`, which trusts the
        // data dir, as etcd does.
        if config.new_cluster && file.identity != from_flags {
            return Err(ServerError::Config(format!(
                "data dir belongs to {}, but this server is {from_flags} (restart it with \
                 --initial-cluster-state existing if it joined later or the flags changed)",
                file.identity
            )));
        }
        return Ok((file, Vec::new()));
    }
    let empty = storage::Store::is_empty(&config.data_dir.join("raft"))?;
    if config.new_cluster || !empty {
        let file = MemberFile {
            identity: from_flags,
            bootstrap: spec.members.keys().copied().collect(),
        };
        return Ok((file, Vec::new()));
    }
    let others: Vec<String> = spec
        .members
        .values()
        .filter(|m| m.peer_url != me.peer_url)
        .map(|m| m.peer_url.clone())
        .collect();
    tracing::info!(peers = ?others, "empty data dir and --initial-cluster-state existing: asking the cluster who this member is");
    let answer = crate::peer::join::ask(&others, &me.peer_url, JOIN_DEADLINE, tls).await?;
    // etcd's check: --initial-cluster must list the running cluster's members.
    for url in spec.members.values().map(|m| &m.peer_url) {
        if !answer.members.iter().any(|m| m.peer_urls.contains(url)) {
            return Err(ServerError::Config(format!(
                "--initial-cluster has {url}, which is no member's peer URL in the running \
                 cluster {:#x}",
                answer.cluster_id
            )));
        }
    }
    let bootstrap = answer
        .bootstrap_voters
        .iter()
        .map(|&v| raft::NodeId::new(v))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| ServerError::Config("the cluster's join answer lists voter 0".into()))?;
    let node_id = raft::NodeId::new(answer.member_id)
        .ok_or_else(|| ServerError::Config("the cluster's join answer gives id 0".into()))?;
    let file = MemberFile {
        identity: storage::Identity {
            cluster_id: answer.cluster_id,
            node_id,
        },
        bootstrap,
    };
    member_file::write(&config.data_dir, &file)?;
    tracing::info!(
        id = format!("{:x}", answer.member_id),
        cluster = format!("{:#x}", answer.cluster_id),
        "joining the running cluster"
    );
    Ok((file, answer.members))
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
