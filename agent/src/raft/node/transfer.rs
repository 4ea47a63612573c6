//! Leadership transfer (openraft 0.9 has none). A stub: the real version,
//! where the leader asks the most caught-up follower to campaign and steps
//! down, replaces this file.

use super::{MembershipError, RaftNode};

impl RaftNode {
    /// Hands leadership to node `to`, or with `None` to the most caught-up
    /// follower; returns the id of the node asked to take over. Not
    /// implemented yet: always an error.
    pub async fn transfer_leadership(&self, to: Option<u64>) -> Result<u64, MembershipError> {
        let _ = to;
        Err(MembershipError::Raft(
            "leadership transfer is not implemented yet".into(),
        ))
    }
}
