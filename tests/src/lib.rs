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
mod etcd_reference;
mod member;
mod process;

pub use etcd_reference::*;
pub use member::*;
pub use process::*;

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
