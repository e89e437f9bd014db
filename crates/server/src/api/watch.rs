//! etcd's Watch service. Each member serves it from its own applied state: a watcher keeps the
//! next revision it owes the client and, whenever the state machine applies more, reads the
//! changes of its key range from there ([`kv::Store::changes`]). A slow client makes its
//! stream wait (the response queue is bounded); it falls behind in revisions, never in
//! memory. Catching up from an old `start_revision` is the same read. A watcher whose next
//! revision has been compacted away is canceled with `compact_revision`, as in etcd.
//!
//! A watcher keeps the user that created it: whenever the auth state has changed since its
//! permission was last checked, it is checked again before its next batch, and a watcher
//! whose user may no longer read its range (a role revoked, the user deleted, auth enabled
//! under an anonymous watch) is canceled with etcd's "permission denied" instead of being
//! sent anything more (etcd 3.4 goes on sending).
//!
//! Differences from etcd: events within one revision come in key order (etcd: the order of the
//! transaction's operations), and a key put and then deleted in one transaction shows only
//! the delete. Not done (yet): response fragmentation (`fragment`); all events of a revision
//! go in one response, so a huge transaction makes one huge response.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::{convert, Api};
use crate::pb::etcdserverpb as epb;
use crate::pb::mvccpb;
use crate::rpctypes::kv_status;

/// Responses queued per stream before the stream waits for its client.
const OUT_QUEUE_MAX: usize = 16;
/// Watchers per stream.
const WATCHERS_PER_STREAM_MAX: usize = 4096;
/// Events per response (a revision is never split, so a response can hold more).
const EVENTS_PER_RESPONSE_MAX: usize = 1000;
/// How often a watcher created with `progress_notify` hears the revision while idle (etcd:
/// 10 minutes).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(600);
const ERR_COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const ERR_DUPLICATE_ID: &str = "etcdserver: duplicate watch ID";
const ERR_TOO_MANY_WATCHERS: &str = "etcdserver: too many watchers on one stream";

type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<epb::WatchResponse, Status>> + Send>>;
type Out = mpsc::Sender<Result<epb::WatchResponse, Status>>;

/// One watcher of a stream.
struct Watcher {
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// The next revision to read. Invariant: every event before it was sent.
    next: u64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    /// Something was sent since the last progress tick.
    active: bool,
    /// The user that created it (empty: anonymous), whose read permission on the range it
    /// needs to go on.
    user: String,
    /// The auth revision its permission was last checked at.
    checked_at: u64,
}

/// The stream ended (the client went away or the server is stopping).
struct Closed;

/// Who opened a watch stream: its gRPC metadata (the token) and its verified client
/// certificate's common name; each create resolves the caller again, as etcd's does.
type Credentials = (tonic::metadata::MetadataMap, Option<String>);

#[tonic::async_trait]
impl epb::watch_server::Watch for Api {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<epb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // Kept for the stream's life: each create resolves its token again, as etcd's does.
        let metadata = (
            request.metadata().clone(),
            crate::tls::client_cert_cn(&request),
        );
        let input = request.into_inner();
        let (tx, rx) = mpsc::channel(OUT_QUEUE_MAX);
        let api = self.clone();
        tokio::spawn(async move {
            let _ = api.run_watch_stream(input, metadata, tx).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

impl Api {
    fn watch_header(&self, revision: u64) -> epb::ResponseHeader {
        epb::ResponseHeader {
            revision: revision as i64,
            ..self.header()
        }
    }

    async fn revisions(&self) -> Result<(u64, u64), Status> {
        let kv = self.inner.node.kv.clone();
        tokio::task::spawn_blocking(move || kv.revisions())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(kv_status)
    }

    /// Serves one Watch stream until the client or the server goes away. Each pass sends at
    /// most one batch per watcher that is behind, so one busy watcher cannot starve the others,
    /// and requests are read between passes. Progress answers wait until every watcher has
    /// caught up, so a progress revision never runs ahead of events still owed (as etcd
    /// 3.4.25+/3.5.8+).
    async fn run_watch_stream(
        &self,
        mut input: Streaming<epb::WatchRequest>,
        metadata: Credentials,
        out: Out,
    ) -> Result<(), Closed> {
        let mut applied = self.inner.node.applied_changes();
        let mut watchers: BTreeMap<i64, Watcher> = BTreeMap::new();
        let mut next_id: i64 = 0;
        let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
        progress.tick().await;
        // The client may close its side after its requests (etcd keeps serving).
        let mut input_open = true;
        let mut progress_asked = false;
        let mut progress_due = false;
        loop {
            // Nothing is owed on a stream without watchers: no read then.
            let revision = if watchers.is_empty() {
                0
            } else {
                self.revisions().await.map_err(|_| Closed)?.0
            };
            let mut behind = false;
            let ids: Vec<i64> = watchers.keys().copied().collect();
            for id in ids {
                behind |= self
                    .deliver_batch(id, revision, &mut watchers, &out)
                    .await?;
            }
            if behind {
                // More to send: read any request that is already waiting, then go on.
                tokio::select! {
                    biased;
                    m = input.message(), if input_open => {
                        self.on_message(m, &mut input_open, &mut progress_asked, &mut watchers, &mut next_id, &metadata, &out).await?;
                    }
                    () = out.closed() => return Err(Closed),
                    () = std::future::ready(()) => {}
                }
                continue;
            }
            // Every watcher has everything through `revision`.
            if progress_asked {
                progress_asked = false;
                if !watchers.is_empty() {
                    send(
                        &out,
                        epb::WatchResponse {
                            header: Some(self.watch_header(revision)),
                            watch_id: -1,
                            ..Default::default()
                        },
                    )
                    .await?;
                }
            }
            if progress_due {
                progress_due = false;
                for (id, w) in watchers.iter_mut() {
                    if w.progress_notify && !w.active {
                        send(
                            &out,
                            epb::WatchResponse {
                                header: Some(self.watch_header(revision)),
                                watch_id: *id,
                                ..Default::default()
                            },
                        )
                        .await?;
                    }
                    w.active = false;
                }
            }
            tokio::select! {
                m = input.message(), if input_open => {
                    self.on_message(m, &mut input_open, &mut progress_asked, &mut watchers, &mut next_id, &metadata, &out).await?;
                }
                r = applied.changed() => {
                    if r.is_err() {
                        return Err(Closed);
                    }
                }
                _ = progress.tick() => progress_due = true,
                () = out.closed() => return Err(Closed),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn on_message(
        &self,
        m: Result<Option<epb::WatchRequest>, Status>,
        input_open: &mut bool,
        progress_asked: &mut bool,
        watchers: &mut BTreeMap<i64, Watcher>,
        next_id: &mut i64,
        metadata: &Credentials,
        out: &Out,
    ) -> Result<(), Closed> {
        match m {
            Ok(Some(req)) => {
                self.handle_request(req, watchers, next_id, progress_asked, metadata, out)
                    .await
            }
            Ok(None) => {
                *input_open = false;
                Ok(())
            }
            Err(_) => Err(Closed),
        }
    }

    async fn handle_request(
        &self,
        req: epb::WatchRequest,
        watchers: &mut BTreeMap<i64, Watcher>,
        next_id: &mut i64,
        progress_asked: &mut bool,
        metadata: &Credentials,
        out: &Out,
    ) -> Result<(), Closed> {
        use epb::watch_request::RequestUnion;
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => {
                self.create_watcher(c, watchers, next_id, metadata, out)
                    .await
            }
            Some(RequestUnion::CancelRequest(c)) => {
                if watchers.remove(&c.watch_id).is_some() {
                    let (revision, _) = self.revisions().await.map_err(|_| Closed)?;
                    send(
                        out,
                        epb::WatchResponse {
                            header: Some(self.watch_header(revision)),
                            watch_id: c.watch_id,
                            canceled: true,
                            ..Default::default()
                        },
                    )
                    .await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Answered once every watcher has caught up (see `run_watch_stream`).
                *progress_asked = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn create_watcher(
        &self,
        c: epb::WatchCreateRequest,
        watchers: &mut BTreeMap<i64, Watcher>,
        next_id: &mut i64,
        metadata: &Credentials,
        out: &Out,
    ) -> Result<(), Closed> {
        let (revision, _) = match self.revisions().await {
            Ok(r) => r,
            Err(status) => {
                let _ = out.send(Err(status)).await;
                return Err(Closed);
            }
        };
        let refuse = |id: i64, reason: &str| epb::WatchResponse {
            header: Some(self.watch_header(revision)),
            watch_id: id,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..Default::default()
        };
        // etcd's `isWatchPermitted`: the caller needs read on the whole range; a refusal is
        // a created-and-canceled answer carrying etcd's auth error.
        let caller = match self.caller(&metadata.0, metadata.1.clone()).await {
            Ok(caller) => self
                .check_permission(&caller, || {
                    kv::Request::Range(kv::RangeRequest::range(c.key.clone(), c.range_end.clone()))
                })
                .map(|()| caller),
            Err(status) => Err(status),
        };
        let caller = match caller {
            Ok(caller) => caller,
            Err(status) => return send(out, refuse(-1, status.message())).await,
        };
        // etcd: an explicit id (non-zero) must be free; 0 asks for the next free one. Ids
        // handed out only go up, so a canceled watcher's id is not reused on this stream.
        // A refused create is answered under id -1, as in etcd.
        let id = if c.watch_id != 0 {
            if watchers.contains_key(&c.watch_id) {
                return send(out, refuse(-1, ERR_DUPLICATE_ID)).await;
            }
            c.watch_id
        } else {
            while watchers.contains_key(next_id) {
                *next_id += 1;
            }
            *next_id
        };
        if watchers.len() >= WATCHERS_PER_STREAM_MAX {
            return send(out, refuse(-1, ERR_TOO_MANY_WATCHERS)).await;
        }
        if c.watch_id == 0 {
            *next_id += 1;
        }
        use epb::watch_create_request::FilterType;
        let filter = |f: FilterType| c.filters.contains(&(f as i32));
        // An empty key watches from the smallest key, as in etcd.
        let key = if c.key.is_empty() { vec![0] } else { c.key };
        let next = match c.start_revision {
            r if r > 0 => r as u64,
            _ => revision + 1,
        };
        watchers.insert(
            id,
            Watcher {
                key,
                range_end: c.range_end,
                next,
                prev_kv: c.prev_kv,
                no_put: filter(FilterType::Noput),
                no_delete: filter(FilterType::Nodelete),
                progress_notify: c.progress_notify,
                active: true,
                user: caller.user,
                checked_at: caller.revision,
            },
        );
        send(
            out,
            epb::WatchResponse {
                header: Some(self.watch_header(revision)),
                watch_id: id,
                created: true,
                ..Default::default()
            },
        )
        .await
    }

    /// Sends watcher `id` its next batch of changes up to `revision` (at most
    /// [`EVENTS_PER_RESPONSE_MAX`] events, whole revisions). Returns whether it is still
    /// behind `revision`.
    async fn deliver_batch(
        &self,
        id: i64,
        revision: u64,
        watchers: &mut BTreeMap<i64, Watcher>,
        out: &Out,
    ) -> Result<bool, Closed> {
        let Some(w) = watchers.get_mut(&id) else {
            return Ok(false);
        };
        if w.next > revision {
            return Ok(false);
        }
        // The auth state changed since the watcher's permission was checked: check again
        // before sending anything more.
        let auth = self.inner.node.kv.auth_state();
        if auth.revision != w.checked_at {
            let range =
                kv::Request::Range(kv::RangeRequest::range(w.key.clone(), w.range_end.clone()));
            let denied = self.inner.node.kv.auth_check(&w.user, &range).err();
            w.checked_at = auth.revision;
            if let Some(denied) = denied {
                watchers.remove(&id);
                return send(
                    out,
                    epb::WatchResponse {
                        header: Some(self.watch_header(revision)),
                        watch_id: id,
                        canceled: true,
                        cancel_reason: kv_status(denied).message().to_string(),
                        ..Default::default()
                    },
                )
                .await
                .map(|()| false);
            }
        }
        let kv = self.inner.node.kv.clone();
        let (key, end, from, prev) = (w.key.clone(), w.range_end.clone(), w.next, w.prev_kv);
        let read = tokio::task::spawn_blocking(move || {
            match kv.changes(&key, &end, from, EVENTS_PER_RESPONSE_MAX, prev) {
                Err(kv::Error::Kv(kv::KvError::Compacted)) => Err(kv.revisions().map(|r| r.1)),
                other => Ok(other),
            }
        })
        .await
        .map_err(|_| Closed)?;
        let changes = match read {
            Ok(Ok(c)) => c,
            Err(Ok(compacted)) => {
                watchers.remove(&id);
                send(
                    out,
                    epb::WatchResponse {
                        header: Some(self.watch_header(revision)),
                        watch_id: id,
                        canceled: true,
                        compact_revision: compacted as i64,
                        cancel_reason: ERR_COMPACTED.to_string(),
                        ..Default::default()
                    },
                )
                .await?;
                return Ok(false);
            }
            Ok(Err(e)) | Err(Err(e)) => {
                let _ = out.send(Err(kv_status(e))).await;
                return Err(Closed);
            }
        };
        let events: Vec<mvccpb::Event> = changes
            .events
            .into_iter()
            .filter(|e| match e.kind {
                kv::EventKind::Put => !w.no_put,
                kv::EventKind::Delete => !w.no_delete,
            })
            .map(event)
            .collect();
        w.next = changes.next;
        let behind = w.next <= revision;
        if !events.is_empty() {
            w.active = true;
            send(
                out,
                epb::WatchResponse {
                    header: Some(self.watch_header(changes.revision)),
                    watch_id: id,
                    events,
                    ..Default::default()
                },
            )
            .await?;
        }
        Ok(behind)
    }
}

fn event(e: kv::Event) -> mvccpb::Event {
    let kind = match e.kind {
        kv::EventKind::Put => mvccpb::event::EventType::Put,
        kv::EventKind::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(convert::key_value(e.kv)),
        prev_kv: e.prev_kv.map(convert::key_value),
    }
}

async fn send(out: &Out, resp: epb::WatchResponse) -> Result<(), Closed> {
    out.send(Ok(resp)).await.map_err(|_| Closed)
}
