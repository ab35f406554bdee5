"""A loaded generator made fast for answering on the CPU, with bitwise the plain model's logits.

Decoding one token reads every weight once, so on a CPU it is bound by how the matrix-vector
products are run. Two things cost time in a plain bf16 transformers model there, and
:func:`prepare` removes both:

* oneDNN reorders a plain bf16 weight into its blocked layout on every product; :class:`PackedLinear`
  keeps each weight reordered once (``torch.ops.mkldnn._reorder_linear_weight``, what
  ``torch.compile``'s freezing pass does) and calls the same kernel on it: about 1.3x faster
  decoding, and faster prompt reading too;
* a layer's query, key and value projections (and its MLP's gate and up projections) read the same
  input: :class:`FusedProjections` runs them as one product and hands each its slice (fewer,
  larger products: about 15% of the matrix time).

Both keep the numbers: the same kernel computes each output element in the same order, so the
outputs are bitwise those of the plain model (``tests/test_inference.py`` compares logits and
decoded answers). Only bf16 weights are packed: float32 products through
the packed path differ in the last bits, so a float32 model is left as it is, and so is an
encoder-decoder (T5 reads its linears' weights outside them). The preallocated key/value cache
that :mod:`rag_pipeline.generator` decodes into (``static_cache``) is the third part of the fast
path, and the one that changes the logits' last bits.

``bench/bench_decode.py`` measures it against the plain model and llama.cpp.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

# Sibling projections that read the same input, fused into one product each: attention's and the gated MLP's
# (Llama, Mistral, Qwen2, Gemma, Phi-3-style naming).
FUSED_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


@functools.cache
def packing_available() -> bool:
    """Whether this torch build has oneDNN's prepacked bf16 linear and it computes bitwise what a plain bf16 linear
    does here (checked once on small seeded products: a CPU without native bf16 may run the two through different
    kernels, and then nothing is packed)."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return False
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 64, generator=gen).bfloat16()
    try:
        packed = PackedLinear(weight, None)
        with torch.no_grad():
            return all(torch.equal(packed(x), torch.nn.functional.linear(x, weight))
                       for x in (torch.randn(rows, 64, generator=gen).bfloat16() for rows in (1, 7)))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


class PackedLinear:
    """A bf16 ``nn.Linear`` whose weight oneDNN has reordered once (an inference-only module: no gradients, no state dict)."""

    def __init__(self, weight: Any, bias: Any | None) -> None:
        import torch

        self.out_features, self.in_features = weight.shape
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), 1)
        self.bias = None if bias is None else bias.detach().contiguous()

    def __call__(self, x: Any) -> Any:
        import torch

        lead = x.shape[:-1]
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, self.in_features), self.packed, self.bias, "none", [], "")
        return y.reshape(*lead, self.out_features)


@functools.cache
def _call_class() -> type:
    import torch

    class Call(torch.nn.Module):
        """An ``nn.Module`` that calls ``fn`` (so that the model's module tree stays a tree of modules)."""

        def __init__(self, fn: Any) -> None:
            super().__init__()
            self.fn = fn

        def forward(self, x: Any) -> Any:
            return self.fn(x)

        def extra_repr(self) -> str:
            return repr(self.fn)

    return Call


def _module(fn: Any) -> Any:
    return _call_class()(fn)


class FusedProjections:
    """Sibling linears that read one input, run as one product: part ``i`` returns its slice of the output.

    The first part called with an input computes all of them; the others called with the same
    tensor object take their slice of that result, which is then dropped. A part called with
    another input (or asked twice) computes the whole product again, so any call order stays
    correct; the model must not change the input in place between the calls (transformers' layers
    do not). The pending result is per thread.
    """

    def __init__(self, linears: list[Any]) -> None:
        import torch

        self.sizes = [lin.weight.shape[0] for lin in linears]
        bias = None
        if any(lin.bias is not None for lin in linears):
            bias = torch.cat([lin.bias if lin.bias is not None else torch.zeros(n, dtype=lin.weight.dtype)
                              for lin, n in zip(linears, self.sizes)])
        self.product = PackedLinear(torch.cat([lin.weight for lin in linears]), bias)
        self.bounds = [sum(self.sizes[:i]) for i in range(len(self.sizes) + 1)]
        self._pending = threading.local()  # (input, output, parts not yet handed out) of this thread's last product

    def part(self, i: int, x: Any) -> Any:
        x_, out, left = getattr(self._pending, "value", (None, None, ()))
        if not (x is x_ and i in left):
            out, left = self.product(x), set(range(len(self.sizes)))
        left.discard(i)
        self._pending.value = (x, out, left) if left else (None, None, ())
        return out[..., self.bounds[i] : self.bounds[i + 1]]

    def __repr__(self) -> str:
        return f"FusedProjections({'+'.join(map(str, self.sizes))})"


def prepare(model: Any) -> str:
    """Pack ``model``'s bf16 linears and fuse its sibling projections in place (CPU, inference only).

    Returns what was done, for the log ("" when nothing applies: another device or dtype, an
    encoder-decoder model, an unmerged peft adapter, or a torch without oneDNN's packed linear).
    """
    param = next(model.parameters())
    # Encoder-decoder models are left as they are: T5 reads its linears' weights outside them, and their
    # cross-attention's projections read two inputs.
    if param.device.type != "cpu" or getattr(model.config, "is_encoder_decoder", False) or not packing_available():
        return ""
    if any(hasattr(m, "base_layer") for m in model.modules()):  # an unmerged peft adapter reads its base layer's weight
        return ""
    fused = packed = 0
    for parent in list(model.modules()):
        children = dict(parent.named_children())
        for group in FUSED_GROUPS:
            linears = [children.get(name) for name in group]
            if all(_plain_bf16(lin) for lin in linears) and len({lin.in_features for lin in linears}) == 1:
                projections = FusedProjections(linears)
                for i, name in enumerate(group):
                    setattr(parent, name, _module(functools.partial(projections.part, i)))
                    children[name] = None
                fused += 1
        for name, child in children.items():
            if _plain_bf16(child):
                setattr(parent, name, _module(PackedLinear(child.weight, child.bias)))
                packed += 1
    if not fused and not packed:
        return ""
    return f"oneDNN-packed bf16 weights ({packed} linears, {fused} fused projection groups)"


def _plain_bf16(module: Any) -> bool:
    import torch

    return type(module) is torch.nn.Linear and module.weight.dtype == torch.bfloat16
