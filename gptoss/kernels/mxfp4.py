"""MXFP4-resident MoE experts: gpt-oss's experts kept as the checkpoint stores them, dequantised per step.

gpt-oss checkpoints store the MoE experts in MXFP4 (OCP microscaling): along each output row,
blocks of 32 input values share one E8M0 scale (a power of two, exponent bias 127) and each value
is an E2M1 (FP4) code, two codes a byte, the low nibble first. Per layer (E experts, hidden H,
intermediate I):

    mlp.experts.gate_up_proj_blocks  uint8 [E, 2I, H/32, 16]   _scales uint8 [E, 2I, H/32]   _bias [E, 2I]
    mlp.experts.down_proj_blocks     uint8 [E, H, I/32, 16]    _scales uint8 [E, H, I/32]    _bias [E, H]

That is 4.25 bits a weight instead of bf16's 16. :class:`Mxfp4Experts` holds these tensors as
they are. At each MoE layer it dequantises what the step needs, the routed experts (all of them
when the step has at least as many routes as there are experts, or when the dense CPU kernel
runs, which runs every expert), into one bf16 scratch buffer (:class:`ExpertsScratch`) that every
layer reuses. It then calls the experts kernel the model is configured with (transformers'
grouped_mm / batched_mm / eager, or kernels/cpu.py's and kernels/gpu.py's) on those weights, laid
out as transformers' ``GptOssExperts`` holds them. :func:`dequantize_mxfp4` gives the same bits as
transformers' ``convert_moe_packed_tensors``, and each kernel computes every routed (token,
expert) pair on its own expert's weights, so a step gives the same bits as the model dequantised
at load.

:class:`Mxfp4GptOssForCausalLM` is ``GptOssForCausalLM`` with these experts, so that
``from_pretrained`` loads the checkpoint's ``*_blocks`` / ``*_scales`` tensors by name, never
building the bf16 experts. :func:`weight_bytes` and :func:`planned_weight_bytes` say what a model
holds, by format; the latter builds the model on the meta device (no weights needed).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts, GptOssForCausalLM
from transformers.quantizers.quantizers_utils import should_convert_module

from gptoss.kernels.cpu import DENSE_EXPERTS

# E2M1 codes 0..15: sign bit 3, then two exponent bits and one mantissa bit.
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
BLOCK = 32  # values sharing one scale
SCALE_BIAS = 127  # E8M0: scale = 2 ** (byte - 127)
# The experts' tensors in the checkpoint, per projection.
PROJECTIONS = ("gate_up_proj", "down_proj")
MXFP4 = "mxfp4"  # the format label of the blocks and scales in weight_bytes()

_TABLES: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
# Integers as wide as two values of a dtype, so that one gather moves a byte's two values.
_PAIR_INTS = {2: torch.int32, 4: torch.int64}
CHUNK_BYTES = 1 << 21  # blocks dequantised at a time: few enough calls per expert, their temporaries in cache


def _table(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Per (scale byte s, code byte b), at ``s << 8 | b``: b's two FP4 values (low nibble first) times
    2 ** (s - 127), rounded once to ``dtype``. One element a pair (an integer twice ``dtype``'s width)
    where such an integer exists, else a row of two."""
    key = (device, dtype)
    if key not in _TABLES:
        fp4 = torch.tensor(FP4_VALUES, dtype=torch.float32)
        byte = torch.arange(256)
        pairs = torch.stack((fp4[byte & 0x0F], fp4[byte >> 4]), dim=-1).to(dtype)
        powers = torch.ldexp(torch.ones(256), byte - SCALE_BIAS).to(dtype)  # exact in float32, 2**-127 included
        table = (powers.view(256, 1, 1) * pairs).view(256 * 256, 2)  # [scale, byte] flattened, then the pair
        wide = _PAIR_INTS.get(table.element_size())
        if wide is not None:
            table = table.view(wide).view(-1)
        _TABLES[key] = table.contiguous().to(device)
    return _TABLES[key]


def dequantize_mxfp4(
    blocks: torch.Tensor,
    scales: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
    dtype: torch.dtype = torch.bfloat16,
    chunk_bytes: int = CHUNK_BYTES,
) -> torch.Tensor:
    """MXFP4 ``blocks`` [..., R, G, 16] and ``scales`` [..., R, G] to [..., G * 32, R] (input-major).

    The layout and the bits of transformers' ``convert_moe_packed_tensors``: each FP4 value times
    its block's power of two, rounded once to ``dtype`` (exact unless it overflows). Written into
    ``out`` when given (contiguous, that shape). Each code byte and its scale byte index one entry
    of a table holding every (scale, byte) pair's two values, so a byte costs one int32-indexed
    gather and no arithmetic; the table was computed by the same rounding, so the bits are the
    same. The work goes about ``chunk_bytes`` of blocks at a time (whole experts, or rows of one
    expert), so the temporaries (the index and the gathered values, 4 bytes each a code byte) stay
    small, yet each chunk is large enough that a CPU shared with other work is not stalled by many
    short parallel calls.
    """
    *lead, rows, groups, width = blocks.shape
    if tuple(scales.shape) != (*lead, rows, groups):
        raise ValueError(f"blocks {tuple(blocks.shape)} and scales {tuple(scales.shape)} do not match")
    n = math.prod(lead)
    cols = groups * width * 2
    if out is None:
        out = torch.empty(*lead, cols, rows, dtype=dtype, device=blocks.device)
    flat = out.view(n, cols, rows)
    table = _table(blocks.device, flat.dtype)
    blocks = blocks.reshape(n, rows, groups, width)
    scales = scales.reshape(n, rows, groups)
    per_expert = rows * groups * width
    if per_expert <= chunk_bytes:  # whole experts a chunk
        e_step, r_step = max(1, chunk_bytes // max(1, per_expert)), rows
    else:  # rows of one expert a chunk
        e_step, r_step = 1, max(1, chunk_bytes // max(1, groups * width))
    e_step = min(e_step, n)
    index = torch.empty(e_step * r_step * groups * width, dtype=torch.int32, device=blocks.device)
    values = torch.empty(index.numel(), *table.shape[1:], dtype=table.dtype, device=blocks.device)
    for e0 in range(0, n, e_step):
        k = min(n, e0 + e_step) - e0
        for r0 in range(0, rows, r_step):
            m = min(rows, r0 + r_step) - r0
            count = k * m * groups * width
            codes, exps = blocks[e0 : e0 + k, r0 : r0 + m], scales[e0 : e0 + k, r0 : r0 + m]
            idx = torch.bitwise_or(codes, (exps.int() << 8).unsqueeze(-1), out=index[:count].view(codes.shape))
            got = torch.index_select(table, 0, idx.view(-1), out=values[:count])
            flat[e0 : e0 + k, :, r0 : r0 + m].copy_(got.view(flat.dtype).view(k, m, cols).transpose(1, 2))
    return out


def quantize_mxfp4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Experts weights [E, in, out] (GptOssExperts' layout) to MXFP4 ``(blocks, scales)``.

    Deterministic: each block's scale is 2 ** (floor(log2(max |w|)) - 2) (the OCP MX rule; E2M1's
    largest exponent is 2), each value rounds to the nearest FP4 value (ties to the smaller
    magnitude), saturating at 6. ``dequantize_mxfp4`` of the result has ``weight``'s shape.
    """
    w = weight.float().transpose(-1, -2).contiguous()  # [E, out, in]: the blocks run along the input
    *lead, rows, cols = w.shape
    if cols % BLOCK:
        raise ValueError(f"the input size {cols} is not a multiple of {BLOCK}")
    w = w.reshape(*lead, rows, cols // BLOCK, BLOCK)
    _, exp = torch.frexp(w.abs().amax(dim=-1))  # max = m * 2**exp, m in [0.5, 1): floor(log2) = exp - 1
    scales = (exp - 1 - 2 + SCALE_BIAS).clamp(0, 254)
    scaled = torch.ldexp(w, (SCALE_BIAS - scales).unsqueeze(-1))
    midpoints = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    code = torch.bucketize(scaled.abs(), midpoints)  # 0..7: index of the nearest magnitude
    code = code | ((scaled < 0) & (code > 0)).long() << 3
    code = code.view(*lead, rows, cols // BLOCK, BLOCK // 2, 2)
    blocks = (code[..., 0] | code[..., 1] << 4).to(torch.uint8)
    return blocks.contiguous(), scales.to(torch.uint8).contiguous()


class ExpertsScratch:
    """bf16 room for one layer's experts, in GptOssExperts' layout, reused by every layer and step."""

    def __init__(self, experts: int, hidden: int, intermediate: int, dtype: torch.dtype, device: Any) -> None:
        self.gate_up = torch.empty(experts, hidden, 2 * intermediate, dtype=dtype, device=device)
        self.down = torch.empty(experts, intermediate, hidden, dtype=dtype, device=device)

    @property
    def nbytes(self) -> int:
        return self.gate_up.nbytes + self.down.nbytes

    def fits(self, layer: Mxfp4Experts) -> bool:
        dtype, device = layer.gate_up_proj_bias.dtype, layer.gate_up_proj_bias.device
        same = self.gate_up.dtype == dtype and self.gate_up.device == device
        shape = (layer.num_experts, layer.hidden_size, 2 * layer.intermediate_size)
        return same and self.gate_up.shape[0] >= shape[0] and tuple(self.gate_up.shape[1:]) == shape[1:]


class DequantizedExperts:
    """What the experts kernels read from an experts module, over dequantised weights of some experts."""

    # GptOssExperts' flags (use_experts_implementation(is_concatenated=False, is_transposed=True, has_bias=True)).
    has_gate = True
    has_bias = True
    is_transposed = True
    is_concatenated = False
    has_post_expert_norm = False
    _is_expert_parallel = False
    _apply_gate = GptOssExperts._apply_gate

    def __init__(
        self, owner: Mxfp4Experts, gate_up: torch.Tensor, gate_up_bias: torch.Tensor, down: torch.Tensor,
        down_bias: torch.Tensor,
    ) -> None:
        self.gate_up_proj, self.gate_up_proj_bias = gate_up, gate_up_bias
        self.down_proj, self.down_proj_bias = down, down_bias
        self.num_experts = gate_up.shape[0]
        self.hidden_size, self.intermediate_size = owner.hidden_size, owner.intermediate_size
        self.alpha, self.limit, self.config = owner.alpha, owner.limit, owner.config
        self.batched_max_tokens = getattr(owner, "batched_max_tokens", 0)  # kernels/gpu.py's step-size choice


# transformers' own loop over experts, for config._experts_implementation == "eager".
_EAGER_FORWARD = getattr(GptOssExperts.forward, "__wrapped__", GptOssExperts.forward)


class Mxfp4Experts(torch.nn.Module):
    """gpt-oss's MoE experts in MXFP4, with GptOssExperts' forward signature and results."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.num_experts = config.num_local_experts
        self.hidden_size = config.hidden_size
        self.intermediate_size = config.intermediate_size
        self.alpha = config.swiglu_alpha
        self.limit = config.swiglu_limit
        e, h, i = self.num_experts, self.hidden_size, self.intermediate_size
        if h % BLOCK or i % BLOCK:
            raise ValueError(f"MXFP4 experts need hidden and intermediate sizes that are multiples of {BLOCK}")

        def frozen(*shape: int, dtype: torch.dtype | None = None) -> torch.nn.Parameter:
            return torch.nn.Parameter(torch.zeros(*shape, dtype=dtype), requires_grad=False)

        self.gate_up_proj_blocks = frozen(e, 2 * i, h // BLOCK, BLOCK // 2, dtype=torch.uint8)
        self.gate_up_proj_scales = frozen(e, 2 * i, h // BLOCK, dtype=torch.uint8)
        self.gate_up_proj_bias = frozen(e, 2 * i)
        self.down_proj_blocks = frozen(e, h, i // BLOCK, BLOCK // 2, dtype=torch.uint8)
        self.down_proj_scales = frozen(e, h, i // BLOCK, dtype=torch.uint8)
        self.down_proj_bias = frozen(e, h)
        self.scratch: ExpertsScratch | None = None  # shared by the model's layers (use_scratch)

    def dequantized(self, ids: torch.Tensor | None = None) -> DequantizedExperts:
        """Experts ``ids`` (sorted; all when None) dequantised into the scratch buffer."""
        if self.scratch is None or not self.scratch.fits(self):
            self.scratch = new_scratch(self)
        gu_bias, d_bias = self.gate_up_proj_bias, self.down_proj_bias
        n = self.num_experts if ids is None else ids.numel()
        if ids is not None:
            gu_bias, d_bias = gu_bias.index_select(0, ids), d_bias.index_select(0, ids)
        gate_up, down = self.scratch.gate_up[:n], self.scratch.down[:n]
        for proj, into in zip(PROJECTIONS, (gate_up, down)):
            blocks, scales = getattr(self, f"{proj}_blocks"), getattr(self, f"{proj}_scales")
            if ids is None:
                dequantize_mxfp4(blocks, scales, out=into)
            elif blocks[0].nbytes <= CHUNK_BYTES:  # small experts: gathered, then done together
                dequantize_mxfp4(blocks.index_select(0, ids), scales.index_select(0, ids), out=into)
            else:  # each routed expert straight from its own blocks, with no copy of them
                for slot, e in enumerate(ids.tolist()):
                    dequantize_mxfp4(blocks[e], scales[e], out=into[slot])
        return DequantizedExperts(self, gate_up, gu_bias, down, d_bias)

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        name = self.config._experts_implementation
        kernel = ALL_EXPERTS_FUNCTIONS.get_interface(name, _EAGER_FORWARD)
        ids = None
        if name != DENSE_EXPERTS and top_k_index.numel() < self.num_experts:
            # Only the routed experts, renumbered in order: each kernel then sees the same
            # (token, expert) pairs, in the same order, on the same weights as with all of them.
            ids, top_k_index = torch.unique(top_k_index, sorted=True, return_inverse=True)
        return kernel(self.dequantized(ids), hidden_states, top_k_index, top_k_weights)

    def to_bf16_experts(self) -> GptOssExperts:
        """A GptOssExperts over this layer's experts dequantised into the scratch buffer (valid until the next step)."""
        view = self.dequantized()
        with torch.device("meta"):
            experts = GptOssExperts(self.config)
        for name in ("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"):
            setattr(experts, name, torch.nn.Parameter(getattr(view, name), requires_grad=False))
        return experts

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, hidden={self.hidden_size}, intermediate={self.intermediate_size}, mxfp4"


def new_scratch(layer: Mxfp4Experts) -> ExpertsScratch:
    bias = layer.gate_up_proj_bias
    return ExpertsScratch(layer.num_experts, layer.hidden_size, layer.intermediate_size, bias.dtype, bias.device)


def mxfp4_layers(model: torch.nn.Module) -> list[Mxfp4Experts]:
    return [m for m in model.modules() if isinstance(m, Mxfp4Experts)]


def use_scratch(model: torch.nn.Module) -> int:
    """One scratch buffer per device for all the model's MXFP4 layers; returns its bytes (0: none)."""
    shared: dict[tuple, ExpertsScratch] = {}
    for layer in mxfp4_layers(model):
        bias = layer.gate_up_proj_bias
        key = (bias.device, bias.dtype, layer.hidden_size, layer.intermediate_size)
        if key not in shared or shared[key].gate_up.shape[0] < layer.num_experts:
            shared[key] = new_scratch(layer)
    for layer in mxfp4_layers(model):
        bias = layer.gate_up_proj_bias
        layer.scratch = shared[(bias.device, bias.dtype, layer.hidden_size, layer.intermediate_size)]
    return sum(s.nbytes for s in shared.values())


def replace_experts(model: torch.nn.Module, modules_to_not_convert: list[str] | None = None) -> int:
    """Swap each GptOssExperts not named by ``modules_to_not_convert`` for Mxfp4Experts; returns how many."""
    swapped = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, GptOssExperts) and should_convert_module(name, modules_to_not_convert):
            model.set_submodule(name, Mxfp4Experts(module.config))
            swapped += 1
    return swapped


class Mxfp4GptOssForCausalLM(GptOssForCausalLM):
    """GptOssForCausalLM whose MoE experts (but those ``modules_to_not_convert`` names) stay in MXFP4.

    Its parameter names are the checkpoint's, so ``from_pretrained`` (given the config without
    its ``quantization_config``, so that transformers' own MXFP4 handling stays out) loads the
    blocks and scales as they are, like every other tensor.
    """

    def __init__(self, config: Any, modules_to_not_convert: list[str] | None = None) -> None:
        super().__init__(config)
        if not replace_experts(self, modules_to_not_convert):
            raise ValueError("no MoE experts left to hold in MXFP4 (modules_to_not_convert names them all)")

    @classmethod
    def _can_set_experts_implementation(cls) -> bool:
        # transformers decides it by reading the class's module source for its experts decorator;
        # the experts kernels this model runs are its parent's.
        return GptOssForCausalLM._can_set_experts_implementation()


class ExpertsProbe(torch.nn.Module):
    """The model's config and its first MXFP4 layer dequantised: a bf16 model's MoE, as the kernel
    choosers in kernels/cpu.py and kernels/gpu.py read it. They pick (and self-check) the experts
    kernel on it; :meth:`finish` hands what they set on the layer to every MXFP4 layer."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self._model_set = model.set_experts_implementation
        self.config = model.config
        self.experts = mxfp4_layers(model)[0].to_bf16_experts()

    def set_experts_implementation(self, name: str) -> None:
        self._model_set(name)

    def finish(self, model: torch.nn.Module) -> None:
        max_tokens = getattr(self.experts, "batched_max_tokens", None)
        if max_tokens is not None:
            for layer in model.modules():
                if isinstance(layer, (Mxfp4Experts, GptOssExperts)):
                    layer.batched_max_tokens = max_tokens


def _format(name: str, tensor: torch.Tensor) -> str:
    if tensor.dtype == torch.uint8 and name.endswith(("_blocks", "_scales")):
        return MXFP4
    return {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}.get(tensor.dtype, str(tensor.dtype))


def weight_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Bytes of the model's parameters and persistent buffers by format: 'mxfp4', 'bf16', 'fp32', ..."""
    out: dict[str, int] = {}
    tensors = list(model.named_parameters())
    for owner_name, owner in model.named_modules():
        for name, buffer in owner.named_buffers(recurse=False):
            if name not in owner._non_persistent_buffers_set:
                tensors.append((f"{owner_name}.{name}", buffer))
    for name, tensor in tensors:
        fmt = _format(name, tensor)
        out[fmt] = out.get(fmt, 0) + tensor.numel() * tensor.element_size()
    return out


def planned_weight_bytes(config: Any, *, mxfp4: bool = True, dtype: torch.dtype = torch.bfloat16) -> dict[str, int]:
    """What loading a gpt-oss checkpoint of ``config`` holds, by format, computed without weights.

    The model is built on the meta device as the loader builds it: MXFP4 experts (but those the
    config's ``quantization_config`` leaves out) when ``mxfp4``, else every expert in ``dtype``,
    and the other weights in ``dtype``.
    """
    quant = getattr(config, "quantization_config", None) or {}
    skip = quant.get("modules_to_not_convert") if isinstance(quant, dict) else quant.modules_to_not_convert
    with torch.device("meta"):
        model = Mxfp4GptOssForCausalLM(config, skip) if mxfp4 else GptOssForCausalLM(config)
    return weight_bytes(model.to(dtype))
