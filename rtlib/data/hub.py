"""The paper's datasets: from the Hugging Face hub (parquet shards) or from local files.

Three sources, one reader:

- a hub dataset ID (as in the official code): its parquet shards are fetched once with
  ``huggingface_hub.snapshot_download`` (the only networked call, made only when asked) and read
  by the local-parquet reader below;
- a local folder of parquet files in the hub's layout (``*train*.parquet``, ``*test*.parquet``,
  an image column of ``{"bytes": ..., "path": ...}`` structs or raw bytes, an integer label
  column, for DomainNet an integer ``domain`` column);
- a local image-folder tree: ``ROOT/<split>/<class>/<image>`` (``ROOT/<domain>/<split>/...``
  for DomainNet), class names sorted alphabetically.

Images are decoded with Pillow, converted to RGB and resized to the model's input size.
A file that does not decode raises :class:`CorruptImage` naming it. Caltech-256's labels start
at 1 on the hub and are shifted to start at 0. DomainNet is filtered to the source domain for
training; each other domain is an OOD test set of its own (the official code trains on every
domain unless told otherwise, which leaks the "OOD" domains into training).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..config import ConfigError, check_choice
from .catalog import DOMAINNET_DOMAINS, HUB, HubSpec  # noqa: F401

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class CorruptImage(ValueError):
    """An image that Pillow cannot decode; the message names the file (and row)."""


#: Where local copies live: RTLIB_DATA/<task>/ (parquet files or an image-folder tree).
DATA_ROOT_ENV = "RTLIB_DATA"


def data_root() -> Path:
    return Path(os.environ.get(DATA_ROOT_ENV, Path.home() / ".cache" / "rtlib" / "data"))


#: The largest image decoded (pixels): DomainNet's and Caltech's largest are a few megapixels;
#: more is a decompression bomb or a mistake, refused before it is decoded.
MAX_PIXELS = 40_000_000
#: The largest image file read from a folder (bytes).
MAX_FILE_BYTES = 64 << 20


def decode(blob: bytes, size: int, name: str) -> np.ndarray:
    """Bytes of an image file -> (3, size, size) uint8. An undecodable or oversized image is a
    :class:`CorruptImage` naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise CorruptImage(f"image {name} is {img.width} x {img.height} pixels, more "
                                   f"than the {MAX_PIXELS:,} rtlib decodes")
            img = img.convert("RGB").resize((size, size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    except CorruptImage:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as err:
        raise CorruptImage(f"cannot decode image {name}: {err}") from err


def _inside(path: Path, root: Path, what: str) -> Path:
    """``path`` resolved, when it is a regular file inside ``root``; a link out of the folder,
    or to a device such as /dev/zero, is refused naming it."""
    real = path.resolve()
    if not real.is_relative_to(root.resolve()) or not real.is_file():
        raise CorruptImage(f"{what} {path} is not a regular file inside {root} (it points to "
                           f"{real}); links out of the data folder are not followed")
    return real


def _read_image_file(path: Path, root: Path) -> bytes:
    """An image file's bytes: a regular file inside ``root`` (:func:`_inside`) of at most
    :data:`MAX_FILE_BYTES`."""
    real = _inside(path, root, "image")
    if real.stat().st_size > MAX_FILE_BYTES:
        raise CorruptImage(f"image {path} is {real.stat().st_size:,} bytes, more than the "
                           f"{MAX_FILE_BYTES:,} rtlib reads")
    return real.read_bytes()


# -- parquet ----------------------------------------------------------------------------------
def _split_files(folder: Path, split: str) -> list[Path]:
    """Parquet files of ``split`` under ``folder`` (by file or sub-folder name, hub layout)."""
    files = sorted(p for p in folder.rglob("*.parquet")
                   if any(split in part for part in p.relative_to(folder).parts))
    for path in files:  # as images: no link out of the data folder is read
        _inside(path, folder, "parquet file")
    return files


def _detect_columns(table, spec: HubSpec) -> tuple[str, str]:
    import pyarrow as pa

    names = table.column_names
    image = spec.image_column if spec.image_column in names else None
    if image is None:
        for n in names:
            t = table.schema.field(n).type
            if pa.types.is_binary(t) or pa.types.is_large_binary(t) or (
                    pa.types.is_struct(t) and t.get_field_index("bytes") >= 0):
                image = n
                break
    label = spec.label_column if spec.label_column in names else None
    if label is None:
        for n in ("label", "labels", "fine_label", "target"):
            if n in names:
                label = n
                break
    if image is None or label is None:
        raise ValueError(f"{spec.name}: cannot find the image and label columns among "
                         f"{names}; expected an image column of bytes and one of label, "
                         "labels, fine_label, target")
    return image, label


def read_parquet(files: Sequence[Path], spec: HubSpec, size: int,
                 domain_index: int | None = None, exclude_domain: bool = False):
    """Decode the parquet ``files`` into (images uint8 N x 3 x size x size, labels, domains)."""
    import pyarrow.parquet as pq

    images, labels, domains = [], [], []
    for path in files:
        table = pq.read_table(path)
        image_col, label_col = _detect_columns(table, spec)
        column = table.column(image_col).to_pylist()
        labs = np.asarray(table.column(label_col).to_pylist(), dtype=np.int64) - spec.label_offset
        doms = np.asarray(table.column("domain").to_pylist(), dtype=np.int64) \
            if "domain" in table.column_names else np.full(len(labs), -1)
        for row, (cell, lab, dom) in enumerate(zip(column, labs, doms)):
            if domain_index is not None and ((dom == domain_index) == exclude_domain):
                continue
            blob = cell.get("bytes") if isinstance(cell, dict) else cell
            where = f"{path} row {row}" + (f" ({cell.get('path')})" if isinstance(cell, dict)
                                          and cell.get("path") else "")
            if blob is None:
                raise CorruptImage(f"cannot decode image {where}: no bytes")
            images.append(decode(blob, size, where))
            labels.append(lab)
            domains.append(dom)
    if not images:
        raise ValueError(f"{spec.name}: no images in {[str(f) for f in files]}")
    return (torch.from_numpy(np.stack(images)), torch.from_numpy(np.asarray(labels)),
            np.asarray(domains))


# -- image folders ----------------------------------------------------------------------------
def read_image_folder(root: Path, size: int, classes: Sequence[str] | None = None):
    """``root/<class>/<image>`` -> (images, labels, class names)."""
    classes = list(classes) if classes is not None else sorted(
        p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for index, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                images.append(decode(_read_image_file(path, root), size, str(path)))
                labels.append(index)
    if not images:
        raise ValueError(f"no images under {root} (expected {root}/<class>/<image>)")
    return torch.from_numpy(np.stack(images)), torch.tensor(labels), classes


# -- loading a task ---------------------------------------------------------------------------
def _balanced_prefix(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Indices of ``count`` images, shuffled so that any prefix is close to class-balanced."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=g)
    by_class: dict[int, list[int]] = {}
    for i in order.tolist():
        by_class.setdefault(int(labels[i]), []).append(i)
    return torch.tensor(_round_robin(list(by_class.values()))[:count])


def _round_robin(groups: list[list[int]]) -> list[int]:
    out, k = [], 0
    while any(k < len(g) for g in groups):
        out.extend(g[k] for g in groups if k < len(g))
        k += 1
    return out


def _take(images, labels, count, seed):
    idx = _balanced_prefix(labels, min(count, len(labels)), seed)
    return images[idx], labels[idx]


def ensure_local(name: str, source: str | None = None) -> Path:
    """The folder holding task ``name``'s files, downloading the hub's parquet shards if asked.

    ``source``: a local folder, or ``"hub"`` to download into ``$RTLIB_DATA/<name>``. Default:
    ``$RTLIB_DATA/<name>`` if it exists.
    """
    spec = HUB[name]
    if source not in (None, "hub"):
        folder = Path(source)
        if not folder.is_dir():
            raise ConfigError("data_dir", str(folder), "an existing folder", "not found:")
        return folder
    folder = data_root() / name
    if source == "hub" and not any(folder.rglob("*.parquet")):
        from huggingface_hub import snapshot_download

        snapshot_download(spec.repo, repo_type="dataset", local_dir=str(folder),
                          allow_patterns=["*.parquet"])
    if not folder.is_dir():
        raise ConfigError("data_dir", str(folder),
                          f"a local copy (parquet or image folders) or data_dir='hub' to "
                          f"download {spec.repo}", "no local copy of "
                          f"{name}:")
    return folder


def load_hub_task(name: str, train_size: int, test_size: int, seed: int, domain: str | None,
                  image_size: int, data_dir: str | None = None, train_domains: str = "source"):
    from .split import Split, TaskData

    spec = HUB[name]
    folder = ensure_local(name, data_dir)
    parquet = any(folder.rglob("*.parquet"))
    ood: dict[str, Split] = {}
    if spec.domains:
        domain = domain or "real"
        check_choice("domain", domain, spec.domains)
    if parquet:
        train_files, test_files = _split_files(folder, "train"), _split_files(folder, "test")
        if not train_files:
            raise ValueError(f"{name}: no *train*.parquet under {folder}")
        d = spec.domains.index(domain) if spec.domains else None
        # train_domains="all": the official code's default, every domain in training.
        x, y, _ = read_parquet(train_files, spec, image_size,
                               None if train_domains == "all" else d)
        if test_files:
            xt, yt, _ = read_parquet(test_files, spec, image_size, d)
        else:  # a single split on the hub: hold out a seeded, balanced part of it
            idx = _balanced_prefix(y, len(y), seed)
            cut = max(1, len(idx) // 5)
            xt, yt, x, y = x[idx[:cut]], y[idx[:cut]], x[idx[cut:]], y[idx[cut:]]
        if spec.domains:
            files = test_files or train_files
            xo, yo, do = read_parquet(files, spec, image_size, d, exclude_domain=True)
            for i, other in enumerate(spec.domains):
                mask = torch.from_numpy(do == i)
                if i != d and mask.any():
                    ood[other] = Split(*_take(xo[mask], yo[mask], test_size, seed))
        classes = tuple(str(i) for i in range(spec.classes))
    else:
        base = folder / domain if spec.domains else folder
        x, y, names = read_image_folder(base / "train", image_size)
        if spec.domains and train_domains == "all":
            for other in spec.domains:
                if other != domain and (folder / other / "train").is_dir():
                    xo, yo, _ = read_image_folder(folder / other / "train", image_size, names)
                    x, y = torch.cat([x, xo]), torch.cat([y, yo])
        xt, yt, _ = read_image_folder(base / "test", image_size, names)
        for other in spec.domains:
            if other != domain and (folder / other / "test").is_dir():
                ood[other] = Split(*_take(*read_image_folder(folder / other / "test",
                                                             image_size, names)[:2],
                                          test_size, seed))
        classes = tuple(names)
    return TaskData(name=name, classes=classes, train=Split(*_take(x, y, train_size, seed)),
                    test=Split(*_take(xt, yt, test_size, seed)), ood=ood, domain=domain,
                    source="hub")
