"""``kernelscope neurons``: sensitivity of the final linear layer's input neurons and the single-neuron attack."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kernelscope.cli import options as opt
from kernelscope.cli.context import console, progress_for
from kernelscope.cli.figures import check_report_outputs, write_report_outputs
from kernelscope.errors import UsageError

ATTACK = "Single-neuron attack and PGD comparison"


def neurons_command(
    model: Annotated[Path, typer.Argument(help="Classifier to analyse: .onnx, or TorchScript .pt (torch.jit.save).")],
    data: opt.DataOption,
    data_dir: opt.DataDirOption = None,
    split: opt.SplitOption = "test",
    download: opt.DownloadOption = True,
    limit: opt.LimitOption = None,
    seed: opt.SeedOption = 0,
    batch_size: opt.BatchSizeOption = 128,
    layer: Annotated[
        str | None,
        typer.Option(help="The final linear layer (Gemm or MatMul node, by name or output name); default: found."),
    ] = None,
    output: opt.OutputOption = None,
    input_shape: opt.InputShapeOption = None,
    no_attack: Annotated[
        bool, typer.Option("--no-attack", help="Only the sensitivity table: no attacks.", rich_help_panel=ATTACK)
    ] = False,
    k: Annotated[
        str,
        typer.Option(help="How many top-ranked neurons to try per image, e.g. 1,4,8,16.", rich_help_panel=ATTACK),
    ] = "1,4,8,16",
    eps: Annotated[
        float, typer.Option(help="Attack budget ε in [0, 1] pixel units (L2 norm by default).", rich_help_panel=ATTACK)
    ] = 0.5,
    norm: Annotated[str, typer.Option(help="l2 (as the paper) or linf.", rich_help_panel=ATTACK)] = "l2",
    steps: Annotated[int, typer.Option(help="PGD steps of each attack.", rich_help_panel=ATTACK)] = 50,
    step_size: Annotated[
        float | None, typer.Option(help="PGD step in [0, 1] pixel units (default 2.5·ε/steps).", rich_help_panel=ATTACK)
    ] = None,
    lam: Annotated[
        float, typer.Option(help="Weight λ of the targeted neuron's term in the loss.", rich_help_panel=ATTACK)
    ] = 10.0,
    random_start: Annotated[
        bool,
        typer.Option("--random-start/--no-random-start", help="Start inside the ball.", rich_help_panel=ATTACK),
    ] = False,
    bounds: opt.BoundsOption = "0,1",
    atol: opt.AtolOption = None,
    device: opt.DeviceOption = "auto",
    threads: opt.ThreadsOption = None,
    memory: opt.MemoryOption = "2GB",
    top: Annotated[int, typer.Option(help="Neurons shown in the sensitivity table.")] = 10,
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
    html_path: Annotated[
        Path | None,
        typer.Option(
            "--html",
            help="Write a self-contained HTML report with the sensitivity and success-rate figures (needs "
            "matplotlib: the plots extra of kernelscope).",
            rich_help_panel=opt.OUTPUT,
        ),
    ] = None,
    plots_dir: Annotated[
        Path | None,
        typer.Option(
            "--plots",
            help="Write the two figures of the HTML report as PNG files into this folder (created if needed): "
            "neurons_sensitivity.png, neurons_success_vs_k.png (not with --no-attack); needs matplotlib.",
            rich_help_panel=opt.OUTPUT,
        ),
    ] = None,
    force: opt.ForceOption = False,
    quiet: opt.QuietOption = False,
) -> None:
    """Rank the neurons feeding the final linear layer by how little change flips the prediction; attack them."""
    # Heavy libraries (torch, onnx, onnxruntime) load only when the command runs, so --help stays instant.
    from kernelscope.attacks.pgd import PgdSettings
    from kernelscope.cli.render import render_neurons
    from kernelscope.model.memory import parse_memory
    from kernelscope.neurons.analysis import NeuronsConfig, analyse_neurons
    from kernelscope.neurons.attack import AttackSettings
    from kernelscope.report.json_report import neurons_to_dict

    if top <= 0:
        raise UsageError(f"--top must be positive, not {top}")
    ks = opt.parse_ints(k, "--k")
    check_report_outputs(json_path, html_path, plots_dir, force=force, inputs=(model,), command="neurons")
    inspect = opt.inspect_config(
        data=data, data_dir=data_dir, split=split, download=download, output=output, input_shape=input_shape,
        limit=limit, seed=seed, batch_size=batch_size, scale=scale, mean=mean, std=std, layout=layout, size=size,
        channels=channels, device=device, threads=threads, epsilons=None, epsilons_option="--eps", bounds=bounds,
        resize=resize, crop=crop, preset=preset, channel_order=channel_order, class_index=classes,
        atol=atol, memory=parse_memory(memory),
    )  # fmt: skip
    settings = AttackSettings(
        epsilon=eps,
        pgd=PgdSettings(norm=norm.lower(), steps=steps, step_size=step_size, random_start=random_start),
        lam=lam,
        ks=tuple(ks or ()),
    )
    config = NeuronsConfig(inspect=inspect, layer=layer, attack=not no_attack, settings=settings)
    report = analyse_neurons(model, config, progress=progress_for(quiet))
    render_neurons(console(), report, top=top, quiet=quiet)
    write_report_outputs(lambda: neurons_to_dict(report, inspect), json_path, html_path, plots_dir, quiet=quiet)
