//! A small replicated key-value state machine with client sessions (thesis §6.3): every write
//! carries `(client id, sequence number)`, and a session remembers each client's last applied
//! sequence number, so a retried request is applied exactly once.
//!
//! It is the simulator's default state machine: [`KvState`] implements
//! [`StateMachine`], and [`KvOp`] implements [`Operation`] with the sequential model of a
//! register per key (Get reads, Put replaces, Append appends).

use std::collections::BTreeMap;

use crate::machine::{Applied, Operation, StateMachine};
use crate::rng::Rng;

/// Tag byte of a raw 6.5840-style test command.
pub const TAG_RAW: u8 = 1;
/// Tag byte of a KV write.
pub const TAG_KV: u8 = 2;

/// A client operation on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOp {
    /// Read the value (empty string if absent).
    Get,
    /// Replace the value.
    Put(String),
    /// Append to the value.
    Append(String),
}

/// A write as it travels through the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvCommand {
    /// The client's session id.
    pub client: u64,
    /// The client's sequence number; one per operation, reused by retries.
    pub seq: u64,
    /// The key.
    pub key: String,
    /// Put or Append (never Get: reads go through ReadIndex).
    pub op: KvOp,
}

impl KvCommand {
    /// Wire form: tag, client, seq, op, key length, key, value.
    pub fn encode(&self) -> Vec<u8> {
        let (code, value) = match &self.op {
            KvOp::Put(v) => (1u8, v.as_str()),
            KvOp::Append(v) => (2u8, v.as_str()),
            KvOp::Get => panic!("reads are not logged"),
        };
        let mut out = vec![TAG_KV];
        out.extend_from_slice(&self.client.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.push(code);
        out.extend_from_slice(&(self.key.len() as u16).to_le_bytes());
        out.extend_from_slice(self.key.as_bytes());
        out.extend_from_slice(value.as_bytes());
        out
    }

    /// Parses [`KvCommand::encode`]'s output; `None` for anything else (no-ops, raw commands).
    pub fn decode(data: &[u8]) -> Option<KvCommand> {
        if data.first() != Some(&TAG_KV) || data.len() < 20 {
            return None;
        }
        let client = u64::from_le_bytes(data[1..9].try_into().ok()?);
        let seq = u64::from_le_bytes(data[9..17].try_into().ok()?);
        let code = data[17];
        let key_len = u16::from_le_bytes(data[18..20].try_into().ok()?) as usize;
        let key = String::from_utf8(data.get(20..20 + key_len)?.to_vec()).ok()?;
        let value = String::from_utf8(data.get(20 + key_len..)?.to_vec()).ok()?;
        let op = match code {
            1 => KvOp::Put(value),
            2 => KvOp::Append(value),
            _ => return None,
        };
        Some(KvCommand {
            client,
            seq,
            key,
            op,
        })
    }
}

/// The state machine on one node. Volatile: rebuilt from the log after a restart.
#[derive(Clone, Debug, Default)]
pub struct KvState {
    data: BTreeMap<String, String>,
    /// Last applied sequence number per client.
    sessions: BTreeMap<u64, u64>,
}

impl KvState {
    /// Applies a log entry's payload. Returns `(client, seq)` when it is a KV write (applied now
    /// or a duplicate of one applied before), so the waiting client can be answered.
    pub fn apply_write(&mut self, data: &[u8]) -> Option<(u64, u64)> {
        let cmd = KvCommand::decode(data)?;
        let last = self.sessions.get(&cmd.client).copied().unwrap_or(0);
        if cmd.seq <= last {
            // A retry (or a stale abandoned request): applied at most once.
            return Some((cmd.client, cmd.seq));
        }
        self.sessions.insert(cmd.client, cmd.seq);
        match cmd.op {
            KvOp::Put(v) => {
                self.data.insert(cmd.key, v);
            }
            KvOp::Append(v) => self.data.entry(cmd.key).or_default().push_str(&v),
            KvOp::Get => unreachable!("decode never yields Get"),
        }
        Some((cmd.client, cmd.seq))
    }

    /// Serializes the state (data and sessions) for a snapshot.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.data.len() as u32).to_le_bytes());
        for (k, v) in &self.data {
            put_bytes(out, k.as_bytes());
            put_bytes(out, v.as_bytes());
        }
        out.extend_from_slice(&(self.sessions.len() as u32).to_le_bytes());
        for (c, s) in &self.sessions {
            out.extend_from_slice(&c.to_le_bytes());
            out.extend_from_slice(&s.to_le_bytes());
        }
    }

    /// Parses [`KvState::encode_into`]'s output, advancing `b`.
    pub fn decode_from(b: &mut &[u8]) -> Option<KvState> {
        let mut kv = KvState::default();
        for _ in 0..take_u32(b)? {
            let k = String::from_utf8(take_bytes(b)?).ok()?;
            let v = String::from_utf8(take_bytes(b)?).ok()?;
            kv.data.insert(k, v);
        }
        for _ in 0..take_u32(b)? {
            let c = take_u64(b)?;
            let s = take_u64(b)?;
            kv.sessions.insert(c, s);
        }
        Some(kv)
    }

    /// Like [`KvState::decode_from`], but keeps what decodes before the first damaged record.
    pub fn decode_prefix(b: &mut &[u8]) -> KvState {
        let mut kv = KvState::default();
        for _ in 0..take_u32(b).unwrap_or(0) {
            let Some(k) = take_bytes(b).and_then(|k| String::from_utf8(k).ok()) else {
                return kv;
            };
            let Some(v) = take_bytes(b).and_then(|v| String::from_utf8(v).ok()) else {
                return kv;
            };
            kv.data.insert(k, v);
        }
        for _ in 0..take_u32(b).unwrap_or(0) {
            let (Some(c), Some(s)) = (take_u64(b), take_u64(b)) else {
                return kv;
            };
            kv.sessions.insert(c, s);
        }
        kv
    }

    /// The value of `key`, empty if absent.
    pub fn get(&self, key: &str) -> String {
        self.data.get(key).cloned().unwrap_or_default()
    }
}

impl Operation for KvOp {
    type Output = String;
    type State = String;

    fn is_read(&self) -> bool {
        *self == KvOp::Get
    }

    fn step(&self, state: &String, output: Option<&String>) -> Option<String> {
        match self {
            KvOp::Get => (output == Some(state)).then(|| state.clone()),
            KvOp::Put(v) => Some(v.clone()),
            KvOp::Append(v) => Some(format!("{state}{v}")),
        }
    }

    /// Written values are unique (client and sequence number), so a read shows a write exactly
    /// when its value contains the written one.
    fn may_be_seen_in(&self, output: &String) -> bool {
        match self {
            KvOp::Get => true,
            KvOp::Put(v) | KvOp::Append(v) => output.contains(v.as_str()),
        }
    }

    fn describe(&self, output: Option<&String>) -> String {
        match self {
            KvOp::Get => format!("Get() -> {:?}", output.map_or("?", String::as_str)),
            KvOp::Put(v) => format!("Put({v:?})"),
            KvOp::Append(v) => format!("Append({v:?})"),
        }
    }
}

impl StateMachine for KvState {
    type Op = KvOp;

    fn encode(client: u64, seq: u64, key: &str, op: &KvOp) -> Vec<u8> {
        let key = key.to_string();
        let op = op.clone();
        KvCommand {
            client,
            seq,
            key,
            op,
        }
        .encode()
    }

    /// Writes answer nothing (`output` is `None`): a Put or Append only completes.
    fn apply(&mut self, command: &[u8]) -> Option<Applied<String>> {
        let (client, seq) = self.apply_write(command)?;
        let output = None;
        Some(Applied {
            client,
            seq,
            output,
        })
    }

    fn read(&self, key: &str, _op: &KvOp) -> String {
        self.get(key)
    }

    fn snapshot(&self, out: &mut Vec<u8>) {
        self.encode_into(out);
    }

    fn restore(mut bytes: &[u8]) -> KvState {
        KvState::decode_prefix(&mut bytes)
    }

    /// A random key, then 40% Get, 45% Append, 15% Put; written values are unique
    /// (`"client.seq;"`).
    fn random_op(rng: &mut Rng, client: u64, seq: u64, keys: &[String]) -> (String, KvOp) {
        let key = keys[rng.below(keys.len() as u64) as usize].clone();
        let tag = format!("{client}.{seq};");
        let op = match rng.below(100) {
            0..=39 => KvOp::Get,
            40..=84 => KvOp::Append(tag),
            _ => KvOp::Put(tag),
        };
        (key, op)
    }
}

/// Appends a length-prefixed byte string.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Takes a little-endian `u32`.
pub fn take_u32(b: &mut &[u8]) -> Option<u32> {
    let v = u32::from_le_bytes(b.get(..4)?.try_into().ok()?);
    *b = &b[4..];
    Some(v)
}

/// Takes a little-endian `u64`.
pub fn take_u64(b: &mut &[u8]) -> Option<u64> {
    let v = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    *b = &b[8..];
    Some(v)
}

/// Takes a length-prefixed byte string.
pub fn take_bytes(b: &mut &[u8]) -> Option<Vec<u8>> {
    let n = take_u32(b)? as usize;
    let v = b.get(..n)?.to_vec();
    *b = &b[n..];
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_exactly_once() {
        let cmd = KvCommand {
            client: 3,
            seq: 7,
            key: "k".into(),
            op: KvOp::Append("x".into()),
        };
        let data = cmd.encode();
        assert_eq!(KvCommand::decode(&data), Some(cmd));
        let mut kv = KvState::default();
        assert_eq!(kv.apply_write(&data), Some((3, 7)));
        assert_eq!(kv.apply_write(&data), Some((3, 7)));
        assert_eq!(kv.get("k"), "x");
        assert_eq!(kv.apply_write(&[TAG_RAW, 1, 2]), None);
        let mut bytes = Vec::new();
        kv.encode_into(&mut bytes);
        let back = KvState::decode_from(&mut bytes.as_slice()).unwrap();
        assert_eq!(back.get("k"), "x");
        assert_eq!(back.sessions, kv.sessions);
    }
}
