//! A cluster of real `ballast` processes for the fault-injection tests.
//!
//! [`Cluster::start`] runs N members (3 or 5) as child processes, each with
//! its own free client and peer ports, its own data directory and log file
//! under one temporary directory. A member can be killed (`SIGKILL`),
//! paused (`SIGSTOP`) and resumed (`SIGCONT`), stopped (`SIGTERM`) and
//! restarted on the same data directory and ports; members can be added
//! with `--initial-cluster-state existing`. The leader is found through
//! Maintenance `Status`, and convergence through `HashKV`.
//!
//! Every wait polls a condition against a deadline; every request carries
//! a timeout; every child process is stopped by `Drop` (a paused one is
//! continued first, then killed), so no test hangs or leaves a process
//! behind.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions, StatusResponse};

use crate::{
    ballast_command, kill_and_reap, log_tail, open_log, random_u64, wait_deadline, StartFailure,
    Target, EXIT_TIMEOUT, READY_TIMEOUT,
};

/// Timeout of one probe (status, hash, serializable get) while polling.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Per-request timeout of the clients made here.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a cluster may take to elect a leader, or to converge, after a
/// start or a fault, before a test gives up.
pub const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two polls of a condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------
// Polling

/// Polls `probe` every [`POLL_INTERVAL`] until it returns `Ok`, for at most
/// `timeout`; `Err` explains what is not there yet.
///
/// # Panics
/// At the deadline, with `what` and the last explanation.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        // A probe that hangs counts as a failed attempt, not as a hang.
        let left = deadline.saturating_duration_since(Instant::now());
        let last = match tokio::time::timeout(left.max(POLL_INTERVAL), probe()).await {
            Ok(Ok(v)) => return v,
            Ok(Err(e)) => e,
            Err(_) => "the probe did not answer in time".to_string(),
        };
        if Instant::now() >= deadline {
            panic!("{what}: not reached within {timeout:?}; last: {last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `fut` with a deadline, its error or the timeout as text.
pub async fn timed<T, E: std::fmt::Display>(
    d: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(d, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {d:?}")),
    }
}

// ---------------------------------------------------------------------------
// Clients

/// Connect options for the clients made here: short connect timeout, a
/// per-request timeout, and `hasleader: true` if asked.
pub fn client_options(require_leader: bool) -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(CLIENT_TIMEOUT)
        .with_require_leader(require_leader)
}

/// An etcd-client balancing over `endpoints` (`127.0.0.1:PORT`).
///
/// # Panics
/// If it cannot be made (bad endpoints).
pub async fn connect_many(endpoints: &[String]) -> Client {
    timed(
        CLIENT_TIMEOUT,
        Client::connect(endpoints, Some(client_options(false))),
    )
    .await
    .unwrap_or_else(|e| panic!("cannot connect to {endpoints:?}: {e}"))
}

/// A client of one endpoint; `require_leader` sends `hasleader: true`.
pub async fn connect_one(endpoint: &str, require_leader: bool) -> Result<Client, String> {
    timed(
        CLIENT_TIMEOUT,
        Client::connect([endpoint], Some(client_options(require_leader))),
    )
    .await
}

/// Maintenance `Status` of one endpoint, within [`PROBE_TIMEOUT`].
pub async fn status_of(endpoint: &str) -> Result<StatusResponse, String> {
    let mut c = connect_one(endpoint, false).await?;
    timed(PROBE_TIMEOUT, c.status())
        .await
        .map_err(|e| format!("{endpoint}: status: {e}"))
}

/// What `HashKV` at the current revision says about one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvHash {
    /// The member's current revision (the header's).
    pub revision: i64,
    /// The revision hashed.
    pub hash_revision: i64,
    /// The compaction point.
    pub compact_revision: i64,
    /// The hash.
    pub hash: u32,
}

/// `HashKV` of one endpoint at its current revision.
pub async fn hash_kv_of(endpoint: &str) -> Result<KvHash, String> {
    let c = connect_one(endpoint, false).await?;
    let r = timed(PROBE_TIMEOUT, c.maintenance_client().hash_kv(0))
        .await
        .map_err(|e| format!("{endpoint}: hashkv: {e}"))?;
    Ok(KvHash {
        revision: r.header().map_or(0, |h| h.revision()),
        hash_revision: r.hash_revision(),
        compact_revision: r.compact_version(),
        hash: r.hash(),
    })
}

/// Whether `endpoint` answers a serializable `Get` within
/// [`PROBE_TIMEOUT`] (the process serves clients; it may have no leader).
pub async fn serves(endpoint: &str) -> bool {
    let listening = endpoint
        .parse::<std::net::SocketAddr>()
        .map(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok())
        .unwrap_or(true);
    if !listening {
        return false;
    }
    let Ok(mut c) = connect_one(endpoint, false).await else {
        return false;
    };
    timed(
        PROBE_TIMEOUT,
        c.get(
            "ballast-e2e-readiness-probe",
            Some(GetOptions::new().with_serializable()),
        ),
    )
    .await
    .is_ok()
}

// ---------------------------------------------------------------------------
// One member

/// One member process of a [`Cluster`].
pub struct ClusterMember {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    paused: bool,
    removed: bool,
}

/// The flags of one member.
#[derive(Clone, Debug)]
pub struct MemberSpec {
    /// `--name`.
    pub name: String,
    /// Client port.
    pub client_port: u16,
    /// Peer port.
    pub peer_port: u16,
    /// `--initial-cluster`.
    pub initial_cluster: String,
    /// `--initial-cluster-state`: `new` or `existing`.
    pub state: String,
    /// `--initial-cluster-token`.
    pub token: String,
    /// More flags (after the cluster's own extra flags).
    pub extra_args: Vec<String>,
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

impl ClusterMember {
    fn new(spec: &MemberSpec, root: &Path, common: &ClusterOpts) -> ClusterMember {
        let home = root.join(&spec.name);
        std::fs::create_dir_all(&home).expect("member directory");
        let data_dir = home.join("data");
        let log_path = home.join("ballast.log");
        let client = url(spec.client_port);
        let peer = url(spec.peer_port);
        let mut args: Vec<String> = vec![
            "--name".into(),
            spec.name.clone(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen-client-urls".into(),
            client.clone(),
            "--advertise-client-urls".into(),
            client,
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-advertise-peer-urls".into(),
            peer,
            "--initial-cluster".into(),
            spec.initial_cluster.clone(),
            "--initial-cluster-token".into(),
            spec.token.clone(),
            "--initial-cluster-state".into(),
            spec.state.clone(),
            "--heartbeat-interval".into(),
            common.heartbeat_ms.to_string(),
            "--election-timeout".into(),
            common.election_ms.to_string(),
            "--log-level".into(),
            "info".into(),
        ];
        args.extend(common.extra_args.iter().cloned());
        args.extend(spec.extra_args.iter().cloned());
        ClusterMember {
            name: spec.name.clone(),
            client_port: spec.client_port,
            peer_port: spec.peer_port,
            data_dir,
            log_path,
            args,
            child: None,
            paused: false,
            removed: false,
        }
    }

    /// `--name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client URL, `http://127.0.0.1:PORT`.
    pub fn client_url(&self) -> String {
        url(self.client_port)
    }

    /// The peer URL, `http://127.0.0.1:PORT`.
    pub fn peer_url(&self) -> String {
        url(self.peer_port)
    }

    /// The peer port.
    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    /// The client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The log file (every run of the member appends to it).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log_path, n)
    }

    /// The command-line flags the member is started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The process ID, if a process was started and not reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process exists and has not exited (a paused one counts).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => c.try_wait().expect("try_wait").is_none(),
        }
    }

    /// Whether it is stopped by `SIGSTOP`.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Whether the test removed it from the cluster (it is not expected to
    /// take part any more).
    pub fn is_removed(&self) -> bool {
        self.removed
    }

    /// Marks it removed from the cluster.
    pub fn mark_removed(&mut self) {
        self.removed = true;
    }

    /// Starts the process (same flags, data directory and ports every time)
    /// without waiting for it.
    ///
    /// # Panics
    /// If it is already running.
    pub fn spawn(&mut self) {
        assert!(
            !self.is_running(),
            "member {} is already running",
            self.name
        );
        let mut log = open_log(&self.log_path);
        {
            use std::io::Write;
            let _ = writeln!(log, "---- e2e: start {} ----", self.name);
        }
        let mut cmd = ballast_command();
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        self.child = Some(child);
        self.paused = false;
    }

    /// Waits until the process serves clients (a serializable `Get`; it
    /// may still have no leader), at most [`READY_TIMEOUT`].
    ///
    /// # Errors
    /// If it exits or does not serve in time (it is killed then).
    pub async fn wait_serving(&mut self) -> Result<(), StartFailure> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let ep = self.endpoint();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("try_wait"))
            {
                self.child = None;
                return Err(StartFailure {
                    status: Some(status),
                    log: self.log_tail(60),
                });
            }
            if serves(&ep).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill9();
                return Err(StartFailure {
                    status: None,
                    log: self.log_tail(60),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Starts the member again on the same data directory and ports and
    /// waits until it serves clients (retrying while the old sockets
    /// linger).
    ///
    /// # Panics
    /// If it is running, or does not come up.
    pub async fn restart(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.spawn();
            match self.wait_serving().await {
                Ok(()) => return,
                Err(f) if port_taken(&f.log) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(f) => panic!(
                    "member {} did not restart (status {:?}); log {}:\n{}",
                    self.name,
                    f.status,
                    self.log_path.display(),
                    f.log
                ),
            }
        }
    }

    fn signal(&self, sig: libc::c_int) {
        let c = self
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("member {} is not running", self.name));
        let pid = libc::pid_t::try_from(c.id()).expect("pid fits");
        // SAFETY: kill(2) on our own child, which has not been reaped.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// `SIGKILL`s the process and reaps it (a paused one is continued
    /// first).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.paused {
                if let Ok(pid) = libc::pid_t::try_from(c.id()) {
                    // SAFETY: kill(2) on our own unreaped child.
                    unsafe {
                        libc::kill(pid, libc::SIGCONT);
                    }
                }
            }
            kill_and_reap(&mut c);
        }
        self.paused = false;
    }

    /// `SIGSTOP`s the process: it keeps its sockets but answers nothing.
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
        self.paused = true;
    }

    /// `SIGCONT`s a paused process.
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
        self.paused = false;
    }

    /// `SIGTERM`s the process and waits (at most [`EXIT_TIMEOUT`]) for it.
    ///
    /// # Panics
    /// If it does not exit in time (it is killed then).
    pub fn terminate(&mut self) -> ExitStatus {
        if self.paused {
            self.resume();
        }
        self.signal(libc::SIGTERM);
        let mut c = self.child.take().expect("running");
        match wait_deadline(&mut c, EXIT_TIMEOUT) {
            Some(s) => s,
            None => {
                kill_and_reap(&mut c);
                panic!(
                    "member {} did not exit within {EXIT_TIMEOUT:?} of SIGTERM; log:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
        }
    }

    /// Maintenance `Status`, within [`PROBE_TIMEOUT`].
    pub async fn status(&self) -> Result<StatusResponse, String> {
        status_of(&self.endpoint()).await
    }

    /// `HashKV` at the current revision, within [`PROBE_TIMEOUT`].
    pub async fn hash_kv(&self) -> Result<KvHash, String> {
        hash_kv_of(&self.endpoint()).await
    }

    /// A client of this member alone; `require_leader` sends
    /// `hasleader: true`.
    ///
    /// # Panics
    /// If it cannot be made.
    pub async fn connect(&self, require_leader: bool) -> Client {
        connect_one(&self.endpoint(), require_leader)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.name))
    }
}

impl Target for ClusterMember {
    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
}

impl Drop for ClusterMember {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn port_taken(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("cannot listen")
}

// ---------------------------------------------------------------------------
// The cluster

/// How to start a [`Cluster`].
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    /// Number of founding members.
    pub size: usize,
    /// `--heartbeat-interval` in ms.
    pub heartbeat_ms: u64,
    /// `--election-timeout` in ms.
    pub election_ms: u64,
    /// More flags for every member (e.g. `--snapshot-count`).
    pub extra_args: Vec<String>,
    /// Members (by index) started with another `--initial-cluster-token`
    /// than the cluster's.
    pub tokens: BTreeMap<usize, String>,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            size: 3,
            heartbeat_ms: 50,
            election_ms: 500,
            extra_args: Vec::new(),
            tokens: BTreeMap::new(),
        }
    }
}

impl ClusterOpts {
    /// `size` members with the defaults.
    pub fn size(size: usize) -> Self {
        ClusterOpts {
            size,
            ..ClusterOpts::default()
        }
    }

    /// Adds flags for every member.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra_args.extend(args.iter().map(|s| s.to_string()));
        self
    }
}

/// The leader as its followers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leader {
    /// Index of the leader in the cluster.
    pub index: usize,
    /// Its member ID.
    pub id: u64,
    /// The term.
    pub term: u64,
}

/// A cluster of `ballast` processes under one temporary directory.
pub struct Cluster {
    // Declared before `dir`: processes are gone before their files are.
    members: Vec<ClusterMember>,
    opts: ClusterOpts,
    token: String,
    ids: Mutex<BTreeMap<usize, u64>>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `opts.size` members as a new cluster and waits until every
    /// one serves clients and they agree on a leader.
    ///
    /// # Panics
    /// If the cluster does not come up (after retrying port conflicts).
    pub async fn start(opts: ClusterOpts) -> Cluster {
        let cluster = Cluster::launch(opts).await;
        let all = cluster.all();
        cluster.wait_leader(&all, CLUSTER_TIMEOUT).await;
        cluster
    }

    /// Starts `opts.size` members as a new cluster and waits until every
    /// one serves clients (not for a leader).
    ///
    /// # Panics
    /// If a member does not come up (after retrying port conflicts).
    pub async fn launch(opts: ClusterOpts) -> Cluster {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let dir = tempfile::Builder::new()
                .prefix("ballast-cluster-")
                .tempdir()
                .expect("tempdir");
            let token = format!("e2e-{:016x}", random_u64());
            let ports: Vec<(u16, u16)> = (0..opts.size)
                .map(|_| (crate::free_port(), crate::free_port()))
                .collect();
            let initial_cluster = ports
                .iter()
                .enumerate()
                .map(|(i, (_, p))| format!("n{}={}", i + 1, url(*p)))
                .collect::<Vec<_>>()
                .join(",");
            let members = ports
                .iter()
                .enumerate()
                .map(|(i, (c, p))| {
                    let spec = MemberSpec {
                        name: format!("n{}", i + 1),
                        client_port: *c,
                        peer_port: *p,
                        initial_cluster: initial_cluster.clone(),
                        state: "new".into(),
                        token: opts
                            .tokens
                            .get(&i)
                            .cloned()
                            .unwrap_or_else(|| token.clone()),
                        extra_args: Vec::new(),
                    };
                    ClusterMember::new(&spec, dir.path(), &opts)
                })
                .collect();
            let mut cluster = Cluster {
                members,
                opts: opts.clone(),
                token,
                ids: Mutex::new(BTreeMap::new()),
                dir,
            };
            for m in &mut cluster.members {
                m.spawn();
            }
            let mut failure = None;
            for m in &mut cluster.members {
                if let Err(f) = m.wait_serving().await {
                    failure = Some((m.name.clone(), f));
                    break;
                }
            }
            match failure {
                None => return cluster,
                Some((_, f)) if port_taken(&f.log) && attempt < 4 => {
                    eprintln!("a port was taken; starting the cluster again on other ports");
                }
                Some((name, f)) => panic!(
                    "member {name} did not start (status {:?}):\n{}",
                    f.status, f.log
                ),
            }
        }
    }

    /// The cluster token (`--initial-cluster-token`).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The options the cluster was started with.
    pub fn opts(&self) -> &ClusterOpts {
        &self.opts
    }

    /// The cluster's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Number of members ever started (removed ones included).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Indices of the members not removed.
    pub fn all(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| !self.members[i].removed)
            .collect()
    }

    /// Member `i`.
    pub fn member(&self, i: usize) -> &ClusterMember {
        &self.members[i]
    }

    /// Member `i`, to signal or restart it.
    pub fn member_mut(&mut self, i: usize) -> &mut ClusterMember {
        &mut self.members[i]
    }

    /// The client endpoints (`127.0.0.1:PORT`) of `which`.
    pub fn endpoints(&self, which: &[usize]) -> Vec<String> {
        which.iter().map(|&i| self.members[i].endpoint()).collect()
    }

    /// `--initial-cluster` naming `which`.
    pub fn initial_cluster(&self, which: &[usize]) -> String {
        which
            .iter()
            .map(|&i| format!("{}={}", self.members[i].name, self.members[i].peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Member `i`'s ID (asked once with `Status`, then remembered).
    ///
    /// # Panics
    /// If it does not answer within [`CLUSTER_TIMEOUT`].
    pub async fn member_id(&self, i: usize) -> u64 {
        if let Some(id) = self.ids.lock().unwrap().get(&i) {
            return *id;
        }
        let m = &self.members[i];
        let id = wait_until(&format!("member ID of {}", m.name), CLUSTER_TIMEOUT, || {
            m.status()
        })
        .await
        .header()
        .expect("status header")
        .member_id();
        self.ids.lock().unwrap().insert(i, id);
        id
    }

    fn index_of(&self, id: u64) -> Option<usize> {
        self.ids
            .lock()
            .unwrap()
            .iter()
            .find(|(_, v)| **v == id)
            .map(|(k, _)| *k)
    }

    /// One look at who leads, as `among` see it: every one answers
    /// `Status` and names the same leader, in the same term, which is one
    /// of `among`.
    pub async fn leader_now(&self, among: &[usize]) -> Result<Leader, String> {
        let mut seen = Vec::new();
        for &i in among {
            let s = self.members[i].status().await?;
            let id = s.header().map_or(0, |h| h.member_id());
            self.ids.lock().unwrap().insert(i, id);
            seen.push((i, s.leader(), s.raft_term()));
        }
        let (_, leader, term) = seen[0];
        if leader == 0 || seen.iter().any(|&(_, l, t)| l != leader || t != term) {
            return Err(format!("(member, leader, term): {seen:x?}"));
        }
        match self.index_of(leader) {
            Some(index) if among.contains(&index) => Ok(Leader {
                index,
                id: leader,
                term,
            }),
            _ => Err(format!(
                "leader {leader:x} is not among the members asked: {seen:x?}"
            )),
        }
    }

    /// Waits until `among` agree on a leader among them.
    ///
    /// # Panics
    /// If they do not within `timeout`.
    pub async fn wait_leader(&self, among: &[usize], timeout: Duration) -> Leader {
        wait_until("a leader all members agree on", timeout, || {
            self.leader_now(among)
        })
        .await
    }

    /// One look at `HashKV` on `among`: equal revision, compaction point and
    /// hash on every one.
    pub async fn converged_now(&self, among: &[usize]) -> Result<KvHash, String> {
        let mut seen = Vec::new();
        for &i in among {
            seen.push((
                self.members[i].name.clone(),
                self.members[i].hash_kv().await?,
            ));
        }
        let first = seen[0].1;
        if seen.iter().any(|(_, h)| *h != first) {
            return Err(format!("hashes differ: {seen:?}"));
        }
        Ok(first)
    }

    /// Waits until `among` have the same revision and `HashKV`.
    ///
    /// # Panics
    /// If they do not within `timeout`.
    pub async fn wait_converged(&self, among: &[usize], timeout: Duration) -> KvHash {
        wait_until("equal revision and HashKV on every member", timeout, || {
            self.converged_now(among)
        })
        .await
    }

    /// Adds a member with a fresh data directory and new ports: `member
    /// add` through member `via`, then starts it with
    /// `--initial-cluster-state existing` and waits until it serves
    /// clients. Returns its index and ID.
    ///
    /// # Panics
    /// If the member add fails or the member does not start.
    pub async fn add_member(&mut self, name: &str, via: usize) -> (usize, u64) {
        let peer_port = crate::free_port();
        let client_port = crate::free_port();
        let c = self.members[via].connect(false).await;
        let resp = timed(
            CLIENT_TIMEOUT,
            c.cluster_client().member_add([url(peer_port)], None),
        )
        .await
        .unwrap_or_else(|e| panic!("member add {name}: {e}"));
        let id = resp.member().expect("added member").id();
        let mut ic: Vec<String> = resp
            .member_list()
            .iter()
            .filter(|m| m.id() != id)
            .flat_map(|m| {
                m.peer_urls()
                    .iter()
                    .map(|u| format!("{}={u}", m.name()))
                    .collect::<Vec<_>>()
            })
            .collect();
        ic.push(format!("{name}={}", url(peer_port)));
        let spec = MemberSpec {
            name: name.to_string(),
            client_port,
            peer_port,
            initial_cluster: ic.join(","),
            state: "existing".into(),
            token: self.token.clone(),
            extra_args: Vec::new(),
        };
        let mut m = ClusterMember::new(&spec, self.dir.path(), &self.opts);
        m.spawn();
        self.members.push(m);
        let index = self.members.len() - 1;
        self.ids.lock().unwrap().insert(index, id);
        let m = &mut self.members[index];
        if let Err(f) = m.wait_serving().await {
            panic!(
                "added member {name} did not start (status {:?}):\n{}",
                f.status, f.log
            );
        }
        (index, id)
    }

    /// Adds a member process that is not started by `member add` (e.g. one
    /// with wrong flags); it is started but not waited for.
    pub fn spawn_extra(&mut self, spec: &MemberSpec) -> usize {
        let mut m = ClusterMember::new(spec, self.dir.path(), &self.opts);
        m.spawn();
        self.members.push(m);
        self.members.len() - 1
    }

    /// Prints every member's log tail (for a failing test).
    pub fn dump_logs(&self, lines: usize) {
        for m in &self.members {
            eprintln!(
                "---- {} log {} (last {lines} lines) ----\n{}\n----",
                m.name,
                m.log_path.display(),
                m.log_tail(lines)
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Stop every process first (continuing paused ones), then report.
        for m in &mut self.members {
            m.kill9();
        }
        if std::thread::panicking() {
            self.dump_logs(30);
        } else if let Some(n) = std::env::var_os("BALLAST_E2E_DUMP_LOGS") {
            self.dump_logs(n.to_str().and_then(|n| n.parse().ok()).unwrap_or(100));
        }
    }
}

// ---------------------------------------------------------------------------
// Write load

/// An acknowledged put: the key (also its value) and the revision the
/// response header gave.
pub type Acked = (String, i64);

/// Concurrent writers putting unique keys `<prefix>/<writer>/<n>` (value =
/// key) until stopped; every acknowledged put is recorded with its
/// revision, every failure counted.
pub struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    failed: Arc<AtomicU64>,
    errors: Arc<Mutex<BTreeMap<String, u64>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Timeout of each put made by [`Writers`].
pub const PUT_TIMEOUT: Duration = Duration::from_secs(5);

impl Writers {
    /// Starts `n` writers on `client`.
    pub fn start(client: &Client, prefix: &str, n: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(BTreeMap::new()));
        let tasks = (0..n)
            .map(|w| {
                let mut c = client.clone();
                let (stop, acked, failed) = (stop.clone(), acked.clone(), failed.clone());
                let errors = errors.clone();
                let prefix = prefix.to_string();
                tokio::spawn(async move {
                    for k in 0u64.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let key = format!("{prefix}/{w}/{k:06}");
                        match timed(PUT_TIMEOUT, c.put(key.as_str(), key.as_str(), None)).await {
                            Ok(r) => {
                                let rev = r.header().expect("put header").revision();
                                acked.lock().unwrap().push((key, rev));
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                *errors.lock().unwrap().entry(e).or_insert(0) += 1;
                                // Not acknowledged; do not spin on a dead
                                // endpoint.
                                tokio::time::sleep(POLL_INTERVAL).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Writers {
            stop,
            acked,
            failed,
            errors,
            tasks,
        }
    }

    /// Acknowledged puts so far.
    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Failed (or timed out) puts so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// The failures so far: each message with its count.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().unwrap().clone()
    }

    /// Waits until at least `n` puts are acknowledged.
    ///
    /// # Panics
    /// If they are not within `timeout`.
    pub async fn wait_acked(&self, n: usize, timeout: Duration) {
        wait_until(&format!("{n} acknowledged puts"), timeout, || async {
            let a = self.acked();
            if a >= n {
                Ok(())
            } else {
                Err(format!("{a} acknowledged, {} failed", self.failed()))
            }
        })
        .await;
    }

    /// Stops the writers (each finishes its current put, bounded by
    /// [`PUT_TIMEOUT`]) and returns the acknowledged puts.
    pub async fn stop(mut self) -> Vec<Acked> {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            let _ = tokio::time::timeout(PUT_TIMEOUT + Duration::from_secs(1), t).await;
        }
        let acked = self.acked.lock().unwrap().clone();
        acked
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Checks with one linearizable range read through `client` that every
/// acknowledged put under `prefix` is there with its value and the
/// revision it was acknowledged with.
///
/// # Errors
/// A description of the first missing or different key.
pub async fn check_acked(client: &mut Client, prefix: &str, acked: &[Acked]) -> Result<(), String> {
    check_acked_with(client, prefix, acked, GetOptions::new()).await
}

/// As [`check_acked`], with the read's options (e.g. serializable, to ask
/// one member about its own state).
///
/// # Errors
/// A description of the first missing or different key.
pub async fn check_acked_with(
    client: &mut Client,
    prefix: &str,
    acked: &[Acked],
    opts: GetOptions,
) -> Result<(), String> {
    let r = timed(
        CLIENT_TIMEOUT,
        client.get(format!("{prefix}/"), Some(opts.with_prefix())),
    )
    .await?;
    let stored: BTreeMap<&[u8], (&[u8], i64)> = r
        .kvs()
        .iter()
        .map(|kv| (kv.key(), (kv.value(), kv.mod_revision())))
        .collect();
    for (key, rev) in acked {
        match stored.get(key.as_bytes()) {
            None => {
                return Err(format!(
                    "acknowledged key {key} (revision {rev}) is missing"
                ))
            }
            Some((v, r)) if *v != key.as_bytes() || r != rev => {
                return Err(format!(
                "acknowledged key {key} at revision {rev} reads back as {:?} at mod_revision {r}",
                String::from_utf8_lossy(v)
            ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// A pseudo-random byte string (for garbage input).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 8);
    let mut x = random_u64() | 1;
    while out.len() < n {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Asserts that a result is an error (or a timeout) and returns its text.
///
/// # Panics
/// If it succeeded.
#[track_caller]
pub fn expect_failure<T: Debug>(what: &str, r: Result<T, String>) -> String {
    match r {
        Ok(v) => panic!("{what} should have failed but answered {v:?}"),
        Err(e) => e,
    }
}
