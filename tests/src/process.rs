//! Child processes with deadlines: run to exit, wait, kill.

use super::*;

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

pub(crate) fn reader(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Waits for `child` to exit, for at most `timeout`.
pub(crate) fn wait_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
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
pub(crate) fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    // SIGKILL cannot be ignored; the wait ends promptly.
    let _ = wait_deadline(child, EXIT_TIMEOUT);
}
