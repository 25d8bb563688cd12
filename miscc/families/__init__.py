"""Generator families, chosen by the config key ``MODEL.NAME``: each is a file of networks in
``models/`` and a module here with its update (see ``base.Family``)."""
from __future__ import annotations

from ..core.config import ConfigError
from .base import Family, Update, noise_for
from .dfgan import DFGAN, DFGANv1
from .gan_int_cls import GanIntCls
from .ssagan import SSAGAN

__all__ = ['FAMILIES', 'Family', 'Update', 'family_of', 'build_networks', 'noise_for',
           'require_precomputed_embeddings']

FAMILIES = {family.name: family for family in (SSAGAN(), DFGAN(), DFGANv1(), GanIntCls())}


def family_of(cfg) -> Family:
    """The family ``cfg.MODEL.NAME`` names; ConfigError listing the known ones otherwise."""
    name = cfg.MODEL.NAME
    if name not in FAMILIES:
        raise ConfigError(f"MODEL.NAME must be one of {', '.join(map(repr, FAMILIES))}, got {name!r}")
    return FAMILIES[name]


def build_networks(cfg) -> dict:
    """Freshly initialised networks of the config's family, on the CPU (``{'netG': ..., ...}``)."""
    return family_of(cfg).build_networks(cfg)


def require_precomputed_embeddings(cfg, family: Family) -> None:
    """ConfigError unless ``family`` can condition on DATA.HD5_FILE's embeddings alone."""
    if not family.precomputed_embeddings:
        able = ', '.join(repr(n) for n, f in FAMILIES.items() if f.precomputed_embeddings)
        raise ConfigError(f"DATA.HD5_FILE='{cfg.DATA.HD5_FILE}' gives precomputed sentence embeddings only, but "
                          f"MODEL.NAME='{family.name}' needs the DAMSM encoders' word features: use MODEL.NAME "
                          f"{able}, or set DATA.HD5_FILE='' for the data set in DATA_DIR")
