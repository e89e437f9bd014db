//! etcd's Maintenance.Snapshot: a consistent point-in-time copy of this member's state machine,
//! streamed to the client as a backup file (`kv::backup`: the state machine snapshot, padding,
//! its length, then the sha256 of all that as the last message, as etcd sends it), which
//! `etcdctl snapshot save` stores and checks.
//!
//! ```text
//!   snapshot_view (settles the open group: everything applied so far is in it)
//!        |  blocking thread: serializes the view, 32 KiB a message, hashing as it goes
//!        v
//!   bounded channel (BACKUP_MESSAGES_QUEUED_MAX) --> gRPC stream --> client
//! ```
//!
//! Writes go on meanwhile: the view is a redb read transaction, which the apply thread does
//! not wait for. Memory is bounded whatever the store's size (the view's encoding buffer and
//! the channel); a client that reads slowly slows only its own thread, and one that goes away
//! closes the channel, which stops the thread and drops the view.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status};

use super::Api;
use crate::pb::etcdserverpb as epb;
use crate::rpctypes::{kv_status, ERR_TOO_MANY_REQUESTS};

/// Blob bytes per message (etcd's `snapshotSendBufferSize`).
const BACKUP_CHUNK_BYTES: usize = 32 * 1024;
/// Messages queued for the client, at most.
const BACKUP_MESSAGES_QUEUED_MAX: usize = 16;
/// Backups streamed at once by this process, at most: each holds a read transaction (redb
/// keeps the pages it sees until it ends) and a blocking thread. One more is refused with
/// etcd's "too many requests".
const BACKUPS_MAX: usize = 2;
/// A client that takes no message for this long is dropped: a stalled reader must not keep
/// the read view (and the pages it pins) and a backup permit forever.
const CLIENT_STALL_MAX: std::time::Duration = std::time::Duration::from_secs(60);
/// Permits for [`BACKUPS_MAX`]. Process-wide: one member runs per process.
static BACKUPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(BACKUPS_MAX);

/// The stream Maintenance.Snapshot answers with.
pub type SnapshotStream = ReceiverStream<Result<epb::SnapshotResponse, Status>>;

impl Api {
    /// Opens a view of the state machine and streams it from a blocking thread.
    pub(super) async fn snapshot_stream(&self) -> Result<Response<SnapshotStream>, Status> {
        let permit = BACKUPS
            .try_acquire()
            .map_err(|_| Status::resource_exhausted(ERR_TOO_MANY_REQUESTS))?;
        // Settling commits the open group: it may wait for an apply batch, so not here.
        let view = self.read_kv(|kv| kv.snapshot_view()).await?;
        let revision = view.revision().map_err(kv_status)?;
        // The first header gives the point in time of the backup (etcd's proto says so).
        let header = epb::ResponseHeader {
            revision: i64::try_from(revision).unwrap_or(i64::MAX),
            ..self.header()
        };
        let (tx, rx) = mpsc::channel(BACKUP_MESSAGES_QUEUED_MAX);
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let tx = Outlet { tx, runtime };
            send_backup(&view, header, &tx);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Streams `view` as a backup into `tx`, ending with the digest; a failure becomes the
/// stream's last message, unless the client is gone.
fn send_backup(view: &kv::SnapshotView, header: epb::ResponseHeader, tx: &Outlet) {
    let started = std::time::Instant::now();
    let result = (|| -> Result<u64, kv::Error> {
        let total = view.backup_body_bytes()?;
        tracing::info!(total_bytes = total, "sending a backup to a client");
        let mut out = Chunks {
            tx,
            buf: Vec::with_capacity(BACKUP_CHUNK_BYTES),
            total,
            sent: 0,
            header: Some(header),
        };
        let (body, digest) = view.write_backup_body(&mut out)?;
        out.send_buffered().map_err(kv::Error::Io)?;
        if body != total || out.sent != total {
            // The view is one read transaction: two passes over it must agree.
            return Err(kv::Error::Corrupt(format!(
                "the backup announced {total} bytes but wrote {body}"
            )));
        }
        out.send(epb::SnapshotResponse {
            header: None,
            remaining_bytes: 0,
            blob: digest.to_vec(),
        })
        .map_err(kv::Error::Io)?;
        Ok(total)
    })();
    match result {
        Ok(total) => tracing::info!(
            total_bytes = total,
            took_ms = started.elapsed().as_millis() as u64,
            "sent a backup to a client"
        ),
        Err(_) if tx.is_closed() => {
            tracing::info!("a client stopped reading a backup; dropped it")
        }
        Err(e) => {
            tracing::warn!(error = %e, "sending a backup failed");
            // Only if there is room: a client that stopped reading gets no more waits.
            let _ = tx.tx.try_send(Err(kv_status(e)));
        }
    }
}

/// The stream's sender, seen from the blocking thread that writes the backup.
struct Outlet {
    tx: mpsc::Sender<Result<epb::SnapshotResponse, Status>>,
    runtime: tokio::runtime::Handle,
}

impl Outlet {
    /// Queues `item`, waiting for room at most [`CLIENT_STALL_MAX`]; fails once the client is
    /// gone or has stopped reading.
    fn send(&self, item: Result<epb::SnapshotResponse, Status>) -> std::io::Result<()> {
        let queued = self
            .runtime
            .block_on(tokio::time::timeout(CLIENT_STALL_MAX, self.tx.send(item)));
        match queued {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the client went away",
            )),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client read nothing for {CLIENT_STALL_MAX:?}"),
            )),
        }
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Cuts what is written into messages of [`BACKUP_CHUNK_BYTES`], each saying how many body
/// bytes follow it (etcd's `remaining_bytes`; the digest is not counted).
struct Chunks<'a> {
    tx: &'a Outlet,
    /// Bytes not sent yet; shorter than [`BACKUP_CHUNK_BYTES`] between writes.
    buf: Vec<u8>,
    /// The body's length, announced before it is written.
    total: u64,
    /// Body bytes handed to the channel so far; `sent <= total`.
    sent: u64,
    /// For the first message only.
    header: Option<epb::ResponseHeader>,
}

impl Chunks<'_> {
    /// Sends one message, waiting for room; fails once the client is gone.
    fn send(&self, message: epb::SnapshotResponse) -> std::io::Result<()> {
        self.tx.send(Ok(message))
    }

    /// Sends what is buffered as one message.
    fn send_buffered(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let blob = std::mem::replace(&mut self.buf, Vec::with_capacity(BACKUP_CHUNK_BYTES));
        self.sent += blob.len() as u64;
        let message = epb::SnapshotResponse {
            header: self.header.take(),
            remaining_bytes: self.total.saturating_sub(self.sent),
            blob,
        };
        self.send(message)
    }
}

impl std::io::Write for Chunks<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(BACKUP_CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == BACKUP_CHUNK_BYTES {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
