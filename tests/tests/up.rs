//! `ballast up`, the README's start command, run as a user runs it (on
//! ports of the test's own): three members and the API facade come up,
//! etcdctl and an HTTP client use them, Ctrl-C stops everything.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ballast_e2e::{ballast_bin, etcdctl_at, free_port, run_with_deadline};

/// How long `ballast up` may take to report the cluster up.
const UP_TIMEOUT: Duration = Duration::from_secs(90);

/// A plain HTTP/1.1 GET; the status line and the body.
fn http_get(addr: &str, path: &str) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text.lines().next().unwrap_or_default().to_string();
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Ok((status, body))
}

#[test]
fn ballast_up_starts_three_members_and_the_facade_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let clients: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let api = format!("127.0.0.1:{}", free_port());
    let list = |p: &[u16]| p.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    let mut child = Command::new(ballast_bin())
        .arg("up")
        .arg("--dir")
        .arg(dir.path().join("cluster"))
        .args(["--client-ports", &list(&clients)])
        .args(["--peer-ports", &list(&peers)])
        .args(["--apiserver-listen", &api])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ballast up");
    // Its output, line by line, with a deadline on each wait.
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + UP_TIMEOUT;
    let mut printed = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains("Ctrl-C stops the cluster") => break,
            Ok(l) => printed.push(l),
            Err(_) => {
                let _ = child.kill();
                let mut err = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                panic!(
                    "ballast up did not report the cluster up within {UP_TIMEOUT:?}:\n{}\n{err}",
                    printed.join("\n")
                );
            }
        }
    }
    let text = printed.join("\n");
    for p in &clients {
        assert!(
            text.contains(&format!("client http://127.0.0.1:{p}")),
            "{text}"
        );
    }
    assert!(text.contains(&format!("http://{api}")), "{text}");

    // etcdctl through one member, read back through another.
    let ep = |i: usize| format!("127.0.0.1:{}", clients[i]);
    let put = etcdctl_at(&ep(0), &["put", "hello", "world"], None);
    assert!(put.success(), "{put:?}");
    let get = etcdctl_at(&ep(2), &["get", "hello", "--print-value-only"], None);
    assert!(get.success() && get.stdout.trim() == "world", "{get:?}");
    let members = etcdctl_at(&ep(1), &["member", "list"], None);
    assert_eq!(members.stdout.lines().count(), 3, "{members:?}");

    // The facade answers a Kubernetes list.
    let (status, body) = http_get(&api, "/api/v1/namespaces").expect("facade reachable");
    assert!(status.contains(" 200 "), "{status}\n{body}");
    assert!(body.contains("\"NamespaceList\""), "{body}");

    // Ctrl-C: everything stops, and the ports are free again.
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let stop_deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > stop_deadline {
            let _ = child.kill();
            panic!("ballast up did not stop within 30 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    for p in clients.iter().chain(&peers) {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok(),
            "port {p} still taken: a member outlived ballast up"
        );
    }
    // Bad ports are refused with a clear message, before anything starts.
    let mut cmd = Command::new(ballast_bin());
    cmd.arg("up")
        .arg("--dir")
        .arg(dir.path().join("bad"))
        .args(["--client-ports", "12001,12001,12003"])
        .arg("--no-apiserver");
    let bad = run_with_deadline(cmd, None, Duration::from_secs(20));
    assert!(!bad.success(), "{bad:?}");
    assert!(bad.stderr.contains("given twice"), "{bad:?}");
}
