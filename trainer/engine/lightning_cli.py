"""`fusionrec fit | validate | test | predict --config configs/<run>.yaml` through LightningCLI.

YAML -> typed signatures -> objects: the model's option groups are dataclasses, the data module's are plain
arguments, and the strategy is chosen by name (see trainer/engine/strategies.py).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.cli import LightningCLI

from data_modules.datamodule import FusionDataModule
from trainer.engine.checkpointing import RestoreLoaderPosition, with_atomic_checkpoint_io
from trainer.engine.module import FusionModule
from trainer.engine.progress import FusionModelSummary, ProgressLines, progress_bar_wanted

log = logging.getLogger("fusionrec")


class FusionCLI(LightningCLI):
    """Args (beyond LightningCLI's): predict_writer: makes the callback that writes `predict`'s output when the
    config lists none (trainer/cli.py passes trainer.inference.prediction_writer.PredictionWriter: the engine knows
    no output format)."""

    def __init__(self, *args, predict_writer: Callable[[], BasePredictionWriter] | None = None, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.predict_writer = predict_writer
        super().__init__(*args, **kwargs)  # LightningCLI parses, builds and runs the subcommand in here

    def add_arguments_to_parser(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("--strategy_name", default="single",
                            help="single | ddp | deepspeed_stage_1 | deepspeed_stage_2 | deepspeed_stage_3 | deepspeed_stage_3_offload")
        parser.add_argument("--deepspeed_config", default=None, help="DeepSpeed JSON overriding configs/deepspeed/<name>.json")
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="after fit, evaluate the best checkpoint (chosen on validation) once on the test split")
        parser.add_argument("--init_from", default=None,
                            help="fit: start from this checkpoint's weights (trained on this dataset or one it extends: "
                                 "`data prepare --append`), growing its id tables; fresh optimizer (trainer/engine/init_from.py)")

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads --ckpt_path's hyper-parameters with a bare torch.load before any plugin: check the
        file's structure first, so a truncated or damaged checkpoint is an error naming it, not a miniz trace."""
        from trainer.engine.checkpointing import check_checkpoint_file

        sub = self.config.get("subcommand")
        ckpt = self.config[sub].get("ckpt_path") if sub else None
        if ckpt and Path(ckpt).is_file():
            check_checkpoint_file(ckpt)
        super()._parse_ckpt_path()

    def before_fit(self) -> None:
        cfg = self.config["fit"]
        if path := cfg.get("init_from"):
            if cfg.get("ckpt_path"):
                raise ValueError("--init_from starts a new run from a checkpoint's weights and --ckpt_path resumes "
                                 "one: give one of them")
            if "stage_3" in str(cfg.get("strategy_name")):
                raise ValueError("--init_from grows the id tables before ZeRO-3 partitions them, which it cannot do "
                                 "under deepspeed_stage_3: fine-tune with single, ddp or deepspeed_stage_1/2")
            self.model.init_from = str(path)

    def instantiate_trainer(self, **kwargs):  # type: ignore[no-untyped-def]
        from trainer.engine.strategies import build_strategy

        cfg = self.config[self.subcommand] if self.subcommand else self.config
        strategy = build_strategy(cfg.get("strategy_name", "single"), cfg.get("deepspeed_config"))
        if strategy is not None:
            kwargs["strategy"] = strategy
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        kwargs["plugins"] = with_atomic_checkpoint_io(trainer_cfg.get("plugins"))
        if trainer_cfg.get("enable_progress_bar") is None and not progress_bar_wanted():
            kwargs["enable_progress_bar"] = False  # not a terminal: ProgressLines prints flushed lines instead
        trainer = super().instantiate_trainer(**kwargs)
        if (self.subcommand == "predict" and self.predict_writer is not None
                and not any(isinstance(c, BasePredictionWriter) for c in trainer.callbacks)):
            # predict always writes its output, whatever the config's callbacks list
            trainer.callbacks.append(self.predict_writer())
        return trainer

    def after_predict(self) -> None:
        paths = [c.last_path for c in self.trainer.callbacks if getattr(c, "last_path", None) is not None]
        if self.trainer.global_rank == 0 and paths:
            print(f"predictions: {paths[0].parent}/rank-*.parquet (top-{self.model.predict_top_k} items per user, with "
                  "scores and per-source gates)", flush=True)

    def after_fit(self) -> None:
        _report(self.trainer, "fit")
        if self.config["fit"].get("test_after_fit"):
            ckpt = "best" if getattr(self.trainer.checkpoint_callback, "best_model_path", "") else None
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)
            _report(self.trainer, "test")

    def after_test(self) -> None:
        _report(self.trainer, "test")

    def after_validate(self) -> None:
        _report(self.trainer, "validate")


def _report(trainer, what: str) -> None:  # type: ignore[no-untyped-def]
    if trainer.global_rank != 0:
        return
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "test/"))}
    if metrics:
        width = max(len(k) for k in metrics)
        print(f"\n{what} metrics:", flush=True)
        for k in sorted(metrics):
            print(f"  {k:<{width}}  {metrics[k]:.4f}", flush=True)
    if trainer.logger is not None and getattr(trainer.logger, "log_dir", None):
        print(f"TensorBoard logs: {trainer.logger.log_dir}   (bash launch/tensorboard.sh {Path(trainer.logger.log_dir).parent})", flush=True)
    ckpt = trainer.checkpoint_callback
    if what == "fit" and ckpt is not None and getattr(ckpt, "best_model_path", ""):
        print(f"best checkpoint: {ckpt.best_model_path} (by {ckpt.monitor}); last: {ckpt.last_model_path}", flush=True)


def run_lightning_cli(argv: list[str], predict_writer: Callable[[], BasePredictionWriter] | None = None) -> None:
    """LightningCLI on `argv`; `predict_writer` makes the callback that writes `predict`'s output when the config
    lists none."""
    # we pass `args` on purpose (the `fusionrec` command parsed its own first word): the warning is not for us
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")
    FusionCLI(
        FusionModule,
        FusionDataModule,
        args=argv,
        seed_everything_default=2020,
        save_config_kwargs={"overwrite": True},
        predict_writer=predict_writer,
        # evaluation users are sharded by rank in the data module; Lightning must not add a sampler
        # atomic checkpoint writes + weights_only loads (plugins, see instantiate_trainer) and exact mid-epoch resume
        # progress lines when stdout is no terminal, and a model summary without Lightning's FLOPs (trainer/engine/progress.py)
        trainer_defaults={"use_distributed_sampler": False,
                          "callbacks": [RestoreLoaderPosition(), ProgressLines(), FusionModelSummary(max_depth=1)]},
    )
