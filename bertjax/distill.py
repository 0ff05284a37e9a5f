"""Distillation entrypoint: `bertjax pretrain` with objective.name=distill (train/distill.py),
the same command line, loop, checkpoints and resume.

bertjax distill --config=configs/distill.py --workdir=DIR --config.data.train_dir=PREPARED \
    --config.distill.teacher=TEACHER [--config.distill.layer_map=0,2,4,7,9,11] [--config.a.b=v ...]
"""
from __future__ import annotations

from bertjax import cli, pretrain
from bertjax.errors import UserError


def main(argv):
    cfg = cli.get_config()
    if str(cfg.objective.name) != "distill":
        raise UserError(f"bertjax distill trains objective.name=distill, but the config says "
                        f"{cfg.objective.name!r}; use --config=configs/distill.py")
    pretrain.main(argv)


if __name__ == "__main__":
    cli.run(main, pretrain.define_flags)
