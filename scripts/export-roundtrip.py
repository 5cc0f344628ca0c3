#!/usr/bin/env python3
"""Round trips of `llama-cli export` through the real tools.

1. transformers loads our Hugging Face exports (from a llama2.c .bin and from every hf/
   fixture folder, in f32 and in the folder's own dtype) and gives the logits
   transformers computes on the source (reference.json / reference.safetensors, or the
   source folder itself), with the tokenizer's ids;
2. peft loads our PEFT exports (the fixture adapter read and written back, and the adapter
   of a short `pretrain --lora-rank` run) onto our HF export of the base and matches our
   merged model (`merge-lora`, exported as HF and run by transformers).

    pip install transformers peft safetensors torch sentencepiece protobuf
    cargo build -p llama-cli
    python3 scripts/export-roundtrip.py [--llama-cli target/debug/llama-cli] [--fixtures DIR]

Prints one line per check with the largest absolute logit difference; exits 1 if a check
fails (logits beyond atol 1e-5 + rtol 1e-4, or different token ids).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ATOL, RTOL = 1e-5, 1e-4
FAILED = []


def run(cli, *args):
    """Run llama-cli on ndarray (the backend our exactness tests use)."""
    cmd = [str(cli), "--backend", "ndarray", "--quiet", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stderr}")


def load(folder):
    """The folder as transformers runs the fixtures' references: in its stored dtype (which
    rounds RoPE's inverse frequencies), then computed in f32."""
    return AutoModelForCausalLM.from_pretrained(folder, torch_dtype="auto").float().eval()


@torch.no_grad()
def logits(model, ids):
    return model(torch.tensor([ids])).logits[0].float()


def check(label, got, want):
    diff = (got - want).abs()
    ok = bool((diff <= ATOL + RTOL * want.abs()).all())
    print(f"{'ok  ' if ok else 'FAIL'} {label}: max |diff| {diff.max().item():.3g}")
    if not ok:
        FAILED.append(label)


def check_ids(label, got, want):
    ok = list(got) == list(want)
    print(f"{'ok  ' if ok else 'FAIL'} {label}")
    if not ok:
        FAILED.append(label)


def misread_by_this_transformers(source):
    """Whether this transformers (4.x) cannot read the source folder's RoPE: transformers
    5's `rope_parameters` with a scaling type, and no top-level `rope_scaling`."""
    if not source.is_dir() or int(transformers.__version__.split(".")[0]) >= 5:
        return False
    config = json.loads((source / "config.json").read_text())
    params = config.get("rope_parameters") or {}
    return params.get("rope_type", "default") != "default" and "rope_scaling" not in config


def loads_tokenizer(folder):
    try:
        AutoTokenizer.from_pretrained(folder)
        return True
    except Exception:  # noqa: BLE001
        return False


def hf_exports(cli, fixtures, tmp, reference, tensors):
    stories = fixtures / "models/stories260K"
    sources = [
        ("hf/stories260K", stories / "stories260K.bin", "f32", ["--tokenizer", stories / "tok512.model"]),
        ("hf/stories260K", fixtures / "real-models/hf/stories260K", "f32", []),
        ("hf/tiny-llama3", fixtures / "real-models/hf/tiny-llama3", "bf16", []),
        ("hf/tiny-llama3-eot", fixtures / "real-models/hf/tiny-llama3-eot", "bf16", []),
        ("hf/tiny-llama2-f16", fixtures / "real-models/hf/tiny-llama2-f16", "f16", []),
        ("hf/tiny-llama2-f16", fixtures / "real-models/hf/tiny-llama2-f16", "f32", []),
    ]
    for i, (key, source, dtype, extra) in enumerate(sources):
        out = tmp / f"hf-{i}"
        run(cli, "export", "--checkpoint", source, "--format", "hf", "--dtype", dtype, "--out", out, *extra)
        model = load(out)
        # The same transformers on the source folder (for the .bin: transformers' own
        # conversion of it), so that only our export differs; reference.json's logits were
        # computed by the fixtures' transformers, whose RoPE dtype handling may differ.
        source_model = load(source if source.is_dir() else fixtures / "real-models" / key)
        entry = reference["models"][key]
        label = f"transformers on export of {source.relative_to(fixtures)} ({dtype})"
        rows = entry["logits_all_positions"]
        got = logits(model, rows["ids"])
        if misread_by_this_transformers(source):
            print(f"skip {label} vs on its source: transformers {transformers.__version__} "
                  "ignores the source's rope_parameters (transformers 5's convention); the "
                  "export's top-level rope_theta/rope_scaling it reads")
        else:
            check(f"{label} vs on its source, {len(rows['ids'])} positions", got,
                  logits(source_model, rows["ids"]))
        stored = tensors[rows["logits"]]
        diff = (got[rows["rows"]] - stored).abs().max().item()
        print(f"info {label} vs reference.json's rows ({reference['transformers']}): max |diff| {diff:.3g}")
        try:
            tok = AutoTokenizer.from_pretrained(out)
        except Exception as error:  # noqa: BLE001 (reported, compared with the source's)
            if source.is_dir() and not loads_tokenizer(source):
                print(f"skip {label}, tokenizer: this transformers cannot read the source "
                      f"folder's tokenizer files either ({type(error).__name__}: {error})")
                continue
            raise
        for case in entry["tokenizer"][:2]:
            check_ids(f"{label}, tokenizer ids of {case['text']!r}", tok(case["text"])["input_ids"], case["ids"])


def peft_exports(cli, fixtures, tmp, reference):
    from peft import PeftModel

    stories = fixtures / "models/stories260K"
    bin_path, tok512 = stories / "stories260K.bin", stories / "tok512.model"
    base = tmp / "base-hf"
    run(cli, "export", "--checkpoint", bin_path, "--format", "hf", "--out", base, "--tokenizer", tok512)
    # The adapter of a short LoRA run on q, k, v and w2 (B trained away from zero).
    text = tmp / "text.txt"
    text.write_text("\n".join(reference["models"]["hf/stories260K"]["perplexity"]["documents"]) + "\n")
    run_dir = tmp / "lora-run"
    run(cli, "pretrain", "--checkpoint", bin_path, "--tokenizer", tok512, "--text", text,
        "--seq-len", 32, "--batch-size", 4, "--lr", "1e-2", "--warmup-steps", 1, "--max-steps", 4,
        "--lora-rank", 4, "--lora-targets", "q,k,v,w2", "--out-dir", run_dir)
    adapters = [
        ("the fixture's peft adapter, read and written back", fixtures / "real-models/peft/stories260K-lora"),
        ("a pretrain --lora-rank run's adapter", run_dir / "adapter-last.safetensors"),
    ]
    ids = reference["models"]["hf/stories260K"]["logits_all_positions"]["ids"]
    for i, (label, adapter) in enumerate(adapters):
        peft_dir = tmp / f"peft-{i}"
        run(cli, "export", "--checkpoint", bin_path, "--format", "peft", "--adapter", adapter, "--out", peft_dir)
        merged = tmp / f"merged-{i}.safetensors"
        run(cli, "merge-lora", "--checkpoint", bin_path, "--adapter", adapter, "--out", merged)
        merged_hf = tmp / f"merged-hf-{i}"
        run(cli, "export", "--checkpoint", merged, "--format", "hf", "--out", merged_hf, "--tokenizer", tok512)
        with_adapter = PeftModel.from_pretrained(load(base), peft_dir).eval()
        check(f"peft on our export of {label} vs our merged model, {len(ids)} positions",
              logits(with_adapter, ids), logits(load(merged_hf), ids))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parent.parent
    parser.add_argument("--llama-cli", type=Path, default=root / "target/debug/llama-cli")
    parser.add_argument("--fixtures", type=Path,
                        default=Path(os.environ.get("LLAMA_FIXTURES", root.parent / "shared/fixtures")))
    args = parser.parse_args()
    fixtures = args.fixtures.resolve()
    reference = json.loads((fixtures / "real-models/reference.json").read_text())
    tensors = load_file(fixtures / "real-models/reference.safetensors")
    import peft

    print(f"transformers {transformers.__version__}, peft {peft.__version__}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hf_exports(args.llama_cli, fixtures, tmp, reference, tensors)
        peft_exports(args.llama_cli, fixtures, tmp, reference)
    if FAILED:
        sys.exit(f"{len(FAILED)} checks failed")
    print("all checks passed")


if __name__ == "__main__":
    main()
