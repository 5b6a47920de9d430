//! The official Kubernetes Python client (Debian's `python3-kubernetes`,
//! run with `/usr/bin/python3`) against the facade: writes, lists, then
//! watches from the lists' resourceVersions while this test writes, and a
//! watch from a compacted revision (the client must raise 410). The script
//! is `tests/python/watch_client.py`; it prints JSON lines.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::Cluster;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::Instant;

const NS: &str = "py";
/// The script's watch `timeout_seconds` (its own bound).
const WATCH_TIMEOUT_SECS: u64 = 40;
/// The whole exchange must finish by then (the script is killed on drop).
const DEADLINE: Duration = Duration::from_secs(90);

fn python() -> PathBuf {
    std::env::var_os("PYTHON_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/python3".into())
}

/// The running script; killed when dropped.
struct Script {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    deadline: Instant,
    stderr: PathBuf,
}

impl Script {
    fn start(c: &Cluster) -> Script {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/watch_client.py");
        let stderr = c.dir().join("python.stderr");
        let mut child = Command::new(python())
            .arg(script)
            .arg(format!("http://{}", c.addr))
            .arg(NS)
            .arg(WATCH_TIMEOUT_SECS.to_string())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("run /usr/bin/python3");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Script {
            child,
            lines,
            deadline: Instant::now() + DEADLINE,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The next JSON line; panics on EOF, an `error` line or the deadline.
    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout_at(self.deadline, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("python client: no output in time\n{}", self.stderr()))
            .expect("read script output");
        let Some(line) = line else {
            panic!("python client ended early:\n{}", self.stderr());
        };
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("python client printed non-JSON ({e}): {line}"));
        assert!(
            v.get("error").is_none(),
            "python client: {v}\n{}",
            self.stderr()
        );
        v
    }

    /// Waits for the exit status (within the deadline).
    async fn success(&mut self) -> bool {
        tokio::time::timeout_at(self.deadline, self.child.wait())
            .await
            .expect("python client did not exit in time")
            .expect("wait for python")
            .success()
    }
}

fn has_client() -> bool {
    std::process::Command::new(python())
        .args(["-c", "import kubernetes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn pod(name: &str) -> String {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    .to_string()
}

fn cm(name: &str) -> String {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_lists_and_watches() {
    assert!(
        has_client(),
        "{} lacks the kubernetes module: apt-get install python3-kubernetes (scripts/setup.sh does)",
        python().display()
    );
    let c = Cluster::start().await;
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    let cms = format!("/api/v1/namespaces/{NS}/configmaps");
    let post = |path: String, body: String| {
        let c = &c;
        async move {
            let (code, v) = c.json("POST", &path, "application/json", &body).await;
            assert_eq!(code, 201, "POST {path}: {v}");
            v
        }
    };
    post(
        "/api/v1/namespaces".into(),
        json!({"metadata": {"name": NS}}).to_string(),
    )
    .await;
    for name in ["p1", "p2"] {
        post(pods.clone(), pod(name)).await;
    }
    post(cms.clone(), cm("c1")).await;

    // Compact everything so far: the script's watch from RV 1 must get 410.
    let storage =
        ballast_apiserver::storage::Storage::connect(std::slice::from_ref(&c.etcd.endpoint))
            .await
            .unwrap();
    let (t, r) = storage.compact_round(0, 0).await.unwrap();
    storage.compact_round(t, r).await.unwrap();

    let mut script = Script::start(&c);
    let crud_gone = script.next().await;
    assert_eq!(crud_gone["status"], 404, "{crud_gone}");
    let crud = script.next().await;
    assert_eq!(crud["phase"], "crud");
    assert_eq!(crud["uid_kept"], true);
    assert_eq!(crud["rv_grew"], true);
    assert_eq!(crud["data"], json!({"k": "v", "k2": "v2"}));
    assert_eq!(crud["labels"], json!({"from": "python", "patched": "yes"}));
    assert_eq!(crud["delete_status"], "Success");

    let mut list_rv = std::collections::HashMap::new();
    for (kind, names) in [("pods", json!(["p1", "p2"])), ("configmaps", json!(["c1"]))] {
        let l = script.next().await;
        assert_eq!((&l["list"], &l["names"]), (&json!(kind), &names), "{l}");
        let rv: i64 = l["resourceVersion"].as_str().unwrap().parse().unwrap();
        list_rv.insert(kind.to_string(), rv);
    }
    assert_eq!(script.next().await["ready"], true);

    // Writes after the lists: the watches start from the lists' RVs, so
    // they see all of these even if they connect after some of them.
    post(cms.clone(), cm("c2")).await;
    post(pods.clone(), pod("p3")).await;
    let patch = |path: String| {
        let c = &c;
        async move {
            let (code, v) = c
                .json(
                    "PATCH",
                    &path,
                    "application/merge-patch+json",
                    r#"{"metadata":{"labels":{"v":"2"}}}"#,
                )
                .await;
            assert_eq!(code, 200, "PATCH {path}: {v}");
        }
    };
    patch(format!("{cms}/c1")).await;
    patch(format!("{pods}/p2")).await;
    for path in [format!("{cms}/c1"), format!("{pods}/p1")] {
        let (code, v) = c.json("DELETE", &path, "", "").await;
        assert_eq!(code, 200, "DELETE {path}: {v}");
    }
    post(cms.clone(), cm("done")).await;
    post(pods.clone(), pod("done")).await;

    let mut seen: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut ended = 0;
    while ended < 2 {
        let ev = script.next().await;
        let resource = ev["resource"].as_str().expect("event line").to_string();
        if ev["end"] == true {
            ended += 1;
            continue;
        }
        let rv = ev["rv"].as_i64().unwrap();
        assert!(rv > list_rv[&resource], "{ev} not after the list");
        list_rv.insert(resource.clone(), rv);
        let labels = if ev["labels"] == json!({}) {
            ""
        } else {
            " v=2"
        };
        seen.entry(resource).or_default().push(format!(
            "{} {}{labels}",
            ev["type"].as_str().unwrap(),
            ev["name"].as_str().unwrap()
        ));
    }
    assert_eq!(
        seen["configmaps"],
        [
            "ADDED c2",
            "MODIFIED c1 v=2",
            "DELETED c1 v=2",
            "ADDED done"
        ]
    );
    assert_eq!(
        seen["pods"],
        ["ADDED p3", "MODIFIED p2 v=2", "DELETED p1", "ADDED done"]
    );

    let expired = script.next().await;
    assert_eq!(expired["phase"], "expired", "{expired}");
    assert_eq!(expired["status"], 410, "{expired}");
    assert!(
        expired["reason"]
            .as_str()
            .unwrap()
            .starts_with("Expired: too old resource version"),
        "{expired}"
    );
    assert_eq!(script.next().await["finished"], true);
    assert!(script.success().await, "{}", script.stderr());
}
