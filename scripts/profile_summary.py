"""Where a profiled run's time went: op types and their kinds, from the trace alone.

`--hooks=profile` records TensorFlow's trace of a few steps; TensorBoard's Profile tab
reads it with the optional tensorboard-plugin-profile. This reads the same file with
TensorFlow's own protobufs and prints, for the traced steps, each kind of op's share of
the op time (convolutions, BatchNorm, pooling, reductions, elementwise, optimizer, ...)
and the slowest op types:

  python train.py --flagfile=configs/cifar10_fast.flags --train_steps=20 \
      --hooks="profile(start=10, stop=20)" --model_dir=/tmp/prof ...
  python scripts/profile_summary.py /tmp/prof            # newest trace under the run
  python scripts/profile_summary.py TRACE.xplane.pb --top=30

Op time is summed over TensorFlow's executor threads, which may run ops side by side,
so the shares are of op time, not of wall time; `busy` is the fraction of the traced
window in which at least one op ran (the rest: Python, dispatch, waiting for input).
"""

import collections
import glob
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_integer("top", 15, "op types listed, slowest first")
FLAGS = flags.FLAGS

# Op type (without oneDNN's `_MklNative` prefix: base_type) -> kind; types not listed
# are matched by the prefixes below, else "other".
KINDS = {
    "convolution": ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "FusedConv2D",
                    "DepthwiseConv2dNative", "DepthwiseConv2dNativeBackpropInput",
                    "DepthwiseConv2dNativeBackpropFilter"),
    "matmul": ("MatMul", "BatchMatMulV2", "BatchMatMulV3", "FusedMatMul", "Einsum"),
    "batchnorm": ("FusedBatchNormV3", "FusedBatchNormGradV3", "FusedBatchNormEx"),
    "pooling": ("MaxPool", "MaxPoolGrad", "AvgPool", "AvgPoolGrad"),
    # Global pooling is a reduction (`GlobalMaxPooling2D` is `Max`), but so are a loss's
    # `Mean` and a metric's `Sum`: the trace cannot tell them apart, so they stand alone.
    "reductions": ("Max", "Min", "Mean", "Sum", "Prod", "All", "Any", "ArgMax", "ArgMin",
                   "InTopKV2"),
    "optimizer and variables": ("ReadVariableOp", "AssignVariableOp", "AssignAddVariableOp",
                                "AssignSubVariableOp", "VarHandleOp"),
    "layout and copies": ("Transpose", "Reshape", "Pad", "MirrorPad", "Slice", "StridedSlice",
                          "StridedSliceGrad", "ConcatV2", "Pack", "Unpack", "GatherV2",
                          "Tile", "Identity", "Split", "SplitV", "Reverse", "ReverseV2",
                          "TensorScatterUpdate", "ScatterNd", "Fill", "ZerosLike", "OnesLike"),
    "collectives": ("CollectiveReduceV2", "CollectiveGatherV2", "NcclAllReduce",
                    "CollectiveAllToAllV2"),
    "input": ("IteratorGetNext", "IteratorGetNextAsOptional", "OptionalGetValue"),
}
PREFIXES = (("ResourceApply", "optimizer and variables"), ("Unsorted", "elementwise"),
            ("Reduce", "reductions"))
ELEMENTWISE = {
    "Add", "AddV2", "AddN", "Sub", "Mul", "RealDiv", "DivNoNan", "Div", "Neg", "Square",
    "Sqrt", "Rsqrt", "Exp", "Log", "Erf", "Erfc", "Tanh", "Sigmoid", "Relu", "ReluGrad",
    "RsqrtGrad", "SqrtGrad", "TanhGrad", "SigmoidGrad", "Relu6Grad",
    "Cast", "Select", "SelectV2", "Maximum", "Minimum", "Greater", "GreaterEqual", "Less",
    "LessEqual", "Equal", "NotEqual", "LogicalAnd", "LogicalOr", "LogicalNot",
    "IsFinite", "Softmax", "LogSoftmax", "BiasAdd",
    "BiasAddGrad", "SquaredDifference", "Abs", "Sign", "Pow", "FloorMod", "FloorDiv",
    "OneHot", "SoftmaxCrossEntropyWithLogits", "L2Loss", "Rank", "Shape",
    "Size", "BroadcastTo", "BroadcastArgs", "BroadcastGradientArgs", "Range", "Relu6",
}


def base_type(op_type):
  """The op type without the prefix of oneDNN's or a fused variant:
  `_MklNativeConv2DBackpropInput` -> `Conv2DBackpropInput`, `_FusedConv2D` -> `FusedConv2D`."""
  return re.sub(r"^_(MklNative|Mkl)?", "", op_type)


def kind_of(op_type):
  op_type = base_type(op_type)
  for kind, types in KINDS.items():
    if op_type in types:
      return kind
  for prefix, kind in PREFIXES:
    if op_type.startswith(prefix):
      return kind
  return "elementwise" if op_type in ELEMENTWISE else "other"


def find_trace(path):
  """`path` itself if it is a trace file, else the newest *.xplane.pb under it."""
  if os.path.isfile(path):
    return path
  traces = glob.glob(os.path.join(path, "**", "*.xplane.pb"), recursive=True)
  if not traces:
    raise FileNotFoundError(f"no *.xplane.pb under {path}: run with --hooks=profile")
  return max(traces, key=os.path.getmtime)


def op_events(trace):
  """[(op type, start ps, duration ps)] of the TensorFlow ops the executor threads ran."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  space = xplane_pb2.XSpace()
  with open(trace, "rb") as f:
    space.ParseFromString(f.read())
  events = []
  for plane in space.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_Compute"):
        continue
      for event in line.events:
        metadata = plane.event_metadata[event.metadata_id]
        op_type = metadata.display_name
        if op_type and metadata.name.endswith(":" + op_type):  # "scope/name:Type"
          start = line.timestamp_ns * 1000 + event.offset_ps
          events.append((op_type, start, event.duration_ps))
  return events


def summarize(events):
  """{"window_ps", "busy", "by_kind": {kind: ps}, "by_type": {type: (ps, count)}}."""
  if not events:
    raise ValueError("the trace holds no TensorFlow op: were any steps traced?")
  by_kind, by_type = collections.Counter(), {}
  for op_type, _, duration in events:
    by_kind[kind_of(op_type)] += duration
    total, count = by_type.get(op_type, (0, 0))
    by_type[op_type] = (total + duration, count + 1)
  spans = sorted((start, start + duration) for _, start, duration in events)
  busy, (open_start, open_end) = 0, spans[0]
  for start, end in spans[1:]:
    if start > open_end:
      busy, open_start = busy + open_end - open_start, start
    open_end = max(open_end, end)
  busy += open_end - open_start
  window = max(end for _, end in spans) - spans[0][0]
  return {"window_ps": window, "busy": busy / window, "by_kind": dict(by_kind),
          "by_type": by_type}


def format_summary(summary, top):
  op_time = sum(summary["by_kind"].values())
  lines = [f"traced window {summary['window_ps'] / 1e12:.3f} s, ops running "
           f"{summary['busy']:.1%} of it; op time {op_time / 1e12:.3f} s", "",
           "| kind | share of op time |", "| --- | ---: |"]
  for kind, ps in sorted(summary["by_kind"].items(), key=lambda item: -item[1]):
    lines.append(f"| {kind} | {ps / op_time:.1%} |")
  lines += ["", "| op type | kind | share | calls | mean ms |",
            "| --- | --- | ---: | ---: | ---: |"]
  slowest = sorted(summary["by_type"].items(), key=lambda item: -item[1][0])[:top]
  for op_type, (ps, count) in slowest:
    lines.append(f"| {op_type} | {kind_of(op_type)} | {ps / op_time:.1%} | {count} | "
                 f"{ps / count / 1e9:.3f} |")
  return "\n".join(lines)


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: profile_summary.py RUN_DIR_OR_TRACE [--top=N]")
  try:
    trace = find_trace(argv[1])
    print(trace)
    print(format_summary(summarize(op_events(trace)), FLAGS.top))
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
