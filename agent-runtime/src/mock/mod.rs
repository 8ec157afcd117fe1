//! An OpenAI-compatible mock server that enforces rate limits like the real provider: an HTTP
//! wrapper (axum) around the same [`Simulation`] the in-process simulator uses.
//!
//! Endpoints:
//! - `POST /v1/chat/completions` (and Azure's `/openai/deployments/{name}/chat/completions`):
//!   JSON or SSE (`"stream": true`, with a usage chunk when `stream_options.include_usage`);
//!   every response carries `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` and
//!   `x-request-id`; a 429 also `retry-after` and `retry-after-ms`, and OpenAI's body with
//!   "Limit L, Used U, Requested Q. Please try again in t.".
//! - `GET /v1/models`: the configured model.
//! - `GET /stats`: [`SimStats`] as JSON.
//! - `POST /admin/limits` with `{"rpm": 30, "tpm": 5000}` (either optional): change the limits
//!   while running; answers with the stats.
//!
//! Replies are deterministic (see [`SimConfig`]): `TERMINATE` once a request carries
//! `terminate_after` messages; a tool call when the last message says `call tool NAME {args}`.
//!
//! ```
//! use agent_runtime::mock::MockServer;
//! use agent_runtime::provider::SimConfig;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (addr, server) = MockServer::start(SimConfig::default().with_rpm(60)).await?;
//! assert_eq!(server.base_url(), format!("http://{addr}/v1"));
//! assert_eq!(server.stats().requests, 0);
//! server.shutdown().await?;
//! # Ok(())
//! # }
//! ```

pub mod broken;
mod wire;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::provider::headers::ApiErrorBody;
use crate::provider::{
    Admission, DeliveryFault, Rejection, SimConfig, SimConfigError, SimStats, Simulation,
};

/// Why the mock server could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MockError {
    /// The configuration cannot work.
    #[error("invalid mock configuration: {0}")]
    Config(#[from] SimConfigError),
    /// The address could not be bound.
    #[error("could not listen on {addr}: {source} (is the port already in use?)")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The server task failed.
    #[error("the mock server stopped with an error: {0}")]
    Serve(String),
}

/// A running mock server. Dropping it starts a graceful shutdown; [`MockServer::shutdown`] also
/// waits for it.
#[derive(Debug)]
pub struct MockServer {
    addr: SocketAddr,
    simulation: Simulation,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

#[derive(Clone)]
struct MockState {
    simulation: Simulation,
    /// Injected hangs end when the server shuts down.
    shutdown: CancellationToken,
}

impl MockServer {
    /// Starts a server for `config` on `127.0.0.1` and a free port (what tests want).
    pub async fn start(config: SimConfig) -> Result<(SocketAddr, MockServer), MockError> {
        let simulation = Simulation::new(config)?;
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), simulation).await
    }

    /// Serves `simulation` on `addr` (port 0 picks a free port). The simulation can also back a
    /// [`SimulatedProvider`](crate::provider::SimulatedProvider), which then shares its buckets.
    pub async fn bind(
        addr: SocketAddr,
        simulation: Simulation,
    ) -> Result<(SocketAddr, MockServer), MockError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MockError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| MockError::Bind { addr, source })?;
        let shutdown = CancellationToken::new();
        let app = routes(MockState {
            simulation: simulation.clone(),
            shutdown: shutdown.clone(),
        });
        let signal = shutdown.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
        });
        Ok((
            addr,
            MockServer {
                addr,
                simulation,
                shutdown,
                task,
            },
        ))
    }

    /// The mock's routes over `simulation`, to mount in another axum app. (Injected hangs then
    /// last until the client gives up.)
    pub fn router(simulation: Simulation) -> Router {
        routes(MockState {
            simulation,
            shutdown: CancellationToken::new(),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL for OpenAI clients, `http://ADDR/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The simulation behind the server (stats, run-time limit changes).
    pub fn simulation(&self) -> &Simulation {
        &self.simulation
    }

    /// A snapshot of the server's counters.
    pub fn stats(&self) -> SimStats {
        self.simulation.stats()
    }

    /// Stops accepting connections, ends injected hangs, and waits for open requests to finish.
    pub async fn shutdown(mut self) -> Result<(), MockError> {
        self.shutdown.cancel();
        match (&mut self.task).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(MockError::Serve(e.to_string())),
            Err(e) => Err(MockError::Serve(e.to_string())),
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn routes(state: MockState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(chat_completions),
        )
        .route("/v1/models", get(models))
        .route("/stats", get(stats))
        .route("/admin/limits", post(set_limits))
        .with_state(state)
}

async fn models(State(state): State<MockState>) -> Json<serde_json::Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.simulation.config().model,
            "object": "model",
            "created": 0,
            "owned_by": "turnstile-mock",
        }],
    }))
}

async fn stats(State(state): State<MockState>) -> Json<SimStats> {
    Json(state.simulation.stats())
}

#[derive(Debug, Deserialize)]
struct LimitsUpdate {
    rpm: Option<u64>,
    tpm: Option<u64>,
}

async fn set_limits(State(state): State<MockState>, Json(update): Json<LimitsUpdate>) -> Response {
    match state.simulation.set_limits(update.rpm, update.tpm) {
        Ok(()) => Json(state.simulation.stats()).into_response(),
        Err(e) => error_response(
            StatusCode::BAD_REQUEST,
            HeaderMap::new(),
            &ApiErrorBody::new(e.to_string(), Some("invalid_request_error"), None),
        ),
    }
}

async fn chat_completions(State(state): State<MockState>, body: Bytes) -> Response {
    let wire = match wire::parse_request(&body) {
        Ok(wire) => wire,
        Err(message) => {
            let body = ApiErrorBody::new(message, Some("invalid_request_error"), None);
            return error_response(StatusCode::BAD_REQUEST, HeaderMap::new(), &body);
        }
    };
    let admission = match state.simulation.admit(&wire.request) {
        Ok(admission) => admission,
        Err(rejection) => return rejected(rejection),
    };
    let headers = response_headers(&admission.headers, &admission.request_id);
    if admission.fault == Some(DeliveryFault::Hang) {
        state.shutdown.cancelled().await;
        let body = ApiErrorBody::new(
            "the mock server is shutting down",
            Some("server_error"),
            None,
        );
        return error_response(StatusCode::SERVICE_UNAVAILABLE, headers, &body);
    }
    let model = wire
        .model
        .clone()
        .unwrap_or_else(|| state.simulation.config().model.clone());
    let id = format!("chatcmpl-{}", admission.request_id);
    if wire.stream {
        sse_reply(admission, headers, &id, &model, wire.include_usage).await
    } else {
        json_reply(admission, headers, &id, &model).await
    }
}

async fn json_reply(
    admission: Admission,
    mut headers: HeaderMap,
    id: &str,
    model: &str,
) -> Response {
    tokio::time::sleep(admission.total_latency()).await;
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = match admission.fault {
        Some(DeliveryFault::Malformed) => Body::from(wire::malformed_json(id)),
        Some(DeliveryFault::Drop) => {
            let full = wire::completion_json(id, model, &admission.reply);
            let half = Bytes::from(full[..full.len() / 2].to_vec());
            let parts: [Result<Bytes, std::io::Error>; 2] = [Ok(half), Err(dropped())];
            Body::from_stream(futures::stream::iter(parts))
        }
        _ => Body::from(wire::completion_json(id, model, &admission.reply)),
    };
    (StatusCode::OK, headers, body).into_response()
}

async fn sse_reply(
    admission: Admission,
    mut headers: HeaderMap,
    id: &str,
    model: &str,
    include_usage: bool,
) -> Response {
    tokio::time::sleep(admission.latency).await;
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let (events, tokens) = wire::sse_events(id, model, &admission.reply, include_usage);
    let per_token = admission.per_token_latency;
    let mut items: Vec<(Duration, Result<Bytes, std::io::Error>)> =
        Vec::with_capacity(events.len());
    match admission.fault {
        Some(DeliveryFault::Malformed) => {
            items.push((Duration::ZERO, Ok(wire::malformed_event())));
        }
        fault => {
            let cut_at =
                (fault == Some(DeliveryFault::Drop)).then_some(tokens.start + tokens.len() / 2);
            for (i, event) in events.into_iter().enumerate() {
                if cut_at == Some(i) {
                    // A pause first, so what came before is flushed to the client: the cut
                    // lands mid-stream, not before the response headers.
                    items.push((CUT_PAUSE, Err(dropped())));
                    break;
                }
                let delay = if tokens.contains(&i) {
                    per_token
                } else {
                    Duration::ZERO
                };
                items.push((delay, Ok(event)));
            }
        }
    }
    // The admission rides along so its slot (and refund) ends with the stream. Each item is due
    // at an instant counted from the first (not a sleep after the previous one), so the timer's
    // rounding does not add up over a reply: a streamed reply takes as long as the same reply
    // whole.
    let start = tokio::time::Instant::now();
    let stream = futures::stream::unfold(
        (items.into_iter(), admission, start),
        |(mut items, admission, mut due)| async move {
            let (delay, item) = items.next()?;
            if !delay.is_zero() {
                due += delay;
                tokio::time::sleep_until(due).await;
            }
            Some((item, (items, admission, due)))
        },
    );
    (StatusCode::OK, headers, Body::from_stream(stream)).into_response()
}

const CUT_PAUSE: Duration = Duration::from_millis(20);

fn dropped() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "connection dropped mid-response (injected fault)",
    )
}

fn rejected(rejection: Box<Rejection>) -> Response {
    let status =
        StatusCode::from_u16(rejection.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response_headers(&rejection.headers, &rejection.request_id);
    json_response(status, headers, rejection.body)
}

fn error_response(status: StatusCode, headers: HeaderMap, body: &ApiErrorBody) -> Response {
    json_response(status, headers, body.to_json())
}

fn json_response(status: StatusCode, mut headers: HeaderMap, body: Vec<u8>) -> Response {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    (status, headers, body).into_response()
}

/// The simulation's rate-limit headers (in its dialect) and the request id.
fn response_headers(rate_limits: &[(&'static str, String)], request_id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in rate_limits {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(HeaderName::from_static("x-request-id"), value);
    }
    headers
}
