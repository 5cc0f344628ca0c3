//! `llama-cli chat`: an interactive conversation over stdin, with the KV cache kept across
//! turns (each turn pre-fills only what the cache does not hold).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::Args;
use llama_model::generation::chat::{ChatSession, ChatTemplate, Conversation, Message, Reply};
use llama_model::generation::generate::GenerateConfig;
use llama_model::tokenizer::TextStream;
use llama_model::Tokenizer;

use crate::args::model::ModelArgs;
use crate::args::sampling::SamplingArgs;
use crate::args::values;
use crate::commands::generate::stats_line;
use crate::runtime::backend::{BackendKind, Job};

/// Arguments of `llama-cli chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The system message (kept when old turns are dropped).
    #[arg(long)]
    pub system: Option<String>,
    /// Start from this conversation: a JSON list of `{"role", "content"}` messages (a first
    /// `system` one stands for --system).
    #[arg(long, value_name = "FILE")]
    pub messages: Option<PathBuf>,
    /// Most tokens of one reply.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_new_tokens: u64,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8, value_parser = values::temperature, allow_hyphen_values = true)]
    pub temperature: f64,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Column blocks per weight product of a decoding step (as `generate --decode-split`).
    #[arg(long, value_parser = values::positive())]
    pub decode_split: Option<usize>,
}

/// What a line of input asks for.
enum Input<'a> {
    Exit,
    Reset,
    Skip,
    Say(&'a str),
}

fn parse(line: &str) -> Input<'_> {
    match line.trim() {
        "/exit" => Input::Exit,
        "/reset" => Input::Reset,
        "" => Input::Skip,
        text => Input::Say(text),
    }
}

impl Job for ChatArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, backend: BackendKind) -> Result<()> {
        // Refused before the model loads when it cannot chat.
        let template = ChatTemplate::for_checkpoint(&self.model.checkpoint)?;
        let mut conversation = self.start()?;
        let (model, config, tokenizer) = self.model.load::<B::InnerBackend>(&device)?;
        let split = backend.decode_split(self.decode_split, config.dim);
        let generate = self
            .sampling
            .apply(GenerateConfig::new())
            .with_max_new_tokens(self.max_new_tokens as usize)
            .with_temperature(self.temperature)
            .with_stop_at_eos(true)
            .with_bos_id(tokenizer.bos_id())
            .with_eos_id(tokenizer.eos_id())
            .with_eos_ids(self.model.eos_ids(&tokenizer)?)
            .with_decode_split(split);
        generate.validate()?;
        let mut session = ChatSession::new(&model, split);
        let context = session.context();
        // Room kept for a reply when old turns must go.
        let reserve = (self.max_new_tokens as usize).min(context / 4).max(1);

        let stdin = std::io::stdin();
        let interactive = stdin.is_terminal();
        if interactive {
            eprintln!("chat: /reset starts over, /exit (or end of input) quits");
        }
        let mut lines = stdin.lock().lines();
        for turn in 0u64.. {
            if interactive {
                eprint!("> ");
            }
            let Some(line) = lines.next() else { break };
            let line = line.context("reading stdin")?;
            let text = match parse(&line) {
                Input::Exit => break,
                Input::Skip => continue,
                Input::Reset => {
                    conversation.reset();
                    session.reset();
                    eprintln!("(the conversation starts over)");
                    continue;
                }
                Input::Say(text) => text,
            };
            conversation.push(Message::new("user", text));
            let ids = match conversation.fit(&template, &tokenizer, context, reserve) {
                Ok((ids, 0)) => ids,
                Ok((ids, dropped)) => {
                    eprintln!(
                        "note: the conversation outgrew the model's context of {context} \
                         tokens: dropped its oldest {dropped} messages"
                    );
                    ids
                }
                // Too long, or refused by the template (its raise_exception): the message is
                // dropped and the conversation goes on.
                Err(e) => {
                    conversation.pop();
                    eprintln!("error: {e}");
                    continue;
                }
            };
            let config = generate
                .clone()
                .with_seed(self.sampling.seed.wrapping_add(turn));
            let (reply, text) = reply_streamed(&mut session, &tokenizer, &ids, &config)?;
            conversation.push(Message::new("assistant", text));
            print_stats(&reply, ids.len());
        }
        Ok(())
    }
}

impl ChatArgs {
    /// The conversation --system and --messages start with.
    fn start(&self) -> Result<Conversation> {
        let mut messages: Vec<Message> = match &self.messages {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                serde_json::from_str(&text).with_context(|| {
                    format!(
                        "{}: not a JSON list of {{\"role\", \"content\"}} messages",
                        path.display()
                    )
                })?
            }
            None => Vec::new(),
        };
        let mut system = self.system.clone();
        if system.is_none() && messages.first().is_some_and(|m| m.role == "system") {
            system = Some(messages.remove(0).content);
        }
        let mut conversation = Conversation::new(system.as_deref());
        messages.into_iter().for_each(|m| conversation.push(m));
        Ok(conversation)
    }
}

/// One reply to `ids`, its text streamed to stdout as it comes; the reply and its text.
fn reply_streamed<B: Backend>(
    session: &mut ChatSession<'_, B>,
    tokenizer: &Tokenizer,
    ids: &[u32],
    config: &GenerateConfig,
) -> Result<(Reply, String)> {
    let last = ids.last().copied().unwrap_or(tokenizer.bos_id());
    let mut stream = TextStream::after(tokenizer, last);
    let mut stdout = std::io::stdout().lock();
    let mut text = String::new();
    let mut failed = None;
    let reply = session.reply(ids, config, |token| match stream.push(token) {
        Ok(piece) => {
            // A closed stdout must not abort the conversation.
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
            text.push_str(&piece);
        }
        Err(e) => failed = Some(e),
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    let rest = stream.finish();
    text.push_str(&rest);
    let _ = writeln!(stdout, "{rest}");
    Ok((reply, text))
}

/// The turn's stats line on stderr: what was pre-filled, then `generate`'s figures.
fn print_stats(reply: &Reply, prompt_tokens: usize) {
    eprintln!(
        "prefilled {} of {prompt_tokens} prompt tokens; {}",
        reply.prefilled,
        stats_line(&reply.stats)
    );
}
