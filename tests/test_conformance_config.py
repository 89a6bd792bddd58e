"""MethodConfig: the section 11 fields, ``resolve`` (no ``auto`` left) and ``--set`` parsing (issue 12)."""

import pytest

from tokbench.config import MethodConfig, parse_set
from tokbench.errors import ConfigError


def test_new_fields_defaults_and_one_line_errors():
    config = MethodConfig()
    assert (config.window_queries, config.prune_block, config.track_features, config.sdpa_flops) == (
        "all", 0, "patch_embed", "handle")
    for field, bad in [("window_queries", "some"), ("track_features", "keys"), ("sdpa_flops", "fused")]:
        with pytest.raises(ConfigError, match=f"^{field} must be one of") as err:
            MethodConfig(**{field: bad})
        assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "options,dense,expected",
    [
        ({}, True, ("on", "full", "computed")),
        ({}, False, ("off", "pattern", "nearest_kept")),
        ({"block0_columns": "keep"}, False, ("off", "pattern", "computed")),
        ({"block0_columns": "keep", "cut": "input"}, False, ("off", "pattern", "nearest_kept")),
        ({"kv_reuse": "on"}, False, ("on", "pattern", "computed")),
        ({"kv_reuse": "off"}, True, ("off", "full", "nearest_kept")),
        ({"policy": "eventful"}, False, ("on", "pattern", "computed")),
        ({"reset_mode": "full", "pruned_score_fill": "previous"}, False, ("off", "full", "previous")),
    ],
)
def test_resolve_replaces_every_auto_by_what_runs(options, dense, expected):
    resolved = MethodConfig(**options).resolve(dense)
    assert (resolved.kv_reuse, resolved.reset_mode, resolved.pruned_score_fill) == expected
    assert "auto" not in resolved.as_dict().values()
    assert resolved.resolve(dense) == resolved  # idempotent


def test_resolve_refuses_a_computed_fill_without_computed_scores():
    with pytest.raises(ConfigError, match="pruned_score_fill=computed"):
        MethodConfig(pruned_score_fill="computed").resolve(dense=False)
    assert MethodConfig.from_preset("robust").resolve(dense=False).pruned_score_fill == "computed"  # columns kept
    assert MethodConfig(policy="grid", pruned_score_fill="computed").resolve(dense=False).policy == "grid"


def test_parse_set_types_aliases_and_values():
    overrides = parse_set([
        "track_radius=2", "fg_sample_ratio=0.5", "bg_ratio=0.25", "sampling_order=rank_raster",
        "track_similarity=cosine", "track_min_gain_pct=5", "reset_every=4", "kv_reuse=on", "prune_block=1",
        "window_queries=kept", "track_features=block0_keys", "sdpa_flops=explicit", "keep_ratio = 0.3",
    ])
    assert overrides == {
        "window": 2, "fg_ratio": 0.5, "bg_ratio": 0.25, "order": "rank", "similarity": "cosine",
        "min_gain_pct": 5.0, "reset_every": 4, "kv_reuse": "on", "prune_block": 1, "window_queries": "kept",
        "track_features": "block0_keys", "sdpa_flops": "explicit", "keep_ratio": 0.3,
    }
    assert isinstance(overrides["window"], int) and isinstance(overrides["min_gain_pct"], float)
    assert parse_set(["sampling_order=gilbert"]) == {"order": "gilbert"}
    assert parse_set(["track_min_gain_pct=none"]) == {"min_gain_pct": None}
    assert parse_set(["window=1", "track_radius=3"]) == {"window": 3}  # later items win
    config = MethodConfig.from_preset("reference", **parse_set(["track_radius=2", "sampling_order=gilbert"]))
    assert (config.window, config.order, config.tie_break) == (2, "gilbert", "unstable")
    assert parse_set([]) == {}


@pytest.mark.parametrize(
    "item,message",
    [
        ("track_radius", "KEY=VALUE"),
        ("=3", "KEY=VALUE"),
        ("track_radus=2", "did you mean 'track_radius'"),
        ("keep_ratoi=0.2", "did you mean 'keep_ratio'"),
        ("reset_every=often", "expected an integer"),
        ("keep_ratio=a third", "expected a number"),
        ("preset=robust", "--preset"),
    ],
)
def test_parse_set_errors_are_one_line_config_errors(item, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_set([item])
    assert "\n" not in str(err.value)


def test_bad_set_values_fail_when_the_config_is_built():
    with pytest.raises(ConfigError, match="window_queries must be one of"):
        MethodConfig.from_preset("default", **parse_set(["window_queries=none"]))
