#!/usr/bin/python3
"""PyTorch autograd reference for test/torch-bert.test.ts: one BERT encoder layer (as Hugging Face's BertLayer
computes it), masked-mean pooling and a linear head, with two AdamW steps; written to test/fixtures/torch-bert.json.

The test suite reads only the JSON fixture; Python is needed only to regenerate it:

    apt-get update && apt-get install -y python3-torch      # Debian 12's PyTorch
    /usr/bin/python3 scripts/torch_bert_reference.py        # writes test/fixtures/torch-bert.json

(use /usr/bin/python3: the `python3` first on PATH may be another Python without torch). Plain torch: the
`transformers` package is not needed; the layer below is BertLayer's eval-mode arithmetic, line for line.

The committed fixture was produced by Debian's python3-torch 1.13.1+dfsg-4 (torch.__version__ 1.13.0a0),
CPU, float32, one thread; the version is also recorded in the fixture ("torch").

The network (hidden 32, 4 heads of 8, intermediate 64, LayerNorm eps 1e-12, dropout off):
    x [3, 7, 32], attention_mask [3, 7] (rows of 7, 5 and 3 real tokens: padding in two rows), labels [3]
    extended mask = (1 − mask[:, None, None, :]) · finfo(float32).min      (transformers ≥ 4.30)
    BertSelfAttention: Q, K, V = Linear(x) → [N, heads, L, 8]; softmax(Q·Kᵀ / √8 + mask) · V → [N, L, 32]
    BertSelfOutput:    LayerNorm(Linear(context) + x)
    BertIntermediate:  GELU (exact, erf) of Linear 32→64
    BertOutput:        LayerNorm(Linear 64→32 + attention output)
    pooled = Σ_t h·m / Σ_t m (masked mean over tokens) → Linear 32→3 → cross-entropy (mean)
Parameters carry Hugging Face's names (`encoder.layer.0.attention.self.query.weight`, …, `head.weight`) and
torch layouts (Linear weight [out, in]). Initialisation: torch's Linear defaults, Q and K weights ×3 (attention
sharper than uniform), LayerNorm γ = 1 + 0.2·N(0, 1), β = 0.1·N(0, 1): no degenerate gradients.

The key bias. A key bias b adds q·b to every score of a query's row, which softmax ignores: its gradient is
exactly 0, and in float32 it is rounding noise (~1e-10 here) that no two implementations share. Adam's first
step on it, lr·g/(|g| + ε), would turn that noise into an arbitrary step of up to lr. It stays a parameter
(BertLayer has it; its gradient is recorded and the test checks it is ≈ 0), flagged `zeroGradient`, and the
optimizer does not step it (torch: it is in no parameter group; graft: not given to AdamW), which changes
nothing else: the loss does not depend on it.

What is recorded (float32, flattened row-major, with shapes): the inputs (with their dtype), every parameter's
initial value (`decay`: rank ≥ 2, the tensors that take weight decay; `zeroGradient` as above), the loss and
every gradient at the initial parameters; then for AdamW (lr 1e-2, betas 0.9/0.999, eps 1e-8, weight decay 1e-2
on the `decay` tensors only, as two parameter groups), stepping twice on the same batch: the parameters after
step 1, the loss and gradients at those parameters, the parameters after step 2. The record has the shape that
scripts/torch_reference.py writes, so test/support/torch-fixture.ts compares both fixtures with the same code.

Adam and tiny gradient elements. Among the ~8 000 gradient elements some are always within ~1e-7 of 0 (here
down to 1.5e-7 in a tensor whose largest is 0.04), and Adam's first step lr·g/(|g| + ε) turns a float32
difference of a few 1e-9 in such an element (well inside any gradient tolerance) into a parameter difference
of ~1e-5. No seed avoids it at this size; test/torch-bert.test.ts therefore lets each parameter element differ
also by what the gradient tolerance implies for its update (test/support/torch-fixture.ts,
propagateGradientTolerance), and this script records the data as it is.
"""
import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'test', 'fixtures', 'torch-bert.json')

HIDDEN, HEADS, INTERMEDIATE, EPS, CLASSES = 32, 4, 64, 1e-12, 3
SEED = 2
OPTIMIZERS = {
    'adamw': {'kind': 'AdamW', 'lr': 1e-2, 'weightDecay': 1e-2, 'beta1': 0.9, 'beta2': 0.999, 'eps': 1e-8},
}


def flat(t):
    """Float32 values as JSON numbers with 9 significant digits (enough to round-trip float32)."""
    t = t.detach().to(torch.float32).reshape(-1)
    return [float('%.9g' % v) for v in t.tolist()]


def entry(t):
    if t.is_floating_point():
        return {'shape': list(t.shape), 'dtype': 'float32', 'data': flat(t)}
    return {'shape': list(t.shape), 'dtype': 'int64', 'data': t.reshape(-1).tolist()}


class SelfAttention(nn.Module):  # transformers' BertSelfAttention, eval mode, absolute positions
    def __init__(self):
        super().__init__()
        self.query = nn.Linear(HIDDEN, HIDDEN)
        self.key = nn.Linear(HIDDEN, HIDDEN)
        self.value = nn.Linear(HIDDEN, HIDDEN)

    def heads(self, t):
        n, l, _ = t.shape
        return t.view(n, l, HEADS, HIDDEN // HEADS).permute(0, 2, 1, 3)

    def forward(self, x, extended_mask):
        q, k, v = self.heads(self.query(x)), self.heads(self.key(x)), self.heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(HIDDEN // HEADS) + extended_mask
        context = torch.matmul(nn.functional.softmax(scores, dim=-1), v)
        n, _, l, _ = context.shape
        return context.permute(0, 2, 1, 3).contiguous().view(n, l, HIDDEN)


class SelfOutput(nn.Module):  # BertSelfOutput
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(HIDDEN, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=EPS)

    def forward(self, h, x):
        return self.LayerNorm(self.dense(h) + x)


class Attention(nn.Module):  # BertAttention
    def __init__(self):
        super().__init__()
        self.self = SelfAttention()
        self.output = SelfOutput()

    def forward(self, x, extended_mask):
        return self.output(self.self(x, extended_mask), x)


class Intermediate(nn.Module):  # BertIntermediate, hidden_act "gelu" (exact)
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(HIDDEN, INTERMEDIATE)

    def forward(self, x):
        return F.gelu(self.dense(x))


class Output(nn.Module):  # BertOutput
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(INTERMEDIATE, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=EPS)

    def forward(self, h, x):
        return self.LayerNorm(self.dense(h) + x)


class Layer(nn.Module):  # BertLayer
    def __init__(self):
        super().__init__()
        self.attention = Attention()
        self.intermediate = Intermediate()
        self.output = Output()

    def forward(self, x, extended_mask):
        a = self.attention(x, extended_mask)
        return self.output(self.intermediate(a), a)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.ModuleList([Layer()])


class Net(nn.Module):
    """encoder.layer.0 (parameter names as BertModel's) → masked mean → head."""

    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.head = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x, mask):
        extended = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        h = self.encoder.layer[0](x, extended)
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(dim=1) / m.sum(dim=1))


def zero_gradient(name):
    return name.endswith('attention.self.key.bias')


def make_optimizer(key, model):
    spec = OPTIMIZERS[key]
    named = [(n, p) for n, p in model.named_parameters() if not zero_gradient(n)]
    decay = [p for _, p in named if p.dim() >= 2]
    plain = [p for _, p in named if p.dim() < 2]
    groups = [{'params': decay, 'weight_decay': spec['weightDecay']}, {'params': plain, 'weight_decay': 0.0}]
    return torch.optim.AdamW(groups, lr=spec['lr'], betas=(spec['beta1'], spec['beta2']), eps=spec['eps'], foreach=False)


def loss_and_grads(model, x, mask, y):
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x, mask), y)
    loss.backward()
    return loss, {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def record(model, x, mask, y):
    model.eval()  # dropout off (there is none here anyway)
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss, grads = loss_and_grads(model, x, mask, y)
    out = {
        'inputs': {'x': entry(x), 'attention_mask': entry(mask), 'labels': entry(y)},
        'constants': {'eps': EPS, 'heads': HEADS, 'maskValue': float(torch.finfo(torch.float32).min)},
        'params': [{'name': n, 'shape': list(p.shape), 'decay': p.dim() >= 2, **({'zeroGradient': True} if zero_gradient(n) else {}), 'data': flat(p)}
                   for n, p in model.named_parameters()],
        'loss': float('%.9g' % loss.item()),
        'grads': {n: flat(g) for n, g in grads.items()},
        'optimizers': {},
    }
    for n, g in grads.items():
        if zero_gradient(n):
            print(f'  {n}: |gradient| ≤ {g.abs().max().item():.1e} (exactly 0 in exact arithmetic)')
    for key, spec in OPTIMIZERS.items():
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(init[n])
        opt = make_optimizer(key, model)
        loss_and_grads(model, x, mask, y)
        opt.step()
        after1 = {n: flat(p) for n, p in model.named_parameters()}
        loss2, grads2 = loss_and_grads(model, x, mask, y)
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


def make_case(seed):
    """The network (initialised as described above), x, the attention mask and the labels."""
    torch.manual_seed(seed)
    net = Net()
    layer = net.encoder.layer[0]
    with torch.no_grad():
        for ln in (layer.attention.output.LayerNorm, layer.output.LayerNorm):
            ln.weight.copy_(1 + 0.2 * torch.randn(HIDDEN))
            ln.bias.copy_(0.1 * torch.randn(HIDDEN))
        layer.attention.self.query.weight.mul_(3)
        layer.attention.self.key.weight.mul_(3)
    x = torch.randn(3, 7, HIDDEN)
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4])
    y = torch.tensor([2, 0, 1])
    return net, x, mask, y


def describe(net, x, mask):
    layer = net.encoder.layer[0]
    with torch.no_grad():
        extended = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        att = layer.attention.self
        q, k = att.heads(att.query(x)), att.heads(att.key(x))
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(HIDDEN // HEADS) + extended, dim=-1)
        gelu_in = layer.intermediate.dense(layer.attention(x, extended))
    print(f'bert layer: largest attention weight per query, mean {probs.max(dim=-1).values.mean().item():.2f}; '
          f'masked keys get {probs[1, :, :, 5:].max().item():.1e}; GELU inputs in [{gelu_in.min().item():.2f}, {gelu_in.max().item():.2f}]')


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    data = {
        'torch': torch.__version__,
        'dtype': 'float32',
        'layouts': 'row-major; Linear weight [out, in]',
    }
    net, x, mask, y = make_case(SEED)
    describe(net, x, mask)
    data['bert'] = {'seed': SEED, **record(net, x, mask, y)}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, 'w') as f:
        json.dump(data, f, separators=(',', ':'))
        f.write('\n')
    print(f'wrote {os.path.normpath(OUT)} ({os.path.getsize(OUT)} bytes), torch {torch.__version__}')


if __name__ == '__main__':
    main()
