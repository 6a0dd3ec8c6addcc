"""``kernelscope inspect``: score every kernel of the first convolution on real data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kernelscope.cli import options as opt
from kernelscope.cli.context import console, progress_for
from kernelscope.cli.figures import check_report_outputs, write_report_outputs
from kernelscope.errors import AuditFailed, UsageError


def inspect_command(
    model: Annotated[Path, typer.Argument(help="Classifier to audit: .onnx, or TorchScript .pt (torch.jit.save).")],
    data: opt.DataOption,
    data_dir: opt.DataDirOption = None,
    split: opt.SplitOption = "test",
    download: opt.DownloadOption = True,
    limit: opt.LimitOption = None,
    seed: opt.SeedOption = 0,
    batch_size: opt.BatchSizeOption = 128,
    layer: opt.LayerOption = None,
    layers: Annotated[
        str | None,
        typer.Option(
            help="Audit several convolutions, each on its own: all, comma-separated names, or a pattern such as "
            "'*conv1*'. The first in data-flow order is the report's main layer."
        ),
    ] = None,
    backend: Annotated[
        str, typer.Option(help="Where kernel variants run: local (this process) or ray (a Ray cluster).")
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(help="With --backend ray: the cluster to join, e.g. ray://head:10001 or auto (default: local)."),
    ] = None,
    output: opt.OutputOption = None,
    input_shape: opt.InputShapeOption = None,
    drop: opt.DropOption = "weights",
    method: Annotated[
        str,
        typer.Option(
            help="exact (drop every kernel), taylor (one-pass first-order estimate) or hybrid (Taylor, then "
            "exact where in doubt)."
        ),
    ] = "exact",
    compare_exact: Annotated[
        bool, typer.Option(help="With --method taylor/hybrid: also score exactly and report the agreement.")
    ] = False,
    bootstrap: Annotated[
        int, typer.Option(help="Bootstrap resamples for the stability of each kernel's S/S' side.")
    ] = 1000,
    attack: Annotated[
        str, typer.Option("--attack", help="Attack of the ε sweep and targeting: fgsm (the paper's) or pgd.")
    ] = "fgsm",
    no_attack: Annotated[
        bool, typer.Option("--no-attack", help="Skip the attack sweep and targeting (only score kernels).")
    ] = False,
    eps: Annotated[
        str | None,
        typer.Option(help="Attack epsilons in [0, 1] pixel units, e.g. 0.01,0.02 (0 is always added)."),
    ] = None,
    pgd_norm: Annotated[str, typer.Option(help="With --attack pgd: linf or l2 (L2: ε is the norm of the change).")] = (
        "linf"
    ),
    pgd_steps: Annotated[int, typer.Option(help="With --attack pgd: steps per ε (each a forward+backward).")] = 10,
    pgd_step_size: Annotated[
        float | None, typer.Option(help="With --attack pgd: step size in [0, 1] pixel units (default 2.5·ε/steps).")
    ] = None,
    pgd_restarts: Annotated[
        int, typer.Option(help="With --attack pgd: runs per ε; each image keeps one that fools the model.")
    ] = 1,
    pgd_random_start: Annotated[
        bool, typer.Option("--pgd-random-start/--no-pgd-random-start", help="With --attack pgd: start inside the ball.")
    ] = True,
    targeting_at: opt.TargetingAtOption = "conv",
    eps_sweep: opt.EpsSweepOption = "lin",
    bounds: opt.BoundsOption = "0,1",
    atol: opt.AtolOption = None,
    min_accuracy: Annotated[
        float | None, typer.Option(help="Exit 1 when baseline accuracy is below this (0..1).")
    ] = None,
    fail_under: opt.FailUnderOption = None,
    device: opt.DeviceOption = "auto",
    mechanism: opt.MechanismOption = "auto",
    threads: opt.ThreadsOption = None,
    memory: opt.MemoryOption = "2GB",
    top: Annotated[int | None, typer.Option(help="Show only the N lowest-accuracy kernels in the table.")] = None,
    scale: opt.ScaleOption = None,
    mean: opt.MeanOption = None,
    std: opt.StdOption = None,
    layout: opt.LayoutOption = None,
    size: opt.SizeOption = None,
    resize: opt.ResizeOption = None,
    crop: opt.CropOption = None,
    preset: opt.PresetOption = None,
    channel_order: opt.ChannelOrderOption = None,
    classes: opt.ClassesOption = None,
    channels: opt.ChannelsOption = None,
    json_path: opt.JsonOption = None,
    html_path: opt.HtmlOption = None,
    plots_dir: opt.PlotsOption = None,
    force: opt.ForceOption = False,
    quiet: opt.QuietOption = False,
) -> None:
    """Score every kernel of the first Conv by dropping it, split them into fragile (S) and null (S')."""
    # Heavy libraries (torch, onnx, onnxruntime) load only when the command runs, so --help stays instant.
    from kernelscope.attacks.pgd import PgdSettings
    from kernelscope.audit import inspect_model
    from kernelscope.cli.render import render_gates, render_inspect
    from kernelscope.model.memory import parse_memory
    from kernelscope.report.json_report import inspect_to_dict

    if min_accuracy is not None and not 0 <= min_accuracy <= 1:
        raise UsageError(f"--min-accuracy is a fraction between 0 and 1, not {min_accuracy}")
    if top is not None and top <= 0:
        raise UsageError(f"--top must be positive, not {top}")
    from kernelscope import gates as gating

    gates = gating.parse_gates(fail_under or [])
    gating.check_runnable(gates, attack=not no_attack, attack_method=attack.lower())
    check_report_outputs(json_path, html_path, plots_dir, force=force, inputs=(model,))
    config = opt.inspect_config(
        data=data, data_dir=data_dir, split=split, download=download, layer=layer, output=output,
        input_shape=input_shape, drop=drop, mechanism=mechanism.lower(), limit=limit, seed=seed,
        batch_size=batch_size, scale=scale, mean=mean,
        std=std, layout=layout, size=size, channels=channels, device=device, threads=threads, bootstrap=bootstrap,
        resize=resize, crop=crop, preset=preset, channel_order=channel_order, class_index=classes,
        attack=not no_attack, attack_method=attack.lower(), epsilons=eps, epsilons_option="--eps",
        eps_sweep=eps_sweep, bounds=bounds, atol=atol, method=method, compare_exact=compare_exact,
        targeting_at=targeting_at, extra_epsilons=gating.gate_epsilons(gates), layers=layers,
        backend=backend.lower(), ray_address=ray_address, memory=parse_memory(memory),
        pgd=PgdSettings(
            norm=pgd_norm.lower(), steps=pgd_steps, step_size=pgd_step_size, random_start=pgd_random_start,
            restarts=pgd_restarts,
        ),
    )  # fmt: skip
    report = inspect_model(model, config, progress=progress_for(quiet))
    doc = inspect_to_dict(report) if gates or json_path or html_path or plots_dir else {}
    outcomes = gating.evaluate(gates, doc)
    if gates:
        doc["gates"] = [o.to_dict() for o in outcomes]
    render_inspect(console(), report, top=top, quiet=quiet)
    render_gates(console(), outcomes)
    write_report_outputs(lambda: doc, json_path, html_path, plots_dir, quiet=quiet)
    failed = gating.failure_line(outcomes)
    if min_accuracy is not None:
        baseline = report.baseline_accuracy
        if baseline is None:
            raise UsageError("--min-accuracy needs a clean accuracy: use --method exact or hybrid, or keep the attack")
        if baseline < min_accuracy:
            raise AuditFailed(f"baseline accuracy {baseline:.2%} is below --min-accuracy {min_accuracy:.2%}")
    if failed:
        raise AuditFailed(failed)
