#!/usr/bin/env python3
"""Throughput of `llama-cli serve`: N concurrent greedy streams, aggregate tokens/s, time to
first token and inter-token latency (median and p99). Standard library only.

Start a server (see docs/serving.md), then:

    python3 scripts/serve-bench.py --base-url http://127.0.0.1:8080 --streams 1 4 16 \
        --max-tokens 128

`--invariance N` instead runs N sampled requests (seeds 0..N-1, temperature 1) one at a
time, then all at once, and counts those whose text or log-probabilities differ.

Each stream asks for `--max-tokens` greedy tokens after its own prompt (the prompts differ
so the streams are not trivially equal). Aggregate tokens/s = all tokens / wall time of the
round (first request sent to last token received).
"""

import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse

PROMPTS = [
    "Once upon a time", "One day", "Lily and Tom", "The little dog", "In a big forest",
    "There was a girl", "A boy named Sam", "The sun was", "Mom said", "The cat sat",
    "Tim had a red ball", "It was a rainy day", "The bird flew", "Anna liked", "At the park",
    "The old man",
]


def stream(url, prompt, max_tokens, out):
    """One streamed completion: its send time, token arrival times and count."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True})
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200, response.read()
    arrivals = []
    for line in response:
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            break
        chunk = json.loads(data)
        if chunk["choices"][0].get("text"):
            arrivals.append(time.perf_counter())
    conn.close()
    out.append((start, arrivals))


def sampled(url, seed, max_tokens):
    """A whole sampled completion with its log-probabilities: (text, token logprobs)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": max_tokens,
                       "temperature": 1.0, "seed": seed, "logprobs": 0})
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    answer = json.loads(conn.getresponse().read())
    conn.close()
    choice = answer["choices"][0]
    return choice["text"], choice["logprobs"]["token_logprobs"]


def invariance(url, n, max_tokens):
    solo = [sampled(url, seed, max_tokens) for seed in range(n)]
    together = [None] * n

    def run(seed):
        together[seed] = sampled(url, seed, max_tokens)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    texts = sum(a[0] != b[0] for a, b in zip(solo, together))
    bits = sum(a[1] != b[1] for a, b in zip(solo, together))
    print(f"{n} requests of {max_tokens} tokens: {texts} texts and {bits} log-probability "
          f"lists differ between alone and together")


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def round_of(url, streams, max_tokens):
    results = []
    threads = [threading.Thread(target=stream, args=(url, PROMPTS[i % len(PROMPTS)],
                                                      max_tokens, results))
               for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = min(s for s, _ in results)
    last = max(a[-1] for _, a in results if a)
    tokens = sum(len(a) for _, a in results)
    ttft = [a[0] - s for s, a in results if a]
    gaps = [b - a for _, arr in results for a, b in zip(arr, arr[1:])]
    return tokens / (last - first), ttft, gaps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8080")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--invariance", type=int, metavar="N")
    args = parser.parse_args()
    if args.invariance:
        invariance(args.base_url, args.invariance, args.max_tokens)
        return
    round_of(args.base_url, 1, 8)  # warm-up
    print("| streams | aggregate tok/s | vs 1 stream | TTFT median / p99 (ms) "
          "| inter-token median / p99 (ms) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    base = None
    for n in args.streams:
        rate, ttft, gaps = round_of(args.base_url, n, args.max_tokens)
        base = base or rate
        print(f"| {n} | {rate:.0f} | {rate / base:.2f}x "
              f"| {statistics.median(ttft) * 1e3:.1f} / {percentile(ttft, 0.99) * 1e3:.1f} "
              f"| {statistics.median(gaps) * 1e3:.2f} / {percentile(gaps, 0.99) * 1e3:.2f} |")


if __name__ == "__main__":
    main()
