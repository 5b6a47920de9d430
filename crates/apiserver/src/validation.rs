//! Name and metadata validation with kube's exact wording
//! (apimachinery `util/validation`, `api/validation/objectmeta.go`).

use serde_json::Value;

use crate::selectors::valid_label_value;
use crate::status::Cause;

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

/// Which rule object names of a kind must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain (most kinds).
    Subdomain,
    /// RFC 1123 label (namespaces, ...).
    Label,
    /// RFC 1035 label (services).
    Dns1035,
    /// Any name that is a valid path segment (events, leases use subdomain
    /// too in kube, kept for completeness).
    PathSegment,
}

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && !s.is_empty() && s.split('.').all(is_label)
}

/// RFC 1123 label.
pub fn is_dns1123_label(s: &str) -> bool {
    is_label(s)
}

/// Checks `name` against `rule`; returns the kube detail messages.
pub fn name_errors(rule: NameRule, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    match rule {
        NameRule::Subdomain => {
            if name.len() > 253 {
                out.push("must be no more than 253 characters".to_string());
            }
            if !name.split('.').all(|l| {
                let b = l.as_bytes();
                !b.is_empty()
                    && b[0].is_ascii_alphanumeric()
                    && b[b.len() - 1].is_ascii_alphanumeric()
                    && b.iter()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            }) {
                out.push(SUBDOMAIN_MSG.to_string());
            }
        }
        NameRule::Label | NameRule::Dns1035 => {
            if name.len() > 63 {
                out.push("must be no more than 63 characters".to_string());
            }
            let b = name.as_bytes();
            let chars_ok = b
                .iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
            let first_ok = match rule {
                NameRule::Dns1035 => b.first().is_some_and(|c| c.is_ascii_lowercase()),
                _ => b.first().is_some_and(|c| c.is_ascii_alphanumeric()),
            };
            let last_ok = b.last().is_some_and(|c| c.is_ascii_alphanumeric());
            if !(chars_ok && first_ok && last_ok) {
                out.push(
                    if rule == NameRule::Dns1035 {
                        DNS1035_MSG
                    } else {
                        LABEL_MSG
                    }
                    .to_string(),
                );
            }
        }
        NameRule::PathSegment => {
            if name == "." || name == ".." {
                out.push(format!("may not be '{name}'"));
            }
            if name.contains('/') || name.contains('%') {
                out.push("may not contain '/' or '%'".to_string());
            }
        }
    }
    out
}

/// Validates `metadata` of an object about to be stored: name,
/// namespace, labels and annotations keys/values.
pub fn validate_meta(obj: &Value, rule: NameRule, namespaced: bool) -> Vec<Cause> {
    let mut causes = Vec::new();
    let meta = obj.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if name.is_empty() {
        causes.push(Cause::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        for msg in name_errors(rule, name) {
            causes.push(Cause::invalid("metadata.name", name, &msg));
        }
    }
    let ns = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if namespaced && ns.is_empty() {
        causes.push(Cause::required("metadata.namespace", ""));
    }
    if !namespaced && !ns.is_empty() {
        causes.push(Cause::forbidden(
            "metadata.namespace",
            "not allowed on this type",
        ));
    }
    if let Some(labels) = meta.and_then(|m| m.get("labels")) {
        match labels.as_object() {
            Some(map) => {
                for (k, v) in map {
                    if !qualified_name_ok(k) {
                        causes.push(Cause::invalid("metadata.labels", k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"));
                    }
                    match v.as_str() {
                        Some(s) if valid_label_value(s) => {}
                        Some(s) => {
                            causes.push(Cause::invalid("metadata.labels", s, LABEL_VALUE_MSG))
                        }
                        None => causes.push(Cause::invalid(
                            "metadata.labels",
                            &v.to_string(),
                            "must be a string",
                        )),
                    }
                }
            }
            None if labels.is_null() => {}
            None => causes.push(Cause::invalid(
                "metadata.labels",
                &labels.to_string(),
                "must be a map of strings",
            )),
        }
    }
    if let Some(ann) = meta.and_then(|m| m.get("annotations")) {
        match ann.as_object() {
            Some(map) => {
                for (k, v) in map {
                    if !qualified_name_ok(k) {
                        causes.push(Cause::invalid("metadata.annotations", k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
                    }
                    if !v.is_string() {
                        causes.push(Cause::invalid(
                            "metadata.annotations",
                            &v.to_string(),
                            "must be a string",
                        ));
                    }
                }
            }
            None if ann.is_null() => {}
            None => causes.push(Cause::invalid(
                "metadata.annotations",
                &ann.to_string(),
                "must be a map of strings",
            )),
        }
    }
    // kube's ValidateOwnerReferences (field types were checked at decode).
    let refs = meta
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array);
    for r in refs.into_iter().flatten() {
        let field = |f: &str| r.get(f).and_then(Value::as_str).unwrap_or("");
        let version = field("apiVersion").rsplit('/').next().unwrap_or("");
        for (f, empty, msg) in [
            (
                "apiVersion",
                version.is_empty(),
                "version must not be empty",
            ),
            ("kind", field("kind").is_empty(), "kind must not be empty"),
            ("name", field("name").is_empty(), "name must not be empty"),
            ("uid", field("uid").is_empty(), "uid must not be empty"),
        ] {
            if empty {
                causes.push(Cause::invalid(
                    format!("metadata.ownerReferences.{f}"),
                    field(f),
                    msg,
                ));
            }
        }
    }
    if let Some(f) = meta.and_then(|m| m.get("finalizers")) {
        let ok = f.is_null()
            || f.as_array()
                .is_some_and(|a| a.iter().all(|x| x.as_str().is_some_and(|s| !s.is_empty())));
        if !ok {
            causes.push(Cause::invalid(
                "metadata.finalizers",
                &f.to_string(),
                "must be a list of non-empty strings",
            ));
        }
    }
    causes
}

/// A qualified name (`[prefix/]name`) as used for label and annotation keys.
pub fn qualified_name_ok(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if !is_dns1123_subdomain(p) {
            return false;
        }
    }
    !name.is_empty() && valid_label_value(name)
}

/// Requires `path` (dot-separated) to be a non-negative integer if present.
pub fn non_negative_int(obj: &Value, path: &str, causes: &mut Vec<Cause>) {
    let mut cur = obj;
    for part in path.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return,
        }
    }
    if cur.is_null() {
        return;
    }
    match cur.as_i64() {
        Some(n) if n >= 0 => {}
        Some(n) => causes.push(Cause::invalid(
            path,
            &n.to_string(),
            "must be greater than or equal to 0",
        )),
        None => causes.push(Cause::invalid(path, &cur.to_string(), "must be an integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names() {
        assert!(name_errors(NameRule::Subdomain, "a.b-c").is_empty());
        assert_eq!(
            name_errors(NameRule::Subdomain, "Bad_Name"),
            vec![SUBDOMAIN_MSG.to_string()]
        );
        assert!(!name_errors(NameRule::Label, "a.b").is_empty());
        assert!(!name_errors(NameRule::Dns1035, "1abc").is_empty());
        assert!(name_errors(NameRule::Label, "1abc").is_empty());
        assert!(!name_errors(NameRule::Label, &"a".repeat(64)).is_empty());
    }

    #[test]
    fn meta() {
        let ok = json!({"metadata": {"name": "a", "namespace": "d", "labels": {"app": "x"}}});
        assert!(validate_meta(&ok, NameRule::Subdomain, true).is_empty());
        let bad = json!({"metadata": {"name": "A", "labels": {"app": "bad value"}}});
        let causes = validate_meta(&bad, NameRule::Subdomain, true);
        assert_eq!(causes.len(), 3, "{causes:?}");
        let owned = json!({"metadata": {"name": "a", "namespace": "d",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs"}]}});
        let causes = validate_meta(&owned, NameRule::Subdomain, true);
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(causes[0].field, "metadata.ownerReferences.uid");
    }
}
