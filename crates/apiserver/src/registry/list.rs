//! Reads for any kind: GET of one key, and LIST as one range read pinned to a revision, paged with
//! `limit`/`continue` (kube's continue tokens), filtered by label and field
//! selectors; filtered pages read on until the page is full.

use serde_json::Value;

use super::generic::{parse_rv, storage_error, Registry};
use super::Strategy;
use crate::object;
use crate::paging;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult};
use crate::storage::{StorageError, Stored};

/// Parsed list parameters.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
    /// `limit` (0: no limit).
    pub limit: i64,
    /// `continue`.
    pub continue_token: String,
    /// `resourceVersion`.
    pub resource_version: String,
    /// `resourceVersionMatch`.
    pub resource_version_match: String,
}

/// One answered list.
#[derive(Debug, Clone)]
pub struct ListResult {
    /// Matching objects in key order.
    pub items: Vec<Value>,
    /// The revision the list was read at.
    pub revision: i64,
    /// Token for the next page (empty when complete).
    pub continue_token: String,
    /// `remainingItemCount` (only without selectors).
    pub remaining: Option<i64>,
}

impl Registry {
    /// Rejects field selectors the kind does not support (400, as kube).
    pub fn check_fields(&self, s: &dyn Strategy, fields: &FieldSelector) -> ApiResult<()> {
        for r in &fields.reqs {
            let known = matches!(r.field.as_str(), "metadata.name" | "metadata.namespace")
                || s.field(&Value::Null, &r.field).is_some();
            if !known {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {}",
                    r.field
                )));
            }
        }
        Ok(())
    }

    /// Whether `obj` matches the label and field selectors.
    pub fn matches(
        s: &dyn Strategy,
        obj: &Value,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> bool {
        (labels.is_empty() || labels.matches(&object::labels(obj)))
            && (fields.is_empty()
                || fields.matches(|f| match f {
                    "metadata.name" => Some(object::name(obj).to_string()),
                    "metadata.namespace" => Some(object::namespace(obj).to_string()),
                    other => s.field(obj, other).flatten(),
                }))
    }

    /// GET one object.
    pub async fn get(&self, s: &dyn Strategy, ns: &str, name: &str) -> ApiResult<Stored> {
        let info = s.info();
        match self.storage().get(&self.key(info, ns, name)).await {
            Ok(Some(st)) => Ok(st),
            Ok(None) => Err(ApiError::not_found(info.resource, info.group, name)),
            Err(e) => Err(storage_error(info, name, e)),
        }
    }

    /// LIST at one revision, paged and filtered.
    pub async fn list(
        &self,
        s: &dyn Strategy,
        ns: &str,
        opts: &ListOptions,
    ) -> ApiResult<ListResult> {
        let info = s.info();
        self.check_fields(s, &opts.fields)?;
        let prefix = self.collection_prefix(info, ns);
        let mut revision = 0i64;
        let mut start = String::new();
        let from_token = !opts.continue_token.is_empty();
        if from_token {
            if !opts.resource_version.is_empty() && opts.resource_version != "0" {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            let c = paging::decode(&opts.continue_token).map_err(ApiError::bad_request)?;
            revision = c.revision.max(0);
            start = format!("{prefix}{}", c.start);
        } else if opts.resource_version_match == "Exact" {
            revision = parse_rv(&opts.resource_version)?;
            if revision == 0 {
                return Err(ApiError::bad_request("resourceVersionMatch: Forbidden: resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\""));
            }
        } else if !matches!(opts.resource_version_match.as_str(), "" | "NotOlderThan") {
            return Err(ApiError::bad_request(format!("resourceVersionMatch: Unsupported value: {:?}: supported values: \"Exact\", \"NotOlderThan\"", opts.resource_version_match)));
        } else if !opts.resource_version.is_empty() {
            parse_rv(&opts.resource_version)?;
        }
        let filtered = !opts.labels.is_empty() || !opts.fields.is_empty();
        let limit = opts.limit.max(0);
        let mut items = Vec::new();
        let mut chunk = if limit > 0 { limit } else { 0 };
        let mut next_key = String::new();
        let mut remaining = None;
        loop {
            let page = match self.storage().list(&prefix, &start, revision, chunk).await {
                Ok(p) => p,
                Err(StorageError::Compacted { .. }) if from_token => {
                    let fresh = paging::encode(&prefix, &start, -1);
                    let mut e = ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.");
                    e.continue_token = Some(fresh);
                    return Err(e);
                }
                Err(StorageError::FutureRevision) => {
                    return Err(ApiError::timeout(format!(
                        "Too large resource version: {revision}"
                    )));
                }
                Err(e) => return Err(storage_error(info, "", e)),
            };
            revision = page.revision;
            let page_len = page.items.len();
            let mut stopped_at = None;
            for (i, (key, st)) in page.items.into_iter().enumerate() {
                if !filtered || Self::matches(s, &st.object, &opts.labels, &opts.fields) {
                    items.push(st.object);
                }
                if limit > 0 && items.len() as i64 >= limit {
                    next_key = format!("{key}\u{0}");
                    stopped_at = Some(i);
                    break;
                }
                start = format!("{key}\u{0}");
            }
            if let Some(i) = stopped_at {
                let left_in_page = (page_len - i - 1) as i64;
                if left_in_page == 0 && !page.more {
                    next_key.clear();
                } else if !filtered {
                    remaining = Some(left_in_page + page.remaining);
                }
                break;
            }
            if !page.more {
                break;
            }
            // Filtering left the page short: read on with a larger chunk.
            chunk = (chunk * 2).clamp(1, 10_000);
        }
        let continue_token = if next_key.is_empty() {
            String::new()
        } else {
            paging::encode(&prefix, &next_key, revision)
        };
        Ok(ListResult {
            items,
            revision,
            continue_token,
            remaining: remaining.filter(|r| *r > 0),
        })
    }
}
