"""``raylrec profiles generate | embed``: RLMRec's LLM profiles and their embeddings."""

from __future__ import annotations

import argparse

from raylrec.commands import common

__all__ = ["register"]


def cmd_generate(args: argparse.Namespace) -> int:
    from raylrec.profiles.config import load_profiles_config

    config = load_profiles_config(args.config, common.overrides(args))  # fails here, before Ray starts
    from raylrec.profiles.generate import generate_profiles

    if not args.local:
        common.init_ray(args, config.ray)
    generate_profiles(config, common.progress(), use_ray=not args.local)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from raylrec.profiles.config import load_profiles_config

    config = load_profiles_config(args.config, common.overrides(args))
    from raylrec.profiles.embed import embed_profiles

    common.init_ray(args, config.ray)
    embed_profiles(config, args.text, common.progress())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    profiles = sub.add_parser("profiles", help="RLMRec's LLM profiles and their embeddings").add_subparsers(
        dest="profiles_command", required=True
    )
    generate = profiles.add_parser("generate", help="write item, then user profiles with the LLM (resumable)")
    common.add_config(generate, "YAML config (see configs/profiles_ml100k.yaml)")
    generate.add_argument(
        "--local", action="store_true", help="generate in this process, no Ray (same batches and output)"
    )
    generate.set_defaults(func=cmd_generate)

    embed = profiles.add_parser("embed", help="embed the profiles (or metadata text) with a sentence encoder")
    common.add_config(embed, "YAML config (see configs/profiles_ml100k.yaml)")
    embed.add_argument(
        "--text",
        choices=["profiles", "metadata"],
        help="what to embed (default: embed.text); metadata: no LLM",
    )
    embed.set_defaults(func=cmd_embed)
