//! `llama-cli serve`: an OpenAI-compatible HTTP server over the continuous-batching engine.
//!
//! The model lives on this command's thread, which runs the [`scheduler`]; axum's handlers
//! run on a tokio runtime and talk to it over channels (Burn tensors need not be `Send`).

mod api_key;
mod error;
mod listener;
mod openai;
mod request;
mod routes;
mod scheduler;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use llama_model::generation::chat::ChatTemplate;
use llama_model::generation::generate::GenerateConfig;

use crate::args::model::ModelArgs;
use crate::args::values;
use crate::runtime::backend::{BackendKind, Job};
use api_key::{ApiKey, KEY_VARIABLE};
use routes::AppState;
use scheduler::Admissions;

/// Arguments of `llama-cli serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on. Anything but loopback exposes the model to the network: set a
    /// key (LLAMA_API_KEY or --api-key-file).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Requests decoded together at most (the continuous batch's slots).
    #[arg(long, default_value_t = 16, value_parser = values::positive())]
    pub max_batch: usize,
    /// Requests waiting for a slot at most; past that, 503.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Largest max_tokens a request may ask (default: the model's context).
    #[arg(long, value_parser = values::positive())]
    pub max_tokens_limit: Option<usize>,
    /// The model's name in responses and /v1/models (default: the checkpoint's file name).
    #[arg(long)]
    pub model_name: Option<String>,
    /// A file holding the API key requests must bear (`Authorization: Bearer KEY`); else
    /// LLAMA_API_KEY; else no key.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Largest request body in bytes (413 past it).
    #[arg(long, default_value_t = 1 << 20, value_parser = values::positive())]
    pub body_limit: usize,
    /// Seconds a connection may take to send a request's headers, or stall its body.
    #[arg(long, default_value_t = 30, value_parser = values::positive())]
    pub idle_timeout: usize,
    /// Column blocks per weight product of a decoding step (as generate's --decode-split).
    #[arg(long, value_parser = values::positive())]
    pub decode_split: Option<usize>,
}

impl Job for ServeArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, backend: BackendKind) -> Result<()> {
        let key = ApiKey::load(self.api_key_file.as_deref())?;
        if !self.host.is_loopback() && !key.is_set() {
            eprintln!(
                "warning: listening on {} without an API key: anyone who can reach it can use \
                 the model; set {KEY_VARIABLE} or --api-key-file",
                self.host
            );
        }
        let (model, config, tokenizer) = self.model.load_as_stored::<B::InnerBackend>(&device)?;
        let eos_ids = self.model.eos_ids(&tokenizer)?;
        let template =
            ChatTemplate::for_checkpoint(&self.model.checkpoint).map_err(|e| e.to_string());
        let split = backend.decode_split(self.decode_split, config.dim);
        let model_name = self.model_name.clone().unwrap_or_else(|| {
            let path = &self.model.checkpoint;
            path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        });
        let (jobs, receiver) = std::sync::mpsc::channel();
        let state = Arc::new(AppState {
            jobs,
            template,
            model_name,
            context: config.max_seq_len,
            max_tokens_limit: self.max_tokens_limit.unwrap_or(config.max_seq_len),
            base: GenerateConfig::new()
                .with_bos_id(tokenizer.bos_id())
                .with_eos_id(tokenizer.eos_id())
                .with_eos_ids(eos_ids),
            tokenizer: tokenizer.clone(),
            admissions: Admissions::new(self.max_batch + self.max_queue),
            key,
            next_id: AtomicU64::new(0),
        });
        let idle = Duration::from_secs(self.idle_timeout as u64);
        let app = routes::router(state, self.body_limit, idle);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("cannot start the HTTP runtime")?;
        let address = SocketAddr::new(self.host, self.port);
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(address))
            .with_context(|| format!("cannot listen on {address}"))?;
        let bound = listener.local_addr()?;
        eprintln!(
            "backend {backend}; {} slots, {} queue places",
            self.max_batch, self.max_queue
        );
        // The one line a script waits for (on stdout).
        println!("listening on http://{bound}");
        runtime.spawn(listener::serve(listener, app, idle));
        scheduler::run(&model, &tokenizer, split, self.max_batch, &receiver);
        Ok(())
    }
}
