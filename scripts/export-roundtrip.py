#!/usr/bin/env python3
"""Round trips of `llama-cli export` through the real tools.

1. transformers loads our Hugging Face exports (from a llama2.c .bin and from every hf/
   fixture folder, in f32 and in the folder's own dtype) and gives the logits
   transformers computes on the source (reference.json / reference.safetensors, or the
   source folder itself), with the tokenizer's ids;
2. peft loads our PEFT exports (the fixture adapter read and written back, and the adapter
   of a short `pretrain --lora-rank` run) onto our HF export of the base and matches our
   merged model (`merge-lora`, exported as HF and run by transformers);
3. gguf-py (llama.cpp's own Python package) reads our GGUF exports bit-exactly: every
   tensor's type, shape and bytes equal what gguf-py's quantizer makes of the same f32
   weights (and the bytes of llama.cpp's conversions in the fixtures), the metadata the
   converter writes; and, where `llama_cpp` (llama-cpp-python) is importable, llama.cpp
   loads them and gives the reference greedy ids.

    pip install transformers peft safetensors torch sentencepiece protobuf gguf
    cargo build -p llama-cli
    python3 scripts/export-roundtrip.py [--llama-cli target/debug/llama-cli] [--fixtures DIR]
        [--only hf,peft,gguf]

Prints one line per check with the largest absolute logit difference; exits 1 if a check
fails (logits beyond atol 1e-5 + rtol 1e-4, different token ids or different bytes).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ATOL, RTOL = 1e-5, 1e-4
FAILED = []


def run(cli, *args):
    """Run llama-cli on ndarray (the backend our exactness tests use)."""
    cmd = [str(cli), "--backend", "ndarray", "--quiet", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stderr}")


def load(folder):
    from transformers import AutoModelForCausalLM

    """The folder as transformers runs the fixtures' references: in its stored dtype (which
    rounds RoPE's inverse frequencies), then computed in f32."""
    return AutoModelForCausalLM.from_pretrained(folder, torch_dtype="auto").float().eval()


def logits(model, ids):
    import torch

    with torch.no_grad():
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
    import transformers

    if not source.is_dir() or int(transformers.__version__.split(".")[0]) >= 5:
        return False
    config = json.loads((source / "config.json").read_text())
    params = config.get("rope_parameters") or {}
    return params.get("rope_type", "default") != "default" and "rope_scaling" not in config


def loads_tokenizer(folder):
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(folder)
        return True
    except Exception:  # noqa: BLE001
        return False


def hf_exports(cli, fixtures, tmp, reference):
    import transformers
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    tensors = load_file(fixtures / "real-models/reference.safetensors")
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


def gguf_tensors(path):
    """name -> (ggml type name, shape innermost first, payload bytes), as gguf-py reads them."""
    import gguf

    reader = gguf.GGUFReader(path)
    return {t.name: (t.tensor_type.name, [int(d) for d in t.shape], bytes(t.data.tobytes()))
            for t in reader.tensors}


def gguf_fields(path, prefix):
    import gguf

    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith(prefix)}


def intended(f32_tensors, dtype):
    """What llama.cpp's converter stores for f32 weights in `dtype`: gguf-py's own
    quantizer; 1-D tensors F32; Q8_0 rows that are not whole blocks fall back to F16."""
    import gguf

    Q = gguf.GGMLQuantizationType
    out = {}
    for name, (_, shape, data) in f32_tensors.items():
        a = np.frombuffer(data, dtype=np.float32).reshape(list(reversed(shape)))
        kind = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}[dtype]
        if a.ndim == 1:
            kind = Q.F32
        elif kind == Q.Q8_0 and a.shape[-1] % 32:
            kind = Q.F16
        out[name] = (kind.name, shape, bytes(gguf.quants.quantize(a, kind).tobytes()))
    return out


def check_tensors(label, got, want):
    bad = [n for n in want if got.get(n) != want[n]] + [n for n in got if n not in want]
    print(f"{'ok  ' if not bad else 'FAIL'} {label}: {len(got)} tensors"
          + (f", differing: {bad[:4]}" if bad else " equal (type, shape, bytes)"))
    if bad:
        FAILED.append(label)


def llama_cpp_greedy(path, prompt_ids, n):
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=256, verbose=False)
    out = []
    for token in llm.generate(prompt_ids, temp=0.0, top_k=1, reset=True):
        out.append(token)
        if len(out) == n:
            break
    return out


def gguf_exports(cli, fixtures, tmp, reference):
    stories = fixtures / "models/stories260K"
    gdir = fixtures / "real-models/gguf"
    f32 = gguf_tensors(gdir / "stories260K-f32.gguf")  # llama.cpp's conversion of the .bin
    try:
        import llama_cpp  # noqa: F401
        have_llama_cpp = True
    except ImportError:
        have_llama_cpp = False
        print("skip llama.cpp loads: llama_cpp (llama-cpp-python) is not importable")
    for dtype in ["f32", "f16", "bf16", "q8_0"]:
        out = tmp / f"stories260K-{dtype}.gguf"
        run(cli, "export", "--checkpoint", stories / "stories260K.bin", "--format", "gguf",
            "--dtype", dtype, "--out", out)
        label = f"gguf-py on export of stories260K.bin ({dtype})"
        got = gguf_tensors(out)
        check_tensors(f"{label} vs gguf-py's quantizer on the f32 weights", got, intended(f32, dtype))
        fixture = gdir / f"stories260K-{dtype}.gguf"
        if fixture.exists():
            check_tensors(f"{label} vs the fixture llama.cpp's gguf-py wrote", got, gguf_tensors(fixture))
        keys = ["llama.", "tokenizer.ggml.", "general.architecture", "general.file_type"]
        want = {k: v for p in keys for k, v in gguf_fields(fixture if fixture.exists() else gdir / "stories260K-f32.gguf", p).items()}
        mine = {k: v for p in keys for k, v in gguf_fields(out, p).items()}
        if not fixture.exists():
            want.pop("general.file_type", None)
            mine.pop("general.file_type", None)
        missing = {k for k in want if mine.get(k) != want[k]}
        ok = not missing
        print(f"{'ok  ' if ok else 'FAIL'} {label}: metadata as the converter's"
              + ("" if ok else f", differing: {sorted(missing)}")
              + f" (ours adds {sorted(set(mine) - set(want))})")
        if not ok:
            FAILED.append(label)
        if have_llama_cpp:
            entry = reference["models"].get(f"gguf/stories260K-{dtype}.gguf") or reference["models"]["gguf/stories260K-f32.gguf"]
            g = entry["greedy"][0]
            ids = llama_cpp_greedy(out, g["prompt_ids"], len(g["new_ids"]))
            expected = g["new_ids"] if f"gguf/stories260K-{dtype}.gguf" in reference["models"] else \
                llama_cpp_greedy(gdir / "stories260K-f32.gguf", g["prompt_ids"], len(g["new_ids"]))
            check_ids(f"llama.cpp greedy ids on our {dtype} export", ids, expected)
    out = tmp / "tiny-llama3-bf16.gguf"
    run(cli, "export", "--checkpoint", fixtures / "real-models/hf/tiny-llama3", "--format", "gguf",
        "--dtype", "bf16", "--out", out)
    check_tensors("gguf-py on export of hf/tiny-llama3 (bf16, rope_freqs) vs llama.cpp's conversion",
                  gguf_tensors(out), gguf_tensors(gdir / "tiny-llama3-bf16.gguf"))
    from importlib.metadata import version

    print(f"info gguf {version('gguf')}, numpy {np.__version__}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parent.parent
    parser.add_argument("--llama-cli", type=Path, default=root / "target/debug/llama-cli")
    parser.add_argument("--fixtures", type=Path,
                        default=Path(os.environ.get("LLAMA_FIXTURES", root.parent / "shared/fixtures")))
    parser.add_argument("--only", default="hf,peft,gguf", help="comma-separated: hf, peft, gguf")
    args = parser.parse_args()
    fixtures = args.fixtures.resolve()
    reference = json.loads((fixtures / "real-models/reference.json").read_text())
    only = set(args.only.split(","))
    if only & {"hf", "peft"}:
        import peft
        import torch
        import transformers

        print(f"transformers {transformers.__version__}, peft {peft.__version__}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "hf" in only:
            hf_exports(args.llama_cli, fixtures, tmp, reference)
        if "peft" in only:
            peft_exports(args.llama_cli, fixtures, tmp, reference)
        if "gguf" in only:
            gguf_exports(args.llama_cli, fixtures, tmp, reference)
    if FAILED:
        sys.exit(f"{len(FAILED)} checks failed")
    print("all checks passed")


if __name__ == "__main__":
    main()
