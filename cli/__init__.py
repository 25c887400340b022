"""The `dspark` command line: a Typer app of thin commands that call into dspark_data and dspark_train."""
