//! Request bodies as kube-apiserver takes them: read under its 3 MiB limit
//! (413 `RequestEntityTooLarge`), decoded from JSON, YAML or protobuf with
//! its decode errors (`transformDecodeError`), checked before anything is
//! stored (`apiVersion`/`kind`, metadata field types, strict fields, the
//! handlers' `checkName`), and `DeleteOptions` decoded and validated.

use std::time::Duration;

use axum::body::{Body, Bytes};
use http::{header, HeaderMap};
use serde_json::Value;
use tokio_stream::StreamExt;

use crate::registry::generic::DeleteOptions;
use crate::registry::{ResourceInfo, Strategy};
use crate::request::Query;
use crate::status::{ApiError, ApiResult, Cause};

/// The largest request body (kube's `MaxRequestBodyBytes`, 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;
/// An oversized body is read and dropped up to this size (within
/// [`DRAIN_TIME`]) so the client, still sending, can read the 413.
const DRAIN_MAX: usize = 16 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Media types accepted for object bodies.
pub const OBJECT_TYPES: &str =
    "application/json, application/yaml, application/vnd.kubernetes.protobuf";
/// Media types accepted for PATCH bodies.
pub const PATCH_TYPES: &str =
    "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json";

/// Objects nested deeper are refused: what is stored must stay within
/// serde_json's decoding limit (128), or reading it back would fail.
const MAX_NESTING: usize = 100;

/// Fields of `ObjectMeta` (for strict decoding) with their Go types.
const META_FIELDS: &[(&str, &str)] = &[
    ("name", "string"),
    ("generateName", "string"),
    ("namespace", "string"),
    ("selfLink", "string"),
    ("uid", "string"),
    ("resourceVersion", "string"),
    ("generation", "int64"),
    ("creationTimestamp", "v1.Time"),
    ("deletionTimestamp", "v1.Time"),
    ("deletionGracePeriodSeconds", "int64"),
    ("labels", "map[string]string"),
    ("annotations", "map[string]string"),
    ("ownerReferences", "[]v1.OwnerReference"),
    ("finalizers", "[]string"),
    ("managedFields", "[]v1.ManagedFieldsEntry"),
];

/// Reads the body; 413 when it exceeds [`MAX_BODY`].
pub async fn read(body: Body, headers: &HeaderMap) -> ApiResult<Bytes> {
    let too_large = || ApiError::too_large(format!("limit is {MAX_BODY}"));
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let waits_for_continue = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if announced.is_some_and(|n| n > MAX_BODY && (waits_for_continue || n > DRAIN_MAX)) {
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::with_capacity(announced.unwrap_or(0).min(MAX_BODY));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request(format!("unable to read the request body: {e}")))?;
        if buf.len() + chunk.len() <= MAX_BODY {
            buf.extend_from_slice(&chunk);
            continue;
        }
        let mut seen = buf.len() + chunk.len();
        drop(buf);
        let _ = tokio::time::timeout(DRAIN_TIME, async {
            while seen <= DRAIN_MAX {
                match stream.next().await {
                    Some(Ok(c)) => seen += c.len(),
                    _ => break,
                }
            }
        })
        .await;
        return Err(too_large());
    }
    Ok(Bytes::from(buf))
}

/// The media type of a Content-Type header, lowercased, without parameters.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// kube's `summarizeData`: the start of the body, as text for JSON, else hex.
fn summarize(data: &[u8]) -> String {
    const MAX: usize = 30;
    let head = &data[..data.len().min(MAX)];
    let more = if data.len() > MAX { " ..." } else { "" };
    match data.first() {
        None => "<empty>".into(),
        Some(b'{') => format!("{}{more}", String::from_utf8_lossy(head)),
        Some(_) => {
            let hex: String = head.iter().map(|b| format!("{b:02x}")).collect();
            format!("{hex}{more}")
        }
    }
}

/// kube's `transformDecodeError` for a body whose kind could not be read.
fn unrecognized(kind: &str, body: &[u8], err: &str) -> ApiError {
    ApiError::bad_request(format!(
        "the object provided is unrecognized (must be of type {kind}): {err} ({})",
        summarize(body)
    ))
}

/// Decodes a JSON or YAML body meant to be a `kind` (Scale, Binding, or
/// any object when `proto` is None), or a protobuf one for `proto`'s kind.
pub fn decode(
    body: &[u8],
    content_type: &str,
    kind: &str,
    proto: Option<&ResourceInfo>,
) -> ApiResult<Value> {
    let v = match media_type(content_type).as_str() {
        "" | "application/json" | "*/*" => serde_json::from_slice::<Value>(body).map_err(|e| {
            unrecognized(
                kind,
                body,
                &format!("couldn't get version/kind; json parse error: {e}"),
            )
        })?,
        "application/yaml" => {
            let text = std::str::from_utf8(body).map_err(|e| {
                unrecognized(kind, body, &format!("error converting YAML to JSON: {e}"))
            })?;
            crate::yaml::to_json(text).map_err(|e| {
                unrecognized(kind, body, &format!("error converting YAML to JSON: {e}"))
            })?
        }
        "application/vnd.kubernetes.protobuf" if proto.is_some() => {
            return crate::protobuf::decode(body, proto.expect("checked"));
        }
        _ => return Err(ApiError::unsupported_media_type(OBJECT_TYPES)),
    };
    if !v.is_object() {
        let what = match v {
            Value::Array(_) => "array",
            Value::String(_) => "string",
            Value::Number(_) => "number",
            Value::Bool(_) => "bool",
            _ => "null",
        };
        return Err(unrecognized(
            kind,
            body,
            &format!("couldn't get version/kind; json parse error: cannot unmarshal {what} into an object"),
        ));
    }
    Ok(v)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Whether `v` decodes into the Go type `go` (null decodes into anything).
fn fits(v: &Value, go: &str) -> bool {
    let strings = |v: &Value| v.is_null() || v.is_string();
    v.is_null()
        || match go {
            "string" | "v1.Time" => v.is_string(),
            "int64" => v.is_i64(),
            "bool" => v.is_boolean(),
            "map[string]string" => v.as_object().is_some_and(|m| m.values().all(strings)),
            "[]string" => v.as_array().is_some_and(|a| a.iter().all(strings)),
            _ => v.as_array().is_some_and(|a| a.iter().all(Value::is_object)),
        }
}

/// The decode error of a metadata field of the wrong JSON type (400, as
/// kube's decoder), also inside `ownerReferences`.
fn meta_types(meta: &serde_json::Map<String, Value>) -> Result<(), String> {
    for (field, go) in META_FIELDS {
        if let Some(v) = meta.get(*field).filter(|v| !fits(v, go)) {
            return Err(format!(
                "json: cannot unmarshal {} into Go struct field ObjectMeta.metadata.{field} of type {go}",
                json_type(v)
            ));
        }
    }
    let refs = meta.get("ownerReferences").and_then(Value::as_array);
    for r in refs.into_iter().flatten() {
        for (field, go) in [
            ("apiVersion", "string"),
            ("kind", "string"),
            ("name", "string"),
            ("uid", "string"),
            ("controller", "bool"),
            ("blockOwnerDeletion", "bool"),
        ] {
            if let Some(v) = r.get(field).filter(|v| !fits(v, go)) {
                return Err(format!("json: cannot unmarshal {} into Go struct field OwnerReference.metadata.ownerReferences.{field} of type {go}", json_type(v)));
            }
        }
    }
    Ok(())
}

/// Strict decoding: the unknown fields of `body` for this kind.
pub fn unknown_fields(s: &dyn Strategy, body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let Some(top) = body.as_object() else {
        return out;
    };
    if let Some(allowed) = s.top_level_fields() {
        for k in top.keys() {
            if !matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                && !allowed.contains(&k.as_str())
            {
                out.push(k.clone());
            }
        }
    }
    if let Some(meta) = top.get("metadata").and_then(Value::as_object) {
        out.extend(
            meta.keys()
                .filter(|k| !META_FIELDS.iter().any(|(f, _)| f == k))
                .map(|k| format!("metadata.{k}")),
        );
    }
    if let (Some(allowed), Some(spec)) =
        (s.spec_fields(), top.get("spec").and_then(Value::as_object))
    {
        out.extend(
            spec.keys()
                .filter(|k| !allowed.contains(&k.as_str()))
                .map(|k| format!("spec.{k}")),
        );
    }
    out
}

fn nesting(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(nesting).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(nesting).max().unwrap_or(0),
        _ => 0,
    }
}

/// What kube's decoder checks of an object body: a JSON object of the
/// endpoint's `apiVersion`/`kind`, metadata fields of the right types, and
/// (strict) no unknown fields; also a nesting limit (a JSON patch could
/// otherwise store an object too deep to be read back).
pub fn check_body(s: &dyn Strategy, body: &Value, strict: bool) -> ApiResult<()> {
    let info = s.info();
    let undecodable = |m: &str| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {m}",
            info.kind, info.version, info.kind
        ))
    };
    let Some(top) = body.as_object() else {
        return Err(undecodable("expected a JSON object"));
    };
    if nesting(body) > MAX_NESTING {
        return Err(undecodable(&format!(
            "the object is nested more than {MAX_NESTING} levels deep"
        )));
    }
    if let Some(av) = top.get("apiVersion").and_then(Value::as_str) {
        if av != info.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                info.api_version()
            )));
        }
    }
    if let Some(k) = top.get("kind").and_then(Value::as_str) {
        if k != info.kind {
            return Err(undecodable(&format!(
                "the kind in the data ({k}) does not match the expected kind"
            )));
        }
    }
    match top.get("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(meta)) => meta_types(meta).map_err(|m| undecodable(&m))?,
        Some(other) => {
            return Err(undecodable(&format!(
                "json: cannot unmarshal {} into Go struct field {}.metadata of type v1.ObjectMeta",
                json_type(other),
                info.kind
            )))
        }
    }
    if strict {
        let unknown = unknown_fields(s, body);
        if !unknown.is_empty() {
            let list: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            return Err(undecodable(&format!(
                "strict decoding error: {}",
                list.join(", ")
            )));
        }
    }
    Ok(())
}

/// kube's `checkName` (PUT, and PATCH after patching): the body names the
/// object of the URL, and its namespace, if any, is the URL's.
pub fn check_name(obj: &Value, name: &str, ns: &str) -> ApiResult<()> {
    let meta = |f: &str| {
        obj.pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    let (obj_name, obj_ns) = (meta("name"), meta("namespace"));
    if obj_name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({name} based on URL) was undeterminable: name must be provided"
        )));
    }
    if obj_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({obj_name}) does not match the name on the URL ({name})"
        )));
    }
    if !ns.is_empty() && !obj_ns.is_empty() && obj_ns != ns {
        return Err(ApiError::bad_request(format!(
            "the namespace of the object ({obj_ns}) does not match the namespace on the request ({ns})"
        )));
    }
    Ok(())
}

/// kube's `IsValidPathSegmentName` for a name in the URL (400 otherwise).
pub fn check_path_name(name: &str) -> ApiResult<()> {
    let msgs: Vec<String> = if name == "." || name == ".." {
        vec![format!("may not be '{name}'")]
    } else {
        ["/", "%"]
            .iter()
            .filter(|c| name.contains(*c))
            .map(|c| format!("may not contain '{c}'"))
            .collect()
    };
    if msgs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "Name parameter invalid: {name:?}: {}",
            msgs.join(";")
        )))
    }
}

/// DELETE parameters from the query and the `DeleteOptions` body, decoded
/// (400) and validated (422) as kube does.
pub fn delete_options(body: &[u8], content_type: &str, q: &Query) -> ApiResult<DeleteOptions> {
    let mut opts = DeleteOptions {
        grace: q.int("gracePeriodSeconds")?,
        dry_run: q.dry_run()?,
        ..Default::default()
    };
    let mut policy = q.get("propagationPolicy").map(str::to_string);
    let mut orphan = q.get("orphanDependents").is_some();
    if !body.is_empty() {
        let bad =
            |m: String| ApiError::bad_request(format!("DeleteOptions cannot be decoded: {m}"));
        let v: Value = match media_type(content_type).as_str() {
            "application/vnd.kubernetes.protobuf" => crate::protobuf::decode_delete_options(body)?,
            "application/yaml" => std::str::from_utf8(body)
                .map_err(|e| e.to_string())
                .and_then(crate::yaml::to_json)
                .map_err(bad)?,
            _ => serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?,
        };
        let Some(m) = v.as_object() else {
            return Err(bad(format!(
                "json: cannot unmarshal {} into Go value of type v1.DeleteOptions",
                json_type(&v)
            )));
        };
        for (field, go) in [
            ("gracePeriodSeconds", "int64"),
            ("propagationPolicy", "string"),
            ("orphanDependents", "bool"),
            ("dryRun", "[]string"),
            ("preconditions", "object"),
        ] {
            let ok = m.get(field).is_none_or(|v| match go {
                "object" => v.is_null() || v.is_object(),
                _ => fits(v, go),
            });
            if !ok {
                return Err(bad(format!("json: cannot unmarshal {} into Go struct field DeleteOptions.{field} of type {go}", json_type(&m[field]))));
            }
        }
        let pre = m.get("preconditions").and_then(Value::as_object);
        for field in ["uid", "resourceVersion"] {
            if let Some(v) = pre
                .and_then(|p| p.get(field))
                .filter(|v| !fits(v, "string"))
            {
                return Err(bad(format!("json: cannot unmarshal {} into Go struct field Preconditions.preconditions.{field} of type string", json_type(v))));
            }
        }
        if let Some(g) = m.get("gracePeriodSeconds").and_then(Value::as_i64) {
            opts.grace = Some(g);
        }
        let pre_str = |f: &str| pre.and_then(|p| p.get(f)?.as_str()).map(str::to_string);
        opts.uid = pre_str("uid");
        opts.resource_version = pre_str("resourceVersion");
        if let Some(p) = m.get("propagationPolicy").and_then(Value::as_str) {
            policy = Some(p.to_string());
        }
        orphan |= m.get("orphanDependents").is_some_and(|v| !v.is_null());
        if let Some(dry) = m.get("dryRun").and_then(Value::as_array) {
            let values: Vec<&str> = dry.iter().filter_map(Value::as_str).collect();
            if values.iter().any(|v| *v != "All") {
                let list: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
                return Err(ApiError::invalid(
                    "DeleteOptions",
                    "meta.k8s.io",
                    "",
                    vec![Cause {
                        reason: "FieldValueNotSupported",
                        field: "dryRun".into(),
                        message: format!(
                            "Unsupported value: []string{{{}}}: supported values: \"All\"",
                            list.join(", ")
                        ),
                    }],
                ));
            }
            opts.dry_run |= !values.is_empty();
        }
    }
    let mut causes = Vec::new();
    if let Some(p) = &policy {
        if orphan {
            causes.push(Cause::invalid(
                "propagationPolicy",
                p,
                "orphanDependents and deletionPropagation cannot be both set",
            ));
        }
        if !matches!(p.as_str(), "Foreground" | "Background" | "Orphan") {
            causes.push(Cause::not_supported(
                "propagationPolicy",
                p,
                &["Foreground", "Background", "Orphan", "nil"],
            ));
        }
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid(
            "DeleteOptions",
            "meta.k8s.io",
            "",
            causes,
        ));
    }
    // kube's BeforeDelete: a negative grace period counts as one second.
    opts.grace = opts.grace.map(|g| if g < 0 { 1 } else { g });
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decode_errors_read_like_kube() {
        let e = decode(b"{\"metadata\":", "application/json", "ConfigMap", None).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(
            e.message.starts_with("the object provided is unrecognized (must be of type ConfigMap): couldn't get version/kind; json parse error: "),
            "{}",
            e.message
        );
        assert!(e.message.ends_with("({\"metadata\":)"), "{}", e.message);
        let e = decode(b"a: b: c", "application/yaml", "Pod", None).unwrap_err();
        assert!(e.message.contains("error converting YAML to JSON: yaml: line 1: mapping values are not allowed in this context (613a20623a2063)"), "{}", e.message);
        assert_eq!(decode(b"", "", "Pod", None).unwrap_err().code, 400);
        assert_eq!(
            decode(b"{}", "text/plain", "Pod", None).unwrap_err().code,
            415
        );
        let v = decode(
            b"kind: Pod\nmetadata: {name: p}\n",
            "application/yaml; charset=utf-8",
            "Pod",
            None,
        )
        .unwrap();
        assert_eq!(v, json!({"kind": "Pod", "metadata": {"name": "p"}}));
    }

    #[test]
    fn names_and_paths() {
        let obj = json!({"metadata": {"name": "a", "namespace": "x"}});
        assert!(check_name(&obj, "a", "x").is_ok());
        assert!(check_name(&obj, "b", "x")
            .unwrap_err()
            .message
            .contains("(a) does not match the name on the URL (b)"));
        assert!(check_name(&obj, "a", "y")
            .unwrap_err()
            .message
            .contains("namespace of the object (x)"));
        assert!(check_name(&json!({}), "a", "")
            .unwrap_err()
            .message
            .contains("undeterminable"));
        assert!(check_path_name("ok").is_ok());
        assert_eq!(
            check_path_name("..").unwrap_err().message,
            "Name parameter invalid: \"..\": may not be '..'"
        );
        assert!(check_path_name("a%b").is_err());
    }

    #[test]
    fn delete_options_are_checked() {
        let q = Query::parse(None);
        let o = delete_options(
            br#"{"gracePeriodSeconds":-5,"preconditions":{"uid":"u"}}"#,
            "",
            &q,
        )
        .unwrap();
        assert_eq!((o.grace, o.uid.as_deref()), (Some(1), Some("u")));
        let e = delete_options(br#"{"gracePeriodSeconds":"x"}"#, "", &q).unwrap_err();
        assert_eq!(e.code, 400);
        let e = delete_options(br#"{"propagationPolicy":"Sideways"}"#, "", &q).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(e.message.starts_with("DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \"Sideways\""), "{}", e.message);
        let e = delete_options(
            br#"{"propagationPolicy":"Orphan","orphanDependents":true}"#,
            "",
            &q,
        )
        .unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(delete_options(b"[1]", "", &q).unwrap_err().code, 400);
        assert_eq!(
            delete_options(br#"{"dryRun":["Some"]}"#, "", &q)
                .unwrap_err()
                .code,
            422
        );
    }
}
