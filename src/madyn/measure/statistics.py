"""Activation statistics of one model, measured inside forward hooks.

For every decoder layer (found by structure, :func:`decoder_layers`) and every evaluation
sequence, the hooks reduce the layer's output at once, in float32, to the columns of
:data:`madyn.measure.stats_table.STAT_COLUMNS` (defined in :mod:`madyn.measure.stats_table`);
no layer's hidden states outlive its hook. The attention-sink mass comes from
:mod:`madyn.measure.sinks`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from madyn.measure import sinks
from madyn.measure.stats_table import STAT_COLUMNS
from madyn.settings import ExtractSettings

_DEFAULT = ExtractSettings()  # batch size and extreme_tokens when not given


# -------------------------------------------------------------------- structural lookup
def decoder_layers(model) -> list:
    """The decoder blocks of ``model``, found by structure, not by model name.

    The blocks are the one ``nn.ModuleList`` whose length equals the configured number of
    hidden layers and whose entries are all of one class (GPT-NeoX ``gpt_neox.layers``,
    Llama/Mistral ``model.layers``, GPT-2 ``transformer.h``, OPT ``model.decoder.layers``).
    Their outputs are the residual stream after each layer, before any final norm.
    """
    import torch

    n = config_value(model, ("num_hidden_layers", "n_layer"))
    found = [
        (name, mod) for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n and n > 0
        and len({type(m) for m in mod}) == 1
        and sum(p.numel() for p in mod[0].parameters()) > 0
    ]
    if len(found) != 1:
        names = [nm for nm, _ in found]
        raise ValueError(f"expected exactly one stack of {n} decoder layers, found {names}; "
                         "is this a decoder-only transformer?")
    return list(found[0][1])


def config_value(model, keys: tuple[str, ...]) -> int:
    """A size from the model's ``config`` (a transformers config, or a nanoGPT-style
    ``GPTConfig`` with ``n_layer``/``n_embd``): the first of ``keys`` it has; 0 if none."""
    cfg = getattr(model, "config", None)
    for k in keys:
        v = getattr(cfg, k, None)
        if isinstance(v, int):
            return v
    return 0


def is_transformers_model(model) -> bool:
    """A transformers model (runs as ``base_model(input_ids=...)``), not a hand-written one
    (nanoGPT style: ``model(ids)``)."""
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def _io_dims(mod) -> tuple[int, int] | None:
    """(in, out) features of a dense projection: ``nn.Linear``, or GPT-2's ``Conv1D``
    (weight in x out, ``nf`` = out); None for anything else."""
    import torch

    if isinstance(mod, torch.nn.Linear):
        return mod.in_features, mod.out_features
    w = getattr(mod, "weight", None)
    if isinstance(getattr(mod, "nf", None), int) and w is not None and w.ndim == 2:
        return int(w.shape[0]), int(mod.nf)
    return None


def mlp_activation(layer, hidden_size: int):
    """The MLP's nonlinearity inside one decoder layer, found by structure.

    The MLP is the module with an up-projection hidden_size -> F and a down-projection
    F -> hidden_size (F != hidden_size) among its direct children (GPT-NeoX ``mlp``, Llama
    ``mlp``, GPT-2 ``mlp``, OPT: the layer itself); its nonlinearity is its first
    parameter-free leaf child that is not dropout. None if there is no such module.
    """
    import torch

    skip = (torch.nn.Dropout, torch.nn.Identity)
    for _, parent in layer.named_modules():
        dims = [d for d in map(_io_dims, parent.children()) if d is not None]
        ups = {o for i, o in dims if i == hidden_size and o != hidden_size}
        if not any(i in ups and o == hidden_size for i, o in dims):
            continue
        for mod in parent.children():
            if (not list(mod.children()) and not list(mod.parameters(recurse=False))
                    and not isinstance(mod, skip)):
                return mod
    return None


# ------------------------------------------------------------------------- statistics
def layer_stats(h, to_numpy: bool = True) -> dict:
    """Statistics of one layer's output, reduced per sequence, in torch on h's device.

    h: B x T x D tensor (any float dtype; computed in float32). Returns a dict of
    length-B arrays keyed by the module docstring's column names: float64 numpy arrays,
    or (``to_numpy=False``) tensors left on the device, so a GPU never waits for the host
    between layers. The reference definition; the CPU runs :func:`_cpu_finish` instead.
    """
    import torch

    h = h.float()
    b, t, d = h.shape
    finite = torch.isfinite(h)
    nonfinite = (~finite).reshape(b, -1).sum(1)
    h = torch.where(finite, h, torch.zeros((), dtype=h.dtype, device=h.device))
    a = h.abs().reshape(b, t * d)
    top = torch.topk(a, 3, dim=1)
    median = a.median(dim=1).values
    idx = top.indices[:, 0]
    ms = h.pow(2).mean(dim=1)  # B x D: mean square per channel
    kurt = ms.pow(2).mean(1) / ms.mean(1).pow(2)
    at = a.view(b, t, d)
    mmr = (at.amax(2) / at.median(2).values).mean(1)
    norms = h.norm(dim=2)  # B x T token norms
    u = h / norms[:, :, None].clamp_min(1e-30)
    cos = (u.sum(1).pow(2).sum(1) - t) / max(t * (t - 1), 1)
    out = {
        "top1": top.values[:, 0], "top2": top.values[:, 1], "top3": top.values[:, 2],
        "median": median, "ratio": top.values[:, 0] / median,
        "top1_token": torch.div(idx, d, rounding_mode="floor"), "top1_channel": idx % d,
        "kurtosis": kurt, "mmr": mmr, "cos_sim": cos, "nonfinite": nonfinite,
        "first_norm_ratio": norms[:, 0] / norms.median(dim=1).values,
        "first_peak_ratio": a[:, :d].amax(1) / median,
    }
    tok_max, tok_arg = at.max(dim=2)  # B x T: each token's largest |h| and its channel
    top_tok = out["top1_token"]
    others = tok_max.scatter(1, top_tok[:, None], 0.0)  # the top1 token left out
    out["ratio_excl_token"] = others.amax(1) / median if t > 1 else torch.full_like(median,
                                                                                    float("nan"))
    out["channel_share"] = (tok_arg == out["top1_channel"][:, None]).float().mean(1)
    if not to_numpy:
        return out
    return {k: v.double().cpu().numpy() for k, v in out.items()}


def attention_stats(probs, to_numpy: bool = True) -> dict:
    """The definition of ``sink_mass`` on materialised probabilities (the reference that
    :mod:`madyn.measure.sinks` is tested against): probs, B x H x T x T attention probabilities
    (rows: queries, columns: keys); the mean over heads and queries t >= 1 of the
    probability on key 0 (length-B; NaN when T == 1). Query 0 is left out: it can only
    attend to itself."""
    sink = probs[:, :, 1:, 0].float().mean(dim=(1, 2))
    return {"sink_mass": sink.double().cpu().numpy() if to_numpy else sink}


def mlp_stats(act, batch_shape: tuple[int, int], to_numpy: bool = True) -> dict:
    """Activation sparsity of MLP hidden units (Wild and Anderson, "Uncovering
    Layer-Dependent Activation Sparsity Patterns in ReLU Transformers").

    act: B x T x F tensor (or (B*T) x F, as OPT flattens tokens); batch_shape: (B, T).
    """
    import torch

    act = act.reshape(*batch_shape, -1)
    b, t, f = act.shape
    n_pos = (act > 0).view(b, -1).view(torch.uint8).sum(dim=1, dtype=torch.int64)
    seq_active = (act.amax(dim=1) > 0).sum(dim=1)
    out = {"mlp_active_token": n_pos.double() / (t * f),
           "mlp_active_seq": seq_active.double() / f}
    return out if not to_numpy else {k: v.cpu().numpy() for k, v in out.items()}


# values drawn per row to bracket its median (the selection itself stays exact)
MEDIAN_SAMPLE = 65536


def _lower_medians(flat: np.ndarray) -> np.ndarray:
    """Exact lower median of each row of ``flat`` (B x n, no NaN), as ``torch.median``.

    A fixed random sample of each row brackets its median (5 standard deviations of the
    sample's rank either side), so only the ~2 % of values inside the bracket are
    partitioned; a row whose bracket misses the median (odds about 1 in 10^6) is
    partitioned whole. Rows of at most 4 samples' length are partitioned whole.
    """
    b, n = flat.shape
    k = (n - 1) // 2
    m = MEDIAN_SAMPLE
    if n <= 4 * m:
        return np.partition(flat, k, axis=1)[:, k]
    sample = np.sort(flat[:, np.random.default_rng(0).integers(0, n, m)], axis=1)
    centre, margin = k * m / n, 5 * np.sqrt(m) / 2
    j_lo, j_hi = max(int(centre - margin), 0), min(int(centre + margin) + 1, m - 1)
    out = np.empty(b, dtype=flat.dtype)
    for r in range(b):
        row, lo, hi = flat[r], sample[r, j_lo], sample[r, j_hi]
        below = np.count_nonzero(row < lo)  # ranks [below, below + len(inside)) lie in
        inside = row[(row >= lo) & (row <= hi)]  # the bracket, ties included
        if below <= k < below + inside.size:
            out[r] = np.partition(inside, k - below)[k - below]
        else:
            out[r] = np.partition(row, k)[k]
    return out


def _top3(flat: np.ndarray, token_max: np.ndarray) -> np.ndarray:
    """The 3 largest values of each row of ``flat`` (B x n), descending: B x 3.

    ``token_max``: each token's largest value (B x T). Three tokens reach their maxima, so
    the third-largest token maximum is a lower bound of the row's third-largest value,
    and only values at or above it are sorted.
    """
    if token_max.shape[1] < 3:
        return -np.sort(-np.partition(flat, flat.shape[1] - 3, axis=1)[:, -3:], axis=1)
    floor = np.partition(token_max, -3, axis=1)[:, -3]
    return np.stack([-np.sort(-row[row >= f])[:3] for row, f in zip(flat, floor,
                                                                    strict=True)])


def _cpu_finish(a: np.ndarray, usum_sq: np.ndarray, t: int, norms: np.ndarray) -> dict:
    """Second half of :func:`layer_stats` on the CPU, from |h| (B x T x D, float32, a
    private copy), ||sum_t u_t||^2 (B,) and the token norms ||h_t|| (B x T). numpy
    releases the GIL, so this overlaps with the forward pass of the next layers; exact
    selections (``np.partition``, :func:`_lower_medians`, :func:`_top3`) stand in for
    sorting."""
    b, _, d = a.shape
    flat = a.reshape(b, -1)
    nonfinite = np.zeros(b, dtype=np.int64)
    if not np.isfinite(flat.max(axis=1)).all():
        bad = ~np.isfinite(flat)
        nonfinite = bad.sum(axis=1)
        flat[bad] = 0.0  # a is private: zero the non-finite entries in place
    idx = np.argmax(flat, axis=1)
    first_peak = a[:, 0, :].max(axis=1)
    kt = (t - 1) // 2  # lower median of the token norms, as torch.median
    norm_median = np.partition(norms, kt, axis=1)[:, kt]
    ms = np.einsum("btd,btd->bd", a, a) / t  # B x D mean square per channel
    tok = np.partition(a, (d - 1) // 2, axis=2)  # per token: lower median, then the rest
    tok_upper = tok[:, :, (d - 1) // 2:]
    token_max = tok_upper.max(axis=2)
    mmr = (token_max / tok_upper[:, :, 0]).mean(axis=1)
    del tok, tok_upper
    median = _lower_medians(flat)
    top = _top3(flat, token_max)
    f64 = np.float64
    top_tok, top_ch = idx // d, idx % d
    rows = np.arange(b)
    others = token_max.copy()
    others[rows, top_tok] = 0.0  # the top1 token left out
    excl = others.max(axis=1).astype(f64) / median if t > 1 else np.full(b, np.nan)
    share = (np.argmax(a, axis=2) == top_ch[:, None]).mean(axis=1)
    return {
        "top1": top[:, 0].astype(f64), "top2": top[:, 1].astype(f64),
        "top3": top[:, 2].astype(f64), "median": median.astype(f64),
        "ratio": top[:, 0].astype(f64) / median, "top1_token": (idx // d).astype(f64),
        "top1_channel": (idx % d).astype(f64),
        "kurtosis": (ms.astype(f64) ** 2).mean(1) / ms.astype(f64).mean(1) ** 2,
        "mmr": mmr.astype(f64), "cos_sim": (usum_sq - t) / max(t * (t - 1), 1),
        "nonfinite": nonfinite.astype(f64),
        "first_norm_ratio": norms[:, 0].astype(f64) / norm_median,
        "first_peak_ratio": first_peak.astype(f64) / median,
        "ratio_excl_token": excl, "channel_share": share.astype(f64),
    }


def _cpu_mlp_finish(pos: np.ndarray) -> dict:
    """MLP sparsity from a private boolean array pos = act > 0, B x T x F."""
    b, t, f = pos.shape
    return {"mlp_active_token": np.count_nonzero(pos.reshape(b, -1), axis=1) / (t * f),
            "mlp_active_seq": np.count_nonzero(pos.any(axis=1), axis=1) / f}


@dataclass
class _Collector:
    """Accumulates per-layer statistics; on the CPU, finishes them on a worker thread.

    Hooks copy what they need into private tensors (|h|, act > 0) at once, so nothing
    depends on the model leaving its activations untouched; at most ``max_pending``
    layers wait for the worker, which bounds memory.
    """

    on_cpu: bool
    max_pending: int = 2
    rows: dict = field(default_factory=dict)  # (layer, key) -> list of arrays
    batch_shape: tuple[int, int] = (0, 0)  # (B, T) of the forward pass in flight
    pending: list = field(default_factory=list)  # (layer, future), in order

    def __post_init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=1) if self.on_cpu else None

    def _store(self, layer: int, out: dict) -> None:
        for k, v in out.items():
            self.rows.setdefault((layer, k), []).append(v)

    def _submit(self, layer: int, fn: Callable, *args) -> None:
        self.pending.append((layer, self.pool.submit(fn, *args)))
        while len(self.pending) > self.max_pending:
            self._drain_one()

    def _drain_one(self) -> None:
        layer, fut = self.pending.pop(0)
        self._store(layer, fut.result())

    def drain(self) -> None:
        """Finish pending work; bring tensors to the host in one copy (one sync per batch,
        not one per layer and statistic)."""
        while self.pending:
            self._drain_one()
        on_device = [(key, i) for key, parts in self.rows.items()
                     for i, p in enumerate(parts) if hasattr(p, "cpu")]
        if not on_device:
            return
        import torch

        flat = torch.cat([self.rows[k][i].double().reshape(-1) for k, i in on_device])
        host = flat.cpu().numpy()
        at = 0
        for k, i in on_device:
            n = self.rows[k][i].numel()
            self.rows[k][i] = host[at:at + n]
            at += n

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    def layer_hook(self, layer: int) -> Callable:
        def _hook(_mod, _inp, out):
            h = out[0] if isinstance(out, tuple) else out
            if not self.on_cpu:
                self._store(layer, layer_stats(h, to_numpy=False))
                return
            import torch

            h = h.float()
            norms = torch.linalg.vector_norm(h, dim=2)  # B x T
            if not bool(torch.isfinite(norms).all()):
                h = torch.nan_to_num(h, nan=0.0, posinf=0.0, neginf=0.0)
                norms = torch.linalg.vector_norm(h, dim=2)
            usum = torch.bmm((1.0 / norms.clamp_min(1e-30))[:, None, :], h)[:, 0]
            usum_sq = usum.double().pow(2).sum(1).numpy()
            a = (out[0] if isinstance(out, tuple) else out).float().abs().numpy()
            self._submit(layer, _cpu_finish, a, usum_sq, h.shape[1], norms.numpy().copy())

        return _hook

    def sink(self, layer: int, mass) -> None:
        """Record a layer's sink mass (B-length tensor, from :mod:`madyn.measure.sinks`)."""
        self._store(layer, {"sink_mass": mass if not self.on_cpu else mass.double().numpy()})

    def mlp_hook(self, layer: int) -> Callable:
        def _hook(_mod, _inp, out):
            if not self.on_cpu:
                self._store(layer, mlp_stats(out, self.batch_shape, to_numpy=False))
                return
            pos = (out.reshape(*self.batch_shape, -1) > 0).numpy()
            self._submit(layer, _cpu_mlp_finish, pos)

        return _hook


def attn_implementation(model) -> str | None:
    return getattr(model.config, "_attn_implementation", None)


def measure(model, tokens: np.ndarray, batch_size: int = _DEFAULT.batch_size,
            progress: bool = False, extreme_tokens: bool = _DEFAULT.extreme_tokens,
            sharded: bool = False) -> pd.DataFrame:
    """Statistics of every decoder layer for every sequence of ``tokens`` (N x T ids).

    Runs the model's body (``model.base_model``), not the LM head: logits are never
    needed, and for Pythia they are the largest tensor of the forward pass. A model that
    is not a transformers model (nanoGPT style, sizes in ``config.n_layer``/``n_embd``)
    runs as ``model(ids)`` (``extreme_tokens`` must then be off).
    ``extreme_tokens``: measure ``sink_mass`` too, from each layer's own fused attention
    (:mod:`madyn.measure.sinks`: one widened SDPA call, no T x T matrix); off: ``sink_mass`` is
    NaN and the model runs as loaded.
    ``sharded``: a sharded (FSDP2) model, run whole (``model(input_ids=...)``, the LM head
    included: its root's forward pass gathers the shards) under ``no_grad`` rather than
    ``inference_mode`` (the gathered-parameter buffers FSDP allocates in its first forward
    pass must stay usable by training).
    Returns a tidy table: columns ``seq``, ``layer`` and :data:`STAT_COLUMNS`;
    N x L rows. Layers are 0-based decoder-layer indices.
    """
    import torch

    layers = decoder_layers(model)
    device = next(model.parameters()).device
    coll = _Collector(on_cpu=device.type == "cpu")
    handles = attach_hooks(coll, layers, config_value(model, ("hidden_size", "n_embd",
                                                              "d_model")))
    hf = is_transformers_model(model)
    # HF: the decoder stack without the LM head
    body = model.base_model if hf and not sharded else model
    ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    starts = range(0, len(ids), batch_size)
    watch = (sinks.watching(model, layers, coll.sink) if extreme_tokens
             else contextlib.nullcontext())
    try:
        with watch, (torch.no_grad() if sharded else torch.inference_mode()):
            for s in _maybe_tqdm(starts, progress):
                batch = ids[s:s + batch_size]
                coll.batch_shape = tuple(batch.shape)
                if hf:
                    body(input_ids=batch.to(device), use_cache=False)
                else:
                    body(batch.to(device))
                coll.drain()
                if extreme_tokens and s == 0:
                    check_sinks_found(coll, len(layers))
    finally:
        for hd in handles:
            hd.remove()
        coll.close()
    return stats_frame(coll, len(ids), len(layers))


def attach_hooks(coll: _Collector, layers: list, hidden_size: int) -> list:
    """Hook each decoder layer's output and its MLP nonlinearity (found by structure,
    :func:`mlp_activation`) into ``coll``; the hook handles (remove them when done)."""
    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(coll.layer_hook(i)))
        act = mlp_activation(layer, hidden_size)
        if act is not None:
            handles.append(act.register_forward_hook(coll.mlp_hook(i)))
    return handles


def stats_frame(coll: _Collector, n: int, n_layers: int) -> pd.DataFrame:
    """The tidy table of what ``coll`` gathered for ``n`` sequences and ``n_layers``
    layers: columns ``seq``, ``layer`` and :data:`STAT_COLUMNS` (NaN where nothing was
    measured); N x L rows, layer-major."""
    frames = []
    for i in range(n_layers):
        cols = {"seq": np.arange(n), "layer": np.full(n, i)}
        for k in STAT_COLUMNS:
            parts = coll.rows.get((i, k))
            cols[k] = np.concatenate(parts) if parts else np.full(n, np.nan)
        frames.append(pd.DataFrame(cols))
    df = pd.concat(frames, ignore_index=True)
    for k in ("top1_token", "top1_channel", "nonfinite"):
        df[k] = df[k].astype("int64")
    return df


def check_sinks_found(coll: _Collector, n_layers: int) -> None:
    """Every layer's attention probabilities were seen (else name the first that was not)."""
    for i in range(n_layers):
        if (i, "sink_mass") not in coll.rows:
            raise ValueError(f"decoder layer {i}: its attention does not go through "
                             "transformers' attention functions, so its sink mass cannot "
                             "be read; measure with extreme_tokens=False")


def _maybe_tqdm(it, enabled: bool):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, desc="batches", unit="batch")
