//! The HTTP API: routes, handlers, and errors as `{"error": TEXT}`.
//!
//! Handlers never run workflows: they record requests for the worker and
//! wait for what it commits. Database reads and module compilation run on
//! tokio's blocking threads.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::json;
use super::page;
use super::worker::{Change, ShuttingDown, Worker};
use crate::executor::script::{self, Language};
use crate::executor::{Executor, RunOptions};
use crate::runtime::Policy;
use crate::snapshot::{ModuleHash, file, inspect};
use crate::store::{InstanceId, Refused, Request};

/// How long a request waits for its run before it answers with the
/// instance as it is (still running).
const RUN_WAIT: Duration = Duration::from_secs(60);

/// Largest module accepted.
const MODULE_LIMIT: usize = 256 << 20;

type Shared = Arc<Worker>;

/// Every route of the service.
pub fn router(worker: Shared) -> Router {
    Router::new()
        .route("/", get(page::index))
        .route("/app.js", get(page::script))
        .route("/style.css", get(page::style))
        .route("/api/openapi.json", get(openapi))
        .route(
            "/api/modules",
            post(add_module)
                .get(modules)
                .layer(DefaultBodyLimit::max(MODULE_LIMIT)),
        )
        .route("/api/instances", post(start).get(instances))
        .route("/api/instances/{id}", get(instance))
        .route("/api/instances/{id}/versions", get(versions))
        .route("/api/instances/{id}/resume", post(resume))
        .route(
            "/api/instances/{id}/versions/{version}/snapshot",
            get(snapshot),
        )
        .route(
            "/api/instances/{id}/versions/{version}/inspect",
            get(inspect_version),
        )
        .route("/api/instances/{id}/query/{name}", post(query))
        .route("/api/instances/{id}/update/{name}", post(update))
        .route("/api/events", get(events))
        .fallback(not_found)
        .with_state(worker)
}

/// An error answer: a status and `{"error": TEXT}`.
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> ApiError {
        let status = match error.downcast_ref::<Refused>() {
            Some(Refused::NotFound(_)) => StatusCode::NOT_FOUND,
            Some(Refused::Conflict(_)) => StatusCode::CONFLICT,
            None if error.is::<ShuttingDown>() => StatusCode::SERVICE_UNAVAILABLE,
            None => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, crate::executor::one_line(&error))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.message }))).into_response()
    }
}

type Answer = Result<Response, ApiError>;

fn ok(value: Value) -> Answer {
    Ok(axum::Json(value).into_response())
}

/// Runs blocking work (database, compilation) off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ApiError::from)
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let body = if body.is_empty() { &b"{}"[..] } else { body };
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}

fn module_hash(text: &str) -> Result<ModuleHash, ApiError> {
    let bad = || ApiError::bad_request(format!("{text:?} is not a module hash (64 hex digits)"));
    if text.len() != 64 {
        return Err(bad());
    }
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(hash)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

/// `POST /api/modules`: a module's bytes (`.wasm`, or WAT text).
async fn add_module(State(worker): State<Shared>, body: Bytes) -> Answer {
    let wasm = if body.starts_with(b"\0asm") {
        body.to_vec()
    } else {
        wat::parse_bytes(&body)
            .map(|b| b.into_owned())
            .map_err(|e| ApiError::bad_request(format!("not a Wasm module, nor WAT text: {e}")))?
    };
    let executor = worker.executor().clone();
    let hash = tokio::task::spawn_blocking(move || executor.add_module(&wasm))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("the module cannot run: {}", crate::executor::one_line(&e)),
            )
        })?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "module": crate::store::hex(&hash) })),
    )
        .into_response())
}

/// `GET /api/modules`.
async fn modules(State(worker): State<Shared>) -> Answer {
    let database = worker.reader().clone();
    let modules = blocking(move || database.modules()).await?;
    let list: Vec<Value> = modules
        .iter()
        .map(|m| {
            json!({
                "module": crate::store::hex(&m.hash),
                "bytes": m.bytes,
                "created_ms": m.created_ms,
            })
        })
        .collect();
    ok(json!(list))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    /// The hash of an uploaded module...
    #[serde(default)]
    module: Option<String>,
    /// ...or a script, run in its language's runtime module.
    #[serde(default)]
    script: Option<ScriptBody>,
    #[serde(default)]
    args: Vec<String>,
}

/// A JavaScript or Python workflow given as text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptBody {
    /// Its file name, whose extension says the language: `approval.js`.
    name: String,
    /// Its text.
    source: String,
}

/// `POST /api/instances`: a new instance, answered after its first run.
async fn start(State(worker): State<Shared>, body: Bytes) -> Answer {
    let body: StartBody = parse(&body)?;
    let executor = worker.executor().clone();
    let (hash, args) = match (body.module, body.script) {
        (Some(module), None) => {
            let args = if body.args.is_empty() {
                vec!["workflow".to_string()]
            } else {
                body.args
            };
            (module_hash(&module)?, args)
        }
        (None, Some(script)) => {
            let hash = runtime_of(&worker, &script.name).await?;
            (
                hash,
                script::arguments(&script.name, script.source, body.args),
            )
        }
        _ => {
            return Err(ApiError::bad_request(
                "give one of: a module (the hash of an uploaded one), or a script ({\"name\": \"approval.js\", \"source\": ...})",
            ));
        }
    };
    let instance = blocking(move || {
        // Compiled (or its artifact loaded) before the instance exists:
        // a module that is missing or cannot run makes no instance.
        executor
            .module(&hash)
            .map_err(|e| match executor.database().module(&hash) {
                Err(_) => {
                    Refused::NotFound(format!("module {} not found", crate::store::hex(&hash)))
                        .into()
                }
                Ok(_) => e,
            })?;
        executor
            .database()
            .create_instance(&hash, &args, &Policy::default())
    })
    .await?;
    worker.changed(instance);
    let request = Request::default();
    let ran = worker.request(instance, request, false, RUN_WAIT).await?;
    let status = if ran.is_some() {
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    };
    let info = instance_json(&worker, instance).await?;
    Ok((status, axum::Json(info)).into_response())
}

/// The hash of the runtime module that runs the script `name` (stored,
/// instrumented and compiled the first time).
async fn runtime_of(worker: &Shared, name: &str) -> Result<ModuleHash, ApiError> {
    let Some(language) = Language::of_name(name) else {
        return Err(ApiError::bad_request(format!(
            "script {name:?}: its name must end in .js (JavaScript) or .py (Python)"
        )));
    };
    let worker = Arc::clone(worker);
    blocking(move || worker.runtime(language)).await
}

async fn instance_json(worker: &Shared, id: InstanceId) -> Result<Value, ApiError> {
    let database = worker.reader().clone();
    let info = blocking(move || database.instance(id)).await?;
    Ok(json::instance(&info))
}

/// `GET /api/instances`.
async fn instances(State(worker): State<Shared>) -> Answer {
    let database = worker.reader().clone();
    let all = blocking(move || database.instances()).await?;
    ok(json!(all.iter().map(json::instance).collect::<Vec<_>>()))
}

/// `GET /api/instances/{id}`.
async fn instance(State(worker): State<Shared>, Path(id): Path<InstanceId>) -> Answer {
    ok(instance_json(&worker, id).await?)
}

/// `GET /api/instances/{id}/versions`: the version tree, parents first.
async fn versions(State(worker): State<Shared>, Path(id): Path<InstanceId>) -> Answer {
    let database = worker.reader().clone();
    let all = blocking(move || database.versions(id)).await?;
    ok(json!(all.iter().map(json::version).collect::<Vec<_>>()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeBody {
    version: Option<u32>,
    reply: Option<String>,
    reply_base64: Option<String>,
    #[serde(default)]
    branch: bool,
    #[serde(default)]
    wake: bool,
}

/// `POST /api/instances/{id}/resume`: answers a version (409 when it was
/// answered already, unless a branch is asked for, or when the instance
/// is busy), and returns the instance after the run.
async fn resume(State(worker): State<Shared>, Path(id): Path<InstanceId>, body: Bytes) -> Answer {
    let body: ResumeBody = parse(&body)?;
    let reply = text_or_base64("reply", &body.reply, &body.reply_base64)?;
    let request = Request {
        version: body.version,
        reply,
        wake: body.wake,
    };
    let ran = worker.request(id, request, body.branch, RUN_WAIT).await?;
    let status = if ran.is_some() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let info = instance_json(&worker, id).await?;
    Ok((status, axum::Json(info)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HandlerBody {
    version: Option<u32>,
    arg: Option<String>,
    arg_base64: Option<String>,
}

impl HandlerBody {
    /// The argument's bytes, from `arg` (text) or `arg_base64`.
    fn arg(&self) -> Result<Vec<u8>, ApiError> {
        text_or_base64("arg", &self.arg, &self.arg_base64)
    }
}

/// Bytes given as `NAME` (text) or `NAME_base64`, not both; none is empty.
fn text_or_base64(
    name: &str,
    text: &Option<String>,
    encoded: &Option<String>,
) -> Result<Vec<u8>, ApiError> {
    match (text, encoded) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(format!(
            "give either {name} or {name}_base64, not both"
        ))),
        (Some(text), None) => Ok(text.clone().into_bytes()),
        (None, Some(encoded)) => json::unbase64(encoded)
            .ok_or_else(|| ApiError::bad_request(format!("{name}_base64 is not base64"))),
        (None, None) => Ok(Vec::new()),
    }
}

/// A handler's result: `{"result": TEXT}`, or `{"result_base64": ...}`
/// when it is not UTF-8.
fn handler_result(result: &[u8]) -> serde_json::Map<String, Value> {
    let mut object = serde_json::Map::new();
    match std::str::from_utf8(result) {
        Ok(text) => object.insert("result".into(), json!(text)),
        Err(_) => object.insert("result_base64".into(), json!(json::base64(result))),
    };
    object
}

/// Runs a guest handler off the async threads. A handler that fails (no
/// such handler, a trap, a suspension) is the request's fault, not the
/// server's: 422 with the reason.
async fn run_handler<T: Send + 'static>(
    worker: &Shared,
    run: impl FnOnce(&Executor) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let executor = worker.executor().clone();
    blocking(move || run(&executor)).await.map_err(|error| {
        if error.status == StatusCode::INTERNAL_SERVER_ERROR {
            return ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, error.message);
        }
        error
    })
}

/// `POST /api/instances/{id}/query/{name}`: calls the guest's
/// `query_NAME` on a version (the head when none is named); nothing is
/// committed.
async fn query(
    State(worker): State<Shared>,
    Path((id, name)): Path<(InstanceId, String)>,
    body: Bytes,
) -> Answer {
    let body: HandlerBody = parse(&body)?;
    let arg = body.arg()?;
    let result = run_handler(&worker, move |executor| {
        executor.query(id, body.version, &name, &arg, &RunOptions::default())
    })
    .await?;
    ok(Value::Object(handler_result(&result)))
}

/// `POST /api/instances/{id}/update/{name}`: calls the guest's
/// `update_NAME` on the head and commits what it changed as a new version
/// (409 while the instance runs); answers the handler's result and the
/// new version.
async fn update(
    State(worker): State<Shared>,
    Path((id, name)): Path<(InstanceId, String)>,
    body: Bytes,
) -> Answer {
    let body: HandlerBody = parse(&body)?;
    if body.version.is_some() {
        return Err(ApiError::bad_request(
            "an update runs on the head; it takes no version",
        ));
    }
    let arg = body.arg()?;
    let updated = run_handler(&worker, move |executor| {
        executor.update(id, &name, &arg, &RunOptions::default())
    })
    .await?;
    worker.changed(id);
    let mut answer = handler_result(&updated.result);
    answer.insert("version".into(), json!(updated.report.version));
    ok(Value::Object(answer))
}

/// `GET /api/instances/{id}/versions/{version}/snapshot`: the snapshot
/// file, with its module, as `wasnap snapshot` writes it.
async fn snapshot(
    State(worker): State<Shared>,
    Path((id, version)): Path<(InstanceId, u32)>,
) -> Answer {
    let database = worker.reader().clone();
    let bytes = blocking(move || {
        let snapshot = database.load_version(id, version)?;
        let module = database.module(&snapshot.module_hash)?;
        file::encode(&snapshot, Some(&module))
    })
    .await
    .map_err(not_a_snapshot)?;
    let name = format!("attachment; filename=\"instance-{id}-v{version}.wsnap\"");
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_DISPOSITION, name),
        ],
        bytes,
    )
        .into_response())
}

/// A version that is the end of a run has no snapshot: 409, not 500.
fn not_a_snapshot(error: ApiError) -> ApiError {
    if error.status == StatusCode::INTERNAL_SERVER_ERROR && error.message.contains("no snapshot") {
        return ApiError::new(StatusCode::CONFLICT, error.message);
    }
    error
}

/// `GET /api/instances/{id}/versions/{version}/inspect`: suspended call
/// stacks, saved values and memory use.
async fn inspect_version(
    State(worker): State<Shared>,
    Path((id, version)): Path<(InstanceId, u32)>,
) -> Answer {
    let executor = worker.executor().clone();
    let database = worker.reader().clone();
    let view = blocking(move || {
        let snapshot = database.load_version(id, version)?;
        let module = executor.module(&snapshot.module_hash)?;
        inspect::inspect(&snapshot, module.metadata())
    })
    .await
    .map_err(not_a_snapshot)?;
    ok(json::inspection(&view))
}

/// `GET /api/events`: server-sent events, `change` with `{"instance": ID}`
/// whenever an instance is created, requested, claimed or committed;
/// `resync` when some were missed.
async fn events(State(worker): State<Shared>) -> impl IntoResponse {
    let receiver = worker.subscribe();
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let event = match receiver.recv().await {
            Ok(Change::Instance(instance)) => Event::default()
                .event("change")
                .data(json!({ "instance": instance }).to_string()),
            Ok(Change::Closing) => return None,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                Event::default().event("resync").data("{}")
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok::<_, Infallible>(event), receiver))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
