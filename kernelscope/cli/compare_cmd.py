"""``kernelscope compare``: follow the first layer's kernels across models or saved reports (Fig. 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kernelscope.cli import options as opt
from kernelscope.cli.context import console, progress_for
from kernelscope.cli.figures import check_report_outputs, write_report_outputs
from kernelscope.errors import AuditFailed, UsageError


def compare_command(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Two or more models (.onnx, TorchScript .pt; audited now with the options below) or saved "
            "`inspect --json` reports (.json), in order: checkpoints, versions, original then hardened."
        ),
    ],
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            "-d",
            help="Data for the models among the inputs (as for inspect); not needed when "
            "every input is a .json report.",
            rich_help_panel=opt.DATA,
        ),
    ] = None,
    data_dir: opt.DataDirOption = None,
    split: opt.SplitOption = "test",
    download: opt.DownloadOption = True,
    limit: opt.LimitOption = None,
    seed: opt.SeedOption = 0,
    batch_size: opt.BatchSizeOption = 128,
    layer: opt.LayerOption = None,
    output: opt.OutputOption = None,
    input_shape: opt.InputShapeOption = None,
    drop: opt.DropOption = "weights",
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples per audited model.")] = 200,
    attack: Annotated[str, typer.Option(help="Attack of each audited model's sweep: fgsm or pgd.")] = "fgsm",
    no_attack: Annotated[bool, typer.Option("--no-attack", help="Audit the models without the attack.")] = False,
    eps: Annotated[str | None, typer.Option(help="Attack epsilons in [0, 1] pixel units, e.g. 0.01,0.02.")] = None,
    eps_sweep: opt.EpsSweepOption = "lin",
    bounds: opt.BoundsOption = "0,1",
    atol: opt.AtolOption = None,
    allow_different_data: Annotated[
        bool, typer.Option("--allow-different-data", help="Compare reports measured on different images.")
    ] = False,
    fail_under: opt.FailUnderOption = None,
    max_drop: Annotated[
        list[str] | None,
        typer.Option(
            "--max-drop",
            help="Regression gates from the first input to the last, e.g. fgsm@0.01=0.02 (accuracy may fall at "
            "most 0.02) or fragile-share=0.1 (may rise at most 0.1). Repeatable; exit 1 when one fails.",
            rich_help_panel=opt.OUTPUT,
        ),
    ] = None,
    device: opt.DeviceOption = "auto",
    threads: opt.ThreadsOption = None,
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
    """Compare the first layer's kernels across models or reports: fragile in all, in some, in none."""
    from kernelscope import gates as gating
    from kernelscope.compare import compare_reports, read_report

    if len(inputs) < 2:
        raise UsageError("compare needs at least two models or reports")
    # --fail-under applies to the last input (the release candidate); --max-drop to first vs last.
    under = gating.parse_gates(fail_under or [])
    drops = gating.parse_gates(max_drop or [], "--max-drop")
    models = [p for p in inputs if p.suffix.lower() != ".json"]
    if models:
        if data is None:
            raise UsageError(f"--data is needed to audit the model {models[0]} (or pass its saved .json report)")
        for gates, option in ((under, "--fail-under"), (drops, "--max-drop")):
            gating.check_runnable(gates, attack=not no_attack, attack_method=attack.lower(), option=option)
    for path in inputs:
        if not path.exists():
            raise UsageError(f"{path} does not exist")
    check_report_outputs(json_path, html_path, plots_dir, force=force, inputs=tuple(inputs), command="compare")
    reports = [read_report(p) for p in inputs if p.suffix.lower() == ".json"]  # bad reports fail before any audit
    audited = {}
    if models:
        from kernelscope.attacks.pgd import PgdSettings
        from kernelscope.audit import inspect_model
        from kernelscope.report.json_report import inspect_to_dict

        config = opt.inspect_config(
            data=data, data_dir=data_dir, split=split, download=download, layer=layer, output=output,
            input_shape=input_shape, drop=drop, limit=limit, seed=seed, batch_size=batch_size, scale=scale,
            mean=mean, std=std, layout=layout, size=size, channels=channels, device=device, threads=threads,
            resize=resize, crop=crop, preset=preset, channel_order=channel_order, class_index=classes,
            bootstrap=bootstrap, attack=not no_attack, attack_method=attack.lower(), epsilons=eps,
            epsilons_option="--eps", eps_sweep=eps_sweep, bounds=bounds, atol=atol,
            extra_epsilons=gating.gate_epsilons([*under, *drops]), pgd=PgdSettings(),
        )  # fmt: skip
        progress = progress_for(quiet)
        for path in dict.fromkeys(models):  # a model given twice is audited once
            audited[path] = inspect_to_dict(inspect_model(path, config, progress=progress), include_timings=False)
    saved = iter(reports)
    docs = [audited[p] if p in audited else next(saved) for p in inputs]
    sources = ["model" if p in audited else "report" for p in inputs]
    doc = compare_reports(docs, [p.name for p in inputs], sources=sources, allow_different_data=allow_different_data)
    outcomes = gating.evaluate(under, docs[-1]) + gating.evaluate_drops(drops, docs[0], docs[-1])
    if outcomes:
        doc["gates"] = [o.to_dict() for o in outcomes]
    from kernelscope.cli.render import render_compare, render_gates

    render_compare(console(), doc, quiet=quiet)
    render_gates(console(), outcomes)
    write_report_outputs(lambda: doc, json_path, html_path, plots_dir, quiet=quiet)
    failed = gating.failure_line(outcomes)
    if failed:
        raise AuditFailed(failed)
