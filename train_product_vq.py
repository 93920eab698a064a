"""Train product VQ (PVQ) with NSVQ; `python train_product_vq.py --help` lists the options.

The paper's example: N(0, 1) data of dimension 128, Adam, 20000 steps; the loop is
stochastic_vq/loop.py.
"""

from stochastic_vq.cli import main as run


def main(argv: list[str] | None = None) -> None:
    """Parse the command line (or ``argv``) and train (the ``train-...`` console command)."""
    run("pvq", argv)


if __name__ == "__main__":
    main()
