//! The model's thread: requests queue, join the continuous batch as slots free up, decode
//! together, and leave when done or when their client has gone.
//!
//! HTTP handlers send a [`Job`] over a channel and read its [`Event`]s back; a handler that
//! is dropped (the client disconnected) closes its event channel, and the slot is freed
//! before the next step.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use burn::tensor::backend::Backend;
use llama_model::generation::batch::{BatchEngine, Sampled, SlotId};
use llama_model::generation::generate::{GenerateConfig, StopReason};
use llama_model::generation::logprobs::TokenLogprob;
use llama_model::generation::stop_strings::StopStrings;
use llama_model::tokenizer::TextStream;
use llama_model::{Llama, Tokenizer};
use tokio::sync::mpsc::UnboundedSender;

/// A request for the model thread.
#[derive(Debug)]
pub struct Job {
    /// Prompt ids (at least one).
    pub prompt: Vec<u32>,
    /// Sampling, budget and stop rules (stop strings included).
    pub config: GenerateConfig,
    pub events: UnboundedSender<Event>,
    /// Holds the request's place until the job is dropped.
    pub admission: Admission,
}

/// What the model thread tells a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New text (possibly empty while a stop string may be starting) and the tokens' log
    /// probabilities, when asked for.
    Delta {
        text: String,
        logprobs: Vec<TokenInfo>,
    },
    /// The end: `"stop"` or `"length"`, and the token counts.
    Done {
        finish_reason: &'static str,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    /// The model failed on this request.
    Failed(String),
}

/// One generated token's log-probability, with the most probable alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenInfo {
    pub token: Piece,
    pub logprob: f64,
    pub top: Vec<(Piece, f64)>,
}

/// A token's text and bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub text: String,
    pub bytes: Vec<u8>,
}

/// The requests running or queued, and those cancelled so far.
#[derive(Debug, Default)]
struct Counters {
    taken: AtomicUsize,
    cancelled: AtomicUsize,
}

/// Counts the requests running or queued; a place is taken by [`Admissions::admit`] and
/// given back when its [`Admission`] drops.
#[derive(Debug, Clone)]
pub struct Admissions {
    counters: Arc<Counters>,
    capacity: usize,
}

/// A place among the [`Admissions`].
#[derive(Debug)]
pub struct Admission(Arc<Counters>);

impl Admission {
    /// Counts the request as cancelled (its client went away).
    fn cancel(&self) {
        self.0.cancelled.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Admissions {
    /// Room for `capacity` requests running or queued.
    pub fn new(capacity: usize) -> Self {
        Self {
            counters: Arc::default(),
            capacity,
        }
    }

    /// A place, or `None` when all are taken.
    pub fn admit(&self) -> Option<Admission> {
        self.counters
            .taken
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .ok()
            .map(|_| Admission(self.counters.clone()))
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Requests running or queued now.
    pub fn taken(&self) -> usize {
        self.counters.taken.load(Ordering::SeqCst)
    }

    /// Requests whose client went away before their end.
    pub fn cancelled(&self) -> usize {
        self.counters.cancelled.load(Ordering::SeqCst)
    }
}

/// A job in the batch: its text stream and stop strings.
struct Running<'t> {
    job: Job,
    stream: Option<TextStream<'t>>,
    stops: StopStrings,
    /// The last id fed (the context of a token's text).
    prev: u32,
    completion_tokens: usize,
}

/// Runs requests until every sender of `jobs` is gone: at most `max_batch` decode
/// together, the others wait in arrival order.
pub fn run<B: Backend>(
    model: &Llama<B>,
    tokenizer: &Tokenizer,
    split: usize,
    max_batch: usize,
    jobs: &Receiver<Job>,
) {
    let mut engine = BatchEngine::new(model, split);
    let mut running: HashMap<SlotId, Running<'_>> = HashMap::new();
    let mut queue: VecDeque<Job> = VecDeque::new();
    loop {
        if engine.is_empty() && queue.is_empty() {
            match jobs.recv() {
                Ok(job) => queue.push_back(job),
                Err(_) => return,
            }
        }
        queue.extend(jobs.try_iter());
        // Cancelled requests leave before the step.
        running.retain(|id, r| {
            let open = !r.job.events.is_closed();
            if !open {
                r.job.admission.cancel();
                engine.leave(*id);
            }
            open
        });
        queue.retain(|job| {
            let open = !job.events.is_closed();
            if !open {
                job.admission.cancel();
            }
            open
        });
        while engine.len() < max_batch {
            let Some(job) = queue.pop_front() else { break };
            match engine.join(&job.prompt, &job.config, 0) {
                Ok(id) => {
                    let prev = job.prompt.last().copied().unwrap_or(0);
                    running.insert(
                        id,
                        Running {
                            stream: Some(TextStream::after(tokenizer, prev)),
                            stops: StopStrings::new(&job.config.stop_strings),
                            prev,
                            completion_tokens: 0,
                            job,
                        },
                    );
                }
                Err(e) => {
                    let _ = job.events.send(Event::Failed(e.to_string()));
                }
            }
        }
        if engine.is_empty() {
            continue;
        }
        match engine.step() {
            Ok(sampled) => {
                for s in sampled {
                    if let Some(r) = running.get_mut(&s.id) {
                        if deliver(r, &s, tokenizer) {
                            engine.leave(s.id);
                            running.remove(&s.id);
                        }
                    }
                }
            }
            Err(e) => {
                // The engine's state is unknown after a failure: fail every running request.
                for (_, r) in running.drain() {
                    let _ = r.job.events.send(Event::Failed(e.to_string()));
                }
                engine = BatchEngine::new(model, split);
            }
        }
    }
}

/// Sends a slot's new text; returns whether its request is done (the Done event sent).
fn deliver(r: &mut Running<'_>, s: &Sampled, tokenizer: &Tokenizer) -> bool {
    let mut text = String::new();
    let mut logprobs = Vec::new();
    let mut failure = None;
    if let Some(token) = s.token {
        r.completion_tokens += 1;
        if let Some(top) = r.job.config.logprobs {
            logprobs.push(token_info(tokenizer, r.prev, &s.logits, token, top));
        }
        r.prev = token;
        match r.stream.as_mut().map(|st| st.push(token)) {
            Some(Ok(piece)) => text = r.stops.push(&piece),
            Some(Err(e)) => failure = Some(e.to_string()),
            None => {}
        }
    }
    if let Some(message) = failure {
        let _ = r.job.events.send(Event::Failed(message));
        return true;
    }
    let finish_reason = if r.stops.stopped() {
        Some("stop")
    } else if let Some(reason) = s.stop {
        if let Some(stream) = r.stream.take() {
            text.push_str(&r.stops.push(&stream.finish()));
        }
        text.push_str(&r.stops.finish());
        Some(match reason {
            StopReason::MaxNewTokens if !r.stops.stopped() => "length",
            _ => "stop",
        })
    } else {
        None
    };
    if !text.is_empty() || !logprobs.is_empty() {
        let _ = r.job.events.send(Event::Delta { text, logprobs });
    }
    match finish_reason {
        Some(finish_reason) => {
            let _ = r.job.events.send(Event::Done {
                finish_reason,
                prompt_tokens: r.job.prompt.len(),
                completion_tokens: r.completion_tokens,
            });
            true
        }
        None => false,
    }
}

/// `token`'s log-probability under `logits` and the `top` most probable alternatives,
/// with their texts after `prev`.
fn token_info(
    tokenizer: &Tokenizer,
    prev: u32,
    logits: &[f32],
    token: u32,
    top: usize,
) -> TokenInfo {
    let piece = |id: u32| {
        let bytes = tokenizer.decode_piece(prev, id).unwrap_or_default();
        Piece {
            text: String::from_utf8_lossy(&bytes).into_owned(),
            bytes,
        }
    };
    let logprob = TokenLogprob::of(logits, token, top);
    TokenInfo {
        token: piece(token),
        logprob: logprob.logprob,
        top: logprob
            .top
            .iter()
            .map(|&(id, lp)| (piece(id), lp))
            .collect(),
    }
}
