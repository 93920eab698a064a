"""Train additive VQ (AVQ) with NSVQ; `python train_additive_vq.py --help` lists the options.

The paper's example: N(0, 1) data of dimension 128, Adam, 20000 steps; see training.py.
"""

from training import main

if __name__ == "__main__":
    main("avq")
