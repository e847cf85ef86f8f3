"""Checks that csrc/ hipifies cleanly for a ROCm build: runs torch's hipify on a copy of csrc/ and fails if it
reports any CUDA call it cannot translate. (Compiling the result needs ROCm's hipcc, which CI does not have.)

  python scripts/check_hipify.py
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import sys
import tempfile

from torch.utils.hipify import hipify_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(os.path.join(ROOT, "csrc"), os.path.join(tmp, "csrc"))
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            results = hipify_python.hipify(
                project_directory=tmp,
                output_directory=tmp,
                includes=[os.path.join(tmp, "csrc", "**")],
                show_detailed=True,
                is_pytorch_extension=True,
            )
    text = log.getvalue()
    m = re.search(r"Total number of unsupported CUDA function calls: (\d+)", text)
    unsupported = int(m.group(1)) if m else -1
    print(f"hipify: {len(results)} files processed, {unsupported} unsupported CUDA calls")
    if unsupported != 0:
        print(text[-4000:])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
