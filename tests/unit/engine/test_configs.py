"""Every shipped config is proven: run YAMLs parse and instantiate through the real CLI, prepare YAMLs load as
`PrepareConfig`, DeepSpeed JSONs load with a ZeRO stage, and every YAML opens with the command that runs it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from data_modules.datamodule import FusionDataModule
from data_modules.prepare.config import PrepareConfig
from trainer.engine.lightning_cli import FusionCLI
from trainer.engine.module import FusionModule
from trainer.engine.strategies import NAMES

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "configs"
RUN_YAMLS = sorted(CONFIGS.glob("*.yaml"))
DATA_YAMLS = sorted((CONFIGS / "data").glob("*.yaml"))
DEEPSPEED_JSONS = sorted((CONFIGS / "deepspeed").glob("*.json"))
ALL_YAMLS = sorted(p for p in CONFIGS.rglob("*.y*ml") if "deepspeed" not in p.parts)


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(CONFIGS)) for p in paths]


def test_the_config_lists_are_not_empty():
    assert RUN_YAMLS and DATA_YAMLS and DEEPSPEED_JSONS
    assert CONFIGS / "tiny.yaml" in RUN_YAMLS and CONFIGS / "data" / "tiny.yaml" in DATA_YAMLS


@pytest.mark.parametrize("path", RUN_YAMLS, ids=_ids(RUN_YAMLS))
def test_run_config_parses_and_instantiates_through_the_cli(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # loggers / callbacks built here must not touch the repository
    monkeypatch.setattr("sys.argv", ["fusionrec"])  # pytest's own arguments are not the CLI's
    # the same arguments as trainer.engine.lightning_cli.run_lightning_cli, without running a subcommand
    cli = FusionCLI(
        FusionModule,
        FusionDataModule,
        args=["--config", str(path)],
        run=False,
        seed_everything_default=2020,
        trainer_defaults={"use_distributed_sampler": False},
    )
    assert isinstance(cli.model, FusionModule) and isinstance(cli.datamodule, FusionDataModule)
    assert cli.config["strategy_name"] in NAMES
    assert cli.model.monitor_k in cli.model.metrics_k
    prepare = cli.config["data"]["prepare_config"]
    if prepare:  # relative to the repository root, where the configs are run from
        assert (REPO / prepare).is_file(), f"{path.name}: data.prepare_config {prepare} does not exist"
        PrepareConfig.from_yaml(REPO / prepare)


@pytest.mark.parametrize("path", DATA_YAMLS, ids=_ids(DATA_YAMLS))
def test_prepare_config_loads(path):
    cfg = PrepareConfig.from_yaml(path)
    assert cfg.output.dir and cfg.source.path


@pytest.mark.parametrize("path", DEEPSPEED_JSONS, ids=_ids(DEEPSPEED_JSONS))
def test_deepspeed_json_loads_with_the_stage_its_name_says(path):
    cfg = json.loads(path.read_text())
    stage = cfg["zero_optimization"]["stage"]
    assert stage in (0, 1, 2, 3)
    assert path.stem in NAMES, f"{path.name} is not reachable through --strategy_name {NAMES}"
    assert path.stem.startswith(f"deepspeed_stage_{stage}"), (
        f"{path.name} holds zero_optimization.stage={stage}"
    )


@pytest.mark.parametrize("path", ALL_YAMLS, ids=_ids(ALL_YAMLS))
def test_yaml_opens_with_the_command_that_runs_it(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    rel = re.escape(str(path.relative_to(REPO)))
    command = (
        rf"fusionrec data prepare {rel}\b"
        if "data" in path.relative_to(CONFIGS).parts
        else rf"(fusionrec|launch/torchrun\.sh|launch/slurm\.sbatch) (fit|validate|test|predict) --config {rel}\b"
    )
    assert header and re.search(command, "\n".join(header[:3])), f"{path.name} must open with `# {command}`"
    yaml.safe_load("\n".join(lines))  # and the rest is plain YAML
