"""Cost and accuracy of one meta-adapter step: our hypergradient methods, the same hypergradient computed with
`higher` and with Betty, and one plain +adpt step, in one run.

    .venv/bin/python benchmarks/meta_step.py                         # the benchmark size (4 layers, hidden 256)
    .venv/bin/python benchmarks/meta_step.py --size paper --batch 4 --length 64 --steps 4 --warmup 4 --rounds 1
    .venv/bin/python benchmarks/meta_step.py --batch 4 --length 32 --steps 2 --warmup 1 --rounds 1   # smoke run
    .venv/bin/python benchmarks/meta_step.py --accuracy              # every method's higher-order term vs exact
    .venv/bin/python benchmarks/meta_step.py --phases                # where the default step's time and memory go

The model is trained as the pretraining recipe trains it, with sparse prediction (the vocabulary projection and
the last layer past attention run on the predicted positions only); every mode computes the same loss.

Modes (each in its own subprocess, interleaved over `--rounds`; medians of the timed steps after `--warmup`):
- plain: what `MetaXLMTrainer` does with meta_learning=False: forward + backward + AdamW on one batch.
- ours, one per `hypergradient` method: `meta_step_gradients` (lookahead gradient, meta objective over one
  validation batch per language — the training batch shared out over the languages, the trainer's default —,
  higher-order term), AdamW on φ_i, then the θ step: `theta_gradient="recompute"` (forward + backward with the new
  φ_i, Eq. 5) or, for `double_backward+lookahead`, θ's AdamW on the lookahead's gradient (no pass repeated).
- higher: `higher.innerloop_ctx` over θ with SGD(lr β) (copy_initial_weights=False), one differentiable step on the
  training batch, M on the validation batches, ∇_{φ_i} M by autograd through the unrolled step (exact; SDPA's math
  kernel, as it needs a double backward); then AdamW on φ_i and the θ step with the new φ_i, as ours.
- betty_darts / betty_sama: Betty's own `betty.hypergradient.darts` / `sama` functions called on our model through
  a thin adapter exposing what they read of a Betty `Problem` (θ = the lower level's parameters, φ_i the upper's,
  the training loss); Betty's Engine is not used. Betty's `darts` is Eq. 8's central difference (ε = darts_alpha
  0.01 / ‖v‖); `sama` preconditions v with θ's AdamW state (and ε = 1 / ‖v‖): it approximates the Jacobian of an
  Adam step, not Eq. 4's SGD lookahead, so its cosine with the exact SGD term is not expected to be 1.
  The rest of the step (lookahead gradient, meta objective, φ and θ steps) is ours, so the time difference is the
  higher-order term's implementation.

"hypergradient s" is the meta step up to ∇_{φ_i} M; "step s" the whole training step (meta step + φ step + θ step).
Cosines against ours with the exact double backward in float32, on the same model and batches, dropout off (eval
mode: every implementation sees the same function), at the initial weights (measured after the timed steps): "cos exact" of ∇_{φ_i} M,
"cos HO" of its higher-order term (∂M/∂φ_i − ∇_{φ_i} M) / β, which at β = 1e-4 is ~1e-3 of the whole.

Time and memory come from separate subprocesses of each mode, each under the allocator that makes its figure
mean what it says:
- time: glibc keeping freed memory for reuse (`meta_xlm.cpu_allocator`, what the recipes set on CPU). Under a
  setting that hands freed memory back, every step faults its activations in again, and that cost (not the
  arithmetic) grows with the number of large temporaries a method allocates.
- peak memory: growth of the subprocess's peak resident set size over its size just before the first step, MiB,
  with glibc's `MALLOC_MMAP_THRESHOLD_` fixed at 64 KiB (and `MALLOC_TRIM_THRESHOLD_` 0): every allocation above
  64 KiB is its own mmap, returned to the system when freed, so the resident size follows live tensors rather than
  the fragmentation of glibc's heap. Two steps (one warm-up) suffice: the peak is reached in every step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from common import (
    add_size_arguments, current_rss_mib, flat, peak_rss_mib, peak_rss_since_reset_mib, reset_peak_rss, run_worker,
    size_passthrough,
)

from meta_xlm.cpu_allocator import REUSE_FREED_MEMORY

LIVE_TENSORS = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}  # see the docstring

OURS = ("first_order", "forward_over_reverse", "central_difference", "forward_difference", "double_backward",
        "double_backward+lookahead")
PEERS = ("higher", "betty_darts", "betty_sama")
MODES = ("plain", *OURS, *PEERS)
SIZES = {"benchmark": (4, 256, 4, 1024, 8000), "paper": (8, 512, 8, 2048, 32000)}  # layers, hidden, heads, FFN, vocab
LANGUAGES = ["en", "te"]
BETA = 1e-4
PEER_VERSIONS = {"higher": "higher", "betty": "betty-ml"}


def make_batch(language: int, args, generator, size: int | None = None):
    import torch

    size = size or args.batch
    input_ids = torch.randint(5, args.vocab, (size, args.length), generator=generator)
    masked = torch.rand(size, args.length, generator=generator) < 0.15
    masked[:, 1] = True
    return {
        "input_ids": input_ids.masked_fill(masked, 4),
        "attention_mask": torch.ones_like(input_ids),
        "labels": input_ids.masked_fill(~masked, -100),
        "lang_ids": torch.full((size,), language, dtype=torch.long),
    }


def validation_batch(args) -> int:
    """Validation examples per language: the training batch shared out over the languages (the trainer's default)."""
    return args.validation_batch or -(-args.batch // len(LANGUAGES))


class BettyProblem:
    """What `betty.hypergradient.darts` / `sama` read of a Betty Problem, for one meta step: the lower level's
    parameters θ (`meta_trainable_parameters`, perturbed in place by ±εv), the upper level's φ_i
    (`trainable_parameters`, differentiated), the training loss, and θ's optimizer (SAMA's preconditioner)."""

    def __init__(self, model, theta, phi, batch, optimizer):
        from types import SimpleNamespace

        self.config = SimpleNamespace(darts_alpha=0.01, darts_multitask=False, sama_adam_alpha=1.0,
                                      sama_multitask=False)
        self._strategy, self.cur_batch, self.optimizer = "default", batch, optimizer
        self.model, self.theta, self.phi = model, theta, phi
        self._groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}

    def meta_trainable_parameters(self):
        return self.theta

    def trainable_parameters(self):
        return self.phi

    def training_step_exec(self, batch):
        return self.model(**batch).loss

    def get_opt_param_group_for_param(self, param):
        return self._groups[id(param)]

    def get_opt_state_for_param(self, param):
        return self.optimizer.state[param]


def peer_hypergradient(mode, model, groups, language, batch, val_batches, theta_optimizer):
    """∇_{φ_i} M computed by a peer library (see the module docstring), keyed by parameter name."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from meta_xlm.meta import SGDLookahead, count_labels, meta_objective_gradients, train_gradient

    shared, phi = groups.shared, groups.languages[language]
    weights = {code: 1 / len(val_batches) for code in val_batches}
    if mode == "higher":
        import higher

        inner = torch.optim.SGD(list(shared.values()), lr=BETA)
        with sdpa_kernel(SDPBackend.MATH), higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fmodel, opt):
            opt.step(fmodel(**batch).loss)  # θ' = θ − β ∇_θ L_train (Eq. 3), differentiable
            meta = sum(w * fmodel(**val_batches[code]).loss for code, w in weights.items())
            return dict(zip(phi, torch.autograd.grad(meta, list(phi.values()))))
    from betty.hypergradient.darts import darts
    from betty.hypergradient.sama import sama

    gradient = train_gradient(model, [batch], shared, count_labels([batch]), [0]).gradient
    outer, direct, _ = meta_objective_gradients(
        model, val_batches, SGDLookahead(BETA).step(shared, gradient), language, phi,
        {code: count_labels([b]) for code, b in val_batches.items()},
    )
    problem = BettyProblem(model, list(shared.values()), list(phi.values()), batch, theta_optimizer)
    implicit = (darts if mode == "betty_darts" else sama)(list(outer.values()), problem, problem, sync=False)
    # Betty returns (∇_{φ} L(θ − εv) − ∇_{φ} L(θ + εv)) / 2ε = −[∇²_{φ_i,θ} L] v; Eq. 4 with the lookahead's β
    return {name: direct[name] + BETA * term for name, term in zip(phi, implicit)}


def our_hypergradient(method, model, groups, language, batch, val_batches, keep_theta_gradient=False):
    from meta_xlm.meta import meta_step_gradients

    return meta_step_gradients(model, [batch], val_batches, language, lookahead_lr=BETA, method=method, seeds=[0],
                               val_seeds={code: k for k, code in enumerate(val_batches)}, groups=groups,
                               keep_theta_gradient=keep_theta_gradient)


def build(args):
    import torch

    from meta_xlm.configuration_meta_xlm import MetaXLMConfig
    from meta_xlm.meta import trainable_parameter_groups
    from meta_xlm.modeling_meta_xlm import MetaXLMForMaskedLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layers, hidden, heads, ffn, vocab = SIZES[args.size]
    args.vocab = vocab
    config = MetaXLMConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=args.length + 2, languages=LANGUAGES, language_modules="adapters",
        sparse_prediction=True,  # as the pretraining recipe trains: only predicted positions reach the vocabulary
    )
    model = MetaXLMForMaskedLM(config).train()
    generator = torch.Generator().manual_seed(0)
    train_batches = [make_batch(step % 2, args, generator) for step in range(4)]
    val_batches = {code: make_batch(k, args, generator, validation_batch(args)) for k, code in enumerate(LANGUAGES)}
    return model, trainable_parameter_groups(model), train_batches, val_batches


def measure(mode: str, args) -> dict:
    """Runs in the subprocess: warm-up, timed steps of one mode, then the accuracy of its hypergradient."""
    import torch

    model, groups, train_batches, val_batches = build(args)
    language_ids = {id(p) for params in groups.languages.values() for p in params.values()}
    if mode == "plain":  # +adpt: one optimizer over everything
        theta_optimizer = torch.optim.AdamW(model.parameters(), lr=BETA)
    else:
        theta_optimizer = torch.optim.AdamW([p for p in model.parameters() if id(p) not in language_ids], lr=BETA)
        phi_optimizer = torch.optim.AdamW([p for p in model.parameters() if id(p) in language_ids], lr=BETA)
    rss_before = current_rss_mib()
    totals, hyper_times = [], []
    for step in range(args.warmup + args.steps):
        batch = train_batches[step % len(train_batches)]
        language = LANGUAGES[int(batch["lang_ids"][0])]
        start = time.perf_counter()
        theta_gradient = None
        if mode != "plain":
            if mode in PEERS:
                hyper = peer_hypergradient(mode, model, groups, language, batch, val_batches, theta_optimizer)
            else:
                result = our_hypergradient(mode.split("+")[0], model, groups, language, batch, val_batches,
                                           keep_theta_gradient=mode.endswith("+lookahead"))
                hyper, theta_gradient = result.hypergradient, result.theta_gradient
                del result  # it holds θ's gradient too: kept into the next step, it would count one θ twice
            hyper_times.append(time.perf_counter() - start)
            for name, param in groups.languages[language].items():  # φ_i's own AdamW (Algorithm 1 line 6)
                param.grad = hyper[name]
            phi_optimizer.step()
            phi_optimizer.zero_grad(set_to_none=True)
            del hyper
        if theta_gradient is None:  # Eq. 5 (plain: the whole +adpt step)
            loss = model(**batch).loss
            loss.backward()
        else:  # θ on the lookahead's gradient: no pass repeated
            for name, g in theta_gradient.items():
                model.get_parameter(name).grad = g
            loss = torch.zeros(())
        theta_optimizer.step()
        for param in model.parameters():
            param.grad = None
        del theta_gradient
        if not torch.isfinite(loss):
            raise RuntimeError(f"{mode}: non-finite loss {loss.item()}")
        if step >= args.warmup:
            totals.append(time.perf_counter() - start)
    peak = peak_rss_mib() - rss_before
    if args.memory_only:
        return {"peak_mib": peak}
    # accuracy at the initial weights, the same for every mode (a few AdamW steps shrink the higher-order term at
    # the paper's size until fp32 rounding of the direct term, which the peers compute on their own, dominates it)
    fresh, fresh_groups, _, _ = build(args)
    return {"seconds": totals, "hyper_seconds": hyper_times[args.warmup:], "peak_mib": peak,
            "cosine": cosine_with_exact(mode, fresh, fresh_groups, train_batches[1], val_batches, train_batches[0])}


def adam_state(model, groups, batch):
    """θ's AdamW with its moments filled by one gradient of `batch` at learning rate 0 (the weights do not move):
    the state Betty's `sama` preconditions with."""
    import torch

    optimizer = torch.optim.AdamW(list(groups.shared.values()), lr=0.0)
    model(**batch).loss.backward()
    optimizer.step()
    model.zero_grad(set_to_none=True)
    for group in optimizer.param_groups:
        group["lr"] = BETA
    return optimizer


def cosine_with_exact(mode, model, groups, batch, val_batches, state_batch) -> list[float] | None:
    """Cosines of the mode's ∇_{φ_i} M, and of its higher-order term (∂M/∂φ_i − ∇_{φ_i} M) / β, with ours by exact
    double backward: float32, dropout off. At β = 1e-4 the higher-order term is ~1e-3 of the direct one, so the
    first cosine is ~1 for every method; the second tells the methods apart."""
    import torch

    if mode == "plain":
        return None
    model.eval()
    language = LANGUAGES[int(batch["lang_ids"][0])]
    names = list(groups.languages[language])
    if mode in PEERS:
        optimizer = adam_state(model, groups, state_batch)
        got = peer_hypergradient(mode, model, groups, language, batch, val_batches, optimizer)
    else:
        got = our_hypergradient(mode.split("+")[0], model, groups, language, batch, val_batches).hypergradient
    exact = our_hypergradient("double_backward", model, groups, language, batch, val_batches)

    direct, reference, got = flat(exact.direct, names), flat(exact.hypergradient, names), flat(got, names)
    pairs = ((got, reference), (direct - got, direct - reference))
    return [float(torch.nn.functional.cosine_similarity(a, b, dim=0)) for a, b in pairs]


def accuracy_rows(args):
    """(method, precision, cosine, norm ratio) of every method's higher-order term against the exact fp32 one."""
    import torch

    from meta_xlm.meta import (
        count_labels, lookahead, meta_objective_gradients, mixed_hessian_vector_product, train_gradient,
    )

    model, groups, train_batches, val_batches = build(args)
    model.eval()  # dropout off: the methods compute the same function
    train, shared, phi = [train_batches[1]], groups.shared, groups.languages["te"]
    num_items = count_labels(train)
    gradient = train_gradient(model, train, shared, num_items, [0]).gradient
    outer, _, _ = meta_objective_gradients(model, val_batches, lookahead(shared, gradient, BETA), "te", phi,
                                           {c: count_labels([b]) for c, b in val_batches.items()})

    reference = flat(mixed_hessian_vector_product(model, train, shared, phi, outer, num_items, [0], "double_backward"),
                     phi)
    for method in OURS[1:-1]:
        for precision in ("fp32", "bf16"):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                kept = train_gradient(model, train, shared, num_items, [0], keep_graph=True)
                at_theta = train_gradient(model, train, phi, num_items, [0]).gradient
                term = flat(mixed_hessian_vector_product(model, train, shared, phi, outer, num_items, [0], method,
                                                         gradient_at_theta=at_theta, attached=kept.attached), phi)
            cosine = float(torch.nn.functional.cosine_similarity(term, reference, dim=0))
            yield method, precision, cosine, float(term.norm() / reference.norm())


PHASES = ("plain step (forward, backward, AdamW)", "lookahead pass, graph kept", "meta objective at θ'",
          "higher-order term (double backward)", "φ_i and θ AdamW steps")


def phase_measurements(args) -> dict:
    """Runs in the subprocess: the default step (double backward, θ on the lookahead's gradient) phase by phase, and a
    plain step, on one training batch: each phase's median seconds over --steps after --warmup, and the peak resident
    memory it reaches above the size before its step began (MiB; meaningful under the live-tensor allocator), so the
    meta step's phases show what they add to what the earlier phases still hold."""
    import torch

    from meta_xlm.meta import SGDLookahead, attached_hvp, count_labels, meta_objective_gradients, train_gradient

    model, groups, train_batches, val_batches = build(args)
    language, batch = "te", train_batches[1]
    shared, phi = groups.shared, groups.languages[language]
    num_items, val_items = count_labels([batch]), {c: count_labels([b]) for c, b in val_batches.items()}
    language_ids = {id(p) for params in groups.languages.values() for p in params.values()}
    plain_optimizer = torch.optim.AdamW(model.parameters(), lr=BETA)
    theta_optimizer = torch.optim.AdamW([p for p in model.parameters() if id(p) not in language_ids], lr=BETA)
    phi_optimizer = torch.optim.AdamW(list(phi.values()), lr=BETA)
    seconds, peaks = {phase: [] for phase in PHASES}, {phase: 0.0 for phase in PHASES}

    def timed(phase, function, before_step):
        reset_peak_rss()
        start = time.perf_counter()
        result = function()
        seconds[phase].append(time.perf_counter() - start)
        if len(seconds[phase]) > args.warmup:  # the warm-up steps create the optimizers' state
            peaks[phase] = max(peaks[phase], peak_rss_since_reset_mib() - before_step)
        return result

    def plain_step():
        model(**batch).loss.backward()
        plain_optimizer.step()
        plain_optimizer.zero_grad(set_to_none=True)

    def parameter_steps(hypergradient, theta_gradient):
        for name, param in phi.items():
            param.grad = hypergradient[name]
        for name, gradient in theta_gradient.items():
            model.get_parameter(name).grad = gradient
        phi_optimizer.step()
        theta_optimizer.step()
        model.zero_grad(set_to_none=True)

    for _ in range(args.warmup + args.steps):
        timed(PHASES[0], plain_step, current_rss_mib())
        before_step = current_rss_mib()
        train = timed(PHASES[1], lambda: train_gradient(model, [batch], shared, num_items, [0], keep_graph=True),
                      before_step)
        outer, direct, _ = timed(PHASES[2], lambda: meta_objective_gradients(
            model, val_batches, SGDLookahead(BETA).step(shared, train.gradient), language, phi, val_items,
            seeds={code: k for k, code in enumerate(val_batches)}), before_step)
        higher_order = timed(PHASES[3], lambda: attached_hvp(train.attached, phi, outer), before_step)
        hypergradient = {name: direct[name] - BETA * higher_order[name] for name in phi}  # Eq. 4
        timed(PHASES[4], lambda: parameter_steps(hypergradient, train.gradient), before_step)
        train = outer = direct = higher_order = hypergradient = None  # freed before the next plain step
    return {"seconds": {p: statistics.median(t[args.warmup:]) for p, t in seconds.items()}, "peak_mib": peaks}


def phase_report(args) -> None:
    """The phase table: time with freed memory reused, memory under the live-tensor allocator (separate runs)."""
    timed = run_worker(__file__, "phases", args, allocator=REUSE_FREED_MEMORY)["seconds"]
    sized = run_worker(__file__, "phases", args, allocator=LIVE_TENSORS, extra=["--warmup=1", "--steps=1"])["peak_mib"]
    plain_peak = sized[PHASES[0]]
    plain = timed[PHASES[0]]
    print(f"the default meta step phase by phase ({args.size} size, batch {args.batch} x {args.length}, validation "
          f"{validation_batch(args)} per language, {args.threads} threads, fp32); peak memory above the size before "
          "the step, MALLOC_MMAP_THRESHOLD_=65536")
    print(f"{'phase':<40} {'s':>7} {'x plain':>7} {'peak MiB':>9} {'x plain':>7}")
    for phase in PHASES:
        print(f"{phase:<40} {timed[phase]:>7.3f} {timed[phase] / plain:>7.2f} {sized[phase]:>9.0f} "
              f"{sized[phase] / plain_peak:>7.2f}")
    meta_step = sum(timed[phase] for phase in PHASES[1:])
    print(f"{'whole meta step':<40} {meta_step:>7.3f} {meta_step / plain:>7.2f}")
    print("Arithmetic of a linear layer in matmuls: forward 1, backward 2, double backward of <dL/dW, v> 4 (x and the "
          "output gradient each get two products), so an exact step with one lookahead pass and one meta-objective pass "
          "of the training batch's size costs about (3 + 3 + 4) / 3 = 3.3 plain forward/backward passes (a little less: "
          "the double backward skips what does not reach phi_i).")


def peer_status(mode: str) -> str | None:
    """Why a peer cannot run here, or None."""
    package = "higher" if mode == "higher" else "betty"
    try:
        __import__(package)
    except Exception as error:  # an import failure of a peer is reported, not fatal
        return (f"{mode}: cannot import {package} ({type(error).__name__}: {error}); install the pinned peers: "
                "pip install --no-deps --ignore-requires-python higher==0.2.1 betty-ml==0.2.1")
    return None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(parser, steps=5)
    parser.add_argument("--size", choices=list(SIZES), default="benchmark",
                        help="model size (layers, hidden, heads, FFN, vocab); --vocab is taken from it")
    parser.add_argument("--validation-batch", type=int, default=None, help="validation examples per language")
    parser.add_argument("--accuracy", action="store_true", help="print the higher-order term's accuracy table")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {list(MODES)}")
    parser.add_argument("--phases", action="store_true", help="time and memory of the default step, phase by phase")
    parser.add_argument("--worker", choices=[*MODES, "phases"], help=argparse.SUPPRESS)
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.modes = ["plain"] + [m for m in args.modes.split(",") if m != "plain"]
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown:
        parser.error(f"--modes: {unknown} not in {list(MODES)}")
    args.passthrough = [*size_passthrough(args), f"--size={args.size}"]
    if args.validation_batch is not None:
        args.passthrough.append(f"--validation-batch={args.validation_batch}")
    return args


def main():
    args = parse_args()
    if args.worker:
        print(json.dumps(phase_measurements(args) if args.worker == "phases" else measure(args.worker, args)))
        return
    if args.phases:
        phase_report(args)
        return
    if args.accuracy:
        print(f"higher-order term of Eq. 4 vs exact double backward in fp32; {args.size} size, dropout off, "
              f"batch {args.batch} x {args.length}, beta {BETA}")
        for method, precision, cosine, norm_ratio in accuracy_rows(args):
            print(f"{method:<22} {precision:<5} cosine {cosine:8.4f}  norm ratio {norm_ratio:8.4f}", flush=True)
        return
    skipped = {mode: reason for mode in args.modes if mode in PEERS and (reason := peer_status(mode))}
    collected = {mode: {"seconds": [], "hyper_seconds": [], "peak_mib": [], "cosine": None} for mode in args.modes}
    for round_index in range(args.rounds):
        for mode in (m for m in args.modes if m not in skipped):
            print(f"round {round_index + 1}/{args.rounds}: {mode}", file=sys.stderr, flush=True)
            try:
                timed = run_worker(__file__, mode, args, allocator=REUSE_FREED_MEMORY)
                sized = run_worker(__file__, mode, args, allocator=LIVE_TENSORS,
                                   extra=["--memory-only", "--warmup=1", "--steps=1"])
            except RuntimeError as error:  # a peer that fails on this model is reported with its reason
                if mode not in PEERS:
                    raise
                skipped[mode] = str(error).strip().splitlines()[-1]
                continue
            collected[mode]["seconds"] += timed["seconds"]
            collected[mode]["hyper_seconds"] += timed["hyper_seconds"]
            collected[mode]["peak_mib"].append(sized["peak_mib"])
            collected[mode]["cosine"] = timed["cosine"]
    report(args, collected, skipped)


def report(args, collected, skipped) -> None:
    ran = [mode for mode in args.modes if mode not in skipped]
    time_of = {m: statistics.median(collected[m]["seconds"]) for m in ran}
    hyper_of = {m: statistics.median(collected[m]["hyper_seconds"]) for m in ran if m != "plain"}
    peak_of = {m: max(collected[m]["peak_mib"]) for m in ran}
    layers, hidden, heads, ffn, vocab = SIZES[args.size]
    print(f"\n{args.size} size: {layers} layers, hidden {hidden}, {heads} heads, FFN {ffn}, vocab {vocab}; batch "
          f"{args.batch} x {args.length}, validation batch {validation_batch(args)} per language, {len(LANGUAGES)} "
          f"languages, fp32, {args.threads} threads, median of {args.steps * args.rounds} steps with freed memory "
          "reused; peak memory with MALLOC_MMAP_THRESHOLD_=65536")
    print(f"{'mode':<26} {'step s':>7} {'x plain':>7} {'hypergrad s':>11} {'peak MiB':>9} {'x plain':>7} "
          f"{'cos exact':>9} {'cos HO':>7}")
    for mode in ran:
        cosine, higher_order = collected[mode]["cosine"] or (None, None)
        print(f"{mode:<26} {time_of[mode]:>7.3f} {time_of[mode] / time_of['plain']:>7.2f} "
              f"{f'{hyper_of[mode]:.3f}' if mode in hyper_of else '':>11} {peak_of[mode]:>9.0f} {peak_of[mode] / peak_of['plain']:>7.2f} "
              f"{'' if cosine is None else f'{cosine:.4f}':>9} {'' if cosine is None else f'{higher_order:.4f}':>7}")
    for mode, reason in skipped.items():
        print(f"{mode}: not run: {reason}")
    for ours, target in (("double_backward+lookahead", 3.0), ("double_backward", 4.0)):
        if ours in ran:
            print(f"{ours} (default method): time {time_of[ours] / time_of['plain']:.2f}x plain (target <= {target}), "
                  f"memory {peak_of[ours] / peak_of['plain']:.2f}x plain (target <= 2.0)")
    if "higher" in ran:
        for ours in ("double_backward+lookahead", "double_backward"):
            if ours in ran:
                print(f"{ours} vs higher, whole step: time {time_of[ours] / time_of['higher']:.2f}x (target <= 0.75), "
                      f"peak {peak_of[ours] / peak_of['higher']:.2f}x (target <= 0.9); hypergradient only: time "
                      f"{hyper_of[ours] / hyper_of['higher']:.2f}x")
    print(f"peer versions: {peer_versions()}")


def peer_versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name, distribution in PEER_VERSIONS.items():
        try:
            found.append(f"{name} {version(distribution)}")
        except PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found)


if __name__ == "__main__":
    main()
