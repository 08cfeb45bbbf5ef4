"""One name everywhere (issue 19): the YAML stem, the module, the registry and the artifact's
``method`` field agree for every method, and what the registry declares is what the classes
do. Every contract test iterates the registry, so a new method cannot escape them."""

from __future__ import annotations

import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf

from spt import CONF_DIR, methods
from spt.backbones import ARCHS
from spt.errors import SptError
from tests.recorded import equivalence


def test_every_config_is_a_registered_method_and_back():
    stems = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))
    assert sorted(methods.registry()) == stems


@pytest.mark.parametrize("name", sorted(methods.registry()))
def test_config_module_class_and_registry_agree(name):
    info = methods.get(name)
    cfg = OmegaConf.load(CONF_DIR / "method" / f"{name}.yaml")
    assert get_class(cfg._target_) is info.cls
    assert info.cls.__module__ == f"spt.methods.{name}"
    assert info.cls.method_name == name
    assert info.prompt in methods.PROMPT_KINDS
    assert set(info.archs) <= set(ARCHS)
    assert list(cfg.supports) == list(info.archs), "the YAML's supports and the class disagree"
    assert methods.of_class(info.cls) is info
    assert methods.name_of_target(cfg._target_) == name  # what spt.compare reads


@pytest.mark.parametrize("case", sorted(equivalence.cases()))
def test_the_artifact_names_the_method_it_was_trained_by(case):
    """The recorded runs' artifacts (tests/golden) carry the registry name as ``method``."""
    overrides = equivalence.cases()[case]
    method = next(o.split("=", 1)[1] for o in overrides if o.startswith("method="))
    assert equivalence.load(case)[1]["meta"]["method"] == method


def test_every_method_and_supported_arch_is_an_equivalence_case():
    cases = equivalence.cases()
    for name, info in methods.registry().items():
        for arch in info.archs:
            assert any(c.startswith(f"{name}-{equivalence.TINY[arch]}-") for c in cases), (
                name,
                arch,
            )


def test_unknown_names_are_refused_with_the_list():
    with pytest.raises(SptError, match=f"choose one of {', '.join(sorted(methods.registry()))}"):
        methods.get("lora")
    with pytest.raises(SptError, match="not a method under spt.methods"):
        methods.of_class(int)


# Lightning hooks and the method interface every method relies on: each must resolve to the
# method itself or to the one mixin, never to LightningModule's default or a third class.
HOOKS = (
    "training_step",
    "validation_step",
    "on_validation_epoch_end",
    "predict_step",
    "configure_optimizers",
    "state_dict",
    "load_state_dict",
    "on_save_checkpoint",
    "on_load_checkpoint",
    "on_train_batch_start",
    "on_fit_start",
    "train",
    "class_scores",
    "kv_prefix",
    "query_mask",
)
OWN = ("forward", "embed", "param_groups", "artifact_tensors", "artifact_meta", "n_soft_tokens")


@pytest.mark.parametrize("name", sorted(methods.registry()))
def test_a_method_is_one_mixin_and_components(name):
    import lightning as L

    from spt.core.mixin import FrozenBackboneMixin

    cls = methods.get(name).cls
    assert cls.__bases__ == (FrozenBackboneMixin, L.LightningModule), cls.__mro__
    for hook in HOOKS:
        owner = next(c for c in cls.__mro__ if hook in vars(c))
        assert owner in (cls, FrozenBackboneMixin), f"{name}.{hook} resolves to {owner}"
    own = [o for o in OWN if o != "embed" or methods.get(name).prompt != "clip"]  # CLIP: no input
    missing = [o for o in own if o not in vars(cls)]
    assert missing == [], f"{name} lacks its own {missing}"
