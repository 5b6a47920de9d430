//! Real kubectl 1.32 against the facade over a real etcd.

mod common;

use std::time::Duration;

use common::{Cluster, Store};
use tokio::io::{AsyncBufReadExt, BufReader};

const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: demo
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.27
        ports: [{containerPort: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg, namespace: demo, labels: {tier: conf}}
data: {a: "1", b: "2"}
"#;

fn header(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_end_to_end_on_ballast() {
    kubectl_end_to_end(Cluster::start_on(Store::Ballast).await).await;
}

/// The facade speaks only the etcd v3 protocol, so it runs on etcd too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_end_to_end_on_etcd() {
    kubectl_end_to_end(Cluster::start_on(Store::Etcd).await).await;
}

async fn kubectl_end_to_end(c: Cluster) {
    // Discovery.
    let v = c.ok(&["version", "-o", "json"]).await;
    assert!(v.contains("\"gitVersion\": \"v1.32.4\""), "{v}");
    let res = c.ok(&["api-resources"]).await;
    for needle in [
        "deployments",
        "deploy",
        "apps/v1",
        "leases",
        "coordination.k8s.io/v1",
        "configmaps",
        "cm",
        "jobs",
        "batch/v1",
    ] {
        assert!(res.contains(needle), "api-resources lacks {needle}:\n{res}");
    }

    // Namespace (protobuf body from `create namespace`) and manifests (JSON, strict validation).
    assert!(c
        .ok(&["create", "namespace", "demo"])
        .await
        .contains("namespace/demo created"));
    let file = c.file("app.yaml", APP);
    let out = c.ok(&["create", "-f", &file]).await;
    assert!(
        out.contains("deployment.apps/web created")
            && out.contains("service/web created")
            && out.contains("configmap/cfg created"),
        "{out}"
    );

    // Tables with real printer columns.
    let out = c.ok(&["-n", "demo", "get", "deploy"]).await;
    assert_eq!(
        header(&out),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "{out}"
    );
    assert!(out.contains("0/2"), "{out}");
    let out = c.ok(&["-n", "demo", "get", "deploy", "-o", "wide"]).await;
    assert!(
        out.contains("CONTAINERS") && out.contains("nginx:1.27") && out.contains("app=web"),
        "{out}"
    );
    let out = c.ok(&["-n", "demo", "get", "svc", "web"]).await;
    assert!(out.contains("ClusterIP") && out.contains("80/TCP"), "{out}");
    let out = c.ok(&["-n", "demo", "get", "cm", "cfg"]).await;
    assert_eq!(header(&out), ["NAME", "DATA", "AGE"]);

    // Output formats.
    let json: serde_json::Value = serde_json::from_str(
        &c.ok(&["-n", "demo", "get", "deploy", "web", "-o", "json"])
            .await,
    )
    .unwrap();
    assert_eq!(json["metadata"]["generation"], 1);
    assert_eq!(json["spec"]["strategy"]["type"], "RollingUpdate");
    assert!(c
        .ok(&["-n", "demo", "get", "cm", "cfg", "-o", "yaml"])
        .await
        .contains("tier: conf"));
    assert_eq!(
        c.ok(&[
            "-n",
            "demo",
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.replicas}"
        ])
        .await,
        "2"
    );

    // Selectors and paging.
    for i in 0..4 {
        c.ok(&[
            "-n",
            "demo",
            "create",
            "configmap",
            &format!("c{i}"),
            &format!("--from-literal=k=v{i}"),
        ])
        .await;
    }
    let out = c
        .ok(&["-n", "demo", "get", "cm", "-l", "tier=conf", "-o", "name"])
        .await;
    assert_eq!(out.trim(), "configmap/cfg");
    let out = c
        .ok(&["-n", "demo", "get", "cm", "-l", "tier!=conf", "-o", "name"])
        .await;
    assert_eq!(out.lines().count(), 4, "{out}");
    let out = c
        .ok(&[
            "-n",
            "demo",
            "get",
            "cm",
            "--field-selector",
            "metadata.name=c2",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(out.trim(), "configmap/c2");
    let out = c
        .ok(&["-n", "demo", "get", "cm", "--chunk-size=2", "-o", "name"])
        .await;
    assert_eq!(out.lines().count(), 5, "{out}");
    let out = c.ok(&["get", "cm", "-A", "--chunk-size=1"]).await;
    assert_eq!(out.lines().count(), 6, "{out}");

    // label, annotate, scale, patch (merge, json, strategic).
    assert!(c
        .ok(&["-n", "demo", "label", "cm", "cfg", "env=test"])
        .await
        .contains("labeled"));
    assert!(c
        .ok(&["-n", "demo", "annotate", "cm", "cfg", "note=hi"])
        .await
        .contains("annotated"));
    assert!(c
        .ok(&["-n", "demo", "scale", "deploy", "web", "--replicas=3"])
        .await
        .contains("scaled"));
    assert_eq!(
        c.ok(&[
            "-n",
            "demo",
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.replicas} {.metadata.generation}"
        ])
        .await,
        "3 2"
    );
    c.ok(&[
        "-n",
        "demo",
        "patch",
        "cm",
        "cfg",
        "--type=merge",
        "-p",
        r#"{"data":{"c":"3"}}"#,
    ])
    .await;
    c.ok(&[
        "-n",
        "demo",
        "patch",
        "cm",
        "cfg",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/data/a"}]"#,
    ])
    .await;
    c.ok(&[
        "-n",
        "demo",
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:1.28"}]}}}}"#,
    ])
    .await;
    let out = c
        .ok(&[
            "-n",
            "demo",
            "get",
            "cm",
            "cfg",
            "-o",
            "jsonpath={.data} {.metadata.labels.env} {.metadata.annotations.note}",
        ])
        .await;
    assert_eq!(out, r#"{"b":"2","c":"3"} test hi"#);
    let out = c.ok(&["-n", "demo", "get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[0].containerPort}"]).await;
    assert_eq!(out, "nginx:1.28 80");
    let out = c
        .ok(&[
            "-n",
            "demo",
            "patch",
            "cm",
            "cfg",
            "--type=merge",
            "-p",
            r#"{"data":{"c":"3"}}"#,
        ])
        .await;
    assert!(out.contains("(no change)"), "{out}");

    // apply (client-side: strategic merge patch on update).
    c.ok(&["apply", "-f", &file]).await;
    let changed = c.file("app2.yaml", &APP.replace("replicas: 2", "replicas: 5"));
    assert!(c
        .ok(&["apply", "-f", &changed])
        .await
        .contains("deployment.apps/web configured"));
    assert_eq!(
        c.ok(&[
            "-n",
            "demo",
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.replicas}"
        ])
        .await,
        "5"
    );

    // replace with a stale resourceVersion is a Conflict.
    let stale = c
        .ok(&["-n", "demo", "get", "cm", "cfg", "-o", "yaml"])
        .await;
    c.ok(&["-n", "demo", "label", "cm", "cfg", "bump=1"]).await;
    let stale_file = c.file("stale.yaml", &stale);
    let err = c.fails(&["replace", "-f", &stale_file]).await;
    assert!(
        err.contains(
            "Operation cannot be fulfilled on configmaps \"cfg\": the object has been modified"
        ),
        "{err}"
    );
    let fresh = c.file(
        "fresh.yaml",
        &c.ok(&["-n", "demo", "get", "cm", "cfg", "-o", "yaml"])
            .await,
    );
    assert!(c.ok(&["replace", "-f", &fresh]).await.contains("replaced"));

    // `kubectl create <generator>` sends protobuf bodies.
    c.ok(&[
        "-n",
        "demo",
        "create",
        "deployment",
        "gen",
        "--image=busybox:1.36",
        "--replicas=0",
    ])
    .await;
    c.ok(&[
        "-n",
        "demo",
        "create",
        "service",
        "clusterip",
        "gen",
        "--tcp=80:8080",
    ])
    .await;
    c.ok(&[
        "-n",
        "demo",
        "create",
        "secret",
        "generic",
        "gen",
        "--from-literal=k=v",
    ])
    .await;
    c.ok(&[
        "-n",
        "demo",
        "create",
        "job",
        "gen",
        "--image=busybox",
        "--",
        "true",
    ])
    .await;
    let out = c.ok(&["-n", "demo", "get", "deploy/gen", "svc/gen", "secret/gen", "job/gen", "-o", "jsonpath={range .items[*]}{.kind}:{.spec.replicas}{.spec.ports[0].targetPort}{.type}{.spec.template.spec.restartPolicy} {end}"]).await;
    assert_eq!(
        out, "Deployment:0Always Service:8080 Secret:Opaque Job:Never ",
        "{out}"
    );

    // Errors with kube's wording.
    let err = c.fails(&["-n", "demo", "get", "cm", "nope"]).await;
    assert!(err.contains("configmaps \"nope\" not found"), "{err}");
    let err = c.fails(&["-n", "nope", "create", "configmap", "x"]).await;
    assert!(err.contains("namespaces \"nope\" not found"), "{err}");
    let bad = c.file(
        "bad.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: s, namespace: demo}\nbogus: 1\n",
    );
    let err = c.fails(&["create", "-f", &bad]).await;
    assert!(
        err.contains("strict decoding error: unknown field \"bogus\""),
        "{err}"
    );
    let err = c
        .fails(&[
            "-n",
            "demo",
            "get",
            "pods",
            "--field-selector",
            "spec.bogus=1",
        ])
        .await;
    assert!(
        err.contains("field label not supported: spec.bogus"),
        "{err}"
    );

    // describe.
    let out = c.ok(&["-n", "demo", "describe", "deploy", "web"]).await;
    assert!(
        out.contains("5 desired") && out.contains("nginx:1.27"),
        "{out}"
    );
    let out = c.ok(&["-n", "demo", "describe", "cm", "cfg"]).await;
    assert!(out.contains("env=test"), "{out}");

    // delete (waits for the DELETED event through a metadata.name watch).
    assert!(c
        .ok(&["-n", "demo", "delete", "cm", "c0"])
        .await
        .contains("configmap \"c0\" deleted"));
    assert!(c
        .ok(&["-n", "demo", "delete", "deploy", "web"])
        .await
        .contains("deleted"));
    let err = c.fails(&["-n", "demo", "get", "deploy", "web"]).await;
    assert!(err.contains("deployments.apps \"web\" not found"), "{err}");

    // Namespace deletion removes the content, then the namespace.
    c.ok(&["delete", "namespace", "demo", "--timeout=30s"])
        .await;
    let err = c.fails(&["get", "namespace", "demo"]).await;
    assert!(err.contains("namespaces \"demo\" not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_watch_sees_added_modified_deleted() {
    let c = Cluster::start().await;
    c.ok(&["create", "configmap", "seed", "--from-literal=a=b"])
        .await;
    let mut child = c
        .kubectl_cmd(&[
            "get",
            "configmaps",
            "--watch",
            "--output-watch-events",
            "--request-timeout=60s",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    macro_rules! next_line {
        () => {
            tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .expect("watch line in time")
                .unwrap()
                .expect("watch open")
        };
    }
    // The initial list (header + seed) arrives before we change anything.
    loop {
        let l = next_line!();
        seen.push(l.clone());
        if l.contains("seed") {
            break;
        }
    }
    c.ok(&["create", "configmap", "w1", "--from-literal=a=b"])
        .await;
    c.ok(&["label", "configmap", "w1", "x=y"]).await;
    c.ok(&["delete", "configmap", "w1"]).await;
    for want in ["ADDED", "MODIFIED", "DELETED"] {
        loop {
            let l = next_line!();
            seen.push(l.clone());
            if l.contains("w1") && l.starts_with(want) {
                break;
            }
        }
    }
    let _ = child.kill().await;
    assert!(seen.iter().any(|l| l.starts_with("EVENT")), "{seen:?}");
}
