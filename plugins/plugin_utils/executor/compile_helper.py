# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compiles a payload's sources for a host, run by a controller interpreter of the host's bytecode.

Private to this collection. Standard library only, Python 3.8+: the daemon runs it as
``<python> -I -S -c <this source>`` with an interpreter whose bytecode magic is the host's, to compile
once on the controller what every host's executor would otherwise compile for itself, started with
the host's optimisation level (``-O``, ``-OO``). It reads the expected magic (4 bytes) and a payload
zip from stdin and compiles each source with zipimport's own compile step, the one the host's
template uses; it runs nothing of the sources. On stdout: its own magic, then ``marshal.dumps`` of a dict from
each source's SHA-256 to its code, or nothing with exit status 3 when its magic is another.

Left out, as the host's compile step leaves them to the module's own import: sources whose
compiling warns (a fresh interpreter shows that warning on the module's stderr) or fails.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import marshal
import sys
import warnings
import zipfile
import zipimport

#: The name every source is compiled under; the host renames the code to its own import's path.
PLACEHOLDER = "<pooled_ssh payload source>"


def main() -> None:
    data = sys.stdin.buffer.read()
    magic, zip_bytes = data[:4], data[4:]
    if magic != importlib.util.MAGIC_NUMBER:
        sys.exit(3)
    compile_source = getattr(zipimport, "_compile_source", None)
    if compile_source is None:
        sys.exit(4)  # the host has no such step to replace either: nothing to send
    codes = {}
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as zf:
        for name in zf.namelist():
            if not name.endswith(".py"):
                continue
            source = zf.read(name)
            with warnings.catch_warnings(record=True) as warned:
                warnings.simplefilter("always")
                try:
                    code = compile_source(PLACEHOLDER, source)
                except Exception:
                    continue
            if not warned:
                codes[hashlib.sha256(source).digest()] = code
    sys.stdout.buffer.write(magic + marshal.dumps(codes))


if __name__ == "__main__":
    main()
