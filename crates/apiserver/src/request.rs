//! Request parsing: the query string (with Go-style booleans), the
//! resource path (`/api/v1/namespaces/ns/pods/name/status`), and the
//! content negotiation the facade needs (Table, aggregated discovery).

use std::collections::HashMap;

use percent_encoding::percent_decode_str;

use crate::status::{ApiError, ApiResult};
use crate::table::IncludeObject;

/// Decoded query parameters (the first value of each name wins).
#[derive(Debug, Clone, Default)]
pub struct Query {
    map: HashMap<String, String>,
}

fn decode(s: &str) -> String {
    let plus = s.replace('+', " ");
    percent_decode_str(&plus).decode_utf8_lossy().into_owned()
}

impl Query {
    /// Parses a raw query string.
    pub fn parse(raw: Option<&str>) -> Self {
        let mut map = HashMap::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.entry(decode(k)).or_insert_with(|| decode(v));
        }
        Query { map }
    }

    /// A parameter's value (None when absent).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(String::as_str)
    }

    /// A parameter's value or the empty string.
    pub fn str(&self, name: &str) -> String {
        self.get(name).unwrap_or("").to_string()
    }

    /// A boolean as apimachinery converts it: false only when absent,
    /// `0` or `false` (any case); anything else, even empty, is true.
    pub fn bool(&self, name: &str) -> bool {
        self.opt_bool(name).unwrap_or(false)
    }

    /// Like [`Query::bool`], but None when absent.
    pub fn opt_bool(&self, name: &str) -> Option<bool> {
        self.get(name)
            .map(|v| !(v == "0" || v.eq_ignore_ascii_case("false")))
    }

    /// An integer parameter (None when absent; 400 when malformed).
    pub fn int(&self, name: &str) -> ApiResult<Option<i64>> {
        match self.get(name) {
            None | Some("") => Ok(None),
            Some(v) => v.parse::<i64>().map(Some).map_err(|_| {
                ApiError::bad_request(format!(
                    "invalid value {v:?} for query parameter {name}: must be an integer"
                ))
            }),
        }
    }

    /// `dryRun=All` (any other value is a 400, as kube).
    pub fn dry_run(&self) -> ApiResult<bool> {
        match self.get("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(v) => Err(ApiError::bad_request(format!(
                "Invalid value: {v:?}: supported values: \"All\""
            ))),
        }
    }

    /// `fieldValidation=Strict` (Ignore, Warn and absent are lenient).
    pub fn strict(&self) -> ApiResult<bool> {
        match self.get("fieldValidation") {
            None | Some("") | Some("Ignore") | Some("Warn") => Ok(false),
            Some("Strict") => Ok(true),
            Some(v) => Err(ApiError::bad_request(format!("fieldValidation: Unsupported value: {v:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""))),
        }
    }
}

/// The parts of a resource URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath {
    /// API group (`""` for `/api/v1`).
    pub group: String,
    /// API version.
    pub version: String,
    /// Namespace (empty for cluster-scoped or all-namespaces).
    pub namespace: String,
    /// Plural resource name.
    pub resource: String,
    /// Object name, if addressed.
    pub name: Option<String>,
    /// Subresource, if addressed.
    pub subresource: Option<String>,
}

/// Parses `/api/v1/...` and `/apis/<g>/<v>/...` resource paths; None for
/// anything else (discovery paths are handled before). As in Go, the path
/// is percent-decoded before it is split, so `%2F` separates segments.
pub fn parse_resource_path(path: &str) -> Option<ResourcePath> {
    let decoded = percent_decode_str(path).decode_utf8_lossy();
    let segs: Vec<String> = decoded
        .trim_matches('/')
        .split('/')
        .map(str::to_string)
        .collect();
    let (group, version, rest) = match segs.first().map(String::as_str) {
        Some("api") if segs.len() >= 3 => (String::new(), segs[1].clone(), &segs[2..]),
        Some("apis") if segs.len() >= 4 => (segs[1].clone(), segs[2].clone(), &segs[3..]),
        _ => return None,
    };
    if rest.iter().any(|s| s.is_empty()) {
        return None;
    }
    let mut p = ResourcePath {
        group,
        version,
        namespace: String::new(),
        resource: String::new(),
        name: None,
        subresource: None,
    };
    let namespaced_form = rest.len() >= 3
        && rest[0] == "namespaces"
        && !(rest.len() == 3 && matches!(rest[2].as_str(), "status" | "finalize"));
    let tail = if namespaced_form {
        p.namespace = rest[1].clone();
        &rest[2..]
    } else {
        rest
    };
    match tail {
        [r] => p.resource = r.clone(),
        [r, n] => {
            p.resource = r.clone();
            p.name = Some(n.clone());
        }
        [r, n, s] => {
            p.resource = r.clone();
            p.name = Some(n.clone());
            p.subresource = Some(s.clone());
        }
        _ => return None,
    }
    Some(p)
}

/// What the Accept header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Plain JSON objects and lists.
    Json,
    /// `as=Table;g=meta.k8s.io` (v1 or v1beta1).
    Table,
}

/// Reads the Accept header (Table wins when offered; protobuf and other
/// types fall back to JSON, which clients list too).
pub fn accept(header: &str) -> Accept {
    for part in header.split(',') {
        let p: String = part.chars().filter(|c| !c.is_whitespace()).collect();
        if p.contains("as=Table") && p.contains("g=meta.k8s.io") {
            return Accept::Table;
        }
    }
    Accept::Json
}

/// `includeObject` for Table answers.
pub fn include_object(q: &Query) -> ApiResult<IncludeObject> {
    IncludeObject::parse(q.get("includeObject").unwrap_or("")).map_err(ApiError::bad_request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        let q = Query::parse(Some(
            "watch=True&labelSelector=app%3Dweb%2Ctier+in+(a)&limit=5&x=0&e",
        ));
        assert!(q.bool("watch"));
        assert!(!q.bool("x"));
        assert!(q.bool("e"));
        assert!(!q.bool("absent"));
        assert_eq!(q.str("labelSelector"), "app=web,tier in (a)");
        assert_eq!(q.int("limit").unwrap(), Some(5));
        assert!(Query::parse(Some("limit=x")).int("limit").is_err());
    }

    #[test]
    fn paths() {
        let p = parse_resource_path("/api/v1/namespaces/default/pods/p1/status").unwrap();
        assert_eq!(
            (
                p.namespace.as_str(),
                p.resource.as_str(),
                p.name.as_deref(),
                p.subresource.as_deref()
            ),
            ("default", "pods", Some("p1"), Some("status"))
        );
        let p = parse_resource_path("/api/v1/namespaces/dev").unwrap();
        assert_eq!(
            (p.resource.as_str(), p.name.as_deref()),
            ("namespaces", Some("dev"))
        );
        let p = parse_resource_path("/api/v1/namespaces/dev/finalize").unwrap();
        assert_eq!(
            (
                p.resource.as_str(),
                p.name.as_deref(),
                p.subresource.as_deref()
            ),
            ("namespaces", Some("dev"), Some("finalize"))
        );
        let p = parse_resource_path("/api/v1/namespaces/dev/configmaps").unwrap();
        assert_eq!(
            (p.namespace.as_str(), p.resource.as_str(), p.name),
            ("dev", "configmaps", None)
        );
        let p = parse_resource_path("/apis/apps/v1/deployments").unwrap();
        assert_eq!(
            (p.group.as_str(), p.resource.as_str()),
            ("apps", "deployments")
        );
        assert!(parse_resource_path("/apis/apps").is_none());
        let p = parse_resource_path("/api/v1/namespaces/d/configmaps/a%2Fb").unwrap();
        assert_eq!(
            (p.name.as_deref(), p.subresource.as_deref()),
            (Some("a"), Some("b"))
        );
        let p = parse_resource_path("/api/v1/namespaces/d/configmaps/a+b").unwrap();
        assert_eq!(p.name.as_deref(), Some("a+b"));
        assert!(parse_resource_path("/api/v1/namespaces/a/pods/b/c/d").is_none());
    }

    #[test]
    fn accept_table() {
        assert_eq!(accept("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"), Accept::Table);
        assert_eq!(accept("application/json, */*"), Accept::Json);
    }
}
