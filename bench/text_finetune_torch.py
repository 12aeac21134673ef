"""PyTorch reference for bench/text-finetune.ts: one training step (forward + backward + AdamW) of the last 2
encoder layers of a MiniLM-L6-shaped BERT + graft's default text head (masked mean pooling, standardisation,
Linear 384→512, ReLU, dropout 0.5, Linear 512→2), batch 32 × 128 tokens, on cached boundary activations, from
the weights graft trains (written by the bench to a folder: index.json + raw float32 files in the ONNX graph's
layout, MatMul weights [in, out]).

Run by bench/text-finetune.ts as
  LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 OMP_NUM_THREADS=T OPENBLAS_NUM_THREADS=T \
    /usr/bin/python3 bench/text_finetune_torch.py DIR T STEPS dropout,nodropout check|nocheck
with Debian's python3-torch (1.13). The layers are transformers' BertLayer as graft's graph computes it
(scripts/torch_bert_reference.py: LayerNorm eps 1e-12, exact erf GELU, mask bias finfo(float32).min), with
BERT's training dropout: nn.Dropout(p) on the attention probabilities and on both residual branches (p = 0.1 in
`dropout`, 0 in `nodropout`); the head's dropout 0.5 in both.

`check`: before timing, the loss and every gradient at graft's initial weights, with graft's head mask and no
encoder dropout, against graft's first `nodropout` step (index.json's loss, g*.bin).
Prints one JSON object: {"torch": version, "threads": T, "check": {...}, "ms": {variant: {median, min}}}.
"""
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):  # BertSelfAttention, absolute positions
    def __init__(self, hidden, heads, p):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(p)

    def split(self, t):
        n, l, _ = t.shape
        return t.view(n, l, self.heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x, extended_mask):
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + extended_mask
        context = torch.matmul(self.dropout(F.softmax(scores, dim=-1)), v)
        n, _, l, _ = context.shape
        return context.permute(0, 2, 1, 3).contiguous().view(n, l, self.heads * self.head_dim)


class SelfOutput(nn.Module):  # BertSelfOutput
    def __init__(self, hidden, eps, p):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(p)

    def forward(self, h, x):
        return self.LayerNorm(self.dropout(self.dense(h)) + x)


class Attention(nn.Module):  # BertAttention
    def __init__(self, hidden, heads, eps, p):
        super().__init__()
        self.self = SelfAttention(hidden, heads, p)
        self.output = SelfOutput(hidden, eps, p)

    def forward(self, x, extended_mask):
        return self.output(self.self(x, extended_mask), x)


class Intermediate(nn.Module):  # BertIntermediate, hidden_act "gelu" (exact erf)
    def __init__(self, hidden, intermediate):
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)

    def forward(self, x):
        return F.gelu(self.dense(x))


class Output(nn.Module):  # BertOutput
    def __init__(self, hidden, intermediate, eps, p):
        super().__init__()
        self.dense = nn.Linear(intermediate, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(p)

    def forward(self, h, x):
        return self.LayerNorm(self.dropout(self.dense(h)) + x)


class Layer(nn.Module):  # BertLayer
    def __init__(self, cfg, p):
        super().__init__()
        self.attention = Attention(cfg['hidden'], cfg['heads'], cfg['eps'], p)
        self.intermediate = Intermediate(cfg['hidden'], cfg['intermediate'])
        self.output = Output(cfg['hidden'], cfg['intermediate'], cfg['eps'], p)

    def forward(self, x, extended_mask):
        a = self.attention(x, extended_mask)
        return self.output(self.intermediate(a), a)


class Head(nn.Module):  # graft's mlp head (src/head/head.ts forward): standardise, fc1, ReLU, dropout, fc2
    def __init__(self, cfg):
        super().__init__()
        self.register_buffer('mean', torch.zeros(cfg['hidden']))
        self.register_buffer('inv_std', torch.ones(cfg['hidden']))
        self.fc1 = nn.Linear(cfg['hidden'], cfg['headHidden'])
        self.fc2 = nn.Linear(cfg['headHidden'], cfg['classes'])
        self.dropout = nn.Dropout(cfg['headDropout'])

    def forward(self, x, mask=None):
        h = F.relu(self.fc1((x - self.mean) * self.inv_std))
        return self.fc2(h * mask if mask is not None else self.dropout(h))


class Net(nn.Module):
    """Encoder layers firstLayer… (parameter names as BertModel's) → masked mean → head."""

    def __init__(self, cfg, p):
        super().__init__()
        self.first = cfg['firstLayer']
        self.encoder = nn.Module()
        # BertModel's names: encoder.layer.<i>; the frozen layers before `first` are not built.
        self.encoder.layer = nn.ModuleDict({str(self.first + i): Layer(cfg, p) for i in range(cfg['layers'])})
        self.head = Head(cfg)

    def forward(self, x, mask, head_mask=None):
        extended = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        h = x
        for layer in self.encoder.layer.values():
            h = layer(h, extended)
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(dim=1) / m.sum(dim=1), head_mask)


def load(folder, index, entry_file, dtype, shape):
    return torch.from_numpy(np.fromfile(os.path.join(folder, entry_file), dtype=dtype).reshape(shape).copy())


def make(folder, index, p):
    """The network at graft's initial weights (MatMul [in, out] → Linear [out, in])."""
    net = Net(index['config'], p)
    named = dict(net.named_parameters())
    loaded = set()
    with torch.no_grad():
        for e in index['params']:
            w = load(folder, index, e['file'], np.float32, e['shape'])
            if e['linear']:
                w = w.t().contiguous()
            named[e['name']].copy_(w)
            loaded.add(e['name'])
    missing = set(named) - loaded
    if missing:
        raise SystemExit(f'parameters graft did not write: {sorted(missing)}')
    return net


def optimizer(net, spec):
    """graft's groups: the backbone at lr / lrMult, the head at lr; weight decay on matrices only."""
    groups = []
    for part, lr in (('encoder.', spec['lr'] / spec['lrMult']), ('head.', spec['lr'])):
        named = [(n, q) for n, q in net.named_parameters() if n.startswith(part)]
        groups.append({'params': [q for _, q in named if q.dim() >= 2], 'lr': lr, 'weight_decay': spec['weightDecay']})
        groups.append({'params': [q for _, q in named if q.dim() < 2], 'lr': lr, 'weight_decay': 0.0})
    return torch.optim.AdamW(groups, lr=spec['lr'])


def main():
    folder, threads, steps, variants, do_check = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(','), sys.argv[5] == 'check'
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with open(os.path.join(folder, 'index.json')) as f:
        index = json.load(f)
    B, L, H = index['batch'], index['length'], index['config']['hidden']
    x = load(folder, index, index['boundary'], np.float32, (B, L, H))
    mask = load(folder, index, index['attentionMask'], np.int64, (B, L))
    y = load(folder, index, index['labels'], np.int64, (B,))
    result = {'torch': torch.__version__, 'threads': threads, 'ms': {}}

    if do_check:
        net = make(folder, index, 0.0).train()
        head_mask = load(folder, index, index['headMask'], np.float32, (B, index['config']['headHidden']))
        loss = F.cross_entropy(net(x, mask, head_mask), y)
        loss.backward()
        named = dict(net.named_parameters())
        worst, worst_name, skipped = 0.0, '', []
        for e in index['params']:
            g = load(folder, index, e['grad'], np.float32, e['shape'])
            t = named[e['name']].grad
            if e['linear']:
                t = t.t()
            # The key bias has no gradient in exact arithmetic (softmax is shift-invariant): only rounding noise.
            if e['name'].endswith('attention.self.key.bias'):
                skipped.append(e['name'])
                continue
            rel = ((t - g).norm() / g.norm().clamp_min(1e-30)).item()
            if rel > worst:
                worst, worst_name = rel, e['name']
        result['check'] = {
            'loss': loss.item(),
            'graftLoss': index['loss'],
            'lossRelDiff': abs(loss.item() - index['loss']) / abs(index['loss']),
            'maxGradRelDiff': worst,
            'worstGrad': worst_name,
            'params': len(index['params']),
            'skipped': skipped,
        }
        print(f"check: torch loss {loss.item():.7f}, graft {index['loss']:.7f} (rel {result['check']['lossRelDiff']:.1e}); "
              f"largest gradient difference ‖Δg‖/‖g‖ {worst:.1e} ({worst_name})", file=sys.stderr)

    for variant in variants:
        net = make(folder, index, 0.1 if variant == 'dropout' else 0.0).train()
        opt = optimizer(net, index['optimizer'])
        times = []
        for step in range(steps):
            start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x, mask), y)
            loss.backward()
            opt.step()
            if step >= 5:
                times.append((time.perf_counter() - start) * 1000)
        result['ms'][variant] = {'median': statistics.median(times), 'min': min(times)}
    print(json.dumps(result))


if __name__ == '__main__':
    main()
