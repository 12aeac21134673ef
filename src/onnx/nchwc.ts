/**
 * Depthwise convolutions on ONNX Runtime's NCHWc kernels.
 *
 * ONNX Runtime's CPU provider runs a depthwise Conv in NCHW through im2col and one tiny matrix product per
 * channel: 5 ms for 32×576×14×14, and 19-32 ms for the batch-grouped Conv that computes its weight
 * gradient. Its own NCHWc kernels (channels in blocks of 8 or 16, `com.microsoft.nchwc` ops, which its graph
 * optimizer uses for constant weights only) run the same in 0.9 and 1.8 ms. This rewrite puts them in
 * place for depthwise Convs whose weights are computed or fed (training graphs): the input reordered to
 * blocks (`ReorderInput`, once per tensor, whatever Conv reads it), the weight (C, 1, kh, kw) reordered to
 * (C/B, kh, kw, B) — which is the blocked layout of its (1, C, kh, kw) view, so `ReorderInput` does that too —,
 * the output reordered back to NCHW. A tensor that is a Reshape of (N, C, …) to (1, N·C, …) (how a depthwise
 * weight gradient views X and dY) shares the blocked copy of its source, since the two layouts coincide
 * when B divides C.
 *
 * The ops exist only in ONNX Runtime's CPU provider, and their block size depends on the CPU (AVX-512: 16,
 * AVX2: 8, none: no NCHWc); ask the runtime for it (`nchwcBlockSize` in `train/runtime.ts`) and leave graphs alone where it has
 * none. Results equal the plain Conv up to float rounding.
 */
import { GraphBuilder, makeAttribute } from './builder.js';
import { attr, onnx, toNumber, type ModelProto, type NodeProto } from './proto.js';
import { declaredShapes, inferShapes, isSize, topologicalOrder, type StaticShape } from './shapes.js';

export const NCHWC_DOMAIN = 'com.microsoft.nchwc';

/** Rewrites the model's 2-D depthwise Convs whose channel count the block size divides; returns how many. */
export function useNchwcDepthwise(model: ModelProto, block: number): { model: ModelProto; rewritten: number } {
  const graph = model.graph!;
  if (block <= 1) return { model, rewritten: 0 };
  const nodes = topologicalOrder(graph.node ?? []);
  const shapes = inferShapes(nodes, graph.input ?? [], graph.initializer ?? [], declaredShapes(graph.valueInfo ?? []));
  const producer = new Map<string, NodeProto>();
  for (const n of nodes) for (const o of n.output ?? []) if (o) producer.set(o, n);

  const b = new GraphBuilder(graph.name ?? 'graph');
  for (const t of [...(graph.input ?? []), ...(graph.output ?? [])]) b.fresh(t.name!);
  for (const t of graph.initializer ?? []) b.fresh(t.name!);
  for (const n of nodes) for (const t of [n.name, ...(n.input ?? []), ...(n.output ?? [])]) if (t) b.fresh(t);

  const copies = new Map<string, string>();
  const reshape = (t: string, dims: readonly number[]) => b.op('Reshape', [t, b.int64(`${t}_shape`, dims)]);
  /** The blocked copy of t, an (N, C, H, W) tensor with B | C, made once. */
  const blocked = (t: string): string => {
    let out = copies.get(t);
    if (!out) {
      out = b.op('ReorderInput', [t], {}, { domain: NCHWC_DOMAIN, name: b.fresh(`${t}/ReorderInput`) });
      copies.set(t, out);
    }
    return out;
  };
  const blockable = (s: StaticShape | undefined, view: StaticShape): s is StaticShape =>
    !!s && s.length === 4 && isSize(s[1]) && s[1] % block === 0 && isSize(s[2]) && s[2] === view[2] && s[3] === view[3];
  /**
   * A tensor of shape `view` holding t's values in blocked layout. (N, C, h, w), (1, N·C, h, w) and, for a
   * weight, (N·C, 1, h, w) all have the same blocked bytes when B divides C: a reshape of a blocked copy.
   */
  const asBlocked = (t: string, view: StaticShape): string => {
    const src = producer.get(t);
    const srcShape = src?.opType === 'Reshape' ? shapes.get(src.input![0]!) : undefined;
    const fixed = view.every(isSize);
    if (src && fixed && blockable(srcShape, view)) return reshape(blocked(src.input![0]!), view as number[]);
    const own = shapes.get(t);
    if (blockable(own, view) && own.every((d, i) => d === view[i])) return blocked(t);
    const dims = view as number[]; // static from here: only the input x of a forward Conv may have a symbolic batch
    if (blockable(own, view)) return reshape(blocked(t), dims);
    // A depthwise weight (C, 1, kh, kw): through its (1, C, kh, kw) view.
    return reshape(blocked(reshape(t, [1, dims[0]! * dims[1]!, dims[2]!, dims[3]!])), dims);
  };

  let rewritten = 0;
  const rewrittenNodes: NodeProto[] = [];
  for (const n of nodes) {
    const shape = (t: string | undefined) => (t ? shapes.get(t) : undefined);
    const [x, w, bias] = n.input ?? [];
    const xs = shape(x);
    const ws = shape(w);
    const group = attr(n, 'group') ? toNumber(attr(n, 'group')!.i as number) : 1;
    const autoPad = attr(n, 'auto_pad')?.s ? new TextDecoder().decode(attr(n, 'auto_pad')!.s!) : 'NOTSET';
    // Depthwise: a (C, 1, kh, kw) weight with C groups, so x has C channels too (ONNX: C_in = group · W.shape[1]).
    const depthwise =
      n.opType === 'Conv' && (n.domain ?? '') === '' && ws?.length === 4 && ws.every(isSize) && (xs === undefined || xs.length === 4) &&
      group > 1 && group % block === 0 && ws[0] === group && ws[1] === 1 && autoPad === 'NOTSET';
    if (!depthwise) {
      rewrittenNodes.push(n);
      continue;
    }
    const wView = ws as number[];
    const wb = asBlocked(w!, wView);
    const attributes = (n.attribute ?? []).filter((a) => a.name !== 'kernel_shape');
    const conv = b.op('Conv', [xs ? asBlocked(x!, xs) : blocked(x!), wb, ...(bias ? [bias] : [])], {}, { domain: NCHWC_DOMAIN, name: `${n.name}/nchwc` });
    b.nodes[b.nodes.length - 1]!.attribute = [...attributes, { name: 'kernel_shape', type: onnx.AttributeProto.AttributeType.INTS, ints: [wView[2]!, wView[3]!] }];
    // (Its output keeps the Conv's name, which the builder holds as used: the node is made here.)
    b.nodes.push({ opType: 'ReorderOutput', domain: NCHWC_DOMAIN, input: [conv], output: [n.output![0]!], name: `${n.name}/ReorderOutput`, attribute: [makeAttribute('channels', group)] });
    // The builder's nodes so far (reorders, the Conv) go in this node's place, keeping topological order.
    rewrittenNodes.push(...b.nodes.splice(0));
    rewritten++;
  }
  if (rewritten === 0) return { model, rewritten };
  const opsetImport = [...(model.opsetImport ?? []).filter((o) => o.domain !== NCHWC_DOMAIN), { domain: NCHWC_DOMAIN, version: 1 }];
  return {
    model: onnx.ModelProto.create({ ...model, opsetImport, graph: { ...graph, node: rewrittenNodes, initializer: [...(graph.initializer ?? []), ...b.initializers] } }),
    rewritten,
  };
}
