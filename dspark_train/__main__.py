"""`python -m dspark_train` / `torchrun ... -m dspark_train`: one training process (see entrypoint.py)."""

import sys

from dspark_train.entrypoint import main

if __name__ == "__main__":
    sys.exit(main())
