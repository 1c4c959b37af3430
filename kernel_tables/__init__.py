"""What the kernel config tables of ``atmm`` and ``valora.quant`` share: GPU and dtype naming,
table files (``kernel_tables.tables``), power-of-two bucket rounding, and the one GPU timer
their tuners and the benchmarks measure with (``kernel_tables.timing.gpu_time``).

Imports only the standard library and torch, so both ``atmm`` (which never imports ``valora``)
and ``valora`` can depend on it.
"""

from __future__ import annotations

from kernel_tables.tables import (
    device_name,
    library_versions,
    pow2_ceil,
    read_table,
    table_file,
    write_table,
)

__all__ = [
    "device_name",
    "library_versions",
    "pow2_ceil",
    "read_table",
    "table_file",
    "write_table",
]
