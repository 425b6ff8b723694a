"""Torch side of the engine: a continuously batched KV cache and a per-sequence sampler.

All running sequences share one transformers ``DynamicCache`` laid out on a common, left-padded
timeline: each row's real tokens are right-aligned, padding columns are masked out by the 2-D
attention mask, and ``position_ids`` are per row, so a row computes exactly what it would
compute alone. New requests are prefilled in their own cache and merged in (left-padding the
shorter timeline); finished rows are dropped with an index select; columns that became padding
for every row are trimmed. This runs only on the engine thread.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from gptoss.engine.types import DEFAULT_CPU_KV_TOKENS, SamplingParams
from gptoss.kernels.decode_forward import lean_decode, supports_lean_decode

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """The running batch: cache, attention mask over the shared timeline, next positions."""

    cache: DynamicCache
    mask: torch.Tensor  # [B, T] long, 1 = real token
    positions: torch.Tensor  # [B] long, position id of each row's next token

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])


def default_kv_budget(model: torch.nn.Module, fraction: float = 0.85) -> int:
    """KV-cache tokens that fit: on CUDA, ``fraction`` of the memory free after loading."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return DEFAULT_CPU_KV_TOKENS
    c = model.config
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    elem = torch.empty((), dtype=next(model.parameters()).dtype).element_size()
    per_token = c.num_hidden_layers * 2 * kv_heads * head_dim * elem
    free, _total = torch.cuda.mem_get_info(device)
    return max(8192, int(free * fraction) // per_token)


def _pad_left(x: torch.Tensor, n: int) -> torch.Tensor:
    """Left-pad dim -2 (the time axis of a [B, H, T, D] KV tensor) with n zero columns."""
    return F.pad(x, (0, 0, n, 0)) if n > 0 else x


class ModelRunner:
    """Owns the model and the running batch; every method is called from the engine thread."""

    def __init__(self, model: torch.nn.Module, lean_decode: bool = True) -> None:
        self.model = model
        self.config = model.config
        self.device = next(model.parameters()).device
        self.sliding_window = getattr(self.config, "sliding_window", None) or 0
        self.batch: Batch | None = None
        # Decode steps through decode_forward (same ops, less Python) where that is exact here.
        self.lean_decode = lean_decode and supports_lean_decode(model) and lean_decode_agrees(model)

    # --- cache surgery ---------------------------------------------------------------------------
    def _layer_target_len(self, layer, timeline: int) -> int:
        if getattr(layer, "is_sliding", False):
            return min(timeline, self.sliding_window - 1)
        return timeline

    def _merge(self, a: Batch, b: Batch) -> Batch:
        """Concatenate two batches along the batch axis on a common left-padded timeline."""
        timeline = max(a.length, b.length)
        for la, lb in zip(a.cache.layers, b.cache.layers):
            target = self._layer_target_len(la, timeline)
            keys, values = [], []
            for layer in (la, lb):
                k, v = layer.keys, layer.values
                keys.append(_pad_left(k, target - k.shape[-2]))
                values.append(_pad_left(v, target - v.shape[-2]))
            la.keys = torch.cat(keys, dim=0)
            la.values = torch.cat(values, dim=0)
            if hasattr(la, "cumulative_length"):
                la.cumulative_length = timeline
        mask = torch.cat(
            [F.pad(a.mask, (timeline - a.length, 0)), F.pad(b.mask, (timeline - b.length, 0))], dim=0
        )
        return Batch(a.cache, mask, torch.cat([a.positions, b.positions]))

    def _trim(self, batch: Batch) -> None:
        """Drop leading timeline columns that are padding for every row (after rows left)."""
        real = batch.mask.any(dim=0)
        if bool(real[0]):
            return
        nonzero = torch.nonzero(real)
        cut = int(nonzero[0]) if len(nonzero) else batch.length
        new_len = batch.length - cut
        for layer in batch.cache.layers:
            target = self._layer_target_len(layer, new_len)
            if layer.keys.shape[-2] > target:
                layer.keys = layer.keys[:, :, layer.keys.shape[-2] - target :]
                layer.values = layer.values[:, :, layer.values.shape[-2] - target :]
            if hasattr(layer, "cumulative_length"):
                layer.cumulative_length = new_len
        batch.mask = batch.mask[:, cut:]

    def keep_rows(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` of the running batch (in that order)."""
        assert self.batch is not None
        if len(rows) == 0:
            self.batch = None
            return
        if len(rows) == self.batch.size and list(rows) == list(range(self.batch.size)):
            return
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        for layer in self.batch.cache.layers:
            layer.keys = layer.keys.index_select(0, idx)
            layer.values = layer.values.index_select(0, idx)
        self.batch.mask = self.batch.mask.index_select(0, idx)
        self.batch.positions = self.batch.positions.index_select(0, idx)
        self._trim(self.batch)

    # --- forward passes --------------------------------------------------------------------------
    def prefill(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Run the prompts (left-padded together), append them to the batch; return last logits [n, V]."""
        logits, new = self.prefill_apart(prompts)
        self.join(new)
        return logits

    @torch.inference_mode()
    def join(self, new: Batch) -> None:
        """Merge prefilled rows into the running batch."""
        self.batch = new if self.batch is None else self._merge(self.batch, new)

    @torch.inference_mode()
    def prefill_apart(self, prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, Batch]:
        """Run the prompts (left-padded together) in a cache of their own; (last logits [n, V], their rows).

        The running batch is not touched until :meth:`join`, so a failure here is theirs alone.
        Logits stay in the model's dtype: the sampler converts only the rows that need it.
        """
        length = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), length), dtype=torch.long)
        mask = torch.zeros((len(prompts), length), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, length - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, length - len(p) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.config)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1], Batch(cache, mask, mask.sum(-1))

    @torch.inference_mode()
    def prefill_chunk(self, job: ChunkedPrefill, budget: int) -> tuple[torch.Tensor, Batch] | None:
        """Prefill the next ``budget`` tokens of a long prompt in its own cache.

        Long prompts are split over several engine steps so running streams keep getting a
        token every step. Once done, returns the last logits [1, V] and the row to :meth:`join`.
        """
        start = job.done
        chunk = job.prompt[start : start + budget]
        ids = torch.tensor([chunk], dtype=torch.long, device=self.device)
        positions = torch.arange(start, start + len(chunk), device=self.device)[None]
        out = self.model(
            input_ids=ids,
            position_ids=positions,
            cache=job.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        job.done += len(chunk)
        if job.done < len(job.prompt):
            return None
        mask = torch.ones((1, len(job.prompt)), dtype=torch.long, device=self.device)
        return out.logits[:, -1], Batch(job.cache, mask, mask.sum(-1))

    def start_chunked(self, prompt: Sequence[int]) -> ChunkedPrefill:
        return ChunkedPrefill(list(prompt), DynamicCache(config=self.config))

    @torch.inference_mode()
    def decode(self, tokens: Sequence[int]) -> torch.Tensor:
        """One decode step for every row with its last sampled token; returns logits [B, V]."""
        batch = self.batch
        assert batch is not None and len(tokens) == batch.size
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
        batch.mask = F.pad(batch.mask, (0, 1), value=1)
        if self.lean_decode:
            logits = lean_decode(self.model, ids, batch.mask, batch.positions[:, None], batch.cache)
        else:
            out = self.model(
                input_ids=ids,
                attention_mask=batch.mask,
                position_ids=batch.positions[:, None],
                cache=batch.cache,
                use_cache=True,
                logits_to_keep=1,
            )
            logits = out.logits[:, -1]
        batch.positions = batch.positions + 1
        return logits

    def kv_tokens(self) -> int:
        """Timeline slots held by the batch (rows x length): what the KV-cache budget bounds."""
        return 0 if self.batch is None else self.batch.size * self.batch.length


def lean_decode_agrees(model: torch.nn.Module, steps: int = 3) -> bool:
    """The lean decode step gives the stock forward's logits, bit for bit, on a padded batch here."""
    gen = torch.Generator().manual_seed(0)
    vocab = int(model.config.vocab_size)
    prompts = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in (3, 8)]
    stock, lean = ModelRunner(model, lean_decode=False), ModelRunner(model, lean_decode=False)
    lean.lean_decode = True
    tokens = stock.prefill(prompts).argmax(-1).tolist()
    lean.prefill(prompts)
    try:
        for _ in range(steps):
            expected, got = stock.decode(tokens), lean.decode(tokens)
            if not torch.equal(expected, got):
                logger.warning("Lean decode step disagrees with the stock forward here; using the stock one")
                return False
            tokens = expected.argmax(-1).tolist()
    except (TypeError, RuntimeError) as exc:  # a cache layout or op decode_forward does not mirror
        logger.warning("Lean decode step unavailable (%s); using the stock forward", exc)
        return False
    return True


@dataclass
class ChunkedPrefill:
    """A long prompt being prefilled a chunk per step, outside the running batch."""

    prompt: list[int]
    cache: DynamicCache
    done: int = 0


@dataclass
class SamplerState:
    """Per-sequence sampling state that outlives a step (RNG, penalty counts).

    Penalties touch only tokens already in the sequence, so they are kept sparse: a step costs
    O(tokens seen), not O(vocabulary).
    """

    params: SamplingParams
    prompt_ids: Sequence[int]
    generator: torch.Generator | None = None
    counts: dict[int, int] | None = None  # generated-token counts (frequency / presence penalties)
    seen: set[int] | None = None  # prompt + generated token ids (repetition penalty)
    bias: tuple[torch.Tensor, torch.Tensor] | None = field(default=None)

    @classmethod
    def create(
        cls, params: SamplingParams, prompt_ids: Sequence[int], vocab: int, device: torch.device | str = "cpu"
    ) -> SamplerState:
        """The bias tensors live on the logits' device; the RNG stays on the CPU (one draw per token)."""
        state = cls(params, prompt_ids)
        if params.temperature > 0:
            gen = torch.Generator()
            if params.seed is not None:
                gen.manual_seed(params.seed)
            else:
                gen.seed()
            state.generator = gen
        if params.presence_penalty or params.frequency_penalty:
            state.counts = {}
        if params.repetition_penalty != 1.0:
            state.seen = {min(max(int(t), 0), vocab - 1) for t in prompt_ids}
        if params.logit_bias:
            ids = torch.tensor([int(k) for k in params.logit_bias], dtype=torch.long, device=device)
            vals = torch.tensor([float(v) for v in params.logit_bias.values()], device=device)
            keep = (ids >= 0) & (ids < vocab)
            state.bias = (ids[keep], vals[keep])
        return state

    def observe(self, token: int) -> None:
        if self.counts is not None:
            self.counts[token] = self.counts.get(token, 0) + 1
        if self.seen is not None:
            self.seen.add(token)


@dataclass
class Sampled:
    token: int
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] | None = None


def _processed_row(row: torch.Tensor, st: SamplerState) -> torch.Tensor:
    """Apply logit bias and penalties (OpenAI / HF definitions) to one float row, in place."""
    p = st.params
    if st.bias is not None:
        row.index_add_(0, st.bias[0], st.bias[1])
    if st.seen:
        ids = torch.tensor(sorted(st.seen), dtype=torch.long, device=row.device)
        vals = row[ids]
        row[ids] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    if st.counts:
        ids = torch.tensor(list(st.counts), dtype=torch.long, device=row.device)
        counts = torch.tensor(list(st.counts.values()), dtype=row.dtype, device=row.device)
        row[ids] = row[ids] - counts * p.frequency_penalty - p.presence_penalty
    return row


# Top-k / top-p look first at the tokens whose probability is above this fraction of the most
# likely one's (a real model's nucleus is a few to a few hundred tokens), then at a lower cut,
# and sort the whole row only if even that leaves out part of the nucleus: sorting a few hundred
# candidates instead of 201k logits, with exactly the same result.
CANDIDATE_CUTS = (1e-4, 1e-9)


# Rows sampled together: four float32 rows of 201k (3 MB) stay in the cores' L2 caches through
# the exp, cumsum and search passes, so DRAM is read once per row (the bf16 logits).
SAMPLE_CHUNK_ROWS = 4


def _pick_rows(x: torch.Tensor, states: Sequence[SamplerState]) -> list[int]:
    """Bias and penalties, then greedy or temperature / top-k / top-p / min-p sampling by inverse CDF.

    ``x`` holds the rows' logits in any float dtype; it is not modified. Each sequence draws one
    uniform per token from its own generator and every op works along one row, so a row picks
    the same token alone or batched, and a seed reproduces. On a CPU this is bound by memory
    traffic over the 201k-wide rows, so rows go through in small chunks that stay in cache, and
    each is upcast to float32 only there.
    """
    n, vocab = x.shape
    params = [st.params for st in states]
    u = [float(torch.rand(1, generator=st.generator)) if st.generator is not None else 0.0 for st in states]
    out = [0] * n
    step = SAMPLE_CHUNK_ROWS if x.device.type == "cpu" else n  # a GPU has no such cache to fit; fewer launches
    for start in range(0, n, step):
        chunk = range(start, min(n, start + step))
        e = x[chunk.start : chunk.stop].to(torch.float32, copy=True)
        for i in chunk:
            if not _is_plain(states[i]):
                _processed_row(e[i - start], states[i])
        cold = [i for i in chunk if params[i].temperature == 0]  # greedy after bias / penalties
        for i, tok in zip(cold, greedy_argmax(e[[i - start for i in cold]]).tolist() if cold else []):
            out[i] = tok
        if len(cold) == len(chunk):  # all greedy: no probabilities needed (exp is the costly pass,
            continue  # and slower still over the -inf of grammar-masked rows)
        # Unnormalized probabilities exp((x - max) / T): the most likely token gets exactly 1.
        e.sub_(e.amax(-1, keepdim=True))
        if any(params[i].temperature not in (0.0, 1.0) for i in chunk):
            inv_t = [[1.0 / params[i].temperature if params[i].temperature else 1.0] for i in chunk]
            e.mul_(torch.tensor(inv_t, device=e.device))
        e.exp_()
        hot = [i for i in chunk if params[i].temperature > 0]
        ranked = {i for i in hot if (params[i].top_k and params[i].top_k < vocab) or params[i].top_p < 1.0}
        plain = [i for i in hot if i not in ranked]
        if plain:
            rows = e[[i - start for i in plain]] if len(plain) < len(chunk) else e
            for j, i in enumerate(plain):
                if params[i].min_p > 0.0:
                    rows[j].masked_fill_(rows[j] < params[i].min_p, 0.0)
            cdf = rows.cumsum(-1)
            target = torch.tensor([[u[i]] for i in plain], dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
            for i, tok in zip(plain, torch.searchsorted(cdf, target).clamp(max=vocab - 1)[:, 0].tolist()):
                out[i] = tok
        for i in sorted(ranked):
            out[i] = _pick_ranked(e[i - start], params[i], u[i])
    return out


def _pick_ranked(e: torch.Tensor, p: SamplingParams, u: float) -> int:
    """Top-k, then top-p, then min-p over one row's tokens in order of probability; one draw.

    ``e`` is the row's unnormalized probabilities (max 1). Tokens above a cut all rank before
    those below it, so when the ones above hold what top-k / top-p need, sorting them alone gives
    exactly the head of the full sort.
    """
    vocab = e.shape[-1]
    top_k = p.top_k if p.top_k and p.top_k < vocab else 0
    total = float(e.sum())
    need = total * p.top_p if not top_k and p.top_p < 1.0 else 0.0
    for cut in CANDIDATE_CUTS:
        idx = torch.nonzero(e > cut).squeeze(1)
        vals = e[idx]
        if len(idx) >= top_k and float(vals.sum()) >= need:
            break
    else:
        idx, vals = None, e
    vals, order = torch.sort(vals, descending=True)
    idx = order if idx is None else idx[order]
    if top_k:
        vals, idx = vals[:top_k], idx[:top_k]
    vals = vals / (vals.sum() if top_k else total)
    if p.top_p < 1.0:
        cum = vals.cumsum(-1)
        vals = vals.masked_fill((cum - vals) >= p.top_p, 0.0)  # drop tokens once the kept mass reaches top_p
    if p.min_p > 0.0:
        vals = vals.masked_fill(vals < p.min_p * vals[0], 0.0)
    cdf = vals.cumsum(-1)
    pos = int(torch.searchsorted(cdf, cdf[-1:] * u).clamp(max=len(cdf) - 1))
    return int(idx[pos])


@functools.lru_cache(maxsize=8)
def _argmax_block(vocab: int) -> int | None:
    """The largest divisor of ``vocab`` in [256, 4096]: rows are reduced in blocks that size."""
    for blk in range(min(4096, vocab), 255, -1):
        if vocab % blk == 0:
            return blk
    return None


# bf16 bit patterns read as int16: positive values up to +inf are 0x0001..0x7F80, in value order;
# above are NaNs.
_BF16_POS_INF = 0x7F80


def greedy_argmax(rows: torch.Tensor) -> torch.Tensor:
    """Index of each row's maximum, the first one on ties (what ``rows.max(-1).indices`` gives).

    On CPU, ``max(dim)`` with indices over 200k-wide bf16 rows is a slow scalar loop. A
    vectorised ``amax`` over fixed-size blocks, an argmax over the block maxima and one over the
    winning block give the same index faster.

    bf16 rows are reduced as int16 bit patterns, with no conversion to float:
    positive bf16 values up to +inf order like their bits, every negative one (sign bit set) is
    a negative int16, and equal positive values have equal bits. So when a row's maximum is
    positive (a language model's top logit, in practice), the int16 argmax is the float one.
    If any row's maximum is not (zero, negative, or a positive NaN), the whole call takes the
    float path. A negative NaN hides among the negative patterns, so a row holding one may get
    a different index than ``max()``'s (the NaN's); such a row has no meaningful maximum.
    """
    n, vocab = rows.shape
    blk = _argmax_block(vocab) if rows.device.type == "cpu" and rows.stride(-1) == 1 else None
    if blk is None:
        return rows.max(dim=-1).indices
    blocks = rows.reshape(n, vocab // blk, blk)
    best_block = None
    if rows.dtype == torch.bfloat16:
        bits = rows.view(torch.int16).reshape(n, vocab // blk, blk)
        block_max = bits.amax(dim=-1)
        first = block_max.argmax(dim=-1)
        top = block_max.gather(1, first[:, None])
        if bool(((top > 0) & (top <= _BF16_POS_INF)).all()):
            blocks, best_block = bits, first
    if best_block is None:
        best_block = blocks.amax(dim=-1).argmax(dim=-1)  # first block holding the row maximum
    inside = blocks[torch.arange(n, device=rows.device), best_block].argmax(dim=-1)
    return best_block * blk + inside


def sample(logits: torch.Tensor, states: Sequence[SamplerState]) -> list[Sampled]:
    """Pick one token per row. Greedy rows without bias/penalties take one vectorised max.

    ``logits`` may be bf16: max() on it picks the same token as on its exact fp32 upcast, so
    plain greedy rows skip the conversion; other rows are upcast chunk by chunk (``_pick_rows``).
    """
    simple = [i for i, st in enumerate(states) if st.params.temperature == 0 and _is_plain(st)]
    out: list[Sampled | None] = [None] * len(states)
    if simple:
        rows = logits if len(simple) == len(states) else logits[simple]
        best = greedy_argmax(rows).tolist()
        for i, tok in zip(simple, best):
            out[i] = Sampled(tok)
    rest = [i for i, o in enumerate(out) if o is None]
    if rest:
        rows = logits if len(rest) == len(states) else logits[rest]
        for i, tok in zip(rest, _pick_rows(rows, [states[i] for i in rest])):
            out[i] = Sampled(tok)
    for i, st in enumerate(states):
        k = st.params.logprobs
        if k is not None:
            logp = torch.log_softmax(logits[i].float(), dim=-1)
            s = out[i]
            assert s is not None
            s.logprob = float(logp[s.token])
            if k > 0:
                vals, idx = torch.topk(logp, k)
                s.top = tuple(zip(idx.tolist(), vals.tolist()))
            else:
                s.top = ()
    # Only once every row has its token: a failed call leaves the penalty counts as they were, so
    # the engine can sample the rows again one by one (restoring the generators it saved).
    for st, s in zip(states, out):
        st.observe(s.token)
    return out


def _is_plain(st: SamplerState) -> bool:
    return st.bias is None and st.seen is None and st.counts is None
