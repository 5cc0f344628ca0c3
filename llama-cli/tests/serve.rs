//! `llama-cli serve`: the real binary on a loopback port, driven over HTTP. Every wait is
//! bounded, and the server is killed when a test ends (a guard).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use llama_model::fixtures::fixture;
use serde_json::{json, Value};

use crate::common::{greedy_generation_with, llama_cli, path};

/// The longest any single wait may take.
const WAIT: Duration = Duration::from_secs(300);

/// A running server, killed on drop.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `llama-cli --backend BACKEND serve --checkpoint stories260K.bin --port 0 EXTRA…` with
/// `env`, once it has printed its address.
fn start(backend: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let checkpoint = path(&fixture("models/stories260K/stories260K.bin"));
    let mut command = llama_cli();
    command
        .args([
            "--backend",
            backend,
            "serve",
            "--checkpoint",
            &checkpoint,
            "--port",
            "0",
        ])
        .args(extra)
        .env_remove("LLAMA_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("llama-cli serve starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(address) = line.strip_prefix("listening on ") {
                let _ = send.send(address.to_string());
            }
        }
    });
    // Killed on drop, also when no address comes.
    let mut server = Server {
        child,
        base: String::new(),
    };
    server.base = receive
        .recv_timeout(WAIT)
        .expect("the server prints its address");
    server
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout_read(WAIT)
        .timeout_write(WAIT)
        .build()
}

impl Server {
    /// POSTs `body` to `route`: the status and the body's text.
    fn post(&self, route: &str, body: &str, key: Option<&str>) -> (u16, String) {
        let mut request = agent()
            .post(&format!("{}{route}", self.base))
            .set("Content-Type", "application/json");
        if let Some(key) = key {
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        match request.send_string(body) {
            Ok(response) => (response.status(), response.into_string().expect("a body")),
            Err(ureq::Error::Status(code, response)) => {
                (code, response.into_string().expect("a body"))
            }
            Err(e) => panic!("{route}: {e}"),
        }
    }

    fn post_json(&self, route: &str, body: &Value) -> Value {
        let (status, text) = self.post(route, &body.to_string(), None);
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).expect("a JSON answer")
    }

    fn health(&self) -> Value {
        agent()
            .get(&format!("{}/health", self.base))
            .call()
            .expect("health answers")
            .into_json()
            .expect("health is JSON")
    }

    /// A streamed completion of `body`: the concatenated text and the last chunk.
    fn stream(&self, body: &Value) -> (String, Value) {
        let (text, last, _) = self.stream_scored(body);
        (text, last)
    }

    /// [`Self::stream`], with the tokens' log-probabilities (when the body asks for them).
    fn stream_scored(&self, body: &Value) -> (String, Value, Vec<f64>) {
        let mut body = body.clone();
        body["stream"] = json!(true);
        let response = agent()
            .post(&format!("{}/v1/completions", self.base))
            .send_json(body)
            .expect("a streamed answer");
        read_scored(BufReader::new(response.into_reader()), usize::MAX)
    }
}

/// Reads SSE lines up to `data: [DONE]` (or `limit` chunks): the text of the chunks and
/// the last chunk.
fn read_stream(reader: impl BufRead, limit: usize) -> (String, Value) {
    let (text, last, _) = read_scored(reader, limit);
    (text, last)
}

/// [`read_stream`], with the log-probabilities of the chunks' tokens.
fn read_scored(reader: impl BufRead, limit: usize) -> (String, Value, Vec<f64>) {
    let mut text = String::new();
    let mut logprobs = Vec::new();
    let mut last = Value::Null;
    let mut chunks = 0;
    for line in reader.lines() {
        let line = line.expect("a line of the stream");
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            return (text, last, logprobs);
        }
        last = serde_json::from_str(data).expect("a JSON chunk");
        text.push_str(last["choices"][0]["text"].as_str().unwrap_or_default());
        if let Some(values) = last["choices"][0]["logprobs"]["token_logprobs"].as_array() {
            logprobs.extend(values.iter().filter_map(Value::as_f64));
        }
        chunks += 1;
        if chunks == limit {
            return (text, last, logprobs);
        }
    }
    panic!("the stream ended without [DONE]: {text}");
}

fn completion(seed: u64, max_tokens: usize) -> Value {
    json!({"prompt": "Once upon a time", "max_tokens": max_tokens, "seed": seed,
        "temperature": 1.0})
}

/// Same seed, same text, alone or among 15 others; the log-probabilities (the raw logits)
/// agree to the bit: ndarray's batched products are batch-invariant.
#[test]
fn sixteen_concurrent_streams_each_equal_their_solo_run() {
    sixteen_streams_equal_their_solo_runs("ndarray");
}

/// The same on flex, whose few-row products run on the AVX-512 row kernel, which sums each
/// output in the same order whatever the rows beside it (without AVX-512 they go to flex's
/// general product, which is not batch-invariant to the bit; see docs/serving.md).
#[test]
fn sixteen_concurrent_streams_on_flex_each_equal_their_solo_run() {
    if !llama_model::weights::f32_rows::available() {
        eprintln!("no AVX-512F here: flex's products are not batch-invariant, nothing to test");
        return;
    }
    sixteen_streams_equal_their_solo_runs("flex");
}

fn sixteen_streams_equal_their_solo_runs(backend: &str) {
    let server = start(backend, &["--max-batch", "16"], &[]);
    let scored = |seed| {
        let mut body = completion(seed, 20);
        body["logprobs"] = json!(0);
        body
    };
    let solo: Vec<_> = (0..16)
        .map(|seed| server.stream_scored(&scored(seed)))
        .collect();
    let server = Arc::new(server);
    let barrier = Arc::new(Barrier::new(16));
    let handles: Vec<_> = (0..16)
        .map(|seed| {
            let (server, barrier) = (server.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                server.stream_scored(&scored(seed))
            })
        })
        .collect();
    for (seed, handle) in handles.into_iter().enumerate() {
        let (text, last, logprobs) = handle.join().expect("a client thread");
        assert_eq!(text, solo[seed].0, "seed {seed}");
        assert_eq!(logprobs, solo[seed].2, "seed {seed}");
        assert!(!logprobs.is_empty());
        assert!(last["choices"][0]["finish_reason"].is_string(), "{last}");
    }
    // Distinct seeds gave distinct texts (the seeds reach the samplers).
    let mut distinct: Vec<&String> = solo.iter().map(|(text, _, _)| text).collect();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() > 1, "{solo:?}");
}

#[test]
fn greedy_completion_equals_generate() {
    let prompt = "Once upon a time";
    let server = start("ndarray", &[], &[]);
    let answer = server.post_json(
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 30, "temperature": 0}),
    );
    let text = answer["choices"][0]["text"].as_str().expect("a text");
    let checkpoint = path(&fixture("models/stories260K/stories260K.bin"));
    let (_, greedy) = greedy_generation_with(&checkpoint, prompt, 30, &["--stop-at-eos"]);
    assert_eq!(greedy, format!("{prompt}{text}\n"));
    let usage = &answer["usage"];
    assert_eq!(usage["completion_tokens"], 30, "{answer}");
    assert_eq!(answer["choices"][0]["finish_reason"], "length");
}

#[test]
fn a_client_killed_mid_stream_frees_its_slot_while_the_others_finish() {
    let server = Arc::new(start(
        "flex",
        &["--max-batch", "2", "--max-queue", "0"],
        &[],
    ));
    let other = {
        let server = server.clone();
        std::thread::spawn(move || server.stream(&completion(1, 200)))
    };
    let long = json!({"prompt": "Once upon a time", "max_tokens": 480, "stream": true,
        "temperature": 1.0});
    let response = agent()
        .post(&format!("{}/v1/completions", server.base))
        .send_json(long)
        .expect("a streamed answer");
    let (_, first) = read_stream(BufReader::new(response.into_reader()), 3);
    assert!(first["choices"][0]["finish_reason"].is_null(), "{first}");
    // The reader is dropped: the client has gone.
    let (text, last) = other.join().expect("the other client");
    assert!(!text.is_empty());
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    let mut health = server.health();
    for _ in 0..3000 {
        if health["cancelled"] == 1 && health["requests"] == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        health = server.health();
    }
    assert_eq!(health["cancelled"], 1, "{health}");
    assert_eq!(health["requests"], 0, "{health}");
    // Both slots serve again.
    for seed in 0..2 {
        let answer = server.post_json("/v1/completions", &completion(seed, 5));
        assert_eq!(answer["usage"]["completion_tokens"], 5, "{answer}");
    }
}

#[test]
fn a_flood_past_the_queue_gets_503s_and_every_accepted_request_completes() {
    let server = Arc::new(start(
        "flex",
        &["--max-batch", "1", "--max-queue", "1"],
        &[],
    ));
    let clients = 12;
    let barrier = Arc::new(Barrier::new(clients));
    let handles: Vec<_> = (0..clients as u64)
        .map(|seed| {
            let (server, barrier) = (server.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                server.post("/v1/completions", &completion(seed, 300).to_string(), None)
            })
        })
        .collect();
    let answers: Vec<(u16, String)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let busy = answers.iter().filter(|(status, _)| *status == 503).count();
    assert!(busy > 0, "no 503 among {answers:?}");
    for (status, body) in &answers {
        let body: Value = serde_json::from_str(body).expect("JSON");
        match status {
            503 => assert_eq!(body["error"]["type"], "server_error", "{body}"),
            200 => assert!(
                body["usage"]["completion_tokens"].as_u64() > Some(0),
                "{body}"
            ),
            other => panic!("status {other}: {body}"),
        }
    }
    assert!(answers.iter().any(|(status, _)| *status == 200));
}

#[test]
fn malformed_requests_get_400_or_413_and_the_server_keeps_serving() {
    let server = start("ndarray", &[], &[]);
    let long_prompt = "Once upon a time ".repeat(200);
    let cases: Vec<(&str, String)> = vec![
        ("/v1/completions", "{".into()),
        ("/v1/completions", "not json".into()),
        ("/v1/completions", "[]".into()),
        ("/v1/completions", "{}".into()),
        ("/v1/completions", r#"{"prompt": 5}"#.into()),
        (
            "/v1/completions",
            r#"{"prompt": "a", "max_tokens": "ten"}"#.into(),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "a", "max_tokens": -1}"#.into(),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "a", "max_tokens": 0}"#.into(),
        ),
        ("/v1/completions", r#"{"prompt": "a", "top_p": 2}"#.into()),
        (
            "/v1/completions",
            r#"{"prompt": "a", "temperature": -0.5}"#.into(),
        ),
        ("/v1/completions", r#"{"prompt": "a", "top_k": -3}"#.into()),
        ("/v1/completions", r#"{"prompt": "a", "min_p": 7}"#.into()),
        ("/v1/completions", r#"{"prompt": "a", "seed": -1}"#.into()),
        (
            "/v1/completions",
            r#"{"prompt": "a", "logprobs": 99}"#.into(),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "a", "stream": "yes"}"#.into(),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "a", "max_tokens": 100000}"#.into(),
        ),
        (
            "/v1/completions",
            json!({"prompt": long_prompt, "max_tokens": 10}).to_string(),
        ),
        ("/v1/chat/completions", r#"{"messages": "hi"}"#.into()),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "hi"}]}"#.into(),
        ),
    ];
    for (route, body) in &cases {
        let (status, text) = server.post(route, body, None);
        assert_eq!(status, 400, "{body}: {text}");
        let error: Value = serde_json::from_str(&text).expect("an error in JSON");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{text}"
        );
    }
    // The context's limit is named; a model without a chat template says so.
    let (_, text) = server.post("/v1/completions", &cases[16].1, None);
    assert!(text.contains("context of 512"), "{text}");
    let (_, text) = server.post(cases[18].0, &cases[18].1, None);
    assert!(text.contains("chat template"), "{text}");
    // A 10 MB body: refused from its declared length, before it is read.
    assert_eq!(oversized(&server, 10 << 20), 413);
    let answer = server.post_json("/v1/completions", &completion(0, 3));
    assert_eq!(answer["usage"]["completion_tokens"], 3, "{answer}");
}

/// Sends the headers of a `bytes`-long body and its first KiB: the answer's status.
fn oversized(server: &Server, bytes: usize) -> u16 {
    let address = server.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).expect("connects");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {bytes}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let _ = stream.write_all(&[b' '; 1024]);
    let mut answer = [0u8; 12];
    stream.read_exact(&mut answer).expect("a status line");
    // "HTTP/1.1 413"
    String::from_utf8_lossy(&answer[9..12])
        .parse()
        .expect("a status code")
}

#[test]
fn with_a_key_a_missing_or_wrong_key_is_401() {
    let key = "a-test-key";
    let server = start("ndarray", &[], &[("LLAMA_API_KEY", key)]);
    let body = completion(0, 3).to_string();
    for given in [None, Some("wrong"), Some("a-test-ke")] {
        let (status, text) = server.post("/v1/completions", &body, given);
        assert_eq!(status, 401, "{given:?}: {text}");
        let error: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(error["error"]["type"], "authentication_error");
    }
    let (status, text) = server.post("/v1/completions", &body, Some(key));
    assert_eq!(status, 200, "{text}");
}
