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

use crate::body;
use crate::discovery;
use crate::lifecycle;
use crate::object;
use crate::patch::PatchType;
use crate::registry::apps::to_scale;
use crate::registry::generic::{
    patch_error, DeleteOptions, Deleted, ListOptions, Registry, Target, WriteOptions,
};
use crate::registry::Strategy;
use crate::request::{accept, include_object, parse_resource_path, Accept, Query, ResourcePath};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult};
use crate::table;
use crate::watch::{self, WatchParams};

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
    let resp = match body::read(req.into_body(), &headers).await {
        Ok(body) => route(&app, &method, &path, &query, &headers, body)
            .await
            .unwrap_or_else(|e| e.into_response()),
        Err(e) => {
            // The rest of an oversized body is not read: end the connection.
            let mut resp = e.into_response();
            resp.headers_mut()
                .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
            resp
        }
    };
    tracing::debug!(%method, %path, status = resp.status().as_u16(), "request");
    resp
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
    if (!rp.namespace.is_empty() && !info.namespaced) || matches!(rp.namespace.as_str(), "." | "..")
    {
        return Err(ApiError::path_not_found());
    }
    if let Some(name) = &rp.name {
        body::check_path_name(name)?;
    }
    if let Some(sub) = &rp.subresource {
        let Some(si) = info.subresources.iter().find(|s| s.name == sub) else {
            return Err(ApiError::path_not_found());
        };
        let verb = match *method {
            Method::GET => "get",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::POST => "create",
            Method::DELETE => "delete",
            _ => "",
        };
        if !si.verbs.contains(&verb) {
            return Err(ApiError::method_not_supported(
                &format!("{}/{sub}", info.resource),
                info.group,
                if verb.is_empty() {
                    method.as_str()
                } else {
                    verb
                },
            ));
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

    /// Decodes an object body of the endpoint's kind (JSON, YAML, protobuf).
    fn body(&self, body: &[u8]) -> ApiResult<Value> {
        let info = self.s().info();
        body::decode(body, self.content_type(), info.kind, Some(info))
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
        // Built by moving the items in (`json!` would copy every one of them).
        let mut list = json!({"kind": format!("{}List", info.kind), "apiVersion": info.api_version(), "metadata": meta});
        list["items"] = Value::Array(res.items);
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
                let binding = body::decode(&body, self.content_type(), "Binding", None)?;
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
            body::check_name(&obj, name, ns)?;
            let out = lifecycle::finalize_namespace(self.reg(), s, name, &obj, &opts).await?;
            return self.object(StatusCode::OK, &out);
        }
        match self.target()? {
            Target::Scale => {
                let scale = body::decode(&body, self.content_type(), "Scale", None)?;
                body::check_name(&scale, name, ns)?;
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
            return Err(ApiError::unsupported_media_type(body::PATCH_TYPES));
        };
        let patch: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
        let opts = self.write_opts()?;
        match self.target()? {
            Target::Scale => {
                let out = self
                    .scale_update(
                        |scale| {
                            crate::patch::apply(kind, scale, &patch)
                                .map_err(|e| patch_error(info, self.name(), e))
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

    async fn delete(&self, body: Bytes) -> ApiResult<Response> {
        let s = self.s();
        let info = s.info();
        let opts = body::delete_options(&body, self.content_type(), self.q)?;
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
