"""PyTorch reference for bench/finetune.ts: one training step (forward + backward + AdamW) of the last K
inverted-residual blocks of MobileNetV2 + graft's default head, batch 32, on cached block inputs.

Run by bench/finetune.ts as
  LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 OPENBLAS_NUM_THREADS=T \
    /usr/bin/python3 bench/finetune_torch.py T K [K ...]
with Debian's python3-torch (1.13) and python3-torchvision; random weights (timing only). BatchNorm is folded
into the convolutions, as in the ONNX graph graft trains; tensors are channels_last.
Prints one JSON object: {"torch": version, "threads": T, "ms": {K: median ms per step}}.
"""
import json
import statistics
import sys
import time

import torch
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_bn(module: nn.Module) -> nn.Module:
    """Fuses every Conv2d followed by a BatchNorm2d inside Sequentials (eval-mode statistics)."""
    for name, child in module.named_children():
        fold_bn(child)
        if isinstance(child, nn.Sequential):
            layers = list(child)
            for i in range(len(layers) - 1):
                if isinstance(layers[i], nn.Conv2d) and isinstance(layers[i + 1], nn.BatchNorm2d):
                    layers[i] = fuse_conv_bn_eval(layers[i].eval(), layers[i + 1].eval())
                    layers[i + 1] = nn.Identity()
            setattr(module, name, nn.Sequential(*layers))
    return module


def main() -> None:
    threads = int(sys.argv[1])
    ks = [int(k) for k in sys.argv[2:]]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    result = {"torch": torch.__version__, "threads": threads, "ms": {}}
    for k in ks:
        features = torchvision.models.mobilenet_v2().features
        body = fold_bn(nn.Sequential(*list(features.children())[18 - k:]))
        # Shape of the block input: run the earlier blocks once on one image.
        with torch.no_grad():
            probe = nn.Sequential(*list(features.children())[: 18 - k]).eval()(torch.zeros(1, 3, 224, 224))
        model = nn.Sequential(
            body,
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(1280, 512),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(512, 5),
        ).train()
        model = model.to(memory_format=torch.channels_last)
        x = torch.randn(32, *probe.shape[1:]).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 5, (32,))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
        loss_fn = nn.CrossEntropyLoss()
        times = []
        for step in range(25):
            start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            if step >= 5:
                times.append((time.perf_counter() - start) * 1000)
        result["ms"][str(k)] = {"median": statistics.median(times), "min": min(times), "input": list(probe.shape[1:])}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
