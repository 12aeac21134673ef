#!/usr/bin/python3
"""PyTorch autograd reference for test/torch-steps.test.ts: one full training step (and a second one) of a
small conv net and of a small transformer encoder block, written to test/fixtures/torch-steps.json.

The test suite reads only the JSON fixture; Python is needed only to regenerate it:

    apt-get update && apt-get install -y python3-torch      # Debian 12's PyTorch
    /usr/bin/python3 scripts/torch_reference.py             # writes test/fixtures/torch-steps.json

(use /usr/bin/python3: the `python3` first on PATH may be another Python without torch).

The committed fixture was produced by Debian's python3-torch 1.13.1+dfsg-4 (torch.__version__ 1.13.0a0),
CPU, float32, one thread; the version is also recorded in the fixture ("torch").

What is recorded, per network (all tensors float32, flattened row-major, with their shapes):
- the inputs and integer labels, the constants (eval-mode BatchNorm running statistics), every trainable
  parameter's initial value (torch layouts: Linear weight [out, in], Conv weight [out, in/groups, kh, kw])
  and whether it takes weight decay (`decay`: tensors of rank ≥ 2; biases and norm affines do not);
- the loss and every parameter's gradient at the initial parameters;
- for each optimizer (SGD momentum 0.9 lr 0.1 wd 1e-4; Adam lr 1e-2 wd 1e-4; AdamW lr 1e-2 wd 1e-2; the
  weight decay applied to the `decay` parameters only, as two torch parameter groups), starting from the
  initial parameters and stepping twice on the same batch: the parameters after step 1, the loss and
  gradients at those parameters (what step 2 uses), and the parameters after step 2. One step of momentum
  SGD equals plain SGD with weight decay, and one Adam step is about lr·sign(g); the second step is the one
  where the momentum buffer and the moment estimates matter.

Networks:
(a) conv: x [4,3,16,16] → Conv 3→8 3x3 stride 2 pad 1 (+bias) → BatchNorm2d in eval mode (non-trivial
    running statistics, affine trained) → ReLU6 → depthwise Conv 8 3x3 pad 1 groups 8 (no bias) → ReLU →
    pointwise Conv 8→16 1x1 (+bias) → global average pool → Linear 16→5 → cross-entropy (mean).
    The BatchNorm affine is chosen so that ReLU6 clips at both 0 and 6.
(b) transformer: x [2,6,16] → LayerNorm → single-head self-attention (Q, V, O Linear with bias, K Linear
    without bias, scores · 1/√16, softmax) → + x → LayerNorm → Linear 16→32 → GELU (exact, erf) → Linear
    32→16 → + → mean over the 6 tokens → Linear 16→3 → cross-entropy (mean).
    K has no bias (as in Whisper): a key bias adds q·b_k to every score of a row, which softmax ignores, so
    its gradient is exactly zero and in float32 pure rounding noise, and Adam's first step on it,
    lr·g/(|g| + ε), would be an arbitrary ±lr that no two implementations can agree on.
"""
import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'test', 'fixtures', 'torch-steps.json')

OPTIMIZERS = {
    'sgd': {'kind': 'SGD', 'lr': 0.1, 'momentum': 0.9, 'weightDecay': 1e-4},
    'adam': {'kind': 'Adam', 'lr': 1e-2, 'weightDecay': 1e-4, 'beta1': 0.9, 'beta2': 0.999, 'eps': 1e-8},
    'adamw': {'kind': 'AdamW', 'lr': 1e-2, 'weightDecay': 1e-2, 'beta1': 0.9, 'beta2': 0.999, 'eps': 1e-8},
}


def flat(t):
    """Float32 values as JSON numbers with 9 significant digits (enough to round-trip float32)."""
    t = t.detach().to(torch.float32).reshape(-1)
    return [float('%.9g' % v) for v in t.tolist()]


def entry(t):
    return {'shape': list(t.shape), 'data': flat(t) if t.is_floating_point() else t.reshape(-1).tolist()}


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.pw = nn.Conv2d(8, 16, 1, bias=True)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        h = torch.clamp(self.bn(self.conv1(x)), 0, 6)  # ReLU6
        h = F.relu(self.dw(h))
        h = self.pw(h).mean(dim=(2, 3))  # global average pool + flatten
        return self.fc(h)


class Block(nn.Module):
    def __init__(self, d=16, hidden=32, classes=3):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)
        self.head = nn.Linear(d, classes)
        self.scale = 1 / math.sqrt(d)

    def forward(self, x):
        h = self.ln1(x)
        scores = (self.q(h) @ self.k(h).transpose(1, 2)) * self.scale
        r1 = x + self.o(torch.softmax(scores, dim=-1) @ self.v(h))
        r2 = r1 + self.fc2(F.gelu(self.fc1(self.ln2(r1))))  # exact GELU
        return self.head(r2.mean(dim=1))


def make_optimizer(key, model):
    spec = OPTIMIZERS[key]
    decay = [p for p in model.parameters() if p.dim() >= 2]
    plain = [p for p in model.parameters() if p.dim() < 2]
    groups = [{'params': decay, 'weight_decay': spec['weightDecay']}, {'params': plain, 'weight_decay': 0.0}]
    if spec['kind'] == 'SGD':
        return torch.optim.SGD(groups, lr=spec['lr'], momentum=spec['momentum'], foreach=False)
    betas = (spec['beta1'], spec['beta2'])
    cls = torch.optim.Adam if spec['kind'] == 'Adam' else torch.optim.AdamW
    return cls(groups, lr=spec['lr'], betas=betas, eps=spec['eps'], foreach=False)


def loss_and_grads(model, x, y):
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss, {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def record(model, x, y, inputs, constants):
    model.eval()  # BatchNorm uses (and does not update) its running statistics
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss, grads = loss_and_grads(model, x, y)
    out = {
        'inputs': inputs,
        'constants': constants,
        'params': [{'name': n, 'shape': list(p.shape), 'decay': p.dim() >= 2, 'data': flat(p)} for n, p in model.named_parameters()],
        'loss': float('%.9g' % loss.item()),
        'grads': {n: flat(g) for n, g in grads.items()},
        'optimizers': {},
    }
    for key, spec in OPTIMIZERS.items():
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(init[n])
        opt = make_optimizer(key, model)
        loss_and_grads(model, x, y)
        opt.step()
        after1 = {n: flat(p) for n, p in model.named_parameters()}
        loss2, grads2 = loss_and_grads(model, x, y)
        opt.step()
        after2 = {n: flat(p) for n, p in model.named_parameters()}
        out['optimizers'][key] = {
            **spec,
            'params1': after1,
            'loss2': float('%.9g' % loss2.item()),
            'grads2': {n: flat(g) for n, g in grads2.items()},
            'params2': after2,
        }
        print(f'  {key}: loss {loss.item():.6f} → {loss2.item():.6f} after one step')
    return out


def conv_case():
    torch.manual_seed(0)
    net = ConvNet()
    with torch.no_grad():
        net.bn.weight.copy_(torch.empty(8).uniform_(1.5, 3.0))
        net.bn.bias.copy_(torch.empty(8).uniform_(0.5, 2.5))
        net.bn.running_mean.copy_(0.3 * torch.randn(8))
        net.bn.running_var.copy_(torch.empty(8).uniform_(0.05, 0.3))
        net.dw.weight.mul_(1.5)
    x = torch.randn(4, 3, 16, 16)
    y = torch.tensor([0, 3, 1, 4])
    net.eval()
    with torch.no_grad():
        pre = net.bn(net.conv1(x))
        dw = net.dw(torch.clamp(pre, 0, 6))
    print(f'conv: ReLU6 inputs below 0 / inside / above 6: {(pre < 0).sum().item()} / {((pre > 0) & (pre < 6)).sum().item()} / {(pre > 6).sum().item()}; '
          f'ReLU inputs ≤ 0: {(dw <= 0).sum().item()} of {dw.numel()}; nearest kink distance {min(pre.abs().min().item(), (pre - 6).abs().min().item(), dw.abs().min().item()):.2e}')
    return record(net, x, y, {'x': entry(x), 'labels': entry(y)},
                  {'bn.running_mean': entry(net.bn.running_mean), 'bn.running_var': entry(net.bn.running_var), 'bn.eps': net.bn.eps})


def transformer_case():
    torch.manual_seed(1)
    net = Block()
    with torch.no_grad():
        for ln in (net.ln1, net.ln2):
            ln.weight.copy_(1 + 0.2 * torch.randn(16))
            ln.bias.copy_(0.1 * torch.randn(16))
        # Sharper attention than the default init gives (scores of a few units, not ≪ 1).
        net.q.weight.mul_(4)
        net.k.weight.mul_(4)
    x = torch.randn(2, 6, 16)
    y = torch.tensor([2, 0])
    print('transformer:')
    return record(net, x, y, {'x': entry(x), 'labels': entry(y)}, {'ln.eps': net.ln1.eps})


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    data = {
        'torch': torch.__version__,
        'dtype': 'float32',
        'layouts': 'row-major; Linear weight [out, in]; Conv weight [out, in/groups, kh, kw]',
        'conv': conv_case(),
        'transformer': transformer_case(),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, 'w') as f:
        json.dump(data, f, separators=(',', ':'))
        f.write('\n')
    print(f'wrote {os.path.normpath(OUT)} ({os.path.getsize(OUT)} bytes), torch {torch.__version__}')


if __name__ == '__main__':
    main()
