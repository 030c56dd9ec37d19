"""`make prefetch`: download everything the active config reads from the Hugging Face hub into the local hub cache
(`HF_HOME` / `HF_HUB_CACHE`), so that jobs on nodes without network run with `HF_HUB_OFFLINE=1`.

    python -m ctxaware.prefetch --configfile config/paper.yaml [config/paper-corrected.yaml] [--dry-run]

The config is read as the Snakefile reads it (the files merged in order, validated against the schema with its
defaults filled in) and the experiment plan names the sources: every model source that is a hub id (models,
reference_models, scoring.seed_model.path, diagnosis.pairs, a local MT-Bench judge, real_language.model) and every
hub dataset (datasets, the QA tasks the evaluation and the diagnosis' steering read, MT-Bench questions from the
hub), each at its configured `revision` (null: main) and, for a dataset, only the files of its split's
`data_files` patterns when it has them. A model repository is fetched without the files transformers never reads
from it: subfolders (Meta's original/ checkpoints), weights in other frameworks' formats, and .bin/.pth copies of
weights it also has as safetensors. Prints what it fetched (id, revision, files, bytes); exits 1 naming the config
key of every source that cannot be fetched. `--dry-run` asks the hub what it would fetch and downloads nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

from ctxaware.plan import Plan, is_hub_id
from ctxaware.raw import DataError, split_patterns
from ctxaware.tasks import QA_TASKS

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"
DEFAULT_CONFIG = "config/config.yaml"  # the Snakefile's embedded default

# never read by transformers from a model repository's root: other frameworks' weights and exports
OTHER_FORMATS = ["*.h5", "*.msgpack", "*.ot", "*.onnx", "*.onnx_data", "*.tflite", "*.mlmodel", "*.gguf"]
# the same weights pickled: read only where the repository has no safetensors
PICKLED_WEIGHTS = ["*.bin", "*.pth", "*.pt", "*.ckpt"]


class HubRepo(NamedTuple):
    """One repository to fetch, with the config keys that name it."""

    keys: tuple[str, ...]
    repo_type: str  # model or dataset
    repo_id: str
    revision: str | None
    allow_patterns: tuple[str, ...] | None  # a dataset's data_files of its split; None: every file

    def describe(self) -> str:
        files = f", files {list(self.allow_patterns)}" if self.allow_patterns else ""
        return f"{self.repo_type} {self.repo_id} @ {self.revision or 'main'}{files}"


class PrefetchError(RuntimeError):
    """A source that cannot be fetched; the message names its config key."""


def load_config(configfiles: list[str]) -> dict:
    """The config as the workflow reads it: the files merged in order (Snakemake's --configfile), validated
    against the schema, which fills in the defaults."""
    import yaml
    from snakemake.utils import update_config, validate

    config: dict = {}
    for configfile in configfiles:
        update_config(config, yaml.safe_load(Path(configfile).read_text()) or {})
    validate(config, str(SCHEMA))
    return config


def model_sources(plan: Plan) -> list[tuple[str, str]]:
    """(config key, hub id) of every model the run loads from the hub."""
    sources = [(f"models.{name}.source", model["source"]) for name, model in plan.models.items()]
    sources += [(f"reference_models.{name}.source", model["source"]) for name, model in plan.references.items()]
    sources.append(("scoring.seed_model.path", plan.scoring["seed_model"].get("path")))
    sources += [
        (f"diagnosis.pairs.{name}.{role}", pair[role])
        for name, pair in plan.pairs.items()
        for role in ("base", "instruct")
    ]
    judge = plan.judge_settings()
    if plan.judged_tasks() and judge["backend"] == "local":
        sources.append(("evaluation.mtbench.judge.model", judge["model"]))
    real_language = plan.real_language()
    if real_language:
        sources.append(("real_language.model", real_language["model"]))
    return [(key, source) for key, source in sources if is_hub_id(source)]


def dataset_sources(plan: Plan) -> list[tuple[str, dict]]:
    """(config key of the source, its settings: source, split, revision, data_files) of every hub dataset read."""
    found = [(f"datasets.{name}.source", dataset) for name, dataset in plan.datasets.items()]
    qa_tasks = [task for task in plan.tasks if task in QA_TASKS]
    if plan.pairs:  # the diagnosis' attention steering reads its QA tasks as the evaluation configures them
        qa_tasks += [task for task in plan.diagnosis["steering"]["tasks"] if task in QA_TASKS]
    found += [(f"evaluation.{task}.source", plan.task_settings(task)) for task in dict.fromkeys(qa_tasks)]
    if "mtbench" in plan.tasks:  # questions from the hub's mt_bench_prompts (a file otherwise), split train
        found.append(("evaluation.mtbench.questions", {"source": plan.evaluation["mtbench"]["questions"]}))
    return [(key, settings) for key, settings in found if is_hub_id(settings["source"])]


def hub_repos(plan: Plan) -> list[HubRepo]:
    """Every repository the run reads from the hub, once each (one the config names twice lists both keys)."""
    repos: dict[tuple, list[str]] = {}
    for key, source in model_sources(plan):
        repos.setdefault(("model", source, None, None), []).append(key)
    for key, settings in dataset_sources(plan):
        patterns = None
        if settings.get("data_files") is not None:
            data_files_key = key.rsplit(".", 1)[0] + ".data_files"
            patterns = tuple(split_patterns(settings["data_files"], settings.get("split", "train"), data_files_key))
        repos.setdefault(("dataset", settings["source"], settings.get("revision"), patterns), []).append(key)
    return [HubRepo(tuple(keys), *identity) for identity, keys in repos.items()]


def unread_model_files(files: list[str]) -> list[str]:
    """ignore_patterns of a model repository: what loading it from its root never reads."""
    patterns = ["*/*", *OTHER_FORMATS]  # subfolders: another checkpoint's copy (original/), not the model's files
    if any(name.endswith(".safetensors") for name in files if "/" not in name):
        patterns += PICKLED_WEIGHTS
    return patterns


def fetch(repo: HubRepo, dry_run: bool = False) -> list:
    """Download a repository's files into the hub cache (with dry_run, only ask the hub which it would); the
    files as huggingface_hub's DryRunFileInfo (filename, file_size, commit_hash, is_cached)."""
    from huggingface_hub import HfApi, snapshot_download

    options = {"repo_type": repo.repo_type, "revision": repo.revision}
    if repo.allow_patterns is not None:
        options["allow_patterns"] = list(repo.allow_patterns)
    if repo.repo_type == "model":
        files = HfApi().list_repo_files(repo.repo_id, repo_type="model", revision=repo.revision)
        options["ignore_patterns"] = unread_model_files(files)
    listing = snapshot_download(repo.repo_id, dry_run=True, **options)
    if not listing:
        raise PrefetchError(f"no file of {repo.describe()} is read: the repository has none that match")
    if not dry_run:
        snapshot_download(repo.repo_id, **options)
    return listing


def report(repo: HubRepo, listing: list, dry_run: bool) -> str:
    total = sum(info.file_size or 0 for info in listing)
    cached = sum(info.is_cached for info in listing)
    verb = "would fetch" if dry_run else "fetched"
    lines = [
        f"{', '.join(repo.keys)}: {repo.describe()} (commit {listing[0].commit_hash}): {verb} {len(listing)} files, "
        f"{total:,} bytes ({cached} already cached)"
    ]
    lines += [f"  {info.filename}  {info.file_size or 0:,} bytes" for info in sorted(listing, key=lambda i: i.filename)]
    return "\n".join(lines)


def prefetch(configfiles: list[str], dry_run: bool = False, out=sys.stdout) -> list[str]:
    """Fetch every hub source of the config; the errors, one per source that could not be fetched."""
    from huggingface_hub import constants

    try:
        repos = hub_repos(Plan(load_config(configfiles)))
    except DataError as error:  # data_files that name no file of the split read
        return [str(error)]
    errors = []
    for repo in repos:
        try:
            listing = fetch(repo, dry_run)
        except Exception as error:  # not found, gated, offline, unreachable: named by its key, the others go on
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            errors.append(
                f"config key {', '.join(repo.keys)}: cannot fetch {repo.describe()} from {constants.ENDPOINT} "
                f"({type(error).__name__}: {reason})"
            )
            continue
        print(report(repo, listing, dry_run), file=out, flush=True)
    where = "nothing downloaded (dry run)" if dry_run else f"hub cache {constants.HF_HUB_CACHE}"
    print(f"{len(repos) - len(errors)} of {len(repos)} hub repositories; {where}", file=out)
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctxaware.prefetch", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configfile", nargs="+", default=[DEFAULT_CONFIG], help="config files, merged in order (as Snakemake's)"
    )
    parser.add_argument("--dry-run", action="store_true", help="list what would be fetched; download nothing")
    args = parser.parse_args(argv)
    errors = prefetch(args.configfile, args.dry_run)
    for error in errors:
        print(error, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
