"""Few-shot image classification for CLIP soft prompts (CoOp).

Zhou, Yang, Loy & Liu, "Learning to Prompt for Vision-Language Models" (CoOp),
arXiv:2109.01134: CLIP's text-side context words are learned from ``k`` labelled images per
class (k = 1, 2, 4, 8, 16), and accuracy is measured on the dataset's full test split. CoOp
reports 11 datasets (ImageNet, Caltech101, OxfordPets, StanfordCars, Flowers102, Food101,
FGVCAircraft, SUN397, DTD, EuroSAT, UCF101); ``spt/conf/data/coop_*.yaml`` loads each from the
Hugging Face Hub, ``spt/conf/data/cifar10_subset.yaml`` reads a small local CIFAR-10 subset.

The method turns ``task.label_words`` (readable class names) into CLIP text prompts and
classifies the images of a batch against them.

Sources (as for text data, :mod:`spt.data.readers`): local files under ``root``
(``SPT_DATA_DIR``), or, when ``root`` is None, ``datasets.load_dataset`` with ``hub``.

- local split spec: ``path`` (csv/tsv/jsonl file under root), ``format`` (default from the file
  extension), ``image`` (column holding the image file path, relative to that file's folder),
  ``label`` (column holding the class index), ``classname`` (optional column holding the class
  name; when given, every row is checked against ``class_names``).
  Or ``format: folder``: ``path`` is a folder with one subfolder of images per class, named
  as the class (torchvision's ImageFolder layout); labels follow ``class_names``, or the train
  folder's subfolders in sorted order when it is null.
- hub split spec: ``path``, ``name``, ``split`` (``"train+validation"`` works), ``revision``,
  ``image`` (an ``Image`` column) and ``label`` (a ``ClassLabel`` or int column).

Images are decoded one batch at a time (in the DataLoader workers when ``num_workers > 0``):
opened with PIL, converted to RGB and preprocessed by the backbone's ``image_processor``.

Batch contract (every loader)::

    pixel_values  [B, 3, H, W] float  the image processor's output (resize, crop, normalise)
    labels        [B]          long   class index into task.label_names
    task_ids      [B]          long   task_index of this data module (prompt-table row)
"""

from __future__ import annotations

import io
import logging
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from spt.backbones.arch import CLIP_MODELS
from spt.backbones.archs import arch_ops
from spt.data.inputs import InputFormat
from spt.data.loaders import SplitLoaders, make_loader
from spt.data.readers import ROOT_HINT, check_root, hub_source, load_hub_split, read_rows, to_plain
from spt.data.tables import check_split_spec
from spt.data.task import METRICS, TaskInfo
from spt.errors import SptError

log = logging.getLogger("spt.data")

SPLITS = ("train", "dev")
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
LOCAL_KEYS = {"path", "format", "image", "label", "classname"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
HUB_KEYS = {"path", "name", "split", "revision", "image", "label"}


def readable(name: str, split_camel: bool = False) -> str:
    """A class name as CLIP should read it: ``"car_side"`` -> ``"car side"``; with
    ``split_camel``, ``"ApplyEyeMakeup"`` -> ``"Apply Eye Makeup"``."""
    text = name.replace("_", " ")
    if split_camel:
        text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", text)
    return " ".join(text.split())


@dataclass
class ImageSplit:
    """One split: for each row, where its image is (``store[rows[i]]``) and its class index.

    ``store`` is a list of file paths (local data) or a ``datasets.Dataset`` holding the image
    column ``column`` (Hub data, decoded on access).
    """

    store: Any
    rows: list[int]
    labels: list[int]
    source: str
    column: str | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, picks: Sequence[int]) -> ImageSplit:
        return ImageSplit(
            self.store,
            [self.rows[i] for i in picks],
            [self.labels[i] for i in picks],
            self.source,
            self.column,
        )

    def image(self, i: int):
        """Row ``i`` as an RGB ``PIL.Image``."""
        if self.column is None:
            return open_image(self.store[self.rows[i]], self.source)
        return open_image(self.store[self.rows[i]][self.column], self.source)


def open_image(value: Any, source: str):
    """A PIL image, an image file path, or a ``{"bytes"|"path": ...}`` dict -> RGB PIL image."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, Mapping):
        if value.get("bytes"):
            value = io.BytesIO(value["bytes"])
        elif value.get("path"):
            value = value["path"]
    if not isinstance(value, str | Path | io.BytesIO):
        raise SptError(
            f"{source}: cannot read an image from a value of type "
            f"{type(value).__name__}; the image column must hold images or file paths."
        )
    try:
        with Image.open(value) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise SptError(
            f"image file not found: {value} (listed in {source}). Image paths are "
            f"relative to the folder of the file that lists them. {ROOT_HINT}"
        ) from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        # DecompressionBombError: past 2x PIL's MAX_IMAGE_PIXELS (179 MP), e.g. a 400 MP image
        what = "an embedded image" if isinstance(value, io.BytesIO) else f"image {value}"
        raise SptError(f"cannot read {what} from {source}: {e}") from None


class ImageDataset(Dataset):
    """Rows of an :class:`ImageSplit` as ``(RGB PIL image, class index)``, decoded on access."""

    def __init__(self, split: ImageSplit):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.split.image(i), self.split.labels[i]


class ImageCollator:
    """Preprocesses a list of ``(image, label)`` rows into the batch dict (module docstring)."""

    def __init__(self, image_processor: Any, task_index: int = 0):
        self.image_processor = image_processor
        self.task_index = task_index

    def __call__(self, rows: list[tuple[Any, int]]) -> dict[str, torch.Tensor]:
        images = [img for img, _ in rows]
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        pixels = torch.as_tensor(pixels, dtype=torch.float32)
        if pixels.dim() != 4 or pixels.shape[0] != len(rows):
            raise SptError(
                f"the image processor returned pixel_values of shape "
                f"{tuple(pixels.shape)} for {len(rows)} images; expected "
                f"[{len(rows)}, 3, H, W]. Use the CLIP backbone's image processor."
            )
        return {
            "pixel_values": pixels,
            "labels": torch.tensor([y for _, y in rows], dtype=torch.long),
            "task_ids": torch.full((len(rows),), self.task_index, dtype=torch.long),
        }


class FewShotImageDataModule(SplitLoaders, L.LightningDataModule):
    """k-shot training images and a full evaluation split, for CLIP prompt learning (CoOp).

    Args:
        name: task name (``"cifar10_subset"``), used in logs, messages and the artifact.
        tokenizer: accepted for the run's common call, unused (the method tokenizes prompts).
        arch: the backbone's architecture; must be ``"clip"`` when given.
        image_processor: the CLIP backbone's image processor (a transformers
            ``CLIPImageProcessor``-like callable: ``(images=[PIL...], return_tensors="pt")``
            -> ``{"pixel_values": [B, 3, H, W]}``); passed by the run, not the YAML.
        root: local data folder; None -> ``datasets.load_dataset`` with ``hub``.
        local: ``{"train": spec, "dev": spec}`` of local files (module docstring).
        hub: ``{"train": spec, "dev": spec}`` for ``datasets.load_dataset``.
        class_names: class names, index = label: a list, a file (one name per line; relative
            paths are under ``root``), or None = the hub dev split's ``ClassLabel`` names, or
            (local) the train file's ``classname`` column.
        label_words: the words CLIP reads for each class (after ``drop_classes``), same order:
            a list, a file like ``class_names``, or None = :func:`readable` class names.
        split_camel: also split CamelCase class names into words for the default label words.
        drop_classes: class names to remove with their images (CoOp drops Caltech101's
            ``BACKGROUND_Google`` and ``Faces_easy``); later classes move down one index.
        shots: training images per class, drawn with ``seed`` (None = all training images).
        seed: seed of the k-shot draw and of the ``dev_limit`` subset (shuffling follows the
            run's Lightning seed).
        batch_size / eval_batch_size: loader batch sizes (eval defaults to ``batch_size``).
        num_workers: DataLoader workers (they decode and preprocess the images).
        train_limit / dev_limit: keep a seeded random subset of that many train rows (after the
            k-shot draw) / dev rows (None = all); e.g. ``debug=fast``.
        metrics: names out of :data:`spt.data.task.METRICS`.
        n_soft: the method's soft-token count; the run sets it, image data does not use it.
        task_index: value of ``task_ids`` in every batch.
    """

    def __init__(
        self,
        name: str,
        tokenizer: Any = None,
        arch: str | None = None,
        image_processor: Any = None,
        root: str | Path | None = None,
        local: Mapping[str, Mapping] | None = None,
        hub: Mapping[str, Mapping] | None = None,
        class_names: Sequence[str] | str | None = None,
        label_words: Sequence[str] | str | None = None,
        split_camel: bool = False,
        drop_classes: Sequence[str] = (),
        shots: int | None = 16,
        seed: int | None = 0,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        train_limit: int | None = None,
        dev_limit: int | None = None,
        metrics: Sequence[str] = ("acc",),
        n_soft: int = 0,
        task_index: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer", "image_processor"], logger=False)
        self.name = str(name)
        if arch is not None:
            arch_ops(arch).check_data("images", self.name)
        if image_processor is None:
            raise SptError(
                f"data={self.name} holds images but no image_processor was given. The run passes "
                f"the CLIP backbone's processor ({CLIP_MODELS}); in code, pass e.g. "
                f"transformers.CLIPImageProcessor.from_pretrained(<clip model>)."
            )
        self.tokenizer = tokenizer
        self.arch = arch
        self.image_processor = image_processor
        self.metrics = [str(m) for m in to_plain(metrics)]
        bad = [m for m in self.metrics if m not in METRICS]
        if bad or not self.metrics:
            raise SptError(
                f"data.metrics must be a non-empty subset of {list(METRICS)}, got {self.metrics}."
            )
        for key, value, low in (
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
            ("n_soft", n_soft, 0),
        ):
            if not _is_int(value) or value < low:
                raise SptError(f"data.{key} must be an int >= {low}, got {value!r}.")
        for key, value in (
            ("shots", shots),
            ("train_limit", train_limit),
            ("dev_limit", dev_limit),
            ("eval_batch_size", eval_batch_size),
        ):
            if value is not None and (not _is_int(value) or value < 1):
                raise SptError(f"data.{key} must be null or an int >= 1, got {value!r}.")
        self.shots = shots
        self.seed = 0 if seed is None else int(seed)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.limits = {"train": train_limit, "dev": dev_limit}
        self.n_soft = n_soft
        self.task_index = int(task_index)

        self.local = self._check_specs(local, "local", LOCAL_KEYS)
        self.hub = self._check_specs(hub, "hub", HUB_KEYS)
        self.root = check_root(self.name, root, self.local)
        if self.root is None and self.hub is None:
            raise SptError(
                f"data={self.name}: no data.root and no data.hub to load from. {ROOT_HINT}"
            )
        self._hub_cache: dict[str, Any] = {}  # split -> loaded datasets.Dataset
        self._local_cache: dict[str, list[dict]] = {}  # split -> rows of the local file
        self._splits: dict[str, ImageSplit] = {}

        # Class names are read now: the method is built from `task` before setup().
        all_names, self._names_source = self._class_names(to_plain(class_names))
        drop = [str(c) for c in to_plain(drop_classes or [])]
        unknown = [c for c in drop if c not in all_names]
        if unknown:
            raise SptError(
                f"data.drop_classes names {unknown}, which are not class names of "
                f"data={self.name} ({self._names_source}); known: "
                f"{_preview(all_names)}."
            )
        kept = [i for i, c in enumerate(all_names) if c not in drop]
        if not kept:
            raise SptError(f"data.drop_classes removes every class of data={self.name}.")
        self._all_names = all_names
        self._n_all = len(all_names)
        self._remap = {old: new for new, old in enumerate(kept)}  # raw label -> class index
        self.class_names = [all_names[i] for i in kept]
        if label_words is None:
            self.label_words = [readable(c, bool(split_camel)) for c in self.class_names]
        else:
            self.label_words = self._read_names(to_plain(label_words), "label_words")
            if len(self.label_words) != len(self.class_names):
                raise SptError(
                    f"data.label_words has {len(self.label_words)} entries but data={self.name} "
                    f"has {len(self.class_names)} classes"
                    + (f" after data.drop_classes {drop}" if drop else "")
                    + "; give one label word per class, in class order."
                )

    # ------------------------------------------------------------------ config checks
    def _check_specs(self, specs: Any, key: str, allowed: set[str]) -> dict[str, dict] | None:
        if specs is None:
            return None
        specs = to_plain(specs)
        if not isinstance(specs, dict) or set(specs) != set(SPLITS):
            got = sorted(specs) if isinstance(specs, dict) else specs
            raise SptError(f"data.{key} must have exactly the splits {list(SPLITS)}, got {got}.")
        out = {}
        for split in SPLITS:
            where = f"data.{key}.{split}"
            if specs[split] is None:  # image data needs both splits
                raise SptError(f"{where} must be a mapping with keys {sorted(allowed)}, got None.")
            spec = check_split_spec(specs[split], where, allowed)
            spec.setdefault("image", "image" if key == "hub" else "path")
            spec.setdefault("label", "label")
            if key == "local":
                fmt = spec.get("format") or FORMATS.get(Path(spec["path"]).suffix.lower())
                if fmt not in ("csv", "tsv", "jsonl", "folder"):
                    raise SptError(
                        f"{where}: unknown file format {spec.get('format') or spec['path']!r}; "
                        f"set {where}.format to csv, tsv or jsonl (a file), or folder (one "
                        "subfolder of images per class)."
                    )
                spec["format"] = fmt
                if fmt == "folder":  # the rows _folder_rows makes
                    spec.update(image="path", label="label", classname="classname")
            out[split] = spec
        return out

    def _class_names(self, value: Any) -> tuple[list[str], str]:
        """The full class-name list (before ``drop_classes``) and where it came from."""
        if value is not None:
            names = self._read_names(value, "class_names")
            return names, (
                f"data.class_names file {self._names_path(value, 'class_names')}"
                if isinstance(value, str)
                else "data.class_names"
            )
        if self.root is None:
            spec = self.hub["dev"]
            ds = self._hub_dataset("dev")
            feature = ds.features.get(spec["label"])
            names = list(getattr(feature, "names", None) or [])
            if not names:
                raise SptError(
                    f"{hub_source(spec)}: column {spec['label']!r} is not a ClassLabel "
                    f"({feature!r}), so it names no classes; give data.class_names (a list or a "
                    f"file with one name per line, in label order)."
                )
            return [str(n) for n in names], f"ClassLabel names of {hub_source(spec)}"
        spec = self.local["train"]
        where = "data.local.train"
        if not spec.get("classname"):
            raise SptError(
                f"data={self.name}: data.class_names is null and {where}.classname "
                f"names no column to read them from; give data.class_names (a list or "
                f"a file under data.root with one name per line, in label order)."
            )
        path = self.root / spec["path"]
        by_index: dict[int, str] = {}
        for n, row in enumerate(self._local_rows("train")):
            label = _as_index(_column(row, spec["label"], path, n, where), path, n, where)
            name = str(_column(row, spec["classname"], path, n, where)).strip()
            if by_index.setdefault(label, name) != name:
                raise SptError(
                    f"{path}: row {n}: label {label} is named {name!r} here but "
                    f"{by_index[label]!r} in an earlier row; fix {where}.classname."
                )
        if not by_index or min(by_index) < 0:
            raise SptError(
                f"{path}: labels must be class indices 0, 1, ...; got {sorted(by_index)[:5]}."
            )
        missing = [i for i in range(max(by_index) + 1) if i not in by_index]
        if missing:
            raise SptError(
                f"{path}: no training row has label(s) {missing[:10]}, so their class "
                f"names are unknown; give data.class_names."
            )
        return [
            by_index[i] for i in range(len(by_index))
        ], f"column {spec['classname']!r} of {path}"

    def _names_path(self, value: str, key: str) -> Path:
        path = Path(value).expanduser()
        if path.is_absolute():
            return path
        if self.root is None:
            raise SptError(
                f"data.{key} is a relative file path ({value}) but data.root is null; "
                f"give an absolute path, or set data.root. {ROOT_HINT}"
            )
        return self.root / path

    def _read_names(self, value: Any, key: str) -> list[str]:
        """A name list given inline, or as a file with one name per line."""
        if isinstance(value, str):
            path = self._names_path(value, key)
            if not path.is_file():
                raise SptError(
                    f"data.{key} file not found: {path} (relative paths are under "
                    f"data.root / SPT_DATA_DIR). {ROOT_HINT}"
                )
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            names = [n for n in names if n]
        elif isinstance(value, list):
            names = [str(n).strip() for n in value]
        else:
            raise SptError(f"data.{key} must be a list of names or a file path, got {value!r}.")
        if not names or not all(names):
            raise SptError(f"data.{key} must hold at least one non-empty name, got {value!r}.")
        return names

    # ------------------------------------------------------------------ public API
    @property
    def task(self) -> TaskInfo:
        return TaskInfo(
            name=self.name,
            label_names=tuple(self.class_names),
            label_words=tuple(self.label_words),
            metrics=tuple(self.metrics),
            num_classes=len(self.class_names),
        )

    @property
    def formats(self) -> tuple[InputFormat, ...]:
        """What an artifact carries of this task: its classes (images need no template)."""
        return (
            InputFormat(
                kind="image",
                name=self.name,
                label_names=tuple(self.class_names),
                label_words=tuple(self.label_words),
                metrics=tuple(self.metrics),
            ),
        )

    def train_texts(self, limit: int = 5000) -> None:
        """No training text: image data gives methods nothing to initialise prompts from."""
        return None

    def num_rows(self, split: str) -> int:
        """Rows of ``"train"`` (after ``shots``) or ``"dev"`` (after ``dev_limit``)."""
        return len(self._split(split))

    def labels(self, split: str) -> list[int]:
        """Class index of every row of ``"train"`` or ``"dev"``, in loader order (unshuffled)."""
        return list(self._split(split).labels)

    # ------------------------------------------------------------------ loading
    def _hub_dataset(self, split: str):
        if split not in self._hub_cache:
            self._hub_cache[split] = load_hub_images(self.name, self.hub[split])
        return self._hub_cache[split]

    def _folder_rows(self, path: Path) -> list[dict]:
        """One row per image of a class-per-subfolder layout, labelled by the subfolder's
        position in the class names (the train folder's sorted subfolders while those are
        still being read)."""
        classes = sorted(d.name for d in path.iterdir() if d.is_dir())
        if not classes:
            raise SptError(
                f"{path} has no class subfolders: put each class's images in a "
                "folder named as the class, or use a csv/tsv/jsonl file"
            )
        names = getattr(self, "_all_names", None) or classes
        rows = []
        for name in classes:
            if name not in names:
                raise SptError(
                    f"{path / name}: a class folder that is not one of the "
                    f"{len(names)} class names ({_preview(names)}, from "
                    f"{getattr(self, '_names_source', 'the train folder')}); rename "
                    "it, or add it to data.class_names"
                )
            rows += [
                {"path": f"{name}/{f.name}", "label": names.index(name), "classname": name}
                for f in sorted((path / name).iterdir())
                if f.suffix.lower() in IMAGE_SUFFIXES
            ]
        return rows

    def _local_rows(self, split: str) -> list[dict]:
        if split not in self._local_cache:
            spec = self.local[split]
            path = self.root / spec["path"]
            self._local_cache[split] = (
                self._folder_rows(path)
                if spec["format"] == "folder"
                else list(read_rows(path, spec["format"], columns=None, quoting="minimal"))
            )
        return self._local_cache[split]

    def _read(self, split: str) -> ImageSplit:
        """All rows of a split with class indices (``drop_classes`` applied)."""
        if self.root is not None:
            spec, where = self.local[split], f"data.local.{split}"
            path = self.root / spec["path"]
            folder = path if spec["format"] == "folder" else path.parent
            raw: list[int] = []
            images: list[str] = []
            for n, row in enumerate(self._local_rows(split)):
                label = _as_index(_column(row, spec["label"], path, n, where), path, n, where)
                self._check_label(label, path, n, where)
                if spec.get("classname"):
                    name = str(_column(row, spec["classname"], path, n, where)).strip()
                    if name != self._all_names[label]:
                        raise SptError(
                            f"{path}: row {n}: classname {name!r} but label {label} is "
                            f"{self._all_names[label]!r} in {self._names_source}. The class-name "
                            f"list is out of label order, or {where}.label / {where}.classname "
                            f"name the wrong column."
                        )
                images.append(str(folder / str(_column(row, spec["image"], path, n, where))))
                raw.append(label)
            store, column, source = images, None, str(path)
        else:
            spec, where = self.hub[split], f"data.hub.{split}"
            ds = self._hub_dataset(split)
            source = hub_source(spec)
            missing = [c for c in (spec["image"], spec["label"]) if c not in ds.column_names]
            if missing:
                raise SptError(
                    f"{source} has no column(s) {missing} (columns: "
                    f"{ds.column_names}). Fix {where}.image / {where}.label."
                )
            raw = ds.with_format("arrow")[spec["label"]].to_pylist()
            for n, label in enumerate(raw):
                self._check_label(label, source, n, where)
            store, column = ds.select_columns([spec["image"]]), spec["image"]
        keep = [n for n, y in enumerate(raw) if y in self._remap]
        return ImageSplit(store, keep, [self._remap[raw[n]] for n in keep], source, column)

    def _check_label(self, label: Any, source: Any, row: int, where: str) -> None:
        if not _is_int(label) or not 0 <= label < self._n_all:
            raise SptError(
                f"{source}: row {row}: label {label!r} is not a class index 0..{self._n_all - 1} "
                f"of the {self._n_all} class names ({self._names_source}). Fix the label column "
                f"({where}.label) or data.class_names."
            )

    def _split(self, split: str) -> ImageSplit:
        if split not in SPLITS:
            raise SptError(f"split must be one of {SPLITS}, got {split!r}.")
        if split not in self._splits:
            data = self._read(split)
            if split == "train" and self.shots is not None:
                data = data.subset(self._k_shot(data))
            limit = self.limits[split]
            if limit is not None and limit < len(data):
                rng = random.Random(f"{self.seed}:{split}")  # str seeds are stable across runs
                data = data.subset(sorted(rng.sample(range(len(data)), limit)))
            log.info("%s/%s: %d images (%s)", self.name, split, len(data), data.source)
            self._splits[split] = data
        return self._splits[split]

    def _k_shot(self, data: ImageSplit) -> list[int]:
        """``shots`` seeded rows of every class (positions into ``data``, sorted)."""
        by_class: dict[int, list[int]] = {c: [] for c in range(len(self.class_names))}
        for i, y in enumerate(data.labels):
            by_class[y].append(i)
        rng = random.Random(f"{self.seed}:shots")  # str seeds are stable across runs
        picked: list[int] = []
        for c, rows in by_class.items():
            if len(rows) < self.shots:
                raise SptError(
                    f"data={self.name}: shots={self.shots} but class {c} "
                    f"{self.class_names[c]!r} has only {len(rows)} training image(s) in "
                    f"{data.source}. Lower data.shots, or set it to null to train on every image."
                )
            picked += rng.sample(rows, self.shots)
        return sorted(picked)

    def setup(self, stage: str | None = None) -> None:
        """Read the splits the stage needs (train + dev for fit, dev otherwise); the images
        themselves are decoded batch by batch."""
        for split in ("dev",) if stage in ("validate", "test", "predict") else SPLITS:
            self._split(split)

    # ------------------------------------------------------------------ loaders
    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        return make_loader(
            ImageDataset(self._split(split)),
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=ImageCollator(self.image_processor, self.task_index),
            num_workers=self.num_workers,
        )


def load_hub_images(name: str, spec: Mapping):
    """One hub split of an image dataset (:func:`spt.data.readers.load_hub_split`), whose fix
    names the image data's own local format."""
    return load_hub_split(
        spec,
        fix=(
            f"Fix for data={name}: run once where the Hub is reachable (the dataset is then cached "
            "and later offline runs use the cache), or use a local copy: data.root=/path/to/data "
            "plus data.local train/dev files listing image paths and class indices (see "
            "spt/conf/data/cifar10_subset.yaml)."
        ),
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _column(row: Mapping, column: str, path: Path, n: int, where: str) -> Any:
    try:
        return row[column]
    except KeyError:
        raise SptError(
            f"{path}: row {n} has no column {column!r} (columns: {sorted(row)}). "
            f"Fix {where}.image / {where}.label / {where}.classname."
        ) from None


def _as_index(value: Any, path: Path, n: int, where: str) -> int:
    """A label cell (``3``, ``"3"``) as an int class index."""
    if _is_int(value):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise SptError(
            f"{path}: row {n}: label {value!r} is not an integer class index; "
            f"{where}.label must name a column of class indices 0, 1, ..."
        ) from None


def _preview(names: Sequence[str], k: int = 8) -> str:
    head = ", ".join(repr(n) for n in names[:k])
    return f"[{head}{', ...' if len(names) > k else ''}] ({len(names)} classes)"
