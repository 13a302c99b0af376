"""Where the Hydra configs live, and what each config group offers."""

from __future__ import annotations

from pathlib import Path

# conf/ sits at the repository root, beside src/ (the design card's layout).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"


def group_options(group: str) -> list[str]:
    """Names of the options of a config group, e.g. ``group_options("activation")``.

    The config group is the registry: adding ``conf/activation/foo.yaml`` adds ``foo``.
    """
    folder = CONFIG_DIR / group
    if not folder.is_dir():
        raise FileNotFoundError(f"no config group {group!r} under {CONFIG_DIR}")
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_activation(name: str, **overrides):
    """Build one activation module from ``conf/activation/<name>.yaml`` (without Hydra's CLI).

    ``overrides`` replace config fields, e.g. ``load_activation("staf", tau=5)``.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    options = group_options("activation")
    if name not in options:
        raise ValueError(f"unknown activation {name!r}; choose one of: {', '.join(options)}")
    cfg = OmegaConf.load(CONFIG_DIR / "activation" / f"{name}.yaml")
    cfg = OmegaConf.merge(cfg, overrides)
    return instantiate(cfg)()
