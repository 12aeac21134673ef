/**
 * Graph surgery: cut a model at a tensor ("remove the top"), find where to cut automatically, and merge two
 * graphs into one. Pure functions over ModelProto; nothing here runs a model.
 */
import { GraftError } from '../errors.js';
import { onnx, defaultOpset, type GraphProto, type ModelProto, type NodeProto, type TensorProto, type ValueInfoProto } from './proto.js';

const POOL_OPS = new Set(['GlobalAveragePool', 'QLinearGlobalAveragePool', 'GlobalMaxPool']);

/** Every tensor name produced inside the graph or given to it (inputs and initializers). */
export function tensorNames(graph: GraphProto): Set<string> {
  const names = new Set<string>();
  for (const i of graph.input ?? []) names.add(i.name!);
  for (const t of graph.initializer ?? []) names.add(t.name!);
  for (const n of graph.node ?? []) for (const o of n.output ?? []) if (o) names.add(o);
  return names;
}

/** Keeps only the nodes, initializers and inputs needed to compute `outputs`. */
export function pruneTo(graph: GraphProto, outputs: readonly string[]): GraphProto {
  const producer = new Map<string, NodeProto>();
  for (const n of graph.node ?? []) for (const o of n.output ?? []) if (o) producer.set(o, n);
  const needed = new Set<string>();
  const keep = new Set<NodeProto>();
  const stack = [...outputs];
  while (stack.length) {
    const t = stack.pop()!;
    if (needed.has(t)) continue;
    needed.add(t);
    const n = producer.get(t);
    if (n && !keep.has(n)) {
      keep.add(n);
      for (const i of n.input ?? []) if (i) stack.push(i);
      // Subgraph attributes (If/Loop) may capture outer tensors; keep them conservatively.
      for (const a of n.attribute ?? []) if (a.g) for (const name of tensorNames(a.g)) stack.push(name);
    }
  }
  return {
    ...graph,
    node: (graph.node ?? []).filter((n) => keep.has(n)),
    initializer: (graph.initializer ?? []).filter((t) => needed.has(t.name!)),
    input: (graph.input ?? []).filter((i) => needed.has(i.name!)),
    valueInfo: (graph.valueInfo ?? []).filter((v) => needed.has(v.name!)),
    output: [],
  };
}

export interface CutPoint {
  /** The float tensor to cut at. */
  tensor: string;
  /** How it was chosen, for the user's log. */
  reason: string;
}

/**
 * Finds the tensor feeding the last global pooling before the classifier. For quantized graphs whose
 * pooling reads an int8/uint8 tensor, returns the float tensor a DequantizeLinear makes of it.
 */
export function findCut(model: ModelProto): CutPoint {
  const nodes = model.graph!.node ?? [];
  const pools = nodes.filter((n) => POOL_OPS.has(n.opType!) || isSpatialReduceMean(n));
  const pool = pools[pools.length - 1];
  if (!pool) {
    throw new GraftError('MODEL', 'cannot find a global pooling layer to cut before; name the feature tensor with --cut', {
      ops: [...new Set(nodes.map((n) => n.opType))],
    });
  }
  const x = pool.input![0]!;
  if (pool.opType !== 'QLinearGlobalAveragePool') return { tensor: x, reason: `input of ${pool.opType} node ${pool.name}` };
  const dq = nodes.find((n) => n.opType === 'DequantizeLinear' && n.input![0] === x);
  if (dq) return { tensor: dq.output![0]!, reason: `dequantized input of ${pool.opType} node ${pool.name}` };
  throw new GraftError('MODEL', `the input of ${pool.opType} node ${pool.name} is quantized and never dequantized; name a float tensor with --cut`, {
    node: pool.name,
  });
}

function isSpatialReduceMean(n: NodeProto): boolean {
  if (n.opType !== 'ReduceMean') return false;
  const axes = n.attribute?.find((a) => a.name === 'axes')?.ints?.map(Number);
  return !!axes && axes.length === 2 && ((axes[0] === 2 && axes[1] === 3) || (axes[0] === 1 && axes[1] === 2));
}

export interface CutOptions {
  /** Layout of the cut tensor when it is 4-D: NCHW pools axes 2,3; NHWC pools axes 1,2. */
  layout: 'NCHW' | 'NHWC';
  /** Rank of the cut tensor (as probed by running the model): 2 = already pooled, 3 = token sequence, 4 = feature map. */
  rank: number;
  /** Name of the new output holding [N, D] features. */
  output?: string;
  /**
   * A token sequence [N, T, D]: the class token (the default: ViT, DINOv2, BERT's [CLS]) or the mean over the
   * tokens the `mask` input ([N, T], 1 = real token) marks (sentence-transformers).
   */
  sequence?: { pooling: 'class-token' } | { pooling: 'masked-mean'; mask: string };
  /** L2-normalise the pooled features (sentence-transformers' Normalize; eps 1e-12 as torch's F.normalize). */
  normalize?: boolean;
}

/**
 * "Remove the top": a new model that ends at `tensor`, followed by global average pooling and a flatten so
 * its single output is `[N, D]`. Everything after the cut (the old classifier) is dropped.
 */
export function cutModel(model: ModelProto, tensor: string, options: CutOptions): ModelProto {
  const graph = model.graph!;
  if (!tensorNames(graph).has(tensor)) {
    throw new GraftError('MODEL', `cut tensor "${tensor}" is not in the model`, { tensor, suggestions: suggest(graph, tensor) });
  }
  const output = options.output ?? 'features';
  const pruned = pruneTo(graph, [tensor]);
  const nodes: NodeProto[] = [...(pruned.node ?? [])];
  const initializers: TensorProto[] = [...(pruned.initializer ?? [])];
  if (options.rank === 4) {
    const pooled = `${output}/pooled`;
    if (options.layout === 'NCHW') {
      nodes.push({ opType: 'GlobalAveragePool', input: [tensor], output: [pooled], name: `${output}/GlobalAveragePool` });
    } else {
      nodes.push({
        opType: 'ReduceMean',
        input: [tensor],
        output: [pooled],
        name: `${output}/ReduceMean`,
        attribute: [{ name: 'axes', type: onnx.AttributeProto.AttributeType.INTS, ints: [1, 2] }, { name: 'keepdims', type: onnx.AttributeProto.AttributeType.INT, i: 0 }],
      });
    }
    nodes.push({ opType: 'Flatten', input: [pooled], output: [output], name: `${output}/Flatten` });
  } else if (options.rank === 2) {
    nodes.push({ opType: 'Identity', input: [tensor], output: [output], name: `${output}/Identity` });
  } else if (options.rank === 3) {
    const opset = defaultOpset(model);
    const I = onnx.AttributeProto.AttributeType;
    const ints = (name: string, values: number[]) => {
      initializers.push({ name, dataType: onnx.TensorProto.DataType.INT64, dims: [values.length], int64Data: values });
      return name;
    };
    // Unsqueeze and ReduceSum took their axes as an attribute before opset 13, as an input since.
    const axesOp = (op: 'Unsqueeze' | 'ReduceSum', x: string, axes: number[], out: string, extra: Array<{ name: string; type: number; i: number }> = []) =>
      nodes.push(
        opset >= 13
          ? { opType: op, input: [x, ints(`${out}/axes`, axes)], output: [out], name: `${out}/${op}`, attribute: extra }
          : { opType: op, input: [x], output: [out], name: `${out}/${op}`, attribute: [{ name: 'axes', type: I.INTS, ints: axes }, ...extra] },
      );
    const pooled = options.normalize ? `${output}/unnormalized` : output;
    if (options.sequence?.pooling === 'masked-mean') {
      // sum_t(h · m) / max(sum_t m, 1e-9), as sentence-transformers' mean pooling.
      const m = `${output}/mask`;
      nodes.push({ opType: 'Cast', input: [options.sequence.mask], output: [m], name: `${m}/Cast`, attribute: [{ name: 'to', type: I.INT, i: onnx.TensorProto.DataType.FLOAT }] });
      axesOp('Unsqueeze', m, [2], `${m}/expanded`);
      nodes.push({ opType: 'Mul', input: [tensor, `${m}/expanded`], output: [`${output}/masked`], name: `${output}/masked/Mul` });
      const keep = [{ name: 'keepdims', type: I.INT, i: 0 }];
      axesOp('ReduceSum', `${output}/masked`, [1], `${output}/sum`, keep);
      axesOp('ReduceSum', `${m}/expanded`, [1], `${output}/count`, keep);
      initializers.push({ name: `${output}/min_count`, dataType: onnx.TensorProto.DataType.FLOAT, dims: [], floatData: [1e-9] });
      nodes.push({ opType: 'Max', input: [`${output}/count`, `${output}/min_count`], output: [`${output}/count_clamped`], name: `${output}/count/Max` });
      nodes.push({ opType: 'Div', input: [`${output}/sum`, `${output}/count_clamped`], output: [pooled], name: `${output}/MeanPool` });
    } else {
      // The class token (timm's 'token' pooling).
      const index = `${output}/token_index`;
      initializers.push({ name: index, dataType: onnx.TensorProto.DataType.INT64, dims: [], int64Data: [0] });
      nodes.push({ opType: 'Gather', input: [tensor, index], output: [pooled], name: `${output}/ClassToken`, attribute: [{ name: 'axis', type: I.INT, i: 1 }] });
    }
    if (options.normalize) {
      // x / max(‖x‖₂, 1e-12), as torch.nn.functional.normalize.
      nodes.push({ opType: 'Mul', input: [pooled, pooled], output: [`${output}/squares`], name: `${output}/squares/Mul` });
      axesOp('ReduceSum', `${output}/squares`, [1], `${output}/sum_squares`, [{ name: 'keepdims', type: I.INT, i: 1 }]);
      nodes.push({ opType: 'Sqrt', input: [`${output}/sum_squares`], output: [`${output}/norm`], name: `${output}/norm/Sqrt` });
      initializers.push({ name: `${output}/min_norm`, dataType: onnx.TensorProto.DataType.FLOAT, dims: [], floatData: [1e-12] });
      nodes.push({ opType: 'Max', input: [`${output}/norm`, `${output}/min_norm`], output: [`${output}/norm_clamped`], name: `${output}/norm/Max` });
      nodes.push({ opType: 'Div', input: [pooled, `${output}/norm_clamped`], output: [output], name: `${output}/Normalize` });
    }
  } else {
    nodes.push({ opType: 'Flatten', input: [tensor], output: [output], name: `${output}/Flatten` });
  }
  if (options.layout === 'NHWC' && options.rank === 4 && defaultOpset(model) >= 18) {
    throw new GraftError('MODEL', 'NHWC pooling at opset ≥ 18 is not supported yet', { tensor });
  }
  const out: ValueInfoProto = {
    name: output,
    type: { tensorType: { elemType: onnx.TensorProto.DataType.FLOAT, shape: { dim: [{ dimParam: 'N' }, { dimParam: 'D' }] } } },
  };
  return onnx.ModelProto.create({
    ...model,
    graph: { ...pruned, input: graph.input?.filter((i) => pruned.input?.includes(i) || (options.sequence?.pooling === 'masked-mean' && i.name === options.sequence.mask)), node: nodes, initializer: initializers, output: [out], valueInfo: pruned.valueInfo },
  });
}

/** Up to five tensor names that contain the requested name, to help a mistyped --cut. */
function suggest(graph: GraphProto, wanted: string): string[] {
  const needle = wanted.toLowerCase();
  return [...tensorNames(graph)].filter((n) => n.toLowerCase().includes(needle)).slice(0, 5);
}

/**
 * One model out of two: `first`'s output `link` feeds `second`'s single input. Every name of `second` is
 * prefixed so the graphs cannot collide. The result keeps `first`'s opsets (the second graph must only
 * use ops whose meaning is the same at that opset) and takes `second`'s outputs.
 */
export function mergeModels(first: ModelProto, second: ModelProto, link: string, prefix: string): ModelProto {
  const a = first.graph!;
  const b = second.graph!;
  if (!(a.output ?? []).some((o) => o.name === link)) throw new GraftError('MODEL', `merge: the first model has no output "${link}"`, { link });
  const bInputs = (b.input ?? []).filter((i) => !(b.initializer ?? []).some((t) => t.name === i.name));
  if (bInputs.length !== 1) throw new GraftError('MODEL', `merge: the second model must have exactly one input, it has ${bInputs.length}`, {});
  const bInput = bInputs[0]!.name!;
  const outputNames = new Set((b.output ?? []).map((o) => o.name!));
  // Outputs keep their plain names; everything else is prefixed.
  const rename = (name: string): string => (name === '' ? '' : name === bInput ? link : outputNames.has(name) ? name : `${prefix}${name}`);
  const nodes = (b.node ?? []).map((n) => ({
    ...n,
    name: `${prefix}${n.name ?? ''}`,
    input: (n.input ?? []).map(rename),
    output: (n.output ?? []).map(rename),
  }));
  const initializers = (b.initializer ?? []).map((t) => ({ ...t, name: rename(t.name!) }));
  const outputs = [...(b.output ?? [])];
  const opsetImport = [...first.opsetImport];
  for (const o of second.opsetImport) {
    if (!opsetImport.some((x) => (x.domain ?? '') === (o.domain ?? ''))) opsetImport.push(o);
  }
  return onnx.ModelProto.create({
    ...first,
    opsetImport,
    graph: {
      ...a,
      node: [...(a.node ?? []), ...nodes],
      initializer: [...(a.initializer ?? []), ...initializers],
      output: outputs,
      valueInfo: [...(a.valueInfo ?? [])],
    },
  });
}

/** Nodes in an order where every node comes after the producers of its inputs. */
export function topologicalOrder(graph: GraphProto): NodeProto[] {
  const nodes = graph.node ?? [];
  const producer = new Map<string, NodeProto>();
  for (const n of nodes) for (const o of n.output ?? []) if (o) producer.set(o, n);
  const done = new Set<NodeProto>();
  const order: NodeProto[] = [];
  const visit = (n: NodeProto) => {
    // Iterative DFS: deep backbones would overflow the call stack otherwise.
    const stack: Array<[NodeProto, number]> = [[n, 0]];
    while (stack.length) {
      const top = stack[stack.length - 1]!;
      const [node, i] = top;
      if (done.has(node)) {
        stack.pop();
        continue;
      }
      const inputs = node.input ?? [];
      if (i < inputs.length) {
        top[1]++;
        const p = producer.get(inputs[i]!);
        if (p && !done.has(p)) stack.push([p, 0]);
      } else {
        done.add(node);
        order.push(node);
        stack.pop();
      }
    }
  };
  for (const n of nodes) visit(n);
  return order;
}

export interface Boundary {
  /** The tensor through which every path from the input to the output passes (besides side tensors). */
  tensor: string;
  /** Index in topological order of the node that produces it (nodes after it form the suffix). */
  index: number;
  /** Whether it closes a block: produced by a merge (Add, Sum, Concat, Mul of activations) or feeding a branch. */
  block: boolean;
  /**
   * In a graph whose nodes are named by encoder layer (`/encoder/layer.3/…`, `layer_1/…`): the layer this
   * boundary is the output of, when it is the last boundary of that layer; -1 for the input of the first
   * layer (the embeddings' output). "The last K layers" of a transformer counts these.
   */
  layer?: number;
}

/** The encoder layer a node belongs to, read off its name (`layer.3`, `layer_3`, `layers.3`, `layer/3`), if any. */
export function layerOf(node: NodeProto): number | undefined {
  const m = /(?:^|[/._])layers?[._/-]?(\d+)(?:[/._]|$)/.exec(node.name ?? '');
  return m ? Number(m[1]) : undefined;
}

/**
 * Tensors whose whole ancestry holds no weight (a float initializer or Constant of more than one element):
 * the graph inputs themselves and what cheap arithmetic makes of them — a transformer's attention-mask bias,
 * position ids, shapes. A split may leave them out of the crossing set: the suffix recomputes them from the
 * graph inputs it is fed next to the boundary.
 */
export function sideTensors(graph: GraphProto): Set<string> {
  const weights = new Set<string>();
  for (const t of graph.initializer ?? []) if (isWeight(t)) weights.add(t.name!);
  const side = new Set<string>((graph.input ?? []).map((i) => i.name!).filter((n) => !weights.has(n)));
  const initializers = new Set((graph.initializer ?? []).map((t) => t.name!));
  for (const n of topologicalOrder(graph)) {
    if (n.opType === 'Constant') {
      const value = n.attribute?.find((a) => a.name === 'value')?.t;
      if (!value || !isWeight(value)) for (const o of n.output ?? []) if (o) side.add(o);
      continue;
    }
    const inputs = (n.input ?? []).filter((t) => t);
    if (inputs.every((t) => side.has(t) || (initializers.has(t) && !weights.has(t)))) for (const o of n.output ?? []) if (o) side.add(o);
  }
  return side;
}

function isWeight(t: TensorProto): boolean {
  const float = t.dataType === onnx.TensorProto.DataType.FLOAT || t.dataType === onnx.TensorProto.DataType.DOUBLE || t.dataType === onnx.TensorProto.DataType.FLOAT16;
  const size = (t.dims ?? []).reduce<number>((a, d) => a * Number(d), 1);
  return float && size > 1;
}

/**
 * The tensors at which a graph can be split into a frozen prefix and a trainable suffix with ONE tensor
 * crossing between them (side tensors aside: see sideTensors), in order from input to `output`. Constants
 * and initializers do not count as crossing. Block boundaries (residual joins, branch points) are flagged:
 * "the last K blocks" counts those; encoder-layer outputs carry their layer.
 */
export function boundaries(graph: GraphProto, output: string): Boundary[] {
  const pruned = pruneTo(graph, [output]);
  const order = topologicalOrder(pruned);
  const side = sideTensors(pruned);
  const constant = new Set<string>((pruned.initializer ?? []).map((t) => t.name!));
  for (const n of order) if (n.opType === 'Constant') for (const o of n.output ?? []) constant.add(o);
  const position = new Map<string, number>();
  for (const i of pruned.input ?? []) if (!constant.has(i.name!)) position.set(i.name!, -1);
  order.forEach((n, i) => {
    for (const o of n.output ?? []) if (o && !constant.has(o)) position.set(o, i);
  });
  const lastUse = new Map<string, number>();
  const consumers = new Map<string, number>();
  order.forEach((n, i) => {
    for (const t of n.input ?? []) {
      if (!position.has(t)) continue;
      lastUse.set(t, i);
      consumers.set(t, (consumers.get(t) ?? 0) + 1);
    }
  });
  const producerOf = new Map<string, NodeProto>();
  for (const n of order) for (const o of n.output ?? []) if (o) producerOf.set(o, n);
  const result: Boundary[] = [];
  // Sweep split points: after node i, the crossing set is every activation produced at or before i and used after i.
  const live = new Set<string>();
  for (const [t, p] of position) if (p === -1 && (lastUse.get(t) ?? -1) >= 0 && !side.has(t)) live.add(t);
  order.forEach((n, i) => {
    for (const o of n.output ?? []) if (o && position.get(o) === i && !side.has(o) && ((lastUse.get(o) ?? -1) > i || o === output)) live.add(o);
    for (const t of [...live]) if ((lastUse.get(t) ?? -1) <= i && t !== output) live.delete(t);
    if (live.size !== 1 || i === order.length - 1) return;
    const tensor = [...live][0]!;
    if (position.get(tensor) !== i) return;
    const op = producerOf.get(tensor)?.opType ?? '';
    const merge = ['Add', 'Sum', 'Concat', 'Mul'].includes(op) && (producerOf.get(tensor)?.input ?? []).filter((x) => position.has(x) && !side.has(x)).length >= 2;
    result.push({ tensor, index: i, block: merge || (consumers.get(tensor) ?? 0) >= 2 });
  });
  markLayers(result, order);
  return result;
}

/** Flags the last boundary of each encoder layer (and the last one before the first layer) with its layer. */
function markLayers(result: Boundary[], order: NodeProto[]): void {
  const layers = order.map(layerOf);
  if (!layers.some((l) => l !== undefined)) return;
  // The layer of each node, carried forward over unnamed nodes (the embeddings before layer 0 get -1).
  let current = -1;
  const at = layers.map((l) => (current = l ?? current));
  result.forEach((b, k) => {
    const next = result[k + 1];
    if (!next || at[next.index] !== at[b.index]) b.layer = at[b.index]!;
  });
}

export interface Suffix {
  /** The nodes after the split, in topological order, with the side computations they need recomputed. */
  nodes: NodeProto[];
  /** Graph inputs the suffix reads besides the boundary (a transformer's attention_mask), in graph order. */
  sideInputs: string[];
}

/**
 * The part of a graph after `boundary`: nodes that compute `output` from it (plus initializers), and the
 * side tensors (sideTensors) they read, recomputed from the graph inputs named in `sideInputs`.
 */
export function suffixNodes(graph: GraphProto, boundary: string, output: string): NodeProto[];
export function suffixNodes(graph: GraphProto, boundary: string, output: string, withSide: true): Suffix;
export function suffixNodes(graph: GraphProto, boundary: string, output: string, withSide?: true): NodeProto[] | Suffix {
  const pruned = pruneTo(graph, [output]);
  const order = topologicalOrder(pruned);
  const prefix = new Set(pruneTo(pruned, [boundary]).node ?? []);
  const side = sideTensors(pruned);
  const producer = new Map<string, NodeProto>();
  for (const n of order) for (const o of n.output ?? []) if (o) producer.set(o, n);
  const graphInputs = new Set((pruned.input ?? []).map((i) => i.name!));
  // Constant nodes are copied into the suffix rather than crossing the split.
  const chosen = new Set(order.filter((n) => !prefix.has(n) || n.opType === 'Constant'));
  const sideInputs = new Set<string>();
  const available = new Set<string>([boundary, ...(pruned.initializer ?? []).map((t) => t.name!)]);
  for (const n of chosen) for (const o of n.output ?? []) if (o) available.add(o);
  const pull = (t: string, reader: NodeProto) => {
    const stack = [t];
    while (stack.length) {
      const x = stack.pop()!;
      if (available.has(x)) continue;
      if (!side.has(x)) {
        throw new GraftError('MODEL', `cannot split at "${boundary}": node ${reader.name} (${reader.opType}) also reads "${x}" from before it`, { boundary, node: reader.name, tensor: x });
      }
      available.add(x);
      if (graphInputs.has(x) && !producer.has(x)) {
        sideInputs.add(x);
        continue;
      }
      const p = producer.get(x)!;
      chosen.add(p);
      for (const o of p.output ?? []) if (o) available.add(o);
      for (const i of p.input ?? []) if (i) stack.push(i);
    }
  };
  for (const n of [...chosen]) for (const t of n.input ?? []) if (t) pull(t, n);
  const nodes = order.filter((n) => chosen.has(n));
  if (sideInputs.size > 0 && !withSide) {
    throw new GraftError('MODEL', `cannot split at "${boundary}": the part after it also reads the graph input(s) ${[...sideInputs].join(', ')}`, { boundary });
  }
  if (!withSide) return nodes;
  return { nodes, sideInputs: (pruned.input ?? []).map((i) => i.name!).filter((n) => sideInputs.has(n)) };
}
