//! `apps/v1` controllers: deployments, replicasets, statefulsets and
//! daemonsets. They share one strategy that differs by [`AppKind`] only in
//! defaults and printer columns.

use std::sync::Arc;

use serde_json::{json, Value};

use super::workloads::{
    containers_and_images, default_pod_spec, selector_string, validate_pod_spec,
};
use super::{status_sub, ResourceInfo, Strategy, SubresourceInfo, SCALE_SUB};
use crate::object::{self, path, path_i64};
use crate::selectors::LabelSelector;
use crate::status::Cause;
use crate::table::{or_none, Column};

/// Which apps kind a [`Controller`] serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppKind {
    /// `Deployment`.
    Deployment,
    /// `ReplicaSet`.
    ReplicaSet,
    /// `StatefulSet`.
    StatefulSet,
    /// `DaemonSet`.
    DaemonSet,
}

const fn info(
    resource: &'static str,
    singular: &'static str,
    kind: &'static str,
    short_names: &'static [&'static str],
    subresources: &'static [SubresourceInfo],
) -> ResourceInfo {
    ResourceInfo {
        group: "apps",
        version: "v1",
        resource,
        singular,
        kind,
        namespaced: true,
        short_names,
        categories: &["all"],
        subresources,
    }
}

static DEPLOYMENT: ResourceInfo = info(
    "deployments",
    "deployment",
    "Deployment",
    &["deploy"],
    &[status_sub("apps", "Deployment"), SCALE_SUB],
);
static REPLICASET: ResourceInfo = info(
    "replicasets",
    "replicaset",
    "ReplicaSet",
    &["rs"],
    &[status_sub("apps", "ReplicaSet"), SCALE_SUB],
);
static STATEFULSET: ResourceInfo = info(
    "statefulsets",
    "statefulset",
    "StatefulSet",
    &["sts"],
    &[status_sub("apps", "StatefulSet"), SCALE_SUB],
);
static DAEMONSET: ResourceInfo = info(
    "daemonsets",
    "daemonset",
    "DaemonSet",
    &["ds"],
    &[status_sub("apps", "DaemonSet")],
);

/// The four apps kinds.
pub fn kinds() -> Vec<Arc<dyn Strategy>> {
    vec![
        Arc::new(Controller(AppKind::Deployment)),
        Arc::new(Controller(AppKind::ReplicaSet)),
        Arc::new(Controller(AppKind::StatefulSet)),
        Arc::new(Controller(AppKind::DaemonSet)),
    ]
}

/// The shared strategy of the apps controllers.
pub struct Controller(pub AppKind);

/// Validates `spec.selector` against `spec.template.metadata.labels` and
/// the template's pod spec (shared with jobs).
pub fn validate_template(obj: &Value, causes: &mut Vec<Cause>, selector_required: bool) {
    let sel = obj.pointer("/spec/selector");
    match sel {
        None | Some(Value::Null) => {
            if selector_required {
                causes.push(Cause::required("spec.selector", ""));
            }
        }
        Some(s) => {
            let empty = object::string_map(s.get("matchLabels")).is_empty()
                && s.get("matchExpressions")
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty);
            if empty {
                causes.push(Cause::invalid(
                    "spec.selector",
                    &s.to_string(),
                    "empty selector is invalid for deployment",
                ));
            } else {
                match LabelSelector::parse(&selector_string(Some(s))) {
                    Ok(parsed) => {
                        let labels =
                            object::string_map(obj.pointer("/spec/template/metadata/labels"));
                        if !parsed.matches(&labels) {
                            causes.push(Cause::invalid(
                                "spec.template.metadata.labels",
                                &serde_json::to_string(&labels).unwrap_or_default(),
                                "`selector` does not match template `labels`",
                            ));
                        }
                    }
                    Err(e) => causes.push(Cause::invalid("spec.selector", &s.to_string(), &e)),
                }
            }
        }
    }
    validate_pod_spec(
        obj.pointer("/spec/template/spec"),
        "spec.template.spec",
        causes,
    );
}

impl Controller {
    fn apply_defaults(&self, obj: &mut Value) {
        if let Some(t) = obj.pointer_mut("/spec/template/spec") {
            default_pod_spec(t);
        }
        let spec = object::path_mut(obj, "spec");
        match self.0 {
            AppKind::Deployment => {
                object::default_path(spec, "replicas", json!(1));
                object::default_path(spec, "strategy.type", json!("RollingUpdate"));
                if object::path_str(spec, "strategy.type").as_deref() == Some("RollingUpdate") {
                    object::default_path(
                        spec,
                        "strategy.rollingUpdate.maxUnavailable",
                        json!("25%"),
                    );
                    object::default_path(spec, "strategy.rollingUpdate.maxSurge", json!("25%"));
                }
                object::default_path(spec, "revisionHistoryLimit", json!(10));
                object::default_path(spec, "progressDeadlineSeconds", json!(600));
            }
            AppKind::ReplicaSet => object::default_path(spec, "replicas", json!(1)),
            AppKind::StatefulSet => {
                object::default_path(spec, "replicas", json!(1));
                object::default_path(spec, "podManagementPolicy", json!("OrderedReady"));
                object::default_path(
                    spec,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
                );
                object::default_path(spec, "revisionHistoryLimit", json!(10));
                object::default_path(
                    spec,
                    "persistentVolumeClaimRetentionPolicy",
                    json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
                );
            }
            AppKind::DaemonSet => {
                object::default_path(
                    spec,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
                );
                object::default_path(spec, "revisionHistoryLimit", json!(10));
            }
        }
    }
}

impl Strategy for Controller {
    fn info(&self) -> &'static ResourceInfo {
        match self.0 {
            AppKind::Deployment => &DEPLOYMENT,
            AppKind::ReplicaSet => &REPLICASET,
            AppKind::StatefulSet => &STATEFULSET,
            AppKind::DaemonSet => &DAEMONSET,
        }
    }
    fn annotations_bump_generation(&self) -> bool {
        self.0 == AppKind::Deployment
    }
    fn spec_fields(&self) -> Option<&'static [&'static str]> {
        Some(match self.0 {
            AppKind::Deployment => &[
                "replicas",
                "selector",
                "template",
                "strategy",
                "minReadySeconds",
                "revisionHistoryLimit",
                "paused",
                "progressDeadlineSeconds",
            ],
            AppKind::ReplicaSet => &["replicas", "minReadySeconds", "selector", "template"],
            AppKind::StatefulSet => &[
                "replicas",
                "selector",
                "template",
                "volumeClaimTemplates",
                "serviceName",
                "podManagementPolicy",
                "updateStrategy",
                "revisionHistoryLimit",
                "minReadySeconds",
                "persistentVolumeClaimRetentionPolicy",
                "ordinals",
            ],
            AppKind::DaemonSet => &[
                "selector",
                "template",
                "updateStrategy",
                "minReadySeconds",
                "revisionHistoryLimit",
            ],
        })
    }
    fn prepare_for_create(&self, obj: &mut Value) {
        self.apply_defaults(obj);
        object::set_path(obj, "status", json!({}));
    }
    fn prepare_for_update(&self, new: &mut Value, _old: &Value) {
        self.apply_defaults(new);
    }
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut c = Vec::new();
        validate_template(obj, &mut c, true);
        crate::validation::non_negative_int(obj, "spec.replicas", &mut c);
        c
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut c = self.validate(new);
        if new.pointer("/spec/selector") != old.pointer("/spec/selector") {
            c.push(Cause::invalid(
                "spec.selector",
                &selector_string(new.pointer("/spec/selector")),
                "field is immutable",
            ));
        }
        c
    }
    fn field(&self, obj: &Value, field: &str) -> Option<Option<String>> {
        (self.0 == AppKind::ReplicaSet && field == "status.replicas")
            .then(|| Some(path_i64(obj, "status.replicas").unwrap_or(0).to_string()))
    }
    fn columns(&self) -> Vec<Column> {
        let tail = [
            Column::string("Containers", "Names of each container in the template.", 1),
            Column::string("Images", "Images referenced by each container in the template.", 1),
            Column::string("Selector", "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.", 1),
        ];
        let mut cols = match self.0 {
            AppKind::Deployment => vec![
                Column::string("Ready", "Number of the pod with ready state", 0),
                Column::integer("Up-to-date", "Total number of non-terminated pods targeted by this deployment that have the desired template spec.", 0),
                Column::integer("Available", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.", 0),
                Column::age(),
            ],
            AppKind::ReplicaSet => vec![
                Column::integer("Desired", "Number of desired pods.", 0),
                Column::integer("Current", "Number of actual replicas.", 0),
                Column::integer("Ready", "The number of ready replicas for this replica set.", 0),
                Column::age(),
            ],
            AppKind::StatefulSet => vec![Column::string("Ready", "Number of the pod with ready state", 0), Column::age()],
            AppKind::DaemonSet => vec![
                Column::integer("Desired", "The total number of nodes that should be running the daemon pod.", 0),
                Column::integer("Current", "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.", 0),
                Column::integer("Ready", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.", 0),
                Column::integer("Up-to-date", "The total number of nodes that are running updated daemon pod", 0),
                Column::integer("Available", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)", 0),
                Column::string("Node Selector", "NodeSelector is a selector which must be true for the pod to fit on a node. Selector which must match a node's labels for the pod to be scheduled on that node.", 0),
                Column::age(),
            ],
        };
        let n = if self.0 == AppKind::StatefulSet { 2 } else { 3 };
        cols.extend(tail.into_iter().take(n));
        cols
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let st = |f: &str| path_i64(obj, &format!("status.{f}")).unwrap_or(0);
        let desired = path_i64(obj, "spec.replicas").unwrap_or(0);
        let age = json!(object::age(obj, "metadata.creationTimestamp"));
        let (containers, images) = containers_and_images(obj.pointer("/spec/template/spec"));
        let selector = json!(selector_string(obj.pointer("/spec/selector")));
        match self.0 {
            AppKind::Deployment => vec![
                json!(format!("{}/{desired}", st("readyReplicas"))),
                json!(st("updatedReplicas")),
                json!(st("availableReplicas")),
                age,
                containers,
                images,
                selector,
            ],
            AppKind::ReplicaSet => vec![
                json!(desired),
                json!(st("replicas")),
                json!(st("readyReplicas")),
                age,
                containers,
                images,
                selector,
            ],
            AppKind::StatefulSet => vec![
                json!(format!("{}/{desired}", st("readyReplicas"))),
                age,
                containers,
                images,
            ],
            AppKind::DaemonSet => {
                let ns: Vec<String> =
                    object::string_map(path(obj, "spec.template.spec.nodeSelector"))
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                vec![
                    json!(st("desiredNumberScheduled")),
                    json!(st("currentNumberScheduled")),
                    json!(st("numberReady")),
                    json!(st("updatedNumberScheduled")),
                    json!(st("numberAvailable")),
                    or_none(ns),
                    age,
                    containers,
                    images,
                    selector,
                ]
            }
        }
    }
}

/// Builds the `autoscaling/v1 Scale` view of a scalable object.
pub fn to_scale(obj: &Value) -> Value {
    let meta = obj.get("metadata").cloned().unwrap_or(json!({}));
    let mut m = json!({});
    for k in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = meta.get(k) {
            m[k] = v.clone();
        }
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": m,
        "spec": {"replicas": path_i64(obj, "spec.replicas").unwrap_or(0)},
        "status": {
            "replicas": path_i64(obj, "status.replicas").unwrap_or(0),
            "selector": selector_string(obj.pointer("/spec/selector")),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> Value {
        json!({"metadata": {"name": "web", "uid": "u", "resourceVersion": "5"},
               "spec": {"selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}}})
    }

    #[test]
    fn deployment_defaults_validation_and_scale() {
        let d = Controller(AppKind::Deployment);
        let mut obj = deployment();
        d.prepare_for_create(&mut obj);
        assert_eq!(obj["spec"]["replicas"], 1);
        assert_eq!(obj["spec"]["strategy"]["type"], "RollingUpdate");
        assert!(d.validate(&obj).is_empty());
        let cells = d.cells(&obj);
        assert_eq!(cells[0], json!("0/1"));
        assert_eq!(cells[6], json!("app=web"));
        let scale = to_scale(&obj);
        assert_eq!(scale["spec"]["replicas"], 1);
        assert_eq!(scale["status"]["selector"], "app=web");
        obj["spec"]["template"]["metadata"]["labels"]["app"] = json!("other");
        assert_eq!(d.validate(&obj).len(), 1);
    }
}
