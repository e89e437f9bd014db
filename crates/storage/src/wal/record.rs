//! Records of the write-ahead log and their frames.
//!
//! A frame is `[magic u32][len u32][crc u32][payload: len bytes][zero padding to 8]`, all
//! little-endian. The CRC covers the segment's sequence number, the frame's file offset, `len`
//! and the payload, so a frame copied to another place (or a forged frame inside an entry's
//! data) does not check. Frames start 8-byte aligned, so a scan for surviving frames after a
//! bad one only tries aligned offsets.
//!
//! A payload is `[kind u8][fields]`. Fields reuse the sealed encodings of [`crate::codec`]
//! (each `[u32 len][sealed value]`), so every value keeps its own version byte and CRC.

use raft::{Entry, EntryId, HardState, Index, Membership};

use crate::codec::{self, Reader};

/// First four bytes of every frame ("SKWL").
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"SKWL");
/// Bytes of a frame before its payload.
pub const FRAME_HEADER_BYTES: usize = 12;
/// Frames start at multiples of this.
pub const FRAME_ALIGN: usize = 8;
/// Largest payload a frame may claim; bounds allocation and scanning on corrupt input.
pub const PAYLOAD_BYTES_MAX: usize = 1 << 30;
/// Bytes an entry takes in an append at the least: its length prefix, version, kind tag,
/// term, index, data length and CRC.
pub const ENTRY_BYTES_MIN: u64 = 4 + 1 + 1 + 8 + 8 + 4 + 4;
/// Bytes of an append payload besides its entries, at most: kind, flag, sealed hard state
/// with its length prefix, entry count.
const APPEND_FIXED_BYTES_MAX: u64 = 1 + 1 + 4 + 1 + 24 + 4 + 4;

/// The exact payload size of an append of `entries` (with a hard state), so that a write too
/// large for one record is refused before anything is encoded.
pub fn append_payload_bytes(entries: &[Entry]) -> u64 {
    let data = |e: &Entry| match &e.kind {
        raft::EntryKind::Membership(m) => {
            12 + 8 * (m.voters.len() + m.voters_outgoing.len() + m.learners.len()) as u64
        }
        _ => e.data.len() as u64,
    };
    APPEND_FIXED_BYTES_MAX
        + entries
            .iter()
            .map(|e| ENTRY_BYTES_MIN + data(e))
            .sum::<u64>()
}

const KIND_CHECKPOINT: u8 = 1;
const KIND_APPEND: u8 = 2;
const KIND_MEMBERSHIP: u8 = 3;
const KIND_COMPACT: u8 = 4;
const KIND_RESET: u8 = 5;

/// The log's metadata as of a point in the log. Written first in every segment, so that the
/// oldest remaining segment alone says where the log starts once older ones are deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last durable hard state.
    pub hard_state: HardState,
    /// The last durable membership.
    pub membership: Membership,
    /// The last compacted entry.
    pub log_start: EntryId,
    /// The last entry of the log.
    pub last_index: Index,
}

/// One decoded record. Entries of an append are not decoded: the frame's CRC has checked their
/// bytes, and readers decode (and check) each one again when they read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// The metadata at the start of a segment.
    Checkpoint(Checkpoint),
    /// A synced append: an optional hard state and entries `first..first + n` (replacing any
    /// stored entries from `first` on).
    Append {
        /// The new hard state, if it changed.
        hard_state: Option<HardState>,
        /// Index of the first entry (ignored when there are none).
        first: Index,
        /// Each entry's `(offset in the payload, length)`.
        entries: Vec<(u32, u32)>,
    },
    /// A new membership.
    Membership(Membership),
    /// The log now starts after this entry.
    Compact(EntryId),
    /// A snapshot was installed at `to`: the log starts after it, and the entries after it are
    /// kept only if `keep_suffix` (the log held `to` itself).
    Reset {
        /// The snapshot's last entry.
        to: EntryId,
        /// Hard state written with the reset.
        hard_state: HardState,
        /// The snapshot's membership.
        membership: Membership,
        /// Whether entries after `to` stay.
        keep_suffix: bool,
    },
}

/// Starts a frame in `buf` (which may already hold earlier frames); returns where it starts.
pub fn begin_frame(buf: &mut Vec<u8>) -> usize {
    debug_assert!(buf.len().is_multiple_of(FRAME_ALIGN));
    let start = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    start
}

/// Finishes the frame begun at `start`: header and padding, for a frame that will sit at
/// `file_offset` of segment `seq`.
pub fn end_frame(buf: &mut Vec<u8>, start: usize, seq: u64, file_offset: u64) {
    let len = buf.len() - start - FRAME_HEADER_BYTES;
    assert!(len <= PAYLOAD_BYTES_MAX, "record of {len} bytes");
    let len32 = len as u32;
    let crc = frame_crc(seq, file_offset, len32, &buf[start + FRAME_HEADER_BYTES..]);
    buf[start..start + 4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&len32.to_le_bytes());
    buf[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    let padded = buf.len().next_multiple_of(FRAME_ALIGN);
    buf.resize(padded, 0);
}

fn frame_crc(seq: u64, file_offset: u64, len: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&file_offset.to_le_bytes());
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// What sits at an offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole frame whose CRC checks: its payload's range in the buffer and the next frame's
    /// offset.
    Valid {
        /// Payload start (in the buffer).
        payload: usize,
        /// Payload length.
        len: usize,
        /// Where the next frame would start.
        next: usize,
    },
    /// Zeros (a preallocated, never written region) or the end of the file: no more frames.
    End,
    /// Something that is not a valid frame.
    Bad(String),
}

/// Parses the frame at `at` of `buf`, which holds the segment `seq` from file offset 0.
pub fn parse_frame(buf: &[u8], at: usize, seq: u64) -> Frame {
    debug_assert!(at.is_multiple_of(FRAME_ALIGN));
    if at >= buf.len() {
        return Frame::End;
    }
    if buf.len() - at < FRAME_HEADER_BYTES {
        return if buf[at..].iter().all(|&b| b == 0) {
            Frame::End
        } else {
            Frame::Bad(format!(
                "frame header cut short ({} bytes left)",
                buf.len() - at
            ))
        };
    }
    let word = |o: usize| u32::from_le_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
    let (magic, len, crc) = (word(at), word(at + 4), word(at + 8));
    if magic == 0 && len == 0 && crc == 0 {
        return Frame::End;
    }
    if magic != FRAME_MAGIC {
        return Frame::Bad(format!("bad frame magic {magic:#010x}"));
    }
    let len = len as usize;
    let payload = at + FRAME_HEADER_BYTES;
    if len > PAYLOAD_BYTES_MAX || len > buf.len() - payload {
        return Frame::Bad(format!(
            "frame claims {len} bytes, {} left in the file",
            buf.len() - payload
        ));
    }
    let computed = frame_crc(seq, at as u64, len as u32, &buf[payload..payload + len]);
    if computed != crc {
        return Frame::Bad(format!(
            "frame checksum mismatch (stored {crc:#010x}, computed {computed:#010x})"
        ));
    }
    let next = (payload + len).next_multiple_of(FRAME_ALIGN);
    Frame::Valid { payload, len, next }
}

/// Whether the bad frame at `at` can be a torn write rather than damage. Segments are
/// zero-filled and synced before use, and a crash persists a write's sectors in any order, so
/// a write cut short by a crash has a sector (or the part of one inside the frame) still all
/// zeros, or its end beyond the end of the file (a record larger than a segment extends the
/// file). A frame complete on disk whose checksum fails is damage to an acknowledged write.
pub fn has_unwritten_sector(buf: &[u8], at: usize) -> bool {
    const SECTOR: usize = 512;
    let magic_ok = buf.len() - at >= 8 && buf[at..at + 4] == FRAME_MAGIC.to_le_bytes();
    let end = if magic_ok {
        let len = u32::from_le_bytes([buf[at + 4], buf[at + 5], buf[at + 6], buf[at + 7]]);
        let claimed = at.saturating_add(FRAME_HEADER_BYTES + len as usize);
        if claimed > buf.len() {
            return true;
        }
        claimed
    } else {
        // The header itself is not trustworthy: look at everything up to the last written byte.
        buf.iter().rposition(|&b| b != 0).map_or(at, |p| p + 1)
    };
    let mut s = at - at % SECTOR;
    while s < end {
        let part = &buf[s.max(at)..(s + SECTOR).min(end)];
        if part.iter().all(|&b| b == 0) {
            return true;
        }
        s += SECTOR;
    }
    false
}

/// The offset of the first valid frame at or after `from` (aligned), if any. Used after a bad
/// frame: a valid frame after it means the damage is not a torn tail.
pub fn find_valid_frame(buf: &[u8], from: usize, seq: u64) -> Option<usize> {
    let mut at = from.next_multiple_of(FRAME_ALIGN);
    while at + FRAME_HEADER_BYTES <= buf.len() {
        if buf[at..at + 4] == FRAME_MAGIC.to_le_bytes() {
            if let Frame::Valid { .. } = parse_frame(buf, at, seq) {
                return Some(at);
            }
        }
        at += FRAME_ALIGN;
    }
    None
}

fn put_sealed(buf: &mut Vec<u8>, sealed: &[u8]) {
    let n = u32::try_from(sealed.len()).expect("sealed value under 4 GiB");
    buf.extend_from_slice(&n.to_le_bytes());
    buf.extend_from_slice(sealed);
}

fn get_sealed<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], String> {
    let n = r.u32()? as usize;
    r.bytes(n)
}

/// Appends a checkpoint payload.
pub fn put_checkpoint(buf: &mut Vec<u8>, c: &Checkpoint) {
    buf.push(KIND_CHECKPOINT);
    put_sealed(buf, &codec::encode_hard_state(&c.hard_state));
    put_sealed(buf, &codec::encode_membership(&c.membership));
    put_sealed(buf, &codec::encode_entry_id(c.log_start));
    buf.extend_from_slice(&c.last_index.0.to_le_bytes());
}

/// Appends an append payload; returns each entry's `(offset in the payload, length)`.
pub fn put_append(
    buf: &mut Vec<u8>,
    hard_state: Option<&HardState>,
    entries: &[Entry],
) -> Vec<(u32, u32)> {
    let base = buf.len();
    buf.push(KIND_APPEND);
    match hard_state {
        Some(hs) => {
            buf.push(1);
            put_sealed(buf, &codec::encode_hard_state(hs));
        }
        None => buf.push(0),
    }
    let n = u32::try_from(entries.len()).expect("entry count fits u32");
    buf.extend_from_slice(&n.to_le_bytes());
    let mut at = Vec::with_capacity(entries.len());
    for e in entries {
        let len_at = buf.len();
        buf.extend_from_slice(&[0u8; 4]);
        codec::encode_entry_into(buf, e);
        let len = (buf.len() - len_at - 4) as u32;
        buf[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
        at.push(((len_at + 4 - base) as u32, len));
    }
    at
}

/// Appends a membership payload.
pub fn put_membership(buf: &mut Vec<u8>, m: &Membership) {
    buf.push(KIND_MEMBERSHIP);
    put_sealed(buf, &codec::encode_membership(m));
}

/// Appends a compaction payload.
pub fn put_compact(buf: &mut Vec<u8>, to: EntryId) {
    buf.push(KIND_COMPACT);
    put_sealed(buf, &codec::encode_entry_id(to));
}

/// Appends a snapshot-install payload.
pub fn put_reset(
    buf: &mut Vec<u8>,
    to: EntryId,
    hard_state: &HardState,
    membership: &Membership,
    keep_suffix: bool,
) {
    buf.push(KIND_RESET);
    put_sealed(buf, &codec::encode_entry_id(to));
    put_sealed(buf, &codec::encode_hard_state(hard_state));
    put_sealed(buf, &codec::encode_membership(membership));
    buf.push(u8::from(keep_suffix));
}

/// Decodes a payload.
pub fn decode(payload: &[u8]) -> Result<Record, String> {
    let mut r = Reader::new(payload);
    let rec = match r.u8()? {
        KIND_CHECKPOINT => Record::Checkpoint(Checkpoint {
            hard_state: codec::decode_hard_state(get_sealed(&mut r)?)?,
            membership: codec::decode_membership(get_sealed(&mut r)?)?,
            log_start: codec::decode_entry_id(get_sealed(&mut r)?)?,
            last_index: Index(r.u64()?),
        }),
        KIND_APPEND => {
            let hard_state = match r.u8()? {
                0 => None,
                1 => Some(codec::decode_hard_state(get_sealed(&mut r)?)?),
                x => return Err(format!("bad hard-state flag {x}")),
            };
            let n = r.u32()? as usize;
            if n > payload.len() / 4 {
                return Err(format!("append claims {n} entries"));
            }
            let mut entries = Vec::with_capacity(n);
            let mut first = Index(0);
            for i in 0..n {
                let bytes = get_sealed(&mut r)?;
                let id = codec::peek_entry_id(bytes)?;
                if i == 0 {
                    first = id.index;
                } else if Some(id.index.0) != first.0.checked_add(i as u64) {
                    return Err(format!(
                        "entry {} of an append starting at {first} says index {}",
                        i, id.index
                    ));
                }
                let offset = bytes.as_ptr() as usize - payload.as_ptr() as usize;
                entries.push((offset as u32, bytes.len() as u32));
            }
            Record::Append {
                hard_state,
                first,
                entries,
            }
        }
        KIND_MEMBERSHIP => Record::Membership(codec::decode_membership(get_sealed(&mut r)?)?),
        KIND_COMPACT => Record::Compact(codec::decode_entry_id(get_sealed(&mut r)?)?),
        KIND_RESET => Record::Reset {
            to: codec::decode_entry_id(get_sealed(&mut r)?)?,
            hard_state: codec::decode_hard_state(get_sealed(&mut r)?)?,
            membership: codec::decode_membership(get_sealed(&mut r)?)?,
            keep_suffix: match r.u8()? {
                0 => false,
                1 => true,
                x => return Err(format!("bad keep-suffix flag {x}")),
            },
        },
        k => return Err(format!("unknown record kind {k}")),
    };
    r.finish()?;
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::{EntryKind, NodeId, Term};

    fn entry(i: u64) -> Entry {
        Entry {
            term: Term(2),
            index: Index(i),
            kind: EntryKind::Normal,
            data: vec![i as u8; 10 + i as usize],
        }
    }

    fn framed(seq: u64, put: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut buf = Vec::new();
        let s = begin_frame(&mut buf);
        put(&mut buf);
        end_frame(&mut buf, s, seq, 0);
        buf
    }

    #[test]
    fn every_record_round_trips() {
        let hs = HardState {
            term: Term(3),
            vote: NodeId::new(2),
            commit: Index(7),
        };
        let m = Membership::new([NodeId::new(1).unwrap(), NodeId::new(2).unwrap()]);
        let id = EntryId {
            term: Term(2),
            index: Index(5),
        };
        let cp = Checkpoint {
            hard_state: hs,
            membership: m.clone(),
            log_start: id,
            last_index: Index(9),
        };
        type Put<'a> = Box<dyn Fn(&mut Vec<u8>) + 'a>;
        let cases: Vec<(Put<'_>, Record)> = vec![
            (
                Box::new(|b| put_checkpoint(b, &cp)),
                Record::Checkpoint(cp.clone()),
            ),
            (
                Box::new(|b| put_membership(b, &m)),
                Record::Membership(m.clone()),
            ),
            (Box::new(|b| put_compact(b, id)), Record::Compact(id)),
            (
                Box::new(|b| put_reset(b, id, &hs, &m, true)),
                Record::Reset {
                    to: id,
                    hard_state: hs,
                    membership: m.clone(),
                    keep_suffix: true,
                },
            ),
        ];
        for (put, want) in cases {
            let buf = framed(1, |b| put(b));
            let Frame::Valid { payload, len, next } = parse_frame(&buf, 0, 1) else {
                panic!("frame does not parse");
            };
            assert_eq!(next, buf.len());
            assert_eq!(decode(&buf[payload..payload + len]).unwrap(), want);
        }
        let entries: Vec<Entry> = (5..9).map(entry).collect();
        let mut at = Vec::new();
        let buf = framed(1, |b| at = put_append(b, Some(&hs), &entries));
        let conf = Entry {
            term: Term(2),
            index: Index(9),
            kind: EntryKind::Membership(m.clone()),
            data: Vec::new(),
        };
        for es in [&entries[..], std::slice::from_ref(&conf), &[]] {
            let mut b = Vec::new();
            put_append(&mut b, Some(&hs), es);
            assert_eq!(b.len() as u64, append_payload_bytes(es), "{es:?}");
        }
        let Frame::Valid { payload, len, .. } = parse_frame(&buf, 0, 1) else {
            panic!("frame does not parse");
        };
        let Record::Append {
            hard_state,
            first,
            entries: got,
        } = decode(&buf[payload..payload + len]).unwrap()
        else {
            panic!("not an append");
        };
        assert_eq!((hard_state, first), (Some(hs), Index(5)));
        assert_eq!(got, at);
        for ((off, n), e) in got.iter().zip(&entries) {
            let bytes = &buf[payload + *off as usize..payload + (*off + *n) as usize];
            assert_eq!(&codec::decode_entry(bytes).unwrap(), e);
        }
    }

    #[test]
    fn damage_is_bad_and_zeros_are_the_end() {
        let buf = framed(4, |b| put_compact(b, EntryId::default()));
        assert!(matches!(parse_frame(&buf, 0, 4), Frame::Valid { .. }));
        // Another segment's frame, or the same frame moved, does not check.
        assert!(matches!(parse_frame(&buf, 0, 5), Frame::Bad(_)));
        let mut moved = vec![0u8; 8];
        moved.extend_from_slice(&buf);
        assert!(matches!(parse_frame(&moved, 8, 4), Frame::Bad(_)));
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[i] ^= 1 << bit;
                match parse_frame(&b, 0, 4) {
                    Frame::Valid { payload, len, .. } => {
                        // Only padding bytes may change without notice.
                        assert!(i >= payload + len, "flip at {i} undetected");
                    }
                    Frame::Bad(_) | Frame::End => {}
                }
            }
        }
        for cut in 0..buf.len() - 1 {
            let r = parse_frame(&buf[..cut], 0, 4);
            assert!(!matches!(r, Frame::Valid { .. }) || cut >= buf.len() - 7);
        }
        assert_eq!(parse_frame(&[0u8; 64], 0, 4), Frame::End);
        assert_eq!(parse_frame(&[0u8; 5], 0, 4), Frame::End);
        assert_eq!(find_valid_frame(&moved, 0, 4), None);
        // A complete frame with a flipped byte is damage; one with a zeroed sector, a zeroed
        // header start or a missing end may be a torn write.
        let mut big = Vec::new();
        let s = begin_frame(&mut big);
        put_append(&mut big, None, &[entry(1000)]);
        end_frame(&mut big, s, 4, 0);
        let mut flipped = big.clone();
        flipped[700] ^= 1;
        assert!(matches!(parse_frame(&flipped, 0, 4), Frame::Bad(_)));
        assert!(!has_unwritten_sector(&flipped, 0));
        let mut holed = big.clone();
        holed[512..1024].fill(0);
        assert!(has_unwritten_sector(&holed, 0));
        // A frame whose header straddles a sector boundary, the first sector never written.
        let mut straddling = vec![0xee; 504];
        straddling.extend_from_slice(&big);
        let mut bad_magic = straddling.clone();
        bad_magic[505] ^= 1;
        assert!(!has_unwritten_sector(&bad_magic, 504));
        straddling[504..512].fill(0);
        assert!(has_unwritten_sector(&straddling, 504));
        assert!(has_unwritten_sector(&big[..big.len() - 20], 0));
        let mut two = buf.clone();
        let s = begin_frame(&mut two);
        put_compact(&mut two, EntryId::default());
        end_frame(&mut two, s, 4, s as u64);
        two[3] ^= 0xff;
        assert_eq!(find_valid_frame(&two, 0, 4), Some(s));
    }
}
