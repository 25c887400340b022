"""The `dspark` Typer app: registers one thin command per stage (each lives in its own module)."""

from __future__ import annotations

import typer

from cli.codecs_cmd import codecs_
from cli.config_cmd import config_app
from cli.demo import demo
from cli.dump_hidden import dump_hidden
from cli.eval_cmd import eval_
from cli.export import export
from cli.inspect_cmd import inspect, verify
from cli.regen import regen
from cli.report import report
from cli.serve_target import serve_target
from cli.train import CONTEXT_SETTINGS as TRAIN_CONTEXT
from cli.train import train
from cli.vocab import vocab

app = typer.Typer(
    name="dspark",
    help="DSpark speculative-decoding drafts for vLLM targets: regen -> dump-hidden -> train -> export -> eval.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.command("regen")(regen)
app.command("dump-hidden")(dump_hidden)
app.command("vocab")(vocab)
app.command("train", context_settings=TRAIN_CONTEXT, add_help_option=False)(train)
app.command("export")(export)
app.command("eval")(eval_)
app.command("inspect")(inspect)
app.command("verify")(verify)
app.command("report")(report)
app.command("demo")(demo)
app.command("codecs")(codecs_)
app.command("serve-target")(serve_target)
app.add_typer(config_app, name="config")
