//! `Commands`: the command side of either deployment, as one `ConnectionLike` type, so
//! the scripts (generic over the connection) run unchanged on both.

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A cheap-to-clone handle on the command connection(s) of the current session.
#[derive(Clone)]
pub(crate) enum Commands {
    /// One multiplexed connection to the one Redis.
    Single(MultiplexedConnection),
    /// redis-rs' cluster connection: routes each command by the slot of its first key,
    /// follows `MOVED`/`ASK` and refreshes its slot map by itself.
    Cluster(ClusterConnection),
}

impl From<MultiplexedConnection> for Commands {
    fn from(conn: MultiplexedConnection) -> Self {
        Self::Single(conn)
    }
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}
