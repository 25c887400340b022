"""`python -m cli ...` is the same as the `dspark` console script (used by `dspark demo` for each stage)."""

from cli.main import app

if __name__ == "__main__":
    app()
