//! `skiff dev`: a local cluster (3 members, or `--members` 1 or 5) as child processes of this
//! one, on 127.0.0.1. Each
//! child is `skiff serve` with its own data dir under `--data-dir` and its log in
//! `<data-dir>/<name>.log`. Ctrl-C (or SIGTERM) stops the children (and they stop by
//! themselves if this process dies, when their stdin pipe closes); if a child exits on its
//! own, the others are stopped too and the exit is reported.

use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args, Debug, Clone)]
pub struct DevArgs {
    /// Root of the members' data dirs.
    #[arg(long, default_value = "./skiff-data")]
    data_dir: PathBuf,
    /// First port: member i serves clients on base+2i and peers on base+2i+1.
    #[arg(long, default_value_t = 2379, value_parser = clap::value_parser!(u16).range(1024..=65000))]
    base_port: u16,
    /// Members: 1, 3 or 5 (an even count tolerates no more failures than one fewer).
    #[arg(long, default_value = "3", value_parser = ["1", "3", "5"])]
    members: String,
    /// TLS with client and peer certificate authentication on both ports: a throwaway CA and
    /// certificates are made under `<data-dir>/tls` (kept for the next run), and the etcdctl
    /// flags to use are printed.
    #[arg(long)]
    tls: bool,
    /// Flags for every member's `skiff serve`, after `--` (for example `skiff dev --
    /// --quota-backend-bytes 16777216 --experimental-corrupt-check-time 10s`); not the ones
    /// `skiff dev` sets itself (names, data dirs, URLs, the initial cluster).
    #[arg(last = true, value_name = "SERVE FLAGS")]
    serve_flags: Vec<String>,
}

/// The `skiff serve` flags `skiff dev` sets for each member itself.
const FLAGS_SET_BY_DEV: [&str; 9] = [
    "--name",
    "--data-dir",
    "--listen-client-urls",
    "--advertise-client-urls",
    "--listen-peer-urls",
    "--initial-advertise-peer-urls",
    "--initial-cluster",
    "--initial-cluster-state",
    "--stop-on-stdin-eof",
];

/// Refuses passed-through flags that would fight the ones `skiff dev` sets (with `tls`, also
/// the TLS flags).
fn check_serve_flags(flags: &[String], tls: bool) -> anyhow::Result<()> {
    for f in flags {
        let name = f.split('=').next().unwrap_or(f);
        if FLAGS_SET_BY_DEV.contains(&name)
            || (tls && crate::tls::FLAGS_SET_BY_DEV_TLS.contains(&name))
        {
            anyhow::bail!("skiff dev sets {name} for each member itself; give it no {name}");
        }
    }
    Ok(())
}

pub fn run(args: DevArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(run_async(args))
}

async fn run_async(args: DevArgs) -> anyhow::Result<()> {
    let members: usize = args
        .members
        .parse()
        .context("--members must be 1, 3 or 5")?;
    check_serve_flags(&args.serve_flags, args.tls)?;
    let exe = std::env::current_exe().context("find the skiff executable")?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("create {}", args.data_dir.display()))?;
    let certs = if args.tls {
        Some(crate::tls::DevCerts::make_or_reuse(
            &args.data_dir.join("tls"),
        )?)
    } else {
        None
    };
    let mut tls_flags: Vec<std::ffi::OsString> = Vec::new();
    if let Some(c) = &certs {
        for (flag, path) in [
            ("--cert-file", &c.member),
            ("--key-file", &c.member_key),
            ("--trusted-ca-file", &c.ca),
            ("--peer-cert-file", &c.member),
            ("--peer-key-file", &c.member_key),
            ("--peer-trusted-ca-file", &c.ca),
        ] {
            tls_flags.push(flag.into());
            tls_flags.push(path.into());
        }
        tls_flags.push("--client-cert-auth".into());
        tls_flags.push("--peer-client-cert-auth".into());
        // The client certificate is signed by the same CA: without this, it would open the
        // peer port too (Raft messages, forwarded writes).
        tls_flags.push("--peer-cert-allowed-cn".into());
        tls_flags.push(crate::tls::DEV_MEMBER_CN.into());
    }
    let scheme = if args.tls { "https" } else { "http" };
    let port = |i: usize, peer: bool| u32::from(args.base_port) + 2 * i as u32 + u32::from(peer);
    let cluster = (0..members)
        .map(|i| format!("n{}={scheme}://127.0.0.1:{}", i + 1, port(i, true)))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Vec::new();
    // Held apart from the children because `Child::wait` closes a child's stdin.
    let mut stdins = Vec::new();
    let mut endpoints = Vec::new();
    for i in 0..members {
        let name = format!("n{}", i + 1);
        let client = format!("{scheme}://127.0.0.1:{}", port(i, false));
        let peer = format!("{scheme}://127.0.0.1:{}", port(i, true));
        let log_path = args.data_dir.join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        let log_err = log.try_clone().context("duplicate log file handle")?;
        let mut child = tokio::process::Command::new(&exe)
            .arg("serve")
            .args(["--name", &name])
            .arg("--data-dir")
            .arg(args.data_dir.join(&name))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster])
            .args(["--initial-cluster-state", "new"])
            .arg("--stop-on-stdin-eof")
            .args(&tls_flags)
            .args(&args.serve_flags)
            .stdin(std::process::Stdio::piped())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start member {name}"))?;
        stdins.push(child.stdin.take());
        children.push((name, child));
        endpoints.push(client);
    }
    // Without the scheme: etcdctl 3.4 sends an endpoint given as a URL in the HTTP/2
    // `:authority` header ("http://..."), which is invalid there, and `endpoint status` fails.
    // The certificate flags alone make it speak TLS.
    let eps = endpoints
        .iter()
        .map(|e| {
            e.trim_start_matches("http://")
                .trim_start_matches("https://")
        })
        .collect::<Vec<_>>()
        .join(",");
    println!("skiff dev: {members} members running");
    for ((name, _), ep) in children.iter().zip(&endpoints) {
        println!(
            "  {name}: {ep}   (log: {}/{name}.log)",
            args.data_dir.display()
        );
    }
    println!();
    println!("try:");
    println!("  export ETCDCTL_API=3 ENDPOINTS={eps}");
    // etcdctl's TLS flags: the dev CA, and the client certificate every member requires.
    let tls = match &certs {
        Some(c) => {
            println!(
                "  export TLS=\"--cacert={} --cert={} --key={}\"   # client certificate CN: {}",
                c.ca.display(),
                c.client.display(),
                c.client_key.display(),
                crate::tls::DEV_CLIENT_CN
            );
            " $TLS"
        }
        None => "",
    };
    println!("  etcdctl --endpoints=$ENDPOINTS{tls} put greeting hello");
    println!("  etcdctl --endpoints=$ENDPOINTS{tls} get greeting");
    println!("  etcdctl --endpoints=$ENDPOINTS{tls} endpoint status -w table");
    if let Some(first) = endpoints.first() {
        println!("  dashboard: {first}/dashboard   metrics: {first}/metrics");
    }
    println!();
    println!(
        "Ctrl-C stops the cluster; data stays in {}",
        args.data_dir.display()
    );

    // A member removed from the cluster (`etcdctl member remove`) exits on its own, and one
    // killed from outside (`kill -9` or `kill`, to try a crash) is gone: the others keep
    // running, as a real cluster's would. Any other exit (a member failing, a crash) stops the
    // dev cluster.
    let mut removed: Vec<String> = Vec::new();
    let exited = loop {
        let waits = children
            .iter_mut()
            .filter(|(name, _)| !removed.contains(name))
            .map(|(name, c)| {
                let name = name.clone();
                Box::pin(async move { (name, c.wait().await) })
            });
        let any_exit = futures_select_all(waits.collect());
        let (name, status) = tokio::select! {
            r = crate::shutdown_signal() => { r?; break None }
            exit = any_exit => exit,
        };
        let was_removed = status
            .as_ref()
            .is_ok_and(|s| s.code() == Some(i32::from(crate::EXIT_REMOVED)));
        // SIGKILL or SIGTERM from outside; a crash (SIGSEGV, SIGABRT) is a failure.
        let killed = status.as_ref().ok().and_then(|s| {
            use std::os::unix::process::ExitStatusExt;
            s.signal().filter(|&sig| sig == 9 || sig == 15)
        });
        if was_removed {
            println!(
                "skiff dev: member {name} was removed from the cluster; the others keep running"
            );
        } else if let Some(signal) = killed {
            println!(
                "skiff dev: member {name} was killed (signal {signal}); the others keep running"
            );
        } else {
            break Some((name, status));
        }
        removed.push(name);
        if removed.len() == children.len() {
            break None;
        }
    };
    // Closing a member's stdin asks it to stop cleanly; kill it if it has not within 5 s.
    drop(stdins);
    for (name, child) in &mut children {
        let stopped = tokio::time::timeout(std::time::Duration::from_secs(5), child.wait()).await;
        if stopped.is_err() {
            tracing::warn!(member = %name, "did not stop in time; killing it");
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
    match exited {
        None => {
            println!("skiff dev: stopped");
            Ok(())
        }
        Some((name, status)) => anyhow::bail!(
            "member {name} exited ({}); see {}/{name}.log",
            status
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string()),
            args.data_dir.display()
        ),
    }
}

/// Completes with the first of `futs` to complete.
async fn futures_select_all<F: std::future::Future + Unpin>(futs: Vec<F>) -> F::Output {
    let mut futs = futs;
    std::future::poll_fn(move |cx| {
        for f in futs.iter_mut() {
            if let std::task::Poll::Ready(v) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(v);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_that_dev_sets_cannot_be_passed_through() {
        let ok = ["--quota-backend-bytes".to_string(), "3000000".to_string()];
        assert!(check_serve_flags(&ok, true).is_ok());
        let cert = ["--cert-file=x.pem".to_string()];
        assert!(check_serve_flags(&cert, false).is_ok());
        for bad in ["--name", "--data-dir=x", "--initial-cluster"] {
            let err = check_serve_flags(&[bad.to_string()], false).expect_err(bad);
            let name = bad.split('=').next().unwrap_or(bad);
            assert!(err.to_string().contains(name), "{err}");
        }
        for bad in ["--cert-file=x.pem", "--peer-client-cert-auth"] {
            let err = check_serve_flags(&[bad.to_string()], true).expect_err(bad);
            let name = bad.split('=').next().unwrap_or(bad);
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}
