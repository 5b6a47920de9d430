//! A small decoder for Kubernetes protobuf request bodies
//! (`application/vnd.kubernetes.protobuf`), which client-go ≥ 0.32 — and so
//! `kubectl create namespace|configmap|secret|serviceaccount` — sends.
//!
//! The body is the magic `k8s\0` followed by a `runtime.Unknown` envelope
//! (`typeMeta` = 1, `raw` = 2) whose `raw` holds the kind's message from
//! `generated.proto`. Messages are decoded against small field tables
//! written for the kinds below (the fields the `kubectl create` generators
//! and client-go programs set); other kinds answer 415, so clients can be
//! told to use JSON (`kubectl create -f`). Zero scalars and empty messages
//! are dropped, as Go's `omitempty` JSON would, except for pointer fields
//! (`OptInt`, `OptBool`), where a present zero is meaningful.

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::registry::ResourceInfo;
use crate::status::{ApiError, ApiResult};

#[derive(Clone, Copy)]
enum Ty {
    Str,
    Int,
    Bool,
    /// `*int32`/`*int64`: zero is kept.
    OptInt,
    /// `*bool`: false is kept.
    OptBool,
    /// `intstr.IntOrString`.
    IntOrStr,
    /// bytes, rendered as base64 (JSON's form of `[]byte`).
    Bytes,
    Msg(&'static [Field]),
    /// `map<string,string>`.
    StrMap,
    /// `map<string,bytes>`.
    BytesMap,
    /// `metav1.Time` (seconds precision).
    Time,
    /// `metav1.MicroTime`.
    MicroTime,
}

#[derive(Clone, Copy)]
struct Field(u32, &'static str, Ty, bool);

const OWNER_REF: &[Field] = &[
    Field(1, "kind", Ty::Str, false),
    Field(3, "name", Ty::Str, false),
    Field(4, "uid", Ty::Str, false),
    Field(5, "apiVersion", Ty::Str, false),
    Field(6, "controller", Ty::Bool, false),
    Field(7, "blockOwnerDeletion", Ty::Bool, false),
];
const OBJECT_META: &[Field] = &[
    Field(1, "name", Ty::Str, false),
    Field(2, "generateName", Ty::Str, false),
    Field(3, "namespace", Ty::Str, false),
    Field(5, "uid", Ty::Str, false),
    Field(6, "resourceVersion", Ty::Str, false),
    Field(7, "generation", Ty::Int, false),
    Field(8, "creationTimestamp", Ty::Time, false),
    Field(10, "deletionGracePeriodSeconds", Ty::Int, false),
    Field(11, "labels", Ty::StrMap, false),
    Field(12, "annotations", Ty::StrMap, false),
    Field(13, "ownerReferences", Ty::Msg(OWNER_REF), true),
    Field(14, "finalizers", Ty::Str, true),
];
const OBJECT_REF: &[Field] = &[
    Field(1, "kind", Ty::Str, false),
    Field(2, "namespace", Ty::Str, false),
    Field(3, "name", Ty::Str, false),
    Field(4, "uid", Ty::Str, false),
    Field(5, "apiVersion", Ty::Str, false),
    Field(6, "resourceVersion", Ty::Str, false),
    Field(7, "fieldPath", Ty::Str, false),
];
const LOCAL_REF: &[Field] = &[Field(1, "name", Ty::Str, false)];
const NAMESPACE_SPEC: &[Field] = &[Field(1, "finalizers", Ty::Str, true)];
const NAMESPACE: &[Field] = &[
    Field(1, "metadata", Ty::Msg(OBJECT_META), false),
    Field(2, "spec", Ty::Msg(NAMESPACE_SPEC), false),
];
const CONFIGMAP: &[Field] = &[
    Field(1, "metadata", Ty::Msg(OBJECT_META), false),
    Field(2, "data", Ty::StrMap, false),
    Field(3, "binaryData", Ty::BytesMap, false),
    Field(4, "immutable", Ty::OptBool, false),
];
const SECRET: &[Field] = &[
    Field(1, "metadata", Ty::Msg(OBJECT_META), false),
    Field(2, "data", Ty::BytesMap, false),
    Field(3, "type", Ty::Str, false),
    Field(4, "stringData", Ty::StrMap, false),
    Field(5, "immutable", Ty::OptBool, false),
];
const SERVICE_ACCOUNT: &[Field] = &[
    Field(1, "metadata", Ty::Msg(OBJECT_META), false),
    Field(2, "secrets", Ty::Msg(OBJECT_REF), true),
    Field(3, "imagePullSecrets", Ty::Msg(LOCAL_REF), true),
    Field(4, "automountServiceAccountToken", Ty::OptBool, false),
];
const LEASE_SPEC: &[Field] = &[
    Field(1, "holderIdentity", Ty::Str, false),
    Field(2, "leaseDurationSeconds", Ty::OptInt, false),
    Field(3, "acquireTime", Ty::MicroTime, false),
    Field(4, "renewTime", Ty::MicroTime, false),
    Field(5, "leaseTransitions", Ty::OptInt, false),
    Field(6, "strategy", Ty::Str, false),
    Field(7, "preferredHolder", Ty::Str, false),
];
const LEASE: &[Field] = &[
    Field(1, "metadata", Ty::Msg(OBJECT_META), false),
    Field(2, "spec", Ty::Msg(LEASE_SPEC), false),
];
const LSR: &[Field] = &[
    Field(1, "key", Ty::Str, false),
    Field(2, "operator", Ty::Str, false),
    Field(3, "values", Ty::Str, true),
];
const LABEL_SELECTOR: &[Field] = &[
    Field(1, "matchLabels", Ty::StrMap, false),
    Field(2, "matchExpressions", Ty::Msg(LSR), true),
];
const CONTAINER_PORT: &[Field] = &[
    Field(1, "name", Ty::Str, false),
    Field(2, "hostPort", Ty::Int, false),
    Field(3, "containerPort", Ty::Int, false),
    Field(4, "protocol", Ty::Str, false),
    Field(5, "hostIP", Ty::Str, false),
];
const ENV_VAR: &[Field] = &[
    Field(1, "name", Ty::Str, false),
    Field(2, "value", Ty::Str, false),
];
const CONTAINER: &[Field] = &[
    Field(1, "name", Ty::Str, false),
    Field(2, "image", Ty::Str, false),
    Field(3, "command", Ty::Str, true),
    Field(4, "args", Ty::Str, true),
    Field(5, "workingDir", Ty::Str, false),
    Field(6, "ports", Ty::Msg(CONTAINER_PORT), true),
    Field(7, "env", Ty::Msg(ENV_VAR), true),
    Field(13, "terminationMessagePath", Ty::Str, false),
    Field(14, "imagePullPolicy", Ty::Str, false),
    Field(16, "stdin", Ty::Bool, false),
    Field(17, "stdinOnce", Ty::Bool, false),
    Field(18, "tty", Ty::Bool, false),
    Field(20, "terminationMessagePolicy", Ty::Str, false),
];
const POD_SPEC: &[Field] = &[
    Field(2, "containers", Ty::Msg(CONTAINER), true),
    Field(3, "restartPolicy", Ty::Str, false),
    Field(4, "terminationGracePeriodSeconds", Ty::OptInt, false),
    Field(5, "activeDeadlineSeconds", Ty::OptInt, false),
    Field(6, "dnsPolicy", Ty::Str, false),
    Field(7, "nodeSelector", Ty::StrMap, false),
    Field(8, "serviceAccountName", Ty::Str, false),
    Field(9, "serviceAccount", Ty::Str, false),
    Field(10, "nodeName", Ty::Str, false),
    Field(11, "hostNetwork", Ty::Bool, false),
    Field(15, "imagePullSecrets", Ty::Msg(LOCAL_REF), true),
    Field(16, "hostname", Ty::Str, false),
    Field(17, "subdomain", Ty::Str, false),
    Field(19, "schedulerName", Ty::Str, false),
    Field(20, "initContainers", Ty::Msg(CONTAINER), true),
    Field(21, "automountServiceAccountToken", Ty::OptBool, false),
    Field(24, "priorityClassName", Ty::Str, false),
    Field(30, "enableServiceLinks", Ty::OptBool, false),
];
const POD_TEMPLATE: &[Field] = &[
    Field(1, "metadata", Ty::Msg(OBJECT_META), false),
    Field(2, "spec", Ty::Msg(POD_SPEC), false),
];
const POD: &[Field] = &[
    Field(1, "metadata", Ty::Msg(OBJECT_META), false),
    Field(2, "spec", Ty::Msg(POD_SPEC), false),
];
const ROLLING_UPDATE: &[Field] = &[
    Field(1, "maxUnavailable", Ty::IntOrStr, false),
    Field(2, "maxSurge", Ty::IntOrStr, false),
];
const DEPLOYMENT_STRATEGY: &[Field] = &[
    Field(1, "type", Ty::Str, false),
    Field(2, "rollingUpdate", Ty::Msg(ROLLING_UPDATE), false),
];
const DEPLOYMENT_SPEC: &[Field] = &[
    Field(1, "replicas", Ty::OptInt, false),
    Field(2, "selector", Ty::Msg(LABEL_SELECTOR), false),
    Field(3, "template", Ty::Msg(POD_TEMPLATE), false),
    Field(4, "strategy", Ty::Msg(DEPLOYMENT_STRATEGY), false),
    Field(5, "minReadySeconds", Ty::Int, false),
    Field(6, "revisionHistoryLimit", Ty::OptInt, false),
    Field(7, "paused", Ty::Bool, false),
    Field(9, "progressDeadlineSeconds", Ty::OptInt, false),
];
const DEPLOYMENT: &[Field] = &[
    Field(1, "metadata", Ty::Msg(OBJECT_META), false),
    Field(2, "spec", Ty::Msg(DEPLOYMENT_SPEC), false),
];
const SERVICE_PORT: &[Field] = &[
    Field(1, "name", Ty::Str, false),
    Field(2, "protocol", Ty::Str, false),
    Field(3, "port", Ty::Int, false),
    Field(4, "targetPort", Ty::IntOrStr, false),
    Field(5, "nodePort", Ty::Int, false),
    Field(6, "appProtocol", Ty::Str, false),
];
const SERVICE_SPEC: &[Field] = &[
    Field(1, "ports", Ty::Msg(SERVICE_PORT), true),
    Field(2, "selector", Ty::StrMap, false),
    Field(3, "clusterIP", Ty::Str, false),
    Field(4, "type", Ty::Str, false),
    Field(5, "externalIPs", Ty::Str, true),
    Field(7, "sessionAffinity", Ty::Str, false),
    Field(10, "externalName", Ty::Str, false),
    Field(17, "ipFamilyPolicy", Ty::Str, false),
    Field(18, "clusterIPs", Ty::Str, true),
    Field(19, "ipFamilies", Ty::Str, true),
    Field(22, "internalTrafficPolicy", Ty::Str, false),
];
const SERVICE: &[Field] = &[
    Field(1, "metadata", Ty::Msg(OBJECT_META), false),
    Field(2, "spec", Ty::Msg(SERVICE_SPEC), false),
];
const JOB_SPEC: &[Field] = &[
    Field(1, "parallelism", Ty::OptInt, false),
    Field(2, "completions", Ty::OptInt, false),
    Field(3, "activeDeadlineSeconds", Ty::OptInt, false),
    Field(4, "selector", Ty::Msg(LABEL_SELECTOR), false),
    Field(5, "manualSelector", Ty::OptBool, false),
    Field(6, "template", Ty::Msg(POD_TEMPLATE), false),
    Field(7, "backoffLimit", Ty::OptInt, false),
    Field(8, "ttlSecondsAfterFinished", Ty::OptInt, false),
    Field(9, "completionMode", Ty::Str, false),
    Field(10, "suspend", Ty::OptBool, false),
];
const JOB: &[Field] = &[
    Field(1, "metadata", Ty::Msg(OBJECT_META), false),
    Field(2, "spec", Ty::Msg(JOB_SPEC), false),
];
const PRECONDITIONS: &[Field] = &[
    Field(1, "uid", Ty::Str, false),
    Field(2, "resourceVersion", Ty::Str, false),
];
const DELETE_OPTIONS: &[Field] = &[
    Field(1, "gracePeriodSeconds", Ty::OptInt, false),
    Field(2, "preconditions", Ty::Msg(PRECONDITIONS), false),
    Field(3, "orphanDependents", Ty::OptBool, false),
    Field(4, "propagationPolicy", Ty::Str, false),
    Field(5, "dryRun", Ty::Str, true),
];
const TYPE_META: &[Field] = &[
    Field(1, "apiVersion", Ty::Str, false),
    Field(2, "kind", Ty::Str, false),
];
const UNKNOWN: &[Field] = &[
    Field(1, "typeMeta", Ty::Msg(TYPE_META), false),
    Field(2, "raw", Ty::Bytes, false),
];

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

type R<T> = Result<T, String>;

impl<'a> Reader<'a> {
    fn varint(&mut self) -> R<u64> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err("varint too long".into())
    }

    fn bytes(&mut self) -> R<&'a [u8]> {
        let len = self.varint()? as usize;
        let end = self
            .pos
            .checked_add(len)
            .filter(|e| *e <= self.buf.len())
            .ok_or("truncated field")?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn skip(&mut self, wire: u64) -> R<()> {
        let n = match wire {
            0 => return self.varint().map(|_| ()),
            1 => 8,
            2 => return self.bytes().map(|_| ()),
            5 => 4,
            _ => return Err(format!("unsupported wire type {wire}")),
        };
        if self.pos + n > self.buf.len() {
            return Err("truncated field".into());
        }
        self.pos += n;
        Ok(())
    }
}

fn utf8(b: &[u8]) -> R<String> {
    String::from_utf8(b.to_vec()).map_err(|_| "invalid UTF-8 in string field".to_string())
}

fn time(b: &[u8], micro: bool) -> R<Value> {
    let m = message(
        b,
        &[Field(1, "s", Ty::Int, false), Field(2, "n", Ty::Int, false)],
    )?;
    let secs = m.get("s").and_then(Value::as_i64).unwrap_or(0);
    let nanos = m.get("n").and_then(Value::as_i64).unwrap_or(0) as u32;
    if secs == 0 && nanos == 0 {
        return Ok(Value::Null);
    }
    let t = chrono::DateTime::from_timestamp(secs, nanos).ok_or("time out of range")?;
    Ok(json!(if micro {
        t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    }))
}

fn int_or_string(b: &[u8]) -> R<Value> {
    let m = message(
        b,
        &[
            Field(1, "t", Ty::OptInt, false),
            Field(2, "i", Ty::OptInt, false),
            Field(3, "s", Ty::Str, false),
        ],
    )?;
    Ok(if m.get("t").and_then(Value::as_i64) == Some(1) {
        m.get("s").cloned().unwrap_or(json!(""))
    } else {
        m.get("i").cloned().unwrap_or(json!(0))
    })
}

fn map_entry(b: &[u8], bytes_value: bool) -> R<(String, Value)> {
    let m = message(
        b,
        &[
            Field(1, "k", Ty::Str, false),
            Field(2, "v", if bytes_value { Ty::Bytes } else { Ty::Str }, false),
        ],
    )?;
    let k = m.get("k").and_then(Value::as_str).unwrap_or("").to_string();
    Ok((k, m.get("v").cloned().unwrap_or(json!(""))))
}

fn message(buf: &[u8], schema: &[Field]) -> R<Map<String, Value>> {
    let mut r = Reader { buf, pos: 0 };
    let mut out = Map::new();
    while r.pos < buf.len() {
        let tag = r.varint()?;
        let (num, wire) = ((tag >> 3) as u32, tag & 7);
        let Some(&Field(_, name, ty, repeated)) = schema.iter().find(|f| f.0 == num) else {
            r.skip(wire)?;
            continue;
        };
        let value = match ty {
            Ty::Int | Ty::OptInt => json!(r.varint()? as i64),
            Ty::Bool | Ty::OptBool => json!(r.varint()? != 0),
            Ty::Str => json!(utf8(r.bytes()?)?),
            Ty::IntOrStr => int_or_string(r.bytes()?)?,
            Ty::Bytes => json!(base64::engine::general_purpose::STANDARD.encode(r.bytes()?)),
            Ty::Msg(inner) => Value::Object(message(r.bytes()?, inner)?),
            Ty::Time => time(r.bytes()?, false)?,
            Ty::MicroTime => time(r.bytes()?, true)?,
            Ty::StrMap | Ty::BytesMap => {
                let (k, v) = map_entry(r.bytes()?, matches!(ty, Ty::BytesMap))?;
                let slot = out.entry(name.to_string()).or_insert_with(|| json!({}));
                if let Some(m) = slot.as_object_mut() {
                    m.insert(k, v);
                }
                continue;
            }
        };
        let zero = value.is_null()
            || matches!(&value, Value::String(s) if s.is_empty())
            || (matches!(ty, Ty::Int) && value == json!(0))
            || (matches!(ty, Ty::Bool) && value == json!(false))
            || matches!(&value, Value::Object(m) if m.is_empty());
        if zero && !repeated {
            continue;
        }
        if repeated {
            let slot = out.entry(name.to_string()).or_insert_with(|| json!([]));
            if let Some(a) = slot.as_array_mut() {
                a.push(value);
            }
        } else {
            out.insert(name.to_string(), value);
        }
    }
    Ok(out)
}

fn envelope(body: &[u8]) -> R<(String, String, Vec<u8>)> {
    let rest = body
        .strip_prefix(b"k8s\0")
        .ok_or("missing the k8s protobuf magic prefix")?;
    let env = Value::Object(message(rest, UNKNOWN)?);
    let av = env
        .pointer("/typeMeta/apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let kind = env
        .pointer("/typeMeta/kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let raw = env
        .get("raw")
        .and_then(Value::as_str)
        .map(|s| {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .unwrap_or_default()
        })
        .unwrap_or_default();
    Ok((av, kind, raw))
}

/// Decodes a protobuf body for `info`'s kind into its JSON form.
pub fn decode(body: &[u8], info: &ResourceInfo) -> ApiResult<Value> {
    let schema = match (info.group, info.kind) {
        ("", "Namespace") => NAMESPACE,
        ("", "ConfigMap") => CONFIGMAP,
        ("", "Secret") => SECRET,
        ("", "ServiceAccount") => SERVICE_ACCOUNT,
        ("coordination.k8s.io", "Lease") => LEASE,
        ("", "Pod") => POD,
        ("", "Service") => SERVICE,
        ("apps", "Deployment") => DEPLOYMENT,
        ("batch", "Job") => JOB,
        _ => {
            return Err(ApiError::unsupported_media_type(&format!(
                "application/json, application/yaml (protobuf is not decoded for {}; send JSON, e.g. kubectl create -f)",
                info.kind
            )))
        }
    };
    let bad = |m: String| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {m}",
            info.kind, info.version, info.kind
        ))
    };
    let (av, kind, raw) = envelope(body).map_err(bad)?;
    let mut obj = message(&raw, schema).map_err(bad)?;
    obj.insert(
        "apiVersion".into(),
        json!(if av.is_empty() {
            info.api_version()
        } else {
            av
        }),
    );
    obj.insert(
        "kind".into(),
        json!(if kind.is_empty() {
            info.kind.to_string()
        } else {
            kind
        }),
    );
    Ok(Value::Object(obj))
}

/// Decodes a protobuf `DeleteOptions` body.
pub fn decode_delete_options(body: &[u8]) -> ApiResult<Value> {
    let (_, _, raw) = envelope(body).map_err(ApiError::bad_request)?;
    message(&raw, DELETE_OPTIONS)
        .map(Value::Object)
        .map_err(ApiError::bad_request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(num: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![((num << 3) | 2) as u8, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_a_namespace_like_kubectl_sends() {
        let meta = field(1, b"dev");
        let ns = field(1, &meta);
        let mut tm = field(1, b"v1");
        tm.extend(field(2, b"Namespace"));
        let mut env = field(1, &tm);
        env.extend(field(2, &ns));
        let mut body = b"k8s\0".to_vec();
        body.extend(env);
        let v = decode(&body, &crate::registry::core::NAMESPACE_INFO).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "dev"}})
        );
        assert!(decode(b"nope", &crate::registry::core::NAMESPACE_INFO).is_err());
    }

    #[test]
    fn decodes_maps_and_repeated() {
        let mut entry = field(1, b"a");
        entry.extend(field(2, b"1"));
        let mut cm = field(2, &entry);
        cm.extend(field(1, &field(14, b"f")));
        let m = message(&cm, CONFIGMAP).unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"data": {"a": "1"}, "metadata": {"finalizers": ["f"]}})
        );
        assert!(message(&[0x0a, 0x05, 1], CONFIGMAP).is_err());
    }

    #[test]
    fn int_or_string_and_omitempty() {
        let varint = |num: u32, v: u8| vec![(num << 3) as u8, v];
        // ServicePort{name: "", port: 80, targetPort: {type: 0, intVal: 8080}}
        let mut target = varint(1, 0);
        target.extend([2 << 3, 0x90, 0x3f]);
        let mut port = field(1, b"");
        port.extend(varint(3, 80));
        port.extend(field(4, &target));
        let spec = message(&field(1, &port), SERVICE_SPEC).unwrap();
        assert_eq!(
            Value::Object(spec),
            json!({"ports": [{"port": 80, "targetPort": 8080}]})
        );
        // A pointer field keeps its zero; a plain one drops it.
        let m = message(&[varint(1, 0), varint(5, 0)].concat(), DEPLOYMENT_SPEC).unwrap();
        assert_eq!(Value::Object(m), json!({"replicas": 0}));
    }
}
