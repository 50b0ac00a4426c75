"""The project's config loader (frcnn_pipeline.framework.config_loader)."""

import warnings
from pathlib import Path

from frcnn_pipeline.framework.config_loader import LOADER_ARGS, ProjectConfigLoader

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_the_loader_reads_conf_without_omegaconf_s_deprecation_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader = ProjectConfigLoader(conf_source=str(CONF), env="base", **LOADER_ARGS)
        assert loader["parameters"]["train"]
    assert not [w for w in caught if "register_new_resolver" in str(w.message)]
    assert not [f for f in warnings.filters if f[1] is not None and "resolver" in f[1].pattern]
