//! A real etcd 3.4 beside Ballast, for differential tests.

use super::*;

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
