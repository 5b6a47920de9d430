//! A member run in this process (`ballast_server::run`) for the server's
//! integration tests: its own ports (below 32768) and data directory, a
//! deadline on every wait, stopped when dropped.
#![allow(dead_code)]

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ballast_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use ballast_proto::etcdserverpb::StatusRequest;
use ballast_server::MemberConfig;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const DEADLINE: Duration = Duration::from_secs(30);

/// Fails the test if `fut` does not finish in time.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {DEADLINE:?}"),
    }
}

/// A port on 127.0.0.1 in 10000..32000 (below the ephemeral range) that
/// was free a moment ago.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos(),
        );
        let port = 10000 + (h.finish() % 22000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port found");
}

#[derive(clap::Parser)]
struct Flags {
    #[command(flatten)]
    member: MemberConfig,
}

/// A member running in this process.
pub struct Member {
    /// The client port.
    pub port: u16,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Member {
    /// Starts a one-member cluster named `name` with extra flags.
    pub async fn start(name: &str, extra: &[&str]) -> Member {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = free_port();
            let peer = free_port();
            match Self::run(dir.path(), name, port, peer, extra).await {
                Ok((stop, task)) => {
                    return Member {
                        port,
                        _dir: dir,
                        stop: Some(stop),
                        task: Some(task),
                    }
                }
                Err(e) if e.contains("cannot listen") => continue,
                Err(e) => panic!("member did not start: {e}"),
            }
        }
        panic!("no port to start a member on");
    }

    async fn run(
        dir: &Path,
        name: &str,
        port: u16,
        peer: u16,
        extra: &[&str],
    ) -> Result<(oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>), String> {
        use clap::Parser;
        let url = format!("http://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let data: PathBuf = dir.join("data");
        let mut args: Vec<String> = [
            "ballast",
            "--name",
            name,
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--log-level",
            "warn",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(["--initial-cluster".into(), format!("{name}={peer_url}")]);
        args.extend(["--data-dir".into(), data.display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let cfg = Flags::try_parse_from(args).expect("flags").member;
        let (tx, rx) = oneshot::channel::<()>();
        let mut task = tokio::spawn(ballast_server::run(cfg, async move {
            let _ = rx.await;
        }));
        let started = Instant::now();
        loop {
            if task.is_finished() {
                let res = (&mut task).await.expect("member task");
                return Err(match res {
                    Ok(()) => "stopped by itself".to_string(),
                    Err(e) => format!("{e:#}"),
                });
            }
            if let Ok(mut c) = MaintenanceClient::connect(url.clone()).await {
                if let Ok(s) = c.status(StatusRequest {}).await {
                    if s.into_inner().leader != 0 {
                        break;
                    }
                }
            }
            assert!(started.elapsed() < DEADLINE, "member not serving in time");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok((tx, task))
    }

    /// `127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<client port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the member and waits for a clean stop.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            within("stop", task)
                .await
                .expect("member task")
                .expect("member stopped cleanly");
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
