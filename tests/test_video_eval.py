"""The moving-digits benchmark pipeline: committed teacher -> 1-step DMD student -> metric table and GIFs.

Checks the pipeline end to end (the embedded default's config, the evaluation callback, the bench
script), not the final quality: 2 DMD iterations, 4 clips.
"""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = os.path.join(ROOT, "assets", "moving_digits_teacher")


def test_committed_teacher_loads_as_a_plain_engine_with_its_own_sampler():
    from sgm.evaluation.engines import load_engine, network_evaluations, sampler_steps

    engine = load_engine(TEACHER)
    assert sampler_steps(engine.sampler) == 25
    assert network_evaluations(engine, 25) == 50  # per-frame CFG doubles the evaluations


def test_the_default_run_scores_on_clips_of_its_teachers_own_data():
    from sgm.callbacks.video_eval import DEFAULT_CLIP_OPTIONS, clip_options
    from sgm.config import load_configs
    from sgm.util import instantiate_from_config

    config = load_configs([os.path.join(ROOT, "configs", "dmd", "moving_digits_dmd.yaml")])
    evaluation = instantiate_from_config(config.lightning.callbacks.video_eval)
    data = instantiate_from_config(config.data)
    options = clip_options(data, evaluation.given)
    assert options == {key: config.data.params.get(key, default) for key, default in DEFAULT_CLIP_OPTIONS.items()}
    assert options["max_speed"] == 1  # the teacher's data, not the callback's fallback (2)


def test_explicit_evaluation_options_win_over_the_data_and_defaults_fill_the_rest():
    from sgm.callbacks.video_eval import DEFAULT_CLIP_OPTIONS, clip_options
    from sgm.data.moving_digits import MovingDigitsDataModule

    data = MovingDigitsDataModule(max_speed=1, size=20, channels=3)
    assert clip_options(data, {"size": 16})["size"] == 16
    assert clip_options(data, {})["max_speed"] == 1
    assert clip_options(object(), {}) == DEFAULT_CLIP_OPTIONS  # a datamodule without clip_options


def test_few_step_sampler_counts_its_schedule():
    from sgm.evaluation.engines import sampler_steps
    from sgm.modules.distillation.sampler import FewStepSampler

    sampler = FewStepSampler(discretization_config={
        "target": "sgm.modules.diffusionmodules.discretizer.ExplicitDiscretization",
        "params": {"sigmas": [80.0, 10.0, 1.0]}})
    assert sampler_steps(sampler) == 3


@pytest.mark.slow
def test_quick_benchmark_writes_table_plot_and_gifs(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "scripts", "bench"))
    import distill_moving_digits as bench

    docs = tmp_path / "docs"
    rows = bench.main(["--quick", "--logdir", str(tmp_path / "logs"), "--docs", str(docs)])
    models = [r["model"] for r in rows]
    assert models[0] == "real held-out clips" and models[1].startswith("teacher") and models[2].startswith("trained")
    teacher, student = rows[1], rows[2]
    assert (teacher["steps"], teacher["nfe"]) == (1, 2) and (student["steps"], student["nfe"]) == (1, 1)
    for row in rows:
        assert row["n"] == 4 and 0.0 <= row["frame_accuracy"] <= 1.0 and row["frame_fd"] >= 0.0
    for name in ("moving_digits_distillation.md", "moving_digits_distillation.png",
                 "moving_digits_distillation.json", "moving_digits_real.gif", "moving_digits_teacher_1step.gif",
                 "moving_digits_trained_1step.gif"):
        assert (docs / name).is_file(), name
    assert json.loads((docs / "moving_digits_distillation.json").read_text())["rows"] == rows
    assert "| real held-out clips |" in (docs / "moving_digits_distillation.md").read_text()


def test_score_script_rates_a_model_alone_on_its_datas_clips(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "scripts", "bench"))
    import score_moving_digits as score

    out = tmp_path / "score"
    rows = score.main([TEACHER, "--clips", "2", "--steps", "1", "--max_speed", "1", "--out", str(out)])
    assert [r["model"] for r in rows] == ["real held-out clips", TEACHER]
    assert rows[1]["steps"] == 1 and rows[1]["nfe"] == 2 and rows[1]["n"] == 2
    for name in ("moving_digits_score.md", "moving_digits_score.json", "real.gif", "model_1step.gif"):
        assert (out / name).is_file(), name


def test_score_script_reads_held_out_options_from_a_run_directory(tmp_path):
    from sgm.evaluation.engines import run_datamodule  # what the score script and the chain bench read

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "x-project.yaml").write_text(
        "data:\n  target: sgm.data.moving_digits.MovingDigitsDataModule\n  params: {max_speed: 1, size: 20}\n")
    data = run_datamodule(str(tmp_path))
    assert data.clip_options()["max_speed"] == 1 and data.clip_options()["size"] == 20
    assert run_datamodule(TEACHER) is None  # an export directory: no data config


def test_gan_term_overlay_adds_the_term_and_keeps_the_in_memory_data():
    from sgm.config import load_configs

    base = load_configs([os.path.join(ROOT, "configs", "dmd", "moving_digits_dmd.yaml")])
    config = load_configs([os.path.join(ROOT, "configs", "dmd", f) for f in
                           ("moving_digits_dmd.yaml", "moving_digits_gan_term.yaml")])
    assert config.model.params.terms.gan.target == "sgm.modules.distillation.terms.GANTerm"
    assert config.data == base.data  # real clips: the run's own data module
