"""The command line of train_additive_vq.py, train_product_vq.py and train_residual_vq.py."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from stochastic_vq.config import INITS, LR_SCALES, ConfigError, TrainConfig
from stochastic_vq.data import npy_columns
from stochastic_vq.loop import train
from stochastic_vq.methods import quantizer_class
from stochastic_vq.runfiles import CHECKPOINT_FILE
from stochastic_vq_core.codebook_updates import CODEBOOK_UPDATES, EMA_DECAY
from stochastic_vq_core.estimators import DIVEQ_NOISE, ESTIMATORS
from stochastic_vq_core.paper import SCRIPT_BEAM_WIDTH, SCRIPT_SHAPES

DEFAULTS = TrainConfig(device="cpu")  # the paper's settings, shown in --help


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line on stderr and exit status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(method: str) -> argparse.ArgumentParser:
    """The command line of ``train_<method>.py``; defaults are the paper's."""
    stages, bits = SCRIPT_SHAPES.get(method, (None, None))  # a method outside the paper: none
    d = DEFAULTS
    title = quantizer_class(method).title
    parser = ArgumentParser(description=f"Train {title} with NSVQ (or DiVeQ) and Adam on "
                                        "N(0, 1) data (the paper's example) or on an (N, D) "
                                        ".npy file.")
    add = parser.add_argument
    add("--steps", type=int, default=d.steps, help=f"training steps (batches) (default: {d.steps})")
    add("--batch-size", type=int, default=d.batch_size,
        help=f"vectors per step, per process (default: {d.batch_size})")
    add("--lr", type=float, default=d.lr, help=f"Adam learning rate (default: {d.lr})")
    add("--dim", type=int, default=None,
        help=f"data dimension D (default: {d.data_dim}, or the --data file's number of columns)")
    add("--stages", type=int, default=stages, help=f"number of codebooks M (default: {stages})")
    add("--bits", type=int, default=bits,
        help=f"bits per codebook, K = 2**bits codewords each (default: {bits})")
    if method == "avq":
        add("--beam-width", type=int, default=SCRIPT_BEAM_WIDTH,
            help=f"beam width of the AVQ search (default: {SCRIPT_BEAM_WIDTH})")
    add("--replace-every", type=int, default=d.replace_every,
        help="replace unused codewords every this many steps, never in the last "
             f"2x this many (default: {d.replace_every})")
    add("--discard-threshold", type=float, default=d.discard_threshold,
        help="a codeword used in fewer than this fraction of the batches since the last "
             f"replacement is replaced (default: {d.discard_threshold})")
    add("--log-every", type=int, default=d.log_every,
        help=f"steps per log window: mean loss and usage snapshot (default: {d.log_every})")
    add("--save-every", type=int, default=d.save_every,
        help=f"write checkpoint.pt every this many steps and at the end "
             f"(default: {d.save_every})")
    add("--eval-samples", type=int, default=d.eval_samples,
        help="fresh N(0, 1) vectors of the final hard-quantization MSE (default: 2**18)")
    add("--seed", type=int, default=d.seed,
        help=f"seed of initialisation, data, noise and replacement (default: {d.seed})")
    add("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    add("--threads", type=int, default=d.threads,
        help="torch CPU threads; 0 keeps torch's default (default: 1, the fastest for small "
             "batches)")
    add("--out", default=None,
        help="run directory for log.json and checkpoint.pt (default: a new folder "
             "output/<method>_<stages>x<bits>b_..._seed<seed>)")
    add("--resume", action="store_true",
        help="continue the run in --out from its checkpoint (same settings required)")
    add("--init", choices=list(INITS), default=None,
        help="codebook initialisation: the paper's Uniform(-1/K, 1/K), or k-means of the "
             "training data; data-disjoint fits each RVQ/AVQ codebook to its own share of "
             "the samples, for large codebooks in high dimension (default: uniform on "
             "N(0, 1) data, data with --data)")
    add("--lr-scale", choices=list(LR_SCALES), default=None,
        help="absolute: --lr is Adam's step size (the paper); data: --lr is multiplied by the "
             "standard deviation of the training data (default: absolute on N(0, 1) data, "
             "data with --data)")
    add("--estimator", choices=list(ESTIMATORS), default=d.estimator,
        help="training-mode estimator: nsvq, the paper's noise substitution, or diveq, the "
             f"error's direction blurred by noise (default: {d.estimator})")
    add("--diveq-noise", type=float, default=None,
        help="DiVeQ's noise relative to the quantization error's norm, with --estimator "
             f"diveq only; 0 trains on the hard quantization (default: {DIVEQ_NOISE})")
    add("--codebook-update", choices=list(CODEBOOK_UPDATES), default=d.codebook_update,
        help="how the codebooks learn: gradient, by Adam (the paper), or ema, by moving "
             "averages of what each codeword quantizes (online k-means) "
             f"(default: {d.codebook_update})")
    add("--ema-decay", type=float, default=None,
        help="decay of those moving averages, with --codebook-update ema only "
             f"(default: {EMA_DECAY})")
    add("--reset-optimizer-state", action="store_true",
        help="zero Adam's moments of replaced codewords instead of keeping the dead entries' "
             "(no measurable difference; off by default)")
    add("--data", default=None, help="(N, D) float .npy file to train on, rows drawn with "
                                     "replacement (default: N(0, 1) samples)")
    add("--eval-data", default=None,
        help="(N, D) .npy file of held-out vectors for the final evaluation (default: fresh "
             "N(0, 1) samples, or --data itself when --data is given)")
    add("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests of --resume
    return parser


def run_name(config: TrainConfig) -> str:
    """Folder name describing a run, e.g. ``rvq_4x7b_d128_seed0``."""
    beam = f"_bw{config.beam_width}" if config.method == "avq" else ""
    data = f"_{Path(config.data).stem}" if config.data else ""
    shape = f"{config.stages}x{config.bits}b{beam}_d{config.data_dim}"
    estimator = f"_{config.estimator}" if config.estimator != DEFAULTS.estimator else ""
    return f"{config.method}_{shape}{data}{estimator}_seed{config.seed}"


def config_from_args(method: str, args: argparse.Namespace) -> TrainConfig:
    """TrainConfig of parsed command-line arguments, ``out`` filled in when not given."""
    dim = args.dim
    if dim is None:
        dim = npy_columns(args.data) if args.data else DEFAULTS.data_dim
    config = TrainConfig(
        method=method, stages=args.stages, bits=args.bits,
        beam_width=getattr(args, "beam_width", SCRIPT_BEAM_WIDTH), data_dim=dim,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        replace_every=args.replace_every, discard_threshold=args.discard_threshold,
        log_every=args.log_every, save_every=args.save_every, eval_samples=args.eval_samples,
        seed=args.seed, device=args.device, out=args.out, init=args.init, data=args.data,
        eval_data=args.eval_data, resume=args.resume, threads=args.threads,
        lr_scale=args.lr_scale, reset_optimizer_state=args.reset_optimizer_state,
        estimator=args.estimator, diveq_noise=args.diveq_noise,
        codebook_update=args.codebook_update, ema_decay=args.ema_decay)
    if config.out is None:
        out = Path("output") / run_name(config)
        if not config.resume:  # a new folder: never overwrite an earlier run
            base, count = out, 1
            while out.exists():
                count += 1
                out = base.with_name(f"{base.name}_{count}")
        config = replace(config, out=str(out))
    elif not config.resume and (Path(config.out) / CHECKPOINT_FILE).exists():
        raise ConfigError("out", f"{config.out} already holds a run; pass --resume to "
                                 "continue it or choose another --out")
    return config


FLAGS = {"data_dim": "--dim"}  # settings whose flag is not their name with dashes


def main(method: str, argv: list[str] | None = None) -> dict:
    """Entry point of the train_*.py scripts, also under ``torchrun``; returns train()'s dict."""
    parser = build_parser(method)
    args = parser.parse_args(argv)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    try:
        config = config_from_args(method, args)
        config.validate()
        if distributed:
            if torch.device(config.device).type == "cuda":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl" if config.device.startswith("cuda") else "gloo")
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(f"Training {quantizer_class(method).title} into {config.out}", flush=True)
        return train(config, stop_after=args.stop_after)
    except ConfigError as error:
        flag = FLAGS.get(error.setting, "--" + error.setting.replace("_", "-"))
        parser.error(f"argument {flag}: {error.message}")
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()
