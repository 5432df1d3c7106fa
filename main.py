"""Training entry point (upstream-compatible flags):

    python main.py --base configs/example_training/toy/digits_cond.yaml -t
    python main.py --base cfg.yaml --dry-run              # build, print parameter counts, exit
    python main.py -r logs/<run dir>                       # resume from its last checkpoint
    python main.py --base cfg.yaml lightning.trainer.max_steps=100   # dot-list overrides
    python main.py --base cfg.yaml --accumulate_grad_batches 2       # any pl.Trainer argument as --<name>

Configs given to --base merge left to right, then dot-list overrides. The run directory
`<logdir>/<timestamp>_<name>/` holds `configs/` (the resolved config), `checkpoints/`,
`images/` (sample grids, GIFs) and the logs (CSV; TensorBoard with --tensorboard; wandb with --wandb).
"""
from __future__ import annotations

import argparse
import datetime
import glob
import os
import sys

import sgm  # noqa: F401  (torchvision shim before Lightning is imported)
from sgm.callbacks.image_logger import ImageLogger  # noqa: F401  (configs name `main.ImageLogger`)
from sgm.callbacks.setup import SetupCallback  # noqa: F401  (and `main.SetupCallback`)
from sgm.trainer_flags import add_trainer_flags, check_trainer_value, given_trainer_flags, trainer_parameters

MODEL_SECTIONS = ("model", "data")


class CliError(SystemExit):
    """A user error: printed as one line, exit status 2."""

    def __init__(self, message: str):
        print(f"main.py: error: {message}", file=sys.stderr)
        super().__init__(2)


def str2bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected, got {value!r}")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    flag = dict(type=str2bool, nargs="?", const=True)
    p.add_argument("-n", "--name", type=str, default="", help="run-name postfix")
    p.add_argument("--no_date", default=False, help="no timestamp in the run name", **flag)
    p.add_argument("-r", "--resume", type=str, default="", help="run dir or checkpoint to resume from")
    p.add_argument("-b", "--base", nargs="*", default=[], metavar="base_config.yaml",
                   help="config files, merged left to right")
    p.add_argument("-t", "--train", default=True, help="train (default); -t False only builds", **flag)
    p.add_argument("--no-test", dest="no_test", default=False, help="skip testing after fit", **flag)
    # Settings in CLI_SETTINGS default to None here: the run's saved value on -r, else CLI_SETTINGS.
    p.add_argument("-d", "--debug", default=None, help="no crash checkpoint; wandb offline", **flag)
    p.add_argument("-s", "--seed", type=int, default=None, help="seed of the run (default 23)")
    p.add_argument("-f", "--postfix", type=str, default="", help="appended to the run name")
    p.add_argument("-p", "--project", "--projectname", dest="project", type=str, default=None,
                   help="project the run is filed under in wandb (default sgm-dmd); --projectname: upstream's name")
    p.add_argument("-l", "--logdir", type=str, default="logs", help="root of run directories")
    p.add_argument("--scale_lr", default=None, help="LR x accumulation x devices x batch size", **flag)
    p.add_argument("--legacy_naming", default=False, help="run name from the config file name only", **flag)
    p.add_argument("--no_base_name", default=False, help="no config-derived part in the run name", **flag)
    p.add_argument("--enable_tf32", default=None, help="allow TF32 matmuls on CUDA", **flag)
    p.add_argument("--wandb", default=None, help="also log to wandb (offline unless WANDB_MODE says)", **flag)
    p.add_argument("--tensorboard", default=None, help="also log to TensorBoard", **flag)
    p.add_argument("--resume_from_checkpoint", type=str, default=None, help="checkpoint for trainer.fit")
    p.add_argument("--dry-run", dest="dry_run", default=False,
                   help="build everything on the meta device, print parameter counts, exit", **flag)
    add_trainer_flags(p)  # --accelerator, --devices, --max_steps, --accumulate_grad_batches, ...
    return p


# Command-line settings that are not config keys, with their defaults; saved in the run directory
# (configs/<time>-cli.yaml) and restored by -r unless given again. Trainer flags (sgm.trainer_flags) are
# saved in the lightning config instead.
CLI_SETTINGS = {"seed": 23, "debug": False, "project": "sgm-dmd", "scale_lr": False, "enable_tf32": False,
                "wandb": False, "tensorboard": False}


def split_overrides(argv: list[str], parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """(arguments for argparse, `key.path=value` overrides). Overrides are taken out first: otherwise
    `--base` (nargs *) or a bare boolean flag such as `--wandb` would swallow the `key=value` after it
    (an upstream trap). The value of an option that takes one (`-r runs/x/crash-step=36.ckpt`) and a
    path that exists are never overrides."""
    takes_value = {s for a in parser._actions if a.nargs is None and a.option_strings for s in a.option_strings}
    args, overrides = [], []
    for i, arg in enumerate(argv):
        is_value = i > 0 and argv[i - 1] in takes_value
        if "=" in arg and not arg.startswith("-") and not arg.endswith((".yaml", ".yml")) \
                and not is_value and not os.path.exists(arg):
            overrides.append(arg)
        else:
            args.append(arg)
    return args, overrides


def check_overrides(args: list[str]) -> list[str]:
    """Arguments argparse did not take must be `key.path=value` overrides."""
    bad = [a for a in args if "=" not in a or a.startswith("-")]
    if bad:
        raise CliError(f"unrecognised arguments: {' '.join(bad)} (overrides are written key.path=value)")
    return args


def resolve_resume(resume: str) -> tuple[str, str, list[str], dict]:
    """-r DIR or -r DIR/checkpoints/X.ckpt -> (logdir, checkpoint, saved configs, saved CLI settings).

    For a directory: the readable checkpoint with the highest global step, with a one-line note when
    a newer-looking file could not be read."""
    from sgm.io.resume import checkpoint_step, newest_loadable_checkpoint, saved_cli_settings, saved_configs

    if not os.path.exists(resume):
        raise CliError(f"cannot resume: {resume} does not exist")
    if os.path.isfile(resume):
        logdir = os.path.dirname(os.path.dirname(os.path.abspath(resume)))
        ckpt = resume
        checkpoint_step(ckpt)  # one line naming the file if it cannot be read
    else:
        logdir = resume.rstrip("/")
        point = newest_loadable_checkpoint(os.path.join(logdir, "checkpoints"))
        for skipped in point.skipped:
            print(f"main.py: note: passing over {skipped}", file=sys.stderr)
        if point.skipped:
            print(f"main.py: note: resuming from {os.path.basename(point.path)} (step {point.global_step})",
                  file=sys.stderr)
        ckpt = point.path
    cfgdir = os.path.join(logdir, "configs")
    saved = saved_configs(cfgdir)
    if not saved:
        raise CliError(f"cannot resume: no saved configs in {cfgdir}")
    return logdir, ckpt, saved, saved_cli_settings(cfgdir)


def apply_cli_settings(opt: argparse.Namespace, saved: dict) -> dict:
    """Fill unset CLI_SETTINGS from the run's saved ones, then the defaults -> the effective settings."""
    for key, fallback in CLI_SETTINGS.items():
        if getattr(opt, key) is None:
            setattr(opt, key, saved.get(key, fallback))
    return {key: getattr(opt, key) for key in CLI_SETTINGS}


def drop_unappliable_overrides(dotlist: list[str]) -> list[str]:
    """On -r: overrides of learning rates and optimisers are reported and left out of the saved config,
    because the optimiser states in the checkpoint win."""
    from sgm.io.resume import overrides_not_applied_on_resume

    ignored = overrides_not_applied_on_resume(dotlist)
    if ignored:
        print(f"main.py: note: not applied on resume (the checkpoint's optimiser states keep their learning "
              f"rates and settings), left out of the saved config: {' '.join(ignored)}", file=sys.stderr)
    return [item for item in dotlist if item not in ignored]


RUN_TIMESTAMP_ENV = "SGM_RUN_TIMESTAMP"


def run_timestamp() -> str:
    """The run's timestamp, decided once by the launching process: Lightning's DDP launcher re-runs
    main.py for ranks 1.. with LOCAL_RANK set and our environment, so every rank names the same run dir."""
    inherited = os.environ.get(RUN_TIMESTAMP_ENV)
    if inherited and os.environ.get("LOCAL_RANK", "0") != "0":
        return inherited
    now = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    os.environ[RUN_TIMESTAMP_ENV] = now
    return now


def run_name(opt: argparse.Namespace, now: str) -> str:
    if opt.name:
        name = f"_{opt.name}"
    elif opt.base and not opt.no_base_name:
        stem = os.path.splitext(os.path.basename(opt.base[0]))[0]
        if not opt.legacy_naming and "configs" in opt.base[0].split(os.sep):
            parts = os.path.normpath(opt.base[0]).split(os.sep)
            stem = "-".join(parts[parts.index("configs") + 1:])
            stem = os.path.splitext(stem)[0]
        name = f"_{stem}"
    else:
        name = ""
    return (name.lstrip("_") if opt.no_date else now + name) + opt.postfix


def load_config(paths: list[str], dotlist: list[str]):
    from sgm.config import load_configs

    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise CliError(f"config file not found: {missing[0]}")
    if not paths:
        raise CliError("no config given: use --base path/to/config.yaml (or -r to resume)")
    return load_configs(paths, dotlist)


def trainer_options(lightning_config) -> dict:
    """lightning.trainer (with the Trainer flags in it); GPU device lists fall back to the CPU when none is present."""
    import torch
    from omegaconf import OmegaConf

    options = OmegaConf.to_container(lightning_config.get("trainer", OmegaConf.create()), resolve=True)
    devices = options.get("devices")
    if isinstance(devices, str) and "," in devices:  # upstream writes GPU ids as "0," or "0,1"
        options["devices"] = [int(d) for d in devices.split(",") if d.strip()]
    elif isinstance(devices, str) and devices.isdigit():
        options["devices"] = int(devices)
    accelerator = options.get("accelerator", "auto")
    if accelerator in ("auto", "gpu", "cuda") and not torch.cuda.is_available():
        if isinstance(options.get("devices"), list) or accelerator != "auto":
            print("main.py: no CUDA GPU found: training on the CPU with 1 device")
            options["devices"] = 1
        options["accelerator"] = "cpu"
    options.setdefault("accelerator", "auto")
    return options


def summarize(model) -> str:
    """Parameter counts per part of the engine (embedders listed one by one)."""
    from sgm.util import count_params

    lines = [f"{type(model).__name__}: {count_params(model):,} parameters "
             f"({count_params(model, trainable_only=True):,} trainable)"]
    for name, child in model.named_children():
        lines.append(f"  {name:<22} {type(child).__name__:<34} {count_params(child):>15,}"
                     f"  trainable {count_params(child, trainable_only=True):,}")
        if name == "conditioner":
            for i, embedder in enumerate(child.embedders):
                key = embedder.input_key or ",".join(getattr(embedder, "input_keys", None) or [])
                lines.append(f"    embedders.{i:<13} {type(embedder).__name__:<34} {count_params(embedder):>15,}"
                             f"  input '{key}'")
    return "\n".join(lines)


def build_model(config, learning_rate: float | None, meta: bool = False):
    """Instantiate `config.model` in place (so errors name keys like model.params.network_config)."""
    import torch
    from omegaconf import OmegaConf

    from sgm.util import instantiate_from_config

    params = config.model.get("params", None) or {}
    extra = {}
    if learning_rate is not None:
        if "learning_rate" in params:
            raise CliError("give the learning rate once: model.base_learning_rate or model.params.learning_rate")
        extra["learning_rate"] = learning_rate
    if not meta:
        return instantiate_from_config(config.model, **extra)
    if params.get("ckpt_path"):
        OmegaConf.update(config, "model.params.ckpt_path", None)  # nothing to load into meta tensors
    with torch.device("meta"):
        return instantiate_from_config(config.model, **extra)


def batch_size_of(data_config) -> int:
    params = data_config.get("params", {}) or {}
    if "batch_size" in params:
        return int(params["batch_size"])
    return int(params.get("train", {}).get("loader", {}).get("batch_size", 1))


def main(argv: list[str] | None = None) -> int:
    from omegaconf import OmegaConf

    now = run_timestamp()
    sys.path.append(os.getcwd())
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = get_parser()
    args, overrides = split_overrides(argv, parser)
    opt, unknown = parser.parse_known_args(args)
    dotlist = check_overrides(unknown + overrides)
    try:
        trainer_flags = given_trainer_flags(opt)
    except ValueError as error:
        raise CliError(str(error))
    if opt.name and opt.resume:
        raise CliError("-n/--name and -r/--resume cannot be combined")

    resume_ckpt = opt.resume_from_checkpoint
    saved_settings: dict = {}
    if opt.resume:
        logdir, resume_ckpt, saved, saved_settings = resolve_resume(opt.resume)
        opt.base = saved + opt.base
        dotlist = drop_unappliable_overrides(dotlist)
        nowname = os.path.basename(logdir)
    else:
        nowname = run_name(opt, now)
        logdir = os.path.join(opt.logdir, nowname)
    cli_settings = apply_cli_settings(opt, saved_settings)
    config = load_config(opt.base, dotlist)
    lightning_config = config.pop("lightning", OmegaConf.create())
    for key, value in trainer_flags.items():  # saved with the lightning config, so -r trains toward the same target
        OmegaConf.update(lightning_config, f"trainer.{key}", value, force_add=True)
    if "model" not in config:
        raise CliError("config has no 'model' section")

    import pytorch_lightning as pl

    pl.seed_everything(opt.seed, workers=True)
    base_lr = config.model.get("base_learning_rate", None)

    if opt.dry_run:
        model = build_model(config, base_lr, meta=True)
        print(summarize(model))
        if "data" in config:
            from sgm.util import get_obj_from_str

            try:
                get_obj_from_str(config.data.target)
                print(f"data: {config.data.target}")
            except Exception as error:  # report, the model part was built
                print(f"data: cannot build: {error}")
                return 1
        return 0

    import torch

    # Subnormal floats make CPU kernels many times slower (seen in the first steps of training,
    # from zero-initialised output layers); flushing them to zero costs no accuracy that matters.
    torch.set_flush_denormal(True)
    if opt.enable_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    trainer_opts = trainer_options(lightning_config)
    ckptdir, cfgdir = os.path.join(logdir, "checkpoints"), os.path.join(logdir, "configs")
    if "data" not in config:
        raise CliError("config has no 'data' section (needed for training)")
    if base_lr is not None and opt.scale_lr:
        devices = trainer_opts.get("devices", 1)
        n_devices = len(devices) if isinstance(devices, list) else int(devices) if str(devices).isdigit() else 1
        accumulate = trainer_opts.get("accumulate_grad_batches", 1) or 1
        base_lr = accumulate * n_devices * batch_size_of(config.data) * base_lr
        print(f"learning rate scaled to {base_lr:.2e}")
    check_run_inputs(config, trainer_opts, logdir, base_lr)
    from sgm.util import instantiate_from_config

    data = instantiate_from_config(config.data)  # data typos fail before the model and teacher are built
    model = build_model(config, base_lr)
    if opt.train and not isinstance(model, pl.LightningModule):
        raise CliError(f"model.target {config.model.target} builds a {type(model).__name__}, which is not a "
                       "LightningModule and cannot be trained (a KL autoencoder trains as "
                       "sgm.models.autoencoder_training.TrainableAutoencodingEngine)")

    if "plugins" not in trainer_opts:  # checkpoints written atomically beside their target, never with NaN
        from sgm.callbacks.checkpointing import AtomicCheckpointIO

        trainer_opts["plugins"] = [AtomicCheckpointIO()]
    if lightning_config.get("strategy") is not None:  # upstream's lightning.strategy: {target, params}
        if "strategy" in trainer_opts:
            raise CliError("the strategy is given twice: lightning.strategy and lightning.trainer.strategy / --strategy")
        trainer_opts["strategy"] = instantiate_from_config(lightning_config.strategy)
    loggers = make_loggers(opt, logdir, nowname, lightning_config)
    if lightning_config.get("logger") is not None:  # upstream's lightning.logger: {target, params}, beside ours
        loggers.append(instantiate_from_config(lightning_config.logger))
    trainer = pl.Trainer(
        **trainer_opts,
        logger=loggers,
        callbacks=make_callbacks(opt, now, logdir, ckptdir, cfgdir, config, lightning_config, cli_settings),
        default_root_dir=logdir,  # the run directory, for callbacks (sgm.callbacks.setup.run_dir)
    )
    if opt.train:
        trainer.fit(model, data, ckpt_path=resume_ckpt)
        if trainer.num_training_batches == 0:  # Lightning ends such a run at once, with status 0
            raise CliError(f"the training data gives no batch: data.params.batch_size "
                           f"{batch_size_of(config.data)} is larger than the training set on each device")
    print(f"run directory: {logdir}")
    return 0


def check_run_inputs(config, trainer_opts: dict, logdir: str, base_lr) -> None:
    """Inputs that would otherwise fail late or with a traceback, each reported in one line."""
    import difflib
    import inspect

    import pytorch_lightning as pl

    if base_lr is not None and (isinstance(base_lr, bool) or not isinstance(base_lr, (int, float))):
        raise CliError(f"model.base_learning_rate must be a number, got {base_lr!r}")
    if base_lr is not None and not base_lr > 0:
        raise CliError(f"model.base_learning_rate must be > 0, got {base_lr}")
    try:
        batch_size = batch_size_of(config.data)
    except (TypeError, ValueError):
        raise CliError(f"data.params.batch_size must be an integer, got {config.data.params.get('batch_size')!r}")
    if batch_size < 1:
        raise CliError(f"data.params.batch_size must be >= 1, got {batch_size}")
    known = inspect.signature(pl.Trainer.__init__).parameters
    checked = trainer_parameters()  # all but what main.py builds itself (logger, callbacks, ...)
    for key, value in trainer_opts.items():
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise CliError(f"lightning.trainer.{key} is not a Trainer argument{hint}")
        if key in checked:
            try:
                check_trainer_value(f"lightning.trainer.{key}", value, known[key].annotation)
            except ValueError as error:
                raise CliError(str(error))
    folder = os.path.abspath(logdir)
    while folder != os.path.dirname(folder):
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise CliError(f"cannot create the run directory {logdir}: {folder} is a file")
        folder = os.path.dirname(folder)


def make_loggers(opt, logdir: str, nowname: str, lightning_config) -> list:
    from pytorch_lightning.loggers import CSVLogger

    loggers = [CSVLogger(save_dir=logdir, name="csv")]
    if opt.tensorboard:
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=logdir, name="tensorboard"))
    if opt.wandb:
        from pytorch_lightning.loggers import WandbLogger

        os.environ.setdefault("WANDB_MODE", "offline")
        os.makedirs(logdir, exist_ok=True)
        loggers.append(WandbLogger(name=nowname, save_dir=logdir, project=opt.project, id=nowname,
                                   offline=os.environ["WANDB_MODE"] == "offline"))
    return loggers


def make_callbacks(opt, now, logdir, ckptdir, cfgdir, config, lightning_config, cli_settings: dict) -> list:
    from omegaconf import OmegaConf

    from sgm.util import instantiate_from_config

    checkpoint = {
        "target": "pytorch_lightning.callbacks.ModelCheckpoint",
        "params": {"dirpath": ckptdir, "filename": "{epoch:06}-{step:08}", "verbose": True, "save_last": True,
                   "enable_version_counter": False},  # a moved run dir keeps writing last.ckpt, not last-v1.ckpt
    }
    checkpoint = OmegaConf.merge(checkpoint, lightning_config.get("modelcheckpoint", OmegaConf.create()))
    callbacks_config = OmegaConf.merge(
        {
            "setup_callback": {"target": "sgm.callbacks.setup.SetupCallback", "params": {
                "resume": bool(opt.resume), "now": now, "logdir": logdir, "ckptdir": ckptdir, "cfgdir": cfgdir,
                "debug": opt.debug}},
            "learning_rate_logger": {"target": "pytorch_lightning.callbacks.LearningRateMonitor",
                                     "params": {"logging_interval": "step"}},
            "step_seed": {"target": "sgm.callbacks.randomness.StepSeed", "params": {"seed": opt.seed}},
        },
        lightning_config.get("callbacks", OmegaConf.create()),
    )
    callbacks = []
    for name, cfg in callbacks_config.items():
        if cfg is None:  # switched off with `lightning.callbacks.<name>=null`
            continue
        if name == "metrics_over_trainsteps_checkpoint":
            cfg = OmegaConf.merge({"target": "pytorch_lightning.callbacks.ModelCheckpoint", "params": {
                "dirpath": os.path.join(ckptdir, "trainstep_checkpoints"), "filename": "{epoch:06}-{step:09}",
                "save_top_k": -1, "every_n_train_steps": 10000, "save_weights_only": True}}, cfg)
        if name == "setup_callback":
            callbacks.append(instantiate_from_config(cfg, config=config, lightning_config=lightning_config,
                                                     cli_settings=cli_settings))
        else:
            callbacks.append(instantiate_from_config(cfg))
    callbacks.append(instantiate_from_config(checkpoint))
    return callbacks


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit as stop:
        lightning = sys.modules.get("pytorch_lightning.utilities.exceptions")  # loaded if training started
        if lightning is not None and isinstance(stop, lightning.SIGTERMException):  # Lightning stops at a batch boundary and exits 0 otherwise
            print("main.py: stopped by SIGTERM (state saved to checkpoints/crash-step=*.ckpt)", file=sys.stderr)
            sys.exit(128 + 15)
        raise
    except Exception as error:  # one clear line for configuration mistakes; full trace otherwise
        from sgm.io.checkpoint import CheckpointError
        from sgm.modules.distillation.guard import NonFiniteError
        from sgm.util import ConfigError

        if isinstance(error, (ConfigError, CheckpointError, NonFiniteError, KeyError, FileNotFoundError)):
            print(f"main.py: error: {type(error).__name__}: {error}", file=sys.stderr)
            sys.exit(1)
        raise
