from pathlib import Path

import pytest

from elasticrec.config import ConfigError, ExperimentConfig, load_config, merge, parse_override

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_and_override():
    cfg = load_config(None, ["train.lr=5e-4", "model.max_len=50", "eval.ks=1,10"])
    assert cfg.train.lr == 5e-4 and cfg.model.max_len == 50 and cfg.eval.ks == [1, 10]


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="unknown key 'train.lrr'.*valid keys here:.*lr"):
        merge(ExperimentConfig(), parse_override("train.lrr=1"))


def test_wrong_type_and_bad_choice():
    with pytest.raises(ConfigError, match="model.max_len: expected an integer"):
        merge(ExperimentConfig(), parse_override("model.max_len=abc"))
    with pytest.raises(ConfigError, match="choose one of ce, sampled, bce"):
        merge(ExperimentConfig(), parse_override("train.loss=hinge"))


def test_unquoted_off_reads_as_the_choice(tmp_path):
    # YAML 1.1 reads an unquoted off as False; train.amp has "off" among its choices
    assert merge(ExperimentConfig(), parse_override("train.amp=off")).train.amp == "off"
    p = tmp_path / "amp.yaml"
    p.write_text("train:\n  amp: off\n")
    assert load_config(p).train.amp == "off"
    # a boolean for a string option without such a choice still fails, and says why
    with pytest.raises(ConfigError, match="train.loss: expected a string, got True.*quote"):
        merge(ExperimentConfig(), parse_override("train.loss=yes"))
    with pytest.raises(ConfigError, match="train.amp: expected a string, got True"):
        merge(ExperimentConfig(), parse_override("train.amp=on"))


def test_yaml_errors_name_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  lr: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml, line"):
        load_config(p)
    p.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match="bad.yaml.*epochz"):
        load_config(p)


def test_all_presets_load():
    presets = sorted((ROOT / "configs").glob("*/*.yaml"))
    assert presets, "no presets found"
    for p in presets:
        cfg = load_config(p)
        assert cfg.data.name == p.parent.name, p
        assert cfg.model.name == p.stem, p


def test_variant_presets_load_and_differ_from_their_base():
    """configs/<dataset>/<variant>/<model>.yaml: a named set of settings on top of the preset."""
    variants = sorted((ROOT / "configs").glob("*/*/*.yaml"))
    assert variants, "no variant presets found"
    for p in variants:
        cfg = load_config(p)
        assert cfg.data.name == p.parent.parent.name, p
        assert cfg.model.name == p.stem, p
        assert cfg != load_config(p.parent.parent / p.name), f"{p} changes nothing over its base"


def test_large_ml1m_presets_are_like_for_like():
    """The 8-layer ML-1M set compares models at equal depth, scores and temperature."""
    cfgs = {m: load_config(ROOT / "configs/ml-1m/large" / f"{m}.yaml") for m in ("elastic", "sasrec", "hstu")}
    assert {(c.model.n_layers, c.model.score, c.train.temperature, c.model.max_len) for c in cfgs.values()} \
        == {(8, "cosine", 0.05, 200)}
    assert cfgs["elastic"].model.elastic.output_gate and cfgs["sasrec"].model.sasrec.output_gate
    assert (cfgs["hstu"].model.d_model, cfgs["hstu"].model.n_heads) == (50, 2)  # HSTU-large's size


@pytest.mark.parametrize("dataset,variant,recorded", [
    ("ml-1m", "tuned", {"elastic": "cpu-2026-12-05/ml-1m-elastic-gate-cos-lr6e-3",
                        "sasrec": "cpu-2026-12-05/ml-1m-sasrec-gate-cos-lr4e-3-s43"}),
    ("sports", "tuned", {"elastic": "cpu-2026-12-06/sports-elastic-off-cos-lr5e-3-s43",
                         "sasrec": "cpu-2026-12-06/sports-sasrec-cos-lr3e-3-s43"}),
    ("sports", "sink", {"elastic": "cpu-2026-12-06/sports-elastic-off-cos-lr5e-3-s43",
                        "sasrec": "cpu-2026-12-06/sports-sasrec-null16-cos-lr3e-3-s43"}),
    ("sports", "best", {"elastic": "cpu-2026-12-07/sports-elastic-off-cos-lr5e-3-do0.3-s43",
                        "sasrec": "cpu-2026-12-07/sports-sasrec-null16-cos-lr3e-3-do0.3-s43"}),
    ("yelp", "best", {"elastic": "cpu-2026-12-06/yelp-elastic-off-cos-lr5e-3-do0.3-s43",
                      "sasrec": "cpu-2026-12-06/yelp-sasrec-null16-cos-lr3e-3-do0.3-s43"}),
    ("beauty", "best", {"elastic": "cpu-2026-12-07/beauty-elastic-items-cos-lr3e-3-d128-e30-lrcos",
                        "sasrec": "cpu-2026-12-07/beauty-sasrec-cos-lr3e-3-d128-e30-lrcos"}),
    ("ml-1m", "best", {"elastic": "cpu-2026-12-07/ml-1m-elastic-gate-cos-lr6e-3-lrcos",
                       "sasrec": "cpu-2026-12-07/ml-1m-sasrec-gate-cos-lr4e-3-lrcos"}),
])
def test_variant_presets_reproduce_the_recorded_runs(dataset, variant, recorded):
    """configs/<dataset>/<variant>/ resolves to the configs of the runs docs/results.md reports for
    it (the learning-rate grids, the sink), apart from the seed and the run's thread/progress
    settings."""
    import dataclasses

    for model, run in recorded.items():
        preset = load_config(ROOT / "configs" / dataset / variant / f"{model}.yaml")
        ran = load_config(ROOT / "docs/results" / run / "config.yaml")
        ran = dataclasses.replace(ran, train=dataclasses.replace(
            ran.train, seed=preset.train.seed, num_threads=preset.train.num_threads,
            progress=preset.train.progress))
        assert preset == ran, model
