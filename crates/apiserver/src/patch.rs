//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and a
//! strategic merge patch for built-in kinds (lists merged by their
//! `patchMergeKey`, with the `$patch`, `$retainKeys`,
//! `$setElementOrder/…` and `$deleteFromPrimitiveList/…` directives).

use serde_json::{Map, Value};

/// The PATCH flavours, by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/json-patch+json`.
    Json,
    /// `application/strategic-merge-patch+json`.
    Strategic,
}

impl PatchType {
    /// Maps a Content-Type to a patch type (`None`: unsupported).
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            _ => None,
        }
    }
}

/// Why a patch was not applied (the text is for the client).
#[derive(Debug, Clone, PartialEq)]
pub enum PatchError {
    /// The patch itself is malformed (kube: 400 BadRequest).
    Malformed(String),
    /// The patch does not apply to the object (kube: 422).
    Failed(String),
}

/// Applies a patch of `kind` to `target`.
pub fn apply(kind: PatchType, target: &Value, patch: &Value) -> Result<Value, PatchError> {
    match kind {
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(PatchError::Malformed(
                    "Invalid JSON Patch: a merge patch must be a JSON object".into(),
                ));
            }
            let mut out = target.clone();
            merge(&mut out, patch);
            Ok(out)
        }
        PatchType::Strategic => {
            if !patch.is_object() {
                return Err(PatchError::Malformed(
                    "invalid JSON document: a strategic merge patch must be a JSON object".into(),
                ));
            }
            let mut out = target.clone();
            strategic(&mut out, patch, "").map_err(PatchError::Malformed)?;
            Ok(out)
        }
        PatchType::Json => {
            let ok = patch
                .as_array()
                .is_some_and(|ops| ops.iter().all(Value::is_object));
            if !ok {
                return Err(PatchError::Malformed(
                    "json patch must be a JSON array of operation objects".into(),
                ));
            }
            json_patch(target, patch).map_err(PatchError::Failed)
        }
    }
}

/// A `$patch` directive's value, if it is one the strategy knows.
fn directive(p: &Map<String, Value>) -> Result<Option<&str>, String> {
    match p.get("$patch") {
        None => Ok(None),
        Some(Value::String(d)) if matches!(d.as_str(), "replace" | "delete" | "merge") => {
            Ok(Some(d.as_str()))
        }
        Some(other) => Err(format!(
            "unknown patch type: {other} in map: {}",
            Value::Object(p.clone())
        )),
    }
}

/// RFC 7386 merge: maps merge recursively, `null` removes, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// The merge key of a list field, from the built-in types' `patchMergeKey`.
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    let has = |k: &str| items.iter().any(|i| i.get(k).is_some());
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "conditions" | "addresses" => Some("type"),
        "ownerReferences" => Some("uid"),
        "hostAliases" => Some("ip"),
        "topologySpreadConstraints" => Some("topologyKey"),
        "ports" if has("containerPort") => Some("containerPort"),
        "ports" => Some("port"),
        _ => None,
    }
}

/// Primitive lists whose patch strategy is `merge` (set union).
fn is_merged_primitive_list(field: &str) -> bool {
    matches!(field, "finalizers")
}

fn strategic(target: &mut Value, patch: &Value, _path: &str) -> Result<(), String> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match directive(p)? {
        Some("replace") => {
            let mut m = p.clone();
            m.remove("$patch");
            *target = Value::Object(m);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("object");
    let mut retain: Option<Vec<String>> = None;
    for (k, v) in p {
        if k == "$patch" {
            continue;
        }
        if k == "$retainKeys" {
            retain = v.as_array().map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            });
            continue;
        }
        if k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(del)) = (t.get_mut(field), v.as_array()) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match v {
            Value::Array(items) => {
                let existing = t.get(k).and_then(Value::as_array).cloned();
                let merged = merge_list(k, existing, items)?;
                t.insert(k.clone(), Value::Array(merged));
            }
            Value::Object(_) => {
                let slot = t.entry(k.clone()).or_insert(Value::Null);
                strategic(slot, v, k)?;
                if slot.is_null() {
                    t.remove(k);
                }
            }
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(keys) = retain {
        t.retain(|k, _| keys.contains(k));
    }
    // Apply `$setElementOrder/<field>` after merging.
    for (k, v) in p {
        let Some(field) = k.strip_prefix("$setElementOrder/") else {
            continue;
        };
        let (Some(Value::Array(list)), Some(order)) = (t.get_mut(field), v.as_array()) else {
            continue;
        };
        let key = merge_key(field, order);
        let pos = |item: &Value| {
            order.iter().position(|o| match key {
                Some(mk) => o.get(mk).is_some() && o.get(mk) == item.get(mk),
                None => o == item,
            })
        };
        list.sort_by_key(|item| pos(item).unwrap_or(usize::MAX));
    }
    Ok(())
}

fn merge_list(
    field: &str,
    existing: Option<Vec<Value>>,
    patch: &[Value],
) -> Result<Vec<Value>, String> {
    for item in patch {
        if let Value::Object(m) = item {
            directive(m)?;
        }
    }
    if is_merged_primitive_list(field) {
        let mut out = existing.unwrap_or_default();
        for item in patch {
            if !out.contains(item) {
                out.push(item.clone());
            }
        }
        return Ok(out);
    }
    let without_directives = || {
        patch
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .collect()
    };
    let Some(key) = merge_key(field, patch) else {
        // Atomic list: replaced, minus directive-only elements.
        return Ok(without_directives());
    };
    if patch
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(without_directives());
    }
    let mut out = existing.unwrap_or_default();
    for item in patch {
        let id = item.get(key);
        let found = out.iter().position(|e| id.is_some() && e.get(key) == id);
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (found, delete) {
            (Some(i), true) => {
                out.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic(&mut out[i], item, field)?,
            (None, false) => {
                let mut fresh = Value::Object(Map::new());
                strategic(&mut fresh, item, field)?;
                out.push(fresh);
            }
        }
    }
    Ok(out)
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn parse_pointer(ptr: &str) -> Result<Vec<String>, String> {
    if ptr.is_empty() {
        return Ok(Vec::new());
    }
    let rest = ptr
        .strip_prefix('/')
        .ok_or_else(|| format!("invalid JSON pointer {ptr:?}: must start with '/'"))?;
    Ok(rest.split('/').map(unescape).collect())
}

fn get_at<'a>(doc: &'a Value, tokens: &[String]) -> Option<&'a Value> {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => m.get(t)?,
            Value::Array(a) => a.get(t.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn parent_mut<'a>(
    doc: &'a mut Value,
    tokens: &[String],
    ptr: &str,
) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for t in &tokens[..tokens.len().saturating_sub(1)] {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(move |i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("doc is missing path: {ptr:?}: missing value"))?;
    }
    Ok(cur)
}

fn add(doc: &mut Value, ptr: &str, value: Value) -> Result<(), String> {
    let tokens = parse_pointer(ptr)?;
    let Some(last) = tokens.last().cloned() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, &tokens, ptr)? {
        Value::Object(m) => {
            m.insert(last, value);
            Ok(())
        }
        Value::Array(a) => {
            let idx = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .map_err(|_| format!("invalid array index {last:?} in {ptr:?}"))?
            };
            if idx > a.len() {
                return Err(format!(
                    "add operation does not apply: doc is missing path: {ptr:?}"
                ));
            }
            a.insert(idx, value);
            Ok(())
        }
        _ => Err(format!("doc is missing path: {ptr:?}")),
    }
}

fn remove(doc: &mut Value, ptr: &str) -> Result<Value, String> {
    let tokens = parse_pointer(ptr)?;
    let Some(last) = tokens.last().cloned() else {
        return Err("unable to remove the whole document".into());
    };
    let missing = || format!("remove operation does not apply: doc is missing path: {ptr:?}");
    match parent_mut(doc, &tokens, ptr)? {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => {
            let i = last.parse::<usize>().map_err(|_| missing())?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(missing())
            }
        }
        _ => Err(missing()),
    }
}

/// Applies an RFC 6902 JSON patch.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, String> {
    let ops = patch
        .as_array()
        .ok_or("json patch must be a JSON array of operations")?;
    let mut doc = target.clone();
    for op in ops {
        let name = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or("operation has no \"op\"")?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or("operation has no \"path\"")?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| format!("{name} operation has no \"value\""))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{name} operation has no \"from\""))
        };
        match name {
            "add" => add(&mut doc, path, value()?)?,
            "remove" => {
                remove(&mut doc, path)?;
            }
            "replace" => {
                let tokens = parse_pointer(path)?;
                if get_at(&doc, &tokens).is_none() {
                    return Err(format!("replace operation does not apply: doc is missing key: {path}: missing value"));
                }
                if tokens.is_empty() {
                    doc = value()?;
                } else {
                    remove(&mut doc, path)?;
                    add(&mut doc, path, value()?)?;
                }
            }
            "move" => {
                let v = remove(&mut doc, from()?)?;
                add(&mut doc, path, v)?;
            }
            "copy" => {
                let v = get_at(&doc, &parse_pointer(from()?)?)
                    .cloned()
                    .ok_or_else(|| {
                        format!(
                            "copy operation does not apply: doc is missing from path: {:?}",
                            op.get("from")
                        )
                    })?;
                add(&mut doc, path, v)?;
            }
            "test" => {
                let want = value()?;
                if get_at(&doc, &parse_pointer(path)?) != Some(&want) {
                    return Err(format!("testing value {path} failed: test failed"));
                }
            }
            other => return Err(format!("unexpected kind of operation: {other:?}")),
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch() {
        let t = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]});
        let p = json!({"a": null, "b": {"c": 5}, "l": [3]});
        assert_eq!(
            apply(PatchType::Merge, &t, &p).unwrap(),
            json!({"b": {"c": 5, "d": 3}, "l": [3]})
        );
        assert!(apply(PatchType::Merge, &t, &json!([1])).is_err());
    }

    #[test]
    fn json_patch_ops() {
        let t = json!({"spec": {"replicas": 1, "l": ["a"]}, "metadata": {"labels": {"a/b": "x"}}});
        let p = json!([
            {"op": "replace", "path": "/spec/replicas", "value": 3},
            {"op": "add", "path": "/spec/l/-", "value": "b"},
            {"op": "add", "path": "/spec/l/0", "value": "z"},
            {"op": "remove", "path": "/metadata/labels/a~1b"},
            {"op": "test", "path": "/spec/replicas", "value": 3},
            {"op": "copy", "from": "/spec/replicas", "path": "/spec/copy"},
            {"op": "move", "from": "/spec/copy", "path": "/spec/moved"}
        ]);
        let out = json_patch(&t, &p).unwrap();
        assert_eq!(
            out,
            json!({"spec": {"replicas": 3, "l": ["z", "a", "b"], "moved": 3}, "metadata": {"labels": {}}})
        );
        assert!(json_patch(
            &t,
            &json!([{"op": "test", "path": "/spec/replicas", "value": 9}])
        )
        .is_err());
        assert!(json_patch(&t, &json!([{"op": "remove", "path": "/nope"}])).is_err());
        assert!(json_patch(&t, &json!([{"op": "replace", "path": "/nope", "value": 1}])).is_err());
        assert!(json_patch(&t, &json!({"op": "add"})).is_err());
        assert!(matches!(
            apply(PatchType::Json, &t, &json!([1])),
            Err(PatchError::Malformed(_))
        ));
        assert!(matches!(
            apply(
                PatchType::Json,
                &t,
                &json!([{"op": "remove", "path": "/nope"}])
            ),
            Err(PatchError::Failed(_))
        ));
        assert!(matches!(
            apply(
                PatchType::Strategic,
                &t,
                &json!({"spec": {"$patch": "frob"}})
            ),
            Err(PatchError::Malformed(_))
        ));
    }

    #[test]
    fn strategic_merges_containers_by_name() {
        let t = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]},
                       "metadata": {"finalizers": ["f1"]}});
        let p = json!({"spec": {"containers": [{"name": "b", "image": "z"}, {"name": "c", "image": "w"}, {"name": "a", "$patch": "delete"}],
                                "$setElementOrder/containers": [{"name": "c"}, {"name": "b"}]},
                       "metadata": {"finalizers": ["f2"]}});
        let out = apply(PatchType::Strategic, &t, &p).unwrap();
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "c", "image": "w"}, {"name": "b", "image": "z"}])
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["f1", "f2"]));
        let p = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["f1"]}, "data": {"$patch": "replace", "k": "v"}});
        let out = apply(
            PatchType::Strategic,
            &json!({"metadata": {"finalizers": ["f1"]}, "data": {"a": "b"}}),
            &p,
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"metadata": {"finalizers": []}, "data": {"k": "v"}})
        );
    }
}
