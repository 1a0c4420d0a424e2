"""The `fusionrec` command.

    fusionrec data prepare CONFIG [--force] [--out DIR]   raw files -> prepared dataset (shards + manifest)
    fusionrec data prepare CONFIG --append NEW... --out DIR [--parent DIR]   a prepared dataset + new raw files -> a new one
    fusionrec data inspect DIR [--verify]                 the manifest in human form
    fusionrec fit|validate|test|predict --config RUN.yaml  training and evaluation (LightningCLI)
    fusionrec export CHECKPOINT --out DIR [--config RUN.yaml]  safetensors weights, user/item embeddings, id maps, item index
    fusionrec ensemble CKPT CKPT [...] [--out DIR]      late fusion: score weights fit on valid, members + ensemble on test
    fusionrec recommend --export DIR (--user U... | --users-file F) [--k 10]  top-K unseen items from the export's index
    fusionrec explain --ckpt CKPT (--users ID... | --sample N) --out DIR  top-K per user: score by source, history, rationale
    fusionrec report RUN_DIR [RUN_DIR ...] --out DIR     HTML page: curves, metrics, gates, comparison, popularity bias
"""

from __future__ import annotations

import argparse
import logging
import sys


def _data_main(argv: list[str]) -> int:
    from data_modules.errors import DataError

    p = argparse.ArgumentParser(prog="fusionrec data", description="Prepare and inspect datasets.")
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare", help="raw files -> parquet shards + manifest.json")
    pp.add_argument("config", help="prepare YAML (configs/data/*.yaml)")
    pp.add_argument("--force", action="store_true", help="rebuild even when inputs and options are unchanged")
    pp.add_argument("--out", help="override output.dir")
    pp.add_argument("--append", nargs="+", metavar="NEW",
                    help="extend CONFIG's prepared folder with new raw inputs (read like its source) into --out: "
                         "existing ids keep their index (data_modules/prepare/append.py)")
    pp.add_argument("--parent", help="with --append: the prepared folder extended (default: CONFIG's output.dir)")
    pi = sub.add_parser("inspect", help="print a prepared dataset's manifest")
    pi.add_argument("dir")
    pi.add_argument("--verify", action="store_true", help="also check every shard's sha256")
    a = p.parse_args(argv)
    try:
        if a.cmd == "prepare":
            from data_modules.manifest import format_manifest
            from data_modules.prepare.config import PrepareConfig
            from data_modules.prepare.pipeline import prepare

            cfg = PrepareConfig.from_yaml(a.config)
            if a.append:
                from data_modules.prepare.append import with_appended

                if a.parent:
                    cfg.output.dir = a.parent
                cfg = with_appended(cfg, a.append, a.out)
            elif a.out:
                cfg.output.dir = a.out
            res = prepare(cfg, force=a.force)
            print(format_manifest(res.manifest, res.path))
            print(f"{'reused' if res.reused else 'wrote'} {res.path}")
        else:
            from data_modules.manifest import format_manifest, load_manifest, verify_checksums

            m = load_manifest(a.dir)
            if a.verify:
                verify_checksums(a.dir, m)
            print(format_manifest(m, a.dir))
            if a.verify:
                print("checksums    all shards and side arrays match the manifest")
    except (DataError, ValueError, FileNotFoundError) as e:
        print(f"fusionrec data {a.cmd}: error: {e}", file=sys.stderr)
        return 2
    return 0


def _export_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fusionrec export", description="Export a checkpoint for serving (trainer/inference/export.py).")
    p.add_argument("checkpoint", help="Lightning .ckpt file, or a DeepSpeed checkpoint folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", help="run config (default: config.yaml in the checkpoint's log folder)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--allow-dataset-change", action="store_true",
                   help="export even if the run config's prepared dataset is not the one the checkpoint was trained on")
    p.add_argument("--hnsw-m", type=int, default=32, help="item index: graph neighbours per node (default 32)")
    p.add_argument("--hnsw-ef-construction", type=int, default=100, help="item index: build list (default 100)")
    p.add_argument("--hnsw-ef-search", type=int, default=128, help="item index: search list (default 128)")
    a = p.parse_args(argv)
    from trainer.inference.ann_index import HNSWConfig
    from trainer.inference.export import export

    try:
        export(a.checkpoint, a.out, a.config, progress=not a.no_progress, allow_dataset_change=a.allow_dataset_change,
               hnsw=HNSWConfig(a.hnsw_m, a.hnsw_ef_construction, a.hnsw_ef_search))
    except (FileNotFoundError, ValueError) as e:
        print(f"fusionrec export: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S")
    if not argv or argv[0] in ("-h", "--help"):
        # LightningCLI's own help knows only fit / validate / test / predict
        print(__doc__.strip().replace("The `fusionrec` command.", "usage: fusionrec COMMAND ...", 1)
              + "\n\n`fusionrec COMMAND --help` lists each command's options.", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv and argv[0] == "data":
        return _data_main(argv[1:])
    if argv and argv[0] == "export":
        return _export_main(argv[1:])
    if argv and argv[0] == "report":
        from trainer.inference.report import main as report_main

        return report_main(argv[1:])
    if argv and argv[0] == "recommend":
        from trainer.inference.recommend import main as recommend_main

        return recommend_main(argv[1:])
    if argv and argv[0] == "explain":
        from trainer.inference.explain import main as explain_main

        return explain_main(argv[1:])
    if argv and argv[0] == "ensemble":
        from trainer.inference.ensemble import main as ensemble_main

        return ensemble_main(argv[1:])
    from trainer.engine.backbone_weights import BackboneMismatchError
    from trainer.engine.checkpointing import CheckpointCorruptError
    from trainer.engine.dataset_guard import DatasetMismatchError
    from trainer.engine.lightning_cli import run_lightning_cli
    from trainer.inference.prediction_writer import PredictionWriter

    try:
        run_lightning_cli(argv, predict_writer=PredictionWriter)
    except (DatasetMismatchError, BackboneMismatchError, CheckpointCorruptError) as e:
        print(f"fusionrec {argv[0] if argv else ''}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
