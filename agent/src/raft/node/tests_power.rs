//! Power loss at cluster level: three nodes on the in-process router,
//! node 3's WALs (the Raft log and the data log) on the simulated disk
//! ([`SimFs`]). While a producer writes through node 1, node 3 "loses
//! power": its network goes, the disk keeps only what was synced (every
//! unsynced write lost, torn or kept, seeded), and it restarts on what
//! survived. The cluster keeps every acknowledged record, node 3 catches
//! up, and all logs are identical. Once as a follower, once as the leader.
//!
//! Reach of the simulated disk: both WALs and the Raft metadata
//! (`raft/raft-meta.json`: vote, committed and purged ids) go through it,
//! so the vote a restarted node finds is the one it synced. The node id,
//! the cluster id and snapshots are written with `std::fs` (always synced,
//! so they survive a power cut whole). The shutdown that ends the
//! in-process node after the cut finds every write failing, as it would
//! with the power off.

use std::sync::Arc;
use std::time::Duration;

use super::router::{read_range, retrying_producer, wait_applied, Cluster};
use super::*;
use crate::log::fs::{Faults, SimFs};

/// The crash seed: `PROGLOG_FAULT_SEED`, else the clock; printed.
fn seed() -> u64 {
    let seed = std::env::var("PROGLOG_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("power loss: seed {seed} (replay with PROGLOG_FAULT_SEED={seed})");
    seed
}

/// Cuts node `id`'s power: off the network, the disk crashed with
/// `seed`, the node stopped without writing anything more.
async fn cut_power(cluster: &mut Cluster, id: u64, disk: &SimFs, seed: u64) {
    cluster.router.isolate(id);
    cluster.router.unregister(id);
    disk.crash(seed);
    // Fails: its files are gone with the power, and nothing new is
    // written (the shutdown would write the Raft metadata again).
    disk.set_faults(Faults {
        write: true,
        ..Faults::default()
    });
    let node = cluster.nodes.remove(&id).unwrap();
    let _ = node.shutdown().await;
    drop(node);
    disk.set_faults(Faults::default());
    cluster.router.heal(id);
}

/// Waits until every node has applied `acked.len()` records or more and
/// holds the same log, with every acknowledged record at its offset.
async fn check(cluster: &Cluster, acked: &[(u64, Bytes)]) {
    let mut sorted = acked.to_vec();
    sorted.sort();
    for (i, (offset, _)) in sorted.iter().enumerate() {
        assert_eq!(*offset, i as u64, "acknowledged offsets dense and unique");
    }
    let end = sorted.len() as u64;
    let mut logs = Vec::new();
    for node in cluster.nodes.values() {
        wait_applied(node, end).await;
        let next = *node.subscribe().borrow();
        logs.push(read_range(node, 0, next).await);
    }
    for (node, log) in cluster.nodes.keys().zip(&logs) {
        assert_eq!(log, &logs[0], "node {node}'s log differs from node 1's");
        for (offset, record) in &sorted {
            assert_eq!(&log[*offset as usize], record, "node {node} at {offset}");
        }
    }
}

#[tokio::test]
async fn a_node_that_loses_power_restarts_on_what_was_synced_and_catches_up() {
    tokio::time::timeout(Duration::from_secs(180), async {
        let seed = seed();
        let disk = SimFs::new();
        let mut cluster = Cluster::start(2, |s| s).await;
        cluster.prepare(3);
        let settings = cluster.settings.get_mut(&3).unwrap();
        settings.log.fs = Arc::new(disk.clone());
        std::fs::create_dir_all(settings.dir.join("raft")).unwrap();
        cluster.start_node(3).await;
        cluster.add(3).await;
        assert_eq!(cluster.wait_agreed_leader().await, 1);
        let via = cluster.nodes[&1].clone();

        // Round 1: node 3 follows. Round 2: node 3 leads.
        let mut acked = Vec::new();
        for (round, name) in [(0u64, "follower"), (1, "leader")] {
            if round == 1 {
                cluster.nodes[&1]
                    .transfer_leadership(Some(3))
                    .await
                    .unwrap();
                assert_eq!(cluster.wait_agreed_leader().await, 3);
            }
            let writes = retrying_producer(via.clone(), name.to_string(), 0..400);
            // Cut the power mid-stream, once writes flow through node 3.
            let node3 = cluster.nodes[&3].clone();
            let from = acked.len() as u64;
            super::router::eventually("writes to reach node 3", || {
                *node3.subscribe().borrow() >= from + 50
            })
            .await;
            let applied = *node3.subscribe().borrow();
            cut_power(&mut cluster, 3, &disk, seed.wrapping_add(round)).await;
            // What survived: the Raft log keeps what node 3 synced
            // (entries it acknowledged), past its header at least.
            let survived = |sub: &str| -> u64 {
                use crate::log::fs::FileSystem;
                let dir = cluster.settings[&3].dir.join(sub);
                let names = disk.list(&dir).unwrap_or_default();
                names
                    .iter()
                    .filter(|n| n.ends_with(".store"))
                    .filter_map(|n| disk.contents(&dir.join(n)))
                    .map(|c| c.len() as u64)
                    .sum()
            };
            let (raft_bytes, data_bytes) = (survived("raft/entries"), survived("sm/data"));
            assert!(raft_bytes > 16, "node 3's synced Raft entries are gone");
            let survivors = cluster.wait_agreed_leader().await;
            assert_ne!(survivors, 3);
            cluster.start_node(3).await;
            eprintln!(
                "node 3 as {name}: applied {applied} records at the cut; its store files kept \
                 {raft_bytes} bytes (Raft log) and {data_bytes} bytes (data log)"
            );
            acked.extend(writes.await.unwrap());
            check(&cluster, &acked).await;
            eprintln!(
                "power loss as {name}: node 3 restarted and caught up; {} acked in all",
                acked.len()
            );
        }
        assert_eq!(acked.len(), 800);
        cluster.shutdown().await;
    })
    .await
    .expect("within the test's deadline");
}
