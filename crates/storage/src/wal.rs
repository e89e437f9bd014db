//! Our own segmented write-ahead log: the Raft log and its metadata in one append-only stream.
//!
//! ```text
//!   <dir>/0000000000000001.wal   [header][checkpoint][append][append][compact][append]...[zeros]
//!   <dir>/0000000000000002.wal   [header][checkpoint][append]...            (the active one)
//!   <dir>/0000000000000003.wal.tmp  the next segment, being zero-filled in the background
//! ```
//!
//! Every change is one framed record (`wal/record.rs`), written with one `pwrite` and made durable
//! with one `fdatasync` before the call returns: a whole `Ready` (hard state and entries) is one
//! record, so a crash shows all of it or none of it, and many proposals share one sync (group
//! commit). Segments are zero-filled before use (`wal/segment.rs`), so a sync writes data blocks only.
//!
//! Replaying the records in order rebuilds the log's state (`LogState`): the hard state, membership, log start,
//! last index and where each entry sits. Each segment starts with a checkpoint of that state,
//! so a segment whose entries are all compacted away can be deleted and the replay starts at
//! the next one.
//!
//! Recovery rules (issue 6):
//! - A bad frame in the last segment with no valid frame after it, and with a sector still
//!   unwritten (all zeros) or an end past the end of the file, is a torn tail (the write in
//!   flight when the machine stopped; it was never acknowledged): it is zeroed and the log goes
//!   on from there, with a warning. Stray bytes after the log's end are zeroed too.
//! - Any other bad frame, a bad header, a segment missing from the sequence, or an entry whose
//!   segment is gone refuses to open with an error naming the file and offset.
//!
//! Why not fjall: with one sync per 64 entries fjall reached 52% of the raw `fdatasync` rate
//! times 64 (the issue asks for 70%), and a flipped byte in its version file aborted the
//! process. See BENCHMARKS.md for the measurements.

pub(crate) mod record;
pub(crate) mod segment;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use raft::{Entry, EntryId, HardState, Index, Membership};

use crate::codec;
use crate::error::StorageError;
use crate::identity::Identity;
use crate::snapshot::sync_dir;
use record::{Checkpoint, Frame, Record};
use segment::{Prealloc, HEADER_BYTES};

/// Largest record payload; the WAL refuses bigger appends.
pub const RECORD_BYTES_MAX: u64 = record::PAYLOAD_BYTES_MAX as u64;
/// Reads of adjacent entries are merged into one `pread` up to this many bytes.
const READ_RUN_BYTES_MAX: u64 = 1 << 20;

/// Where an entry's encoded bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc {
    /// Segment sequence number.
    seq: u64,
    /// Offset of the encoded entry in the segment file.
    offset: u64,
    /// Length of the encoded entry; 0 while replay has not found the entry yet.
    len: u32,
}

/// The log as the records written so far define it.
#[derive(Debug, Default)]
pub(crate) struct LogState {
    /// The last durable hard state.
    pub hard_state: HardState,
    /// The last durable membership.
    pub membership: Membership,
    /// The last compacted entry. Invariant: `log_start.index <= last_index`.
    pub log_start: EntryId,
    /// The last entry.
    pub last_index: Index,
    /// `locs[i]` is where entry `log_start.index + 1 + i` is. Invariant: `locs.len() ==
    /// last_index - log_start.index`, and every `len > 0` once replay has finished.
    locs: VecDeque<Loc>,
}

impl LogState {
    fn from_checkpoint(c: &Checkpoint) -> LogState {
        let n = c.last_index.0.saturating_sub(c.log_start.index.0);
        LogState {
            hard_state: c.hard_state,
            membership: c.membership.clone(),
            log_start: c.log_start,
            last_index: c.last_index.max(c.log_start.index),
            locs: (0..n)
                .map(|_| Loc {
                    seq: 0,
                    offset: 0,
                    len: 0,
                })
                .collect(),
        }
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            hard_state: self.hard_state,
            membership: self.membership.clone(),
            log_start: self.log_start,
            last_index: self.last_index,
        }
    }

    fn drop_through(&mut self, to: Index) {
        let n = to.0.saturating_sub(self.log_start.index.0) as usize;
        self.locs.drain(..n.min(self.locs.len()));
    }

    /// Applies one record found at `payload_offset` of segment `seq`. An error means the
    /// record does not fit the log before it (corruption during replay, a bug when writing).
    fn apply(&mut self, rec: &Record, seq: u64, payload_offset: u64) -> Result<(), String> {
        match rec {
            Record::Checkpoint(c) => {
                if *c != self.checkpoint() {
                    return Err(format!(
                        "checkpoint {c:?} disagrees with the log before it {:?}",
                        self.checkpoint()
                    ));
                }
            }
            Record::Append {
                hard_state,
                first,
                entries,
            } => {
                if !entries.is_empty() {
                    let new_last = first
                        .0
                        .checked_add(entries.len() as u64 - 1)
                        .ok_or("append past the largest index")?;
                    if *first <= self.log_start.index
                        || first.0 > self.last_index.0.saturating_add(1)
                    {
                        return Err(format!(
                            "append at {first} does not fit a log of {}..={}",
                            self.log_start.index.next(),
                            self.last_index
                        ));
                    }
                    self.locs
                        .truncate((first.0 - self.log_start.index.0 - 1) as usize);
                    self.locs.extend(entries.iter().map(|&(off, len)| Loc {
                        seq,
                        offset: payload_offset + u64::from(off),
                        len,
                    }));
                    self.last_index = Index(new_last);
                }
                if let Some(hs) = hard_state {
                    self.hard_state = *hs;
                }
            }
            Record::Membership(m) => self.membership = m.clone(),
            Record::Compact(to) => {
                if to.index < self.log_start.index || to.index > self.last_index {
                    return Err(format!(
                        "compaction to {} outside the log {}..={}",
                        to.index, self.log_start.index, self.last_index
                    ));
                }
                self.drop_through(to.index);
                self.log_start = *to;
            }
            Record::Reset {
                to,
                hard_state,
                membership,
                keep_suffix,
            } => {
                if *keep_suffix {
                    if to.index <= self.log_start.index || to.index > self.last_index {
                        return Err(format!(
                            "reset keeping the entries after {} outside the log {}..={}",
                            to.index, self.log_start.index, self.last_index
                        ));
                    }
                    self.drop_through(to.index);
                } else {
                    self.locs.clear();
                    self.last_index = to.index;
                }
                self.log_start = *to;
                self.hard_state = *hard_state;
                self.membership = membership.clone();
            }
        }
        debug_assert_eq!(
            self.locs.len() as u64,
            self.last_index.0 - self.log_start.index.0
        );
        Ok(())
    }

    fn loc(&self, index: Index) -> Loc {
        assert!(
            index > self.log_start.index && index <= self.last_index,
            "entry {index} outside {:?}..={}",
            self.log_start,
            self.last_index
        );
        self.locs[(index.0 - self.log_start.index.0 - 1) as usize]
    }
}

struct Segment {
    seq: u64,
    path: PathBuf,
    file: File,
}

/// The write-ahead log of one node.
pub(crate) struct Wal {
    dir: PathBuf,
    identity: Identity,
    /// Size segments are created with; a record that does not fit starts a new one.
    segment_bytes: u64,
    /// Oldest first; the last is the active one. Never empty; sequence numbers contiguous.
    segments: VecDeque<Segment>,
    /// Where the next frame goes in the active segment.
    write_at: u64,
    /// Where the active segment's first frame after its checkpoint starts.
    active_data_start: u64,
    state: LogState,
    /// Reused encoding buffer.
    buf: Vec<u8>,
    /// The next segment being prepared.
    prealloc: Option<Prealloc>,
    /// Told how long each append's `fdatasync` took, if set (see [`Wal::observe_syncs`]).
    sync_observer: Option<SyncObserver>,
}

/// Told the duration of one `fdatasync` of an append (for metrics: etcd's
/// `etcd_disk_wal_fsync_duration_seconds`).
pub type SyncObserver = Box<dyn Fn(std::time::Duration) + Send + Sync>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StorageError + 'a {
    move |e| StorageError::io(op, path, e)
}

impl Wal {
    /// Opens the log in `dir` and replays it, or creates it if the directory has no segment
    /// and `create_if_empty` (the caller knows no other state exists: a data dir with
    /// snapshots but no log has lost its log, and with it the node's term and vote). Returns
    /// whether it was created. The caller holds the data dir's lock.
    pub fn open(
        dir: &Path,
        identity: Identity,
        segment_bytes: u64,
        create_if_empty: bool,
    ) -> Result<(Wal, bool), StorageError> {
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let mut seqs = Vec::new();
        for e in fs::read_dir(dir).map_err(io_err("list", dir))? {
            let e = e.map_err(io_err("list", dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(seq) = segment::parse_name(&name) {
                seqs.push(seq);
            } else if name.ends_with(".wal.tmp") {
                // A segment being preallocated when the process stopped; never part of the log.
                fs::remove_file(e.path()).map_err(io_err("remove", &e.path()))?;
            }
        }
        seqs.sort_unstable();
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            identity,
            segment_bytes,
            segments: VecDeque::new(),
            write_at: 0,
            active_data_start: 0,
            state: LogState::default(),
            buf: Vec::new(),
            prealloc: None,
            sync_observer: None,
        };
        let created = seqs.is_empty();
        if created {
            if !create_if_empty {
                return Err(StorageError::corrupt(
                    dir.display().to_string(),
                    0,
                    "the log has no segment files, but the data dir holds snapshots: the log \
                     (with the node's term and vote) is missing",
                ));
            }
            wal.start_segment(1, None)?;
        } else {
            // Bound what a (checksum-valid but nonsensical) checkpoint may claim: every entry
            // takes at least ENTRY_BYTES_MIN bytes of some segment.
            let mut total = 0u64;
            for &seq in &seqs {
                let p = dir.join(segment::file_name(seq));
                total += fs::metadata(&p).map_err(io_err("stat", &p))?.len();
            }
            let entries_max = total / record::ENTRY_BYTES_MIN;
            for w in seqs.windows(2) {
                if w[1] != w[0] + 1 {
                    return Err(StorageError::corrupt(
                        dir.join(segment::file_name(w[0] + 1)).display().to_string(),
                        0,
                        format!(
                            "log segment missing between {} and {}",
                            segment::file_name(w[0]),
                            segment::file_name(w[1])
                        ),
                    ));
                }
            }
            let mut state = None;
            for (i, &seq) in seqs.iter().enumerate() {
                wal.replay_segment(seq, i + 1 == seqs.len(), entries_max, &mut state)?;
            }
            wal.state = state.expect("at least one segment replayed");
            if let Some(i) = wal.state.locs.iter().position(|l| l.len == 0) {
                let index = wal.state.log_start.index.plus(i as u64 + 1);
                return Err(StorageError::corrupt(
                    dir.join(segment::file_name(seqs[0])).display().to_string(),
                    0,
                    format!(
                        "entry {index} is missing: the log starts at {} but the oldest segment \
                         does not hold it (a segment was deleted?)",
                        wal.state.log_start.index.next()
                    ),
                ));
            }
            wal.remove_dead_segments();
        }
        let next = wal.active().seq.checked_add(1).ok_or_else(|| {
            StorageError::corrupt(dir.display().to_string(), 0, "segment numbers exhausted")
        })?;
        wal.prealloc = Some(Prealloc::start(dir, next, segment_bytes));
        Ok((wal, created))
    }

    /// Replays one segment into `state` (`None` before the first checkpoint). A checkpoint
    /// may claim at most `entries_max` entries (what the segments could hold).
    fn replay_segment(
        &mut self,
        seq: u64,
        last: bool,
        entries_max: u64,
        state: &mut Option<LogState>,
    ) -> Result<(), StorageError> {
        let path = self.dir.join(segment::file_name(seq));
        let name = path.display().to_string();
        let corrupt =
            |offset: usize, reason: String| StorageError::corrupt(&name, offset as u64, reason);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let buf = fs::read(&path).map_err(io_err("read", &path))?;
        let found = segment::decode_header(&buf, seq).map_err(|r| corrupt(0, r))?;
        if found != self.identity {
            if state.is_none() {
                return Err(StorageError::IdentityMismatch {
                    expected: self.identity,
                    found,
                });
            }
            return Err(corrupt(0, format!("segment belongs to {found}")));
        }
        let mut at = HEADER_BYTES as usize;
        let mut first = true;
        loop {
            match record::parse_frame(&buf, at, seq) {
                Frame::Valid { payload, len, next } => {
                    let rec = record::decode(&buf[payload..payload + len])
                        .map_err(|r| corrupt(at, format!("bad record: {r}")))?;
                    match (first, &rec, state.as_mut()) {
                        (true, Record::Checkpoint(c), None) => {
                            let n = c.last_index.0.saturating_sub(c.log_start.index.0);
                            if n > entries_max {
                                return Err(corrupt(
                                    at,
                                    format!("checkpoint claims {n} entries, more than the segments can hold"),
                                ));
                            }
                            *state = Some(LogState::from_checkpoint(c));
                        }
                        (true, Record::Checkpoint(_), Some(s)) | (false, _, Some(s)) => s
                            .apply(&rec, seq, payload as u64)
                            .map_err(|r| corrupt(at, r))?,
                        _ => {
                            return Err(corrupt(
                                at,
                                "segment does not start with a checkpoint".into(),
                            ))
                        }
                    }
                    if first {
                        self.active_data_start = next as u64;
                    }
                    first = false;
                    at = next;
                }
                Frame::End => {
                    if let Some(o) = record::find_valid_frame(&buf, at, seq) {
                        return Err(corrupt(
                            at,
                            format!("zeroed bytes before a valid frame at offset {o}"),
                        ));
                    }
                    if last {
                        // Stray bytes in the unused space would sit at a frame boundary once
                        // the log grows to them; they are not part of the log.
                        Self::zero_tail(&file, &buf, at, &name, "stray bytes after the log's end")
                            .map_err(io_err("zero the unused tail of", &path))?;
                    }
                    break;
                }
                Frame::Bad(reason) => {
                    let later = record::find_valid_frame(&buf, at + record::FRAME_ALIGN, seq);
                    if !last || first || later.is_some() {
                        return Err(corrupt(at, reason));
                    }
                    if !record::has_unwritten_sector(&buf, at) {
                        return Err(corrupt(
                            at,
                            format!(
                                "{reason}: the last write is complete on disk but damaged (not \
                                 a torn write), so an acknowledged write would be lost"
                            ),
                        ));
                    }
                    // A torn tail: the write in flight at a crash, never acknowledged.
                    Self::zero_tail(&file, &buf, at, &name, &reason)
                        .map_err(io_err("zero the torn tail of", &path))?;
                    break;
                }
            }
        }
        if first {
            return Err(corrupt(at, "segment has no checkpoint".into()));
        }
        self.segments.push_back(Segment { seq, path, file });
        self.write_at = at as u64;
        Ok(())
    }

    /// Zeroes `at..` up to the last non-zero byte of the segment held in `buf`, with a warning
    /// saying why; nothing when it is all zeros already.
    fn zero_tail(file: &File, buf: &[u8], at: usize, name: &str, why: &str) -> io::Result<()> {
        let end = buf.iter().rposition(|&b| b != 0).map_or(at, |p| p + 1);
        if end <= at {
            return Ok(());
        }
        tracing::warn!(
            file = %name,
            offset = at,
            bytes = end - at,
            reason = %why,
            "truncating the end of the log (a write that was in flight and never acknowledged)"
        );
        file.write_all_at(&vec![0u8; end - at], at as u64)?;
        file.sync_data()
    }

    /// Creates segment `seq` (from `prepared` if given), writes its header and checkpoint,
    /// syncs it and makes it the active segment.
    fn start_segment(&mut self, seq: u64, prepared: Option<Prealloc>) -> Result<(), StorageError> {
        let tmp = self.dir.join(segment::temp_name(seq));
        let prepared = match prepared {
            Some(p) if p.seq() == seq => p.take(),
            Some(p) => {
                // Not the segment we need (cannot happen); wait for it and remove it.
                let path = p.path().to_path_buf();
                let _ = p.take();
                let _ = fs::remove_file(path);
                Err(io::Error::other("no segment was prepared"))
            }
            None => Err(io::Error::other("no segment was prepared")),
        };
        let file = match prepared {
            Ok(f) => f,
            Err(e) => {
                // The background fill may have failed long ago (a disk full for a while):
                // try once more now, and fail the write only if that fails too.
                if seq > 1 {
                    tracing::warn!(file = %tmp.display(), error = %e, "preparing the next log segment failed; retrying");
                }
                let _ = fs::remove_file(&tmp);
                segment::create_zeroed(&tmp, self.segment_bytes)
                    .map_err(io_err("preallocate log segment", &tmp))?
            }
        };
        let mut b = Vec::with_capacity(256);
        b.extend_from_slice(&segment::encode_header(seq, &self.identity));
        let s = record::begin_frame(&mut b);
        record::put_checkpoint(&mut b, &self.state.checkpoint());
        record::end_frame(&mut b, s, seq, HEADER_BYTES);
        file.write_all_at(&b, 0)
            .and_then(|()| file.sync_data())
            .map_err(io_err("write the header of", &tmp))?;
        let path = self.dir.join(segment::file_name(seq));
        fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
        sync_dir(&self.dir)?;
        self.segments.push_back(Segment { seq, path, file });
        self.write_at = b.len() as u64;
        self.active_data_start = self.write_at;
        Ok(())
    }

    fn active(&self) -> &Segment {
        self.segments.back().expect("a log always has a segment")
    }

    /// The state the records define.
    pub fn state(&self) -> &LogState {
        &self.state
    }

    /// Refuses an append whose record would exceed [`RECORD_BYTES_MAX`].
    pub fn check_append_size(entries: &[Entry]) -> Result<(), StorageError> {
        let bytes = record::append_payload_bytes(entries);
        if bytes > RECORD_BYTES_MAX {
            return Err(StorageError::InvalidRequest(format!(
                "one write of {bytes} bytes exceeds the log's record limit {RECORD_BYTES_MAX}"
            )));
        }
        Ok(())
    }

    /// Frames what `put` encodes, writes it (rolling to a new segment if it does not fit) and
    /// syncs it. Returns `put`'s result, the segment and the payload's file offset.
    fn write_record<T>(
        &mut self,
        put: impl FnOnce(&mut Vec<u8>) -> T,
    ) -> Result<(T, u64, u64), StorageError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let start = record::begin_frame(&mut buf);
        let out = put(&mut buf);
        let frame_bytes = buf.len().next_multiple_of(record::FRAME_ALIGN) as u64;
        if self.write_at + frame_bytes > self.segment_bytes
            && self.write_at > self.active_data_start
        {
            let next = self.active().seq + 1;
            let prepared = self.prealloc.take();
            if let Err(e) = self.start_segment(next, prepared) {
                self.buf = buf;
                return Err(e);
            }
            self.prealloc = Some(Prealloc::start(&self.dir, next + 1, self.segment_bytes));
        }
        let (seq, at) = (self.active().seq, self.write_at);
        record::end_frame(&mut buf, start, seq, at);
        let seg = self.active();
        let written = seg
            .file
            .write_all_at(&buf, at)
            .and_then(|()| {
                let began = std::time::Instant::now();
                let synced = seg.file.sync_data();
                if let Some(observe) = &self.sync_observer {
                    observe(began.elapsed());
                }
                synced
            })
            .map_err(io_err("append to", &seg.path));
        self.write_at += buf.len() as u64;
        self.buf = buf;
        written?;
        Ok((out, seq, at + record::FRAME_HEADER_BYTES as u64))
    }

    /// Durably appends a hard state and entries (replacing stored entries from the first one
    /// on). The caller has checked that they fit the log.
    pub fn append(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        let (at, seq, payload) =
            self.write_record(|b| record::put_append(b, hard_state, entries))?;
        let rec = Record::Append {
            hard_state: hard_state.copied(),
            first: entries.first().map_or(Index(0), |e| e.index),
            entries: at,
        };
        self.state
            .apply(&rec, seq, payload)
            .expect("the store validated the append");
        Ok(())
    }

    /// Durably records a new membership.
    pub fn set_membership(&mut self, m: &Membership) -> Result<(), StorageError> {
        let ((), seq, payload) = self.write_record(|b| record::put_membership(b, m))?;
        self.state
            .apply(&Record::Membership(m.clone()), seq, payload)
            .expect("a membership always applies");
        Ok(())
    }

    /// Durably moves the log start to `to`, then deletes segments holding only compacted
    /// entries.
    pub fn compact(&mut self, to: EntryId) -> Result<(), StorageError> {
        let ((), seq, payload) = self.write_record(|b| record::put_compact(b, to))?;
        self.state
            .apply(&Record::Compact(to), seq, payload)
            .expect("the store validated the compaction");
        self.remove_dead_segments();
        Ok(())
    }

    /// Durably installs a snapshot's position (see [`Record::Reset`]).
    pub fn reset(
        &mut self,
        to: EntryId,
        hard_state: &HardState,
        membership: &Membership,
        keep_suffix: bool,
    ) -> Result<(), StorageError> {
        let ((), seq, payload) =
            self.write_record(|b| record::put_reset(b, to, hard_state, membership, keep_suffix))?;
        let rec = Record::Reset {
            to,
            hard_state: *hard_state,
            membership: membership.clone(),
            keep_suffix,
        };
        self.state
            .apply(&rec, seq, payload)
            .expect("the store validated the reset");
        self.remove_dead_segments();
        Ok(())
    }

    /// Has `observe` told the duration of every append's sync from now on.
    pub fn observe_syncs(&mut self, observe: SyncObserver) {
        self.sync_observer = Some(observe);
    }

    /// Syncs the active segment (every record is already synced when written).
    pub fn sync(&mut self) -> Result<(), StorageError> {
        let seg = self.active();
        seg.file.sync_data().map_err(io_err("sync", &seg.path))
    }

    /// Deletes the oldest segments while no entry of the log is in them. Their records are
    /// superseded: every later segment starts with a checkpoint, and the compaction that made
    /// them dead is durable. A failure to delete is logged and retried at the next compaction.
    fn remove_dead_segments(&mut self) {
        let active = self.active().seq;
        let keep = self
            .state
            .locs
            .front()
            .map_or(active, |l| l.seq)
            .min(active);
        while let Some(seg) = self.segments.front() {
            if seg.seq >= keep {
                break;
            }
            // Oldest first, each removal made durable before the next, so a crash never leaves
            // a gap in the sequence (which open refuses as a missing segment).
            match fs::remove_file(&seg.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %seg.path.display(), error = %e, "cannot delete a compacted log segment");
                    break;
                }
            }
            self.segments.pop_front();
            if let Err(e) = sync_dir(&self.dir) {
                tracing::warn!(error = %e, "cannot sync the log directory after deleting a segment");
                break;
            }
        }
    }

    fn segment(&self, seq: u64) -> &Segment {
        let front = self
            .segments
            .front()
            .expect("a log always has a segment")
            .seq;
        let s = &self.segments[(seq - front) as usize];
        debug_assert_eq!(s.seq, seq);
        s
    }

    /// Reads entries `lo..=hi` (inside the log), stopping before their total `size_bytes`
    /// passes `bytes_max` (at least one entry); the flag says whether the limit stopped it.
    /// Every entry's checksum and index are checked.
    pub fn read(
        &self,
        lo: Index,
        hi: Index,
        bytes_max: u64,
    ) -> Result<(Vec<Entry>, bool), StorageError> {
        let mut out = Vec::with_capacity((hi.0 + 1).saturating_sub(lo.0).min(4096) as usize);
        let mut bytes = 0u64;
        let mut i = lo;
        let mut span = Vec::new();
        while i <= hi {
            let first = self.state.loc(i);
            // Merge a run of entries that sit one after another in the same segment.
            let mut j = i;
            let mut end = first.offset + u64::from(first.len);
            while j < hi {
                let n = self.state.loc(j.next());
                if n.seq != first.seq
                    || n.offset < end
                    || n.offset + u64::from(n.len) - first.offset > READ_RUN_BYTES_MAX
                {
                    break;
                }
                end = n.offset + u64::from(n.len);
                j = j.next();
            }
            let seg = self.segment(first.seq);
            span.resize((end - first.offset) as usize, 0);
            seg.file
                .read_exact_at(&mut span, first.offset)
                .map_err(io_err("read", &seg.path))?;
            let mut k = i;
            while k <= j {
                let l = self.state.loc(k);
                let s = (l.offset - first.offset) as usize;
                let e = decode_at(&span[s..s + l.len as usize], k, seg, l.offset)?;
                if !out.is_empty() && bytes + e.size_bytes() > bytes_max {
                    return Ok((out, true));
                }
                bytes += e.size_bytes();
                out.push(e);
                k = k.next();
            }
            i = j.next();
        }
        Ok((out, false))
    }
}

fn decode_at(
    bytes: &[u8],
    index: Index,
    seg: &Segment,
    offset: u64,
) -> Result<Entry, StorageError> {
    let corrupt = |r: String| StorageError::corrupt(seg.path.display().to_string(), offset, r);
    let e = codec::decode_entry(bytes).map_err(corrupt)?;
    if e.index != index {
        return Err(corrupt(format!(
            "expected entry {index}, found {}",
            e.index
        )));
    }
    Ok(e)
}

impl Drop for Wal {
    fn drop(&mut self) {
        // Let the preallocation finish so no thread writes into the directory after close.
        if let Some(p) = self.prealloc.take() {
            let _ = p.take();
        }
    }
}
