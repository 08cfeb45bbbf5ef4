"""The Python API: a soft prompt and its frozen backbone as one object, without Hydra.

Why: a researcher who lives in Python expects PEFT's habits (``get_peft_model`` around a model
they loaded, their own training loop, ``save_pretrained`` / ``from_pretrained``), and a trained
prompt should be usable from its artifact alone. So an artifact carries, as plain values, how
to load its base model (``backbone``: one of :data:`spt.backbones.LOADERS` and its arguments),
the method's settings (``settings``) and each task's input format (``inputs``: template, label
words, limits); :func:`load` rebuilds the method from those, never from code a file names.

    import spt
    model = spt.load("outputs/runs/sst2/minilm/prompt/<time>/prompt.safetensors")
    model.classify(["a gripping, funny film"])   # [{"task", "label", "scores"}]
    model.generate(["name[The Eagle], food[French]"], do_sample=True, top_p=0.9, seed=0)

    model = spt.prompt_model(hf_model, tokenizer, method="prompt", template="...",
                             labels=["negative", "positive"])
    loss = model.loss(model.batch(texts, labels=["positive", ...]))   # your own loop
    model.save("my-prompt.safetensors")
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import operator
import string
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from spt import __version__, methods
from spt.backbones import Backbone, from_model, load_source
from spt.core.artifact import load_artifact, save_artifact
from spt.core.generate import check_sampling, generate
from spt.core.trees import plain
from spt.data.inputs import InputFormat
from spt.data.multitask import MultiTaskInfo
from spt.errors import SptError

# Settings an artifact does not carry: how the prompt started (it is loaded from the file) and
# the YAML's architecture list (the class's own applies); methods add their training_settings.
_NOT_SETTINGS = {"init", "init_file", "init_text", "init_std", "supports"}


def method_settings(method) -> dict:
    """The method's constructor settings as plain values (its saved hyperparameters)."""
    return {k: plain(v) for k, v in dict(method.hparams).items()}


class PromptModel:
    """A method (a :class:`~lightning.LightningModule` holding the prompt and the frozen
    backbone) with the input format of each task it serves.

    ``method`` is the module to train (``method.parameters()`` holds the backbone, frozen;
    :meth:`trainable_parameters` only the prompt and head). ``formats[i]`` turns raw inputs
    into batches for row ``i`` of the prompt table; one format serves every row of a table
    trained on one dataset (``method.n_tasks`` > 1 with ``data.task_index``).
    """

    def __init__(self, method, formats: Sequence[InputFormat], data: str | None = None):
        if len(formats) not in (1, len(method.task_names)):
            raise SptError(
                f"{len(formats)} input formats for a prompt table of {len(method.task_names)} "
                f"tasks ({method.task_names}): give one per task, or one for all of them"
            )
        self.method = method
        self.formats = tuple(formats)
        self.data = data or (formats[0].name if len(formats) == 1 else "mixture")

    # -- what it is ------------------------------------------------------------------------
    @property
    def backbone(self) -> Backbone:
        return self.method.base

    @property
    def name(self) -> str:
        return self.method.method_name

    @property
    def tasks(self) -> list[str]:
        return list(self.method.task_names)

    @property
    def device(self) -> torch.device:
        return next(self.method.backbone.parameters()).device

    def to(self, device) -> PromptModel:
        self.method.to(device)
        return self

    def train(self, mode: bool = True) -> PromptModel:
        """Training mode for the prompt and head (the frozen backbone stays in eval mode)."""
        self.method.train(mode)
        return self

    def eval(self) -> PromptModel:
        return self.train(False)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """What an optimizer should update: the prompt (and an encoder's head)."""
        return [p for _, p in self.method.trainable_named_parameters()]

    def __repr__(self) -> str:
        counts = self.method.parameter_counts()
        return (
            f"PromptModel(method={self.name}, base={self.backbone.name!r} "
            f"({self.backbone.arch}), tasks={self.tasks}, "
            f"trainable={int(counts['params/trainable']):,})"
        )

    # -- inputs ----------------------------------------------------------------------------
    def _task(self, task: str | int | None) -> int:
        """The prompt-table row of ``task``: a task name, or a row index (a table trained on
        one dataset, ``method.n_tasks`` > 1, repeats its name on every row)."""
        n = len(self.tasks)
        if task is None:
            if n > 1:
                raise SptError(
                    f"this prompt serves {n} tasks ({', '.join(self.tasks)}): name one with "
                    "task= (a name, or a row index)"
                )
            return 0
        if isinstance(task, int) and not isinstance(task, bool):
            if not 0 <= task < n:
                raise SptError(f"task={task}: the prompt table has rows 0..{n - 1}")
            return task
        if task not in self.tasks:
            raise SptError(f"task={task!r} is not one of {', '.join(self.tasks)}")
        if self.tasks.count(task) > 1:
            raise SptError(f"{self.tasks.count(task)} rows are named {task!r}: give task=<row>")
        return self.tasks.index(task)

    def batch(self, inputs, labels=None, targets=None, task: str | int | None = None) -> dict:
        """``inputs`` (strings, dicts of template fields, or PIL images for CLIP) as a batch
        on the model's device; ``labels`` (names or indices) or ``targets`` (texts) make it a
        training batch for :meth:`loss`."""
        row = self._task(task)
        fmt = self._format(row)
        if labels is not None:
            labels = [self._label_index(fmt, y) for y in labels]
        if fmt.kind == "image":
            batch = self._image_batch(inputs, labels, row)
        else:
            batch = fmt.batch(
                inputs,
                self.backbone.tokenizer,
                self.backbone.arch,
                self.method.n_soft_tokens,
                task_index=row,
                labels=labels,
                targets=targets,
            )
        return {k: v.to(self.device) for k, v in batch.items()}

    def _format(self, row: int) -> InputFormat:
        return self.formats[row if len(self.formats) > 1 else 0]

    @staticmethod
    def _label_index(fmt: InputFormat, label) -> int:
        if not fmt.label_names:
            raise SptError(f"{fmt.name} is a {fmt.kind} task: it has no labels, give targets")
        if isinstance(label, str):
            if label not in fmt.label_names:
                raise SptError(f"label {label!r} is not one of {', '.join(fmt.label_names)}")
            return fmt.label_names.index(label)
        try:
            index = operator.index(label.item() if hasattr(label, "item") else label)
        except TypeError:
            index = None
        if index is None or isinstance(label, bool) or not 0 <= index < len(fmt.label_names):
            raise SptError(
                f"label {label!r}: give a label name or an index 0..{len(fmt.label_names) - 1}"
            )
        return index

    def _image_batch(self, images, labels, row: int) -> dict:
        from spt.data.images import ImageCollator

        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images or not all(hasattr(im, "convert") for im in images):
            raise SptError("a CLIP prompt classifies images: pass PIL images")
        labels = labels or [0] * len(images)
        collate = ImageCollator(self.backbone.image_processor, task_index=row)
        return collate([(im.convert("RGB"), y) for im, y in zip(images, labels, strict=True)])

    # -- training --------------------------------------------------------------------------
    def loss(self, batch: dict) -> torch.Tensor:
        """The method's training loss on a batch from :meth:`batch` (with labels or targets):
        what ``training_step`` computes, for a loop of your own."""
        if "labels" not in batch:
            raise SptError(
                "loss needs a training batch: model.batch(inputs, labels=...) (or targets=...)"
            )
        with warnings.catch_warnings():  # training_step logs; without a Trainer that is a no-op
            warnings.filterwarnings("ignore", message=r".*self\.log\(\)")
            return self.method.objective.training_step(self.method, batch)

    # -- inference -------------------------------------------------------------------------
    @torch.inference_mode()
    def classify(self, inputs, task: str | int | None = None, batch_size: int = 32) -> list[dict]:
        """``[{"task", "label", "scores"}]`` for each input: ``scores`` maps each label name
        to its class score (the head's logit on encoder-only backbones, the label words'
        log-probability otherwise), as ``spt.serve`` answers."""
        fmt = self._format(self._task(task))
        if self.method.objective.generative:
            raise SptError(
                f"this prompt was trained on {fmt.name}, a text-to-text task: use generate()"
            )
        items = _items(inputs)
        out = []
        was_training = self.method.training
        self.method.eval()
        try:
            for i in range(0, len(items), batch_size):
                scores = self.method(self.batch(items[i : i + batch_size], task=task))
                for row in scores.float().cpu().tolist():
                    values = row[: len(fmt.label_names)]
                    best = max(range(len(values)), key=values.__getitem__)
                    out.append(
                        {
                            "task": fmt.name,
                            "label": fmt.label_names[best],
                            "scores": dict(zip(fmt.label_names, values, strict=True)),
                        }
                    )
        finally:
            self.method.train(was_training)
        return out

    @torch.inference_mode()
    def generate(
        self,
        inputs,
        task: str | int | None = None,
        max_new_tokens: int | None = None,
        num_beams: int | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        batch_size: int = 8,
    ) -> list[str]:
        """Generated text for each input (the text before the first end-of-sequence).

        Greedy by default; ``num_beams`` > 1 for beam search; ``do_sample`` with
        ``temperature`` / ``top_p`` / ``top_k`` to sample (``seed`` makes it repeatable).
        ``max_new_tokens`` and ``num_beams`` default to the task's own (text-to-text runs) or
        32 and 1."""
        if not type(self.method).supports_generation:
            raise SptError(
                f"method={self.name} does not generate text (it scores label words): use classify()"
            )
        fmt = self._format(self._task(task))
        self.backbone.ops.check_generation(
            f"generate() with method={self.name} on {self.backbone.name}"
        )
        task_defaults = fmt.kind == "text-to-text"
        if max_new_tokens is None:
            max_new_tokens = fmt.max_new_tokens if task_defaults else 32
        if num_beams is None:
            num_beams = fmt.num_beams if task_defaults else 1
        check_sampling(max_new_tokens, num_beams, do_sample, temperature, top_p, top_k)
        tok = self.backbone.tokenizer
        items = _items(inputs)
        texts = []
        was_training = self.method.training
        self.method.eval()
        try:
            with _seeded(seed, self.device):
                for i in range(0, len(items), batch_size):
                    tokens = generate(
                        self.method,
                        self.batch(items[i : i + batch_size], task=task),
                        max_new_tokens=max_new_tokens,
                        num_beams=num_beams,
                        do_sample=do_sample,
                        temperature=temperature,
                        top_p=top_p,
                        top_k=top_k,
                    )
                    for row in tokens.tolist():
                        if tok.eos_token_id in row:
                            row = row[: row.index(tok.eos_token_id)]
                        texts.append(tok.decode(row, skip_special_tokens=True).strip())
        finally:
            self.method.train(was_training)
        return texts

    # -- the artifact ----------------------------------------------------------------------
    def artifact(self, **extra) -> tuple[dict[str, torch.Tensor], dict]:
        """The tensors and metadata :meth:`save` writes (``extra`` adds metadata keys: the run
        adds its dev metrics)."""
        m = self.method
        tensors = m.artifact_tensors()
        meta = {
            **m.artifact_meta(),
            "spt_version": __version__,
            "data": self.data,
            "template": self.formats[0].template if len(self.formats) == 1 else None,
            "served_parameters": m.served_parameters(tensors),
            "settings": {
                k: v
                for k, v in method_settings(m).items()
                if k not in _NOT_SETTINGS and k not in type(m).training_settings
            },
            "inputs": [f.to_meta() for f in self.formats],
            "backbone": self.backbone.source,
            "pooling": self.backbone.pooling,  # also without a source: load(model=) needs it
            **extra,
        }
        return tensors, meta

    def save(self, path: str | Path, **extra) -> Path:
        """Write ``<path>.safetensors`` and its ``.json``: everything :func:`load` needs."""
        tensors, meta = self.artifact(**extra)
        return save_artifact(path, tensors, meta)


def _items(inputs) -> list:
    if isinstance(inputs, (str, Mapping)) or hasattr(inputs, "convert"):
        return [inputs]  # one text, one dict of fields, one image
    items = list(inputs)
    if not items:
        raise SptError("no inputs given")
    return items


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device):
    """Sampling from ``seed`` without touching the caller's random state."""
    if seed is None:
        yield
        return
    devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.manual_seed(int(seed))
        yield


# -- building and loading ----------------------------------------------------------------


def _build(backbone: Backbone, name: str, formats: Sequence[InputFormat], data: str, **settings):
    info = methods.get(name)
    if backbone.arch not in info.archs:
        raise SptError(
            f"method={name} does not support {backbone.arch} backbones ({backbone.name}); it "
            f"supports {', '.join(info.archs)}"
        )
    params = inspect.signature(info.cls).parameters
    unknown = sorted(set(settings) - set(params) - {"backbone", "task"})
    if unknown:
        raise SptError(
            f"method={name} takes no setting(s) {unknown}: its settings are "
            f"{', '.join(p for p in params if p not in ('backbone', 'task'))}"
        )
    tok, arch = backbone.tokenizer, backbone.arch
    tasks = [f.task(tok, arch) for f in formats]
    task = tasks[0] if len(tasks) == 1 else MultiTaskInfo(data, tuple(tasks))
    method = info.cls(backbone=backbone, task=task, **settings)
    if len(formats) > 1 and len(method.task_names) != len(formats):
        raise SptError(f"{len(formats)} tasks need n_tasks={len(formats)}")
    method.to(next(backbone.model.parameters()).device)  # the prompt beside the model, as
    method.eval()  # PEFT places adapters; and in eval mode, as from_pretrained models come
    return PromptModel(method, formats, data)


def prompt_model(
    model,
    tokenizer=None,
    method: str = "prompt",
    labels: Sequence[str] | None = None,
    label_words: Sequence[str] | None = None,
    template: str | None = None,
    text_fields: Sequence[str] | None = None,
    task: str = "task",
    generation: bool = False,
    max_length: int = 256,
    soft_first: bool = False,
    arch: str | None = None,
    pooling: str = "mean",
    image_processor=None,
    **settings,
) -> PromptModel:
    """A method around a Hugging Face model and tokenizer you loaded (``get_peft_model``'s
    habit): the model is frozen, the prompt (and an encoder's head) is trainable. ``model``
    may also be a :class:`~spt.backbones.Backbone` from spt's loaders (``tokenizer=None``),
    which :func:`load` can then load again by itself.

    ``labels`` (and ``label_words``, default the labels) make a classification task over
    ``template`` (default ``"{soft}{text}"``; its ``{field}`` names are the inputs' fields);
    ``generation=True`` a text-to-text task over one field. ``soft_first`` puts the leading
    ``{soft}`` slot before the tokenizer's leading special token, where PEFT puts virtual
    tokens (``data.soft_first``). ``settings`` are the method's own
    (``length=20``, ``init="text"``, ``init_text=...``, ``hidden=...``; see its YAML).
    """
    if isinstance(model, Backbone):
        backbone = model
    elif tokenizer is None:
        raise SptError("prompt_model(model, tokenizer, ...): pass the model's tokenizer")
    else:
        backbone = from_model(
            model, tokenizer, arch=arch, pooling=pooling, image_processor=image_processor
        )
    if backbone.ops.modality == "images":
        if not labels:
            raise SptError("a CLIP prompt needs labels=[class names]")
        fmt = InputFormat(
            kind="image",
            name=task,
            label_names=tuple(labels),
            label_words=tuple(label_words or labels),
        )
    elif generation:
        template = template or "{soft}{text}"
        fields = tuple(text_fields or _fields(template))
        if len(fields) != 1:
            raise SptError(f"a text-to-text template reads one field; {template!r} reads {fields}")
        fmt = InputFormat(
            kind="text-to-text",
            name=task,
            template=template,
            text_fields=fields,
            max_length=max_length,
            max_target_length=max_length,
            soft_first=soft_first,
        )
    else:
        if not labels:
            raise SptError("a classification prompt needs labels=[...] (or generation=True)")
        template = template or "{soft}{text}"
        fmt = InputFormat(
            kind="classification",
            name=task,
            template=template,
            text_fields=tuple(text_fields or _fields(template)),
            label_names=tuple(labels),
            label_words=tuple(label_words or labels),
            max_length=max_length,
            soft_first=soft_first,
        )
        fmt = dataclasses.replace(
            fmt, label_reserve=fmt.default_label_reserve(backbone.tokenizer, backbone.arch)
        )
    settings.setdefault("init", _default_init(method, fmt))
    return _build(backbone, method, [fmt], task, **settings)


def _fields(template: str) -> tuple[str, ...]:
    names = [f for _, f, _, _ in string.Formatter().parse(template) if f and f != "soft"]
    return tuple(dict.fromkeys(names))


def _default_init(method: str, fmt: InputFormat) -> str:
    """The YAML's init where it needs no data; ``class_labels`` needs label words."""
    cls = methods.get(method).cls
    default = inspect.signature(cls).parameters["init"].default
    if default == "class_labels" and fmt.kind == "text-to-text":
        return "sampled_vocab"
    return default


def load(
    path: str | Path,
    model=None,
    tokenizer=None,
    device: str | torch.device | None = None,
    dtype: str | None = None,
    image_processor=None,
) -> PromptModel:
    """The prompt model an artifact describes: ``prompt.safetensors`` (+ its ``.json``), or a
    run directory holding one. The base model is loaded as the artifact says (spt's own
    loaders only), or pass ``model`` and ``tokenizer``; either way its fingerprint must be the
    one the prompt was trained on (``dtype``: float32 or bfloat16; it applies to the
    artifact's own loader, not to a ``model`` you pass). A CLIP ``model`` needs its
    ``image_processor``."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "prompt.safetensors"
    _, meta = load_artifact(path)
    missing = [k for k in ("method", "settings", "inputs") if k not in meta]
    if missing:
        raise SptError(
            f"{path} lacks {missing}: it was written by spt {meta.get('spt_version', '< 0.1')} "
            "or by a converter, before artifacts carried their settings; retrain, or rebuild "
            "it with spt.prompt_model(...) and load_prompt_file"
        )
    name = str(meta["method"])
    if name not in methods.names():
        raise SptError(f"{path}: method={name!r} is not one of {', '.join(methods.names())}")
    entries = meta["inputs"]
    if not isinstance(entries, list) or not entries:
        raise SptError(f"{path}: 'inputs' must be a non-empty list of input formats")
    formats = [InputFormat.from_meta(e, str(path)) for e in entries]
    if dtype not in (None, "float32", "bfloat16"):
        raise SptError(
            f"dtype={dtype!r}: load in float32 or bfloat16 (the base model's fingerprint is "
            "taken in bfloat16, which float16 weights do not round to)"
        )
    target = parse_device(device)
    source = meta.get("backbone")
    pooling = meta.get("pooling") or (source or {}).get("pooling", "mean")
    if model is not None:
        backbone = from_model(
            model,
            tokenizer,
            arch=(meta.get("base") or {}).get("arch"),
            pooling=pooling,
            image_processor=image_processor,
        )
    else:
        if not source:
            raise SptError(
                f"{path} does not say how to load its base model "
                f"{(meta.get('base') or {}).get('name')!r}: pass model= and tokenizer="
            )
        backbone = load_source(source, dtype=dtype)
    settings = meta["settings"]
    if not isinstance(settings, dict):
        raise SptError(f"{path}: 'settings' must be an object of the method's settings")
    started = sorted(k for k in settings if k.startswith("init"))
    if started:
        raise SptError(f"{path}: 'settings' holds {started}: the prompt loads from the file")
    if target is not None:
        backbone.model.to(target)
    return _build(
        backbone,
        name,
        formats,
        str(meta.get("data") or formats[0].name),
        **settings,
        init="file",
        init_file=str(path),
    )


def parse_device(device) -> torch.device | None:
    """``device`` as a torch.device, refused by name when this machine has no such device."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise SptError(f"device={device!r} is not a device: cpu, cuda, cuda:1 ({err})") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= count:
            raise SptError(f"device={device!r}: this machine has {count} CUDA device(s)")
    elif dev.type != "cpu":
        raise SptError(f"device={device!r}: spt.load takes cpu or cuda[:N]")
    return dev
