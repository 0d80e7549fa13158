"""``ocnna-fast prune``: the whole job (``pipeline.PruneJob``): score, prune,
recalibrate, distill, evaluate, measure, report; outputs staged and moved
into --out only when the job succeeds."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .._util.distributed import is_main
from .._util.placement import describe_device
from ..budget.spec import DEFAULT_K, PruneSpec
from ..job.pipeline import JobResult, PruneJob
from ..models import factory_name, is_factory
from ..selection.criteria import CRITERIA, FamilyCriterion
from ..selection.rules import DEFAULT_CRITERION, FAMILY, PAPER_CRITERION
from ..surgery.plans import save_pruned
from . import budget_options, loading, options
from .outdir import out_dir, publish, staged
from .output import command_line, print_latency, prune_markdown, write_report, writer_lock


def register(sub) -> None:
    pr = sub.add_parser(
        "prune",
        help="score, prune, recover, distill and report (the whole job)",
        description="Makes a trained CNN physically smaller: ranks the filters of each coupled group, "
        "meets a budget (--target), or removes a percentile of every group (--k; --paper: the paper's rule), "
        "re-estimates BatchNorm, distills from the original and reports accuracy, size and latency.",
        epilog="example: ocnna-fast prune --arch resnet56 --target macs=0.5 --out runs/r56",
    )
    options.add_model_options(pr)
    options.add_data_options(pr)
    what = options.group(pr, "what to prune")
    rule = what.add_mutually_exclusive_group()
    rule.add_argument(
        "--k", type=options.PERCENTILE, default=None, help="percentile of filters removed per group (e.g. 40)"
    )
    rule.add_argument(
        "--paper",
        action="store_true",
        help="the paper's rule exactly: OCNNA's score, k=40, every layer (--criterion ocnna --k 40 --scope full)",
    )
    rule.add_argument(
        "--target",
        type=budget_options.target,
        default=None,
        metavar="KIND=RATIO",
        help="prune to a budget instead: macs=R, params=R or latency=R (R the pruned/base ratio; latency "
        "measured in --latency-runtime at --latency-batch on this CPU), per-group widths chosen by --allocation",
    )
    what.add_argument(
        "--criterion",
        default=None,
        choices=list(CRITERIA),
        metavar="NAME",
        help=f"what ranks the filters within a group (default {DEFAULT_CRITERION}: OCNNA's statistics with "
        "the activation scale kept, the best measured; ocnna is the paper's std/mean), mean-energy, or a peer "
        f"criterion of the bench ({', '.join(c for c in CRITERIA if c not in FAMILY)}); see docs/scoring.md "
        "and BENCHMARKS.md",
    )
    what.add_argument(
        "--n-components",
        type=options.n_components,
        default=None,
        help="PCA components per map: none (default: all), an int, or a ratio in (0, 1) of explained variance",
    )
    options.add_scope_option(pr)
    budget_options.add_budget_options(pr)
    budget_options.add_latency_target_options(pr)
    options.add_job_options(pr, finetune_epochs=2)
    _add_output_options(options.group(pr, "output"))
    options.add_run_options(pr, precision=True)
    options.add_threads_option(pr)
    pr.set_defaults(func=run)


def _add_output_options(output) -> None:
    output.add_argument(
        "--out",
        default=None,
        help="output folder (default runs/<model>-<rule>, e.g. runs/resnet56-macs0.5); a folder holding a "
        "finished run is not replaced without --overwrite (a stopped run in it resumes)",
    )
    output.add_argument(
        "--overwrite", action="store_true", help="replace the finished run in --out (its files are removed)"
    )


# what prune does when no budget is given: nothing; a budget is the user's to choose
NO_BUDGET = (
    "say how much to prune: --target macs=0.5 (a budget: MACs, params= or latency=; the measured best), "
    "--k 40 (the same share of every group), or --paper (the paper's rule)"
)


def resolve_rule(args: argparse.Namespace) -> None:
    """Fills in what the rule flags leave open: ``--paper`` is ``--criterion
    ocnna --k 40 --scope full``; ``--k`` prunes the inner scope and a target
    the full one unless ``--scope`` says; the criterion is the default one."""
    if args.paper:
        given = [f for f in ("criterion", "scope") if getattr(args, f) is not None]
        if given:
            raise ValueError(f"--paper fixes {', '.join('--' + f for f in given)}; drop it, or drop --paper")
        args.k, args.criterion, args.scope = DEFAULT_K, PAPER_CRITERION, "full"
        return
    if args.k is None and args.target is None:
        raise ValueError(NO_BUDGET)
    args.criterion = args.criterion or DEFAULT_CRITERION
    args.scope = args.scope or ("inner" if args.k is not None else "full")


def default_out(args: argparse.Namespace) -> str:
    """``runs/<model>-<rule>``: a folder named for what the run does."""
    model = factory_name(args.arch) if is_factory(args.arch) else args.arch
    rule = "paper" if args.paper else (args.target.replace("=", "") if args.target else f"k{args.k:g}")
    return f"runs/{model}-{rule}"


def _short(weights: str) -> str:
    """A weights file as its folder and name (which base it is, without the machine's paths)."""
    p = Path(weights)
    file = p.suffix and ":" not in weights  # a factory spec's dots and colon are not a file's
    return f"{p.parent.name}/{p.name}" if file and p.parent.name else weights


def _rule_name(args: argparse.Namespace) -> str:
    k = f"{args.k:g}"
    return f"the paper's rule (k={k}, every layer)" if args.paper else f"k={k} ({args.scope} scope)"


def run(args: argparse.Namespace) -> int:
    resolve_rule(args)
    kinds = [args.target.split("=")[0]] if args.target is not None else []
    sensitivity = (args.allocation or budget_options.BUDGET_DEFAULTS["allocation"]) == "sensitivity"
    budget_options.refuse_unused_budget_options(args, kinds, sensitivity)
    if args.target is not None and args.allocation == "sensitivity" and not args.bn_images:
        raise ValueError(
            "the sensitivity allocation re-estimates BatchNorm for each candidate on --bn-images training images: "
            "give --bn-images N (N > 0), or --allocation global"
        )
    size = loading.check_data_fits(args)
    args.out = args.out or default_out(args)
    finished = Path(args.out) / "report.json"
    if finished.is_file() and not args.overwrite:
        raise ValueError(
            f"{args.out} holds a finished run ({finished.name}); give another --out, or --overwrite to replace it"
        )
    out = out_dir(args.out, "prune", inputs=[w for w in (args.weights,) if w])  # refused before anything loads
    model, weights = loading.load_model(args.arch, args.weights, args.data_dir, args.dataset, size, seed=args.seed)
    model.to(args.device)  # loaded here for this job: it runs where the job does
    torch.manual_seed(args.seed)
    with writer_lock(out), staged(out) as stage:
        return _prune_into(args, model, weights, size, out, stage)


def spec_of(args: argparse.Namespace) -> PruneSpec:
    """The specification the prune flags say (``--folded-correction`` is ``folded``)."""
    return PruneSpec.from_flags({**vars(args), "folded": args.folded_correction})


def _job(args: argparse.Namespace, model, size: int, out: Path) -> PruneJob:
    data = loading.job_data(args)
    settings = loading.job_settings(args, spec_of(args), size, n_components=args.n_components, seed=args.seed)
    ignored = loading.ignored_layers(model, args.scope)
    return PruneJob(model, data, settings, ignored_layers=ignored, checkpoint_dir=out, progress=not args.no_progress)


def _print_recalibration(args: argparse.Namespace, job, recal) -> None:
    if recal and recal["method"].startswith("batchnorm"):
        refitted = (
            f" and {recal['reconstructed']} layers refitted by least squares ({recal['refit']})"
            if "reconstructed" in recal
            else ""
        )
        print(
            f"BatchNorm statistics re-estimated{refitted} on {recal['images']} training images: "
            f"accuracy {job.accuracy['recalibrated']:.2f}%"
        )
        if not refitted and not args.finetune_epochs:
            print("no distillation follows: --refit (a least-squares refit of the layers after the cut) adds points")
    elif recal:
        print(
            f"{args.arch} has its BatchNorm folded into its convs, so there are no statistics to re-estimate; "
            f"instead {_folded_line(recal)} (measured on {recal['images']} training images): "
            f"accuracy {job.accuracy['recalibrated']:.2f}%"
        )


def _prune_into(args: argparse.Namespace, model, weights: str, size: int, out: Path, stage: Path) -> int:
    job = _job(args, model, size, out)
    print(f"device: {describe_device(job.device)}, precision {job.settings.precision}")
    base = job.evaluate_base()
    print(
        f"base model {_short(weights)}: accuracy {base.accuracy:.2f}% on {len(job.data.evaluation)} "
        f"{args.dataset} test images"
    )
    outputs = ["pruned", "report.json", "report.md"]
    if isinstance(CRITERIA[args.criterion], FamilyCriterion):  # OCNNA's pass: its scores are kept
        job.score().save(stage / "scores.safetensors")
        outputs.insert(0, "scores.safetensors")
    else:
        job.rank()
    pruned, _ = job.surgery()
    how = _rule_name(args) if job.budget is None else _budget_line(job)
    print(
        f"pruned at {how}: {sum(p.numel() for p in pruned.parameters())}/{base.params} parameters, "
        f"accuracy right after surgery {job.accuracy['surgery']:.2f}%"
    )
    _print_recalibration(args, job, job.recalibrate())
    job.distill()
    result = job.result()
    save_pruned(
        stage / "pruned",
        result.pruned,
        result.plan,
        extra={
            "arch": args.arch,
            "num_classes": loading.num_classes(args.dataset, args.data_dir),
            "dataset": args.dataset,
            "input_size": size,
        },
    )
    if not is_main():  # under torchrun rank 0 alone measures and writes
        return 0
    report = _report(args, weights, job, result)
    if args.latency_repeats > 0:
        from ..deploy import export as ex

        report["latency"] = ex.compare_latency(
            model, result.pruned, size, args.latency_repeats, stage / ".latency", job.device
        )
        print_latency(report["latency"])
    title = _rule_name(args) if args.target is None else f"{args.target}, {args.allocation} allocation"
    title = f"Pruned {args.arch}: {args.criterion}, {title}"
    write_report(stage, report, title, prune_markdown(report, title))
    # the job finished: an earlier run's outputs and this run's checkpoints (the
    # distillation's, the allocation's losses) have nothing left to say
    publish(stage, out, outputs, command="prune")
    before = report["pruned_accuracy_before_finetune"]
    print(
        f"accuracy {base.accuracy:.2f}% -> {before:.2f}% (pruned) -> {result.final_accuracy:.2f}% "
        f"(after {_epochs(args.finetune_epochs)} of distillation); RPR {result.rpr:.4f}, "
        f"MACs ratio {result.macs_ratio:.4f}"
    )
    print(f"wrote {out / 'report.json'}, {out / 'report.md'} and {out / 'pruned'}")
    return 0


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def _budget_line(job: PruneJob) -> str:
    b = job.budget
    m = b.plan.get("budget", {}).get("measured")
    ms = f"; {m['runtime']} batch {m['batch']}: {m['base_ms']:.2f} -> {m['pruned_ms']:.2f} ms" if m else ""
    passes = (b.sensitivity or {}).get("passes")
    cost = f", {passes:.1f} forward passes" if passes is not None else ""
    return (
        f"{b.target} ({b.allocation} allocation, reached {b.target.kind}={b.reached:.4f}{ms} in "
        f"{job.seconds.get('allocate', 0):.0f} s{cost})"
    )


def _report(args: argparse.Namespace, weights: str, job: PruneJob, result: JobResult) -> dict:
    """What the job measured, after what identifies the run."""
    return {
        "arch": args.arch,
        "dataset": loading.describe(args.dataset),
        "base_weights": weights,
        "rule": "paper" if args.paper else ("k" if args.target is None else "target"),
        "k": job.settings.k,
        "scope": args.scope,
        "n_components": args.n_components,
        "criterion": args.criterion,
        "score_images": len(job.data.scoring),
        "eval_images": len(job.data.evaluation),
        **result.report(),
        "settings": _settings(args, job),
    }


def _settings(args: argparse.Namespace, job: PruneJob) -> dict:
    """What it takes to run the job again."""
    import torch

    from .._version import __version__

    train = job.data.training
    return {
        "training_images": len(train) if train is not None else 0,
        "learning_rate": args.lr,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "device": describe_device(job.device),
        "precision": job.settings.precision,
        "torch": torch.__version__,
        "ocnna_fast": __version__,
        "threads": torch.get_num_threads(),
        # distillation's figures move with these two (kernels sum in other orders): see README
        "cpu_capability": _cpu_capability(),
        "command": command_line(args),
    }


def _folded_line(recal) -> str:
    """What the folded-BatchNorm correction did, in words."""
    line = f"the removed channels' mean contributions went into {recal['compensated']} layers' biases"
    if "corrected" in recal:
        line += f", {recal['corrected']} convs got the base model's output mean and spread per channel"
    if "reconstructed" in recal:
        line += (
            f", {recal['reconstructed']} layers were refitted by least squares ({recal['rescaled']} depthwise rescaled; "
            f"{recal['refit']})"
        )
    return line


def _cpu_capability() -> str:
    """The instruction set torch's CPU kernels run with (e.g. AVX512, AVX2)."""
    get = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return get() if callable(get) else "unknown"
