"""Targets: resolve a recipe's target spec to a loadable directory, and read its architecture facts.

`resolve_target("tiny:trained")` builds (once, cached) the embedded tiny target with the factory in
`dspark_data.targets.tiny`; see `docs/formats/tiny-target.md`. `load_target_info(path_or_id)` reads config.json only.
"""

from dspark_data.targets.info import TargetInfo, load_target_info
from dspark_data.targets.resolve import resolve_target

__all__ = ["TargetInfo", "load_target_info", "resolve_target"]
