"""Write the one LPIPS-VGG weights file that ``tokenizers.<name>.lpips_weights`` points at.

    python benchmarks/convert_lpips_weights.py --vgg vgg16-397923af.pth --heads lpips-0.1.4-py3-none-any.whl \
        --out .weights/lpips_vgg.safetensors

``--vgg``: torchvision's VGG16 ImageNet state dict (``features.*`` are kept, ``classifier.*`` dropped).
``--heads``: lpips' ``weights/v0.1/vgg.pth``, or the lpips wheel itself (read without installing it).
Nothing is downloaded; torchvision and lpips are not imported.
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import torch

HEADS_IN_WHEEL = "lpips/weights/v0.1/vgg.pth"


def read_heads(path: Path) -> dict[str, torch.Tensor]:
    """lpips' linear heads ``lin{l}.model.1.weight`` from ``vgg.pth`` or from the lpips wheel."""
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            data = wheel.read(HEADS_IN_WHEEL)
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return torch.load(str(path), map_location="cpu", weights_only=True)


def main() -> None:
    from diffusability.io import save_tensors
    from diffusability.tokenizers.lpips import LPIPSVGG

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vgg", required=True, type=Path, help="torchvision vgg16 state dict (.pth)")
    parser.add_argument("--heads", required=True, type=Path, help="lpips vgg.pth or the lpips wheel (.whl)")
    parser.add_argument("--out", required=True, type=Path, help="output .safetensors")
    args = parser.parse_args()
    vgg = torch.load(str(args.vgg), map_location="cpu", weights_only=True)
    state = {k: v for k, v in vgg.items() if k.startswith("features.")}
    state.update(read_heads(args.heads))
    model = LPIPSVGG()
    model.load_lpips_state(state, f"{args.vgg} + {args.heads}")  # checks every name and shape
    kept = {k: v.float().contiguous() for k, v in state.items() if k.startswith(("features.", "lin"))}
    save_tensors(args.out, kept, metadata={"format": "lpips-vgg-v0.1"})
    print(f"wrote {args.out}: {len(kept)} tensors")


if __name__ == "__main__":
    main()
