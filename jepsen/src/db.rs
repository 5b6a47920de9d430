//! The database under test: N member processes of Ballast or etcd on
//! 127.0.0.1, started with etcd's flags, each with its data directory and
//! log in the run directory; killed (`SIGKILL`), restarted on the same
//! data directory, paused (`SIGSTOP`) and resumed (`SIGCONT`); removed
//! from the cluster (Cluster API `MemberRemove`), wiped and added back
//! (`MemberAdd`, then started with `--initial-cluster-state existing`).
//!
//! Every member is killed when the [`Cluster`] is dropped (also while
//! unwinding from a panic), and asks the kernel to kill it should the
//! harness itself die (`PR_SET_PDEATHSIG`); members run in their own
//! process group, so a Ctrl-C in the terminal reaches only the harness,
//! which then stops them itself.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::client;
use crate::history::EventType;
use crate::proxy::PidTable;
use crate::rng::Rng;

/// Which database to test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DbKind {
    /// Ballast (`--binary`, default: `ballast` beside this program or on
    /// the `PATH`).
    Ballast,
    /// etcd (`--binary`, default `/usr/bin/etcd`).
    Etcd,
}

/// Ports are picked in this range: below Linux's ephemeral ports
/// (32768-60999), so an outgoing connection does not take one meanwhile.
const PORT_RANGE: (u16, u16) = (10000, 32000);

/// Binds a listener on a random free port of the range.
pub fn bind_random(rng: &mut Rng) -> anyhow::Result<TcpListener> {
    for _ in 0..200 {
        let port = PORT_RANGE.0 + rng.below(u64::from(PORT_RANGE.1 - PORT_RANGE.0)) as u16;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return Ok(l);
        }
    }
    bail!("no free port found in {PORT_RANGE:?}")
}

/// A free port of the range, not in `taken` (released for a child to bind).
pub fn free_port(rng: &mut Rng, taken: &mut Vec<u16>) -> anyhow::Result<u16> {
    for _ in 0..200 {
        let l = bind_random(rng)?;
        let port = l.local_addr()?.port();
        if !taken.contains(&port) {
            taken.push(port);
            return Ok(port);
        }
    }
    bail!("no free port found")
}

/// The default binary of `db`: for Ballast a `ballast` beside this
/// executable, else the one on the `PATH`.
pub fn default_binary(db: DbKind) -> PathBuf {
    match db {
        DbKind::Etcd => PathBuf::from("/usr/bin/etcd"),
        DbKind::Ballast => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("ballast")))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("ballast")),
    }
}

/// How to start the cluster.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Ballast or etcd.
    pub db: DbKind,
    /// The server binary.
    pub binary: PathBuf,
    /// The run directory (data directories and logs go there).
    pub dir: PathBuf,
    /// `--initial-cluster-token`.
    pub token: String,
    /// `--heartbeat-interval` (ms).
    pub heartbeat_ms: u64,
    /// `--election-timeout` (ms).
    pub election_ms: u64,
    /// Per member: (client port, real peer port, advertised proxy port).
    pub ports: Vec<(u16, u16, u16)>,
}

/// One member process.
pub struct Member {
    /// `--name`: n1, n2, ...
    pub name: String,
    /// `http://127.0.0.1:PORT` for clients.
    pub endpoint: String,
    /// The peer URL it advertises (its proxy's).
    pub peer_url: String,
    data_dir: PathBuf,
    log_path: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    paused: bool,
    /// Its exit is the harness's doing (it is being removed from the
    /// cluster, and etcd stops a removed member): not a crash.
    exit_expected: bool,
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

impl Member {
    /// The log file (each start appends to it).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}

/// The cluster's members.
pub struct Cluster {
    db: DbKind,
    binary: PathBuf,
    members: Mutex<Vec<Member>>,
    pids: PidTable,
    names: Vec<String>,
    endpoints: Vec<String>,
    peer_urls: Vec<String>,
}

/// How long one Cluster API call may take.
const MEMBER_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A Cluster API error worth retrying: the cluster is busy, without a
/// leader, or not yet healthy enough for a reconfiguration (etcd's
/// `--strict-reconfig-check`), or the call timed out.
fn transient(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    [
        "unhealthy cluster",
        "not enough started members",
        "no leader",
        "leader changed",
        "timed out",
        "timeout",
        "unavailable",
        "connection refused",
        "tcp connect error",
        "too many requests",
        "not leader",
        "transport",
    ]
    .iter()
    .any(|p| e.contains(p))
}

impl Cluster {
    /// Prepares the members (nothing runs yet).
    pub fn new(spec: &ClusterSpec) -> anyhow::Result<Cluster> {
        let n = spec.ports.len();
        let initial_cluster = spec
            .ports
            .iter()
            .enumerate()
            .map(|(i, &(_, _, proxy))| format!("n{}={}", i + 1, url(proxy)))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::with_capacity(n);
        for (i, &(client, peer, proxy)) in spec.ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let data_dir = spec.dir.join("data").join(&name);
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("{}", data_dir.display()))?;
            let mut args: Vec<String> = [
                "--name",
                &name,
                "--data-dir",
                &data_dir.display().to_string(),
                "--listen-client-urls",
                &url(client),
                "--advertise-client-urls",
                &url(client),
                "--listen-peer-urls",
                &url(peer),
                "--initial-advertise-peer-urls",
                &url(proxy),
                "--initial-cluster",
                &initial_cluster,
                "--initial-cluster-token",
                &spec.token,
                "--initial-cluster-state",
                "new",
                "--heartbeat-interval",
                &spec.heartbeat_ms.to_string(),
                "--election-timeout",
                &spec.election_ms.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            match spec.db {
                DbKind::Etcd => args.extend(["--logger".into(), "zap".into()]),
                DbKind::Ballast => args.extend(["--log-level".into(), "info".into()]),
            }
            members.push(Member {
                endpoint: url(client),
                peer_url: url(proxy),
                data_dir,
                log_path: spec.dir.join(format!("{name}.log")),
                name,
                args,
                child: None,
                paused: false,
                exit_expected: false,
            });
        }
        Ok(Cluster {
            db: spec.db,
            binary: spec.binary.clone(),
            names: members.iter().map(|m| m.name.clone()).collect(),
            endpoints: members.iter().map(|m| m.endpoint.clone()).collect(),
            peer_urls: members.iter().map(|m| m.peer_url.clone()).collect(),
            members: Mutex::new(members),
            pids: Arc::new(Mutex::new(vec![None; n])),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Member>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_pid(&self, i: usize, pid: Option<u32>) {
        if let Some(p) = self
            .pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(i)
        {
            *p = pid;
        }
    }

    /// The database.
    pub fn db(&self) -> DbKind {
        self.db
    }

    /// The live PIDs, for the proxy.
    pub fn pids(&self) -> PidTable {
        self.pids.clone()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Member names (n1, n2, ...).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Client endpoints, by member.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Advertised peer URLs (the proxies'), by member.
    pub fn peer_urls(&self) -> &[String] {
        &self.peer_urls
    }

    /// Log files, by member.
    pub fn log_paths(&self) -> Vec<PathBuf> {
        self.lock().iter().map(|m| m.log_path.clone()).collect()
    }

    /// Starts member `i` (same flags and data directory every time).
    ///
    /// # Errors
    /// If it is running, or the binary cannot be started.
    pub fn spawn(&self, i: usize) -> anyhow::Result<()> {
        let mut members = self.lock();
        let m = members.get_mut(i).context("no such member")?;
        if m.child.is_some() {
            bail!("{} is already running", m.name);
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log_path)
            .with_context(|| format!("{}", m.log_path.display()))?;
        let _ = writeln!(log, "---- ballast-jepsen: start {} ----", m.name);
        let mut cmd = Command::new(&self.binary);
        cmd.args(&m.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        for (k, _) in std::env::vars_os() {
            if k.to_str().is_some_and(|k| k.starts_with("ETCD_")) {
                cmd.env_remove(k);
            }
        }
        // SAFETY: prctl(2) is async-signal-safe; nothing else runs between
        // fork and exec. The signal is tied to the spawning thread, a
        // runtime worker that lives as long as the harness.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        self.set_pid(i, Some(child.id()));
        m.child = Some(child);
        m.paused = false;
        Ok(())
    }

    /// `SIGKILL`s member `i` and reaps it; `false` if it was not running.
    pub fn kill(&self, i: usize) -> bool {
        let mut members = self.lock();
        let Some(m) = members.get_mut(i) else {
            return false;
        };
        let Some(mut c) = m.child.take() else {
            return false;
        };
        let _ = c.kill();
        let _ = c.wait();
        m.paused = false;
        drop(members);
        self.set_pid(i, None);
        true
    }

    fn signal(&self, i: usize, sig: libc::c_int, paused: bool) -> bool {
        let mut members = self.lock();
        let Some(m) = members.get_mut(i) else {
            return false;
        };
        let Some(pid) = m
            .child
            .as_ref()
            .and_then(|c| libc::pid_t::try_from(c.id()).ok())
        else {
            return false;
        };
        // SAFETY: kill(2) on our own child, not yet reaped.
        let ok = unsafe { libc::kill(pid, sig) } == 0;
        if ok {
            m.paused = paused;
        }
        ok
    }

    /// `SIGSTOP`s member `i`.
    pub fn pause(&self, i: usize) -> bool {
        self.signal(i, libc::SIGSTOP, true)
    }

    /// `SIGCONT`s member `i`.
    pub fn resume(&self, i: usize) -> bool {
        self.signal(i, libc::SIGCONT, false)
    }

    /// Whether member `i` has a process (running or paused).
    pub fn is_up(&self, i: usize) -> bool {
        self.lock().get(i).is_some_and(|m| m.child.is_some())
    }

    /// Whether member `i` is paused.
    pub fn is_paused(&self, i: usize) -> bool {
        self.lock().get(i).is_some_and(|m| m.paused)
    }

    /// Members whose process exited although nobody killed it, with the
    /// exit status; they count as down from now on. Members whose exit is
    /// expected ([`Cluster::set_exit_expected`]) are reaped silently.
    pub fn reap_exited(&self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        let mut members = self.lock();
        let mut gone = Vec::new();
        for (i, m) in members.iter_mut().enumerate() {
            if let Some(c) = m.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    m.child = None;
                    m.paused = false;
                    gone.push(i);
                    if !m.exit_expected {
                        out.push((i, status.to_string()));
                    }
                }
            }
        }
        drop(members);
        for i in gone {
            self.set_pid(i, None);
        }
        out
    }

    /// Whether member `i`'s exit would be the harness's doing (a member
    /// being removed: etcd stops a member once it is removed); such an
    /// exit is not reported by [`Cluster::reap_exited`].
    pub fn set_exit_expected(&self, i: usize, expected: bool) {
        if let Some(m) = self.lock().get_mut(i) {
            m.exit_expected = expected;
        }
    }

    /// Empties member `i`'s data directory (it must be down).
    ///
    /// # Errors
    /// If it is running or the directory cannot be recreated.
    pub fn wipe(&self, i: usize) -> anyhow::Result<()> {
        let members = self.lock();
        let m = members.get(i).context("no such member")?;
        if m.child.is_some() {
            bail!("{} is running; not wiping its data", m.name);
        }
        match std::fs::remove_dir_all(&m.data_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("{}", m.data_dir.display())),
        }
        std::fs::create_dir_all(&m.data_dir).with_context(|| format!("{}", m.data_dir.display()))
    }

    /// From now on member `i` starts as a member joining a running
    /// cluster: `--initial-cluster-state existing` with `initial_cluster`
    /// (after the first start both flags are ignored, by etcd as by
    /// Ballast).
    pub fn set_joining(&self, i: usize, initial_cluster: &str) {
        let mut members = self.lock();
        let Some(m) = members.get_mut(i) else { return };
        let mut k = 0;
        while k + 1 < m.args.len() {
            match m.args[k].as_str() {
                "--initial-cluster" => m.args[k + 1] = initial_cluster.to_string(),
                "--initial-cluster-state" => m.args[k + 1] = "existing".into(),
                _ => {}
            }
            k += 1;
        }
    }

    /// The `--initial-cluster` of `members` (`(id, peer URLs)`, as listed by
    /// the Cluster API), each named after the member of ours with that peer
    /// URL (a member that has not published its name yet is listed without
    /// one); `None` if a URL is not one of ours.
    pub fn initial_cluster_of(&self, members: &[(u64, Vec<String>)]) -> Option<String> {
        let mut parts = Vec::new();
        for (_, urls) in members {
            for u in urls {
                let i = self.peer_urls.iter().position(|p| p == u)?;
                parts.push(format!("{}={u}", self.names[i]));
            }
        }
        parts.sort();
        Some(parts.join(","))
    }

    /// Member `i`'s current member ID (from its status).
    ///
    /// # Errors
    /// If it does not answer.
    pub async fn member_id(&self, i: usize) -> Result<u64, String> {
        client::status(&self.endpoints[i]).await.map(|s| s.id)
    }

    /// The members as member `via` lists them: `(id, peer URLs)`.
    ///
    /// # Errors
    /// If it does not answer.
    pub async fn member_list(&self, via: usize) -> Result<Vec<(u64, Vec<String>)>, String> {
        let mut c = client::connect(&self.endpoints[via], MEMBER_CALL_TIMEOUT).await?;
        let r = client::timed(MEMBER_CALL_TIMEOUT, c.member_list()).await?;
        Ok(r.members()
            .iter()
            .map(|m| (m.id(), m.peer_urls().to_vec()))
            .collect())
    }

    /// Removes the member with ID `id` through member `via`, retrying
    /// transient errors until `deadline`. `Ok` once it is not a member
    /// (also when it already was not: an earlier attempt of unknown
    /// outcome went through); `Err((Fail, ..))` if it certainly stays a
    /// member, `Err((Info, ..))` if that is unknown.
    pub async fn remove(
        &self,
        via: usize,
        id: u64,
        deadline: Instant,
    ) -> Result<(), (EventType, String)> {
        let mut last: String;
        let mut maybe = false;
        loop {
            let attempt = async {
                let mut c = client::connect(&self.endpoints[via], MEMBER_CALL_TIMEOUT).await?;
                client::timed(MEMBER_CALL_TIMEOUT, c.member_remove(id)).await
            };
            match attempt.await {
                Ok(_) => return Ok(()),
                Err(e) if e.contains("member not found") => return Ok(()),
                Err(e) => {
                    maybe |= client::classify(&e) == EventType::Info;
                    if !transient(&e) {
                        return Err((outcome(maybe), e));
                    }
                    last = e;
                }
            }
            // Gone meanwhile (an attempt that timed out went through)?
            if let Ok(list) = self.member_list(via).await {
                if list.iter().all(|(m, _)| *m != id) {
                    return Ok(());
                }
            }
            if Instant::now() + Duration::from_millis(500) >= deadline {
                let kind = if maybe {
                    EventType::Info
                } else {
                    EventType::Fail
                };
                return Err((kind, last));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Adds member `i` (its usual peer URL) back through member `via`,
    /// retrying transient errors until `deadline`; a member already added
    /// with that URL by an earlier attempt (not started yet) is taken as
    /// it is, unless its ID is `old` (the removed one, which must be gone
    /// first). Returns the new member ID and the member list.
    ///
    /// # Errors
    /// The last error (with whether the member may have been added).
    pub async fn add(
        &self,
        via: usize,
        i: usize,
        old: u64,
        deadline: Instant,
    ) -> Result<(u64, Vec<(u64, Vec<String>)>), (EventType, String)> {
        let url = self.peer_urls[i].clone();
        let mut last: String;
        let mut maybe = false;
        loop {
            let attempt = async {
                let mut c = client::connect(&self.endpoints[via], MEMBER_CALL_TIMEOUT).await?;
                client::timed(MEMBER_CALL_TIMEOUT, c.member_add([url.as_str()], None)).await
            };
            match attempt.await {
                Ok(r) => {
                    let id = r.member().map(|m| m.id()).unwrap_or_default();
                    let mut list: Vec<(u64, Vec<String>)> = r
                        .member_list()
                        .iter()
                        .map(|m| (m.id(), m.peer_urls().to_vec()))
                        .collect();
                    if !list.iter().any(|(m, _)| *m == id) {
                        list.push((id, vec![url.clone()]));
                    }
                    return Ok((id, list));
                }
                Err(e) => {
                    maybe |= client::classify(&e) == EventType::Info;
                    if !transient(&e) && !e.contains("already exist") {
                        return Err((outcome(maybe), e));
                    }
                    last = e;
                }
            }
            // Added meanwhile (an attempt that timed out went through)?
            if let Ok(list) = self.member_list(via).await {
                if let Some(&(id, _)) = list.iter().find(|(m, u)| *m != old && u.contains(&url)) {
                    return Ok((id, list));
                }
            }
            if Instant::now() + Duration::from_millis(500) >= deadline {
                let kind = if maybe {
                    EventType::Info
                } else {
                    EventType::Fail
                };
                return Err((kind, last));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The last `n` lines of member `i`'s log.
    pub fn log_tail(&self, i: usize, n: usize) -> String {
        let Some(p) = self.lock().get(i).map(|m| m.log_path.clone()) else {
            return String::new();
        };
        let text = std::fs::read(&p)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Kills every member.
    pub fn stop_all(&self) {
        for i in 0..self.len() {
            self.resume(i);
            self.kill(i);
        }
    }

    /// Starts member `i` and waits (at most `timeout`) until it serves
    /// clients, starting it again while its old ports are still held.
    ///
    /// # Errors
    /// If it exits for another reason or does not serve in time.
    pub async fn start_and_wait(&self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let endpoint = self.endpoints[i].clone();
        if !self.is_up(i) {
            self.spawn(i)?;
        }
        loop {
            let exited = {
                let mut members = self.lock();
                let m = &mut members[i];
                match m.child.as_mut().map(Child::try_wait) {
                    Some(Ok(Some(status))) => {
                        m.child = None;
                        Some(status.to_string())
                    }
                    _ => None,
                }
            };
            if let Some(status) = exited {
                self.set_pid(i, None);
                let tail = self.log_tail(i, 30);
                let port_busy = tail.contains("ddress already in use");
                if port_busy && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    self.spawn(i)?;
                    continue;
                }
                bail!("{} exited ({status}):\n{tail}", self.names[i]);
            }
            if client::serves(&endpoint).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} does not serve clients after {timeout:?}:\n{}",
                    self.names[i],
                    self.log_tail(i, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The index of the member all running members see as leader, if they
    /// agree on one (member IDs are learnt from each member's status).
    pub async fn leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for (i, ep) in self.endpoints.iter().enumerate() {
            if !self.is_up(i) || self.is_paused(i) {
                continue;
            }
            if let Ok(s) = client::status(ep).await {
                ids.push((s.id, i));
                leaders.push(s.leader);
            }
        }
        let first = *leaders.first()?;
        if first == 0 || leaders.iter().any(|&l| l != first) {
            return None;
        }
        ids.iter().find(|(id, _)| *id == first).map(|&(_, i)| i)
    }

    /// Waits until every member serves and all agree on a leader.
    ///
    /// # Errors
    /// If that does not happen within `timeout`.
    pub async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut all = true;
            for ep in &self.endpoints {
                all &= client::serves(ep).await;
            }
            if all {
                if let Some(l) = self.leader().await {
                    return Ok(l);
                }
            }
            if Instant::now() >= deadline {
                bail!("the cluster has no common leader after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// How a refused membership call is recorded: `info` if an earlier
/// attempt may have gone through, else `fail`.
fn outcome(maybe_applied: bool) -> EventType {
    if maybe_applied {
        EventType::Info
    } else {
        EventType::Fail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(dir: &Path) -> Cluster {
        Cluster::new(&ClusterSpec {
            db: DbKind::Etcd,
            binary: PathBuf::from("/bin/false"),
            dir: dir.to_path_buf(),
            token: "t".into(),
            heartbeat_ms: 100,
            election_ms: 1000,
            ports: vec![(1001, 1002, 1003), (2001, 2002, 2003), (3001, 3002, 3003)],
        })
        .unwrap()
    }

    fn flag<'a>(args: &'a [String], name: &str) -> &'a str {
        let k = args.iter().position(|a| a == name).unwrap();
        &args[k + 1]
    }

    #[test]
    fn a_returning_member_joins_the_existing_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let c = cluster(dir.path());
        let args = c.lock()[1].args.clone();
        assert_eq!(flag(&args, "--initial-cluster-state"), "new");
        assert_eq!(
            flag(&args, "--initial-advertise-peer-urls"),
            "http://127.0.0.1:2003"
        );
        let list = vec![
            (7, vec!["http://127.0.0.1:3003".to_string()]),
            (9, vec!["http://127.0.0.1:2003".to_string()]),
            (8, vec!["http://127.0.0.1:1003".to_string()]),
        ];
        let ic = c.initial_cluster_of(&list).unwrap();
        assert_eq!(
            ic,
            "n1=http://127.0.0.1:1003,n2=http://127.0.0.1:2003,n3=http://127.0.0.1:3003"
        );
        assert_eq!(
            c.initial_cluster_of(&[(1, vec!["http://127.0.0.1:9".into()])]),
            None
        );
        c.set_joining(1, &ic);
        let args = c.lock()[1].args.clone();
        assert_eq!(flag(&args, "--initial-cluster-state"), "existing");
        assert_eq!(flag(&args, "--initial-cluster"), ic);
        // The others keep theirs.
        assert_eq!(flag(&c.lock()[0].args, "--initial-cluster-state"), "new");
        // Wiping leaves an empty data directory.
        let data = dir.path().join("data").join("n2");
        std::fs::write(data.join("x"), b"1").unwrap();
        c.wipe(1).unwrap();
        assert!(data.is_dir());
        assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0);
    }

    #[test]
    fn which_cluster_api_errors_are_retried() {
        for e in [
            "status: Unavailable, message: \"etcdserver: unhealthy cluster\"",
            "etcdserver: re-configuration failed due to not enough started members",
            "etcdserver: no leader",
            "etcdserver: request timed out",
            "timeout after 10s",
        ] {
            assert!(transient(e), "{e}");
        }
        for e in [
            "status: FailedPrecondition, message: \"etcdserver: Peer URLs already exists\"",
            "status: NotFound, message: \"etcdserver: member not found\"",
            "status: InvalidArgument, message: \"etcdserver: given member URLs are invalid\"",
        ] {
            assert!(!transient(e), "{e}");
        }
    }
}
