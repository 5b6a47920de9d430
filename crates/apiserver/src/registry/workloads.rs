//! Pods and services, and the pod-spec rules shared with the controllers'
//! pod templates (defaults, validation, printer helpers).

use std::sync::Arc;

use serde_json::{json, Value};

use super::{status_sub, DeletePlan, ResourceInfo, Strategy, SubresourceInfo};
use crate::object::{self, path, path_i64, path_str};
use crate::status::Cause;
use crate::table::{or_none, Column};
use crate::validation::{is_dns1123_label, NameRule};

static POD: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    resource: "pods",
    singular: "pod",
    kind: "Pod",
    namespaced: true,
    short_names: &["po"],
    categories: &["all"],
    subresources: &[
        status_sub("", "Pod"),
        SubresourceInfo {
            name: "binding",
            group: "",
            version: "v1",
            kind: "Binding",
            verbs: &["create"],
        },
    ],
};

static SERVICE: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    resource: "services",
    singular: "service",
    kind: "Service",
    namespaced: true,
    short_names: &["svc"],
    categories: &["all"],
    subresources: &[status_sub("", "Service")],
};

/// Pods and services.
pub fn kinds() -> Vec<Arc<dyn Strategy>> {
    vec![Arc::new(Pods), Arc::new(Services)]
}

/// Applies kube's pod-spec defaults (also used for pod templates).
pub fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    object::default_path(spec, "restartPolicy", json!("Always"));
    object::default_path(spec, "dnsPolicy", json!("ClusterFirst"));
    object::default_path(spec, "schedulerName", json!("default-scheduler"));
    object::default_path(spec, "terminationGracePeriodSeconds", json!(30));
    object::default_path(spec, "securityContext", json!({}));
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(cs)) = spec.get_mut(list) {
            for c in cs.iter_mut().filter(|c| c.is_object()) {
                let image = path_str(c, "image").unwrap_or_default();
                let last = image.rsplit('/').next().unwrap_or("");
                let policy =
                    if image.contains('@') || (last.contains(':') && !last.ends_with(":latest")) {
                        "IfNotPresent"
                    } else {
                        "Always"
                    };
                object::default_path(c, "imagePullPolicy", json!(policy));
                object::default_path(c, "terminationMessagePath", json!("/dev/termination-log"));
                object::default_path(c, "terminationMessagePolicy", json!("File"));
                object::default_path(c, "resources", json!({}));
                if let Some(Value::Array(ports)) = c.get_mut("ports") {
                    for p in ports.iter_mut().filter(|p| p.is_object()) {
                        object::default_path(p, "protocol", json!("TCP"));
                    }
                }
            }
        }
    }
}

/// Validates a pod spec at `field` (`spec` or `spec.template.spec`).
pub fn validate_pod_spec(spec: Option<&Value>, field: &str, causes: &mut Vec<Cause>) {
    let containers = spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array);
    match containers {
        None => causes.push(Cause::required(format!("{field}.containers"), "")),
        Some(cs) if cs.is_empty() => {
            causes.push(Cause::required(format!("{field}.containers"), ""))
        }
        Some(cs) => {
            let mut seen = Vec::new();
            for (i, c) in cs.iter().enumerate() {
                let name = path_str(c, "name").unwrap_or_default();
                let at = format!("{field}.containers[{i}]");
                if name.is_empty() {
                    causes.push(Cause::required(format!("{at}.name"), ""));
                } else if !is_dns1123_label(&name) {
                    causes.push(Cause::invalid(format!("{at}.name"), &name, "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"));
                } else if seen.contains(&name) {
                    causes.push(Cause {
                        reason: "FieldValueDuplicate",
                        field: format!("{at}.name"),
                        message: format!("Duplicate value: {}", json!(name)),
                    });
                }
                seen.push(name);
                if path_str(c, "image").is_none_or(|i| i.trim().is_empty()) {
                    causes.push(Cause::required(format!("{at}.image"), ""));
                }
            }
        }
    }
    if let Some(rp) = spec.and_then(|s| path_str(s, "restartPolicy")) {
        if !matches!(rp.as_str(), "Always" | "OnFailure" | "Never") {
            causes.push(Cause::not_supported(
                format!("{field}.restartPolicy"),
                &rp,
                &["Always", "OnFailure", "Never"],
            ));
        }
    }
}

/// Comma-joined names and images of a pod spec's containers.
pub fn containers_and_images(spec: Option<&Value>) -> (Value, Value) {
    let cs = spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let names: Vec<String> = cs.iter().filter_map(|c| path_str(c, "name")).collect();
    let images: Vec<String> = cs.iter().filter_map(|c| path_str(c, "image")).collect();
    (json!(names.join(",")), json!(images.join(",")))
}

/// Renders a `metav1.LabelSelector` as a selector string (`app=web,tier in (a,b)`).
pub fn selector_string(sel: Option<&Value>) -> String {
    let Some(sel) = sel else { return String::new() };
    let mut parts: Vec<String> = object::string_map(sel.get("matchLabels"))
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = path_str(e, "key").unwrap_or_default();
        let vals: Vec<String> = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        match path_str(e, "operator").as_deref() {
            Some("In") => parts.push(format!("{key} in ({})", vals.join(","))),
            Some("NotIn") => parts.push(format!("{key} notin ({})", vals.join(","))),
            Some("Exists") => parts.push(key),
            Some("DoesNotExist") => parts.push(format!("!{key}")),
            _ => {}
        }
    }
    parts.join(",")
}

/// `v1 Pod`: defaults, `Pending` phase, graceful deletion when bound to a node.
pub struct Pods;

fn pod_status(obj: &Value) -> (String, i64, usize, usize) {
    let mut reason = path_str(obj, "status.reason")
        .or_else(|| path_str(obj, "status.phase"))
        .unwrap_or_else(|| "Pending".into());
    let statuses = obj
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let total = obj
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let mut ready = 0;
    let mut restarts = 0;
    for cs in statuses.iter().rev() {
        restarts += path_i64(cs, "restartCount").unwrap_or(0);
        if let Some(r) = path_str(cs, "state.waiting.reason").filter(|r| !r.is_empty()) {
            reason = r;
        } else if let Some(r) = path_str(cs, "state.terminated.reason").filter(|r| !r.is_empty()) {
            reason = r;
        } else if path(cs, "state.terminated").is_some() {
            reason = match path_i64(cs, "state.terminated.signal").filter(|s| *s != 0) {
                Some(sig) => format!("Signal:{sig}"),
                None => format!(
                    "ExitCode:{}",
                    path_i64(cs, "state.terminated.exitCode").unwrap_or(0)
                ),
            };
        } else if cs.get("ready") == Some(&json!(true)) && path(cs, "state.running").is_some() {
            ready += 1;
        }
    }
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        reason = if path_str(obj, "status.reason").as_deref() == Some("NodeLost") {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    (reason, restarts, ready, total)
}

impl Strategy for Pods {
    fn info(&self) -> &'static ResourceInfo {
        &POD
    }
    fn tracks_generation(&self) -> bool {
        false
    }
    fn spec_fields(&self) -> Option<&'static [&'static str]> {
        Some(&[
            "volumes",
            "initContainers",
            "containers",
            "ephemeralContainers",
            "restartPolicy",
            "terminationGracePeriodSeconds",
            "activeDeadlineSeconds",
            "dnsPolicy",
            "nodeSelector",
            "serviceAccountName",
            "serviceAccount",
            "automountServiceAccountToken",
            "nodeName",
            "hostNetwork",
            "hostPID",
            "hostIPC",
            "shareProcessNamespace",
            "securityContext",
            "imagePullSecrets",
            "hostname",
            "subdomain",
            "affinity",
            "schedulerName",
            "tolerations",
            "hostAliases",
            "priorityClassName",
            "priority",
            "dnsConfig",
            "readinessGates",
            "runtimeClassName",
            "enableServiceLinks",
            "preemptionPolicy",
            "overhead",
            "topologySpreadConstraints",
            "setHostnameAsFQDN",
            "os",
            "hostUsers",
            "schedulingGates",
            "resourceClaims",
            "resources",
        ])
    }
    fn prepare_for_create(&self, obj: &mut Value) {
        default_pod_spec(object::path_mut(obj, "spec"));
        let spec = object::path_mut(obj, "spec");
        if path_str(spec, "serviceAccountName").is_none() {
            object::set_path(spec, "serviceAccountName", json!("default"));
        }
        object::default_path(spec, "enableServiceLinks", json!(true));
        object::default_path(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
        object::default_path(spec, "priority", json!(0));
        let burstable = obj
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| {
                c.pointer("/resources/requests")
                    .is_some_and(|r| r.as_object().is_some_and(|m| !m.is_empty()))
                    || c.pointer("/resources/limits")
                        .is_some_and(|r| r.as_object().is_some_and(|m| !m.is_empty()))
            });
        object::set_path(
            obj,
            "status",
            json!({"phase": "Pending", "qosClass": if burstable { "Burstable" } else { "BestEffort" }}),
        );
    }
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut c = Vec::new();
        validate_pod_spec(obj.get("spec"), "spec", &mut c);
        c
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut c = self.validate(new);
        // Only images, activeDeadlineSeconds and tolerations may change; keep it to the common case.
        let strip = |v: &Value| {
            let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
            if let Some(cs) = s.get_mut("containers").and_then(Value::as_array_mut) {
                for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                    c.remove("image");
                }
            }
            if let Some(m) = s.as_object_mut() {
                m.remove("activeDeadlineSeconds");
                m.remove("tolerations");
            }
            s
        };
        if strip(new) != strip(old) {
            c.push(Cause::forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"));
        }
        c
    }
    fn field(&self, obj: &Value, field: &str) -> Option<Option<String>> {
        match field {
            "spec.nodeName"
            | "spec.restartPolicy"
            | "spec.schedulerName"
            | "spec.serviceAccountName"
            | "status.phase"
            | "status.podIP"
            | "status.nominatedNodeName" => Some(path_str(obj, field)),
            "spec.hostNetwork" => {
                Some(Some(path_str(obj, field).unwrap_or_else(|| "false".into())))
            }
            "status.podIPs" => Some(path_str(obj, "status.podIP")),
            _ => None,
        }
    }
    fn columns(&self) -> Vec<Column> {
        vec![
            Column::string("Ready", "The aggregate readiness state of this pod for accepting traffic.", 0),
            Column::string("Status", "The aggregate status of the containers in this pod.", 0),
            Column::string("Restarts", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.", 0),
            Column::age(),
            Column::string("IP", "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.", 1),
            Column::string("Node", "Name of the Node to which this Pod was scheduled.", 1),
            Column::string("Nominated Node", "Name of the node nominated by the scheduler.", 1),
            Column::string("Readiness Gates", "Readiness gates for this pod.", 1),
        ]
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let (status, restarts, ready, total) = pod_status(obj);
        let gates = obj
            .pointer("/spec/readinessGates")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let none = |p: &str| {
            json!(path_str(obj, p)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "<none>".into()))
        };
        vec![
            json!(format!("{ready}/{total}")),
            json!(status),
            json!(restarts.to_string()),
            json!(object::age(obj, "metadata.creationTimestamp")),
            none("status.podIP"),
            none("spec.nodeName"),
            none("status.nominatedNodeName"),
            if gates == 0 {
                json!("<none>")
            } else {
                json!(format!("0/{gates}"))
            },
        ]
    }
    fn delete_plan(&self, obj: &Value, grace: Option<i64>) -> DeletePlan {
        let phase = path_str(obj, "status.phase").unwrap_or_default();
        let bound = path_str(obj, "spec.nodeName").is_some_and(|n| !n.is_empty());
        if !bound || phase == "Succeeded" || phase == "Failed" {
            return DeletePlan::Now;
        }
        let g = grace
            .or_else(|| path_i64(obj, "spec.terminationGracePeriodSeconds"))
            .unwrap_or(30);
        if g <= 0 {
            DeletePlan::Graceful(0)
        } else {
            DeletePlan::Graceful(g)
        }
    }
    fn delete_returns_object(&self) -> bool {
        true
    }
}

/// `v1 Service`: ClusterIP allocation (random, from 10.96.0.0/12) and port defaults.
pub struct Services;

impl Strategy for Services {
    fn info(&self) -> &'static ResourceInfo {
        &SERVICE
    }
    fn name_rule(&self) -> NameRule {
        NameRule::Dns1035
    }
    fn tracks_generation(&self) -> bool {
        false
    }
    fn prepare_for_create(&self, obj: &mut Value) {
        let spec = object::path_mut(obj, "spec");
        object::default_path(spec, "type", json!("ClusterIP"));
        object::default_path(spec, "sessionAffinity", json!("None"));
        let ty = path_str(spec, "type").unwrap_or_default();
        if ty != "ExternalName" {
            if path_str(spec, "clusterIP").is_none_or(|s| s.is_empty()) {
                let n = 2 + object::random_below((1 << 20) - 3);
                let ip = format!("10.{}.{}.{}", 96 + (n >> 16), (n >> 8) & 0xff, n & 0xff);
                object::set_path(spec, "clusterIP", json!(ip));
            }
            let ip = path_str(spec, "clusterIP").unwrap_or_default();
            object::default_path(spec, "clusterIPs", json!([ip]));
            object::default_path(spec, "ipFamilies", json!(["IPv4"]));
            object::default_path(spec, "ipFamilyPolicy", json!("SingleStack"));
            object::default_path(spec, "internalTrafficPolicy", json!("Cluster"));
        }
        if let Some(Value::Array(ports)) = spec.get_mut("ports") {
            for p in ports.iter_mut().filter(|p| p.is_object()) {
                object::default_path(p, "protocol", json!("TCP"));
                if let Some(port) = p.get("port").cloned() {
                    object::default_path(p, "targetPort", port);
                }
            }
        }
        object::set_path(obj, "status", json!({"loadBalancer": {}}));
    }
    fn prepare_for_update(&self, new: &mut Value, old: &Value) {
        for f in ["clusterIP", "clusterIPs"] {
            if path(new, &format!("spec.{f}")).is_none() {
                if let Some(v) = path(old, &format!("spec.{f}")).cloned() {
                    object::set_path(new, &format!("spec.{f}"), v);
                }
            }
        }
    }
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut c = Vec::new();
        let ty = path_str(obj, "spec.type").unwrap_or_default();
        if !matches!(
            ty.as_str(),
            "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
        ) {
            c.push(Cause::not_supported(
                "spec.type",
                &ty,
                &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
            ));
        }
        let ports = obj
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if ports.is_empty()
            && ty != "ExternalName"
            && path_str(obj, "spec.clusterIP").as_deref() != Some("None")
        {
            c.push(Cause::required("spec.ports", ""));
        }
        for (i, p) in ports.iter().enumerate() {
            match path_i64(p, "port") {
                Some(n) if (1..=65535).contains(&n) => {}
                Some(n) => c.push(Cause::invalid(
                    format!("spec.ports[{i}].port"),
                    &n.to_string(),
                    "must be between 1 and 65535, inclusive",
                )),
                None => c.push(Cause::required(format!("spec.ports[{i}].port"), "")),
            }
            if ports.len() > 1 && path_str(p, "name").is_none() {
                c.push(Cause::required(format!("spec.ports[{i}].name"), ""));
            }
        }
        c
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut c = self.validate(new);
        let (n, o) = (
            path_str(new, "spec.clusterIP"),
            path_str(old, "spec.clusterIP"),
        );
        if o.is_some() && n != o {
            c.push(Cause::invalid(
                "spec.clusterIP",
                &n.unwrap_or_default(),
                "field is immutable",
            ));
        }
        c
    }
    fn columns(&self) -> Vec<Column> {
        vec![
            Column::string("Type", "The type of the service.", 0),
            Column::string("Cluster-IP", "The IP address of the service.", 0),
            Column::string("External-IP", "The external IP address of the service.", 0),
            Column::string("Port(s)", "The ports on which the service is exposed.", 0),
            Column::age(),
            Column::string("Selector", "The selector of the service.", 1),
        ]
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let ty = path_str(obj, "spec.type").unwrap_or_default();
        let ports: Vec<String> = obj
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| {
                let port = path_str(p, "port").unwrap_or_default();
                let proto = path_str(p, "protocol").unwrap_or_else(|| "TCP".into());
                match path_str(p, "nodePort") {
                    Some(np) => format!("{port}:{np}/{proto}"),
                    None => format!("{port}/{proto}"),
                }
            })
            .collect();
        let mut external: Vec<String> = obj
            .pointer("/spec/externalIPs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let external = match ty.as_str() {
            "ExternalName" => json!(path_str(obj, "spec.externalName").unwrap_or_default()),
            "LoadBalancer" => {
                external.extend(
                    obj.pointer("/status/loadBalancer/ingress")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|i| path_str(i, "ip").or_else(|| path_str(i, "hostname"))),
                );
                if external.is_empty() {
                    json!("<pending>")
                } else {
                    json!(external.join(","))
                }
            }
            _ => or_none(external),
        };
        let sel: Vec<String> = object::string_map(obj.pointer("/spec/selector"))
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        vec![
            json!(ty),
            json!(path_str(obj, "spec.clusterIP")
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "<none>".into())),
            external,
            or_none(ports),
            json!(object::age(obj, "metadata.creationTimestamp")),
            or_none(sel),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_defaults_and_status() {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "nginx"}, {"name": "b", "image": "busybox:1.36"}]}});
        Pods.prepare_for_create(&mut p);
        assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(
            p["spec"]["containers"][1]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(p["status"]["phase"], "Pending");
        assert_eq!(Pods.cells(&p)[0], json!("0/2"));
        assert_eq!(Pods.cells(&p)[1], json!("Pending"));
        assert!(Pods.validate(&p).is_empty());
        assert_eq!(Pods.delete_plan(&p, None), DeletePlan::Now);
        p["spec"]["nodeName"] = json!("n1");
        assert_eq!(Pods.delete_plan(&p, None), DeletePlan::Graceful(30));
        assert_eq!(Pods.delete_plan(&p, Some(0)), DeletePlan::Graceful(0));
    }

    #[test]
    fn service_defaults() {
        let mut s = json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}], "selector": {"app": "web"}}});
        Services.prepare_for_create(&mut s);
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert!(s["spec"]["clusterIP"].as_str().unwrap().starts_with("10."));
        let cells = Services.cells(&s);
        assert_eq!(cells[3], json!("80/TCP"));
        assert_eq!(cells[5], json!("app=web"));
        let bad = json!({"spec": {"type": "Bogus", "ports": [{"port": 70000}]}});
        assert_eq!(Services.validate(&bad).len(), 2);
    }

    #[test]
    fn selector_strings() {
        let sel = json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]});
        assert_eq!(selector_string(Some(&sel)), "app=web,tier in (a,b)");
    }
}
