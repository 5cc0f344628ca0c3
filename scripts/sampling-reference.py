#!/usr/bin/env python3
"""Writes llama-model/testdata/sampling-processors.json: what `transformers`' logits
processors make of fixed logits, for the sampling controls' unit tests (cargo test needs no
Python). Run from the repository root: `pip install torch transformers`, then
`python3 scripts/sampling-reference.py`.

Each case: the raw logits of one step, the prompt and generated ids before it, the controls,
and the processed scores (null for a removed token) with their probabilities (0 for it). The processors run in
transformers' order: repetition penalty (prompt and generated ids), then the presence and
frequency penalties (OpenAI's formula, generated ids only; transformers has none), then
temperature, top-k, top-p, min-p.
"""
import json
import pathlib

import torch
import transformers
from transformers import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

VOCAB = 64
OUT = pathlib.Path("llama-model/testdata/sampling-processors.json")


def presence_frequency(scores, generated, presence, frequency):
    """OpenAI: logit[j] -= count[j] * frequency + (count[j] > 0) * presence."""
    counts = torch.bincount(torch.tensor(generated, dtype=torch.long), minlength=VOCAB)
    counts = counts.to(scores.dtype)
    return scores - counts * frequency - (counts > 0).to(scores.dtype) * presence


def process(logits, prompt, generated, c):
    scores = torch.tensor([logits], dtype=torch.float32)
    ids = torch.tensor([prompt + generated], dtype=torch.long)
    if c.get("repetition_penalty", 1.0) != 1.0:
        scores = RepetitionPenaltyLogitsProcessor(c["repetition_penalty"])(ids, scores)
    if c.get("presence_penalty", 0.0) or c.get("frequency_penalty", 0.0):
        scores = presence_frequency(
            scores, generated, c.get("presence_penalty", 0.0), c.get("frequency_penalty", 0.0)
        )
    if c["temperature"] != 1.0:
        scores = TemperatureLogitsWarper(c["temperature"])(ids, scores)
    if c.get("top_k"):
        scores = TopKLogitsWarper(c["top_k"])(ids, scores)
    if c.get("top_p", 1.0) < 1.0:
        scores = TopPLogitsWarper(c["top_p"])(ids, scores)
    if c.get("min_p"):
        scores = MinPLogitsWarper(c["min_p"])(ids, scores)
    probabilities = torch.softmax(scores.double(), dim=-1)[0].tolist()
    # JSON has no infinities: a removed token's score is null.
    return probabilities, [s if s != float("-inf") else None for s in scores[0].tolist()]


def main():
    gen = torch.Generator().manual_seed(20261207)
    logits = (torch.randn(VOCAB, generator=gen) * 2.5).tolist()
    prompt = [1, 5, 9, 9, 17, 33, 40]
    generated = [9, 12, 12, 12, 40, 51, 3]
    controls = [
        {"temperature": 1.0, "repetition_penalty": 1.3},
        {"temperature": 1.0, "repetition_penalty": 0.8},
        {"temperature": 1.0, "presence_penalty": 0.5, "frequency_penalty": 0.3},
        {"temperature": 1.0, "presence_penalty": -0.4, "frequency_penalty": 0.0},
        {"temperature": 0.8, "top_k": 10},
        {"temperature": 1.2, "min_p": 0.1},
        {"temperature": 0.9, "top_k": 20, "top_p": 0.7},
        {"temperature": 1.0, "top_p": 0.5, "min_p": 0.3},
        {
            "temperature": 0.7,
            "repetition_penalty": 1.2,
            "presence_penalty": 0.4,
            "frequency_penalty": 0.2,
            "top_k": 15,
            "top_p": 0.9,
            "min_p": 0.05,
        },
    ]
    cases = []
    for c in controls:
        probs, scores = process(logits, prompt, generated, c)
        cases.append({"controls": c, "probabilities": probs, "scores": scores})
    OUT.write_text(
        json.dumps(
            {
                "made_by": f"scripts/sampling-reference.py, transformers {transformers.__version__}, torch {torch.__version__}",
                "logits": logits,
                "prompt": prompt,
                "generated": generated,
                "cases": cases,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {OUT}: {len(cases)} cases")


if __name__ == "__main__":
    main()
