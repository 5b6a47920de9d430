//! API semantics over raw HTTP against a real etcd: status codes and
//! Status bodies, optimistic concurrency, status subresource, generation,
//! finalizers, paging at one revision, watch semantics.

mod common;

use common::Cluster;
use serde_json::{json, Value};

const CM: &str = "/api/v1/namespaces/default/configmaps";
const DEPLOY: &str = "/apis/apps/v1/namespaces/default/deployments";

fn deployment(name: &str) -> String {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}
    })
    .to_string()
}

fn cm(name: &str, labels: Value) -> String {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_concurrency() {
    let c = Cluster::start().await;
    let (code, created) = c
        .json("POST", CM, "application/json", &cm("a", json!({})))
        .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["metadata"]["uid"].as_str().unwrap().len(), 36);
    assert!(created["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    let (code, st) = c
        .json("POST", CM, "application/json", &cm("a", json!({})))
        .await;
    assert_eq!((code, st["reason"].as_str()), (409, Some("AlreadyExists")));
    assert_eq!(st["message"], "configmaps \"a\" already exists");

    let (code, st) = c.json("GET", &format!("{DEPLOY}/nope"), "", "").await;
    assert_eq!(
        (code, st["message"].as_str()),
        (404, Some("deployments.apps \"nope\" not found"))
    );
    assert_eq!(st["details"]["group"], "apps");

    let (code, st) = c
        .json("POST", CM, "application/json", &cm("Bad_Name", json!({})))
        .await;
    assert_eq!((code, st["reason"].as_str()), (422, Some("Invalid")));
    assert_eq!(st["details"]["causes"][0]["field"], "metadata.name");

    let (code, st) = c
        .json(
            "POST",
            &format!("{CM}?fieldValidation=Strict"),
            "application/json",
            r#"{"metadata":{"name":"x","bogus":1}}"#,
        )
        .await;
    assert_eq!((code, st["reason"].as_str()), (400, Some("BadRequest")));
    assert!(st["message"]
        .as_str()
        .unwrap()
        .contains("unknown field \"metadata.bogus\""));

    let (code, _) = c
        .json(
            "POST",
            "/api/v1/namespaces/missing/configmaps",
            "application/json",
            &cm("a", json!({})),
        )
        .await;
    assert_eq!(code, 404);
    let (code, _) = c.json("GET", "/api/v1/bogus", "", "").await;
    assert_eq!(code, 404);
    let (code, st) = c
        .json(
            "PATCH",
            &format!("{CM}/a"),
            "application/apply-patch+yaml",
            "{}",
        )
        .await;
    assert_eq!(
        (code, st["reason"].as_str()),
        (415, Some("UnsupportedMediaType"))
    );
    let (code, _) = c.json("POST", CM, "application/json", "{not json").await;
    assert_eq!(code, 400);
    let (code, _) = c
        .json("GET", &format!("{CM}?labelSelector=a+in+b"), "", "")
        .await;
    assert_eq!(code, 400);
    let (code, _) = c
        .json("GET", &format!("{CM}?continue=garbage"), "", "")
        .await;
    assert_eq!(code, 400);

    // Optimistic concurrency: a PUT with a stale resourceVersion is a 409.
    let mut upd: Value = serde_json::from_str(&cm("a", json!({"x": "1"}))).unwrap();
    upd["metadata"]["resourceVersion"] = json!(rv);
    let (code, first) = c
        .json(
            "PUT",
            &format!("{CM}/a"),
            "application/json",
            &upd.to_string(),
        )
        .await;
    assert_eq!(code, 200, "{first}");
    assert_ne!(first["metadata"]["resourceVersion"].as_str().unwrap(), rv);
    assert_eq!(first["metadata"]["uid"], created["metadata"]["uid"]);
    let (code, st) = c
        .json(
            "PUT",
            &format!("{CM}/a"),
            "application/json",
            &upd.to_string(),
        )
        .await;
    assert_eq!(code, 409);
    assert_eq!(st["message"], "Operation cannot be fulfilled on configmaps \"a\": the object has been modified; please apply your changes to the latest version and try again");

    // A no-op update writes nothing: same resourceVersion.
    let (_, same) = c
        .json(
            "PATCH",
            &format!("{CM}/a"),
            "application/merge-patch+json",
            r#"{"data":{"k":"v"}}"#,
        )
        .await;
    assert_eq!(
        same["metadata"]["resourceVersion"],
        first["metadata"]["resourceVersion"]
    );

    // DELETE preconditions.
    let (code, st) = c
        .json(
            "DELETE",
            &format!("{CM}/a"),
            "application/json",
            r#"{"preconditions":{"uid":"nope"}}"#,
        )
        .await;
    assert_eq!(code, 409, "{st}");
    let (code, st) = c
        .json(
            "DELETE",
            &format!("{CM}/a"),
            "application/json",
            r#"{"propagationPolicy":"Background"}"#,
        )
        .await;
    assert_eq!((code, st["status"].as_str()), (200, Some("Success")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_generation_finalizers_and_scale() {
    let c = Cluster::start().await;
    let (code, d) = c
        .json("POST", DEPLOY, "application/json", &deployment("web"))
        .await;
    assert_eq!(code, 201, "{d}");
    assert_eq!(d["metadata"]["generation"], 1);

    // Status written through the main resource is ignored; /status keeps only status.
    let (_, d2) = c
        .json(
            "PATCH",
            &format!("{DEPLOY}/web"),
            "application/merge-patch+json",
            r#"{"status":{"replicas":7},"metadata":{"labels":{"l":"1"}}}"#,
        )
        .await;
    assert_eq!(d2["status"], json!({}));
    assert_eq!(
        d2["metadata"]["generation"], 1,
        "labels do not bump generation"
    );
    let (_, d3) = c
        .json(
            "PATCH",
            &format!("{DEPLOY}/web/status"),
            "application/merge-patch+json",
            r#"{"status":{"replicas":7},"spec":{"replicas":9}}"#,
        )
        .await;
    assert_eq!(d3["status"]["replicas"], 7);
    assert_eq!(d3["spec"]["replicas"], 1);
    let (_, d4) = c
        .json(
            "PATCH",
            &format!("{DEPLOY}/web"),
            "application/merge-patch+json",
            r#"{"spec":{"replicas":4}}"#,
        )
        .await;
    assert_eq!(d4["metadata"]["generation"], 2);
    let (_, d5) = c
        .json(
            "PATCH",
            &format!("{DEPLOY}/web"),
            "application/merge-patch+json",
            r#"{"metadata":{"annotations":{"a":"b"}}}"#,
        )
        .await;
    assert_eq!(
        d5["metadata"]["generation"], 3,
        "deployment annotations bump generation"
    );

    // Scale subresource.
    let (code, s) = c.json("GET", &format!("{DEPLOY}/web/scale"), "", "").await;
    assert_eq!(code, 200);
    assert_eq!(
        (
            s["kind"].as_str(),
            s["spec"]["replicas"].as_i64(),
            s["status"]["selector"].as_str()
        ),
        (Some("Scale"), Some(4), Some("app=web"))
    );
    let (code, s) = c.json("PUT", &format!("{DEPLOY}/web/scale"), "application/json", r#"{"apiVersion":"autoscaling/v1","kind":"Scale","metadata":{"name":"web","resourceVersion":"1"},"spec":{"replicas":2}}"#).await;
    assert_eq!(code, 409, "{s}");
    let (_, s) = c
        .json(
            "PATCH",
            &format!("{DEPLOY}/web/scale"),
            "application/merge-patch+json",
            r#"{"spec":{"replicas":6}}"#,
        )
        .await;
    assert_eq!(s["spec"]["replicas"], 6);

    // Finalizers hold the object with a deletionTimestamp; removing the last one deletes it.
    let body = json!({"metadata": {"name": "held", "finalizers": ["example.com/x"]}}).to_string();
    c.json("POST", CM, "application/json", &body).await;
    let (code, held) = c.json("DELETE", &format!("{CM}/held"), "", "").await;
    assert_eq!(code, 200);
    assert!(held["metadata"]["deletionTimestamp"].is_string(), "{held}");
    let (code, _) = c.json("GET", &format!("{CM}/held"), "", "").await;
    assert_eq!(code, 200);
    let (code, st) = c
        .json(
            "PATCH",
            &format!("{CM}/held"),
            "application/merge-patch+json",
            r#"{"metadata":{"finalizers":["example.com/x","example.com/y"]}}"#,
        )
        .await;
    assert_eq!(code, 422, "{st}");
    c.json(
        "PATCH",
        &format!("{CM}/held"),
        "application/json-patch+json",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    )
    .await;
    let (code, _) = c.json("GET", &format!("{CM}/held"), "", "").await;
    assert_eq!(code, 404);

    // generateName.
    let (code, g) = c
        .json(
            "POST",
            CM,
            "application/json",
            r#"{"metadata":{"generateName":"gen-"}}"#,
        )
        .await;
    assert_eq!(code, 201);
    assert!(
        g["metadata"]["name"].as_str().unwrap().starts_with("gen-")
            && g["metadata"]["name"].as_str().unwrap().len() == 9
    );

    // Pods: binding sets nodeName; a second binding conflicts.
    let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}).to_string();
    c.json(
        "POST",
        "/api/v1/namespaces/default/pods",
        "application/json",
        &pod,
    )
    .await;
    let binding = r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"p"},"target":{"kind":"Node","name":"n1"}}"#;
    let (code, _) = c
        .json(
            "POST",
            "/api/v1/namespaces/default/pods/p/binding",
            "application/json",
            binding,
        )
        .await;
    assert_eq!(code, 201);
    let (code, _) = c
        .json(
            "POST",
            "/api/v1/namespaces/default/pods/p/binding",
            "application/json",
            binding,
        )
        .await;
    assert_eq!(code, 409);
    let (_, p) = c
        .json(
            "GET",
            "/api/v1/namespaces/default/pods?fieldSelector=spec.nodeName%3Dn1",
            "",
            "",
        )
        .await;
    assert_eq!(p["items"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_is_a_snapshot() {
    let c = Cluster::start().await;
    for i in 0..5 {
        c.json(
            "POST",
            CM,
            "application/json",
            &cm(&format!("p{i}"), json!({"n": i.to_string()})),
        )
        .await;
    }
    let (_, page1) = c.json("GET", &format!("{CM}?limit=2"), "", "").await;
    let rv = page1["metadata"]["resourceVersion"].clone();
    assert_eq!(page1["metadata"]["remainingItemCount"], 3);
    let mut names: Vec<String> = page1["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    // Written after the first page: must not show up in later pages.
    c.json("POST", CM, "application/json", &cm("p9", json!({})))
        .await;
    let mut token = page1["metadata"]["continue"].as_str().unwrap().to_string();
    while !token.is_empty() {
        let (code, page) = c
            .json("GET", &format!("{CM}?limit=2&continue={token}"), "", "")
            .await;
        assert_eq!(code, 200, "{page}");
        assert_eq!(page["metadata"]["resourceVersion"], rv);
        names.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_string()),
        );
        token = page["metadata"]["continue"]
            .as_str()
            .unwrap_or("")
            .to_string();
    }
    assert_eq!(names, ["p0", "p1", "p2", "p3", "p4"]);

    // Selectors with paging: filtered pages still cover everything.
    let (_, sel) = c
        .json(
            "GET",
            &format!("{CM}?limit=1&labelSelector=n+in+(1,3)"),
            "",
            "",
        )
        .await;
    assert_eq!(sel["items"][0]["metadata"]["name"], "p1");
    assert!(sel["metadata"].get("remainingItemCount").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_semantics() {
    let c = Cluster::start().await;
    let (_, a) = c
        .json(
            "POST",
            CM,
            "application/json",
            &cm("a", json!({"sel": "yes"})),
        )
        .await;
    let rv = a["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    // Selector applied to old and new: leaving the selector is DELETED.
    let mut w = c
        .watch(&format!(
            "{CM}?watch=true&resourceVersion={rv}&labelSelector=sel%3Dyes"
        ))
        .await;
    c.json(
        "POST",
        CM,
        "application/json",
        &cm("b", json!({"sel": "yes"})),
    )
    .await;
    c.json(
        "POST",
        CM,
        "application/json",
        &cm("ignored", json!({"sel": "no"})),
    )
    .await;
    c.json(
        "PATCH",
        &format!("{CM}/a"),
        "application/merge-patch+json",
        r#"{"data":{"k":"2"}}"#,
    )
    .await;
    c.json(
        "PATCH",
        &format!("{CM}/b"),
        "application/merge-patch+json",
        r#"{"metadata":{"labels":{"sel":"no"}}}"#,
    )
    .await;
    c.json("DELETE", &format!("{CM}/a"), "", "").await;
    let mut got = Vec::new();
    for _ in 0..4 {
        let ev = w.next().await.expect("event");
        got.push(format!(
            "{} {}",
            ev["type"].as_str().unwrap(),
            ev["object"]["metadata"]["name"].as_str().unwrap()
        ));
    }
    assert_eq!(got, ["ADDED b", "MODIFIED a", "DELETED b", "DELETED a"]);

    // Resume from an old revision replays the history in order.
    let mut w = c
        .watch(&format!(
            "{CM}?watch=1&resourceVersion={rv}&timeoutSeconds=2"
        ))
        .await;
    let first = w.next().await.unwrap();
    assert_eq!(
        (
            first["type"].as_str(),
            first["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("b"))
    );
    let mut last = 0i64;
    while let Some(ev) = w.next().await {
        let r: i64 = ev["object"]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(r > last, "events in order");
        last = r;
    }

    // sendInitialEvents: current state, then the initial-events-end bookmark.
    let mut w = c.watch(&format!("{CM}?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true")).await;
    let mut initial = Vec::new();
    loop {
        let ev = w.next().await.unwrap();
        if ev["type"] == "BOOKMARK" {
            assert_eq!(
                ev["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
                "true"
            );
            break;
        }
        initial.push(
            ev["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(initial, ["b", "ignored"]);

    // Compacted revision: HTTP 200, then an ERROR event with 410 Expired.
    let (_, cur) = c.json("GET", CM, "", "").await;
    let now: i64 = cur["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let storage =
        ballast_apiserver::storage::Storage::connect(std::slice::from_ref(&c.etcd.endpoint))
            .await
            .unwrap();
    let (t, r) = storage.compact_round(0, 0).await.unwrap();
    assert!(r >= now);
    storage.compact_round(t, r).await.unwrap();
    let mut w = c.watch(&format!("{CM}?watch=true&resourceVersion=1")).await;
    let ev = w.next().await.unwrap();
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");
    let (code, st) = c
        .json(
            "GET",
            &format!("{CM}?resourceVersion=1&resourceVersionMatch=Exact"),
            "",
            "",
        )
        .await;
    assert_eq!((code, st["reason"].as_str()), (410, Some("Expired")));

    // Parameter validation.
    let (code, _) = c
        .json(
            "GET",
            &format!("{CM}?watch=true&sendInitialEvents=true"),
            "",
            "",
        )
        .await;
    assert_eq!(code, 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_cache_shares_one_etcd_watch() {
    use ballast_apiserver::storage::{Storage, StorageEvent};
    use ballast_apiserver::watchcache::{Msg, WatchCaches};
    let etcd = common::Etcd::start(common::Store::default_for_tests());
    let storage = Storage::connect(std::slice::from_ref(&etcd.endpoint))
        .await
        .unwrap();
    let prefix = "/registry/configmaps/";
    storage
        .create(
            "/registry/configmaps/default/old",
            &json!({"metadata": {"name": "old"}}),
        )
        .await
        .unwrap();
    let now = storage.current_revision(prefix).await.unwrap();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let caches = WatchCaches::new(storage.clone(), std::time::Duration::from_secs(1), stop_rx);
    let mut a = caches
        .subscribe(prefix, now)
        .await
        .unwrap()
        .expect("inside the window");
    let mut b = caches
        .subscribe(prefix, now)
        .await
        .unwrap()
        .expect("inside the window");
    assert_eq!(caches.len().await, 1, "one etcd watch for both watchers");
    assert!(
        caches.subscribe(prefix, now - 1).await.unwrap().is_none(),
        "older than the window"
    );
    let rev = storage
        .create(
            "/registry/configmaps/default/new",
            &json!({"metadata": {"name": "new"}}),
        )
        .await
        .unwrap();
    for sub in [&mut a, &mut b] {
        loop {
            let msg = tokio::time::timeout(common::STEP, sub.live.recv())
                .await
                .unwrap()
                .unwrap();
            if let Msg::Event(ev) = msg {
                let StorageEvent::Change { key, revision, .. } = ev.as_ref() else {
                    panic!("change expected")
                };
                assert_eq!(
                    (key.as_str(), *revision),
                    ("/registry/configmaps/default/new", rev)
                );
                break;
            }
        }
    }
    // A later subscriber from `now` gets the change replayed from the window.
    let c = caches.subscribe(prefix, now).await.unwrap().unwrap();
    assert_eq!(c.replay.len(), 1);
}
