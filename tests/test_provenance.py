import sys

import pytest

from ctxaware.provenance import check_output_cache, code_digest


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A throwaway package: entry imports helper (inside a function, relatively), helper imports nothing."""
    root = tmp_path / "digestpkg"
    root.mkdir()
    (root / "__init__.py").write_text('"""Package."""\n')
    (root / "entry.py").write_text("def run():\n    from .helper import value\n\n    return value() + 1\n")
    (root / "helper.py").write_text("def value():\n    return 1\n")
    (root / "unrelated.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield root
    for name in [n for n in sys.modules if n.split(".")[0] == "digestpkg"]:
        del sys.modules[name]


def test_digest_follows_imports_and_ignores_comments_and_unrelated_modules(package):
    before = code_digest("digestpkg.entry")
    (package / "unrelated.py").write_text("X = 2\n")
    assert code_digest("digestpkg.entry") == before
    (package / "helper.py").write_text('def value():\n    """Docstring."""\n    # a comment\n    return 1\n')
    assert code_digest("digestpkg.entry") == before
    (package / "helper.py").write_text("def value():\n    return 2\n")
    changed = code_digest("digestpkg.entry")
    assert changed != before
    (package / "entry.py").write_text("def run():\n    from .helper import value\n\n    return value() + 2\n")
    assert code_digest("digestpkg.entry") not in (before, changed)


def test_digest_does_not_import_the_package_modules():
    for name in [n for n in sys.modules if n == "ctxaware.training"]:
        del sys.modules[name]
    assert len(code_digest("ctxaware.training")) == 16
    assert "ctxaware.training" not in sys.modules


def test_the_output_cache_needs_its_directory_when_on(tmp_path):
    check_output_cache(None, {})  # off: nothing to check
    check_output_cache([], {"SNAKEMAKE_OUTPUT_CACHE": str(tmp_path)})
    check_output_cache(["finetune"], {"SNAKEMAKE_OUTPUT_CACHE": "s3://bucket/cache"})  # a storage URI
    for environ in ({}, {"SNAKEMAKE_OUTPUT_CACHE": ""}):
        with pytest.raises(ValueError, match="export SNAKEMAKE_OUTPUT_CACHE=") as info:
            check_output_cache([], environ)
        assert "profiles/slurm" in str(info.value)
    with pytest.raises(ValueError, match="not a directory: create it"):
        check_output_cache([], {"SNAKEMAKE_OUTPUT_CACHE": str(tmp_path / "missing")})
