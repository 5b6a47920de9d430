//! `ballast up`: a local three-member cluster on 127.0.0.1, as etcd's
//! Procfile runs one (client ports 2379/22379/32379, peer ports
//! 2380/22380/32380, or `--client-ports`/`--peer-ports`), each member its
//! own process, and the API facade in this process (127.0.0.1:8080) in
//! front of them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ballast_proto::etcdserverpb::kv_client::KvClient;
use ballast_proto::etcdserverpb::RangeRequest;
use clap::Args;

/// Options of `ballast up`.
#[derive(Args, Clone, Debug)]
pub struct UpConfig {
    /// Directory holding the members' data directories and logs; kept
    /// between runs.
    #[arg(long, default_value = ".ballast")]
    pub dir: PathBuf,

    /// Delete the directory first and start a new cluster.
    #[arg(long)]
    pub fresh: bool,

    /// How long to wait for the cluster to become healthy, in seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,

    /// Where the Kubernetes-style API facade listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub apiserver_listen: std::net::SocketAddr,

    /// Start only the etcd members, without the API facade.
    #[arg(long)]
    pub no_apiserver: bool,

    /// The members' client ports on 127.0.0.1, three, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [2379, 22379, 32379])]
    pub client_ports: Vec<u16>,

    /// The members' peer ports on 127.0.0.1, three, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [2380, 22380, 32380])]
    pub peer_ports: Vec<u16>,
}

/// One member of the local cluster.
struct LocalMember {
    name: String,
    client_port: u16,
    peer_port: u16,
}

/// The members' names.
const NAMES: [&str; 3] = ["infra1", "infra2", "infra3"];

/// The three members on the configured ports; an error if there are not
/// three of each or a port repeats.
fn members(cfg: &UpConfig) -> anyhow::Result<Vec<LocalMember>> {
    if cfg.client_ports.len() != NAMES.len() || cfg.peer_ports.len() != NAMES.len() {
        bail!(
            "--client-ports and --peer-ports take {} ports each (got {} and {})",
            NAMES.len(),
            cfg.client_ports.len(),
            cfg.peer_ports.len()
        );
    }
    let mut all: Vec<u16> = cfg
        .client_ports
        .iter()
        .chain(&cfg.peer_ports)
        .copied()
        .collect();
    all.sort_unstable();
    if let Some(w) = all.windows(2).find(|w| w[0] == w[1]) {
        bail!(
            "port {} is given twice in --client-ports/--peer-ports",
            w[0]
        );
    }
    if all.contains(&0) {
        bail!("port 0 is not a port a member can advertise; give real ports");
    }
    Ok(NAMES
        .iter()
        .zip(cfg.client_ports.iter().zip(&cfg.peer_ports))
        .map(|(n, (c, p))| LocalMember {
            name: n.to_string(),
            client_port: *c,
            peer_port: *p,
        })
        .collect())
}

/// The children, stopped (SIGTERM, then SIGKILL) when dropped.
struct Children(Vec<(String, Child, PathBuf)>);

impl Children {
    fn stop(&mut self) {
        for (_, child, _) in &mut self.0 {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (_, child, _) in &mut self.0 {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.0.clear();
    }

    /// A member that exited, with the tail of its log.
    fn exited(&mut self) -> Option<String> {
        for (name, child, log) in &mut self.0 {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(format!(
                    "member {name} exited ({status}); last lines of {}:\n{}",
                    log.display(),
                    tail(log)
                ));
            }
        }
        None
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Runs the local cluster until Ctrl-C (or a member exits).
pub async fn run(
    cfg: UpConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if cfg.fresh && cfg.dir.exists() {
        std::fs::remove_dir_all(&cfg.dir)
            .with_context(|| format!("cannot remove {}", cfg.dir.display()))?;
    }
    std::fs::create_dir_all(&cfg.dir)
        .with_context(|| format!("cannot create {}", cfg.dir.display()))?;
    let exe = std::env::current_exe().context("cannot find the ballast executable")?;
    let ms = members(&cfg)?;
    for m in &ms {
        for port in [m.client_port, m.peer_port] {
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                bail!("port {port} on 127.0.0.1 is in use: is another cluster (or etcd) running?");
            }
        }
    }
    if !cfg.no_apiserver && std::net::TcpListener::bind(cfg.apiserver_listen).is_err() {
        bail!(
            "{} is in use (the API facade's address): choose another with --apiserver-listen, or --no-apiserver",
            cfg.apiserver_listen
        );
    }
    let initial_cluster = ms
        .iter()
        .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Children(Vec::new());
    for m in &ms {
        let log = cfg.dir.join(format!("{}.log", m.name));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let child = Command::new(&exe)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(cfg.dir.join(&m.name))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &initial_cluster])
            .args([
                "--initial-cluster-token",
                "ballast-up",
                "--initial-cluster-state",
                "new",
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start member {}", m.name))?;
        children.0.push((m.name.clone(), child, log));
    }

    let deadline = Instant::now() + Duration::from_secs(cfg.timeout);
    for m in &ms {
        loop {
            if let Some(why) = children.exited() {
                bail!(why);
            }
            if healthy(m.client_port).await {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "member {} did not become healthy within {} s; see {}",
                    m.name,
                    cfg.timeout,
                    cfg.dir.join(format!("{}.log", m.name)).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let endpoints = ms
        .iter()
        .map(|m| format!("127.0.0.1:{}", m.client_port))
        .collect::<Vec<_>>()
        .join(",");
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let apiserver = if cfg.no_apiserver {
        None
    } else {
        let api_cfg = ballast_apiserver::ApiServerConfig::new(
            ms.iter()
                .map(|m| format!("http://127.0.0.1:{}", m.client_port))
                .collect(),
            cfg.apiserver_listen,
        );
        let api = ballast_apiserver::ApiServer::bind(api_cfg)
            .await
            .context("cannot start the API facade")?;
        let addr = api.local_addr()?;
        let task = tokio::spawn(api.run(async {
            let _ = api_stopped.await;
        }));
        Some((addr, task))
    };
    println!(
        "ballast: a three-member cluster is up (data and logs in {})",
        cfg.dir.display()
    );
    for m in &ms {
        println!(
            "  {}  client http://127.0.0.1:{}  peer http://127.0.0.1:{}",
            m.name, m.client_port, m.peer_port
        );
    }
    println!("try:  ETCDCTL_API=3 etcdctl --endpoints={endpoints} put hello world");
    println!("      ETCDCTL_API=3 etcdctl --endpoints={endpoints} endpoint status -w table");
    if let Some((addr, _)) = &apiserver {
        println!("API facade (Kubernetes-style) on http://{addr}:");
        println!("      kubectl -s http://{addr} create namespace demo");
        println!("      kubectl -s http://{addr} -n demo create deployment web --image=nginx");
        println!("      kubectl -s http://{addr} get deployments -A");
    }
    println!("Ctrl-C stops the cluster.");

    // A member that exits (killed in a fault test, say) is reported; the
    // others keep running until Ctrl-C.
    tokio::pin!(shutdown);
    let mut reported = Vec::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                for (name, child, log) in &mut children.0 {
                    if reported.contains(name) {
                        continue;
                    }
                    if let Ok(Some(status)) = child.try_wait() {
                        println!("ballast: member {name} exited ({status}); see {}", log.display());
                        reported.push(name.clone());
                    }
                }
            }
        }
    }
    println!("ballast: stopping");
    let _ = stop_api.send(());
    if let Some((_, task)) = apiserver {
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(Err(e))) => println!("ballast: the API facade failed: {e:#}"),
            Ok(_) => {}
            Err(_) => println!("ballast: the API facade did not stop within 5 s"),
        }
    }
    tokio::task::spawn_blocking(move || children.stop()).await?;
    Ok(())
}

/// True when the member answers a linearizable read (it has a leader and
/// a quorum).
async fn healthy(port: u16) -> bool {
    let url = format!("http://127.0.0.1:{port}");
    let Ok(ep) = tonic::transport::Endpoint::from_shared(url) else {
        return false;
    };
    let Ok(ch) = ep
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
    else {
        return false;
    };
    let mut req = tonic::Request::new(RangeRequest {
        key: b"health".to_vec(),
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(2));
    KvClient::new(ch).range(req).await.is_ok()
}
