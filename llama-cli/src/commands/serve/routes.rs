//! The HTTP routes: `/health`, `/v1/models`, `/v1/completions`, `/v1/chat/completions`,
//! behind the API key and the body-size cap.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use llama_model::generation::chat::ChatTemplate;
use llama_model::generation::generate::GenerateConfig;
use llama_model::Tokenizer;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;

use super::api_key::ApiKey;
use super::error::ApiError;
use super::openai::{usage, Api, Header};
use super::request::{parse, ChatRequest, CompletionRequest, Settings};
use super::scheduler::{Admissions, Event, Job, TokenInfo};

/// What every handler shares.
pub struct AppState {
    pub jobs: Sender<Job>,
    pub tokenizer: Tokenizer,
    /// The chat template, or why there is none.
    pub template: Result<ChatTemplate, String>,
    pub model_name: String,
    pub context: usize,
    pub max_tokens_limit: usize,
    /// Stop rules every request gets (EOS ids) and the ids they need.
    pub base: GenerateConfig,
    pub admissions: Admissions,
    pub key: ApiKey,
    pub next_id: AtomicU64,
}

/// The router; `body_limit` caps request bodies (413 past it), `idle` times out a body
/// that stops arriving.
pub fn router(state: Arc<AppState>, body_limit: usize, idle: Duration) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .route("/health", get(health))
        // tower-http's limit answers 413 from the declared length, before reading a byte.
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyTimeoutLayer::new(idle))
        .layer(RequestBodyLimitLayer::new(body_limit))
        .with_state(state)
}

/// 401 unless the request bears the key (when one is set).
async fn authorize(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if state.key.admits(&headers) {
        next.run(request).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

async fn health(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"status": "ok", "requests": state.admissions.taken(),
        "capacity": state.admissions.capacity(), "cancelled": state.admissions.cancelled()}))
}

async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": state.model_name, "object": "model",
        "created": now(), "owned_by": "llama-burn"}]}),
    )
}

async fn completions(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let run = || {
        let request: CompletionRequest = parse(&body)?;
        let settings = request.sampling.settings(false)?;
        let prompt = state
            .tokenizer
            .encode(&request.prompt_text()?, true, false)
            .map_err(|e| ApiError::field("prompt", e.to_string()))?;
        Ok((prompt, settings))
    };
    respond(&state, Api::Completions, run()).await
}

async fn chat(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let run = || {
        let request: ChatRequest = parse(&body)?;
        let settings = request.sampling.settings(true)?;
        let template = state.template.as_ref().map_err(ApiError::invalid)?;
        let prompt = template
            .prompt_ids(&state.tokenizer, &request.messages())
            .map_err(|e| ApiError::field("messages", e.to_string()))?;
        Ok((prompt, settings))
    };
    respond(&state, Api::Chat, run()).await
}

/// Queues the request and answers, whole or streamed.
async fn respond(
    state: &Arc<AppState>,
    api: Api,
    parsed: Result<(Vec<u32>, Settings), ApiError>,
) -> Response {
    let (prompt, settings) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => return e.into_response(),
    };
    let config = match budget(state, prompt.len(), settings.max_tokens) {
        Ok(max_tokens) => settings.config.clone().with_max_new_tokens(max_tokens),
        Err(e) => return e.into_response(),
    }
    .with_stop_at_eos(true)
    .with_bos_id(state.base.bos_id)
    .with_eos_id(state.base.eos_id)
    .with_eos_ids(state.base.eos_ids.clone());
    let Some(admission) = state.admissions.admit() else {
        return ApiError::overloaded(state.admissions.capacity()).into_response();
    };
    let (events, receiver) = unbounded_channel();
    let job = Job {
        prompt,
        config,
        events,
        admission,
    };
    if state.jobs.send(job).is_err() {
        return ApiError::internal("the model thread has stopped").into_response();
    }
    let prefix = match api {
        Api::Completions => "cmpl",
        Api::Chat => "chatcmpl",
    };
    let header = Header {
        api,
        id: format!("{prefix}-{}", state.next_id.fetch_add(1, Ordering::Relaxed)),
        created: now(),
        model: state.model_name.clone(),
    };
    if settings.stream {
        Sse::new(sse(header, receiver, settings.logprobs.is_some()))
            .keep_alive(KeepAlive::default())
            .into_response()
    } else {
        whole(header, receiver, settings.logprobs.is_some()).await
    }
}

/// The number of tokens to generate: `asked`, or the most the limit and the context allow.
/// 400 when the prompt plus `asked` exceeds the context or `asked` the server's limit.
fn budget(state: &AppState, prompt: usize, asked: Option<usize>) -> Result<usize, ApiError> {
    let (context, limit) = (state.context, state.max_tokens_limit);
    if let Some(asked) = asked.filter(|&n| n > limit) {
        return Err(ApiError::field(
            "max_tokens",
            format!(
                "max_tokens is {asked}, over this server's limit of {limit} (--max-tokens-limit)"
            ),
        ));
    }
    let room = context.saturating_sub(prompt);
    match asked {
        Some(asked) if asked <= room => Ok(asked),
        None if room > 0 => Ok(room.min(limit)),
        _ => Err(ApiError::invalid(format!(
            "the prompt has {prompt} tokens{}: over the model's context of {context} tokens",
            asked.map_or(String::new(), |n| format!(" and max_tokens is {n}"))
        ))),
    }
}

/// Collects a request's events into one response.
async fn whole(header: Header, mut events: UnboundedReceiver<Event>, logprobs: bool) -> Response {
    let mut text = String::new();
    let mut tokens: Vec<TokenInfo> = Vec::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Delta { text: t, logprobs } => {
                text.push_str(&t);
                tokens.extend(logprobs);
            }
            Event::Done {
                finish_reason,
                prompt_tokens,
                completion_tokens,
            } => {
                let body = header.response(
                    &text,
                    logprobs.then_some(tokens.as_slice()),
                    finish_reason,
                    usage(prompt_tokens, completion_tokens),
                );
                return Json(body).into_response();
            }
            Event::Failed(message) => return ApiError::internal(message).into_response(),
        }
    }
    ApiError::internal("the model thread dropped the request").into_response()
}

/// A request's events as server-sent events, ending with `data: [DONE]`.
fn sse(
    header: Header,
    events: UnboundedReceiver<Event>,
    logprobs: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    struct State {
        header: Header,
        events: UnboundedReceiver<Event>,
        logprobs: bool,
        first: bool,
        offset: usize,
        /// The last chunk was sent: `[DONE]` follows.
        done: bool,
        ended: bool,
    }
    let state = State {
        header,
        events,
        logprobs,
        first: true,
        offset: 0,
        done: false,
        ended: false,
    };
    stream::unfold(state, |mut s| async move {
        if s.ended {
            return None;
        }
        if s.done {
            s.ended = true;
            return Some((Ok(SseEvent::default().data("[DONE]")), s));
        }
        let data = match s.events.recv().await {
            Some(Event::Delta { text, logprobs }) => {
                let lp = s.logprobs.then_some((logprobs.as_slice(), s.offset));
                let chunk = s.header.chunk(Some(&text), lp, None, s.first);
                s.offset += text.len();
                s.first = false;
                chunk.to_string()
            }
            Some(Event::Done { finish_reason, .. }) => {
                let chunk = s.header.chunk(None, None, Some(finish_reason), s.first);
                s.done = true;
                chunk.to_string()
            }
            Some(Event::Failed(message)) => {
                s.done = true;
                ApiError::internal(message).body().to_string()
            }
            None => return None,
        };
        Some((Ok(SseEvent::default().data(data)), s))
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
