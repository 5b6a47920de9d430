//! Behaviour that kube-apiserver gets from admission and controllers and a
//! facade without controllers must do itself: the built-in namespaces at
//! startup, namespace deletion (content removal, then the namespace), and
//! pod binding.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::object::{self, meta_mut};
use crate::registry::generic::{storage_error, DeleteOptions, ListOptions, Registry, WriteOptions};
use crate::registry::Strategy;
use crate::status::{ApiError, ApiResult};
use crate::storage::StorageError;

/// The namespaces kube-apiserver creates at startup.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Creates the system namespaces if missing.
pub async fn ensure_system_namespaces(registry: &Registry) -> ApiResult<()> {
    let ns = registry
        .lookup("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("namespaces not registered"))?;
    for name in SYSTEM_NAMESPACES {
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        match registry
            .create(ns.as_ref(), "", body, &WriteOptions::default())
            .await
        {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `POST pods/<name>/binding`: sets `spec.nodeName` and `PodScheduled`.
pub async fn bind_pod(
    registry: &Registry,
    pods: &dyn Strategy,
    ns: &str,
    name: &str,
    binding: &Value,
) -> ApiResult<()> {
    let node = object::path_str(binding, "target.name").unwrap_or_default();
    if node.is_empty() {
        return Err(ApiError::invalid(
            "Binding",
            "",
            name,
            vec![crate::status::Cause::required("target.name", "")],
        ));
    }
    let info = pods.info();
    let key = registry.key(info, ns, name);
    for _ in 0..16 {
        let current = registry.get(pods, ns, name).await?;
        let mut pod = current.object.clone();
        if let Some(existing) = object::path_str(&pod, "spec.nodeName").filter(|n| !n.is_empty()) {
            return Err(ApiError::conflict(
                "pods/binding",
                "",
                name,
                &format!("pod {name} is already assigned to node \"{existing}\""),
            ));
        }
        if pod.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::conflict(
                "pods/binding",
                "",
                name,
                &format!("pod {name} is being deleted, cannot be assigned to a host"),
            ));
        }
        object::set_path(&mut pod, "spec.nodeName", json!(node));
        let cond = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": object::now_rfc3339()});
        let conds = object::path_mut(&mut pod, "status.conditions");
        if !conds.is_array() {
            *conds = json!([]);
        }
        if let Some(list) = conds.as_array_mut() {
            list.retain(|c| c.get("type") != Some(&json!("PodScheduled")));
            list.push(cond);
        }
        match registry
            .storage()
            .update(&key, current.mod_revision, &pod)
            .await
        {
            Ok(_) => return Ok(()),
            Err(StorageError::Conflict(_)) => continue,
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

/// `PUT namespaces/<name>/finalize`: only `spec.finalizers` changes.
pub async fn finalize_namespace(
    registry: &Registry,
    ns_kind: &dyn Strategy,
    name: &str,
    body: &Value,
    opts: &WriteOptions,
) -> ApiResult<Value> {
    let finalizers = body
        .pointer("/spec/finalizers")
        .cloned()
        .unwrap_or(json!([]));
    let info = ns_kind.info();
    let key = registry.key(info, "", name);
    let current = registry.get(ns_kind, "", name).await?;
    let mut next = current.object.clone();
    object::set_path(&mut next, "spec.finalizers", finalizers);
    if opts.dry_run || next == current.object {
        return Ok(next);
    }
    let rev = registry
        .storage()
        .update(&key, current.mod_revision, &next)
        .await
        .map_err(|e| storage_error(info, name, e))?;
    meta_mut(&mut next).insert("resourceVersion".into(), json!(rev.to_string()));
    Ok(next)
}

/// `DELETE namespaces/<name>`: marks it `Terminating` and starts removing
/// its content in the background; the namespace disappears once empty.
pub async fn delete_namespace(
    registry: &Arc<Registry>,
    ns_kind: &dyn Strategy,
    name: &str,
    opts: &DeleteOptions,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> ApiResult<Value> {
    let info = ns_kind.info();
    let key = registry.key(info, "", name);
    let current = registry.get(ns_kind, "", name).await?;
    if let Some(uid) = &opts.uid {
        if uid != object::uid(&current.object) {
            return Err(ApiError::conflict(
                info.resource,
                "",
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    object::uid(&current.object)
                ),
            ));
        }
    }
    let mut ns = current.object.clone();
    if ns.pointer("/metadata/deletionTimestamp").is_none() {
        meta_mut(&mut ns).insert("deletionTimestamp".into(), json!(object::now_rfc3339()));
        meta_mut(&mut ns).insert("deletionGracePeriodSeconds".into(), json!(0));
        object::set_path(&mut ns, "status.phase", json!("Terminating"));
        if opts.dry_run {
            return Ok(ns);
        }
        let rev = registry
            .storage()
            .update(&key, current.mod_revision, &ns)
            .await
            .map_err(|e| storage_error(info, name, e))?;
        meta_mut(&mut ns).insert("resourceVersion".into(), json!(rev.to_string()));
    }
    let reg = registry.clone();
    let name = name.to_string();
    tokio::spawn(async move {
        let mut shutdown = shutdown;
        loop {
            match purge_namespace(&reg, &name).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!(namespace = %name, error = %e, "namespace cleanup"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.changed() => return,
            }
        }
    });
    Ok(ns)
}

/// One pass of namespace cleanup; true when the namespace is gone.
async fn purge_namespace(reg: &Registry, name: &str) -> ApiResult<bool> {
    let mut remaining = 0usize;
    let opts = DeleteOptions {
        grace: Some(0),
        ..Default::default()
    };
    for kind in reg.kinds().iter().filter(|k| k.info().namespaced) {
        let list = reg
            .list(kind.as_ref(), name, &ListOptions::default())
            .await?;
        for item in &list.items {
            remaining += 1;
            match reg
                .delete(kind.as_ref(), name, object::name(item), &opts)
                .await
            {
                Ok(_) => {}
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    if remaining > 0 {
        // Check again next round: objects with finalizers may still be there.
        return Ok(false);
    }
    let ns_kind = reg
        .lookup("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("namespaces not registered"))?;
    let key = reg.key(ns_kind.info(), "", name);
    match reg
        .storage()
        .get(&key)
        .await
        .map_err(|e| storage_error(ns_kind.info(), name, e))?
    {
        None => Ok(true),
        Some(st) => match reg.storage().delete(&key, st.mod_revision).await {
            Ok(_) | Err(StorageError::NotFound) => Ok(true),
            Err(StorageError::Conflict(_)) => Ok(false),
            Err(e) => Err(storage_error(ns_kind.info(), name, e)),
        },
    }
}
