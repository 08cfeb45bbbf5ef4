"""FewShotImageDataModule (CoOp-style few-shot images): offline, on the local CIFAR-10 subset,
with a 32-pixel CLIP image processor."""

from __future__ import annotations

import collections
import csv
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import CLIPImageProcessorPil

import spt.data.images as images_module
from spt import CONF_DIR
from spt.data import FewShotImageDataModule, TaskInfo
from spt.errors import SptError

CONF = CONF_DIR
COOP = sorted(p.stem for p in (CONF / "data").glob("coop_*.yaml"))
CIFAR = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(scope="module")
def processor():
    return CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


@pytest.fixture(scope="module")
def cifar_cfg():
    with initialize_config_dir(config_dir=str(CONF / "data"), version_base=None):
        return compose(config_name="cifar10_subset")


@pytest.fixture
def make(cifar_cfg, processor, data_dir):
    """Build the cifar10_subset YAML as the run does (a partial, then the run's objects),
    with keyword overrides."""

    def build(**overrides):
        kwargs = {
            "tokenizer": None,
            "arch": "clip",
            "image_processor": processor,
            "root": str(data_dir),
            **overrides,
        }
        return instantiate(cifar_cfg, _partial_=True)(**kwargs)

    return build


def per_class(labels):
    return collections.Counter(labels)


# ---------------------------------------------------------------- task info and k-shot sampling
def test_task_info_from_classnames_file(make):
    dm = make()
    assert dm.task == TaskInfo(
        name="cifar10_subset",
        label_names=CIFAR,
        label_words=CIFAR,
        metrics=("acc",),
        num_classes=10,
    )
    assert dm.train_texts() is None
    dm.n_soft = 4  # the run sets it; image data keeps it as a plain attribute
    assert dm.n_soft == 4


def test_k_shot_exact_per_class_and_seeded(make):
    a = make(shots=4, seed=0)
    assert a.num_rows("train") == 40
    assert per_class(a.labels("train")) == {c: 4 for c in range(10)}
    again = make(shots=4, seed=0)
    assert again._split("train").rows == a._split("train").rows
    other = make(shots=4, seed=1)
    assert per_class(other.labels("train")) == {c: 4 for c in range(10)}
    assert other._split("train").rows != a._split("train").rows
    assert make(shots=None).num_rows("train") == 1000
    assert make(shots=4).num_rows("dev") == 1000  # shots never touch the dev split


def test_too_many_shots_names_the_class_and_count(make):
    with pytest.raises(SptError, match=r"shots=101 but class 0 'airplane' has only 100"):
        make(shots=101).setup("fit")


def test_dev_limit_is_a_seeded_subset(make):
    a = make(dev_limit=50, seed=3)
    assert a.num_rows("dev") == 50
    rows = a._split("dev").rows
    assert rows == sorted(rows) and len(set(rows)) == 50
    assert make(dev_limit=50, seed=3)._split("dev").rows == rows
    assert make(dev_limit=50, seed=4)._split("dev").rows != rows


# ---------------------------------------------------------------- batches
def test_batches_shapes_dtypes_and_order(make, one_thread):
    dm = make(shots=2, batch_size=8, eval_batch_size=100, dev_limit=30, task_index=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"pixel_values", "labels", "task_ids"}
    assert batch["pixel_values"].shape == (8, 3, 32, 32)
    assert batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].dtype == batch["task_ids"].dtype == torch.long
    assert batch["labels"].shape == batch["task_ids"].shape == (8,)
    assert (batch["task_ids"] == 2).all()
    assert ((batch["labels"] >= 0) & (batch["labels"] < 10)).all()

    val = [next(iter(dm.val_dataloader())) for _ in range(2)]
    assert val[0]["pixel_values"].shape == (30, 3, 32, 32)
    assert val[0]["labels"].tolist() == dm.labels("dev")  # not shuffled
    assert torch.equal(val[0]["pixel_values"], val[1]["pixel_values"])
    # different images give different pixels (the processor really ran on each image)
    assert not torch.equal(val[0]["pixel_values"][0], val[0]["pixel_values"][-1])


# ---------------------------------------------------------------- refusals and bad input
def test_text_backbone_refused_with_the_fix(make):
    with pytest.raises(
        SptError,
        match=r"data=cifar10_subset holds images; the model is a text "
        r"backbone \(encoder\): use a CLIP model \(model=tiny-clip",
    ):
        make(arch="encoder")


def test_image_processor_required(make):
    with pytest.raises(SptError, match="no image_processor was given"):
        make(image_processor=None)


def copy_subset(data_dir: Path, tmp_path: Path, rows: int = 20) -> Path:
    """A small copy of cifar10_subset under tmp_path (same images, the first rows per split)."""
    src, dst = data_dir / "cifar10_subset", tmp_path / "cifar10_subset"
    dst.mkdir(parents=True)
    shutil.copy(src / "classnames.txt", dst / "classnames.txt")
    for name in ("train.csv", "test.csv"):
        lines = (src / name).read_text().splitlines()
        keep = (
            [lines[0]]
            + [
                row.replace("images/", f"{src}/images/", 1)  # absolute image paths
                for row in lines[1:][::50][:rows]
            ]
        )
        (dst / name).write_text("\n".join(keep) + "\n")
    return tmp_path


def test_missing_root_or_file_names_path_and_env(make, data_dir, tmp_path):
    with pytest.raises(SptError, match=r"nowhere.*SPT_DATA_DIR"):
        make(root=str(tmp_path / "nowhere"))
    root = copy_subset(data_dir, tmp_path)
    (root / "cifar10_subset" / "test.csv").unlink()
    with pytest.raises(SptError, match=r"cifar10_subset/test\.csv.*SPT_DATA_DIR"):
        make(root=str(root))


def test_missing_classnames_file_and_image(make, data_dir, tmp_path):
    root = copy_subset(data_dir, tmp_path)
    with pytest.raises(SptError, match=r"class_names file not found: .*missing\.txt.*SPT_DATA_DIR"):
        make(root=str(root), class_names="cifar10_subset/missing.txt")
    train = root / "cifar10_subset" / "train.csv"
    train.write_text(train.read_text().replace("0000.jpg", "9999.jpg"))
    dm = make(root=str(root), shots=None, batch_size=20)
    dm.setup("fit")
    with pytest.raises(
        SptError, match=r"image file not found: .*9999\.jpg \(listed in .*train\.csv"
    ):
        next(iter(dm.train_dataloader()))


def rewrite_labels(path: Path, label: str) -> None:
    rows = list(csv.DictReader(path.open()))
    rows[3]["label"] = label
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_label_out_of_range_and_classname_mismatch(make, data_dir, tmp_path):
    root = copy_subset(data_dir, tmp_path)
    rewrite_labels(root / "cifar10_subset" / "test.csv", "10")
    with pytest.raises(SptError, match=r"row 3: label 10 is not a class index 0\.\.9 of the 10"):
        make(root=str(root)).setup("validate")
    with pytest.raises(SptError, match=r"classname 'airplane' but label 0 is 'truck'.*label order"):
        make(
            root=str(copy_subset(data_dir, tmp_path / "b")), class_names=list(reversed(CIFAR))
        ).setup("validate")


def test_unknown_split_format(make):
    spec = {"path": "cifar10_subset/train.parquet"}
    with pytest.raises(
        SptError, match=r"data\.local\.train: unknown file format.*csv, tsv or jsonl"
    ):
        make(local={"train": spec, "dev": spec})
    spec = {"path": "cifar10_subset/train.csv", "format": "xml"}
    with pytest.raises(SptError, match="unknown file format 'xml'"):
        make(local={"train": spec, "dev": spec})


def test_bad_label_words_and_drop_classes(make):
    with pytest.raises(SptError, match="label_words has 2 entries but data=cifar10_subset has 10"):
        make(label_words=["a", "b"])
    with pytest.raises(SptError, match=r"drop_classes names \['unicorn'\]"):
        make(drop_classes=["unicorn"])


# ---------------------------------------------------------------- the Hub path
def hub_spec(path: str, split: str) -> dict:
    return {"path": path, "name": None, "split": split, "image": "image", "label": "label"}


def test_hub_offline_fails_with_the_dataset_id_and_the_fix(processor, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with initialize_config_dir(config_dir=str(CONF / "data"), version_base=None):
        cfg = compose(config_name="coop_imagenet")
    fix = r"run once where the Hub is reachable.*data\.root=/path/to/data plus data\.local"
    with pytest.raises(SptError, match=r"ILSVRC/imagenet-1k split 'validation'.*offline.*" + fix):
        instantiate(cfg, _partial_=True)(tokenizer=None, arch="clip", image_processor=processor)
    # with the class names given, the failure comes at setup, for the split being read
    dm = FewShotImageDataModule(
        name="coop_x",
        image_processor=processor,
        class_names=["a", "b"],
        hub={
            "train": hub_spec("no-org/no-data", "train"),
            "dev": hub_spec("no-org/no-data", "test"),
        },
    )
    with pytest.raises(SptError, match=r"no-org/no-data split 'test'.*" + fix):
        dm.setup("validate")


def test_hub_split_class_labels_drop_and_camel(processor, data_dir, monkeypatch, one_thread):
    """A Hub split (a local datasets.Dataset standing in for load_dataset): names from the
    ClassLabel feature, drop_classes remaps indices, split_camel makes the label words."""
    import datasets

    names = ["ApplyEyeMakeup", "BACKGROUND_Google", "YoYo"]
    pic = str(data_dir / "cifar10_subset/images/train/airplane/00{:02d}.jpg")
    labels = [0, 1, 2] * 6
    ds = datasets.Dataset.from_dict(
        {"image": [pic.format(i) for i in range(18)], "label": labels},
        features=datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(names=names)}
        ),
    )
    loaded = []
    monkeypatch.setattr(
        images_module, "load_hub_images", lambda name, spec: loaded.append(spec["split"]) or ds
    )
    dm = FewShotImageDataModule(
        name="coop_x",
        arch="clip",
        image_processor=processor,
        hub={"train": hub_spec("org/x", "train"), "dev": hub_spec("org/x", "test")},
        split_camel=True,
        drop_classes=["BACKGROUND_Google"],
        shots=3,
        batch_size=6,
    )
    assert dm.task.label_names == ("ApplyEyeMakeup", "YoYo")
    assert dm.task.label_words == ("Apply Eye Makeup", "Yo Yo")
    assert loaded == ["test"]  # only the dev split, for its ClassLabel names
    dm.setup("fit")
    assert per_class(dm.labels("train")) == {0: 3, 1: 3}
    assert per_class(dm.labels("dev")) == {0: 6, 1: 6}
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (6, 3, 32, 32)
    assert sorted(batch["labels"].tolist()) == [0, 0, 0, 1, 1, 1]


# ---------------------------------------------------------------- every CoOp YAML composes
def test_eleven_coop_datasets():
    assert [n.removeprefix("coop_") for n in COOP] == sorted(
        [
            "imagenet",
            "caltech101",
            "oxford_pets",
            "stanford_cars",
            "oxford_flowers",
            "food101",
            "fgvc_aircraft",
            "sun397",
            "dtd",
            "eurosat",
            "ucf101",
        ]
    )


@pytest.mark.parametrize("name", COOP)
def test_coop_yaml_composes_and_resolves(name):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="run", overrides=[f"data={name}"])
    data = OmegaConf.to_container(cfg.data, resolve=True)
    assert data["_target_"] == "spt.data.FewShotImageDataModule"
    assert data["name"] == name and data["root"] is None and data["local"] is None
    assert set(data["hub"]) == {"train", "dev"}
    for spec in data["hub"].values():
        assert spec["path"] and spec["split"] and spec["image"] and spec["label"]
        assert set(spec) <= images_module.HUB_KEYS
    assert data["shots"] == 16 and data["metrics"] == ["acc"]
    if data["label_words"] is not None:
        assert len(data["label_words"]) == 10  # EuroSAT's CoOp names


# ---------------------------------------------------------------- a folder per class
FOLDERS = {
    "train": {"path": "cifar10_subset/images/train", "format": "folder"},
    "dev": {"path": "cifar10_subset/images/test", "format": "folder"},
}


def _pairs(dm, split):
    data = dm._split(split)
    return sorted(
        (
            Path(data.store[r]).relative_to(Path(data.store[r]).parents[2]).as_posix(),
            dm.task.label_names[y],
        )
        for r, y in zip(data.rows, data.labels, strict=True)
    )


def test_image_folder_layout_reads_the_same_images_and_classes_as_the_csv(make):
    """format: folder (a subfolder per class) gives the rows the CSV lists, with labels that
    follow data.class_names, here in an order unlike the folders' own."""
    csv_dm = make(shots=None)
    names = list(reversed(CIFAR))
    dm = make(local=FOLDERS, class_names=names, shots=None)
    assert dm.task.label_names == tuple(names)
    for split in ("train", "dev"):
        assert _pairs(dm, split) == _pairs(csv_dm, split)
        assert len(dm._split(split)) == 1000
    # without class names: the train folder's subfolders, sorted
    assert make(local=FOLDERS, class_names=None).task.label_names == tuple(sorted(CIFAR))
    dm = make(local=FOLDERS, class_names=None, shots=2, batch_size=20)
    dm.setup("fit")
    assert per_class(dm._split("train").labels) == {c: 2 for c in range(10)}


def test_image_folder_errors_name_the_folder(make, data_dir, tmp_path):
    with pytest.raises(SptError, match=r"data folder not found: .*images/nothere"):
        make(
            local={**FOLDERS, "dev": {"path": "cifar10_subset/images/nothere", "format": "folder"}}
        )
    dm = make(local=FOLDERS, class_names=CIFAR[:9], shots=None)  # no "truck" class name
    with pytest.raises(
        SptError,
        match=r"images/test/truck: a class folder that is not one of "
        r"the 9 class names.*add it to data.class_names",
    ):
        dm._split("dev")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SptError, match="has no class subfolders"):
        make(
            root=str(tmp_path),
            local={s: {"path": "empty", "format": "folder"} for s in ("train", "dev")},
            class_names=["a"],
        )._split("dev")
