"""Reproduce the paper's figures; `python reproduce.py --help` lists the experiments.

The experiments live in stochastic_vq/ (reproduce.py there is this command line).
"""

from stochastic_vq.reproduce import main

if __name__ == "__main__":
    main()
