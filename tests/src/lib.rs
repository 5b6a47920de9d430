//! Harness for Ballast's black-box tests.
//!
//! [`Member`] runs the real `ballast` binary with its own data directory and
//! client port; [`EtcdReference`] runs a real etcd 3.4 beside it for
//! differential tests; [`Target::etcdctl`] drives either with `etcdctl`;
//! [`cluster::Cluster`] runs a multi-member cluster and injects faults.
//!
//! Every process started here is stopped by `Drop` (SIGKILL, then waited
//! for), and every wait has a deadline, so no test can hang or leave a
//! process behind.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub mod cluster;

pub use etcd_client;
use etcd_client::{Client, ConnectOptions};
pub use serde_json;

/// How long a member (or etcd) may take to answer its first request.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a stopped process may take to exit.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Process-level deadline for one `etcdctl` run (it also gets
/// `--command-timeout=5s`).
pub const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(15);
/// Per-request timeout of the clients made by [`Target::client`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Lowest and highest client ports used: below Linux's ephemeral range
/// (32768-60999), so a port picked here is not taken by an outgoing
/// connection a moment later.
const PORT_MIN: u16 = 10000;
const PORT_MAX: u16 = 32000;

// ---------------------------------------------------------------------------
// Binaries

/// The `ballast` binary: `$BALLAST_BIN`, else `target/<profile>/ballast`
/// next to the test executable (which runs from `target/<profile>/deps/`).
///
/// # Panics
/// If it does not exist.
pub fn ballast_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BALLAST_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "BALLAST_BIN={} does not exist; build it first: cargo build --bins",
            p.display()
        );
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("test binary has a directory")
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let bin = dir.join(format!("ballast{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} not found; build it first: cargo build --bins",
        bin.display()
    );
    bin
}

/// The real etcd server for differential tests: `$ETCD_BIN`, else
/// `/usr/bin/etcd`; `None` if absent.
pub fn etcd_bin() -> Option<PathBuf> {
    let p = std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
    p.is_file().then_some(p)
}

/// The `etcdctl` binary: `$ETCDCTL_BIN`, else `etcdctl` on the `PATH`.
pub fn etcdctl_bin() -> PathBuf {
    std::env::var_os("ETCDCTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcdctl"))
}

/// Removes `ETCD_*`/`ETCDCTL_*` variables of the caller's environment, so
/// that they cannot change what a test starts.
fn scrub_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str() {
            if k.starts_with("ETCD_") || k.starts_with("ETCDCTL_") {
                cmd.env_remove(k);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Processes with deadlines

/// What a finished process printed.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl Output {
    /// Whether it exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The `Error: ...` line etcdctl prints on failure (without `Error: `).
    pub fn error(&self) -> Option<&str> {
        self.stderr
            .lines()
            .find_map(|l| l.strip_prefix("Error: "))
            .map(str::trim)
    }

    /// Standard output as one JSON document (for `-w json`).
    ///
    /// # Panics
    /// If it does not parse.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): stdout={:?} stderr={:?}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts success and returns standard output.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert!(
            self.success(),
            "command failed ({}): stdout={:?} stderr={:?}",
            self.status,
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// Asserts failure and returns the `Error:` message.
    #[track_caller]
    pub fn err(&self) -> &str {
        assert!(
            !self.success(),
            "command succeeded but should have failed: stdout={:?}",
            self.stdout
        );
        self.error()
            .unwrap_or_else(|| panic!("no `Error:` line in stderr {:?}", self.stderr))
    }
}

/// Runs `cmd` to completion, feeding it `stdin`, and kills it if it is still
/// running after `timeout`.
///
/// # Panics
/// If it cannot be started or does not finish in time.
pub fn run_with_deadline(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let feeder = stdin.map(|data| {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let data = data.to_vec();
        std::thread::spawn(move || {
            // The process may exit without reading it all.
            let _ = pipe.write_all(&data);
        })
    });
    let out_reader = reader(child.stdout.take().expect("piped stdout"));
    let err_reader = reader(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let out = out_reader.join().unwrap_or_default();
            let err = err_reader.join().unwrap_or_default();
            panic!(
                "{cmd:?} did not finish within {timeout:?}; stdout={:?} stderr={:?}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if let Some(f) = feeder {
        let _ = f.join();
    }
    // The pipes close when the process exits (its children, if any, would
    // keep them open: none of the programs run here forks).
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Output {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

fn reader(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Waits for `child` to exit, for at most `timeout`.
fn wait_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGKILLs `child` and reaps it.
fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    // SIGKILL cannot be ignored; the wait ends promptly.
    let _ = wait_deadline(child, EXIT_TIMEOUT);
}

// ---------------------------------------------------------------------------
// Ports

fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// A port on 127.0.0.1 in 10000..32000 that was free a moment ago and has
/// not been handed out before by this process.
///
/// # Panics
/// If no free port is found after many tries.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..1000 {
        let port = PORT_MIN + (random_u64() % u64::from(PORT_MAX - PORT_MIN)) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        let given = given.get_or_insert_with(HashSet::new);
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port found in {PORT_MIN}..{PORT_MAX}");
}

// ---------------------------------------------------------------------------
// Logs

/// The last `n` lines of the file at `path`.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn open_log(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open log {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// Clients and etcdctl

/// Something that serves the etcd v3 API on one endpoint.
pub trait Target {
    /// `127.0.0.1:PORT`.
    fn endpoint(&self) -> String;

    /// `etcdctl --endpoints=<endpoint> <args>` (API v3, 5 s command timeout,
    /// killed after [`ETCDCTL_TIMEOUT`]).
    fn etcdctl(&self, args: &[&str]) -> Output {
        etcdctl_at(&self.endpoint(), args, None)
    }

    /// As [`Target::etcdctl`], with `stdin` fed to it (e.g. `txn`).
    fn etcdctl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        etcdctl_at(&self.endpoint(), args, Some(stdin.as_bytes()))
    }

    /// A connected etcd-client with connect and request timeouts.
    #[allow(async_fn_in_trait)]
    async fn client(&self) -> Client {
        connect(&self.endpoint())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.endpoint()))
    }
}

/// Runs etcdctl against `endpoint`.
pub fn etcdctl_at(endpoint: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(etcdctl_bin());
    scrub_env(&mut cmd);
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=5s")
        .arg("--dial-timeout=3s")
        .args(args);
    run_with_deadline(cmd, stdin, ETCDCTL_TIMEOUT)
}

/// Connects an etcd-client to `endpoint` with timeouts.
pub async fn connect(endpoint: &str) -> Result<Client, etcd_client::Error> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(REQUEST_TIMEOUT);
    match tokio::time::timeout(REQUEST_TIMEOUT, Client::connect([endpoint], Some(opts))).await {
        Ok(r) => r,
        Err(_) => Err(etcd_client::Error::Internal(format!(
            "connecting to {endpoint} timed out"
        ))),
    }
}

/// One `Get` within two seconds: whether the server answers.
async fn answers(endpoint: &str) -> bool {
    // A cheap check first: is anything listening yet?
    let listening = endpoint
        .parse::<std::net::SocketAddr>()
        .map(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok())
        .unwrap_or(true);
    if !listening {
        return false;
    }
    let probe = async {
        let mut c = connect(endpoint).await.ok()?;
        c.get("ballast-e2e-readiness-probe", None).await.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Some(_))
    )
}

/// The gRPC code (as its name, e.g. `"InvalidArgument"`) and message of a
/// failed request.
///
/// # Panics
/// If the error is not a gRPC status.
#[track_caller]
pub fn grpc_error(e: &etcd_client::Error) -> (String, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (format!("{:?}", s.code()), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

/// Asserts that `r` failed with gRPC `code` and `message`.
#[track_caller]
pub fn assert_grpc_err<T: std::fmt::Debug>(
    r: Result<T, etcd_client::Error>,
    code: &str,
    message: &str,
) {
    match r {
        Ok(v) => panic!("expected {code} {message:?}, got success: {v:?}"),
        Err(e) => assert_eq!(
            grpc_error(&e),
            (code.to_string(), message.to_string()),
            "error classification"
        ),
    }
}

/// Decodes standard base64 (as etcdctl's JSON output encodes bytes).
///
/// # Panics
/// On invalid input.
pub fn b64decode(s: &str) -> Vec<u8> {
    fn val(c: u8) -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("invalid base64 character {:?}", c as char),
        }
    }
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c) << (18 - 6 * i);
        }
        let n = chunk.len().saturating_sub(1);
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// A base64 JSON string field as text.
pub fn b64str(v: &serde_json::Value) -> String {
    String::from_utf8(b64decode(v.as_str().unwrap_or(""))).expect("utf-8")
}

// ---------------------------------------------------------------------------
// Ballast member

/// How to start a [`Member`].
#[derive(Clone, Debug, Default)]
pub struct MemberOpts {
    /// `--name` (default: `e2e`).
    pub name: Option<String>,
    /// `--data-dir`; default: `data/` in the member's own temporary dir.
    pub data_dir: Option<PathBuf>,
    /// Client port; default: a free one (retried on conflict).
    pub port: Option<u16>,
    /// `--max-txn-ops`.
    pub max_txn_ops: Option<u32>,
    /// `--max-request-bytes`.
    pub max_request_bytes: Option<u32>,
    /// More arguments.
    pub extra_args: Vec<String>,
}

/// Why a member did not become ready.
#[derive(Debug)]
pub struct StartFailure {
    /// Exit status, if it exited.
    pub status: Option<ExitStatus>,
    /// The tail of its log.
    pub log: String,
}

/// One running `ballast` process with its own data directory and port.
pub struct Member {
    opts: MemberOpts,
    // Declared before `dir`: the process is gone before its files are.
    child: Option<Child>,
    dir: tempfile::TempDir,
    data_dir: PathBuf,
    log_path: PathBuf,
    port: u16,
    /// Peer port (Raft traffic); each member is a one-member cluster.
    peer_port: u16,
}

impl Member {
    /// Starts a member and waits (at most [`READY_TIMEOUT`]) until it answers
    /// a `Get`.
    ///
    /// # Panics
    /// If it does not become ready; the panic shows its log tail.
    pub async fn start(opts: MemberOpts) -> Member {
        let fixed_port = opts.port.is_some();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut m = Member::spawn(opts.clone(), None);
            match m.wait_ready().await {
                Ok(()) => return m,
                Err(f) => {
                    let port_taken =
                        f.log.contains("cannot listen") || f.log.contains("Address already in use");
                    if port_taken && !fixed_port && attempt < 5 {
                        eprintln!("port {} was taken; retrying on another", m.port);
                        continue;
                    }
                    panic!(
                        "ballast did not become ready (status {:?}); log {}:\n{}",
                        f.status,
                        m.log_path.display(),
                        f.log
                    );
                }
            }
        }
    }

    /// Starts a member with default options.
    pub async fn start_default() -> Member {
        Member::start(MemberOpts::default()).await
    }

    fn spawn(opts: MemberOpts, reuse: Option<(tempfile::TempDir, u16)>) -> Member {
        let (dir, port) = match reuse {
            Some(r) => r,
            None => (
                tempfile::Builder::new()
                    .prefix("ballast-e2e-")
                    .tempdir()
                    .expect("tempdir"),
                opts.port.unwrap_or_else(free_port),
            ),
        };
        let peer_port = free_port();
        let data_dir = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        let log_path = dir.path().join("ballast.log");
        let mut m = Member {
            opts,
            child: None,
            dir,
            data_dir,
            log_path,
            port,
            peer_port,
        };
        m.spawn_child();
        m
    }

    fn command(&self) -> Command {
        let url = format!("http://127.0.0.1:{}", self.port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = ballast_command();
        cmd.arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--name")
            .arg(self.opts.name.as_deref().unwrap_or("e2e"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(&url)
            .arg("--advertise-client-urls")
            .arg(&url)
            .arg("--log-level")
            .arg("info");
        if let Some(n) = self.opts.max_txn_ops {
            cmd.arg("--max-txn-ops").arg(n.to_string());
        }
        if let Some(n) = self.opts.max_request_bytes {
            cmd.arg("--max-request-bytes").arg(n.to_string());
        }
        cmd.args(&self.opts.extra_args);
        cmd
    }

    fn spawn_child(&mut self) {
        assert!(self.child.is_none(), "member already running");
        let log = open_log(&self.log_path);
        let mut cmd = self.command();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        self.child = Some(child);
    }

    async fn wait_ready(&mut self) -> Result<(), StartFailure> {
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
                    log: log_tail(&self.log_path, 60),
                });
            }
            if answers(&ep).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                if let Some(mut c) = self.child.take() {
                    kill_and_reap(&mut c);
                }
                return Err(StartFailure {
                    status: None,
                    log: log_tail(&self.log_path, 60),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The member's own temporary directory (holds its log and, by
    /// default, its data directory).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The log file (stdout and stderr of every run).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log_path, n)
    }

    /// The process ID, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => c.try_wait().expect("try_wait").is_none(),
        }
    }

    /// SIGKILLs the member and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_and_reap(&mut c);
        }
    }

    /// SIGTERMs the member and waits (at most [`EXIT_TIMEOUT`]) for it.
    ///
    /// # Panics
    /// If it does not exit in time (it is SIGKILLed then).
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("member not running");
        let pid = libc::pid_t::try_from(c.id()).expect("pid fits");
        // SAFETY: plain kill(2) on our own child, which has not been reaped.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        match wait_deadline(&mut c, EXIT_TIMEOUT) {
            Some(s) => s,
            None => {
                kill_and_reap(&mut c);
                panic!(
                    "ballast did not exit within {EXIT_TIMEOUT:?} of SIGTERM; log:\n{}",
                    self.log_tail(40)
                );
            }
        }
    }

    /// Starts the member again on the same data directory and port (after
    /// SIGTERM if it is running) and waits until it answers.
    ///
    /// # Panics
    /// If it does not become ready.
    pub async fn restart(&mut self) {
        if self.is_running() {
            self.terminate();
        }
        self.child = None;
        let _ = writeln!(open_log(&self.log_path), "---- e2e: restart ----");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.spawn_child();
            match self.wait_ready().await {
                Ok(()) => return,
                // The old process's socket may linger for a moment.
                Err(f) if f.log.contains("Address already in use") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(f) => panic!(
                    "ballast did not restart (status {:?}); log:\n{}",
                    f.status, f.log
                ),
            }
        }
    }
}

impl Target for Member {
    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_and_reap(&mut c);
        }
        if std::thread::panicking() {
            eprintln!(
                "---- ballast log {} (last 40 lines) ----\n{}\n----",
                self.log_path.display(),
                self.log_tail(40)
            );
        }
    }
}

/// A `Command` for the ballast binary with a clean environment (no
/// `ETCD_*` variables inherited).
pub fn ballast_command() -> Command {
    let mut cmd = Command::new(ballast_bin());
    scrub_env(&mut cmd);
    cmd.env_remove("RUST_LOG").env("NO_COLOR", "1");
    cmd
}

/// Runs ballast with `args` and expects it to exit by itself within
/// [`READY_TIMEOUT`] (for start-up refusals).
pub fn run_ballast_to_exit(args: &[&str]) -> Output {
    let mut cmd = ballast_command();
    cmd.args(args);
    run_with_deadline(cmd, None, READY_TIMEOUT)
}

// ---------------------------------------------------------------------------
// Real etcd

/// How to start an [`EtcdReference`].
#[derive(Clone, Debug, Default)]
pub struct EtcdOpts {
    /// `--max-txn-ops`.
    pub max_txn_ops: Option<u32>,
    /// `--max-request-bytes`.
    pub max_request_bytes: Option<u32>,
}

/// A real etcd server (single member) on its own ports and data directory.
pub struct EtcdReference {
    child: Option<Child>,
    dir: tempfile::TempDir,
    log_path: PathBuf,
    client_port: u16,
}

impl EtcdReference {
    /// Starts etcd and waits until it answers; `None` (after printing a
    /// skip notice naming `test`) if no etcd binary is installed.
    ///
    /// # Panics
    /// If etcd is installed but does not become ready.
    pub async fn start(test: &str, opts: EtcdOpts) -> Option<EtcdReference> {
        let Some(bin) = etcd_bin() else {
            eprintln!(
                "SKIPPED {test}: no etcd binary (/usr/bin/etcd or $ETCD_BIN); \
                 install etcd-server to run the differential tests"
            );
            return None;
        };
        let mut last = String::new();
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("etcd-ref-")
                .tempdir()
                .expect("tempdir");
            let client_port = free_port();
            let peer_port = free_port();
            let log_path = dir.path().join("etcd.log");
            let log = open_log(&log_path);
            let client = format!("http://127.0.0.1:{client_port}");
            let peer = format!("http://127.0.0.1:{peer_port}");
            let mut cmd = Command::new(&bin);
            scrub_env(&mut cmd);
            cmd.arg("--name=ref")
                .arg(format!("--data-dir={}", dir.path().join("data").display()))
                .arg(format!("--listen-client-urls={client}"))
                .arg(format!("--advertise-client-urls={client}"))
                .arg(format!("--listen-peer-urls={peer}"))
                .arg(format!("--initial-advertise-peer-urls={peer}"))
                .arg(format!("--initial-cluster=ref={peer}"))
                .arg("--initial-cluster-state=new")
                .arg("--logger=zap")
                .arg("--log-outputs=stderr");
            if let Some(n) = opts.max_txn_ops {
                cmd.arg(format!("--max-txn-ops={n}"));
            }
            if let Some(n) = opts.max_request_bytes {
                cmd.arg(format!("--max-request-bytes={n}"));
            }
            cmd.stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log"))
                .stderr(log);
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
            let mut e = EtcdReference {
                child: Some(child),
                dir,
                log_path,
                client_port,
            };
            let deadline = Instant::now() + READY_TIMEOUT;
            let ep = e.endpoint();
            loop {
                if let Some(s) = e
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().expect("try_wait"))
                {
                    e.child = None;
                    last = format!("etcd exited ({s}):\n{}", log_tail(&e.log_path, 40));
                    break;
                }
                if answers(&ep).await {
                    return Some(e);
                }
                if Instant::now() > deadline {
                    panic!(
                        "etcd did not become ready in {READY_TIMEOUT:?}:\n{}",
                        log_tail(&e.log_path, 40)
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if !last.contains("address already in use") {
                break;
            }
        }
        panic!("etcd did not start: {last}");
    }

    /// The data directory etcd writes (`member/wal`, `member/snap`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// SIGTERMs etcd and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = libc::pid_t::try_from(c.id()).expect("pid fits");
            // SAFETY: plain kill(2) on our own unreaped child.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            if wait_deadline(&mut c, EXIT_TIMEOUT).is_none() {
                kill_and_reap(&mut c);
            }
        }
    }
}

impl Target for EtcdReference {
    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
}

impl Drop for EtcdReference {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_and_reap(&mut c);
        }
        if std::thread::panicking() {
            eprintln!(
                "---- etcd log (last 20 lines) ----\n{}\n----",
                log_tail(&self.log_path, 20)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Directory snapshots

/// Every file and directory under `root` with its contents (directories
/// and symlinks as markers), to check that a refused start changed nothing.
pub fn snapshot_tree(root: &Path) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Option<Vec<u8>>)>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        let mut entries: Vec<_> = rd.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(root).expect("under root").to_path_buf();
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                out.push((rel, None));
                walk(root, &p, out);
            } else {
                out.push((rel, Some(fs::read(&p).unwrap_or_default())));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

// ---------------------------------------------------------------------------
// Test bounds

/// Runs `fut` with a deadline.
///
/// # Panics
/// If it does not finish in time.
pub async fn within<T>(what: &str, d: Duration, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(d, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {d:?}"),
    }
}

// ---------------------------------------------------------------------------
// Running a suite against real etcd

/// Either server; what [`start_server`] gives.
pub enum Server {
    /// The `ballast` binary.
    Ballast(Member),
    /// Real etcd.
    Etcd(EtcdReference),
}

impl Target for Server {
    fn endpoint(&self) -> String {
        match self {
            Server::Ballast(m) => m.endpoint(),
            Server::Etcd(e) => e.endpoint(),
        }
    }
}

/// Starts the server the black-box suites run against: Ballast, or real
/// etcd when `BALLAST_E2E_TARGET=etcd` (to check that a suite's
/// expectations are etcd's own behaviour).
///
/// # Panics
/// If the server does not start, or etcd is asked for and not installed.
pub async fn start_server(opts: MemberOpts) -> Server {
    if std::env::var("BALLAST_E2E_TARGET").as_deref() == Ok("etcd") {
        let e = EtcdReference::start(
            "start_server",
            EtcdOpts {
                max_txn_ops: opts.max_txn_ops,
                max_request_bytes: opts.max_request_bytes,
            },
        )
        .await
        .expect("BALLAST_E2E_TARGET=etcd but etcd is not installed");
        Server::Etcd(e)
    } else {
        Server::Ballast(Member::start(opts).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        assert_eq!(b64decode("Zm9v"), b"foo");
        assert_eq!(b64decode("YQ=="), b"a");
        assert_eq!(b64decode("YWI="), b"ab");
        assert_eq!(b64decode(""), b"");
    }

    /// `Drop` leaves no process behind (killed and reaped).
    #[tokio::test]
    async fn dropped_member_leaves_no_process() {
        let mut m = Member::start_default().await;
        let pid = m.pid().expect("running");
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        assert!(m.is_running());
        let dir = m.dir().to_path_buf();
        drop(m);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "ballast {pid} outlived its Member"
        );
        assert!(!dir.exists(), "the temporary directory was not removed");
    }

    #[test]
    fn ports_are_unique_and_low() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
        assert!((PORT_MIN..PORT_MAX).contains(&a));
    }
}
