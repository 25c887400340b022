"""The regen columns later stages read (id, input_ids, loss_mask), typed as `dspark regen` writes them.

Test datasets of kind "regen" hold only these three columns. Taking the columns from
`schemas.regen.REGEN_ARROW_SCHEMA` (token ids int32, mask bool) keeps every test dataset what the real
writer produces, instead of four hand-written copies of which three had drifted to int64 ids.
"""

from __future__ import annotations

import pyarrow as pa

from schemas.regen import REGEN_ARROW_SCHEMA

REGEN_SCHEMA = pa.schema([REGEN_ARROW_SCHEMA.field(name) for name in ("id", "input_ids", "loss_mask")])
