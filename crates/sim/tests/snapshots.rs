//! Snapshot figures (issue 4): bytes sent per catch-up and chunks resent after faults, over
//! the 6.5840 3D ports; and a check that the ports really install snapshots.

use skiff_sim::scenarios::find;

struct Figures {
    runs: u64,
    installs: u64,
    bytes_installed: u64,
    chunks_needed: u64,
    chunks_sent: u64,
    bytes_sent: u64,
    taken: u64,
    dropped: u64,
}

fn figures(name: &str, seeds: u64) -> Figures {
    let s = find(name).expect("known scenario");
    let mut f = Figures {
        runs: 0,
        installs: 0,
        bytes_installed: 0,
        chunks_needed: 0,
        chunks_sent: 0,
        bytes_sent: 0,
        taken: 0,
        dropped: 0,
    };
    for seed in 0..seeds {
        let r = std::panic::catch_unwind(|| (s.run)(seed));
        let Ok(c) = r else {
            panic!("{name} seed {seed} failed; replay with the sim binary");
        };
        let (chunks, bytes) = c.snapshot_traffic();
        f.runs += 1;
        f.installs += c.snapshots_installed;
        f.bytes_installed += c.snapshot_bytes_installed;
        f.chunks_needed += c.snapshot_chunks_needed;
        f.chunks_sent += chunks;
        f.bytes_sent += bytes;
        f.taken += c.snapshots_taken;
        f.dropped += c.snapshot_chunks_dropped();
    }
    eprintln!(
        "{name}: {} seeds, {} snapshots taken, {} installed; per catch-up: {:.0} bytes sent for \
         a {:.0}-byte snapshot, {:.1} chunks sent for {:.1} needed ({:.1} resent or abandoned; {:.1} dropped at the edge \
         because the leader's snapshot changed)",
        f.runs,
        f.taken,
        f.installs,
        f.bytes_sent as f64 / f.installs.max(1) as f64,
        f.bytes_installed as f64 / f.installs.max(1) as f64,
        f.chunks_sent as f64 / f.installs.max(1) as f64,
        f.chunks_needed as f64 / f.installs.max(1) as f64,
        (f.chunks_sent as f64 - f.chunks_needed as f64) / f.installs.max(1) as f64,
        f.dropped as f64 / f.installs.max(1) as f64,
    );
    f
}

#[test]
fn snapshot_install_ports_install_snapshots_and_report_traffic() {
    for name in [
        "SnapshotInstall",
        "SnapshotInstallUnreliable",
        "SnapshotInstallCrash",
        "SnapshotInstallUnCrash",
    ] {
        let f = figures(name, 20);
        assert!(f.installs > 0, "{name}: no snapshot was installed");
        assert!(
            f.chunks_sent >= f.chunks_needed,
            "{name}: fewer chunks than installed"
        );
    }
}

#[test]
fn far_behind_follower_catch_up_figures() {
    // ~105 KB snapshot in 1 KiB chunks, 20% loss towards the lagger, leader crash mid-transfer.
    let f = figures("SnapshotCatchUpFar", 20);
    assert!(
        f.installs >= 20,
        "every seed installs at least one snapshot"
    );
}
