//! The host's local HTTP API: pipelines and their schedules, the run
//! ledger, manual triggers and backfills. JSON in and out, on loopback
//! only; every request carries the token and names the API's own address
//! as its `Host` (see `guard.rs`), and is written to the audit log.
//!
//! | method | path                               | what                          |
//! |--------|------------------------------------|-------------------------------|
//! | GET    | /v1/health                         | `ok`, or `degraded` and why   |
//! | GET    | /v1/pipelines                      | schedule, next and last run   |
//! | GET    | /v1/runs?pipeline=P&limit=N        | ledger, newest first          |
//! | GET    | /v1/runs/{id}                      | one run                       |
//! | POST   | /v1/pipelines/{name}/trigger       | start (or queue) a run now    |
//! | POST   | /v1/pipelines/{name}/backfill      | `{"from": T, "to": T}` RFC 3339 |
//! | POST   | /v1/pipelines/{name}/replay        | `{"ids": [...]}` (empty: all) dead letters again |
//! | GET    | /v1/plugins                        | versions, canaries and reports |
//! | POST   | /v1/plugins/{name}/promote         | make the canary current       |
//! | POST   | /v1/plugins/{name}/rollback        | drop the canary               |

pub mod client;
mod guard;

pub use guard::{TOKEN_FILE, token};

use crate::ledger::{Ledger, Run};
use crate::runtime::Registry;
use crate::scheduler::{Command, Handle, Refused};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;

pub struct ApiState {
    pub ledger: Arc<Ledger>,
    pub registry: Arc<Registry>,
    /// Per pipeline: its plugin name and its scheduler.
    pub pipelines: BTreeMap<String, (String, Handle)>,
    pub stats: BTreeMap<String, Arc<crate::pipeline::Stats>>,
}

/// `GET /v1/health`: `ok`, or `degraded` with what is failing per pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub degraded: BTreeMap<String, String>,
}

/// One line of `sluice pipelines`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineView {
    pub name: String,
    pub schedule: String,
    pub next_run: Option<DateTime<Utc>>,
    /// Id of the run going now.
    pub running: Option<i64>,
    pub queued: usize,
    pub last_run: Option<Run>,
    pub plugin: String,
    pub plugin_version: Option<String>,
    pub plugin_hash: Option<String>,
    /// Why the pipeline is paused: plugin removed or quarantined.
    pub paused: Option<String>,
    /// What keeps failing while it is retried (a database down...).
    #[serde(default)]
    pub degraded: Option<String>,
}

/// One line of `sluice plugins`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginView {
    pub name: String,
    pub version: Option<String>,
    pub hash: Option<String>,
    pub file: Option<String>,
    /// `immediate` or `canary`.
    pub reload: String,
    /// Why its pipelines are paused: removed, quarantined, not loaded.
    pub paused: Option<String>,
    pub canary: Option<CanaryView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CanaryView {
    pub version: String,
    pub hash: String,
    pub report: crate::model::canary::Report,
}

/// The answer to a promote or rollback.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginChanged {
    pub plugin: String,
    pub version: String,
    pub hash: String,
}

/// Dead letters to replay; none listed: all of the pipeline's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReplayRequest {
    #[serde(default)]
    pub ids: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackfillRequest {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// The answer to a trigger or backfill.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submitted {
    pub run: i64,
}

#[derive(Debug, Deserialize)]
struct RunsQuery {
    pipeline: Option<String>,
    limit: Option<u32>,
}

type ApiError = (StatusCode, Json<serde_json::Value>);
type Reply<T> = Result<Json<T>, ApiError>;

fn error(status: StatusCode, message: impl std::fmt::Display) -> ApiError {
    (
        status,
        Json(serde_json::json!({ "error": message.to_string() })),
    )
}

/// Binds `listen` (an error names `api.listen`) and serves until `shutdown`.
/// Every answer without the secret values the host resolved: errors and
/// pause reasons quote what libraries said, which may include one.
async fn scrub_secrets(response: axum::response::Response) -> axum::response::Response {
    let (parts, body) = response.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => match std::str::from_utf8(&bytes) {
            Ok(text) => axum::body::Body::from(crate::config::scrub(text).into_owned()),
            Err(_) => axum::body::Body::from(bytes),
        },
        Err(e) => axum::body::Body::from(format!("{{\"error\": \"cannot read the answer: {e}\"}}")),
    };
    let mut response = axum::response::Response::from_parts(parts, body);
    // The length changed with the text.
    response
        .headers_mut()
        .remove(axum::http::header::CONTENT_LENGTH);
    response
}

pub async fn serve(
    listen: SocketAddr,
    token: String,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    if !listen.ip().is_loopback() {
        anyhow::bail!(
            "api.listen: {listen} is not a loopback address; the API listens on loopback only"
        );
    }
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        anyhow::anyhow!("api.listen: cannot listen on {listen}: {e} (another sluice host? set `api.listen` or `api.enabled = false`)")
    })?;
    let guard = Arc::new(guard::Guard::new(listen, token));
    let app = Router::new()
        .route("/v1/health", get(health))
        .route("/v1/pipelines", get(pipelines))
        .route("/v1/runs", get(runs))
        .route("/v1/runs/{id}", get(run))
        .route("/v1/pipelines/{name}/trigger", post(trigger))
        .route("/v1/pipelines/{name}/backfill", post(backfill))
        .route("/v1/pipelines/{name}/replay", post(replay))
        .route("/v1/plugins", get(plugins))
        .route("/v1/plugins/{name}/promote", post(promote))
        .route("/v1/plugins/{name}/rollback", post(rollback))
        .layer(axum::middleware::map_response(scrub_secrets))
        .layer(axum::middleware::from_fn_with_state(guard, guard::guard))
        .with_state(Arc::new(state));
    tracing::info!(%listen, "API listening");
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!("API server stopped: {e}");
        }
    }))
}

async fn pipelines(State(state): State<Arc<ApiState>>) -> Reply<Vec<PipelineView>> {
    let mut views = Vec::new();
    for (name, (plugin, handle)) in &state.pipelines {
        let status = handle.status.lock().unwrap().clone();
        let last_run = state
            .ledger
            .list(Some(name), 1)
            .await
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?
            .pop();
        let version = state.registry.current(plugin);
        views.push(PipelineView {
            name: name.clone(),
            schedule: status.schedule,
            next_run: status.next_run,
            running: status.running,
            queued: status.queued,
            last_run,
            plugin: plugin.clone(),
            plugin_version: version.as_ref().map(|v| v.info.version.clone()),
            plugin_hash: version.as_ref().map(|v| v.hash.clone()),
            paused: state.registry.serving(plugin).err().map(|e| e.to_string()),
            degraded: degraded(&state, name),
        });
    }
    Ok(Json(views))
}

fn degraded(state: &ApiState, pipeline: &str) -> Option<String> {
    state.stats.get(pipeline)?.degraded()
}

async fn health(State(state): State<Arc<ApiState>>) -> Json<Health> {
    let degraded: BTreeMap<String, String> = state
        .stats
        .keys()
        .filter_map(|p| Some((p.clone(), degraded(&state, p)?)))
        .collect();
    Json(Health {
        status: if degraded.is_empty() {
            "ok"
        } else {
            "degraded"
        }
        .into(),
        degraded,
    })
}

async fn plugins(State(state): State<Arc<ApiState>>) -> Json<Vec<PluginView>> {
    let views = state
        .registry
        .states()
        .into_iter()
        .map(|(name, s)| PluginView {
            version: s.current.as_ref().map(|v| v.info.version.clone()),
            hash: s.current.as_ref().map(|v| v.hash.clone()),
            file: s.current.as_ref().map(|v| v.path.display().to_string()),
            reload: if s.canary_mode { "canary" } else { "immediate" }.into(),
            paused: s.unavailable.map(|e| e.to_string()),
            canary: s.candidate.map(|(v, report)| CanaryView {
                version: v.info.version.clone(),
                hash: v.hash.clone(),
                report,
            }),
            name,
        })
        .collect();
    Json(views)
}

async fn promote(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Reply<PluginChanged> {
    changed(&name, state.registry.promote(&name))
}

async fn rollback(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Reply<PluginChanged> {
    changed(&name, state.registry.rollback(&name))
}

fn changed(
    name: &str,
    result: Result<Arc<crate::runtime::PluginVersion>, String>,
) -> Reply<PluginChanged> {
    result
        .map(|v| {
            Json(PluginChanged {
                plugin: name.into(),
                version: v.info.version.clone(),
                hash: v.hash.clone(),
            })
        })
        .map_err(|e| error(StatusCode::CONFLICT, e))
}

async fn runs(State(state): State<Arc<ApiState>>, Query(q): Query<RunsQuery>) -> Reply<Vec<Run>> {
    state
        .ledger
        .list(q.pipeline.as_deref(), q.limit.unwrap_or(20))
        .await
        .map(Json)
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))
}

async fn run(State(state): State<Arc<ApiState>>, Path(id): Path<i64>) -> Reply<Run> {
    match state.ledger.get(id).await {
        Ok(Some(run)) => Ok(Json(run)),
        Ok(None) => Err(error(StatusCode::NOT_FOUND, format!("no run {id}"))),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))),
    }
}

async fn trigger(State(state): State<Arc<ApiState>>, Path(name): Path<String>) -> Reply<Submitted> {
    send(&state, &name, |reply| Command::Trigger { reply }).await
}

async fn backfill(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    Json(window): Json<BackfillRequest>,
) -> Reply<Submitted> {
    if window.from >= window.to {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!(
                "--from ({}) must be before --to ({})",
                window.from, window.to
            ),
        ));
    }
    send(&state, &name, |reply| Command::Backfill {
        from: window.from,
        to: window.to,
        reply,
    })
    .await
}

async fn replay(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    Json(request): Json<ReplayRequest>,
) -> Reply<Submitted> {
    send(&state, &name, |reply| Command::Replay {
        ids: request.ids,
        reply,
    })
    .await
}

async fn send(
    state: &ApiState,
    name: &str,
    command: impl FnOnce(oneshot::Sender<Result<i64, Refused>>) -> Command,
) -> Reply<Submitted> {
    let Some((_, handle)) = state.pipelines.get(name) else {
        let known: Vec<&str> = state.pipelines.keys().map(String::as_str).collect();
        return Err(error(
            StatusCode::NOT_FOUND,
            format!(
                "no pipeline '{name}' (this host runs: {})",
                known.join(", ")
            ),
        ));
    };
    let (tx, rx) = oneshot::channel();
    let gone = || {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("pipeline '{name}' is stopping"),
        )
    };
    handle
        .commands
        .send(command(tx))
        .await
        .map_err(|_| gone())?;
    match rx.await.map_err(|_| gone())? {
        Ok(run) => Ok(Json(Submitted { run })),
        Err(Refused::Conflict(e)) => Err(error(StatusCode::CONFLICT, e)),
        Err(Refused::Failed(e)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
}
