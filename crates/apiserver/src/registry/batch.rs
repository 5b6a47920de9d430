//! `batch/v1 Job` and `coordination.k8s.io/v1 Lease`.

use std::sync::Arc;

use serde_json::{json, Value};

use super::apps::validate_template;
use super::workloads::{containers_and_images, default_pod_spec, selector_string};
use super::{status_sub, ResourceInfo, Strategy};
use crate::object::{self, path_i64, path_str};
use crate::status::Cause;
use crate::table::Column;

static JOB: ResourceInfo = ResourceInfo {
    group: "batch",
    version: "v1",
    resource: "jobs",
    singular: "job",
    kind: "Job",
    namespaced: true,
    short_names: &[],
    categories: &["all"],
    subresources: &[status_sub("batch", "Job")],
};

static LEASE: ResourceInfo = ResourceInfo {
    group: "coordination.k8s.io",
    version: "v1",
    resource: "leases",
    singular: "lease",
    kind: "Lease",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
};

/// Jobs and leases.
pub fn kinds() -> Vec<Arc<dyn Strategy>> {
    vec![Arc::new(Jobs), Arc::new(Leases)]
}

/// `batch/v1 Job`: generated controller-uid selector, completions defaults.
pub struct Jobs;

impl Strategy for Jobs {
    fn info(&self) -> &'static ResourceInfo {
        &JOB
    }
    fn spec_fields(&self) -> Option<&'static [&'static str]> {
        Some(&[
            "parallelism",
            "completions",
            "activeDeadlineSeconds",
            "podFailurePolicy",
            "successPolicy",
            "backoffLimit",
            "backoffLimitPerIndex",
            "maxFailedIndexes",
            "selector",
            "manualSelector",
            "template",
            "ttlSecondsAfterFinished",
            "completionMode",
            "suspend",
            "podReplacementPolicy",
            "managedBy",
        ])
    }
    fn prepare_for_create(&self, obj: &mut Value) {
        let uid = object::uid(obj).to_string();
        let name = object::name(obj).to_string();
        let manual = obj.pointer("/spec/manualSelector") == Some(&json!(true));
        if !manual && obj.pointer("/spec/selector").is_none() {
            object::set_path(
                obj,
                "spec.selector",
                json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
            );
            let labels = object::path_mut(obj, "spec.template.metadata.labels");
            if !labels.is_object() {
                *labels = json!({});
            }
            if let Some(m) = labels.as_object_mut() {
                for (k, v) in [
                    ("batch.kubernetes.io/controller-uid", &uid),
                    ("batch.kubernetes.io/job-name", &name),
                    ("controller-uid", &uid),
                    ("job-name", &name),
                ] {
                    m.insert(k.into(), json!(v));
                }
            }
        }
        if let Some(t) = obj.pointer_mut("/spec/template/spec") {
            let has_policy = t.get("restartPolicy").is_some();
            default_pod_spec(t);
            if !has_policy {
                // Jobs have no restartPolicy default; validation asks for one.
                if let Some(m) = t.as_object_mut() {
                    m.remove("restartPolicy");
                }
            }
        }
        let spec = object::path_mut(obj, "spec");
        object::default_path(spec, "parallelism", json!(1));
        object::default_path(spec, "completions", json!(1));
        object::default_path(spec, "backoffLimit", json!(6));
        object::default_path(spec, "completionMode", json!("NonIndexed"));
        object::default_path(spec, "suspend", json!(false));
        object::default_path(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
        object::set_path(obj, "status", json!({}));
    }
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut c = Vec::new();
        validate_template(obj, &mut c, false);
        match path_str(obj, "spec.template.spec.restartPolicy").as_deref() {
            Some("Never") | Some("OnFailure") => {}
            Some(other) => c.push(Cause::not_supported(
                "spec.template.spec.restartPolicy",
                other,
                &["OnFailure", "Never"],
            )),
            None => c.push(Cause::required(
                "spec.template.spec.restartPolicy",
                "valid values: \"OnFailure\", \"Never\"",
            )),
        }
        for f in ["spec.parallelism", "spec.completions", "spec.backoffLimit"] {
            crate::validation::non_negative_int(obj, f, &mut c);
        }
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
        if new.pointer("/spec/template") != old.pointer("/spec/template") {
            c.push(Cause::invalid("spec.template", "", "field is immutable"));
        }
        c
    }
    fn field(&self, obj: &Value, field: &str) -> Option<Option<String>> {
        (field == "status.successful")
            .then(|| Some(path_i64(obj, "status.succeeded").unwrap_or(0).to_string()))
    }
    fn columns(&self) -> Vec<Column> {
        vec![
            Column::string("Status", "Status of the job.", 0),
            Column::string("Completions", "The completion status of the job.", 0),
            Column::string("Duration", "Time required to complete the job.", 0),
            Column::age(),
            Column::string("Containers", "Names of each container in the template.", 1),
            Column::string(
                "Images",
                "Images referenced by each container in the template.",
                1,
            ),
            Column::string(
                "Selector",
                "Query over pods that should match the pod count.",
                1,
            ),
        ]
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let conds = obj
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let has = |t: &str| {
            conds.iter().any(|c| {
                c.get("type") == Some(&json!(t)) && c.get("status") == Some(&json!("True"))
            })
        };
        let status = if has("Failed") {
            "Failed"
        } else if has("Complete") {
            "Complete"
        } else if has("Suspended") || obj.pointer("/spec/suspend") == Some(&json!(true)) {
            "Suspended"
        } else if has("FailureTarget") {
            "FailureTarget"
        } else if has("SuccessCriteriaMet") {
            "SuccessCriteriaMet"
        } else {
            "Running"
        };
        let completions = match path_i64(obj, "spec.completions") {
            Some(n) => format!("{}/{n}", path_i64(obj, "status.succeeded").unwrap_or(0)),
            None => format!(
                "{}/1 of {}",
                path_i64(obj, "status.succeeded").unwrap_or(0),
                path_i64(obj, "spec.parallelism").unwrap_or(1)
            ),
        };
        let start = path_str(obj, "status.startTime").and_then(|s| object::parse_time(&s));
        let end = path_str(obj, "status.completionTime")
            .and_then(|s| object::parse_time(&s))
            .unwrap_or_else(chrono::Utc::now);
        let duration = start
            .map(|s| object::human_duration((end - s).num_seconds()))
            .unwrap_or_default();
        let (containers, images) = containers_and_images(obj.pointer("/spec/template/spec"));
        vec![
            json!(status),
            json!(completions),
            json!(duration),
            json!(object::age(obj, "metadata.creationTimestamp")),
            containers,
            images,
            json!(selector_string(obj.pointer("/spec/selector"))),
        ]
    }
}

/// `coordination.k8s.io/v1 Lease`.
pub struct Leases;

impl Strategy for Leases {
    fn info(&self) -> &'static ResourceInfo {
        &LEASE
    }
    fn top_level_fields(&self) -> Option<&'static [&'static str]> {
        Some(&["spec"])
    }
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut c = Vec::new();
        crate::validation::non_negative_int(obj, "spec.leaseDurationSeconds", &mut c);
        crate::validation::non_negative_int(obj, "spec.leaseTransitions", &mut c);
        c
    }
    fn columns(&self) -> Vec<Column> {
        vec![
            Column::string("Holder", "The holder of the lease", 0),
            Column::age(),
        ]
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![
            json!(path_str(obj, "spec.holderIdentity").unwrap_or_default()),
            json!(object::age(obj, "metadata.creationTimestamp")),
        ]
    }
}
