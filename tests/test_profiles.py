"""RLMRec's profile jobs (arXiv 2310.15950): generated, committed, leak-free, counted, embedded.

A tiny random Llama writes the profiles (its answers are garbage: every one is retried and kept
unparsed, which is what the counting tests need); real MiniLM embeds them; a real local Ray
instance runs both jobs and moto's S3 server holds one round trip.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from raylrec.config import build_config
from raylrec.data.output import read_table
from raylrec.data.prepare import prepare
from raylrec.profiles import store
from raylrec.profiles.config import build_profiles_config
from raylrec.profiles.embed import embed_profiles, read_embeddings
from raylrec.profiles.generate import ProfileWriter, _descriptions, generate_profiles, raw_ids
from raylrec.profiles.prompts import (
    generation_salt,
    item_attributes,
    item_metadata_text,
    parse_profile,
    profile_text,
    prompt_hash,
    system_prompt,
    user_prompts,
    user_samples,
)

MAX_USER_ITEMS = 6


def small_dataset(path: str, users: int = 25, items: int = 40, events: int = 600) -> str:
    """A prepared synthetic log (by default 40 items with titles, 25 users), random 8:1:1 split."""
    source = {"type": "synthetic", "num_events": events, "num_users": users, "num_items": items, "seed": 3}
    data = build_config(
        {
            "data": {
                "source": source,
                "output": path,
                "split": {"protocol": "random_ratio", "ratios": [0.8, 0.1, 0.1], "seed": 3},
            }
        }
    ).data
    prepare(data)
    return path


def profiles_config(dataset: str, output: str, **extra):
    raw = {
        "dataset": dataset,
        "output": output,
        "backbone": {"name": "tiny-random-llama"},
        "generation": {"max_new_tokens": 6, "batch_size": 4},
        "users": {"max_items": MAX_USER_ITEMS},
        "chunk_size": 8,
        "ray": {"num_cpus": 2},
        **extra,
    }
    return build_profiles_config(raw)


@pytest.fixture(scope="module")
def world(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("profiles")
    dataset = small_dataset(str(root / "dataset"))
    config = profiles_config(dataset, str(root / "profiles"))
    manifest = generate_profiles(config)
    return {"root": root, "dataset": dataset, "config": config, "manifest": manifest}


def _ids(dataset: str, table: str, column: str) -> set[int]:
    ids = read_table(dataset, table, columns=[column])[column].to_pylist()
    return {int(i) for i in ids}


def test_profiles_are_committed_every_row_kept_and_counted(world):
    dataset, config, manifest = world["dataset"], world["config"], world["manifest"]
    profiles = store.read_profiles(config.output)
    items, users = _ids(dataset, "items.parquet", "iid"), _ids(dataset, "users.parquet", "uid")
    by_kind = {
        k: [
            i
            for k2, i in zip(profiles["kind"].to_pylist(), profiles["id"].to_pylist(), strict=True)
            if k2 == k
        ]
        for k in ("item", "user")
    }
    # rows in = rows out: one row per item and per user, none dropped, none twice
    assert sorted(by_kind["item"]) == sorted(items) and sorted(by_kind["user"]) == sorted(users)
    assert manifest["rows"] == {"item": len(items), "user": len(users)} and manifest["changed"]
    for kind in ("item", "user"):
        parse = manifest["parse"][kind]
        assert parse["first_try"] + parse["retry"] + parse["unparsed"] == manifest["rows"][kind]
    # the tiny random model writes no JSON: each answer retried once, then kept as raw text
    assert not any(profiles["parse_ok"].to_pylist()) and set(profiles["attempts"].to_pylist()) == {2}
    assert manifest["parse"]["item"]["unparsed"] == len(items)
    assert all(isinstance(t, str) for t in profiles["raw"].to_pylist())
    assert profiles["summarization"].null_count == profiles.num_rows
    assert set(profiles["model"].to_pylist()) == {"tiny-random-llama"}
    assert set(profiles.schema.names) >= {
        "kind",
        "id",
        "summarization",
        "reasoning",
        "raw",
        "parse_ok",
        "model",
        "prompt_hash",
    }
    listed = {e["path"] for e in manifest["files"]}
    assert listed == {f.path for f in store.existing_files(config.output)}


def test_a_rerun_with_the_same_inputs_is_a_no_op(world, capsys):
    config = world["config"]
    before = store.read_manifest(config.output)
    manifest = generate_profiles(config)
    assert manifest["changed"] is False and "nothing to do" in capsys.readouterr().out
    assert store.read_manifest(config.output) == before  # not even rewritten


def test_every_user_prompt_shows_only_that_users_training_items(world):
    dataset, config = world["dataset"], world["config"]
    profiles = store.read_profiles(config.output)
    train = read_table(dataset, "train", columns=["uid", "iid", "label"])
    held_out = {
        split: read_table(dataset, split, columns=["uid", "iid"]).to_pylist() for split in ("valid", "test")
    }
    train_items: dict[int, set[int]] = {}
    liked: dict[int, set[int]] = {}
    for row in train.to_pylist():
        train_items.setdefault(row["uid"], set()).add(row["iid"])
        if row["label"] == 1:
            liked.setdefault(row["uid"], set()).add(row["iid"])
    attributes = item_attributes(read_table(dataset, "items.parquet"))
    # the generator's own rule for an item's description (a cut-off summary counts)
    descriptions = _descriptions([f for f in store.existing_files(config.output) if f.kind == "item"])
    uids = sorted(_ids(dataset, "users.parquet", "uid"))
    prompts = user_prompts(config, train, uids, attributes, descriptions)
    assert [p.id for p in prompts] == uids
    leaked_elsewhere = 0
    for p in prompts:
        used = set(p.used)
        assert used <= train_items.get(p.id, set()), (
            f"user {p.id}'s prompt shows items outside their training split"
        )
        assert used <= liked[p.id] if p.id in liked else True
        assert len(p.used) == min(MAX_USER_ITEMS, len(liked.get(p.id) or train_items.get(p.id, ())))
        # the message lists exactly the used items, in order, with their titles: nothing else
        entries = [json.loads(line) for line in p.user.splitlines()[1:] if line.startswith("{")]
        assert [e["title"] for e in entries] == [attributes[i]["title"] for i in p.used]
        only_held_out = {
            r["iid"] for s in held_out.values() for r in s if r["uid"] == p.id
        } - train_items.get(p.id, set())
        leaked_elsewhere += len(only_held_out & used)
    assert leaked_elsewhere == 0
    # and these are the prompts the job ran: the committed users carry their hashes
    committed = {
        (i, h)
        for k, i, h in zip(
            profiles["kind"].to_pylist(),
            profiles["id"].to_pylist(),
            profiles["prompt_hash"].to_pylist(),
            strict=True,
        )
        if k == "user"
    }
    assert committed == {(p.id, p.hash) for p in prompts}


def test_user_samples_are_seeded_bounded_and_per_user():
    train = pa.table(
        {
            "uid": [1] * 30 + [2] * 3,
            "iid": list(range(1, 31)) + [5, 6, 7],
            "label": [1] * 29 + [0] + [0, 0, 0],
        }
    )
    config = profiles_config("d", "o")
    first = user_samples(train, config.users)
    assert len(first[1]) == MAX_USER_ITEMS and set(first[1]) <= set(range(1, 30))  # liked only
    assert first[2] == [5, 6, 7]  # no liked item: all their training items
    assert user_samples(train, config.users) == first
    alone = user_samples(train.filter(pa.compute.equal(train["uid"], 1)), config.users)
    assert alone[1] == first[1]  # a user's sample does not depend on other users


def test_parse_profile_accepts_the_asked_json_only():
    assert parse_profile('{"summarization": "Fans of space.", "reasoning": "It is set in space."}') == (
        "Fans of space.",
        "It is set in space.",
    )
    assert parse_profile('Sure! ```json\n{"summarization": "x"}\n```') == ("x", "")
    for text in ("", "no json here", '{"summarization": ""}', '{"reasoning": "r"}', "{broken", "[1, 2]"):
        assert parse_profile(text) is None, text


def test_a_cut_off_answer_gives_its_summary_when_the_summary_string_closed():
    """Stopped after the summary (``reasoning: false``) or cut off inside the reasoning: the
    summary is read; a summary string that never closed is not."""
    assert parse_profile('{"summarization": "Fans of \\"space\\".",') == ('Fans of "space".', "")
    assert parse_profile('{"summarization": "S", "reasoning": "R", "extra": [') == ("S", "R")
    assert parse_profile('{"summarization": "S", "reasoning": "It is se') == ("S", "")
    for text in ('{"summarization": "Fans of sp', '{"summarization": "",', '{"summary": "S",'):
        assert parse_profile(text) is None, text


def test_a_summary_cut_off_by_max_new_tokens_still_stands_for_the_profile():
    """Downstream (a user prompt's item description, the embedded text) an unparsed answer whose
    summary string opened and never closed gives that summary, read to where it stops; an
    answer with no summary at all gives its raw text (embedding) or no description (prompts)."""
    cut = '{"summarization": "Fans of \\"space\\" operas and long'
    assert profile_text(None, cut, False) == 'Fans of "space" operas and long'
    assert profile_text(None, '{"summarization": "ends in a cut escape \\', False) == "ends in a cut escape"
    assert profile_text("Parsed.", cut, True) == "Parsed."
    assert profile_text(None, "prose, no json", False) == "prose, no json"

    def item_file(rows):
        table = pa.Table.from_pylist(
            [{"kind": "item", "id": i, "summarization": s, "raw": r, "parse_ok": ok} for i, s, r, ok in rows]
        )
        return store.ProfileFile("items/x", "item", table, 0, "")

    rows = [(1, "S", "{...}", True), (2, None, cut, False), (3, None, "prose", False)]
    described = _descriptions([item_file(rows)])
    assert described == {1: "S", 2: 'Fans of "space" operas and long'}


def test_the_answer_starts_from_the_prefix_and_stops_after_the_summary(monkeypatch):
    """The real ``generate`` of the tiny Llama: its answer is continued from
    ``generation.answer_prefix``, and with ``reasoning: false`` a row stops at the end of the
    summary's string and is counted to that point. The random model never writes a closing quote
    and comma, so its own first three greedy tokens stand in for them."""
    import raylrec.profiles.generate as generate
    from raylrec.llm.backbone import load_backbone

    config = profiles_config("d", "o", generation={"max_new_tokens": 12, "batch_size": 2})
    backbone = load_backbone(config.backbone)
    prompts = ["System: s\nUser: tell me\nAssistant:", "System: s\nUser: a longer question here\nAssistant:"]
    full, full_counts = generate.generate_texts(backbone, prompts, config.generation, 1, False)
    prefix = config.generation.answer_prefix
    assert prefix and all(t.startswith(prefix) for t in full)
    assert full_counts == [12, 12]  # a random model never ends on its own

    bare = config.generation.model_copy(update={"answer_prefix": ""})
    encoded = backbone.tokenizer(prompts[:1], return_tensors="pt", add_special_tokens=False)
    generated = backbone.model.generate(
        **encoded, max_new_tokens=12, do_sample=False, pad_token_id=backbone.tokenizer.pad_token_id
    )[0, encoded["input_ids"].shape[1] :].tolist()
    stop = backbone.tokenizer.decode(generated[:3])
    monkeypatch.setattr(generate, "SUMMARY_END", (stop,))
    unstopped, _ = generate.generate_texts(backbone, prompts[:1], bare, 1, False)
    stopped, counts = generate.generate_texts(
        backbone, prompts[:1], bare.model_copy(update={"reasoning": False}), 1, False
    )
    # generate stops at the first token that completes the stop string, prompt text included
    k = next(k for k in range(1, 13) if stop in prompts[0] + backbone.tokenizer.decode(generated[:k]))
    assert counts == [k] and stopped == [backbone.tokenizer.decode(generated[:k]).strip()]
    assert unstopped[0].startswith(stopped[0]) and len(unstopped[0]) > len(stopped[0])

    # Batched beside a row that does not stop, the stopped row is padded; with pad == eos (as
    # SmolLM2's tokenizer has it) that padding is not counted as an end token it generated.
    backbone.tokenizer.pad_token = backbone.tokenizer.eos_token
    _, padded_counts = generate.generate_texts(
        backbone, [prompts[0], prompts[0] + " more"], bare.model_copy(update={"reasoning": False}), 1, False
    )
    assert padded_counts[0] == k and padded_counts[1] > k


def test_unparsed_answers_are_retried_once_and_counted_never_dropped(monkeypatch):
    """Answers that parse at once, parse on the retry, or never: every row comes back."""
    import raylrec.profiles.generate as generate

    calls = []

    def fake(backbone, prompts, generation, seed, sample):
        calls.append((len(prompts), sample))
        good = '{"summarization": "S", "reasoning": "R"}'
        if not sample:  # first attempt: prompts ending in "0" parse
            return [good if p.endswith("0") else "garbage" for p in prompts], [3] * len(prompts)
        return [good if p.endswith("1") else "still garbage" for p in prompts], [4] * len(prompts)

    monkeypatch.setattr(generate, "generate_texts", fake)
    writer = ProfileWriter.__new__(ProfileWriter)
    writer.backbone = type("B", (), {"tokenizer": object()})()
    writer.generation = profiles_config("d", "o").generation
    writer.model_name = "fake"
    monkeypatch.setattr(generate, "render_chat", lambda tok, system, user: user)
    users = ["p0", "p1", "p2", "p10", "p11"]
    rows = writer.write([1, 2, 3, 4, 5], "sys", users, ["h"] * 5, "item")
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5]
    assert [(r["parse_ok"], r["attempts"]) for r in rows] == [
        (True, 1),
        (True, 2),
        (False, 2),
        (True, 1),
        (True, 2),
    ]
    assert calls == [(5, False), (3, True)]  # one retry, of the three that failed, sampled
    assert rows[2]["raw"] == "still garbage" and rows[2]["summarization"] is None
    table = pa.Table.from_pylist(rows, schema=store.PROFILE_SCHEMA)
    _, parse, _ = store._counts([store.ProfileFile("items/x", "item", table, 0, "")])
    assert parse["item"] == {"first_try": 2, "retry": 2, "unparsed": 1}


@pytest.mark.slow
def test_the_in_process_path_writes_the_rows_the_actor_pool_writes(world, tmp_path):
    """``raylrec profiles generate --local`` (a GPU machine without Ray): the same prompts,
    batches and seeds in one process give the same committed rows as the Ray Data actor pool."""
    config = world["config"]
    local = profiles_config(world["dataset"], str(tmp_path / "local"))
    manifest = generate_profiles(local, use_ray=False)
    assert manifest["rows"] == world["manifest"]["rows"] and manifest["parse"] == world["manifest"]["parse"]
    order = [("kind", "ascending"), ("id", "ascending")]
    assert (
        store.read_profiles(local.output)
        .sort_by(order)
        .equals(store.read_profiles(config.output).sort_by(order))
    )
    assert generate_profiles(local, use_ray=False)["changed"] is False  # and resumes the same way


def test_a_rerun_generates_only_what_the_directory_lacks(world):
    """Users dropped from the wanted set are uncommitted and their files removed; asked for
    again, only they are generated, and they come back identical (greedy, same batches)."""
    config = world["config"]
    before = store.read_profiles(config.output).sort_by([("kind", "ascending"), ("id", "ascending")])
    fewer = generate_profiles(profiles_config(world["dataset"], config.output, max_users=0))
    assert fewer["changed"] and fewer["rows"]["user"] == 0
    assert fewer["last_run"]["generated"] == {"item": 0, "user": 0}
    assert not any(f.kind == "user" for f in store.existing_files(config.output))
    back = generate_profiles(config)
    assert back["last_run"]["generated"] == {"item": 0, "user": world["manifest"]["rows"]["user"]}
    after = store.read_profiles(config.output).sort_by([("kind", "ascending"), ("id", "ascending")])
    assert after.equals(before)


def _check_embeddings(directory: str, text: str, dataset: str, rows: dict[str, int]) -> pa.Table:
    table, manifest = read_embeddings(directory)
    assert manifest["text"] == text and manifest["dim"] == 384 and manifest["model"] == "all-minilm-l6-v2"
    assert manifest["dataset"] == dataset and manifest["rows"] == rows
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    assert table.schema.field("id").type == pa.int64() and set(table["kind"].to_pylist()) <= {"user", "item"}
    vectors = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    keys = list(zip(table["kind"].to_pylist(), table["id"].to_pylist(), strict=True))
    assert len(set(keys)) == len(keys) == sum(rows.values())
    return table


@pytest.mark.slow
def test_embeddings_of_profiles_and_of_metadata_follow_the_contract(world, capsys):
    config, dataset = world["config"], world["dataset"]
    items, users = _ids(dataset, "items.parquet", "iid"), _ids(dataset, "users.parquet", "uid")
    rows = {"item": len(items), "user": len(users)}
    for text in ("profiles", "metadata"):
        manifest = embed_profiles(config, text)
        assert manifest["changed"]
        table = _check_embeddings(config.embeddings_dir(text), text, dataset, rows)
        kinds, found = table["kind"].to_pylist(), table["id"].to_pylist()
        ids = {k: {i for k2, i in zip(kinds, found, strict=True) if k2 == k} for k in rows}
        assert ids == {"item": items, "user": users}
        assert embed_profiles(config, text)["changed"] is False
        assert "nothing to do" in capsys.readouterr().out


def test_minilm_embeds_like_a_sentence_encoder():
    """Mean pooling and normalisation as sentence-transformers does for all-MiniLM-L6-v2: the
    vectors order texts by meaning, and a text's vector does not depend on its batch."""
    from raylrec.profiles.embed import TextEmbedder

    embedder = TextEmbedder("all-minilm-l6-v2")
    texts = [
        "a film about astronauts lost in outer space",
        "science fiction movie set on a spaceship",
        "a recipe for chocolate cake",
    ]
    vectors = embedder.embed(texts)
    similarity = vectors @ vectors[1]
    assert similarity[0] > similarity[2] + 0.2
    alone = embedder.embed(texts[:1])[0]
    assert np.allclose(alone, vectors[0], atol=1e-5)


def test_metadata_text_and_prompts_use_the_datasets_fields():
    attributes = {"title": "Toy Story", "release_year": "1995", "genres": "Animation Children's Comedy"}
    assert item_metadata_text(attributes, 1) == "Toy Story, Animation Children's Comedy, 1995"
    assert "movie" in system_prompt("item", "movie") and "books" in system_prompt("user", "book")
    config = profiles_config("d", "o")
    salt = generation_salt(config)
    assert prompt_hash("s", "u", salt) != prompt_hash(
        "s", "u", generation_salt(profiles_config("d", "o", generation={"max_new_tokens": 7}))
    )
    assert salt == generation_salt(
        profiles_config("d", "o", generation={"max_new_tokens": 6, "batch_size": 2})
    )


@pytest.mark.slow
def test_the_nightly_refresh_generates_only_new_items_and_users(world, tmp_path):
    """A re-prepared, bigger dataset (new items and users, ids renumbered): the known ones keep
    their profiles (by raw id, re-keyed), only the new ones are generated, then embedded."""
    import shutil

    from raylrec.profiles.refresh import refresh_profiles

    out = str(tmp_path / "profiles")
    shutil.copytree(world["config"].output, out, ignore=shutil.ignore_patterns("embeddings_*"))
    before = store.read_profiles(out)
    bigger = small_dataset(str(tmp_path / "bigger"), users=30, items=48, events=720)
    old = {k: set(raw_ids(world["dataset"], k).values()) for k in ("item", "user")}
    new = {k: raw_ids(bigger, k) for k in ("item", "user")}
    done = refresh_profiles(profiles_config(world["dataset"], out), bigger)
    assert done["generated"] == {k: len(set(new[k].values()) - old[k]) for k in ("item", "user")}
    assert done["generated"]["item"] > 0 and done["generated"]["user"] > 0
    after = store.read_profiles(out)
    for kind in ("item", "user"):
        rows = [r for r in after.to_pylist() if r["kind"] == kind]
        assert sorted(r["id"] for r in rows) == sorted(new[kind])  # the new dataset's ids
        assert all(new[kind][r["id"]] == r["raw_id"] for r in rows)
    kept = {(r["kind"], r["raw_id"]): r["raw"] for r in before.to_pylist()}
    again = {(r["kind"], r["raw_id"]): r["raw"] for r in after.to_pylist()}
    assert all(again[k] == text for k, text in kept.items() if k in again)  # not regenerated
    _, manifest = read_embeddings(done["embeddings"])
    assert manifest["rows"] == {"item": len(new["item"]), "user": len(new["user"])}
    assert refresh_profiles(profiles_config(world["dataset"], out), bigger)["changed"] is False


@pytest.mark.slow
def test_profiles_round_trip_on_s3(world, s3_bucket):
    config = profiles_config(world["dataset"], f"{s3_bucket}/profiles", max_items=12, max_users=5)
    manifest = generate_profiles(config)
    assert manifest["rows"] == {"item": 12, "user": 5}
    profiles = store.read_profiles(config.output)
    assert profiles.num_rows == 17 and sorted(set(profiles["kind"].to_pylist())) == ["item", "user"]
    assert generate_profiles(config)["changed"] is False
    embed_profiles(config, "profiles")
    _check_embeddings(
        config.embeddings_dir("profiles"), "profiles", world["dataset"], {"item": 12, "user": 5}
    )


def test_a_directory_raylrec_did_not_make_is_refused(world, tmp_path):
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="raylrec did not write it"):
        generate_profiles(profiles_config(world["dataset"], str(tmp_path)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def _committed_profiles(out: str) -> tuple[dict, store.ProfileFile]:
    """A profiles directory written by hand: one item chunk, committed."""
    rows = {name: [None] for name in store.PROFILE_SCHEMA.names}
    rows.update(
        kind=["item"],
        id=[1],
        raw_id=["i1"],
        summarization=["a film"],
        parse_ok=[True],
        attempts=[1],
        gen_tokens=[3],
    )
    table = pa.Table.from_pydict(rows, schema=store.PROFILE_SCHEMA)
    chunk = store.write_chunk(out, "item", 0, table)
    return store.write_manifest(out, [chunk], {}), chunk


@pytest.mark.parametrize("tamper", ["absolute", "other folder", "twice", "resized", "link"])
def test_the_profiles_reader_serves_only_the_chunks_its_manifest_lists_once(tmp_path, tamper):
    """A chunk outside the directory (an absolute path, however valid its name), a chunk listed
    twice, or one whose size changed is refused, with or without the hash check."""
    import shutil

    out = str(tmp_path / "profiles")
    manifest, chunk = _committed_profiles(out)
    outside = tmp_path / "elsewhere" / chunk.path
    outside.parent.mkdir(parents=True)
    shutil.copy(f"{out}/{chunk.path}", outside)
    entry = manifest["files"][0]
    files = {
        "absolute": [{**entry, "path": str(outside)}],
        "other folder": [{**entry, "path": f"elsewhere/{chunk.path}"}],
        "twice": [entry, entry],
        "resized": [{**entry, "bytes": entry["bytes"] + 1}],
        "link": [entry],
    }[tamper]
    if tamper == "link":  # the listed chunk is a link to a copy outside the directory
        (tmp_path / "profiles" / chunk.path).unlink()
        (tmp_path / "profiles" / chunk.path).symlink_to(outside)
    (tmp_path / "profiles" / store.MANIFEST).write_text(json.dumps({**manifest, "files": files}))
    match = {"twice": "more than once", "resized": "its manifest says", "link": "outside"}.get(
        tamper, "lies outside this profile store's files"
    )
    for verify in (True, False):
        with pytest.raises(OSError, match=match):
            store.read_profiles(out, verify=verify)


def test_a_truncated_chunk_is_generated_again_by_the_rerun(world, tmp_path, caplog):
    """A committed chunk cut short on disk: the rerun warns, regenerates its rows (the same
    ones: greedy decoding), commits, and the profiles read whole again."""
    import shutil

    out = str(tmp_path / "profiles")
    shutil.copytree(world["config"].output, out)
    before = store.read_profiles(out).sort_by([("kind", "ascending"), ("id", "ascending")])
    damaged = store.read_manifest(out)["files"][0]
    path = tmp_path / "profiles" / damaged["path"]
    path.write_bytes(path.read_bytes()[: damaged["bytes"] // 2])
    with pytest.raises(OSError):
        store.read_profiles(out)
    config = profiles_config(world["dataset"], out)
    with caplog.at_level("WARNING", logger="raylrec.profiles.store"):
        rerun = generate_profiles(config, use_ray=False)
    assert "is not a readable Parquet file" in caplog.text and "generated again" in caplog.text
    kind = "item" if damaged["path"].startswith("items/") else "user"
    assert rerun["last_run"]["generated"][kind] > 0
    after = store.read_profiles(out).sort_by([("kind", "ascending"), ("id", "ascending")])
    assert after.equals(before)
