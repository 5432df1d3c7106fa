"""main.py instantiates upstream's `lightning.strategy` and `lightning.logger` sections ({target, params})."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = "configs/example_training/toy/digits_cond.yaml"
TINY = ["model.params.network_config.params.model_channels=32", "model.params.network_config.params.num_res_blocks=1",
        "model.params.network_config.params.channel_mult=[1]", "data.params.batch_size=8",
        "lightning.callbacks.image_logger.params.batch_frequency=1000", "lightning.trainer.enable_progress_bar=False"]


def test_strategy_and_logger_sections_reach_the_trainer(tmp_path):
    extra = tmp_path / "extra_logs"
    args = ["--base", DIGITS, "-t", "-l", str(tmp_path / "logs"), "-n", "sections", "--max_steps", "2", *TINY,
            "lightning.strategy.target=pytorch_lightning.strategies.DDPStrategy",
            "lightning.strategy.params.process_group_backend=gloo",
            "lightning.logger.target=pytorch_lightning.loggers.CSVLogger",
            f"lightning.logger.params.save_dir={extra}", "lightning.logger.params.name=upstream_logger",
            "lightning.trainer.log_every_n_steps=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": "29533"}
    out = subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/1" in out.stdout + out.stderr  # DDPStrategy ran
    metrics = list(extra.glob("upstream_logger/version_*/metrics.csv"))
    assert metrics and metrics[0].read_text().count("\n") >= 2  # the configured logger received metrics


def test_strategy_given_twice_is_refused(tmp_path):
    args = ["--base", DIGITS, "-t", "-l", str(tmp_path), "--max_steps", "1", *TINY, "--strategy", "ddp",
            "lightning.strategy.target=pytorch_lightning.strategies.DDPStrategy"]
    out = subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode != 0 and "strategy is given twice" in out.stdout + out.stderr
