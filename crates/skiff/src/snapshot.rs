//! `skiff snapshot status|restore`: etcdctl's commands for the backup files that `etcdctl
//! snapshot save` stores from a Skiff member (see `kv::backup` for their layout). Both check
//! the whole file (its sha256, then every row and the state machine snapshot's CRC) first: a
//! truncated or altered file is refused in one line with a non-zero exit, and nothing is
//! written.

use std::path::PathBuf;

use anyhow::bail;
use clap::Subcommand;

#[derive(clap::Args, Debug)]
pub(crate) struct SnapshotArgs {
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(Subcommand, Debug)]
enum SnapshotCommand {
    /// Check a backup whole and print its hash, revision, total keys and total size.
    Status(StatusArgs),
    /// Create a member's data dir for a new cluster from a backup (then start every member
    /// with `skiff serve`, the same flags and `--initial-cluster-state new`).
    Restore(RestoreArgs),
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    /// The backup file.
    file: PathBuf,
    /// Output format: simple, table or json (as etcdctl's).
    #[arg(short = 'w', long, default_value = "simple", value_parser = ["simple", "table", "json"])]
    write_out: String,
}

#[derive(clap::Args, Debug)]
struct RestoreArgs {
    /// The backup file.
    file: PathBuf,
    /// This member's name; must appear in --initial-cluster.
    #[arg(long, default_value = "default")]
    name: String,
    /// The data dir to create (default: <name>.skiff); refused if it exists and is not empty.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The new cluster's members: name=peer-url,... (default: this member alone).
    #[arg(long)]
    initial_cluster: Option<String>,
    /// The new cluster's token (pick a new one: the cluster id is derived from it and the
    /// members).
    #[arg(long, default_value = "skiff-cluster")]
    initial_cluster_token: String,
    /// This member's peer URL; must match its --initial-cluster entry.
    #[arg(long, default_value = "http://127.0.0.1:2380")]
    initial_advertise_peer_urls: String,
}

pub(crate) fn run(args: SnapshotArgs) -> anyhow::Result<()> {
    match args.command {
        SnapshotCommand::Status(a) => status(&a),
        SnapshotCommand::Restore(a) => restore(&a),
    }
}

fn status(a: &StatusArgs) -> anyhow::Result<()> {
    let (_, summary) = server::restore::verify(&a.file)?;
    // etcd reports its database's size (the file less the digest) and counts its entries,
    // which are mostly key revisions: the rows here.
    let hash = format!("{:x}", summary.crc);
    let revision = summary.state.revision;
    let keys = summary.state.rows;
    let size = summary.body_bytes();
    match a.write_out.as_str() {
        "json" => println!(
            "{}",
            serde_json::json!({
                "hash": summary.crc,
                "revision": revision,
                "totalKey": keys,
                "totalSize": size,
            })
        ),
        "table" => print!(
            "{}",
            table(
                &["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"],
                &[
                    hash,
                    revision.to_string(),
                    keys.to_string(),
                    human_bytes(size)
                ],
            )
        ),
        _ => println!("{hash}, {revision}, {keys}, {}", human_bytes(size)),
    }
    Ok(())
}

fn restore(a: &RestoreArgs) -> anyhow::Result<()> {
    server::cluster::check_url(&a.initial_advertise_peer_urls)
        .map_err(|e| anyhow::anyhow!("--initial-advertise-peer-urls: {e}"))?;
    let initial_cluster = a
        .initial_cluster
        .clone()
        .unwrap_or_else(|| format!("{}={}", a.name, a.initial_advertise_peer_urls));
    let cluster = server::ClusterSpec::parse(&initial_cluster, &a.initial_cluster_token)
        .map_err(|e| anyhow::anyhow!("--initial-cluster: {e}"))?;
    let Some(me) = cluster.member_by_name(&a.name) else {
        bail!("--name {:?} is not a member of --initial-cluster", a.name);
    };
    if me.peer_url != a.initial_advertise_peer_urls {
        bail!(
            "--initial-advertise-peer-urls {} does not match {}'s entry {} in --initial-cluster",
            a.initial_advertise_peer_urls,
            a.name,
            me.peer_url
        );
    }
    let data_dir = a
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.skiff", a.name)));
    let restored = server::restore::restore(&server::restore::RestoreOptions {
        backup: a.file.clone(),
        data_dir: data_dir.clone(),
        name: a.name.clone(),
        cluster,
    })?;
    let s = restored.summary.state;
    println!(
        "Restored {} into {}: member {:x} of cluster {:x}, revision {}, {} keys, {} leases",
        a.file.display(),
        data_dir.display(),
        restored.identity.node_id.get(),
        restored.identity.cluster_id,
        s.revision,
        s.keys,
        s.leases
    );
    Ok(())
}

/// A size as etcdctl prints it (go-humanize's `Bytes`: SI units, one decimal below 10).
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let e = e.min(UNITS.len() - 1);
    let value = (n as f64 / 1000f64.powi(e as i32) * 10.0 + 0.5).floor() / 10.0;
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[e])
    } else {
        format!("{value:.0} {}", UNITS[e])
    }
}

/// A one-row table as etcdctl draws it (tablewriter, cells right-aligned, headers centred).
fn table(header: &[&str], row: &[String]) -> String {
    let widths: Vec<usize> = header
        .iter()
        .zip(row)
        .map(|(h, c)| h.len().max(c.len()) + 2)
        .collect();
    let rule: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(*w)))
        .collect::<String>()
        + "+\n";
    let centred: String = header
        .iter()
        .zip(&widths)
        .map(|(h, w)| {
            let left = (w - h.len()) / 2;
            format!("|{}{h}{}", " ".repeat(left), " ".repeat(w - h.len() - left))
        })
        .collect::<String>()
        + "|\n";
    let cells: String = row
        .iter()
        .zip(&widths)
        .map(|(c, w)| format!("|{c:>width$} ", width = w - 1))
        .collect::<String>()
        + "|\n";
    format!("{rule}{centred}{rule}{cells}{rule}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_as_etcdctl_prints_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(9), "9 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(3584), "3.6 kB");
        assert_eq!(human_bytes(20_480), "20 kB");
        assert_eq!(human_bytes(2_000_000), "2.0 MB");
        assert_eq!(human_bytes(1_536_000_000), "1.5 GB");
    }

    #[test]
    fn a_table_has_a_rule_the_headers_and_the_row() {
        let t = table(&["HASH", "REVISION"], &["5e0b8d7a".into(), "51".into()]);
        let expected = "\
+----------+----------+
|   HASH   | REVISION |
+----------+----------+
| 5e0b8d7a |       51 |
+----------+----------+
";
        assert_eq!(t, expected);
    }
}
