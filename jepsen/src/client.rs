//! etcd v3 clients: connections, probes (status, HashKV), and how an
//! error is recorded (`fail` only when the request certainly was not
//! applied).

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};

use crate::history::EventType;

/// Timeout of one probe (status, hash, readiness).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A client of one member (`http://127.0.0.1:PORT`), each request bounded
/// by `timeout`.
pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Client, String> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(timeout)
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
    timed(timeout, Client::connect([endpoint], Some(opts))).await
}

/// `fut` within `d`, its error or the timeout as text.
pub async fn timed<T, E: std::fmt::Display>(
    d: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(d, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("timeout after {d:?}")),
    }
}

/// How to record a request that returned `error`: `Fail` only if it cannot
/// have reached a server (the connection could not be made); everything
/// else may have been applied and is `Info`.
pub fn classify(error: &str) -> EventType {
    let e = error.to_ascii_lowercase();
    // A server's own message (etcdserver: ...) may describe its forwarding
    // to the leader, which can have gone through.
    if !e.contains("etcdserver")
        && (e.contains("connection refused") || e.contains("tcp connect error"))
    {
        EventType::Fail
    } else {
        EventType::Info
    }
}

/// Whether the member answers a serializable read (it serves clients; it
/// may have no leader).
pub async fn serves(endpoint: &str) -> bool {
    let Ok(mut c) = connect(endpoint, PROBE_TIMEOUT).await else {
        return false;
    };
    timed(
        PROBE_TIMEOUT,
        c.get(
            "jepsen-readiness",
            Some(GetOptions::new().with_serializable()),
        ),
    )
    .await
    .is_ok()
}

/// What a member says of itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    /// Its member ID.
    pub id: u64,
    /// The leader it knows (0: none).
    pub leader: u64,
    /// Its current revision.
    pub revision: i64,
}

/// Maintenance `Status` of one member.
pub async fn status(endpoint: &str) -> Result<MemberStatus, String> {
    let mut c = connect(endpoint, PROBE_TIMEOUT).await?;
    let s = timed(PROBE_TIMEOUT, c.status()).await?;
    let h = s.header().ok_or("status without header")?;
    Ok(MemberStatus {
        id: h.member_id(),
        leader: s.leader(),
        revision: h.revision(),
    })
}

/// The revision of a linearizable read through one member: every write
/// committed before the call is at or below it.
pub async fn linearizable_revision(endpoint: &str) -> Result<i64, String> {
    let mut c = connect(endpoint, PROBE_TIMEOUT).await?;
    let r = timed(Duration::from_secs(5), c.get("jepsen-final-revision", None)).await?;
    Ok(r.header().map_or(0, |h| h.revision()))
}

/// `HashKV` of one member at `revision`: (revision hashed, hash, compact
/// revision).
pub async fn hash_kv(endpoint: &str, revision: i64) -> Result<(i64, u32, i64), String> {
    let mut c = connect(endpoint, PROBE_TIMEOUT).await?;
    let r = timed(Duration::from_secs(5), c.hash_kv(revision)).await?;
    Ok((r.hash_revision(), r.hash(), r.compact_version()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connection_failures_are_definite() {
        assert_eq!(
            classify("status: Unavailable, message: \"tcp connect error: Connection refused (os error 111)\""),
            EventType::Fail
        );
        assert_eq!(classify("timeout after 3s"), EventType::Info);
        assert_eq!(
            classify("etcdserver: leader changed (tcp connect error)"),
            EventType::Info
        );
        assert_eq!(
            classify("status: Unavailable, message: \"etcdserver: request timed out\""),
            EventType::Info
        );
        assert_eq!(
            classify("status: Unknown, message: \"h2 protocol error: connection reset\""),
            EventType::Info
        );
    }
}
