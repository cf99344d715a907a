"""RLMRec's profiling prompts (arXiv 2310.15950, appendix A.2), built from a prepared dataset.

Items first: the system prompt asks which kinds of users would enjoy the item, given its title
and metadata (the paper's eq. 13: title and attributes when there is no description), as JSON
``{"summarization", "reasoning"}``. Users then: which kinds of items the user is likely to
enjoy, given a seeded sample of their **training** items, each with its title and its item
profile (eq. 14; no reviews here). Only the ``train`` split is read, and a user prompt records
the item ids it was built from (``PromptRow.used``), so leakage is checked exactly.

The text is ours, adapted from the paper's description of its prompts to the dataset's domain.
``prompt_hash`` covers the system prompt, the user message and the generation settings: a
profile is regenerated exactly when one of them changes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylrec.profiles.config import ProfilesConfig, UserSampleConfig

__all__ = [
    "PROMPT_VERSION",
    "PromptRow",
    "system_prompt",
    "item_attributes",
    "item_prompts",
    "user_samples",
    "user_prompts",
    "user_message",
    "parse_profile",
    "profile_text",
    "summary_text",
    "render_chat",
    "generation_salt",
    "prompt_hash",
    "item_metadata_text",
    "user_metadata_text",
]

PROMPT_VERSION = "rlmrec/1"
# Dataset columns that are ids, not metadata a prompt should show.
_ID_COLUMNS = frozenset({"item_id", "iid", "user_id", "uid"})
_NOUNS = {"movie": ("movie", "movies", "WATCHED MOVIES"), "book": ("book", "books", "READ BOOKS")}


def _nouns(domain: str) -> tuple[str, str, str]:
    return _NOUNS.get(domain, ("item", "items", "INTERACTED ITEMS"))


def system_prompt(kind: str, domain: str) -> str:
    """The instruction of an item's or a user's profile, in the domain's nouns."""
    one, many, _ = _nouns(domain)
    answer = '{"summarization": "<text>", "reasoning": "<text>"}'
    if kind == "item":
        return (
            "You will serve as an assistant to help me summarize which types of users would enjoy a "
            f"specific {one}. I will give you the {one}'s basic information as JSON: its title and, "
            "where known, attributes such as genres and release year.\n"
            "Requirements:\n"
            f"1. Answer with one JSON object and nothing else: {answer}.\n"
            f"2. summarization: which types of users would enjoy this {one}, in at most 200 words.\n"
            "3. reasoning: why you wrote that summary, in at most 200 words.\n"
            "Write no text outside the JSON object."
        )
    if kind == "user":
        return (
            f"You will serve as an assistant to help me determine which types of {many} a specific "
            f"user is likely to enjoy. I will give you a list of {many} the user has enjoyed, each as "
            "JSON with its title and a description of the users who would enjoy it.\n"
            "Requirements:\n"
            f"1. Answer with one JSON object and nothing else: {answer}.\n"
            f"2. summarization: which types of {many} this user is likely to enjoy, in at most 100 words.\n"
            "3. reasoning: why you wrote that summary.\n"
            "Write no text outside the JSON object."
        )
    raise ValueError(f"kind {kind!r} is neither 'item' nor 'user'")


@dataclass(frozen=True)
class PromptRow:
    """One profile to write: its kind, dataset id, the two messages, the training item ids a
    user prompt shows (empty for items) and its hash."""

    kind: str
    id: int
    system: str
    user: str
    used: tuple[int, ...]
    hash: str


def generation_salt(config: ProfilesConfig) -> str:
    """What besides the messages decides a profile's text: the backbone and the decoding
    settings (not the batch size, a throughput setting)."""
    generation = config.generation.model_dump(mode="json", exclude={"batch_size"})
    return json.dumps(
        {"backbone": config.backbone.name, "generation": generation, "v": PROMPT_VERSION}, sort_keys=True
    )


def prompt_hash(system: str, user: str, salt: str) -> str:
    digest = hashlib.sha256()
    for part in (salt, system, user):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return " ".join(value.split())
    return value


def item_attributes(items: pa.Table) -> dict[int, dict[str, Any]]:
    """{iid: {"title": ..., other metadata columns ...}} with empty values left out; ``title``
    first. Raises naming the column when ``items.parquet`` has no ``iid``."""
    if "iid" not in items.column_names:
        raise ValueError(f"items.parquet has no 'iid' column (it has {items.column_names})")
    names = [n for n in items.column_names if n not in _ID_COLUMNS]
    names.sort(key=lambda n: (n != "title", items.column_names.index(n)))
    out: dict[int, dict[str, Any]] = {}
    for row in items.select(["iid", *names]).to_pylist():
        out[int(row["iid"])] = {
            n: _clean(row[n]) for n in names if row[n] is not None and str(row[n]).strip() not in ("", "nan")
        }
    return out


def _title(attributes: Mapping[str, Any], iid: int) -> str:
    return str(attributes.get("title") or f"item {iid}")


def item_prompts(config: ProfilesConfig, attributes: Mapping[int, Mapping[str, Any]]) -> list[PromptRow]:
    """Every item's prompt (the lowest ``max_items`` iids when that is set), by iid."""
    system, salt = system_prompt("item", config.domain), generation_salt(config)
    iids = sorted(attributes)[: config.max_items] if config.max_items else sorted(attributes)
    rows = []
    for iid in iids:
        info = {
            "title": _title(attributes[iid], iid),
            **{k: v for k, v in attributes[iid].items() if k != "title"},
        }
        user = json.dumps(info, ensure_ascii=False)
        rows.append(PromptRow("item", iid, system, user, (), prompt_hash(system, user, salt)))
    return rows


def user_samples(
    train: pa.Table, users: UserSampleConfig, uids: Iterable[int] | None = None
) -> dict[int, list[int]]:
    """{uid: sorted iids}: a seeded uniform sample (at most ``users.max_items``) of each
    user's distinct training items, liked ones only where the user has any (``liked_only``).

    ``train`` must be the training split: nothing else may describe a user (RLMRec's leakage
    rule). A user's sample depends on the seed, the uid and their own rows only, so it does not
    change when other users are added."""
    columns = ["uid", "iid"] + (["label"] if users.liked_only and "label" in train.column_names else [])
    table = train.select(columns)
    order = pc.sort_indices(table, [("uid", "ascending"), ("iid", "ascending")])
    table = table.take(order)
    uid = table["uid"].to_numpy()
    iid = table["iid"].to_numpy()
    label = table["label"].to_numpy() if "label" in table.column_names else None
    starts = np.flatnonzero(np.r_[True, uid[1:] != uid[:-1]]) if len(uid) else np.array([], dtype=np.int64)
    ends = np.r_[starts[1:], len(uid)] if len(uid) else starts
    wanted = None if uids is None else set(int(u) for u in uids)
    out: dict[int, list[int]] = {}
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        user = int(uid[start])
        if wanted is not None and user not in wanted:
            continue
        items = iid[start:end]
        if label is not None:
            liked = items[label[start:end] == 1]
            items = liked if len(liked) else items
        items = np.unique(items)
        if len(items) > users.max_items:
            rng = np.random.default_rng([users.seed, user])
            items = np.sort(rng.choice(items, size=users.max_items, replace=False))
        out[user] = [int(i) for i in items]
    for user in wanted or ():
        out.setdefault(user, [])  # no training rows: a cold user, described by an empty list
    return out


def user_message(
    iids: Iterable[int],
    attributes: Mapping[int, Mapping[str, Any]],
    descriptions: Mapping[int, str],
    domain: str,
    description_chars: int,
) -> str:
    """The user message: one JSON line per sampled item, its title and its (cut) profile."""
    _, many, header = _nouns(domain)
    lines = [f"{header}:"]
    for iid in iids:
        description = descriptions.get(iid) or "None"
        if len(description) > description_chars:
            description = description[:description_chars].rstrip() + "..."
        entry = {"title": _title(attributes.get(iid, {}), iid), "description": description}
        lines.append(json.dumps(entry, ensure_ascii=False))
    if len(lines) == 1:
        lines.append(f"(no {many} yet)")
    return "\n".join(lines)


def user_prompts(
    config: ProfilesConfig,
    train: pa.Table,
    users: Iterable[int],
    attributes: Mapping[int, Mapping[str, Any]],
    descriptions: Mapping[int, str],
) -> list[PromptRow]:
    """Every user's prompt, by uid, from their training sample and the item profiles."""
    system, salt = system_prompt("user", config.domain), generation_salt(config)
    samples = user_samples(train, config.users, users)
    rows = []
    for uid in sorted(samples):
        used = tuple(samples[uid])
        user = user_message(used, attributes, descriptions, config.domain, config.users.description_chars)
        rows.append(PromptRow("user", uid, system, user, used, prompt_hash(system, user, salt)))
    return rows


_OBJECT = re.compile(r"\{.*\}", re.DOTALL)
_STRING_BODY = r'(?:[^"\\]|\\.)*'  # a JSON string's characters, escapes included
_FIELD = r'"{}"\s*:\s*("' + _STRING_BODY + '")'
_OPEN_SUMMARY = re.compile(r'"summarization"\s*:\s*"(' + _STRING_BODY + r")\\?$", re.DOTALL)


def _json(text: str) -> Any:
    """``text`` decoded as JSON, or None when it is not JSON."""
    try:
        return json.loads(text)
    except ValueError:
        return None


def _string_field(text: str, name: str) -> str | None:
    """The first complete JSON string value of ``name`` in ``text``, decoded, or None."""
    match = re.search(_FIELD.format(name), text, re.DOTALL)
    value = None if match is None else _json(match.group(1))
    return value if isinstance(value, str) else None


def _whole_object(text: str) -> tuple[Any, Any] | None:
    match = _OBJECT.search(text)
    value = None if match is None else _json(match.group(0))
    if not isinstance(value, dict):
        return None
    return value.get("summarization"), value.get("reasoning", "")


def parse_profile(text: str) -> tuple[str, str] | None:
    """(summarization, reasoning) from a generated answer, or None when no non-empty
    ``summarization`` string can be read from it. The JSON object asked for may sit inside code
    fences or other text (the outermost braces are tried); when it is not whole (cut off by
    ``max_new_tokens``, stopped after the summary, or broken after it) a complete
    ``"summarization": "..."`` string is still read, with whatever ``reasoning`` string is
    complete (else empty): RLMRec embeds the summary only."""
    whole = _whole_object(text)
    if whole is not None:
        summary, reasoning = whole
    else:
        summary, reasoning = _string_field(text, "summarization"), _string_field(text, "reasoning") or ""
    if not isinstance(summary, str) or not summary.strip():
        return None
    if not isinstance(reasoning, str):
        reasoning = json.dumps(reasoning, ensure_ascii=False)
    return summary.strip(), reasoning.strip()


def summary_text(summary: str | None, raw: str, parse_ok: bool) -> str | None:
    """A profile's summary: the parsed one; else one cut off by ``max_new_tokens`` (its string
    opened and never closed), read to where it stops; None when the answer holds none."""
    if parse_ok and summary:
        return summary
    match = _OPEN_SUMMARY.search(raw)
    if match is None:
        return None
    value = _json(f'"{match.group(1)}"')
    return (value if isinstance(value, str) else match.group(1)).strip()  # else: an escape the cut broke


def profile_text(summary: str | None, raw: str, parse_ok: bool) -> str:
    """What stands for a profile in its embedding: its summary (``summary_text``), else the
    raw answer."""
    text = summary_text(summary, raw, parse_ok)
    return raw if text is None else text


def render_chat(tokenizer: Any, system: str, user: str) -> str:
    """The prompt text in the backbone's chat template, ready for the assistant's answer; a
    plain ``System:/User:/Assistant:`` layout for a tokenizer without a template (the tests'
    tiny model)."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"System: {system}\nUser: {user}\nAssistant:"


def item_metadata_text(attributes: Mapping[str, Any], iid: int) -> str:
    """The ablation's item text, no LLM: ``<title>, <genres>, <year>`` (what is known)."""
    parts = [_title(attributes, iid)]
    for key in ("genres", "genre", "categories", "release_year", "year"):
        if attributes.get(key):
            parts.append(str(attributes[key]))
    return ", ".join(parts)


def user_metadata_text(iids: Iterable[int], attributes: Mapping[int, Mapping[str, Any]]) -> str:
    """The ablation's user text: the titles of their training sample (the user prompts' rule)."""
    titles = [_title(attributes.get(i, {}), i) for i in iids]
    return "; ".join(titles) if titles else "no items yet"
