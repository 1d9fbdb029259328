"""Recipe sweep for first-token massive activations in Hugging Face classes (issue 23).

Trains one variant per process on the synthetic Bigram-Backcopy corpus (madyn.train.synthetic),
one torch thread, for a wall-clock budget, and measures every ``--eval-every`` steps on a
fixed evaluation batch: per layer top1/median of |h|, the share of sequences whose largest
entry sits at position 0, the channel, the ratio with position 0 excluded, and the attention
mass on position 0 (the sink). Prints a table; ``--table`` prints the table of saved runs.

    nice python benchmarks/firsttoken_recipe.py run --name gpt2-s0 --family gpt2 --seed 0 \
        --minutes 4 --out /tmp/ftsweep
    python benchmarks/firsttoken_recipe.py table --out /tmp/ftsweep
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from madyn.train import synthetic


def build(args, vocab_size: int):
    import transformers

    common = dict(vocab_size=vocab_size, tie_word_embeddings=False,
                  initializer_range=args.init_std)
    if args.family == "gpt2":
        cfg = transformers.GPT2Config(n_embd=args.width, n_layer=args.layers, n_head=args.heads,
                                      n_positions=args.seq_len, resid_pdrop=0.0, embd_pdrop=0.0,
                                      attn_pdrop=0.0, activation_function=args.act, **common)
        cls = transformers.GPT2LMHeadModel
    else:
        cfg = transformers.LlamaConfig(hidden_size=args.width, num_hidden_layers=args.layers,
                                       num_attention_heads=args.heads,
                                       num_key_value_heads=args.heads,
                                       intermediate_size=4 * args.width,
                                       max_position_embeddings=args.seq_len,
                                       rope_parameters={"rope_type": "default",
                                                        "rope_theta": args.rope_theta},
                                       **common)
        cls = transformers.LlamaForCausalLM
    cfg._attn_implementation = "eager"
    return cls(cfg)


def blocks(model):
    return model.transformer.h if hasattr(model, "transformer") else model.model.layers


def measure(model, x) -> list[dict]:
    import torch

    outs: list = []
    hooks = [b.register_forward_hook(lambda m, i, o: outs.append(o[0] if isinstance(o, tuple)
                                                                  else o)) for b in blocks(model)]
    model.eval()
    with torch.no_grad():
        att = model(input_ids=torch.from_numpy(x), output_attentions=True).attentions
    model.train()
    for h in hooks:
        h.remove()
    rows = []
    for layer, h in enumerate(outs):
        a = h.abs().float().numpy()  # B x T x D
        med = float(np.median(a))
        b, t, d = a.shape
        flat = a.reshape(b, -1).argmax(axis=1)
        pos, ch = flat // d, flat % d
        top = a.max()
        tpos, tch = np.unravel_index(a.argmax(), a.shape)[1:]
        sink = float(att[layer][:, :, 1:, 0].mean()) if att is not None else float("nan")
        rows.append({"layer": layer, "ratio": float(top / med), "pos": int(tpos),
                     "channel": int(tch), "pos0_share": float((pos == 0).mean()),
                     "ratio_excl0": float(a[:, 1:].max() / med), "sink": sink,
                     "channels": len(set(ch[pos == 0].tolist()))})
    return rows


def run(args) -> None:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    spec = synthetic.SyntheticSpec(bos=not args.no_bos, seed=0)
    model = build(args, spec.vocab_size)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": args.wd}, {"params": rest, "weight_decay": 0.0}]
    if args.sgd:
        opt = torch.optim.SGD(groups, lr=args.lr, momentum=0.9)
    else:
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, args.beta2), eps=args.eps)
    x_eval = synthetic.eval_batch(spec, 16, args.seq_len, seed=0)
    gen = synthetic.batches(spec, args.batch, args.seq_len, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = []
    t0 = time.monotonic()
    step = 0
    while True:
        el = time.monotonic() - t0
        if step % args.eval_every == 0 or el > args.minutes * 60:
            log.append({"step": step, "seconds": round(el, 1), "layers": measure(model, x_eval)})
            best = max(log[-1]["layers"], key=lambda r: r["ratio"] * (r["pos0_share"] == 1))
            print(f"[{args.name}] step {step} {el:.0f}s L{best['layer']} x{best['ratio']:.1f} "
                  f"share {best['pos0_share']:.2f} sink {best['sink']:.2f}", flush=True)
            if el > args.minutes * 60:
                break
        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        if args.cosine:
            frac = min(1.0, step / max(1, args.cosine_steps))
            lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = lr
        x = torch.from_numpy(next(gen))
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
    (out / f"{args.name}.json").write_text(json.dumps({"args": vars(args), "loss": float(loss),
                                                       "log": log}))


def table(args) -> None:
    print("| run | seed | steps | minutes | loss | best first-token layer | ratio | "
          "excl. pos 0 | pos-0 share | channel | sink mass | max feature ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for f in sorted(Path(args.out).glob("*.json")):
        d = json.loads(f.read_text())
        last = d["log"][-1]
        ft = [r for r in last["layers"] if r["pos0_share"] == 1]
        best = max(ft, key=lambda r: r["ratio"]) if ft else max(last["layers"],
                                                                 key=lambda r: r["pos0_share"])
        other = max((r["ratio"] for r in last["layers"] if r["pos0_share"] < 1), default=0)
        print(f"| {f.stem} | {d['args']['seed']} | {last['step']} | {last['seconds'] / 60:.1f} | "
              f"{d['loss']:.2f} | {best['layer'] if ft else '-'} | {best['ratio']:.1f} | "
              f"{best['ratio_excl0']:.1f} | {best['pos0_share']:.2f} | {best['channel']} | "
              f"{best['sink']:.2f} | {other:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["run", "table"])
    p.add_argument("--out", default="/tmp/ftsweep")
    p.add_argument("--name", default="run")
    p.add_argument("--family", default="gpt2", choices=["gpt2", "llama"])
    p.add_argument("--act", default="gelu_new")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--init-std", type=float, default=0.02)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--beta2", type=float, default=0.99)
    p.add_argument("--eps", type=float, default=1e-8)
    p.add_argument("--wd", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--cosine", action="store_true")
    p.add_argument("--cosine-steps", type=int, default=3000)
    p.add_argument("--sgd", action="store_true")
    p.add_argument("--no-bos", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=4.0)
    p.add_argument("--eval-every", type=int, default=250)
    args = p.parse_args()
    run(args) if args.what == "run" else table(args)


if __name__ == "__main__":
    main()
