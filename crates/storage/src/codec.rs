//! Versioned, checksummed binary encodings of everything the store writes.
//!
//! Every value is `[version u8][payload][crc32 u32 LE]`, the CRC covering version and payload.
//! Integers are little-endian. An entry's payload is
//! `[kind tag u8][term u64][index u64][data len u32][data]`.
//! New entry kinds (membership changes) get new tags; an unknown tag, a bad length, a bad
//! version or a CRC mismatch decode to an error string, never a panic.

use std::collections::BTreeSet;

use raft::{Entry, EntryId, EntryKind, HardState, Index, Membership, NodeId, Term};

/// The only format version written today.
pub const VERSION: u8 = 1;

/// Bytes a sealed value adds around its payload (version byte and CRC).
pub const SEAL_OVERHEAD_BYTES: usize = 1 + 4;

/// Entry kind tags. Zero is never used so that zeroed bytes do not decode.
const TAG_NORMAL: u8 = 1;
const TAG_NOOP: u8 = 2;
/// Entry kind tag: a configuration entry; the payload is the encoded membership.
const TAG_MEMBERSHIP: u8 = 3;

/// Appends the CRC of `buf` (which already starts with the version byte).
fn seal(mut buf: Vec<u8>) -> Vec<u8> {
    debug_assert_eq!(buf.first(), Some(&VERSION));
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf
}

/// Checks version and CRC; returns the payload.
fn unseal(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.len() < SEAL_OVERHEAD_BYTES {
        return Err(format!("record of {} bytes is too short", bytes.len()));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(format!(
            "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    if body[0] != VERSION {
        return Err(format!("unknown format version {}", body[0]));
    }
    Ok(&body[1..])
}

/// A bounds-checked little-endian reader over a payload.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads from the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    /// Takes `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err(format!("need {n} bytes, {} left", self.buf.len()));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes one byte.
    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.bytes(1)?[0])
    }

    /// Takes a u32.
    pub fn u32(&mut self) -> Result<u32, String> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Takes a u64.
    pub fn u64(&mut self) -> Result<u64, String> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// Fails unless every byte was consumed.
    pub fn finish(self) -> Result<(), String> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(format!("{} trailing bytes", self.buf.len()))
        }
    }
}

/// Encodes an entry.
#[cfg(test)]
pub fn encode_entry(e: &Entry) -> Vec<u8> {
    let mut buf = Vec::with_capacity(e.data.len() + 22 + SEAL_OVERHEAD_BYTES);
    encode_entry_into(&mut buf, e);
    buf
}

/// Appends the encoding of an entry to `buf` (what [`encode_entry`] returns), without a
/// temporary allocation: the log writes a whole batch of entries into one buffer.
pub fn encode_entry_into(buf: &mut Vec<u8>, e: &Entry) {
    let start = buf.len();
    buf.push(VERSION);
    let membership;
    let (tag, data) = match &e.kind {
        EntryKind::Normal => (TAG_NORMAL, &e.data),
        EntryKind::Noop => (TAG_NOOP, &e.data),
        EntryKind::Membership(m) => {
            // The configuration, then the application's context (older versions wrote none:
            // an empty tail decodes as an empty context).
            let mut b = Vec::with_capacity(e.data.len() + 64);
            put_membership(&mut b, m);
            b.extend_from_slice(&e.data);
            membership = b;
            (TAG_MEMBERSHIP, &membership)
        }
    };
    buf.push(tag);
    buf.extend_from_slice(&e.term.0.to_le_bytes());
    buf.extend_from_slice(&e.index.0.to_le_bytes());
    let len = u32::try_from(data.len()).expect("entry data over 4 GiB is rejected by write");
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(data);
    let crc = crc32fast::hash(&buf[start..]);
    buf.extend_from_slice(&crc.to_le_bytes());
}

/// The index and term of an encoded entry, read without checking its checksum (the caller
/// has checked a checksum covering these bytes).
pub fn peek_entry_id(bytes: &[u8]) -> Result<EntryId, String> {
    let mut r = Reader::new(bytes);
    if r.u8()? != VERSION {
        return Err("unknown entry format version".to_string());
    }
    let _tag = r.u8()?;
    let term = Term(r.u64()?);
    let index = Index(r.u64()?);
    Ok(EntryId { term, index })
}

/// Decodes an entry.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, String> {
    let mut r = Reader::new(unseal(bytes)?);
    let tag = r.u8()?;
    let term = Term(r.u64()?);
    let index = Index(r.u64()?);
    let len = r.u32()? as usize;
    let mut data = r.bytes(len)?.to_vec();
    r.finish()?;
    let kind = match tag {
        TAG_NORMAL => EntryKind::Normal,
        TAG_NOOP => EntryKind::Noop,
        TAG_MEMBERSHIP => {
            let mut mr = Reader::new(&data);
            let m = get_membership(&mut mr)?;
            data = mr.buf.to_vec();
            EntryKind::Membership(m)
        }
        t => return Err(format!("unknown entry kind tag {t}")),
    };
    Ok(Entry {
        term,
        index,
        kind,
        data,
    })
}

/// Encodes a hard state.
pub fn encode_hard_state(hs: &HardState) -> Vec<u8> {
    let mut buf = vec![VERSION];
    buf.extend_from_slice(&hs.term.0.to_le_bytes());
    buf.extend_from_slice(&hs.vote.map_or(0, NodeId::get).to_le_bytes());
    buf.extend_from_slice(&hs.commit.0.to_le_bytes());
    seal(buf)
}

/// Decodes a hard state.
pub fn decode_hard_state(bytes: &[u8]) -> Result<HardState, String> {
    let mut r = Reader::new(unseal(bytes)?);
    let hs = HardState {
        term: Term(r.u64()?),
        vote: NodeId::new(r.u64()?),
        commit: Index(r.u64()?),
    };
    r.finish()?;
    Ok(hs)
}

/// Encodes a membership into `buf` (unsealed; reused by snapshot headers and configuration
/// entries): voters, outgoing voters (joint configurations), learners.
pub fn put_membership(buf: &mut Vec<u8>, m: &Membership) {
    for set in [&m.voters, &m.voters_outgoing, &m.learners] {
        let n = u32::try_from(set.len()).expect("member count fits u32");
        buf.extend_from_slice(&n.to_le_bytes());
        for v in set {
            buf.extend_from_slice(&v.get().to_le_bytes());
        }
    }
}

/// Maximum voters a decoded membership may claim; bounds allocation on corrupt input.
const VOTERS_MAX: u32 = 1024;

/// Decodes a membership written by [`put_membership`].
pub fn get_membership(r: &mut Reader<'_>) -> Result<Membership, String> {
    let mut get_set = |what: &str| -> Result<BTreeSet<NodeId>, String> {
        let n = r.u32()?;
        if n > VOTERS_MAX {
            return Err(format!("membership claims {n} {what} (max {VOTERS_MAX})"));
        }
        let mut set = BTreeSet::new();
        for _ in 0..n {
            let id = NodeId::new(r.u64()?).ok_or_else(|| format!("{what}: id 0"))?;
            if !set.insert(id) {
                return Err(format!("{what}: node {id} listed twice"));
            }
        }
        Ok(set)
    };
    let m = Membership {
        voters: get_set("voters")?,
        voters_outgoing: get_set("outgoing voters")?,
        learners: get_set("learners")?,
    };
    Ok(m)
}

/// Encodes a membership record.
pub fn encode_membership(m: &Membership) -> Vec<u8> {
    let mut buf = vec![VERSION];
    put_membership(&mut buf, m);
    seal(buf)
}

/// Decodes a membership record.
pub fn decode_membership(bytes: &[u8]) -> Result<Membership, String> {
    let mut r = Reader::new(unseal(bytes)?);
    let m = get_membership(&mut r)?;
    r.finish()?;
    Ok(m)
}

/// Encodes an entry id record.
pub fn encode_entry_id(id: EntryId) -> Vec<u8> {
    let mut buf = vec![VERSION];
    buf.extend_from_slice(&id.term.0.to_le_bytes());
    buf.extend_from_slice(&id.index.0.to_le_bytes());
    seal(buf)
}

/// Decodes an entry id record.
pub fn decode_entry_id(bytes: &[u8]) -> Result<EntryId, String> {
    let mut r = Reader::new(unseal(bytes)?);
    let id = EntryId {
        term: Term(r.u64()?),
        index: Index(r.u64()?),
    };
    r.finish()?;
    Ok(id)
}

/// Seals an arbitrary payload (used for snapshot headers and staging records).
pub fn seal_payload(payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(payload.len() + SEAL_OVERHEAD_BYTES);
    buf.push(VERSION);
    buf.extend_from_slice(payload);
    seal(buf)
}

/// Checks a sealed payload.
pub fn unseal_payload(bytes: &[u8]) -> Result<&[u8], String> {
    unseal(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: EntryKind, data: &[u8]) -> Entry {
        Entry {
            term: Term(7),
            index: Index(42),
            kind,
            data: data.to_vec(),
        }
    }

    #[test]
    fn configuration_entries_round_trip() {
        let id = |i: u64| NodeId::new(i).unwrap();
        let m = Membership {
            voters: [id(1), id(4), id(5)].into(),
            voters_outgoing: [id(1), id(2), id(3)].into(),
            learners: [id(9)].into(),
        };
        let e = entry(EntryKind::Membership(m.clone()), b"");
        assert_eq!(decode_entry(&encode_entry(&e)), Ok(e));
        // With the application's context (a new member's address, say).
        let e = entry(EntryKind::Membership(m), b"\x01context");
        assert_eq!(decode_entry(&encode_entry(&e)), Ok(e));
    }

    #[test]
    fn entry_round_trips() {
        for e in [
            entry(EntryKind::Normal, b"hello"),
            entry(EntryKind::Noop, b""),
        ] {
            assert_eq!(decode_entry(&encode_entry(&e)).unwrap(), e);
        }
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let bytes = encode_entry(&entry(EntryKind::Normal, b"payload"));
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(decode_entry(&b).is_err(), "flip at byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn unknown_kind_tag_is_an_error() {
        let mut bytes = encode_entry(&entry(EntryKind::Normal, b"x"));
        bytes[1] = 99;
        let n = bytes.len();
        let crc = crc32fast::hash(&bytes[..n - 4]);
        bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_entry(&bytes).unwrap_err(),
            "unknown entry kind tag 99"
        );
    }

    #[test]
    fn truncations_are_errors() {
        let bytes = encode_entry(&entry(EntryKind::Normal, b"payload"));
        for n in 0..bytes.len() {
            assert!(decode_entry(&bytes[..n]).is_err());
        }
    }

    #[test]
    fn metadata_round_trips() {
        let hs = HardState {
            term: Term(3),
            vote: NodeId::new(2),
            commit: Index(9),
        };
        assert_eq!(decode_hard_state(&encode_hard_state(&hs)).unwrap(), hs);
        let m = Membership::new([1, 2, 3].map(|i| NodeId::new(i).unwrap()));
        assert_eq!(decode_membership(&encode_membership(&m)).unwrap(), m);
        let id = EntryId {
            term: Term(4),
            index: Index(100),
        };
        assert_eq!(decode_entry_id(&encode_entry_id(id)).unwrap(), id);
    }
}
