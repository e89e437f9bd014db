//! The cluster's member table (etcd's `members` bucket): what each member is called and where
//! it listens, replicated through the log and kept in snapshots, so that every member lists
//! the same members and a member that catches up by snapshot knows them too.
//!
//! Which members exist, and which are learners, is the consensus core's configuration, not
//! this table: the table only describes them. A member publishes its own name and client
//! URLs when it starts ([`crate::Request::MemberPublish`]), as etcd's members publish their
//! attributes; peer URLs are set when a member is first recorded and kept after that (etcd
//! changes them only through MemberUpdate). Publishing changes no key and no revision.
//!
//! When a configuration entry that leaves members out commits, the server applies their
//! removal ([`crate::Request::MembersRemoved`], derived from the entry and the configuration
//! before it, so every replica applies the same): their rows are deleted and their ids
//! recorded as removed (`MEMBERS_REMOVED`, etcd's `members_removed` bucket), for good: a
//! removed member's traffic is refused, and a description it publishes is ignored.

use redb::{ReadableTable, TableDefinition};

use crate::codec::{Reader, Writer};
use crate::error::{Error, KvError};

/// `member id -> encoded Member`.
pub(crate) const MEMBERS: TableDefinition<u64, &[u8]> = TableDefinition::new("members");

/// Ids of removed members: `id -> ()`.
pub(crate) const MEMBERS_REMOVED: TableDefinition<u64, ()> =
    TableDefinition::new("members_removed");

/// Longest member name, in bytes.
pub const MEMBER_NAME_BYTES_MAX: usize = 256;
/// Most URLs of one kind a member may have.
pub const MEMBER_URLS_MAX: usize = 16;
/// Longest URL, in bytes.
pub const MEMBER_URL_BYTES_MAX: usize = 1024;

/// One member's description.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Member {
    /// The member's id (non-zero).
    pub id: u64,
    /// Its `--name`.
    pub name: String,
    /// Where its peers reach it.
    pub peer_urls: Vec<String>,
    /// Where clients reach it (`--advertise-client-urls`).
    pub client_urls: Vec<String>,
}

impl Member {
    /// Refuses a description over the limits (a member's own bug or a hostile peer: nothing
    /// stored goes unbounded).
    pub(crate) fn check(&self) -> Result<(), KvError> {
        let urls_ok = |urls: &[String]| {
            urls.len() <= MEMBER_URLS_MAX && urls.iter().all(|u| u.len() <= MEMBER_URL_BYTES_MAX)
        };
        if self.id == 0
            || self.name.len() > MEMBER_NAME_BYTES_MAX
            || !urls_ok(&self.peer_urls)
            || !urls_ok(&self.client_urls)
        {
            return Err(KvError::BadMember);
        }
        Ok(())
    }

    pub(crate) fn encode_into(&self, w: &mut Writer) {
        w.u64(self.id);
        w.bytes(self.name.as_bytes());
        for urls in [&self.peer_urls, &self.client_urls] {
            w.u64(urls.len() as u64);
            for u in urls {
                w.bytes(u.as_bytes());
            }
        }
    }

    pub(crate) fn decode_from(r: &mut Reader<'_>) -> Result<Member, Error> {
        let text = |b: Vec<u8>| {
            String::from_utf8(b).map_err(|_| Error::Decode("member: text is not UTF-8".into()))
        };
        let id = r.u64()?;
        let name = text(r.bytes()?)?;
        let mut lists = [Vec::new(), Vec::new()];
        for list in &mut lists {
            for _ in 0..r.len()? {
                list.push(text(r.bytes()?)?);
            }
        }
        let [peer_urls, client_urls] = lists;
        Ok(Member {
            id,
            name,
            peer_urls,
            client_urls,
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        self.encode_into(&mut w);
        w.0
    }

    fn decode(bytes: &[u8]) -> Result<Member, Error> {
        let mut r = Reader::raw(bytes);
        let m = Member::decode_from(&mut r)?;
        r.finish()?;
        Ok(m)
    }
}

/// Records `m`'s name and client URLs; a member not recorded yet is recorded whole. A removed
/// member's description is ignored.
pub(crate) fn publish(
    table: &mut redb::Table<'_, u64, &'static [u8]>,
    removed: &impl ReadableTable<u64, ()>,
    m: &Member,
) -> Result<(), Error> {
    if removed.get(m.id)?.is_some() {
        return Ok(());
    }
    let stored = match table.get(m.id)? {
        Some(bytes) => Some(Member::decode(bytes.value())?),
        None => None,
    };
    let row = match stored {
        Some(old) => Member {
            name: m.name.clone(),
            client_urls: m.client_urls.clone(),
            ..old
        },
        None => m.clone(),
    };
    table.insert(m.id, row.encode().as_slice())?;
    Ok(())
}

/// Records a member just added to the configuration, whole (see
/// [`crate::Request::MemberAdd`]). A removed id is never recorded again.
pub(crate) fn add(
    table: &mut redb::Table<'_, u64, &'static [u8]>,
    removed: &impl ReadableTable<u64, ()>,
    m: &Member,
) -> Result<(), Error> {
    if removed.get(m.id)?.is_some() {
        return Ok(());
    }
    table.insert(m.id, m.encode().as_slice())?;
    Ok(())
}

/// Sets member `id`'s peer URLs, keeping its name and client URLs; a member not described yet
/// (an initial member that has not published) is recorded with only these. A removed id is
/// left alone. Refused if another member has one of the URLs (checked here, where every
/// replica applies updates in the same order, so two concurrent updates never both get one).
pub(crate) fn update_peer_urls(
    table: &mut redb::Table<'_, u64, &'static [u8]>,
    removed: &impl ReadableTable<u64, ()>,
    id: u64,
    peer_urls: &[String],
) -> Result<Result<(), KvError>, Error> {
    if removed.get(id)?.is_some() {
        return Ok(Ok(()));
    }
    let taken = all(table)?
        .iter()
        .any(|m| m.id != id && m.peer_urls.iter().any(|u| peer_urls.contains(u)));
    if taken {
        return Ok(Err(KvError::PeerUrlExists));
    }
    let stored = match table.get(id)? {
        Some(bytes) => Member::decode(bytes.value())?,
        None => Member {
            id,
            ..Member::default()
        },
    };
    let row = Member {
        peer_urls: peer_urls.to_vec(),
        ..stored
    };
    table.insert(id, row.encode().as_slice())?;
    Ok(Ok(()))
}

/// Removes the members `ids` for good.
pub(crate) fn remove(
    table: &mut redb::Table<'_, u64, &'static [u8]>,
    removed: &mut redb::Table<'_, u64, ()>,
    ids: &[u64],
) -> Result<(), Error> {
    for &id in ids {
        table.remove(id)?;
        removed.insert(id, ())?;
    }
    Ok(())
}

/// Every removed member's id, ascending.
pub(crate) fn removed(table: &impl ReadableTable<u64, ()>) -> Result<Vec<u64>, Error> {
    let mut out = Vec::new();
    for row in table.iter()? {
        out.push(row?.0.value());
    }
    Ok(out)
}

/// Every recorded member, by id.
pub(crate) fn all(table: &impl ReadableTable<u64, &'static [u8]>) -> Result<Vec<Member>, Error> {
    let mut out = Vec::new();
    for row in table.iter()? {
        let (id, bytes) = row?;
        let m = Member::decode(bytes.value())?;
        if m.id != id.value() {
            return Err(Error::Corrupt(format!(
                "member row {} describes member {}",
                id.value(),
                m.id
            )));
        }
        out.push(m);
    }
    Ok(out)
}

/// Replaces the tables' rows with `members` and `removed` (a snapshot's).
pub(crate) fn replace(
    table: &mut redb::Table<'_, u64, &'static [u8]>,
    removed_table: &mut redb::Table<'_, u64, ()>,
    members: &[Member],
    removed: &[u64],
) -> Result<(), Error> {
    table.retain(|_, _| false)?;
    for m in members {
        table.insert(m.id, m.encode().as_slice())?;
    }
    removed_table.retain(|_, _| false)?;
    for &id in removed {
        removed_table.insert(id, ())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64) -> Member {
        Member {
            id,
            name: format!("m{id}"),
            peer_urls: vec![format!("http://10.0.0.{id}:2380")],
            client_urls: vec![format!("http://10.0.0.{id}:2379"), "unix://x".into()],
        }
    }

    #[test]
    fn members_round_trip_and_publish_keeps_peer_urls() {
        let m = member(7);
        assert_eq!(Member::decode(&m.encode()).expect("decode"), m);
        assert!(Member::decode(&m.encode()[..5]).is_err(), "truncated");

        let dir = tempfile::tempdir().expect("tmp");
        let db = redb::Database::create(dir.path().join("m.redb")).expect("db");
        let txn = db.begin_write().expect("txn");
        {
            let mut t = txn.open_table(MEMBERS).expect("table");
            let mut gone = txn.open_table(MEMBERS_REMOVED).expect("table");
            publish(&mut t, &gone, &m).expect("publish");
            let again = Member {
                name: "renamed".into(),
                peer_urls: vec!["http://elsewhere:2380".into()],
                client_urls: vec![],
                ..m.clone()
            };
            publish(&mut t, &gone, &again).expect("publish");
            let stored = all(&t).expect("all");
            assert_eq!(
                stored,
                vec![Member {
                    name: "renamed".into(),
                    client_urls: vec![],
                    ..m.clone()
                }]
            );
            replace(&mut t, &mut gone, &[member(2), member(9)], &[]).expect("replace");
            assert_eq!(all(&t).expect("all"), vec![member(2), member(9)]);
            // Member 9 (and 5, never described) leave: removed for good, their descriptions
            // ignored.
            remove(&mut t, &mut gone, &[9, 5]).expect("remove");
            assert_eq!(all(&t).expect("all"), vec![member(2)]);
            assert_eq!(removed(&gone).expect("removed"), vec![5, 9]);
            publish(&mut t, &gone, &member(9)).expect("publish");
            assert_eq!(all(&t).expect("all"), vec![member(2)]);
        }
    }

    #[test]
    fn an_added_member_is_recorded_whole_and_an_update_moves_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = redb::Database::create(dir.path().join("m.redb")).expect("db");
        let txn = db.begin_write().expect("txn");
        {
            let mut t = txn.open_table(MEMBERS).expect("table");
            let mut gone = txn.open_table(MEMBERS_REMOVED).expect("table");
            let added = Member {
                id: 4,
                name: String::new(),
                peer_urls: vec!["http://10.0.0.4:2380".into()],
                client_urls: vec![],
            };
            add(&mut t, &gone, &added).expect("add");
            assert_eq!(all(&t).expect("all"), vec![added.clone()]);
            // It starts and publishes: its name and client URLs join the peer URLs.
            publish(&mut t, &gone, &member(4)).expect("publish");
            let moved = vec!["http://10.0.0.44:2380".to_string()];
            update_peer_urls(&mut t, &gone, 4, &moved)
                .expect("update")
                .expect("a free URL");
            assert_eq!(
                all(&t).expect("all"),
                vec![Member {
                    peer_urls: moved.clone(),
                    ..member(4)
                }]
            );
            // Another member's URL is refused; an initial member that never published is
            // recorded by an update alone.
            assert_eq!(
                update_peer_urls(&mut t, &gone, 2, &moved).expect("update"),
                Err(KvError::PeerUrlExists)
            );
            let free = vec!["http://10.0.0.2:2380".to_string()];
            update_peer_urls(&mut t, &gone, 2, &free)
                .expect("update")
                .expect("a free URL");
            assert_eq!(all(&t).expect("all")[0].name, "");
            // Removed ids stay removed.
            remove(&mut t, &mut gone, &[4]).expect("remove");
            add(&mut t, &gone, &added).expect("add");
            update_peer_urls(&mut t, &gone, 4, &free)
                .expect("update")
                .expect("ignored");
            assert!(all(&t).expect("all").iter().all(|m| m.id != 4));
        }
    }

    #[test]
    fn descriptions_over_the_limits_are_refused() {
        assert_eq!(member(1).check(), Ok(()));
        for bad in [
            Member { id: 0, ..member(1) },
            Member {
                name: "n".repeat(MEMBER_NAME_BYTES_MAX + 1),
                ..member(1)
            },
            Member {
                peer_urls: vec!["u".into(); MEMBER_URLS_MAX + 1],
                ..member(1)
            },
            Member {
                client_urls: vec!["u".repeat(MEMBER_URL_BYTES_MAX + 1)],
                ..member(1)
            },
        ] {
            assert_eq!(bad.check(), Err(KvError::BadMember));
        }
    }
}
