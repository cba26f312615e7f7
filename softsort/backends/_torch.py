"""PyTorch adapter: eager loops, one module-level ``autograd.Function``, native logsumexp.

The Function takes the forward/backward callables as arguments (Keras-style) rather than
defining a class per call, and uses ``setup_context`` so ``torch.func.grad``/``vjp`` work.
Its ``vmap`` rule folds the vmapped dimension into the core's batch: the core already
solves any batch of problems in one Sinkhorn, so vmap costs no Python loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.utils.checkpoint

from ._base import Backend, State


class _Plan(torch.autograd.Function):
    @staticmethod
    def forward(rules: Any, nout: int, static: Any, *inputs: Any) -> Any:
        return rules[0](static, *inputs)

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        rules, nout, static, *tensors = inputs
        ctx.rules, ctx.nout, ctx.static, ctx.num_inputs = rules, nout, static, len(tensors)
        ctx.static_forward_error = _NO_FORWARD
        ctx.mark_non_differentiable(*output[nout:])
        ctx.save_for_backward(*tensors, *output)
        ctx.save_for_forward(*tensors, *output)

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        # Recorded under create_graph=True: the saved plan's own grad_fn is this Function,
        # so second derivatives use the implicit rule again, never the Sinkhorn loop.
        saved = ctx.saved_tensors
        inputs, outputs = saved[: ctx.num_inputs], saved[ctx.num_inputs :]
        cts = tuple(grads[: ctx.nout])
        in_grads = ctx.rules[1](ctx.static, inputs, outputs, cts)
        return (None, None, None, *in_grads)

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> Any:
        if ctx.rules[2] is None:
            raise NotImplementedError(ctx.static_forward_error)
        saved = ctx.saved_tensors
        inputs, outputs = saved[: ctx.num_inputs], saved[ctx.num_inputs :]
        d_out = ctx.rules[2](ctx.static, inputs, outputs, tuple(tangents[3:]))
        return (*d_out, *(None for _ in outputs[ctx.nout :]))

    @staticmethod
    def vmap(info: Any, in_dims: Any, rules: Any, nout: int, static: Any, *inputs: Any) -> Any:
        size = info.batch_size
        folded = []
        for x, dim in zip(inputs, in_dims[3:], strict=True):
            x = x.expand(size, *x.shape) if dim is None else x.movedim(dim, 0)
            folded.append(x.reshape(size * x.shape[1], *x.shape[2:]))
        outputs = _Plan.apply(rules, nout, static, *folded)
        unfolded: list[Any] = []
        out_dims: list[int | None] = []
        for o in outputs:
            if o.ndim == 0:  # the iteration count: one for the whole folded batch
                unfolded.append(o)
                out_dims.append(None)
            else:
                unfolded.append(o.reshape(size, o.shape[0] // size, *o.shape[1:]))
                out_dims.append(0)
        return tuple(unfolded), tuple(out_dims)


#: What forward mode says where a function has a reverse rule only.
_NO_FORWARD = (
    "softsort: forward-mode differentiation is not available here: a problem whose plan exceeds "
    "memory_budget is solved block by block, with reverse-mode derivatives only (and the multivariate "
    "maps have reverse mode only); use reverse mode, or raise memory_budget"
)


def _peeled(x: Any) -> Any:
    """The plain tensor under every torch.func wrapper (a vmapped tensor: all its examples)."""
    while torch._C._functorch.is_functorch_wrapped_tensor(x):
        x = torch._C._functorch.get_unwrapped(x)
    return x


def _select(pred: Any, new: Any, old: Any) -> Any:
    """``new`` where the 0-d ``pred`` holds, else ``old``, for every array of a state."""
    if isinstance(new, tuple):
        items = tuple(_select(pred, n, o) for n, o in zip(new, old, strict=True))
        return type(new)(*items) if hasattr(new, "_fields") else items
    if new is None or old is None:
        return new
    return torch.where(pred, new, old)


class TorchBackend(Backend):
    name = "torch"

    def clip(self, x: Any, low: float | None, high: float | None) -> Any:
        # torch.clamp is one native call (2 us); the wrapped maximum/minimum with a Python
        # scalar take about 6 us each.
        return torch.clamp(x, low, high)

    def floored_exp(self, f: Any, d: Any, log_floor: float) -> Any:
        # clamp first: PyTorch's CPU exp is ~30x slower where it underflows. In place when
        # nothing records d (no autograd, no torch.func transform): a fresh 4 MB result
        # costs page faults (1000 x 1000: 3.3 ms out of place against 0.37 ms in place
        # in a fresh process, where glibc hands freed blocks back to the system).
        if self.writable(d):
            return torch.sub(f[..., :, None], d, out=d).clamp_(min=log_floor).exp_()
        return torch.exp(torch.clamp(f[..., :, None] - d, min=log_floor))

    def writable(self, x: Any) -> bool:
        # Not while autograd records: x itself may not require grad and still be saved by
        # an op whose other operand does (the cost or kernel when only target_weights, q or
        # the weights require grad, under implicit_diff=False); updating it in place then
        # fails in backward. The implicit path's forward runs in an autograd.Function,
        # where grad mode is off.
        return not torch.is_grad_enabled() and not x.requires_grad and self.is_concrete(x)

    def matvec(self, mat: Any, vec: Any) -> Any:
        # As a row vector times the transposed view: PyTorch's CPU bmm of (256, 100, 100)
        # by (256, 100, 1) took 0.73 ms, of (256, 1, 100) by the transpose 0.095 ms (same
        # at n = m = 1000). JAX is the other way round (4x slower at 1 x 1000 x 1000).
        blocks = _row_blocks(mat)
        if blocks > 1:
            split = mat.reshape(*mat.shape[:-2], blocks, mat.shape[-2] // blocks, mat.shape[-1])
            return (vec[..., None, None, :] @ split.mT).reshape(*mat.shape[:-1])
        return (vec[..., None, :] @ mat.mT)[..., 0, :]

    def vecmat(self, vec: Any, mat: Any) -> Any:
        blocks = _row_blocks(mat)
        if blocks > 1:
            shape = (*mat.shape[:-2], blocks, mat.shape[-2] // blocks)
            split = mat.reshape(*shape, mat.shape[-1])
            return (vec.reshape(*shape)[..., None, :] @ split).sum(dim=-3)[..., 0, :]
        return (vec[..., None, :] @ mat)[..., 0, :]

    def is_concrete(self, x: Any) -> bool:
        if torch.compiler.is_compiling():
            return False
        # torch.func.grad/vjp wrap tensors in GradTrackingTensors whose values can be read
        # (as in eager autograd): unwrap those levels. A BatchedTensor (torch.func.vmap) or
        # a functionalized tensor holds no single value. Meta tensors hold none at all.
        functorch = torch._C._functorch
        while functorch.is_functorch_wrapped_tensor(x):
            if not functorch.is_gradtrackingtensor(x):
                return False
            x = functorch.get_unwrapped(x)
        return x.device.type != "meta"

    def stop_gradient(self, x: Any) -> Any:
        return x.detach()

    def custom_vjp(
        self,
        fwd: Callable[..., Any],
        bwd: Callable[..., Any],
        differentiable_outputs: int,
        jvp: Callable[..., Any] | None = None,
    ) -> Callable[..., Any]:
        rules = (fwd, bwd, jvp)

        def f(static: Any, *inputs: Any) -> Any:
            return _Plan.apply(rules, differentiable_outputs, static, *inputs)

        return f

    def checkpoint(self, fn: Callable[..., Any], *like: Any) -> Callable[..., Any]:
        # Only while autograd records; non-reentrant: closed-over tensors (target weights,
        # levels q) get their gradients too.
        if not torch.is_grad_enabled():
            return fn

        def checkpointed(*args: Any) -> Any:
            return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)

        return checkpointed

    def while_loop(self, cond: Callable[[State], Any], body: Callable[[State], State], state: State) -> State:
        pred = cond(state)
        if not torch._C._functorch.is_functorch_wrapped_tensor(pred):
            while bool(pred):
                state = body(state)
                pred = cond(state)
            return state
        # Under torch.func transforms (vmap, grad, jvp) the condition may differ between the
        # examples of a vmap and cannot be read through it. Run while any example's holds,
        # each example's state frozen once its own condition is False: the same iterates
        # as one loop per example.
        while bool(_peeled(pred).any()):
            state = _select(pred, body(state), state)
            pred = cond(state)
        return state

    def cond(self, pred: Any, true_fn: Callable[[Any], Any], false_fn: Callable[[Any], Any], operand: Any) -> Any:
        if not torch._C._functorch.is_functorch_wrapped_tensor(pred):
            return true_fn(operand) if bool(pred) else false_fn(operand)
        # Per-example branches under a transform: both computed, each example's taken.
        return _select(pred, true_fn(operand), false_fn(operand))

    def logsumexp(self, x: Any, axis: int) -> Any:
        return torch.logsumexp(x, dim=axis)

    #: 1000 rows of 10, exact-dual start: 6.1 ms by sort and searches, 4.5 ms pairwise; at
    #: rows of 32 no faster (exact_dual timed alone, float32, 2-thread CPU).
    pairwise_rows = 16

    def cache_chunk_bytes(self, like: Any) -> int | None:
        return CACHE_CHUNK_BYTES if like.device.type == "cpu" else None

    def count_below(self, v: Any, w: Any, strict: bool) -> Any:
        return torch.searchsorted(w.contiguous(), v.contiguous(), right=not strict)

    def inverse_permutation(self, order: Any) -> Any:
        positions = torch.arange(order.shape[-1], device=order.device).expand(order.shape)
        return torch.zeros_like(order).scatter(-1, order, positions)


#: Plans per chunk of a batch on a CPU (see ``Backend.cache_chunk_bytes``); chosen with
#: ``benchmarks/chunk_sizes.py`` on a 2-core CPU (results/chunk_sizes.json). CUDA: never split.
CACHE_CHUNK_BYTES = 8 << 20

#: Smallest matrix (entries) whose CPU matrix-vector products are split into row blocks.
SPLIT_MIN_SIZE = 2**16


def _row_blocks(mat: Any) -> int:
    """Row blocks to split a CPU matrix-vector product of a small batch into (1: none).

    MKL's sgemv in PyTorch's CPU wheels runs on one thread (52 us for 1000 x 1000 float32
    with 1 or 2 threads; OpenBLAS in NumPy: 23 us on 2), while a batched product spreads
    its batch over the threads: the rows of ``mat`` split into one block per thread make
    a batch (35 us on 2 threads). Only for contiguous matrices (a reshape must not copy),
    batches smaller than the thread count, and rows that divide evenly.
    """
    threads = torch.get_num_threads()
    batch = math.prod(mat.shape[:-2])
    if threads < 2 or batch >= threads or mat.device.type != "cpu" or not mat.is_contiguous():
        return 1
    if math.prod(mat.shape[-2:]) < SPLIT_MIN_SIZE:
        return 1
    blocks = threads // batch
    return blocks if mat.shape[-2] % blocks == 0 else 1
