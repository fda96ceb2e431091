"""The embedded glyph world and the paper-scale loaders (on small local files in real formats)."""
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from rtlib import data
from rtlib.data import glyphs, hub
from rtlib.config import ConfigError


def test_same_seed_same_tensors_other_seed_other_tensors():
    a = glyphs.generate("greek", "train", 40, seed=3)
    b = glyphs.generate("greek", "train", 40, seed=3)
    c = glyphs.generate("greek", "train", 40, seed=4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    # Any slice regenerates identically: image i depends on (seed, task, split, domain, i) only.
    tail = glyphs.generate("greek", "train", 10, seed=3, start=30)
    assert np.array_equal(tail[0], a[0][30:])


def test_splits_and_domains_differ():
    train = glyphs.generate("digits", "train", 20)[0]
    test = glyphs.generate("digits", "test", 20)[0]
    assert not np.array_equal(train, test)
    by_domain = {d: glyphs.generate("digits", "test", 20, domain=d)[0] for d in glyphs.DOMAINS}
    for d in glyphs.DOMAINS[1:]:
        assert not np.array_equal(by_domain["print"], by_domain[d])


@pytest.mark.parametrize("task", ["upstream", "digits", "letters", "greek", "symbols", "fonts"])
def test_classes_are_balanced(task):
    n = len(glyphs.specs()[task].classes)
    x, y = glyphs.generate(task, "train", 3 * n + 1)
    counts = np.bincount(y, minlength=n)
    assert counts.max() - counts.min() <= 1
    assert x.dtype == np.uint8 and x.shape == (3 * n + 1, 3, 24, 24)
    assert x.std() > 20  # real images, not blanks


def test_task_data_labels_its_domains():
    task = data.load_task("letters", train_size=48, test_size=24, domain="texture")
    assert task.domain == "texture"
    assert set(task.ood) == {"print", "outline", "clutter", "dots"}
    assert task.num_classes == 24 and task.image_size == 24
    for split in (task.train, task.test, *task.ood.values()):
        assert split.images.dtype == torch.uint8
        assert torch.bincount(split.labels).max() - torch.bincount(split.labels).min() <= 1


def test_upstream_and_downstream_fonts_are_disjoint_where_intended():
    specs = glyphs.specs()
    assert not set(specs["digits"].fonts) & set(specs["upstream"].fonts)
    assert set(specs["digits"].classes) <= set(specs["upstream"].classes)  # near: seen classes
    assert not set(specs["greek"].classes) & set(specs["upstream"].classes)  # far: unseen


def test_registry_lists_embedded_and_hub_tasks():
    reg = data.registry()
    for name in ("upstream", "digits", "letters", "greek", "symbols", "fonts"):
        assert reg[name].source == "embedded" and reg[name].domains == glyphs.DOMAINS
    for name in ("cifar10", "cifar100", "caltech256", "cub200", "stanford_dogs", "domainnet"):
        assert reg[name].source == "hub"
    assert reg["domainnet"].domains == hub.DOMAINNET_DOMAINS


def test_unknown_task_or_domain_names_the_allowed_ones():
    with pytest.raises(ConfigError, match="^task: unknown value 'cifar11'; allowed: .*cifar10"):
        data.load_task("cifar11")
    with pytest.raises(ConfigError, match="^domain: unknown value 'sketch'; allowed: .*outline"):
        data.load_task("digits", domain="sketch")


# -- hub formats, written here ----------------------------------------------------------------
def png(colour, size=8, fmt="PNG"):
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, fmt)
    return buf.getvalue()


COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def write_parquet(path, labels, image_col="img", label_col="label", domains=None,
                  corrupt_row=None):
    cells = []
    for i, lab in enumerate(labels):
        blob = b"not an image" if i == corrupt_row else png(COLOURS[lab % 3], fmt="JPEG"
                                                            if i % 2 else "PNG")
        cells.append({"bytes": blob, "path": f"img_{i}.png"})
    columns = {image_col: pa.array(cells, pa.struct([("bytes", pa.binary()),
                                                     ("path", pa.string())])),
               label_col: pa.array(labels, pa.int64())}
    if domains is not None:
        columns["domain"] = pa.array(domains, pa.int64())
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def test_cifar10_from_hub_style_parquet(tmp_path):
    write_parquet(tmp_path / "plain_text" / "train-00000-of-00001.parquet", [0, 1, 2] * 4)
    write_parquet(tmp_path / "plain_text" / "test-00000-of-00001.parquet", [0, 1, 2] * 2)
    task = data.load_task("cifar10", train_size=9, test_size=6, data_dir=tmp_path,
                          image_size=16)
    assert task.train.images.shape == (9, 3, 16, 16) and task.num_classes == 10
    assert sorted(task.train.labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # The pixels belong to the labels: class 0 is red, 1 green, 2 blue.
    for img, lab in zip(task.test.images, task.test.labels):
        assert img[:, 8, 8].argmax().item() == lab.item()


def test_caltech256_labels_start_at_one_on_the_hub(tmp_path):
    write_parquet(tmp_path / "data" / "train-0.parquet", [1, 2, 3] * 5, image_col="image")
    task = data.load_task("caltech256", train_size=9, test_size=3, data_dir=tmp_path,
                          image_size=8)
    assert set(task.train.labels.tolist()) | set(task.test.labels.tolist()) <= {0, 1, 2}
    assert len(task.test) == 3  # no test split: a balanced fifth is held out


def test_domainnet_trains_on_the_source_domain_only(tmp_path):
    labels = [0, 1, 2] * 6
    domains = [0] * 6 + [4] * 6 + [5] * 6  # clipart, real, sketch
    write_parquet(tmp_path / "train.parquet", labels, image_col="image", domains=domains)
    write_parquet(tmp_path / "test.parquet", labels, image_col="image", domains=domains)
    task = data.load_task("domainnet", train_size=100, test_size=100, domain="sketch",
                          data_dir=tmp_path, image_size=8)
    assert len(task.train) == 6 and len(task.test) == 6  # sketch rows only
    assert set(task.ood) == {"clipart", "real"}
    assert all(len(s) == 6 for s in task.ood.values())


def test_image_folder_tree(tmp_path):
    for split, n in (("train", 4), ("test", 2)):
        for k, name in enumerate(["cat", "dog", "eel"]):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i}.png").write_bytes(png(COLOURS[k]))
    task = data.load_task("cub200", train_size=12, test_size=6, data_dir=tmp_path,
                          image_size=8)
    assert task.classes == ("cat", "dog", "eel")
    assert len(task.train) == 12 and len(task.test) == 6
    assert task.test.images[task.test.labels == 1][:, 1].float().mean() > 200  # dogs are green


def test_corrupt_image_names_the_file(tmp_path):
    write_parquet(tmp_path / "train.parquet", [0, 1, 2] * 2, corrupt_row=4)
    with pytest.raises(hub.CorruptImage, match=r"train\.parquet row 4 \(img_4\.png\)"):
        data.load_task("cifar100", data_dir=tmp_path, image_size=8)
    folder = tmp_path / "tree" / "train" / "cat"
    folder.mkdir(parents=True)
    (folder / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(hub.CorruptImage, match="broken.png"):
        hub.read_image_folder(tmp_path / "tree" / "train", 8)


def test_missing_local_copy_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="^data_dir: not found"):
        data.load_task("cifar10", data_dir=tmp_path / "nowhere")


def test_cli_tasks_json(capsys):
    import json

    from rtlib import cli

    assert cli.main(["tasks", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["fonts"] == {**rows["fonts"], "classes": 8, "source": "embedded",
                             "image_size": 24, "domains": list(glyphs.DOMAINS)}
    assert rows["caltech256"]["classes"] == 257 and rows["domainnet"]["source"] == "hub"


def test_the_ladder_tasks_render_deterministically_as_the_catalog_says():
    """Issue 33's tasks: the same images from the same seed, their classes and domains as the
    catalog says, and the old tasks' images unchanged by the new domain (a dots task's own
    domain is dots; the outline images are the committed study's)."""
    from rtlib.data import glyphs

    for name in ("letters_r90", "greek_r90", "digits_dots", "family"):
        a, la = glyphs.generate(name, "test", 30, seed=3)
        b, lb = glyphs.generate(name, "test", 30, seed=3)
        assert np.array_equal(a, b) and np.array_equal(la, lb)
        assert not np.array_equal(a, glyphs.generate(name, "test", 30, seed=4)[0])
        info = data.info(name)
        assert info.classes == len(glyphs.specs()[name].classes) and "dots" in info.domains
    assert data.info("family").classes == 3 and data.info("letters_r90").classes == 24
    dots = data.load_task("digits_dots", train_size=20, test_size=10)
    assert dots.domain == "dots" and "print" in dots.ood and "dots" not in dots.ood
    # turned letters are the letters' glyphs turned: same classes and fonts, other pixels
    assert glyphs.specs()["letters_r90"].fonts == glyphs.specs()["letters"].fonts
    plain = glyphs.generate("letters", "test", 8, seed=0)[0]
    assert not np.array_equal(plain, glyphs.generate("letters_r90", "test", 8, seed=0)[0])
    # the committed study's outline images (a digest of the first 48 digits at seed 0)
    import hashlib

    outline = glyphs.generate("digits", "test", 48, seed=0, domain="outline")[0]
    assert hashlib.sha256(outline.tobytes()).hexdigest()[:12] == "02356d8ed7d5"


def test_the_ladder_grid_names_say_script_turn_and_rendering():
    """<script>[_r90][_<domain>]: the classes are the script's, the rotation and the task's own
    (trained and tested) domain are what the name says, and its images are that rendering."""
    specs = glyphs.specs()
    grid = [n for n in specs if n.split("_")[0] in ("digits", "letters", "greek") and "_" in n]
    assert {"greek_dots", "greek_r90_dots", "letters_texture", "digits_r90_outline"} <= set(grid)
    script_classes = {"digits": glyphs.DIGITS, "letters": glyphs.UPPER, "greek": glyphs.GREEK}
    for name in grid:
        spec, parts = specs[name], name.split("_")
        assert spec.classes == tuple(script_classes[parts[0]])
        assert spec.rotation == (float(parts[1][1:]) if len(parts) > 1 and parts[1][0] == "r"
                                 and parts[1][1:].isdigit() else 0.0)
        assert spec.domains == ((parts[-1],) if parts[-1] in glyphs.DOMAINS else ("print",))
    task = data.load_task("greek_r90_dots", train_size=23, test_size=23)
    assert task.domain == "dots" and set(task.ood) == set(glyphs.DOMAINS) - {"dots"}
    # the same glyphs, turned: the texture task's images are not the print task's
    a = glyphs.generate("letters_texture", "test", 12, seed=0)[0]
    assert np.array_equal(a, glyphs.generate("letters_texture", "test", 12, seed=0)[0])
    assert not np.array_equal(a, glyphs.generate("letters_r90_texture", "test", 12, seed=0)[0])
