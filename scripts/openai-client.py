#!/usr/bin/env python3
"""Drive `llama-cli serve` with the `openai` package, as an application would.

Completions and chat, whole and streamed, stop strings, log-probabilities, and an error
case. Start the servers first (see docs/serving.md), then:

    python3 scripts/openai-client.py --base-url http://127.0.0.1:8080/v1 \
        [--chat-base-url http://127.0.0.1:8081/v1]

The key is read from LLAMA_API_KEY (any text when the server has none). Exits non-zero
when an answer is not shaped as expected.
"""

import argparse
import os
import sys

import openai
from openai import OpenAI


def check(condition, what):
    if not condition:
        sys.exit(f"FAILED: {what}")


def completions(client, model):
    prompt = "Once upon a time"
    whole = client.completions.create(model=model, prompt=prompt, max_tokens=24, temperature=0)
    text = whole.choices[0].text
    print(f"completion (greedy): {prompt!r} -> {text!r}")
    print(f"  finish_reason={whole.choices[0].finish_reason} usage={whole.usage}")
    check(whole.choices[0].finish_reason == "length", "a greedy completion runs to max_tokens")

    pieces = []
    for chunk in client.completions.create(
        model=model, prompt=prompt, max_tokens=24, temperature=0, stream=True
    ):
        pieces.append(chunk.choices[0].text)
    print(f"completion (streamed, {len(pieces)} chunks): {''.join(pieces)!r}")
    check("".join(pieces) == text, "the streamed text equals the whole one")

    cut = text.split()[2]
    stopped = client.completions.create(
        model=model, prompt=prompt, max_tokens=24, temperature=0, stop=[cut]
    )
    print(f"completion (stop={cut!r}): {stopped.choices[0].text!r} "
          f"finish_reason={stopped.choices[0].finish_reason}")
    check(cut not in stopped.choices[0].text, "the stop string is not printed")
    check(stopped.choices[0].finish_reason == "stop", "a stop string ends with stop")

    scored = client.completions.create(
        model=model, prompt=prompt, max_tokens=3, temperature=0.8, seed=7, logprobs=2
    )
    lp = scored.choices[0].logprobs
    print(f"completion (logprobs=2, seed 7): {scored.choices[0].text!r}")
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        print(f"  {token!r}: {logprob:.4f}; top {top}")
    check(len(lp.tokens) == 3 and all(len(t) == 2 for t in lp.top_logprobs), "logprobs shape")


def chat(client, model):
    messages = [{"role": "user", "content": "Tell me a story."}]
    whole = client.chat.completions.create(
        model=model, messages=messages, max_tokens=24, temperature=0,
        logprobs=True, top_logprobs=2,
    )
    reply = whole.choices[0].message.content
    print(f"chat (greedy): {reply!r} finish_reason={whole.choices[0].finish_reason}")
    first = whole.choices[0].logprobs.content[0]
    print(f"  first token {first.token!r}: {first.logprob:.4f}; "
          f"top {[(t.token, round(t.logprob, 4)) for t in first.top_logprobs]}")
    pieces = []
    for chunk in client.chat.completions.create(
        model=model, messages=messages, max_tokens=24, temperature=0, stream=True
    ):
        pieces.append(chunk.choices[0].delta.content or "")
    print(f"chat (streamed): {''.join(pieces)!r}")
    check("".join(pieces) == reply, "the streamed reply equals the whole one")


def error_case(client, model):
    try:
        client.completions.create(model=model, prompt="Hi", max_tokens=-1)
    except openai.BadRequestError as e:
        message = e.body.get("message") if isinstance(e.body, dict) else e.message
        print(f"error case (max_tokens=-1): HTTP {e.status_code}: {message}")
        return
    sys.exit("FAILED: max_tokens=-1 was accepted")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    parser.add_argument("--chat-base-url", help="a server whose model has a chat template")
    args = parser.parse_args()
    key = os.environ.get("LLAMA_API_KEY", "none")
    client = OpenAI(base_url=args.base_url, api_key=key)
    model = client.models.list().data[0].id
    print(f"model: {model} (openai {openai.__version__})")
    completions(client, model)
    error_case(client, model)
    if args.chat_base_url:
        chat_client = OpenAI(base_url=args.chat_base_url, api_key=key)
        chat(chat_client, chat_client.models.list().data[0].id)
    print("all checks passed")


if __name__ == "__main__":
    main()
