//! A Ballast member: the real `ballast` binary with its own data directory
//! and ports.

use super::*;

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
