//! The fault-injecting TCP proxy in front of every member's peer port.
//!
//! Member `j` listens for peers on a private port and advertises the
//! proxy's port instead (in `--initial-advertise-peer-urls` and in every
//! member's `--initial-cluster`), so all Raft traffic *into* `j` passes
//! through proxy `j`. A connection on loopback does not say which member
//! opened it, so the proxy asks the kernel: the connecting socket's inode
//! is in `/proc/net/tcp`, and exactly one member process holds it (see
//! [`crate::procnet`]). Knowing `(from, to)` for every connection, a
//! partition into groups cuts exactly the connections between groups, in
//! both directions (the traffic `j` sends to `k` goes through proxy `k`),
//! and leaves traffic within a group alone.
//!
//! A cut connection is black-holed, as a dropped packet would be: bytes
//! from either side are read and discarded, nothing is delivered and
//! nothing is closed, so each side only notices by its own timeouts. New
//! connections across the cut are accepted and black-holed the same way.
//! When the partition heals, black-holed connections are closed (their
//! streams lost data, so they cannot go on) and the members reconnect.
//!
//! The lookup runs beside the forwarding, which does not wait for it; it
//! is awaited only when a partition is (or comes) in force. A connection
//! whose owner cannot be found (its opener already closed it) is
//! black-holed whenever a partition is in force.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::procnet::{connection_owner, Owner};

/// The PIDs of the running members, by member index (kept up to date by
/// the cluster, read by the proxy to tell who connects).
pub type PidTable = Arc<Mutex<Vec<Option<u32>>>>;

/// A partition: the group of each member (members in one group talk).
pub type Groups = Vec<usize>;

/// Which members may talk to each other: a symmetric matrix, every member
/// connected to itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Links(Vec<Vec<bool>>);

impl Links {
    /// Members in the same group talk, the others do not.
    pub fn from_groups(groups: &[usize]) -> Links {
        Links(
            groups
                .iter()
                .map(|a| groups.iter().map(|b| a == b).collect())
                .collect(),
        )
    }

    /// Jepsen's bridge: `left` and `right` each talk among themselves and
    /// to `bridge`, which talks to everyone; no link between the halves.
    /// Members in none of the three are cut off from everyone.
    pub fn bridge(n: usize, left: &[usize], bridge: usize, right: &[usize]) -> Links {
        let side = |i: usize| {
            if i == bridge {
                Some(0)
            } else if left.contains(&i) {
                Some(1)
            } else if right.contains(&i) {
                Some(2)
            } else {
                None
            }
        };
        Links(
            (0..n)
                .map(|a| {
                    (0..n)
                        .map(|b| {
                            a == b
                                || match (side(a), side(b)) {
                                    (Some(x), Some(y)) => x == 0 || y == 0 || x == y,
                                    _ => false,
                                }
                        })
                        .collect()
                })
                .collect(),
        )
    }

    /// Whether `a` and `b` talk (unknown members do not).
    pub fn connected(&self, a: usize, b: usize) -> bool {
        a == b
            || self
                .0
                .get(a)
                .and_then(|r| r.get(b))
                .copied()
                .unwrap_or(false)
    }
}

/// Counters of what the proxy did.
#[derive(Debug, Default)]
struct Stats {
    accepted: AtomicU64,
    unknown_source: AtomicU64,
    closed_source: AtomicU64,
    blackholed: AtomicU64,
    cut_live: AtomicU64,
}

/// What the proxy did during a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProxyStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections whose opening member could not be found.
    pub unknown_source: u64,
    /// Connections already closed by the side that opened them when the
    /// proxy looked (so nobody owned them any more).
    pub closed_source: u64,
    /// Connections accepted during a partition across it (black-holed).
    pub blackholed: u64,
    /// Live connections black-holed when a partition began.
    pub cut_live: u64,
}

/// One proxy per member; dropping it closes every proxied connection.
pub struct Proxy {
    cut: watch::Sender<Option<Links>>,
    stats: Arc<Stats>,
    listeners: Vec<JoinHandle<()>>,
}

/// Whether traffic from `from` (unknown: `None`) to `to` is cut.
fn is_cut(from: Option<usize>, to: usize, links: &Option<Links>) -> bool {
    let Some(l) = links else { return false };
    match from {
        Some(f) => !l.connected(f, to),
        None => true,
    }
}

impl Proxy {
    /// Serves `listeners[j]`, forwarding to `backends[j]` (member `j`'s real
    /// peer port).
    ///
    /// # Errors
    /// If a listener cannot be handed to the runtime.
    pub fn start(
        listeners: Vec<std::net::TcpListener>,
        backends: Vec<SocketAddr>,
        pids: PidTable,
    ) -> anyhow::Result<Proxy> {
        let (cut, _) = watch::channel(None);
        let stats = Arc::new(Stats::default());
        let mut tasks = Vec::new();
        for (to, (l, backend)) in listeners.into_iter().zip(backends).enumerate() {
            l.set_nonblocking(true)?;
            let l = TcpListener::from_std(l)?;
            let ours = l.local_addr()?;
            let (rx, stats, pids) = (cut.subscribe(), stats.clone(), pids.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((stream, theirs)) = l.accept().await else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    let conn = Conn {
                        to,
                        ours,
                        theirs,
                        backend,
                        rx: rx.clone(),
                        stats: stats.clone(),
                        pids: pids.clone(),
                    };
                    tokio::spawn(conn.serve(stream));
                }
            }));
        }
        Ok(Proxy {
            cut,
            stats,
            listeners: tasks,
        })
    }

    /// Cuts the traffic between groups (`groups[i]` is member `i`'s).
    pub fn partition(&self, groups: Groups) {
        self.cut_links(Links::from_groups(&groups));
    }

    /// Cuts the traffic between members that `links` does not connect.
    pub fn cut_links(&self, links: Links) {
        self.cut.send_replace(Some(links));
    }

    /// Lets all traffic through again.
    pub fn heal(&self) {
        self.cut.send_replace(None);
    }

    /// What the proxy did so far.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            accepted: self.stats.accepted.load(Ordering::Relaxed),
            unknown_source: self.stats.unknown_source.load(Ordering::Relaxed),
            closed_source: self.stats.closed_source.load(Ordering::Relaxed),
            blackholed: self.stats.blackholed.load(Ordering::Relaxed),
            cut_live: self.stats.cut_live.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for t in &self.listeners {
            t.abort();
        }
        // Dropping `cut` ends every connection task.
    }
}

/// One accepted connection into member `to`.
struct Conn {
    to: usize,
    ours: SocketAddr,
    theirs: SocketAddr,
    backend: SocketAddr,
    rx: watch::Receiver<Option<Links>>,
    stats: Arc<Stats>,
    pids: PidTable,
}

/// The member that opened a connection, looked up in the background so
/// that forwarding does not wait for it (it is needed only once a
/// partition is in force).
struct Source {
    lookup: Option<JoinHandle<Option<usize>>>,
    known: Option<Option<usize>>,
}

impl Source {
    fn spawn(conn: &Conn) -> Source {
        let (theirs, ours) = (conn.theirs, conn.ours);
        let (pids, stats) = (conn.pids.clone(), conn.stats.clone());
        let lookup = tokio::spawn(async move {
            // A few tries: the kernel's tables change as sockets come and go.
            for attempt in 0..3u64 {
                let candidates: Vec<(usize, u32)> = pids
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| p.map(|p| (i, p)))
                    .collect();
                let owner = tokio::task::spawn_blocking(move || {
                    connection_owner(theirs, ours, &candidates)
                })
                .await
                .unwrap_or(Owner::Unknown);
                match owner {
                    Owner::Is(i) => return Some(i),
                    Owner::Gone => {
                        stats.closed_source.fetch_add(1, Ordering::Relaxed);
                        return None;
                    }
                    Owner::Unknown => {
                        tokio::time::sleep(Duration::from_millis(10 * (attempt + 1))).await
                    }
                }
            }
            stats.unknown_source.fetch_add(1, Ordering::Relaxed);
            None
        });
        Source {
            lookup: Some(lookup),
            known: None,
        }
    }

    /// The opening member (`None`: unknown).
    async fn get(&mut self) -> Option<usize> {
        if let Some(k) = self.known {
            return k;
        }
        let from = match self.lookup.take() {
            Some(h) => h.await.ok().flatten(),
            None => None,
        };
        self.known = Some(from);
        from
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        if let Some(h) = &self.lookup {
            h.abort();
        }
    }
}

impl Conn {
    async fn serve(mut self, mut client: TcpStream) {
        let mut source = Source::spawn(&self);
        let _ = client.set_nodelay(true);
        let links = self.rx.borrow_and_update().clone();
        if links.is_some() {
            let from = source.get().await;
            if is_cut(from, self.to, &self.rx.borrow_and_update().clone()) {
                self.stats.blackholed.fetch_add(1, Ordering::Relaxed);
                return blackhole(Some(client), None, self.rx, from, self.to).await;
            }
        }
        let backend =
            match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(self.backend))
                .await
            {
                Ok(Ok(b)) => b,
                // The member is down: the connection is refused, as it would be.
                _ => return,
            };
        let _ = backend.set_nodelay(true);
        let mut backend = backend;
        let to = self.to;
        let rx = &mut self.rx;
        let cut = tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut backend) => false,
            cut = until_cut(rx, &mut source, to) => cut,
        };
        if cut {
            self.stats.cut_live.fetch_add(1, Ordering::Relaxed);
            let from = source.get().await;
            blackhole(Some(client), Some(backend), self.rx, from, self.to).await;
        }
    }
}

/// Waits until the connection from `source` to `to` is cut (`true`) or
/// the proxy stops (`false`).
async fn until_cut(
    rx: &mut watch::Receiver<Option<Links>>,
    source: &mut Source,
    to: usize,
) -> bool {
    loop {
        if rx.changed().await.is_err() {
            return false;
        }
        let links = rx.borrow_and_update().clone();
        if links.is_some() && is_cut(source.get().await, to, &links) {
            return true;
        }
    }
}

async fn read_some(s: &mut Option<TcpStream>, buf: &mut [u8]) -> std::io::Result<usize> {
    match s {
        Some(s) => s.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Swallows everything both sides send, closing neither (a side that
/// closes is dropped silently), until the cut is lifted or the proxy
/// stops; then closes both.
async fn blackhole(
    mut a: Option<TcpStream>,
    mut b: Option<TcpStream>,
    mut rx: watch::Receiver<Option<Links>>,
    from: Option<usize>,
    to: usize,
) {
    let (mut buf_a, mut buf_b) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    while a.is_some() || b.is_some() {
        tokio::select! {
            r = read_some(&mut a, &mut buf_a) => if !matches!(r, Ok(n) if n > 0) { a = None },
            r = read_some(&mut b, &mut buf_b) => if !matches!(r, Ok(n) if n > 0) { b = None },
            c = rx.changed() => {
                if c.is_err() || !is_cut(from, to, &rx.borrow_and_update()) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn cut_rules() {
        let g = Some(Links::from_groups(&[0, 1, 1]));
        assert!(!is_cut(Some(0), 1, &None));
        assert!(is_cut(Some(0), 1, &g));
        assert!(is_cut(Some(1), 0, &g));
        assert!(!is_cut(Some(1), 2, &g));
        assert!(!is_cut(Some(0), 0, &g));
        assert!(is_cut(None, 2, &g));
        assert!(!is_cut(None, 2, &None));
    }

    #[test]
    fn bridges() {
        // Three members: n2 (1) bridges n1 (0) and n3 (2).
        let b = Some(Links::bridge(3, &[0], 1, &[2]));
        assert!(!is_cut(Some(0), 1, &b) && !is_cut(Some(1), 0, &b));
        assert!(!is_cut(Some(2), 1, &b) && !is_cut(Some(1), 2, &b));
        assert!(is_cut(Some(0), 2, &b) && is_cut(Some(2), 0, &b));
        // Five: {0, 4} and {1, 3} joined only through 2.
        let l = Links::bridge(5, &[0, 4], 2, &[1, 3]);
        for (a, b, talk) in [
            (0, 4, true),
            (1, 3, true),
            (0, 2, true),
            (3, 2, true),
            (0, 1, false),
            (4, 3, false),
            (4, 1, false),
        ] {
            assert_eq!(l.connected(a, b), talk, "{a} {b}");
            assert_eq!(l.connected(b, a), talk, "{b} {a}");
        }
        assert!(!l.connected(0, 9));
        assert!(l.connected(3, 3));
    }

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn roundtrip(s: &mut TcpStream) -> bool {
        if s.write_all(b"ping").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 4];
        matches!(
            tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut buf)).await,
            Ok(Ok(_))
        )
    }

    /// This test process is "member 0"; connections to member 1 pass,
    /// are black-holed by a partition, and are closed when it heals.
    #[tokio::test]
    async fn partitions_cut_and_heal() {
        let backend = echo_server().await;
        let l0 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let l1 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p1 = l1.local_addr().unwrap();
        let pids: PidTable = Arc::new(Mutex::new(vec![Some(std::process::id()), None]));
        let proxy = Proxy::start(vec![l0, l1], vec![backend, backend], pids).unwrap();
        let mut s = TcpStream::connect(p1).await.unwrap();
        assert!(roundtrip(&mut s).await);
        // Same group: still flows.
        proxy.partition(vec![0, 0]);
        assert!(roundtrip(&mut s).await);
        proxy.partition(vec![0, 1]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!roundtrip(&mut s).await);
        // A new connection is accepted but silent.
        let mut s2 = TcpStream::connect(p1).await.unwrap();
        assert!(!roundtrip(&mut s2).await);
        proxy.heal();
        // Black-holed connections are closed at the heal.
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(2), s2.read(&mut buf)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
        let mut s3 = TcpStream::connect(p1).await.unwrap();
        assert!(roundtrip(&mut s3).await);
        let st = proxy.stats();
        assert_eq!(st.accepted, 3);
        assert_eq!(st.unknown_source, 0);
        assert_eq!(st.blackholed, 1);
        assert_eq!(st.cut_live, 1);
    }

    /// This test process is "member 0" of three; with member 1 as the
    /// bridge, its connections to member 1 flow and those to member 2 are
    /// black-holed.
    #[tokio::test]
    async fn a_bridge_cuts_only_across_the_halves() {
        let backend = echo_server().await;
        let ls: Vec<std::net::TcpListener> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let addrs: Vec<SocketAddr> = ls.iter().map(|l| l.local_addr().unwrap()).collect();
        let pids: PidTable = Arc::new(Mutex::new(vec![Some(std::process::id()), None, None]));
        let proxy = Proxy::start(ls, vec![backend; 3], pids).unwrap();
        proxy.cut_links(Links::bridge(3, &[0], 1, &[2]));
        let mut to_bridge = TcpStream::connect(addrs[1]).await.unwrap();
        assert!(roundtrip(&mut to_bridge).await);
        let mut across = TcpStream::connect(addrs[2]).await.unwrap();
        assert!(!roundtrip(&mut across).await);
        proxy.heal();
        let mut again = TcpStream::connect(addrs[2]).await.unwrap();
        assert!(roundtrip(&mut again).await);
        assert_eq!(proxy.stats().blackholed, 1);
    }
}
