"""Developer build of lite_srt._C with torch.utils.cpp_extension.load (same sources and flags as setup.py).

Usage: python scripts/jit_build.py [--verbose]. Prints the path of the built module; to use it in place of an
installed build, copy or symlink it to lite_srt/_C<ext suffix> (the script prints the command).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_setup_helpers():
    spec = importlib.util.spec_from_file_location("lite_srt_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() itself runs only under __main__
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--build-dir", default=os.path.join(ROOT, "build", "jit"))
    args = parser.parse_args()

    from torch.utils.cpp_extension import load

    helpers = _load_setup_helpers()
    runtime = helpers.gpu_runtime()
    kw = helpers.extension_kwargs(runtime)
    os.makedirs(args.build_dir, exist_ok=True)
    module = load(
        name="_C",
        sources=[os.path.join(ROOT, s) for s in kw["sources"]],
        extra_include_paths=kw["include_dirs"],
        extra_cflags=kw["extra_compile_args"]["cxx"],
        extra_cuda_cflags=kw["extra_compile_args"].get("nvcc"),
        extra_ldflags=kw["extra_link_args"],
        with_cuda=runtime != "cpu",
        build_directory=args.build_dir,
        verbose=args.verbose,
    )
    target = os.path.join(ROOT, "lite_srt", "_C" + sysconfig.get_config_var("EXT_SUFFIX"))
    print(f"built lite_srt._C ({runtime}) at {module.__file__}")
    print(f"use it in place: ln -sf {module.__file__} {target}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
