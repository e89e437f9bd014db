//! Requests and responses of the state machine, mirroring etcd's `etcdserverpb` messages.
//!
//! These are plain data: the server converts its protobuf types into them at the edge. Revisions
//! and lease ids are `i64` like in etcd's protocol; a request revision `<= 0` means "current".

/// A key-value pair as etcd's `mvccpb.KeyValue`.
///
/// Invariant for a live key: `0 < create_revision <= mod_revision` and `version >= 1`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    /// The key; never empty.
    pub key: Vec<u8>,
    /// Revision of the put that created this generation of the key (reset by delete).
    pub create_revision: i64,
    /// Revision of the last modification of the key.
    pub mod_revision: i64,
    /// Number of puts since the key was (re)created; 1 after creation.
    pub version: i64,
    /// The value; empty when the range asked for `keys_only`.
    pub value: Vec<u8>,
    /// The lease the key is attached to, 0 for none.
    pub lease: i64,
}

/// Order of a sorted range (`RangeRequest.SortOrder`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    /// No sorting: results in ascending key order.
    #[default]
    None,
    /// Lowest target first.
    Ascend,
    /// Highest target first.
    Descend,
}

/// Field a range is sorted by (`RangeRequest.SortTarget`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value.
    Value,
}

/// etcd's `RangeRequest`.
///
/// `range_end` conventions: empty means the single key `key`; `"\0"` means every key `>= key`;
/// otherwise the half-open interval `[key, range_end)` (empty when `range_end <= key`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeRequest {
    /// First key; must not be empty.
    pub key: Vec<u8>,
    /// End of the range, see the type's documentation.
    pub range_end: Vec<u8>,
    /// Maximum number of keys returned; `<= 0` means no limit.
    pub limit: i64,
    /// Revision to read at; `<= 0` means the current revision.
    pub revision: i64,
    /// Sort order; a non-key target with `None` sorts ascending, as etcd does.
    pub sort_order: SortOrder,
    /// Sort target.
    pub sort_target: SortTarget,
    /// Return keys without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Keep only keys with `mod_revision >=` this (0 = no filter).
    pub min_mod_revision: i64,
    /// Keep only keys with `mod_revision <=` this (0 = no filter).
    pub max_mod_revision: i64,
    /// Keep only keys with `create_revision >=` this (0 = no filter).
    pub min_create_revision: i64,
    /// Keep only keys with `create_revision <=` this (0 = no filter).
    pub max_create_revision: i64,
}

impl RangeRequest {
    /// A range over the single key `key`.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        RangeRequest {
            key: key.into(),
            ..Default::default()
        }
    }

    /// A range over `[key, range_end)`.
    pub fn range(key: impl Into<Vec<u8>>, range_end: impl Into<Vec<u8>>) -> Self {
        RangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            ..Default::default()
        }
    }

    /// A range over every key starting with `prefix` (etcdctl's `--prefix`).
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let key = prefix.into();
        let range_end = prefix_end(&key);
        RangeRequest {
            key,
            range_end,
            ..Default::default()
        }
    }
}

/// The `range_end` that selects every key starting with `prefix`, as etcd's clientv3
/// `GetPrefixRangeEnd`: increment the last byte that is not `0xff` and cut after it; a prefix of
/// only `0xff` bytes (or empty) gives `"\0"`, meaning "every key from the prefix on".
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// etcd's `PutRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PutRequest {
    /// The key; must not be empty.
    pub key: Vec<u8>,
    /// The value; must be empty when `ignore_value` is set.
    pub value: Vec<u8>,
    /// Lease to attach the key to, 0 for none; must be 0 when `ignore_lease` is set.
    pub lease: i64,
    /// Return the previous key-value pair.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

impl PutRequest {
    /// A plain put of `value` at `key`.
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }
    }
}

/// etcd's `DeleteRangeRequest`; `range_end` follows [`RangeRequest`]'s conventions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteRangeRequest {
    /// First key; must not be empty.
    pub key: Vec<u8>,
    /// End of the range.
    pub range_end: Vec<u8>,
    /// Return the deleted key-value pairs.
    pub prev_kv: bool,
}

impl DeleteRangeRequest {
    /// Deletes the single key `key`.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        DeleteRangeRequest {
            key: key.into(),
            ..Default::default()
        }
    }

    /// Deletes `[key, range_end)`.
    pub fn range(key: impl Into<Vec<u8>>, range_end: impl Into<Vec<u8>>) -> Self {
        DeleteRangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            prev_kv: false,
        }
    }
}

/// How a compare relates the stored field to the operand (`Compare.CompareResult`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareResult {
    /// stored == operand
    Equal,
    /// stored > operand
    Greater,
    /// stored < operand
    Less,
    /// stored != operand
    NotEqual,
}

/// The field compared and the operand (`Compare.target` with `target_union`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key's version (0 for a missing key).
    Version(i64),
    /// The key's create revision (0 for a missing key).
    Create(i64),
    /// The key's mod revision (0 for a missing key).
    Mod(i64),
    /// The key's value (a compare on a missing key's value is false).
    Value(Vec<u8>),
    /// The key's lease (0 for a missing key or no lease).
    Lease(i64),
}

/// etcd's `Compare`: every key in `[key, range_end)` must satisfy it (a single key when
/// `range_end` is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// Key compared (or first key of the range).
    pub key: Vec<u8>,
    /// End of the range, with [`RangeRequest`]'s conventions.
    pub range_end: Vec<u8>,
    /// The relation required.
    pub result: CompareResult,
    /// Field and operand.
    pub target: CompareTarget,
}

impl Compare {
    /// A compare on a single key.
    pub fn new(key: impl Into<Vec<u8>>, result: CompareResult, target: CompareTarget) -> Self {
        Compare {
            key: key.into(),
            range_end: Vec::new(),
            result,
            target,
        }
    }
}

/// One operation of a transaction branch (`RequestOp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOp {
    /// A read.
    Range(RangeRequest),
    /// A put.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A nested transaction.
    Txn(TxnRequest),
}

/// etcd's `TxnRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnRequest {
    /// All must hold (evaluated before any op) for `success` to run, else `failure` runs.
    pub compare: Vec<Compare>,
    /// Ops run, in order, when every compare holds.
    pub success: Vec<RequestOp>,
    /// Ops run, in order, otherwise.
    pub failure: Vec<RequestOp>,
}

impl TxnRequest {
    /// Whether every op of both branches, nested transactions included, is a range: then the
    /// transaction writes nothing and is served like a range, without a log entry (etcd's
    /// `isTxnReadonly`).
    pub fn is_read_only(&self) -> bool {
        self.success.iter().chain(&self.failure).all(|op| match op {
            RequestOp::Range(_) => true,
            RequestOp::Txn(inner) => inner.is_read_only(),
            RequestOp::Put(_) | RequestOp::DeleteRange(_) => false,
        })
    }
}

/// etcd's `RangeResponse` (the header is reduced to its revision).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResponse {
    /// Store revision when the range was served (not the revision read at).
    pub revision: i64,
    /// The matching pairs, after sort and limit; empty for `count_only`.
    pub kvs: Vec<KeyValue>,
    /// Whether `limit` cut off further pairs.
    pub more: bool,
    /// Number of keys in the range (ignores `limit`).
    pub count: i64,
}

/// etcd's `PutResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PutResponse {
    /// Store revision after the put.
    pub revision: i64,
    /// The previous pair, if asked for and the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// etcd's `DeleteRangeResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteRangeResponse {
    /// Store revision after the delete (unchanged if nothing was deleted).
    pub revision: i64,
    /// Number of keys deleted.
    pub deleted: i64,
    /// The deleted pairs, if asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// One response of a transaction branch (`ResponseOp`), in the order of the ops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseOp {
    /// Response to a range.
    Range(RangeResponse),
    /// Response to a put.
    Put(PutResponse),
    /// Response to a delete.
    DeleteRange(DeleteRangeResponse),
    /// Response to a nested transaction.
    Txn(TxnResponse),
}

/// etcd's `TxnResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnResponse {
    /// Store revision after the transaction (bumped once if it wrote anything).
    pub revision: i64,
    /// Whether every compare held.
    pub succeeded: bool,
    /// Responses of the branch that ran.
    pub responses: Vec<ResponseOp>,
}

/// A granted lease as recorded in the store; expiry is the leader's business.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Lease id, never 0.
    pub id: i64,
    /// Granted time to live, seconds.
    pub ttl: i64,
}
