//! The database under test: N member processes of Ballast or etcd on
//! 127.0.0.1, started with etcd's flags, each with its data directory and
//! log in the run directory; killed (`SIGKILL`), restarted on the same
//! data directory, paused (`SIGSTOP`) and resumed (`SIGCONT`).
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
    log_path: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    paused: bool,
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
                log_path: spec.dir.join(format!("{name}.log")),
                name,
                args,
                child: None,
                paused: false,
            });
        }
        Ok(Cluster {
            db: spec.db,
            binary: spec.binary.clone(),
            names: members.iter().map(|m| m.name.clone()).collect(),
            endpoints: members.iter().map(|m| m.endpoint.clone()).collect(),
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
    /// exit status; they count as down from now on.
    pub fn reap_exited(&self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        let mut members = self.lock();
        for (i, m) in members.iter_mut().enumerate() {
            if let Some(c) = m.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    m.child = None;
                    m.paused = false;
                    out.push((i, status.to_string()));
                }
            }
        }
        drop(members);
        for (i, _) in &out {
            self.set_pid(*i, None);
        }
        out
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
