//! Core (`v1`) kinds without pod templates: namespaces, configmaps,
//! secrets, serviceaccounts, endpoints, events and nodes.

use std::sync::Arc;

use base64::Engine;
use serde_json::{json, Value};

use super::{status_sub, string_map_field, ResourceInfo, Strategy, SubresourceInfo};
use crate::object::{self, path, path_str};
use crate::status::Cause;
use crate::table::{or_none, Column};
use crate::validation::NameRule;

/// The namespace resource (also used for the namespace-exists check).
pub static NAMESPACE_INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    resource: "namespaces",
    singular: "namespace",
    kind: "Namespace",
    namespaced: false,
    short_names: &["ns"],
    categories: &[],
    subresources: &[
        status_sub("", "Namespace"),
        SubresourceInfo {
            name: "finalize",
            group: "",
            version: "v1",
            kind: "Namespace",
            verbs: &["update"],
        },
    ],
};

const fn plain(
    resource: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    categories: &'static [&'static str],
) -> ResourceInfo {
    ResourceInfo {
        group: "",
        version: "v1",
        resource,
        singular,
        kind,
        namespaced,
        short_names: short,
        categories,
        subresources: &[],
    }
}

static CONFIGMAP: ResourceInfo = plain("configmaps", "configmap", "ConfigMap", true, &["cm"], &[]);
static SECRET: ResourceInfo = plain("secrets", "secret", "Secret", true, &[], &[]);
static SERVICEACCOUNT: ResourceInfo = plain(
    "serviceaccounts",
    "serviceaccount",
    "ServiceAccount",
    true,
    &["sa"],
    &[],
);
static ENDPOINTS: ResourceInfo = plain("endpoints", "endpoints", "Endpoints", true, &["ep"], &[]);
static EVENT: ResourceInfo = plain("events", "event", "Event", true, &["ev"], &[]);
static NODE: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    resource: "nodes",
    singular: "node",
    kind: "Node",
    namespaced: false,
    short_names: &["no"],
    categories: &[],
    subresources: &[status_sub("", "Node")],
};

/// The core kinds of this module.
pub fn kinds() -> Vec<Arc<dyn Strategy>> {
    vec![
        Arc::new(Namespaces),
        Arc::new(ConfigMaps),
        Arc::new(Secrets),
        Arc::new(ServiceAccounts),
        Arc::new(EndpointsStrategy),
        Arc::new(Events),
        Arc::new(Nodes),
    ]
}

fn data_count(obj: &Value, fields: &[&str]) -> Value {
    let n: usize = fields
        .iter()
        .filter_map(|f| obj.get(*f).and_then(Value::as_object))
        .map(|m| m.len())
        .sum();
    json!(n)
}

fn config_keys(obj: &Value, field: &str, causes: &mut Vec<Cause>) {
    if let Some(m) = obj.get(field).and_then(Value::as_object) {
        for k in m.keys() {
            let ok = !k.is_empty()
                && k.len() <= 253
                && k.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
            if !ok {
                causes.push(Cause::invalid(format!("{field}[{k}]"), k, "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"));
            }
        }
    }
}

/// `v1 Namespace`: label `kubernetes.io/metadata.name`, finalizer `kubernetes`, phase.
pub struct Namespaces;

impl Strategy for Namespaces {
    fn info(&self) -> &'static ResourceInfo {
        &NAMESPACE_INFO
    }
    fn name_rule(&self) -> NameRule {
        NameRule::Label
    }
    fn tracks_generation(&self) -> bool {
        false
    }
    fn prepare_for_create(&self, obj: &mut Value) {
        let name = object::name(obj).to_string();
        object::set_path(obj, "status", json!({"phase": "Active"}));
        object::default_path(obj, "spec.finalizers", json!(["kubernetes"]));
        fix_dotted_label(obj, &name);
    }
    fn prepare_for_update(&self, new: &mut Value, old: &Value) {
        // spec.finalizers is changed only through /finalize.
        match old.pointer("/spec/finalizers") {
            Some(f) => object::set_path(new, "spec.finalizers", f.clone()),
            None => object::remove_path(new, "spec.finalizers"),
        }
        let name = object::name(old).to_string();
        fix_dotted_label(new, &name);
    }
    fn field(&self, obj: &Value, field: &str) -> Option<Option<String>> {
        (field == "status.phase").then(|| path_str(obj, "status.phase"))
    }
    fn columns(&self) -> Vec<Column> {
        vec![
            Column::string("Status", "The status of the namespace", 0),
            Column::age(),
        ]
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![
            json!(path_str(obj, "status.phase").unwrap_or_default()),
            json!(object::age(obj, "metadata.creationTimestamp")),
        ]
    }
}

/// Sets the `kubernetes.io/metadata.name` label (its key has dots, so
/// `set_path` cannot be used).
fn fix_dotted_label(obj: &mut Value, name: &str) {
    let labels = object::path_mut(obj, "metadata.labels");
    if !labels.is_object() {
        *labels = json!({});
    }
    if let Some(m) = labels.as_object_mut() {
        m.insert("kubernetes.io/metadata.name".into(), json!(name));
    }
}

/// `v1 ConfigMap`.
pub struct ConfigMaps;

impl Strategy for ConfigMaps {
    fn info(&self) -> &'static ResourceInfo {
        &CONFIGMAP
    }
    fn top_level_fields(&self) -> Option<&'static [&'static str]> {
        Some(&["data", "binaryData", "immutable"])
    }
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut c = Vec::new();
        string_map_field(obj, "data", &mut c);
        string_map_field(obj, "binaryData", &mut c);
        config_keys(obj, "data", &mut c);
        config_keys(obj, "binaryData", &mut c);
        c
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut c = self.validate(new);
        if old.get("immutable") == Some(&json!(true))
            && (new.get("data") != old.get("data")
                || new.get("binaryData") != old.get("binaryData"))
        {
            c.push(Cause::forbidden(
                "data",
                "field is immutable when `immutable` is set",
            ));
        }
        c
    }
    fn columns(&self) -> Vec<Column> {
        vec![
            Column::integer("Data", "Number of data entries", 0),
            Column::age(),
        ]
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![
            data_count(obj, &["data", "binaryData"]),
            json!(object::age(obj, "metadata.creationTimestamp")),
        ]
    }
}

/// `v1 Secret`: `stringData` folded into base64 `data`, type `Opaque` by default.
pub struct Secrets;

fn fold_string_data(obj: &mut Value) {
    let Some(sd) = obj.as_object_mut().and_then(|m| m.remove("stringData")) else {
        return;
    };
    if let Some(map) = sd.as_object() {
        for (k, v) in map {
            if let Some(s) = v.as_str() {
                let enc = base64::engine::general_purpose::STANDARD.encode(s);
                let data = object::path_mut(obj, "data");
                if !data.is_object() {
                    *data = json!({});
                }
                data.as_object_mut()
                    .expect("object")
                    .insert(k.clone(), json!(enc));
            }
        }
    }
}

impl Strategy for Secrets {
    fn info(&self) -> &'static ResourceInfo {
        &SECRET
    }
    fn top_level_fields(&self) -> Option<&'static [&'static str]> {
        Some(&["data", "stringData", "type", "immutable"])
    }
    fn prepare_for_create(&self, obj: &mut Value) {
        fold_string_data(obj);
        if object::path_str(obj, "type").is_none_or(|t| t.is_empty()) {
            object::set_path(obj, "type", json!("Opaque"));
        }
    }
    fn prepare_for_update(&self, new: &mut Value, old: &Value) {
        fold_string_data(new);
        if new.get("type").is_none() {
            if let Some(t) = old.get("type") {
                object::set_path(new, "type", t.clone());
            }
        }
    }
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut c = Vec::new();
        string_map_field(obj, "data", &mut c);
        config_keys(obj, "data", &mut c);
        if let Some(m) = obj.get("data").and_then(Value::as_object) {
            for (k, v) in m {
                if let Some(s) = v.as_str() {
                    if base64::engine::general_purpose::STANDARD.decode(s).is_err() {
                        c.push(Cause::invalid(
                            format!("data[{k}]"),
                            "<secret contents redacted>",
                            "must be base64 encoded",
                        ));
                    }
                }
            }
        }
        c
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut c = self.validate(new);
        if new.get("type") != old.get("type") {
            c.push(Cause::invalid(
                "type",
                &path_str(new, "type").unwrap_or_default(),
                "field is immutable",
            ));
        }
        c
    }
    fn field(&self, obj: &Value, field: &str) -> Option<Option<String>> {
        (field == "type").then(|| path_str(obj, "type"))
    }
    fn columns(&self) -> Vec<Column> {
        vec![
            Column::string("Type", "The type of the secret", 0),
            Column::integer("Data", "Number of data entries", 0),
            Column::age(),
        ]
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![
            json!(path_str(obj, "type").unwrap_or_default()),
            data_count(obj, &["data"]),
            json!(object::age(obj, "metadata.creationTimestamp")),
        ]
    }
}

/// `v1 ServiceAccount`.
pub struct ServiceAccounts;

impl Strategy for ServiceAccounts {
    fn info(&self) -> &'static ResourceInfo {
        &SERVICEACCOUNT
    }
    fn top_level_fields(&self) -> Option<&'static [&'static str]> {
        Some(&[
            "secrets",
            "imagePullSecrets",
            "automountServiceAccountToken",
        ])
    }
    fn columns(&self) -> Vec<Column> {
        vec![Column::integer("Secrets", "Secrets is the list of secrets allowed to be used by pods running using this ServiceAccount.", 0), Column::age()]
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let n = obj
            .get("secrets")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        vec![
            json!(n),
            json!(object::age(obj, "metadata.creationTimestamp")),
        ]
    }
}

/// `v1 Endpoints`.
pub struct EndpointsStrategy;

impl Strategy for EndpointsStrategy {
    fn info(&self) -> &'static ResourceInfo {
        &ENDPOINTS
    }
    fn top_level_fields(&self) -> Option<&'static [&'static str]> {
        Some(&["subsets"])
    }
    fn columns(&self) -> Vec<Column> {
        vec![
            Column::string(
                "Endpoints",
                "Endpoints is the list of endpoints in the service.",
                0,
            ),
            Column::age(),
        ]
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let mut eps = Vec::new();
        for subset in obj
            .get("subsets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let ports: Vec<String> = subset
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| path_str(p, "port"))
                .collect();
            for a in subset
                .get("addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let ip = path_str(a, "ip").unwrap_or_default();
                if ports.is_empty() {
                    eps.push(ip.clone());
                }
                eps.extend(ports.iter().map(|p| format!("{ip}:{p}")));
            }
        }
        let shown = if eps.len() > 3 {
            format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
        } else {
            eps.join(",")
        };
        vec![
            if shown.is_empty() {
                json!("<none>")
            } else {
                json!(shown)
            },
            json!(object::age(obj, "metadata.creationTimestamp")),
        ]
    }
}

/// `v1 Event`.
pub struct Events;

impl Strategy for Events {
    fn info(&self) -> &'static ResourceInfo {
        &EVENT
    }
    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut c = Vec::new();
        let ns = object::namespace(obj);
        if let Some(inv) = path_str(obj, "involvedObject.namespace") {
            if !inv.is_empty() && inv != ns {
                c.push(Cause::invalid(
                    "involvedObject.namespace",
                    &inv,
                    "does not match event.namespace",
                ));
            }
        }
        c
    }
    fn field(&self, obj: &Value, field: &str) -> Option<Option<String>> {
        match field {
            "involvedObject.kind"
            | "involvedObject.namespace"
            | "involvedObject.name"
            | "involvedObject.uid"
            | "involvedObject.apiVersion"
            | "involvedObject.resourceVersion"
            | "involvedObject.fieldPath"
            | "reason"
            | "reportingComponent"
            | "type" => Some(path_str(obj, field)),
            "source" => Some(path_str(obj, "source.component")),
            _ => None,
        }
    }
    fn name_column_first(&self) -> bool {
        false
    }
    fn columns(&self) -> Vec<Column> {
        vec![
            Column::string("Last Seen", "Time when this Event was last seen", 0),
            Column::string(
                "Type",
                "Type of this event (Normal, Warning), new types could be added in the future.",
                0,
            ),
            Column::string(
                "Reason",
                "Reason why the action was taken. It is human-readable.",
                0,
            ),
            Column::string("Object", "The object this Event is about.", 0),
            Column::string("Subobject", "The subobject this Event is about.", 1),
            Column::string("Source", "The component reporting this event.", 1),
            Column::string(
                "Message",
                "A human-readable description of the status of this operation.",
                0,
            ),
            Column::string(
                "First Seen",
                "The time at which the event was first recorded.",
                1,
            ),
            Column::integer("Count", "The number of times this event has occurred.", 1),
            Column {
                name: "Name",
                kind: "string",
                format: "name",
                description: "Name must be unique within a namespace.",
                priority: 1,
            },
        ]
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let last = ["lastTimestamp", "eventTime", "metadata.creationTimestamp"]
            .iter()
            .find(|p| {
                path(obj, p)
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
            })
            .map(|p| object::age(obj, p))
            .unwrap_or_else(|| "<unknown>".into());
        let first = if path(obj, "firstTimestamp")
            .and_then(Value::as_str)
            .is_some()
        {
            object::age(obj, "firstTimestamp")
        } else {
            last.clone()
        };
        let kind = path_str(obj, "involvedObject.kind")
            .unwrap_or_default()
            .to_lowercase();
        let target = format!(
            "{kind}/{}",
            path_str(obj, "involvedObject.name").unwrap_or_default()
        );
        let source = path_str(obj, "source.component")
            .or_else(|| path_str(obj, "reportingComponent"))
            .unwrap_or_default();
        vec![
            json!(last),
            json!(path_str(obj, "type").unwrap_or_default()),
            json!(path_str(obj, "reason").unwrap_or_default()),
            json!(target),
            json!(path_str(obj, "involvedObject.fieldPath").unwrap_or_default()),
            json!(source),
            json!(path_str(obj, "message").unwrap_or_default().trim()),
            json!(first),
            json!(object::path_i64(obj, "count").unwrap_or(1)),
            json!(object::name(obj)),
        ]
    }
}

/// `v1 Node` (status may be set on create, as kubelets register with it).
pub struct Nodes;

impl Strategy for Nodes {
    fn info(&self) -> &'static ResourceInfo {
        &NODE
    }
    fn tracks_generation(&self) -> bool {
        false
    }
    fn field(&self, obj: &Value, field: &str) -> Option<Option<String>> {
        (field == "spec.unschedulable")
            .then(|| Some(path_str(obj, "spec.unschedulable").unwrap_or_else(|| "false".into())))
    }
    fn columns(&self) -> Vec<Column> {
        vec![
            Column::string("Status", "The status of the node", 0),
            Column::string("Roles", "The roles of the node", 0),
            Column::age(),
            Column::string("Version", "Kubelet Version reported by the node.", 0),
            Column::string("Internal-IP", "List of internal IPs for the node.", 1),
            Column::string("External-IP", "List of external IPs for the node.", 1),
            Column::string("OS-Image", "OS image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).", 1),
            Column::string("Kernel-Version", "Kernel version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).", 1),
            Column::string("Container-Runtime", "Container runtime version reported by the node through runtime remote API (e.g. containerd://1.4.2).", 1),
        ]
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let conds = obj
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut status = match conds
            .iter()
            .find(|c| c.get("type") == Some(&json!("Ready")))
            .and_then(|c| path_str(c, "status"))
            .as_deref()
        {
            Some("True") => "Ready".to_string(),
            Some("False") => "NotReady".to_string(),
            _ => "Unknown".to_string(),
        };
        if obj.pointer("/spec/unschedulable") == Some(&json!(true)) {
            status.push_str(",SchedulingDisabled");
        }
        let roles: Vec<String> = object::labels(obj)
            .keys()
            .filter_map(|k| {
                k.strip_prefix("node-role.kubernetes.io/")
                    .map(str::to_string)
            })
            .filter(|r| !r.is_empty())
            .collect();
        let addr = |t: &str| {
            let ips: Vec<String> = obj
                .pointer("/status/addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|a| a.get("type") == Some(&json!(t)))
                .filter_map(|a| path_str(a, "address"))
                .collect();
            or_none(ips)
        };
        let info = |f: &str| {
            json!(path_str(obj, &format!("status.nodeInfo.{f}"))
                .unwrap_or_else(|| "<unknown>".into()))
        };
        vec![
            json!(status),
            or_none(roles),
            json!(object::age(obj, "metadata.creationTimestamp")),
            json!(path_str(obj, "status.nodeInfo.kubeletVersion").unwrap_or_default()),
            addr("InternalIP"),
            addr("ExternalIP"),
            info("osImage"),
            info("kernelVersion"),
            info("containerRuntimeVersion"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_defaults() {
        let mut ns = json!({"metadata": {"name": "dev"}});
        Namespaces.prepare_for_create(&mut ns);
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "dev"
        );
        assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
        assert_eq!(ns["status"]["phase"], "Active");
    }

    #[test]
    fn secret_string_data() {
        let mut s = json!({"metadata": {"name": "s"}, "stringData": {"a": "hi"}});
        Secrets.prepare_for_create(&mut s);
        assert_eq!(s["data"]["a"], "aGk=");
        assert_eq!(s["type"], "Opaque");
        assert!(s.get("stringData").is_none());
        let bad = json!({"data": {"a": "!!"}});
        assert_eq!(Secrets.validate(&bad).len(), 1);
    }

    #[test]
    fn configmap_rules() {
        let bad = json!({"data": {"bad key": "x", "n": 1}});
        assert_eq!(ConfigMaps.validate(&bad).len(), 2);
        let cm = json!({"metadata": {"name": "c", "creationTimestamp": object::now_rfc3339()}, "data": {"a": "1", "b": "2"}});
        assert_eq!(ConfigMaps.cells(&cm)[0], json!(2));
    }
}
