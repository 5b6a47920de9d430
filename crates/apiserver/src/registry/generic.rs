//! The generic store: create, get, list, update (guaranteed update),
//! patch, delete for any kind, over [`Storage`]. Kind rules come from the
//! [`Strategy`]; everything else (metadata, optimistic concurrency, status
//! separation, generation, finalizers, paging) is done here once.

use std::sync::Arc;

use serde_json::{json, Value};

pub use super::list::{ListOptions, ListResult};
use super::{DeletePlan, ResourceInfo, Strategy};
use crate::body::{check_body, check_name};
use crate::object::{self, meta_mut};
use crate::patch::{self, PatchType};
use crate::status::{ApiError, ApiResult, OPTIMISTIC_LOCK_MSG};
use crate::storage::{Storage, StorageError};
use crate::validation;

/// How many times an unconditional update is retried on a write race.
const MAX_RETRIES: usize = 16;
/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The main resource (status changes are ignored for kinds with `/status`).
    Main,
    /// `/status`: only status changes are kept.
    Status,
    /// `/scale`: the body is an `autoscaling/v1 Scale`.
    Scale,
}

/// Options common to writes.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// `dryRun=All`: validate but do not persist.
    pub dry_run: bool,
    /// `fieldValidation=Strict`: unknown fields are a 400.
    pub strict: bool,
}

/// DELETE parameters (query and `DeleteOptions` body).
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// `gracePeriodSeconds`.
    pub grace: Option<i64>,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    /// `dryRun=All`.
    pub dry_run: bool,
}

/// The result of a DELETE.
#[derive(Debug, Clone)]
pub enum Deleted {
    /// The object is gone; carries its last state.
    Gone(Value),
    /// The object stays (finalizers or graceful deletion); carries its state.
    Pending(Value),
}

/// The generic registry over all kinds.
pub struct Registry {
    storage: Storage,
    prefix: String,
    kinds: Vec<Arc<dyn Strategy>>,
}

/// Maps a storage error for `resource`/`name` to a Status.
pub fn storage_error(info: &ResourceInfo, name: &str, e: StorageError) -> ApiError {
    match e {
        StorageError::NotFound => ApiError::not_found(info.resource, info.group, name),
        StorageError::AlreadyExists => ApiError::already_exists(info.resource, info.group, name),
        StorageError::Conflict(_) => {
            ApiError::conflict(info.resource, info.group, name, OPTIMISTIC_LOCK_MSG)
        }
        StorageError::Compacted { .. } => {
            ApiError::expired("The resourceVersion for the provided list is too old.")
        }
        StorageError::FutureRevision => ApiError::timeout("Too large resource version"),
        StorageError::Timeout => ApiError::timeout("etcd request timed out"),
        StorageError::TooLarge(m) => ApiError::too_large(m),
        StorageError::Corrupt(k) => ApiError::internal(format!("stored object {k} is corrupt")),
        StorageError::Backend(m) => ApiError::unavailable(format!("storage unavailable: {m}")),
    }
}

fn invalid(info: &ResourceInfo, obj: &Value, causes: Vec<crate::status::Cause>) -> ApiResult<()> {
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            info.kind,
            info.group,
            object::name(obj),
            causes,
        ))
    }
}

fn stamp_type(info: &ResourceInfo, obj: &mut Value) {
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(info.api_version()));
        m.insert("kind".into(), json!(info.kind));
    }
}

fn spec_changed(new: &Value, old: &Value) -> bool {
    let strip = |v: &Value| {
        let mut c = v.clone();
        if let Some(m) = c.as_object_mut() {
            m.remove("metadata");
            m.remove("status");
            m.remove("apiVersion");
            m.remove("kind");
        }
        c
    };
    strip(new) != strip(old)
}

impl Registry {
    /// A registry over `storage` with keys under `prefix` (`/registry`).
    pub fn new(storage: Storage, prefix: &str, kinds: Vec<Arc<dyn Strategy>>) -> Self {
        Registry {
            storage,
            prefix: prefix.trim_end_matches('/').to_string(),
            kinds,
        }
    }

    /// The storage handle.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// All kinds served.
    pub fn kinds(&self) -> &[Arc<dyn Strategy>] {
        &self.kinds
    }

    /// Looks a resource up by group, version and plural name.
    pub fn lookup(&self, group: &str, version: &str, resource: &str) -> Option<Arc<dyn Strategy>> {
        self.kinds
            .iter()
            .find(|k| {
                k.info().group == group
                    && k.info().version == version
                    && k.info().resource == resource
            })
            .cloned()
    }

    /// The key of one object.
    pub fn key(&self, info: &ResourceInfo, ns: &str, name: &str) -> String {
        if info.namespaced {
            format!("{}/{}/{}/{}", self.prefix, info.resource, ns, name)
        } else {
            format!("{}/{}/{}", self.prefix, info.resource, name)
        }
    }

    /// The key prefix of a collection (one namespace, or all).
    pub fn collection_prefix(&self, info: &ResourceInfo, ns: &str) -> String {
        if info.namespaced && !ns.is_empty() {
            format!("{}/{}/{}/", self.prefix, info.resource, ns)
        } else {
            format!("{}/{}/", self.prefix, info.resource)
        }
    }

    async fn check_namespace(&self, ns: &str) -> ApiResult<()> {
        let key = format!("{}/namespaces/{ns}", self.prefix);
        match self.storage.get(&key).await {
            Ok(Some(st)) => {
                if object::path_str(&st.object, "status.phase").as_deref() == Some("Terminating") {
                    return Err(ApiError::forbidden(format!("unable to create new content in namespace {ns} because it is being terminated")));
                }
                Ok(())
            }
            Ok(None) => Err(ApiError::not_found("namespaces", "", ns)),
            Err(e) => Err(storage_error(&super::core::NAMESPACE_INFO, ns, e)),
        }
    }

    /// POST: create an object in `ns`.
    pub async fn create(
        &self,
        s: &dyn Strategy,
        ns: &str,
        mut body: Value,
        opts: &WriteOptions,
    ) -> ApiResult<Value> {
        let info = s.info();
        check_body(s, &body, opts.strict)?;
        stamp_type(info, &mut body);
        {
            let meta = meta_mut(&mut body);
            if info.namespaced {
                let given = meta.get("namespace").and_then(Value::as_str).unwrap_or("");
                if !given.is_empty() && given != ns {
                    return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
                }
                meta.insert("namespace".into(), json!(ns));
            } else {
                meta.remove("namespace");
            }
            if meta
                .get("resourceVersion")
                .and_then(Value::as_str)
                .is_some_and(|v| !v.is_empty())
            {
                return Err(ApiError::bad_request(
                    "resourceVersion should not be set on objects to be created",
                ));
            }
            for k in [
                "resourceVersion",
                "selfLink",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "managedFields",
            ] {
                meta.remove(k);
            }
            meta.insert("uid".into(), json!(object::new_uid()));
            meta.insert("creationTimestamp".into(), json!(object::now_rfc3339()));
            if s.tracks_generation() {
                meta.insert("generation".into(), json!(1));
            } else {
                meta.remove("generation");
            }
        }
        let generate = object::name(&body).is_empty()
            && body
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
                .is_some_and(|g| !g.is_empty());
        s.prepare_for_create(&mut body);
        if info.namespaced {
            self.check_namespace(ns).await?;
        }
        for _attempt in 0..8 {
            let mut obj = body.clone();
            if generate {
                let base = obj
                    .pointer("/metadata/generateName")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                meta_mut(&mut obj).insert(
                    "name".into(),
                    json!(format!("{base}{}", object::name_suffix())),
                );
            }
            let mut causes = validation::validate_meta(&obj, s.name_rule(), info.namespaced);
            causes.extend(s.validate(&obj));
            invalid(info, &obj, causes)?;
            if opts.dry_run {
                return Ok(obj);
            }
            let key = self.key(info, ns, object::name(&obj));
            match self.storage.create(&key, &obj).await {
                Ok(rev) => {
                    meta_mut(&mut obj).insert("resourceVersion".into(), json!(rev.to_string()));
                    return Ok(obj);
                }
                Err(StorageError::AlreadyExists) if generate => continue,
                Err(e) => return Err(storage_error(info, object::name(&obj), e)),
            }
        }
        Err(ApiError::already_exists(
            info.resource,
            info.group,
            object::name(&body),
        ))
    }

    /// The guaranteed-update loop: reads the object, asks `f` for the
    /// desired new body, applies the generic update rules, and writes it
    /// with `mod_revision` as precondition. A body carrying a
    /// resourceVersion that is not the current one is a 409 Conflict;
    /// without one, write races are retried.
    pub async fn update_with<F>(
        &self,
        s: &dyn Strategy,
        ns: &str,
        name: &str,
        target: Target,
        opts: &WriteOptions,
        f: F,
    ) -> ApiResult<Value>
    where
        F: Fn(&Value) -> ApiResult<Value> + Send + Sync,
    {
        let info = s.info();
        let key = self.key(info, ns, name);
        for _ in 0..MAX_RETRIES {
            let current = self.get(s, ns, name).await?;
            let old = &current.object;
            let mut body = f(old)?;
            let wanted_rv = body
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let conditional = !wanted_rv.is_empty();
            if conditional && wanted_rv != current.mod_revision.to_string() {
                return Err(ApiError::conflict(
                    info.resource,
                    info.group,
                    name,
                    OPTIMISTIC_LOCK_MSG,
                ));
            }
            let new = self.next_state(s, ns, name, target, old, &mut body)?;
            if new == *old {
                return Ok(current.object);
            }
            if opts.dry_run {
                return Ok(new);
            }
            let gone = should_delete_during_update(&new);
            let result = if gone {
                self.storage.delete(&key, current.mod_revision).await
            } else {
                self.storage.update(&key, current.mod_revision, &new).await
            };
            match result {
                Ok(rev) => {
                    let mut out = new;
                    meta_mut(&mut out).insert("resourceVersion".into(), json!(rev.to_string()));
                    return Ok(out);
                }
                Err(StorageError::Conflict(_)) if !conditional => continue,
                Err(StorageError::NotFound) => {
                    return Err(ApiError::not_found(info.resource, info.group, name))
                }
                Err(e) => return Err(storage_error(info, name, e)),
            }
        }
        Err(ApiError::conflict(
            info.resource,
            info.group,
            name,
            "too many concurrent updates, please try again",
        ))
    }

    /// Builds the object to store from the old one and the client's body.
    fn next_state(
        &self,
        s: &dyn Strategy,
        ns: &str,
        name: &str,
        target: Target,
        old: &Value,
        body: &mut Value,
    ) -> ApiResult<Value> {
        let info = s.info();
        stamp_type(info, body);
        {
            let meta = meta_mut(body);
            let body_name = meta.get("name").and_then(Value::as_str).unwrap_or("");
            if !body_name.is_empty() && body_name != name {
                return Err(ApiError::bad_request(format!("the name of the object ({body_name}) does not match the name on the URL ({name})")));
            }
            let body_ns = meta.get("namespace").and_then(Value::as_str).unwrap_or("");
            if info.namespaced && !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
            }
        }
        let mut new = match target {
            Target::Status => {
                let mut n = old.clone();
                match body.get("status") {
                    Some(st) => object::set_path(&mut n, "status", st.clone()),
                    None => object::remove_path(&mut n, "status"),
                }
                n
            }
            _ => {
                let mut n = body.clone();
                if info.has_status() {
                    match old.get("status") {
                        Some(st) => object::set_path(&mut n, "status", st.clone()),
                        None => object::remove_path(&mut n, "status"),
                    }
                }
                n
            }
        };
        // Server-managed metadata always comes from the stored object.
        let old_meta = old.get("metadata").cloned().unwrap_or(json!({}));
        {
            let meta = meta_mut(&mut new);
            meta.insert("name".into(), json!(name));
            if info.namespaced {
                meta.insert("namespace".into(), json!(ns));
            } else {
                meta.remove("namespace");
            }
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "resourceVersion",
            ] {
                match old_meta.get(k) {
                    Some(v) => {
                        meta.insert(k.into(), v.clone());
                    }
                    None => {
                        meta.remove(k);
                    }
                }
            }
            meta.remove("selfLink");
        }
        if target == Target::Main {
            s.prepare_for_update(&mut new, old);
        }
        if s.tracks_generation() {
            let ann_changed = s.annotations_bump_generation()
                && new.pointer("/metadata/annotations") != old.pointer("/metadata/annotations");
            if target == Target::Main && (spec_changed(&new, old) || ann_changed) {
                let g = object::path_i64(old, "metadata.generation").unwrap_or(0) + 1;
                meta_mut(&mut new).insert("generation".into(), json!(g));
            }
        }
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            // Finalizers may only be removed from an object being deleted.
            let added: Vec<String> = object::finalizers(&new)
                .into_iter()
                .filter(|f| !object::finalizers(old).contains(f))
                .collect();
            if !added.is_empty() {
                return Err(ApiError::invalid(info.kind, info.group, name, vec![crate::status::Cause::forbidden("metadata.finalizers", &format!("no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"))]));
            }
        }
        let mut causes = validation::validate_meta(&new, s.name_rule(), info.namespaced);
        causes.extend(s.validate_update(&new, old));
        invalid(info, &new, causes)?;
        Ok(new)
    }

    /// PUT.
    pub async fn update(
        &self,
        s: &dyn Strategy,
        ns: &str,
        name: &str,
        target: Target,
        body: Value,
        opts: &WriteOptions,
    ) -> ApiResult<Value> {
        check_body(s, &body, opts.strict && target == Target::Main)?;
        check_name(&body, name, ns)?;
        self.update_with(s, ns, name, target, opts, |_| Ok(body.clone()))
            .await
    }

    /// PATCH (merge, JSON or strategic) of the main resource or `/status`.
    pub async fn patch(
        &self,
        s: &dyn Strategy,
        ns: &str,
        name: &str,
        target: Target,
        (kind, patch_body): (PatchType, &Value),
        opts: &WriteOptions,
    ) -> ApiResult<Value> {
        let info = s.info();
        self.update_with(s, ns, name, target, opts, |current| {
            let patched =
                patch::apply(kind, current, patch_body).map_err(|e| patch_error(info, name, e))?;
            check_body(s, &patched, opts.strict && target == Target::Main)?;
            check_name(&patched, name, ns)?;
            Ok(patched)
        })
        .await
    }

    /// DELETE one object: immediate, graceful (pods on a node) or pending
    /// finalizers (`deletionTimestamp` set, the object stays).
    pub async fn delete(
        &self,
        s: &dyn Strategy,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<Deleted> {
        let info = s.info();
        let key = self.key(info, ns, name);
        for _ in 0..MAX_RETRIES {
            let current = self.get(s, ns, name).await?;
            let obj = &current.object;
            if let Some(uid) = &opts.uid {
                if uid != object::uid(obj) {
                    return Err(ApiError::conflict(info.resource, info.group, name, &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {}", object::uid(obj))));
                }
            }
            if let Some(rv) = &opts.resource_version {
                if *rv != current.mod_revision.to_string() {
                    return Err(ApiError::conflict(info.resource, info.group, name, &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}", current.mod_revision)));
                }
            }
            let plan = s.delete_plan(obj, opts.grace);
            let pending_finalizers = !object::finalizers(obj).is_empty();
            let mut marked = obj.clone();
            if pending_finalizers || matches!(plan, DeletePlan::Graceful(_)) {
                if obj.pointer("/metadata/deletionTimestamp").is_some()
                    && !matches!(plan, DeletePlan::Graceful(0))
                {
                    return Ok(Deleted::Pending(current.object));
                }
                let grace = match plan {
                    DeletePlan::Graceful(g) => g,
                    DeletePlan::Now => 0,
                };
                if pending_finalizers || grace > 0 {
                    let meta = meta_mut(&mut marked);
                    if !meta.contains_key("deletionTimestamp") || grace > 0 {
                        meta.insert("deletionTimestamp".into(), json!(object::rfc3339_in(grace)));
                    }
                    meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
                    if opts.dry_run {
                        return Ok(Deleted::Pending(marked));
                    }
                    match self
                        .storage
                        .update(&key, current.mod_revision, &marked)
                        .await
                    {
                        Ok(rev) => {
                            meta_mut(&mut marked)
                                .insert("resourceVersion".into(), json!(rev.to_string()));
                            return Ok(Deleted::Pending(marked));
                        }
                        Err(StorageError::Conflict(_)) if opts.resource_version.is_none() => {
                            continue
                        }
                        Err(e) => return Err(storage_error(info, name, e)),
                    }
                }
            }
            if opts.dry_run {
                return Ok(Deleted::Gone(current.object));
            }
            match self.storage.delete(&key, current.mod_revision).await {
                Ok(_) => return Ok(Deleted::Gone(current.object)),
                Err(StorageError::Conflict(_)) if opts.resource_version.is_none() => continue,
                Err(e) => return Err(storage_error(info, name, e)),
            }
        }
        Err(ApiError::conflict(
            info.resource,
            info.group,
            name,
            "too many concurrent updates, please try again",
        ))
    }
}

/// kube's `ShouldDeleteDuringUpdate`: an object being deleted whose last
/// finalizer is gone (and, for namespaces, whose `spec.finalizers` are
/// empty) is removed by the update, unless a grace period is pending.
fn should_delete_during_update(new: &Value) -> bool {
    new.pointer("/metadata/deletionTimestamp").is_some()
        && object::finalizers(new).is_empty()
        && object::path_i64(new, "metadata.deletionGracePeriodSeconds").unwrap_or(0) == 0
        && (new.get("kind") != Some(&json!("Namespace"))
            || new
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty))
}

/// Parses a resourceVersion query value (empty → 0).
pub fn parse_rv(rv: &str) -> ApiResult<i64> {
    if rv.is_empty() {
        return Ok(0);
    }
    rv.parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| {
        ApiError::bad_request(format!(
            "Invalid value: {rv:?}: resourceVersion must be a non-negative integer"
        ))
    })
}

/// A patch that cannot be applied: 400 when it is malformed, else 422
/// (kube: `the server rejected our request due to an error in our request`).
pub fn patch_error(info: &ResourceInfo, name: &str, e: patch::PatchError) -> ApiError {
    let message = match e {
        patch::PatchError::Malformed(m) => return ApiError::bad_request(m),
        patch::PatchError::Failed(m) => m,
    };
    let mut e = ApiError::invalid(
        info.kind,
        info.group,
        name,
        vec![crate::status::Cause::invalid("patch", "", &message)],
    );
    e.message =
        format!("the server rejected our request due to an error in our request: {message}");
    e
}
