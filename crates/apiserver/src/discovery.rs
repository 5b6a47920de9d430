//! Discovery documents: `/version`, legacy `/api`, `/apis`, `/api/v1`,
//! `/apis/<group>[/<version>]`, the aggregated discovery v2 form kubectl
//! 1.32 asks for by Accept header, and a minimal `/openapi/v3` that tells
//! kubectl the server supports `fieldValidation` for every kind.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::registry::{groups, Strategy};

/// The Kubernetes version this facade reports (decides which kubectl the
/// gcloud dispatcher runs).
pub const KUBE_VERSION: &str = "v1.32.4";

/// Content-Type of aggregated discovery v2.
pub const AGGREGATED_V2: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
/// Content-Type of aggregated discovery v2beta1.
pub const AGGREGATED_V2BETA1: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `GET /version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": KUBE_VERSION,
        "gitCommit": "ballast",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "n/a (ballast-apiserver, Rust)",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH }),
    })
}

/// Which aggregated discovery version the Accept header asks for, if any.
pub fn aggregated_accept(accept: &str) -> Option<&'static str> {
    for part in accept.split(',') {
        let p: String = part.chars().filter(|c| !c.is_whitespace()).collect();
        if p.contains("as=APIGroupDiscoveryList") && p.contains("g=apidiscovery.k8s.io") {
            if p.contains("v=v2beta1") {
                return Some(AGGREGATED_V2BETA1);
            }
            if p.contains("v=v2") {
                return Some(AGGREGATED_V2);
            }
        }
    }
    None
}

fn group_version(group: &str) -> String {
    if group.is_empty() {
        "v1".into()
    } else {
        format!("{group}/v1")
    }
}

/// `GET /api` (legacy `APIVersions`).
pub fn api_versions(host: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
    })
}

fn api_group(group: &str) -> Value {
    let gv = json!({"groupVersion": group_version(group), "version": "v1"});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

/// `GET /apis` (legacy `APIGroupList`).
pub fn api_group_list(kinds: &[Arc<dyn Strategy>]) -> Value {
    let list: Vec<Value> = groups(kinds)
        .into_iter()
        .filter(|g| !g.is_empty())
        .map(api_group)
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": list})
}

/// `GET /apis/<group>` (`APIGroup`), if the group is served.
pub fn group_doc(kinds: &[Arc<dyn Strategy>], group: &str) -> Option<Value> {
    groups(kinds).contains(&group).then(|| {
        let mut g = api_group(group);
        g["kind"] = json!("APIGroup");
        g["apiVersion"] = json!("v1");
        g
    })
}

/// `GET /api/v1` or `/apis/<group>/v1` (`APIResourceList`).
pub fn resource_list(kinds: &[Arc<dyn Strategy>], group: &str, version: &str) -> Option<Value> {
    let mine: Vec<&Arc<dyn Strategy>> = kinds
        .iter()
        .filter(|k| k.info().group == group && k.info().version == version)
        .collect();
    if mine.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for k in mine {
        let i = k.info();
        let mut r = json!({
            "name": i.resource,
            "singularName": i.singular,
            "namespaced": i.namespaced,
            "kind": i.kind,
            "verbs": VERBS,
        });
        if !i.short_names.is_empty() {
            r["shortNames"] = json!(i.short_names);
        }
        if !i.categories.is_empty() {
            r["categories"] = json!(i.categories);
        }
        resources.push(r);
        for s in i.subresources {
            let mut sr = json!({
                "name": format!("{}/{}", i.resource, s.name),
                "singularName": "",
                "namespaced": i.namespaced,
                "kind": s.kind,
                "verbs": s.verbs,
            });
            if s.group != i.group || s.name == "scale" {
                sr["group"] = json!(s.group);
                sr["version"] = json!(s.version);
            }
            resources.push(sr);
        }
    }
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version(group), "resources": resources}),
    )
}

fn aggregated_resource(k: &Arc<dyn Strategy>) -> Value {
    let i = k.info();
    let subs: Vec<Value> = i
        .subresources
        .iter()
        .map(|s| json!({"subresource": s.name, "responseKind": {"group": s.group, "version": s.version, "kind": s.kind}, "verbs": s.verbs}))
        .collect();
    let mut r = json!({
        "resource": i.resource,
        "responseKind": {"group": i.group, "version": i.version, "kind": i.kind},
        "scope": if i.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": i.singular,
        "verbs": VERBS,
    });
    if !i.short_names.is_empty() {
        r["shortNames"] = json!(i.short_names);
    }
    if !i.categories.is_empty() {
        r["categories"] = json!(i.categories);
    }
    if !subs.is_empty() {
        r["subresources"] = json!(subs);
    }
    r
}

/// Aggregated discovery for `/api` (core only) or `/apis` (named groups).
pub fn aggregated(kinds: &[Arc<dyn Strategy>], core: bool, content_type: &str) -> Value {
    let items: Vec<Value> = groups(kinds)
        .into_iter()
        .filter(|g| g.is_empty() == core)
        .map(|g| {
            let resources: Vec<Value> = kinds.iter().filter(|k| k.info().group == g).map(aggregated_resource).collect();
            let meta = if g.is_empty() { json!({"creationTimestamp": null}) } else { json!({"name": g, "creationTimestamp": null}) };
            json!({"metadata": meta, "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}]})
        })
        .collect();
    let api_version = if content_type == AGGREGATED_V2BETA1 {
        "apidiscovery.k8s.io/v2beta1"
    } else {
        "apidiscovery.k8s.io/v2"
    };
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": api_version, "metadata": {}, "items": items})
}

fn openapi_hash(gv_path: &str) -> String {
    // Stable per build and group-version: the content only changes with the code.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in gv_path
        .bytes()
        .chain(KUBE_VERSION.bytes())
        .chain(env!("CARGO_PKG_VERSION").bytes())
    {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016X}")
}

/// `GET /openapi/v3`: the index of group-version documents.
pub fn openapi_index(kinds: &[Arc<dyn Strategy>]) -> Value {
    let mut paths = serde_json::Map::new();
    for g in groups(kinds) {
        let p = if g.is_empty() {
            "api/v1".to_string()
        } else {
            format!("apis/{g}/v1")
        };
        let url = format!("/openapi/v3/{p}?hash={}", openapi_hash(&p));
        paths.insert(p, json!({"serverRelativeURL": url}));
    }
    json!({"paths": paths})
}

/// `GET /openapi/v3/<api/v1|apis/g/v1>`: one PATCH operation per kind with
/// the `fieldValidation` parameter (what kubectl probes), no schemas.
pub fn openapi_group_version(kinds: &[Arc<dyn Strategy>], gv_path: &str) -> Option<Value> {
    let group = if gv_path == "api/v1" {
        ""
    } else {
        gv_path.strip_prefix("apis/")?.strip_suffix("/v1")?
    };
    let mut paths = serde_json::Map::new();
    for k in kinds.iter().filter(|k| k.info().group == group) {
        let i = k.info();
        let base = if group.is_empty() {
            "/api/v1".to_string()
        } else {
            format!("/apis/{group}/v1")
        };
        let path = if i.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", i.resource)
        } else {
            format!("{base}/{}/{{name}}", i.resource)
        };
        let op = json!({
            "patch": {
                "operationId": format!("patch{}", i.kind),
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {"group": i.group, "version": i.version, "kind": i.kind},
                "parameters": [
                    {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}}
                ],
                "requestBody": {"content": {"application/json-patch+json": {}, "application/merge-patch+json": {}, "application/apply-patch+yaml": {}}},
                "responses": {"200": {"description": "OK"}}
            }
        });
        paths.insert(path, op);
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBE_VERSION},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::all_kinds;

    #[test]
    fn accept_negotiation() {
        let kubectl = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_accept(kubectl), Some(AGGREGATED_V2));
        assert_eq!(aggregated_accept("application/json"), None);
    }

    #[test]
    fn documents() {
        let kinds = all_kinds();
        let core = resource_list(&kinds, "", "v1").unwrap();
        let names: Vec<&str> = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        for n in [
            "pods",
            "pods/status",
            "pods/binding",
            "nodes/status",
            "namespaces/finalize",
            "namespaces/status",
        ] {
            assert!(names.contains(&n), "{n}");
        }
        let agg = aggregated(&kinds, false, AGGREGATED_V2);
        let apps = agg["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["metadata"]["name"] == "apps")
            .unwrap();
        let deploy = apps["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "deployments")
            .unwrap();
        assert!(deploy["subresources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["responseKind"]["group"] == "autoscaling"));
        let idx = openapi_index(&kinds);
        assert!(idx["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap()
            .starts_with("/openapi/v3/apis/apps/v1?hash="));
        let doc = openapi_group_version(&kinds, "apis/apps/v1").unwrap();
        assert!(
            doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"]
                .is_object()
        );
        assert!(openapi_group_version(&kinds, "apis/nope/v1").is_none());
    }
}
