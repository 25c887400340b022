"""`python -m dspark_train` / `torchrun ... -m dspark_train`: one training process (see train.py)."""

import sys

from dspark_train.train import main

if __name__ == "__main__":
    sys.exit(main())
