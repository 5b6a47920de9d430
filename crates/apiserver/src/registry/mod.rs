//! The resource registry: one generic store ([`generic::Registry`]) drives
//! every resource, and each kind contributes only its rules through a
//! [`Strategy`] (kube-apiserver's `registry/generic` + per-kind strategy).

pub mod apps;
pub mod batch;
pub mod core;
pub mod generic;
pub mod list;
pub mod workloads;

use std::sync::Arc;

use serde_json::Value;

use crate::object;
use crate::status::Cause;
use crate::table::Column;
use crate::validation::NameRule;

/// A subresource served next to the main resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubresourceInfo {
    /// `status`, `scale`, `binding`, ...
    pub name: &'static str,
    /// Group of the kind it answers with (`autoscaling` for scale).
    pub group: &'static str,
    /// Version of that kind.
    pub version: &'static str,
    /// The kind it answers with.
    pub kind: &'static str,
    /// Verbs (`get`, `patch`, `update`, `create`).
    pub verbs: &'static [&'static str],
}

/// Static description of one resource (what discovery shows).
#[derive(Debug, Clone, Copy)]
pub struct ResourceInfo {
    /// API group (`""` for core).
    pub group: &'static str,
    /// Version (`v1`).
    pub version: &'static str,
    /// Plural resource name (`pods`), also the etcd key segment.
    pub resource: &'static str,
    /// Singular name (`pod`).
    pub singular: &'static str,
    /// Kind (`Pod`).
    pub kind: &'static str,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names (`po`).
    pub short_names: &'static [&'static str],
    /// Categories (`all`).
    pub categories: &'static [&'static str],
    /// Subresources.
    pub subresources: &'static [SubresourceInfo],
}

impl ResourceInfo {
    /// `apps/v1` or `v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether the kind has a `status` subresource.
    pub fn has_status(&self) -> bool {
        self.subresources.iter().any(|s| s.name == "status")
    }

    /// Whether the kind has a `scale` subresource.
    pub fn has_scale(&self) -> bool {
        self.subresources.iter().any(|s| s.name == "scale")
    }
}

/// The `status` subresource (answers with the kind itself).
pub const fn status_sub(group: &'static str, kind: &'static str) -> SubresourceInfo {
    SubresourceInfo {
        name: "status",
        group,
        version: "v1",
        kind,
        verbs: &["get", "patch", "update"],
    }
}

/// The `scale` subresource (answers `autoscaling/v1 Scale`).
pub const SCALE_SUB: SubresourceInfo = SubresourceInfo {
    name: "scale",
    group: "autoscaling",
    version: "v1",
    kind: "Scale",
    verbs: &["get", "patch", "update"],
};

/// What a DELETE does to an object without finalizers.
#[derive(Debug, Clone, PartialEq)]
pub enum DeletePlan {
    /// Remove it now.
    Now,
    /// Keep it, marked with `deletionTimestamp = now + grace` (pods on a node).
    Graceful(i64),
}

/// Per-kind rules plugged into the generic registry. Every method has a
/// default suited to a plain object without spec/status.
pub trait Strategy: Send + Sync + 'static {
    /// Static description.
    fn info(&self) -> &'static ResourceInfo;

    /// Rule for `metadata.name`.
    fn name_rule(&self) -> NameRule {
        NameRule::Subdomain
    }

    /// Whether `metadata.generation` is maintained (1 on create, +1 on spec change).
    fn tracks_generation(&self) -> bool {
        self.info().has_status()
    }

    /// Whether annotation changes also bump the generation (Deployments).
    fn annotations_bump_generation(&self) -> bool {
        false
    }

    /// Top-level fields allowed besides `apiVersion`, `kind`, `metadata`
    /// (for `fieldValidation=Strict`); `None` accepts anything.
    fn top_level_fields(&self) -> Option<&'static [&'static str]> {
        if self.info().has_status() {
            Some(&["spec", "status"])
        } else {
            None
        }
    }

    /// Allowed fields directly under `spec`, for strict validation; `None`
    /// accepts anything.
    fn spec_fields(&self) -> Option<&'static [&'static str]> {
        None
    }

    /// Defaults and resets applied before a create is validated.
    fn prepare_for_create(&self, obj: &mut Value) {
        let _ = obj;
    }

    /// Adjusts an update before validation (status handling is done by
    /// the generic registry).
    fn prepare_for_update(&self, new: &mut Value, old: &Value) {
        let _ = (new, old);
    }

    /// Kind-specific validation of an object about to be created.
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let _ = obj;
        Vec::new()
    }

    /// Kind-specific validation of an update (defaults to `validate`).
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let _ = old;
        self.validate(new)
    }

    /// A selectable field's value: `Some(value)` for a supported field
    /// (`None` inside for unset), `None` for an unsupported one.
    /// `metadata.name` and `metadata.namespace` are handled generically.
    fn field(&self, obj: &Value, field: &str) -> Option<Option<String>> {
        let _ = (obj, field);
        None
    }

    /// Whether the table starts with the generic `Name` column (events put
    /// their own name column last).
    fn name_column_first(&self) -> bool {
        true
    }

    /// Printer columns after `Name` (kube's printers); default `Age`.
    fn columns(&self) -> Vec<Column> {
        vec![Column::age()]
    }

    /// Cells for [`Strategy::columns`] (the `Name` cell is added by the caller).
    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![Value::String(object::age(
            obj,
            "metadata.creationTimestamp",
        ))]
    }

    /// What DELETE does to an object without finalizers.
    fn delete_plan(&self, obj: &Value, grace: Option<i64>) -> DeletePlan {
        let _ = (obj, grace);
        DeletePlan::Now
    }

    /// Whether DELETE answers with the object itself (pods) rather than a
    /// `Status`.
    fn delete_returns_object(&self) -> bool {
        false
    }
}

/// Every built-in kind, in discovery order.
pub fn all_kinds() -> Vec<Arc<dyn Strategy>> {
    let mut kinds = core::kinds();
    kinds.extend(workloads::kinds());
    kinds.extend(apps::kinds());
    kinds.extend(batch::kinds());
    kinds
}

/// The groups served, in discovery order (`""` is the core group).
pub fn groups(kinds: &[Arc<dyn Strategy>]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for k in kinds {
        if !out.contains(&k.info().group) {
            out.push(k.info().group);
        }
    }
    out
}

/// Requires a string-to-string map at `path` if present.
pub fn string_map_field(obj: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(v) = object::path(obj, path) {
        let ok = v.is_null()
            || v.as_object()
                .is_some_and(|m| m.values().all(Value::is_string));
        if !ok {
            causes.push(Cause::invalid(
                path,
                &v.to_string(),
                "must be a map of strings",
            ));
        }
    }
}
