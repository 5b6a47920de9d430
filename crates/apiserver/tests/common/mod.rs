//! Test harness: a store — a Ballast member (the `ballast` binary of this
//! build) or a real etcd 3.4 (`/usr/bin/etcd`, or `$ETCD_BIN`), both started
//! with etcd's flags — on free ports below 32768 with its own data dir, the
//! facade in-process on port 0, a kubeconfig for kubectl, and a tiny
//! HTTP/1.1 client. `APISERVER_TEST_STORE=etcd` runs every test on etcd.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Deadline for one kubectl command or HTTP exchange.
pub const STEP: Duration = Duration::from_secs(30);

/// Which store the facade runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// A one-member Ballast cluster.
    Ballast,
    /// etcd 3.4.
    Etcd,
}

impl Store {
    /// The store most tests use: Ballast, unless `APISERVER_TEST_STORE=etcd`.
    pub fn default_for_tests() -> Store {
        match std::env::var("APISERVER_TEST_STORE").as_deref() {
            Ok("etcd") => Store::Etcd,
            _ => Store::Ballast,
        }
    }

    /// The store's binary.
    ///
    /// # Panics
    /// If it is missing (scripts/test.sh builds Ballast and installs etcd).
    pub fn binary(self) -> PathBuf {
        match self {
            Store::Etcd => {
                let p = std::env::var_os("ETCD_BIN")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| "/usr/bin/etcd".into());
                assert!(
                    p.exists(),
                    "no etcd at {} (apt-get install etcd-server, or set ETCD_BIN)",
                    p.display()
                );
                p
            }
            Store::Ballast => {
                // target/<profile>/deps/<test> → target/<profile>/ballast
                let exe = std::env::current_exe().expect("test executable");
                let p = exe
                    .parent()
                    .and_then(Path::parent)
                    .map(|d| d.join("ballast"))
                    .expect("target directory");
                assert!(
                    p.exists(),
                    "no ballast binary at {} (cargo build -p ballast-server first; scripts/test.sh does)",
                    p.display()
                );
                p
            }
        }
    }
}

/// kubectl 1.32 itself (not the gcloud dispatcher), or `kubectl` on PATH.
pub fn kubectl_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KUBECTL_BIN") {
        return Some(p.into());
    }
    [
        "/usr/lib/google-cloud-sdk/bin/kubectl.1.32",
        "/usr/bin/kubectl",
        "/usr/local/bin/kubectl",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

fn free_port(taken: &[u16]) -> u16 {
    // Ports below 32768 (outside Linux's ephemeral range), picked at random.
    let seed = std::process::id() as u64
        ^ Instant::now().elapsed().as_nanos() as u64
        ^ (std::ptr::addr_of!(taken) as u64);
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    for _ in 0..1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20000 + (x % 12000) as u16;
        if !taken.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port found");
}

/// A running etcd, killed on drop.
pub struct Etcd {
    child: Child,
    _dir: tempfile::TempDir,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl Etcd {
    /// Starts `store` and waits until its client port accepts connections.
    pub fn start(store: Store) -> Etcd {
        let bin = store.binary();
        for _attempt in 0..5 {
            let client = free_port(&[]);
            let peer = free_port(&[client]);
            let dir = tempfile::tempdir().expect("tempdir");
            let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log file");
            let mut child = Command::new(&bin)
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .arg("--listen-client-urls")
                .arg(format!("http://127.0.0.1:{client}"))
                .arg("--advertise-client-urls")
                .arg(format!("http://127.0.0.1:{client}"))
                .arg("--listen-peer-urls")
                .arg(format!("http://127.0.0.1:{peer}"))
                .arg("--initial-advertise-peer-urls")
                .arg(format!("http://127.0.0.1:{peer}"))
                .arg("--initial-cluster")
                .arg(format!("default=http://127.0.0.1:{peer}"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn etcd");
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port race: try other ports
                }
                if TcpStream::connect(("127.0.0.1", client)).is_ok() {
                    return Etcd {
                        child,
                        _dir: dir,
                        endpoint: format!("http://127.0.0.1:{client}"),
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("etcd did not start");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcd plus the facade serving on a free port, and a kubeconfig.
pub struct Cluster {
    /// The store.
    pub etcd: Etcd,
    /// The facade's address.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Output of one kubectl run.
#[derive(Debug)]
pub struct Out {
    /// Exit status was 0.
    pub ok: bool,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
}

impl Cluster {
    /// Starts the tests' default store and the facade.
    pub async fn start() -> Cluster {
        Cluster::start_on(Store::default_for_tests()).await
    }

    /// Starts `store` and the facade.
    ///
    /// # Panics
    /// If the store or kubectl is missing, or does not start.
    pub async fn start_on(store: Store) -> Cluster {
        assert!(
            kubectl_bin().is_some(),
            "kubectl not found (/usr/bin/kubectl, or set KUBECTL_BIN)"
        );
        let etcd = Etcd::start(store);
        let config = ballast_apiserver::ApiServerConfig::new(
            vec![etcd.endpoint.clone()],
            "127.0.0.1:0".parse().unwrap(),
        );
        let server = ballast_apiserver::ApiServer::bind(config)
            .await
            .expect("bind facade");
        let addr = server.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    server: http://{addr}\n  name: t\ncontexts:\n- context:\n    cluster: t\n    user: u\n  name: t\ncurrent-context: t\nusers:\n- name: u\n  user: {{}}\n"
        );
        std::fs::write(dir.path().join("kubeconfig"), kubeconfig).unwrap();
        Cluster {
            etcd,
            addr,
            dir,
            stop: Some(tx),
        }
    }

    /// A scratch directory for files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file in the scratch directory and returns its path.
    pub fn file(&self, name: &str, content: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p.to_string_lossy().into_owned()
    }

    /// A kubectl command with this cluster's kubeconfig and a fresh cache dir.
    pub fn kubectl_cmd(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(kubectl_bin().unwrap());
        cmd.arg("--kubeconfig")
            .arg(self.dir.path().join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs kubectl to completion (bounded by [`STEP`]).
    pub async fn kubectl(&self, args: &[&str]) -> Out {
        let out = tokio::time::timeout(STEP, self.kubectl_cmd(args).output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
            .expect("run kubectl");
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs kubectl and requires success; returns stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        assert!(
            out.ok,
            "kubectl {args:?} failed:\nstdout: {}\nstderr: {}",
            out.stdout, out.stderr
        );
        out.stdout
    }

    /// Runs kubectl and requires failure; returns stderr.
    pub async fn fails(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        assert!(
            !out.ok,
            "kubectl {args:?} unexpectedly succeeded:\n{}",
            out.stdout
        );
        out.stderr
    }

    /// One HTTP request; returns (status, body). Chunked bodies are decoded.
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> (u16, String) {
        tokio::time::timeout(
            STEP,
            http_request(self.addr, method, path, content_type, body),
        )
        .await
        .unwrap_or_else(|_| panic!("{method} {path} timed out"))
    }

    /// `http` for JSON answers.
    pub async fn json(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> (u16, serde_json::Value) {
        let (code, text) = self.http(method, path, content_type, body).await;
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
        (code, v)
    }

    /// Opens a watch; lines are read with [`Watch::next`].
    pub async fn watch(&self, path: &str) -> Watch {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n\r\n",
            self.addr
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).await.unwrap();
        assert!(status.contains(" 200 "), "watch {path}: {status}");
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).await.unwrap();
            if h == "\r\n" || h.is_empty() {
                break;
            }
        }
        Watch { reader }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A watch stream (chunked JSON lines).
pub struct Watch {
    reader: BufReader<tokio::net::TcpStream>,
}

impl Watch {
    /// The next event, or None at the end of the stream; panics after `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<serde_json::Value> {
        tokio::time::timeout(wait, async {
            loop {
                let mut size = String::new();
                if self.reader.read_line(&mut size).await.ok()? == 0 {
                    return None;
                }
                let n = usize::from_str_radix(size.trim(), 16).ok()?;
                if n == 0 {
                    return None;
                }
                let mut chunk = vec![0u8; n + 2];
                self.reader.read_exact(&mut chunk).await.ok()?;
                let text = String::from_utf8_lossy(&chunk[..n]).into_owned();
                let line = text.trim();
                if !line.is_empty() {
                    return Some(serde_json::from_str(line).expect("event is JSON"));
                }
            }
        })
        .await
        .expect("watch event did not arrive in time")
    }

    /// The next event within [`STEP`].
    pub async fn next(&mut self) -> Option<serde_json::Value> {
        self.next_within(STEP).await
    }
}

async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let ct = if content_type.is_empty() {
        String::new()
    } else {
        format!("Content-Type: {content_type}\r\n")
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").expect("HTTP response");
    let code: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (code, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
