//! Numbers about a node for the metrics endpoint: Raft progress from
//! openraft's metrics watch and the Raft log's committed index, and the
//! size of both WALs. Plain types, so telemetry never names openraft.

use crate::log::Log;

use super::RaftNode;

/// Raft progress of one node, as of the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStats {
    /// The current term.
    pub term: u64,
    /// Whether this node leads.
    pub leader: bool,
    /// Index of the last entry in this node's Raft log (`None`: empty).
    pub last_log_index: Option<u64>,
    /// Index of the last entry known committed (`None`: none yet).
    pub committed_index: Option<u64>,
    /// Index of the last entry applied (`None`: none yet).
    pub applied_index: Option<u64>,
    /// On the leader, each other member's replication lag; empty on a
    /// follower (followers do not track each other).
    pub lag: Vec<FollowerLag>,
}

/// How far one member's log is behind the leader's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerLag {
    /// The member's name.
    pub name: String,
    /// Entries the leader has that the member is not known to hold (all
    /// of them while its progress is unknown).
    pub entries: u64,
}

/// Size of one of the node's WALs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalStats {
    /// Which log: `raft` (the Raft entries) or `data` (the records).
    pub log: &'static str,
    /// Segments on disk.
    pub segments: u64,
    /// Store bytes of all segments.
    pub bytes: u64,
    /// Records retained (visible ones, from the lowest offset).
    pub records: u64,
}

impl RaftNode {
    /// Raft progress from openraft's metrics watch (a copy of the latest
    /// values; no waiting).
    pub fn raft_stats(&self) -> RaftStats {
        let status = self.status();
        let leader = status.leader == Some(self.id);
        let last = status.last_log_index;
        let lag = if leader {
            status
                .members
                .iter()
                .filter(|m| m.id != self.id)
                .map(|m| FollowerLag {
                    name: m.member.name.clone(),
                    entries: match (last, m.matched) {
                        (Some(last), Some(matched)) => last.saturating_sub(matched),
                        (Some(last), None) => last + 1,
                        (None, _) => 0,
                    },
                })
                .collect()
        } else {
            Vec::new()
        };
        RaftStats {
            term: status.term,
            leader,
            last_log_index: last,
            committed_index: self.log.committed_index(),
            applied_index: status.applied_index,
            lag,
        }
    }

    /// Size of the Raft log and the data log. Stats each segment file:
    /// call it on a blocking thread.
    pub fn wal_stats(&self) -> [WalStats; 2] {
        [
            wal_stats("raft", self.log.wal()),
            wal_stats("data", &self.sm.data()),
        ]
    }
}

fn wal_stats(name: &'static str, log: &Log) -> WalStats {
    let segments = log.segments();
    WalStats {
        log: name,
        segments: segments.len() as u64,
        bytes: segments.iter().map(|s| s.bytes).sum(),
        records: log.next_offset().saturating_sub(log.lowest_offset()),
    }
}
