//! Bad input over raw HTTP: every malformed, oversized, mismatched or
//! unsupported request gets kube's status code, reason and message as a
//! `metav1.Status`, never a 500, and writes nothing (the store's revision
//! does not move). YAML bodies are accepted as kube accepts them.

mod common;

use common::Cluster;
use serde_json::{json, Value};

const CM: &str = "/api/v1/namespaces/default/configmaps";
const JSON: &str = "application/json";
const MERGE: &str = "application/merge-patch+json";
const JSON_PATCH: &str = "application/json-patch+json";

/// One bad request and what kube answers.
struct Case {
    method: &'static str,
    path: String,
    content_type: &'static str,
    body: String,
    code: u16,
    reason: &'static str,
    /// A part of the message.
    says: &'static str,
}

fn case(
    method: &'static str,
    path: impl Into<String>,
    content_type: &'static str,
    body: impl Into<String>,
    (code, reason, says): (u16, &'static str, &'static str),
) -> Case {
    Case {
        method,
        path: path.into(),
        content_type,
        body: body.into(),
        code,
        reason,
        says,
    }
}

const BAD: (u16, &str, &str) = (400, "BadRequest", "");
const INVALID: (u16, &str, &str) = (422, "Invalid", "");

/// The store's revision (a list's resourceVersion).
async fn revision(c: &Cluster) -> String {
    let (code, list) = c.json("GET", CM, "", "").await;
    assert_eq!(code, 200, "{list}");
    list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Runs the cases and checks that none of them wrote anything.
async fn run(c: &Cluster, cases: Vec<Case>) {
    let before = revision(c).await;
    for k in cases {
        let (code, text) = c.http(k.method, &k.path, k.content_type, &k.body).await;
        let what = format!("{} {} ({})", k.method, k.path, k.content_type);
        let st: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{what}: not a Status ({e}): {text}"));
        assert_eq!(
            (code, st["kind"].as_str(), st["reason"].as_str()),
            (k.code, Some("Status"), Some(k.reason)),
            "{what}: {st}"
        );
        assert_eq!(st["code"], k.code, "{what}: {st}");
        let msg = st["message"].as_str().unwrap_or("");
        assert!(msg.contains(k.says), "{what}: {msg:?} lacks {:?}", k.says);
    }
    assert_eq!(revision(c).await, before, "a rejected request wrote");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies() {
    let c = Cluster::start().await;
    let big =
        |n: usize| json!({"metadata": {"name": "big"}, "data": {"k": "x".repeat(n)}}).to_string();
    let mib = 1024 * 1024;
    let cases = vec![
        case("POST", CM, JSON, r#"{"metadata":"#, (400, "BadRequest", "the object provided is unrecognized (must be of type ConfigMap): couldn't get version/kind; json parse error: ")),
        case("POST", CM, JSON, "[1, 2]", (400, "BadRequest", "(must be of type ConfigMap)")),
        case("POST", CM, JSON, "", (400, "BadRequest", "(<empty>)")),
        case("POST", CM, "application/yaml", "metadata:\n  name: y\n   bad: x\n", (400, "BadRequest", "error converting YAML to JSON: yaml: line 3: mapping values are not allowed in this context")),
        case("POST", CM, "application/yaml", "a: [1, 2", BAD),
        case("POST", CM, "text/plain", "{}", (415, "UnsupportedMediaType", "accepted media types include: application/json, application/yaml")),
        // Over kube's 3 MiB request limit (read, not truncated at 2 MB as axum's default would).
        case("POST", CM, JSON, big(4 * mib), (413, "RequestEntityTooLarge", "Request entity too large: limit is 3145728")),
        case("POST", CM, JSON, format!("{} trailing", big(5 * mib / 2)), (400, "BadRequest", "json parse error")),
        // Under the HTTP limit but over the store's request limit (1.5 MiB).
        case("POST", CM, JSON, big(5 * mib / 2), (413, "RequestEntityTooLarge", "Request entity too large: ")),
        case("POST", CM, JSON, r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"}}"#, (400, "BadRequest", "the kind in the data (Secret) does not match the expected kind")),
        case("POST", CM, JSON, r#"{"apiVersion":"apps/v1","kind":"ConfigMap","metadata":{"name":"x"}}"#, (400, "BadRequest", "the API version in the data (apps/v1) does not match the expected API version (v1)")),
        case("POST", CM, JSON, r#"{"metadata":{"name":"x","namespace":"other"}}"#, (400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")),
        case("POST", CM, JSON, r#"{"metadata":"x"}"#, BAD),
        case("POST", CM, JSON, r#"{"metadata":{"name":"x","ownerReferences":"x"}}"#, (400, "BadRequest", "Go struct field ObjectMeta.metadata.ownerReferences")),
        case("POST", CM, JSON, r#"{"metadata":{"name":7}}"#, BAD),
        case("POST", CM, JSON, r#"{"metadata":{"name":"Bad_Name"}}"#, (422, "Invalid", "metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain")),
        case("POST", CM, JSON, json!({"metadata": {"name": "a".repeat(254)}}).to_string(), (422, "Invalid", "must be no more than 253 characters")),
        case("POST", CM, JSON, r#"{"metadata":{}}"#, (422, "Invalid", "metadata.name: Required value: name or generateName is required")),
        case("POST", "/api/v1/namespaces", JSON, r#"{"metadata":{"name":"a.b"}}"#, (422, "Invalid", "RFC 1123 label")),
        case("POST", CM, JSON, r#"{"metadata":{"name":"o","ownerReferences":[{"apiVersion":"v1","kind":"Pod","name":"p"}]}}"#, (422, "Invalid", "metadata.ownerReferences.uid: Invalid value: \"\": uid must not be empty")),
        case("POST", CM, JSON, r#"{"metadata":{"name":"x","labels":{"a":"b c"}}}"#, INVALID),
        case("POST", format!("{CM}?dryRun=Some"), JSON, r#"{"metadata":{"name":"x"}}"#, BAD),
        case("POST", format!("{CM}?fieldValidation=Loud"), JSON, r#"{"metadata":{"name":"x"}}"#, BAD),
        case("POST", format!("{CM}/x"), JSON, r#"{"metadata":{"name":"x"}}"#, (405, "MethodNotAllowed", "create is not supported")),
        // PUT: kube's checkName comes before the store is read.
        case("PUT", format!("{CM}/missing"), JSON, r#"{"metadata":{"name":"other"}}"#, (400, "BadRequest", "the name of the object (other) does not match the name on the URL (missing)")),
        case("PUT", format!("{CM}/missing"), JSON, r#"{"metadata":{}}"#, (400, "BadRequest", "the name of the object (missing based on URL) was undeterminable: name must be provided")),
        case("PUT", format!("{CM}/missing"), JSON, r#"{"metadata":{"name":"missing","namespace":"other"}}"#, (400, "BadRequest", "the namespace of the object (other) does not match the namespace on the request (default)")),
        case("PUT", format!("{CM}/missing"), JSON, r#"{"metadata":{"name":"missing","resourceVersion":5}}"#, (400, "BadRequest", "ObjectMeta.metadata.resourceVersion of type string")),
        case("PUT", format!("{CM}/missing"), JSON, r#"{"metadata":{"name":"missing"}}"#, (404, "NotFound", "configmaps \"missing\" not found")),
    ];
    run(&c, cases).await;

    // YAML bodies are decoded as kube decodes them (sigs.k8s.io/yaml).
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml  # comment\n  labels: {tier: web}\ndata:\n  enabled: \"yes\"\n  script: |\n    echo one\n    echo two\n";
    let (code, cm) = c.json("POST", CM, "application/yaml", yaml).await;
    assert_eq!(code, 201, "{cm}");
    assert_eq!(
        cm["data"],
        json!({"enabled": "yes", "script": "echo one\necho two\n"})
    );
    assert_eq!(cm["metadata"]["labels"], json!({"tier": "web"}));
    let put = "kind: ConfigMap\nmetadata:\n  name: from-yaml\ndata: {enabled: \"no\"}\n";
    let (code, cm) = c
        .json(
            "PUT",
            &format!("{CM}/from-yaml"),
            "application/yaml; charset=utf-8",
            put,
        )
        .await;
    assert_eq!(
        (code, &cm["data"]),
        (200, &json!({"enabled": "no"})),
        "{cm}"
    );
    // Lists larger than gRPC's default 4 MiB message limit are served.
    for i in 0..5 {
        let body =
            json!({"metadata": {"name": format!("large-{i}")}, "data": {"k": "x".repeat(mib)}});
        let (code, st) = c.json("POST", CM, JSON, &body.to_string()).await;
        assert_eq!(code, 201, "{st}");
    }
    let (code, text) = c.http("GET", CM, "", "").await;
    assert_eq!(code, 200, "{}", &text[..text.len().min(300)]);
    assert!(text.len() > 5 * mib);
    // A YAML boolean where a string belongs is refused (422), not stored.
    let (code, st) = c
        .json(
            "POST",
            CM,
            "application/yaml",
            "metadata: {name: b}\ndata: {enabled: yes}\n",
        )
        .await;
    assert_eq!(
        (code, st["reason"].as_str()),
        (422, Some("Invalid")),
        "{st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_selectors_patches_and_deletes() {
    let c = Cluster::start().await;
    let nested = |n: usize| format!("{}1{}", "{\"k\":".repeat(n), "}".repeat(n));
    let body = format!(
        r#"{{"metadata":{{"name":"a"}},"data":{{"k":"v"}},"deep":{}}}"#,
        nested(90)
    );
    let (code, a) = c.json("POST", CM, JSON, &body).await;
    assert_eq!(code, 201, "{a}");
    // A JSON patch could nest past what can be read back: refused.
    let deeper = format!(
        r#"[{{"op":"add","path":"/deep{}","value":{}}}]"#,
        "/k".repeat(89),
        nested(90)
    );
    let pod = r#"{"metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"busybox"}]}}"#;
    let (code, _) = c
        .json("POST", "/api/v1/namespaces/default/pods", JSON, pod)
        .await;
    assert_eq!(code, 201);
    let not_found = (
        404,
        "NotFound",
        "the server could not find the requested resource",
    );
    let a_path = format!("{CM}/a");
    let cases = vec![
        // Unknown resources, versions, groups and paths.
        case("GET", "/api/v1/namespaces/default/widgets", "", "", not_found),
        case("GET", "/apis/apps/v2/namespaces/default/deployments", "", "", not_found),
        case("GET", "/apis/example.com/v1/things", "", "", not_found),
        case("GET", "/apis/example.com", "", "", not_found),
        case("GET", "/api/v2/pods", "", "", not_found),
        case("GET", "/api/v1/nodes/n/status/extra", "", "", not_found),
        case("GET", "/api/v1/namespaces/default/nodes", "", "", not_found),
        case("GET", format!("{CM}/a/scale"), "", "", not_found),
        case("GET", format!("{CM}/a%2Fb"), "", "", not_found),
        case("GET", format!("{CM}/a%25b"), "", "", (400, "BadRequest", "Name parameter invalid: \"a%b\": may not contain '%'")),
        case("GET", format!("{CM}/.."), "", "", (400, "BadRequest", "may not be '..'")),
        case("GET", "/api/v1/namespaces/default/pods/p/binding", "", "", (405, "MethodNotAllowed", "get is not supported on resources of kind \"pods/binding\"")),
        case("OPTIONS", CM, "", "", (405, "MethodNotAllowed", "")),
        case("PUT", CM, JSON, "{}", (405, "MethodNotAllowed", "update is not supported")),
        // Selectors and query parameters.
        case("GET", format!("{CM}?labelSelector=a+in+b"), "", "", (400, "BadRequest", "unable to parse requirement")),
        case("GET", format!("{CM}?labelSelector=a%3D%3D%3Db"), "", "", BAD),
        case("GET", format!("{CM}?labelSelector=!!a"), "", "", BAD),
        case("GET", format!("{CM}?fieldSelector=spec.x%3D1"), "", "", (400, "BadRequest", "field label not supported: spec.x")),
        case("GET", format!("{CM}?fieldSelector=metadata.name"), "", "", BAD),
        case("GET", format!("{CM}?watch=true&fieldSelector=spec.x%3D1"), "", "", BAD),
        case("GET", format!("{CM}?watch=true&labelSelector=a+in+b"), "", "", BAD),
        case("GET", format!("{CM}?limit=many"), "", "", BAD),
        case("GET", format!("{CM}?resourceVersion=abc"), "", "", BAD),
        case("GET", format!("{CM}?resourceVersionMatch=Sometimes&resourceVersion=1"), "", "", BAD),
        case("GET", format!("{CM}?continue=garbage"), "", "", BAD),
        // Patches that are malformed (400) or do not apply (422).
        case("PATCH", a_path.clone(), JSON_PATCH, deeper, (400, "BadRequest", "nested more than 100 levels")),
        case("PATCH", a_path.clone(), JSON_PATCH, r#"{"op":"add"}"#, BAD),
        case("PATCH", a_path.clone(), JSON_PATCH, "[1]", BAD),
        case("PATCH", a_path.clone(), JSON_PATCH, "[{", (400, "BadRequest", "error decoding patch")),
        case("PATCH", a_path.clone(), JSON_PATCH, r#"[{"op":"remove","path":"/data/zzz"}]"#, (422, "Invalid", "the server rejected our request due to an error in our request")),
        case("PATCH", a_path.clone(), JSON_PATCH, r#"[{"op":"test","path":"/data/k","value":"other"}]"#, INVALID),
        case("PATCH", a_path.clone(), JSON_PATCH, r#"[{"op":"frob","path":"/data/k"}]"#, INVALID),
        case("PATCH", a_path.clone(), MERGE, "[1]", BAD),
        case("PATCH", a_path.clone(), MERGE, "{", BAD),
        case("PATCH", a_path.clone(), MERGE, r#"{"metadata":{"name":"b"}}"#, (400, "BadRequest", "the name of the object (b) does not match the name on the URL (a)")),
        case("PATCH", a_path.clone(), MERGE, r#"{"metadata":{"name":null}}"#, (400, "BadRequest", "undeterminable")),
        case("PATCH", a_path.clone(), MERGE, r#"{"metadata":{"namespace":"kube-system"}}"#, (400, "BadRequest", "the namespace of the object (kube-system) does not match the namespace on the request (default)")),
        case("PATCH", a_path.clone(), MERGE, r#"{"kind":"Secret"}"#, BAD),
        case("PATCH", a_path.clone(), MERGE, r#"{"metadata":{"ownerReferences":7}}"#, BAD),
        case("PATCH", a_path.clone(), MERGE, r#"{"data":5}"#, INVALID),
        case("PATCH", a_path.clone(), "application/strategic-merge-patch+json", r#"{"data":{"$patch":"frob"}}"#, (400, "BadRequest", "unknown patch type")),
        case("PATCH", a_path.clone(), "application/strategic-merge-patch+json", "[]", BAD),
        case("PATCH", a_path.clone(), JSON, "{}", (415, "UnsupportedMediaType", "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json")),
        case("PATCH", format!("{CM}/missing"), MERGE, "{}", (404, "NotFound", "configmaps \"missing\" not found")),
        // DeleteOptions: undecodable (400), invalid (422), failed preconditions (409).
        case("DELETE", a_path.clone(), JSON, "{", (400, "BadRequest", "DeleteOptions cannot be decoded")),
        case("DELETE", a_path.clone(), JSON, "[]", BAD),
        case("DELETE", a_path.clone(), JSON, r#"{"gracePeriodSeconds":"soon"}"#, (400, "BadRequest", "DeleteOptions.gracePeriodSeconds of type int64")),
        case("DELETE", a_path.clone(), JSON, r#"{"propagationPolicy":"Sideways"}"#, (422, "Invalid", "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \"Sideways\"")),
        case("DELETE", a_path.clone(), JSON, r#"{"propagationPolicy":"Orphan","orphanDependents":true}"#, INVALID),
        case("DELETE", a_path.clone(), JSON, r#"{"dryRun":["Maybe"]}"#, INVALID),
        case("DELETE", a_path.clone(), JSON, r#"{"preconditions":{"uid":"nope"}}"#, (409, "Conflict", "Precondition failed: UID in precondition: nope")),
        case("DELETE", format!("{a_path}?gracePeriodSeconds=soon"), "", "", BAD),
        case("DELETE", format!("{a_path}?propagationPolicy=Sideways"), "", "", INVALID),
        case("DELETE", format!("{CM}/a/status"), "", "", not_found),
    ];
    run(&c, cases).await;
    let (_, still) = c.json("GET", &a_path, "", "").await;
    assert_eq!(
        still["metadata"]["resourceVersion"], a["metadata"]["resourceVersion"],
        "the object is untouched"
    );
}
