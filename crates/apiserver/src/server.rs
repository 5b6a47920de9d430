//! The HTTP front: one axum fallback handler that routes kube-style paths
//! to discovery, the generic registry and watches, and renders answers as
//! JSON objects, lists or Tables (errors as `metav1.Status`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, Method, StatusCode};
use serde_json::{json, Value};

use crate::discovery;
use crate::lifecycle;
use crate::object;
use crate::patch::PatchType;
use crate::registry::apps::to_scale;
use crate::registry::generic::{
    DeleteOptions, Deleted, ListOptions, Registry, Target, WriteOptions,
};
use crate::registry::Strategy;
use crate::request::{accept, include_object, parse_resource_path, Accept, Query, ResourcePath};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult};
use crate::table;
use crate::watch::{self, WatchParams};

/// The largest request body accepted (kube's limit is 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// State shared by all requests.
pub struct AppState {
    /// The registry over the store.
    pub registry: Arc<Registry>,
    /// The shared per-resource watches.
    pub watch_cache: crate::watchcache::WatchCaches,
    /// Flips to true on shutdown (ends watches).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// Builds the router.
pub fn router(state: Arc<AppState>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(state)
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> &str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

async fn handle(State(app): State<Arc<AppState>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = Query::parse(req.uri().query());
    let headers = req.headers().clone();
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return ApiError::new_too_large().into_response(),
    };
    let result = route(&app, &method, &path, &query, &headers, body).await;
    let resp = result.unwrap_or_else(|e| e.into_response());
    tracing::debug!(%method, %path, status = resp.status().as_u16(), "request");
    resp
}

impl ApiError {
    fn new_too_large() -> Self {
        let mut e = ApiError::bad_request("the request body is too large");
        e.code = 413;
        e.reason = "RequestEntityTooLarge";
        e
    }
}

async fn route(
    app: &AppState,
    method: &Method,
    path: &str,
    q: &Query,
    headers: &HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let kinds = app.registry.kinds();
    let accept_hdr = header_str(headers, header::ACCEPT);
    let trimmed = path.trim_end_matches('/');
    if method == Method::GET {
        match trimmed {
            "/version" => return Ok(json_response(StatusCode::OK, &discovery::version())),
            "/healthz" | "/livez" | "/readyz" => return Ok((StatusCode::OK, "ok").into_response()),
            "/api" | "/apis" => {
                let core = trimmed == "/api";
                if let Some(ct) = discovery::aggregated_accept(accept_hdr) {
                    let doc = discovery::aggregated(kinds, core, ct);
                    return Ok((
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, ct)],
                        doc.to_string(),
                    )
                        .into_response());
                }
                let host = header_str(headers, header::HOST);
                let doc = if core {
                    discovery::api_versions(host)
                } else {
                    discovery::api_group_list(kinds)
                };
                return Ok(json_response(StatusCode::OK, &doc));
            }
            "/api/v1" => {
                return discovery::resource_list(kinds, "", "v1")
                    .map(|d| json_response(StatusCode::OK, &d))
                    .ok_or_else(ApiError::path_not_found)
            }
            "/openapi/v3" => {
                return Ok(json_response(
                    StatusCode::OK,
                    &discovery::openapi_index(kinds),
                ))
            }
            _ => {}
        }
        if let Some(gv) = trimmed.strip_prefix("/openapi/v3/") {
            return discovery::openapi_group_version(kinds, gv)
                .map(|d| json_response(StatusCode::OK, &d))
                .ok_or_else(ApiError::path_not_found);
        }
        let segs: Vec<&str> = trimmed.trim_start_matches('/').split('/').collect();
        match segs.as_slice() {
            ["apis", g] => {
                return discovery::group_doc(kinds, g)
                    .map(|d| json_response(StatusCode::OK, &d))
                    .ok_or_else(ApiError::path_not_found)
            }
            ["apis", g, v] => {
                return discovery::resource_list(kinds, g, v)
                    .map(|d| json_response(StatusCode::OK, &d))
                    .ok_or_else(ApiError::path_not_found)
            }
            _ => {}
        }
    }
    let Some(rp) = parse_resource_path(path) else {
        return Err(ApiError::path_not_found());
    };
    let Some(strategy) = app.registry.lookup(&rp.group, &rp.version, &rp.resource) else {
        return Err(ApiError::path_not_found());
    };
    let info = strategy.info();
    if !rp.namespace.is_empty() && !info.namespaced {
        return Err(ApiError::path_not_found());
    }
    if let Some(sub) = &rp.subresource {
        if !info.subresources.iter().any(|s| s.name == sub) {
            return Err(ApiError::path_not_found());
        }
    }
    if info.namespaced && rp.name.is_some() && rp.namespace.is_empty() {
        return Err(ApiError::path_not_found());
    }
    let ctx = Ctx {
        app,
        strategy: strategy.clone(),
        rp,
        q,
        headers,
    };
    match *method {
        Method::GET => ctx.get().await,
        Method::POST => ctx.post(body).await,
        Method::PUT => ctx.put(body).await,
        Method::PATCH => ctx.patch(body).await,
        Method::DELETE => ctx.delete(body).await,
        _ => Err(ApiError::method_not_supported(
            info.resource,
            info.group,
            method.as_str(),
        )),
    }
}

struct Ctx<'a> {
    app: &'a AppState,
    strategy: Arc<dyn Strategy>,
    rp: ResourcePath,
    q: &'a Query,
    headers: &'a HeaderMap,
}

fn parse_json(body: &[u8], s: &dyn Strategy) -> ApiResult<Value> {
    serde_json::from_slice(body).map_err(|e| {
        let i = s.info();
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            i.kind, i.version, i.kind
        ))
    })
}

impl Ctx<'_> {
    fn s(&self) -> &dyn Strategy {
        self.strategy.as_ref()
    }

    fn reg(&self) -> &Registry {
        &self.app.registry
    }

    fn name(&self) -> &str {
        self.rp.name.as_deref().unwrap_or("")
    }

    fn target(&self) -> ApiResult<Target> {
        match self.rp.subresource.as_deref() {
            None => Ok(Target::Main),
            Some("status") => Ok(Target::Status),
            Some("scale") => Ok(Target::Scale),
            Some(_) => Err(ApiError::method_not_supported(
                self.s().info().resource,
                self.s().info().group,
                "this verb",
            )),
        }
    }

    fn write_opts(&self) -> ApiResult<WriteOptions> {
        Ok(WriteOptions {
            dry_run: self.q.dry_run()?,
            strict: self.q.strict()?,
        })
    }

    fn content_type(&self) -> &str {
        header_str(self.headers, header::CONTENT_TYPE)
    }

    /// Decodes a JSON (or supported protobuf) request body.
    fn body(&self, body: &[u8]) -> ApiResult<Value> {
        let ct = self.content_type();
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "" | "application/json" | "*/*" => parse_json(body, self.s()),
            "application/vnd.kubernetes.protobuf" => crate::protobuf::decode(body, self.s().info()),
            _ => Err(ApiError::unsupported_media_type(ct)),
        }
    }

    /// Renders one object, as a Table when asked.
    fn object(&self, code: StatusCode, obj: &Value) -> ApiResult<Response> {
        if accept(header_str(self.headers, header::ACCEPT)) == Accept::Table
            && self.rp.subresource.is_none()
        {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            let t = table::table(
                self.s(),
                std::slice::from_ref(obj),
                include_object(self.q)?,
                rv,
                "",
                true,
            );
            return Ok(json_response(code, &t));
        }
        Ok(json_response(code, obj))
    }

    fn selectors(&self) -> ApiResult<(LabelSelector, FieldSelector)> {
        let labels = LabelSelector::parse(&self.q.str("labelSelector"))
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
        let fields =
            FieldSelector::parse(&self.q.str("fieldSelector")).map_err(ApiError::bad_request)?;
        Ok((labels, fields))
    }

    async fn get(&self) -> ApiResult<Response> {
        let (s, ns) = (self.s(), self.rp.namespace.as_str());
        if self.rp.name.is_none() {
            if self.q.bool("watch") {
                return self.watch().await;
            }
            return self.list().await;
        }
        let st = self.reg().get(s, ns, self.name()).await?;
        match self.target()? {
            Target::Scale => Ok(json_response(StatusCode::OK, &to_scale(&st.object))),
            _ => self.object(StatusCode::OK, &st.object),
        }
    }

    async fn list(&self) -> ApiResult<Response> {
        let (labels, fields) = self.selectors()?;
        let opts = ListOptions {
            labels,
            fields,
            limit: self.q.int("limit")?.unwrap_or(0),
            continue_token: self.q.str("continue"),
            resource_version: self.q.str("resourceVersion"),
            resource_version_match: self.q.str("resourceVersionMatch"),
        };
        let s = self.s();
        let res = self.reg().list(s, &self.rp.namespace, &opts).await?;
        let rv = res.revision.to_string();
        if accept(header_str(self.headers, header::ACCEPT)) == Accept::Table {
            let t = table::table(
                s,
                &res.items,
                include_object(self.q)?,
                &rv,
                &res.continue_token,
                true,
            );
            return Ok(json_response(StatusCode::OK, &t));
        }
        let mut meta = json!({"resourceVersion": rv});
        if !res.continue_token.is_empty() {
            meta["continue"] = json!(res.continue_token);
        }
        if let Some(n) = res.remaining {
            meta["remainingItemCount"] = json!(n);
        }
        let info = s.info();
        let list = json!({"kind": format!("{}List", info.kind), "apiVersion": info.api_version(), "metadata": meta, "items": res.items});
        Ok(json_response(StatusCode::OK, &list))
    }

    async fn watch(&self) -> ApiResult<Response> {
        let (labels, fields) = self.selectors()?;
        let table = if accept(header_str(self.headers, header::ACCEPT)) == Accept::Table {
            Some(include_object(self.q)?)
        } else {
            None
        };
        let timeout = match self.q.int("timeoutSeconds")? {
            Some(n) if n > 0 => Some(Duration::from_secs(n as u64)),
            _ => None,
        };
        let params = WatchParams {
            resource_version: self.q.str("resourceVersion"),
            resource_version_match: self.q.str("resourceVersionMatch"),
            bookmarks: self.q.bool("allowWatchBookmarks"),
            send_initial_events: self.q.opt_bool("sendInitialEvents"),
            timeout,
            labels,
            fields,
            table,
        };
        let body: Body = watch::start(
            self.app.registry.clone(),
            self.app.watch_cache.clone(),
            self.strategy.clone(),
            self.rp.namespace.clone(),
            params,
            self.app.shutdown.clone(),
        )
        .await?;
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-cache, private")
            .body(body)
            .unwrap_or_else(|_| ApiError::internal("building watch response").into_response()))
    }

    async fn post(&self, body: Bytes) -> ApiResult<Response> {
        let info = self.s().info();
        match (self.rp.name.as_deref(), self.rp.subresource.as_deref()) {
            (None, None) => {
                if info.namespaced && self.rp.namespace.is_empty() {
                    return Err(ApiError::method_not_supported(
                        info.resource,
                        info.group,
                        "create",
                    ));
                }
                let obj = self.body(&body)?;
                let created = self
                    .reg()
                    .create(self.s(), &self.rp.namespace, obj, &self.write_opts()?)
                    .await?;
                self.object(StatusCode::CREATED, &created)
            }
            (Some(name), Some("binding")) => {
                let binding = parse_json(&body, self.s())?;
                lifecycle::bind_pod(self.reg(), self.s(), &self.rp.namespace, name, &binding)
                    .await?;
                Ok(json_response(
                    StatusCode::CREATED,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                ))
            }
            _ => Err(ApiError::method_not_supported(
                info.resource,
                info.group,
                "create",
            )),
        }
    }

    async fn put(&self, body: Bytes) -> ApiResult<Response> {
        let (s, ns, name) = (self.s(), self.rp.namespace.as_str(), self.name());
        if self.rp.name.is_none() {
            return Err(ApiError::method_not_supported(
                s.info().resource,
                s.info().group,
                "update",
            ));
        }
        let opts = self.write_opts()?;
        if self.rp.subresource.as_deref() == Some("finalize") {
            let obj = self.body(&body)?;
            let out = lifecycle::finalize_namespace(self.reg(), s, name, &obj, &opts).await?;
            return self.object(StatusCode::OK, &out);
        }
        match self.target()? {
            Target::Scale => {
                let scale = parse_json(&body, s)?;
                let out = self.scale_update(|_| Ok(scale.clone()), &opts).await?;
                Ok(json_response(StatusCode::OK, &out))
            }
            target => {
                let obj = self.body(&body)?;
                let out = self.reg().update(s, ns, name, target, obj, &opts).await?;
                self.object(StatusCode::OK, &out)
            }
        }
    }

    /// Applies a Scale change (`f` maps the current Scale to the wanted one)
    /// to the main object; returns the new Scale.
    async fn scale_update<F>(&self, f: F, opts: &WriteOptions) -> ApiResult<Value>
    where
        F: Fn(&Value) -> ApiResult<Value> + Send + Sync,
    {
        let s = self.s();
        let info = s.info();
        let out =
            self.reg()
                .update_with(
                    s,
                    &self.rp.namespace,
                    self.name(),
                    Target::Main,
                    opts,
                    |current| {
                        let wanted = f(&to_scale(current))?;
                        let replicas = wanted
                            .pointer("/spec/replicas")
                            .map(|r| r.as_i64().filter(|n| *n >= 0));
                        let mut next = current.clone();
                        match replicas {
                            Some(Some(n)) => object::set_path(&mut next, "spec.replicas", json!(n)),
                            Some(None) => {
                                return Err(ApiError::invalid(
                                    "Scale",
                                    "autoscaling",
                                    self.name(),
                                    vec![crate::status::Cause::invalid(
                                        "spec.replicas",
                                        &wanted["spec"]["replicas"].to_string(),
                                        "must be greater than or equal to 0",
                                    )],
                                ));
                            }
                            None => {}
                        }
                        let rv = wanted
                            .pointer("/metadata/resourceVersion")
                            .cloned()
                            .unwrap_or(Value::Null);
                        match rv {
                            Value::String(v) if !v.is_empty() => object::meta_mut(&mut next)
                                .insert("resourceVersion".into(), json!(v)),
                            _ => object::meta_mut(&mut next).remove("resourceVersion"),
                        };
                        Ok(next)
                    },
                )
                .await
                .map_err(|e| {
                    if e.code == 404 {
                        ApiError::not_found(info.resource, info.group, self.name())
                    } else {
                        e
                    }
                })?;
        Ok(to_scale(&out))
    }

    async fn patch(&self, body: Bytes) -> ApiResult<Response> {
        let s = self.s();
        let info = s.info();
        if self.rp.name.is_none() {
            return Err(ApiError::method_not_supported(
                info.resource,
                info.group,
                "patch",
            ));
        }
        let ct = self.content_type().to_string();
        let Some(kind) = PatchType::from_content_type(&ct) else {
            return Err(ApiError::unsupported_media_type(&ct));
        };
        let patch: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
        let opts = self.write_opts()?;
        match self.target()? {
            Target::Scale => {
                let out = self
                    .scale_update(
                        |scale| {
                            crate::patch::apply(kind, scale, &patch).map_err(ApiError::bad_request)
                        },
                        &opts,
                    )
                    .await?;
                Ok(json_response(StatusCode::OK, &out))
            }
            target => {
                let out = self
                    .reg()
                    .patch(
                        s,
                        &self.rp.namespace,
                        self.name(),
                        target,
                        (kind, &patch),
                        &opts,
                    )
                    .await?;
                self.object(StatusCode::OK, &out)
            }
        }
    }

    fn delete_options(&self, body: &[u8]) -> ApiResult<DeleteOptions> {
        let mut opts = DeleteOptions {
            grace: self.q.int("gracePeriodSeconds")?,
            dry_run: self.q.dry_run()?,
            ..Default::default()
        };
        if !body.is_empty() {
            let v: Value = if self
                .content_type()
                .starts_with("application/vnd.kubernetes.protobuf")
            {
                crate::protobuf::decode_delete_options(body)?
            } else {
                serde_json::from_slice(body).map_err(|e| {
                    ApiError::bad_request(format!("DeleteOptions cannot be decoded: {e}"))
                })?
            };
            if let Some(g) = v.get("gracePeriodSeconds").and_then(Value::as_i64) {
                opts.grace = Some(g);
            }
            opts.uid = v
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(str::to_string);
            opts.resource_version = v
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string);
            if v.get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|x| x == "All"))
            {
                opts.dry_run = true;
            }
        }
        Ok(opts)
    }

    async fn delete(&self, body: Bytes) -> ApiResult<Response> {
        let s = self.s();
        let info = s.info();
        let opts = self.delete_options(&body)?;
        let Some(name) = self.rp.name.as_deref() else {
            return self.delete_collection(&opts).await;
        };
        if self.rp.subresource.is_some() {
            return Err(ApiError::method_not_supported(
                info.resource,
                info.group,
                "delete",
            ));
        }
        if info.resource == "namespaces" {
            let ns = lifecycle::delete_namespace(
                &self.app.registry,
                s,
                name,
                &opts,
                self.app.shutdown.clone(),
            )
            .await?;
            return self.object(StatusCode::OK, &ns);
        }
        match self
            .reg()
            .delete(s, &self.rp.namespace, name, &opts)
            .await?
        {
            Deleted::Pending(obj) => self.object(StatusCode::OK, &obj),
            Deleted::Gone(obj) if s.delete_returns_object() => self.object(StatusCode::OK, &obj),
            Deleted::Gone(obj) => {
                let mut details =
                    json!({"name": name, "kind": info.resource, "uid": object::uid(&obj)});
                if !info.group.is_empty() {
                    details["group"] = json!(info.group);
                }
                Ok(json_response(
                    StatusCode::OK,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
                ))
            }
        }
    }

    async fn delete_collection(&self, opts: &DeleteOptions) -> ApiResult<Response> {
        let (labels, fields) = self.selectors()?;
        let s = self.s();
        let list = self
            .reg()
            .list(
                s,
                &self.rp.namespace,
                &ListOptions {
                    labels,
                    fields,
                    ..Default::default()
                },
            )
            .await?;
        let mut deleted = Vec::new();
        for item in &list.items {
            let ns = object::namespace(item).to_string();
            match self.reg().delete(s, &ns, object::name(item), opts).await {
                Ok(Deleted::Gone(o)) | Ok(Deleted::Pending(o)) => deleted.push(o),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let info = s.info();
        Ok(json_response(
            StatusCode::OK,
            &json!({"kind": format!("{}List", info.kind), "apiVersion": info.api_version(), "metadata": {"resourceVersion": list.revision.to_string()}, "items": deleted}),
        ))
    }
}
