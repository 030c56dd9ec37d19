"""Raw rows of a dataset wherever they are: a local file or directory, or the hub (at a revision, or only some
of its files). Every error that stops loading names the config key of the source."""

from __future__ import annotations

import json
from pathlib import Path

LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")


class DataError(ValueError):
    """Unusable input; the message names the file and the row (index and id) or key at fault."""


HUB_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


def load_raw(
    source: str,
    split: str = "train",
    hub_config: str | None = None,
    revision: str | None = None,
    data_files: str | list | dict | None = None,
    key: str = "source",
) -> list[dict]:
    """Rows of a raw dataset: a local .json (list), .jsonl or .parquet file, a directory of them, or a hub id
    (at `revision`, or only its `data_files`: a pattern or list, or a mapping split -> patterns, inside the
    repository). `key` is the config key that names the source: every error that stops loading names it.

    Local files are read without `datasets`, which would unify the schema and turn missing fields into None,
    hiding exactly the malformed rows `adapt` must report. The pinned `datasets` runs no loading scripts: a
    source that needs one fails here, at the job's start, naming the key.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in LOCAL_SUFFIXES)
        if not files:
            scripts = sorted(p.name for p in path.glob("*.py"))
            what = f"only a loading script ({', '.join(scripts)}), which datasets no longer runs" if scripts else "no"
            raise DataError(f"config key {key}: {source}: directory has {what} {'/'.join(LOCAL_SUFFIXES)} files")
        return [row for f in files for row in _read_file(f)]
    if path.is_file():
        return _read_file(path)
    if path.suffix in LOCAL_SUFFIXES or source.startswith((".", "/", "~")):
        raise DataError(f"config key {key}: {source}: no such file or directory")
    return _load_hub(source, split, hub_config, revision, data_files, key)


def split_patterns(data_files: str | list | dict, split: str, key: str) -> list[str]:
    """The data_files patterns one split reads: a mapping's entry for the split, or the pattern or list itself."""
    patterns = data_files.get(split) if isinstance(data_files, dict) else data_files
    if not patterns:
        raise DataError(f"config key {key}: data_files name no files for split {split!r}")
    return [patterns] if isinstance(patterns, str) else list(patterns)


def _file_builder(patterns: list[str], key: str) -> str:
    builder = HUB_BUILDERS.get(Path(patterns[0]).suffix)
    if builder is None:
        raise DataError(f"config key {key}: data_files {patterns[0]!r} is not one of {sorted(HUB_BUILDERS)}")
    return builder


def _load_hub(source, split, hub_config, revision, data_files, key) -> list[dict]:
    import datasets  # heavy import, only needed on the hub path
    from huggingface_hub import constants

    where = f"{source} (split {split}" + (f", revision {revision}" if revision else "") + ")"
    try:
        patterns = None if data_files is None else split_patterns(data_files, split, key)
        if constants.HF_HUB_OFFLINE:
            return _load_hub_cache(source, split, hub_config, revision, patterns, key)
        if patterns is None:
            return datasets.load_dataset(source, hub_config, split=split, revision=revision).to_list()
        builder = _file_builder(patterns, key)
        # the files alone, through datasets' own file builder: no script of the repository is looked at
        urls = [f"hf://datasets/{source}@{revision or 'main'}/{pattern}" for pattern in patterns]
        return datasets.load_dataset(builder, data_files={split: urls}, split=split).to_list()
    except DataError:
        raise
    except Exception as error:
        raise DataError(
            f"config key {key}: {where} cannot be loaded with datasets {datasets.__version__} "
            f"({type(error).__name__}: {error}); pin a revision or data_files that hold the data as files"
        ) from error


def _load_hub_cache(source, split, hub_config, revision, patterns, key) -> list[dict]:
    """Offline (HF_HUB_OFFLINE=1): the repository's snapshot in the local hub cache, as `make prefetch` (or an
    earlier online load) left it. datasets' own offline mode reads only data it prepared itself before, and cannot
    expand hub data_files patterns at all, so the snapshot is read as local files."""
    import datasets
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            source, repo_type="dataset", revision=revision, allow_patterns=patterns, local_files_only=True
        )
    except LocalEntryNotFoundError as error:
        raise DataError(
            f"config key {key}: {source} (revision {revision or 'main'}) is not in the local hub cache and "
            f"HF_HUB_OFFLINE is set; fetch it first where the hub is reachable (make prefetch) ({error})"
        ) from error
    if patterns is None:
        return datasets.load_dataset(folder, hub_config, split=split).to_list()
    files = [str(Path(folder) / pattern) for pattern in patterns]
    return datasets.load_dataset(_file_builder(patterns, key), data_files={split: files}, split=split).to_list()


def _read_file(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()  # plain python lists, not numpy arrays as pandas would give
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":  # "Extra data": a JSON-lines file named .json, as the hub often has
                raise DataError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e
        else:
            if not isinstance(rows, list):
                raise DataError(f"{path}: expected a JSON list of rows, got {type(rows).__name__}")
            return rows
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: invalid JSON on line {lineno}: {e.msg}") from e
    return rows
