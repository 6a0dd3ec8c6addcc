"""The versioned JSON document of a report (schema: docs/json-schema.md)."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from kernelscope.attacks.pgd import PgdSettings
from kernelscope.attacks.sweep import EpsilonAccuracy, EpsilonTargeting
from kernelscope.audit import DataSummary, InspectConfig, InspectReport, ModelSummary
from kernelscope.fast_scoring import FastScoring
from kernelscope.layers import LayerAudit, most_damaging
from kernelscope.model.first_conv import ConvLayer
from kernelscope.model.loading import TensorInfo
from kernelscope.model.surgery.kernel_mask import MaskSite
from kernelscope.scoring import ScoringResult

if TYPE_CHECKING:  # harden and neurons (torch) load only when their reports are written
    from kernelscope.harden import HardenReport, Measurement
    from kernelscope.harden.evaluate import Robustness, RobustnessChange
    from kernelscope.harden.search import Candidate
    from kernelscope.mirror.trainable import TunableSelection
    from kernelscope.neurons.analysis import NeuronsReport

#: Bumped on any incompatible change of keys or meanings; additions keep the version.
SCHEMA_VERSION = 1


def _tensor(info: TensorInfo) -> dict[str, Any]:
    return {"name": info.name, "dtype": str(info.dtype), "shape": list(info.shape) if info.shape is not None else None}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def model_dict(model: ModelSummary) -> dict[str, Any]:
    """The ``model`` section."""
    return {
        "path": model.path,
        "format": model.format,
        "opset": model.opset,
        "ir_version": model.ir_version,
        "producer": model.producer,
        "file_bytes": model.file_bytes,
        "input": _tensor(model.input),
        "output": _tensor(model.output),
        "outputs": model.output_names,
        "num_classes": model.num_classes,
        "nodes": model.node_count,
        "op_counts": model.op_counts,
        "parameters": model.parameters,
        "fixed_batch": model.fixed_batch,
    }


def layer_dict(layer: ConvLayer) -> dict[str, Any]:
    """The ``layer`` section (without ``mask_site``, which belongs to a scoring run)."""
    return {
        "name": layer.name,
        "op_type": layer.op_type,
        "in_channels": layer.in_channels,
        "out_channels": layer.out_channels,
        "kernel_shape": list(layer.kernel_shape),
        "group": layer.group,
        "strides": list(layer.strides),
        "dilations": list(layer.dilations),
        "has_bias": layer.has_bias,
        "weight_dtype": layer.weight_dtype,
        "quantized": layer.quantized,
        "weight_source": {
            "kind": layer.weight_source.kind,
            "tensor": layer.weight_source.stored_name,
            "through": list(layer.weight_source.chain),
        },
        "distance_from_input": layer.distance,
    }


def data_dict(data: DataSummary) -> dict[str, Any]:
    """The ``data`` section."""
    return {
        "name": data.name,
        "source": data.source,
        "split": data.split,
        "n": data.n,
        "available": data.available,
        "limit": data.limit,
        "seed": data.seed,
        "num_classes": data.num_classes,
        "class_names": data.class_names,
        "preprocessing": data.preprocessing.describe(),
    }


def inspect_to_dict(report: InspectReport, *, include_timings: bool = True) -> dict[str, Any]:
    """The ``inspect`` report as plain JSON types. Everything but ``timings`` is deterministic for a seed."""
    model, layer, data, scoring, fast = report.model, report.layer, report.data, report.scoring, report.fast
    site = scoring.mask_site if scoring else fast.mask_site
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kernelscope_version": report.kernelscope_version,
        "command": "inspect",
        "model": model_dict(model),
        "layer": layer_dict(layer) | {"mask_site": {"tensor": site.tensor, "after": list(site.passed)}},
        "data": data_dict(data),
        "method": report.method,
        "drop_mode": scoring.drop_mode if scoring else fast.drop_mode,
        "baseline_accuracy": report.baseline_accuracy,
        "mean_accuracy": scoring.mean_accuracy if scoring else None,
        "kernels": _kernels(report),
        "fragile": report.fragile,
        "null": report.null,
        "estimate": _estimate(fast),
        "statistics": {
            "test": "exact McNemar (two-sided) of kernel-dropped vs baseline predictions; Holm-adjusted over kernels",
            "bootstrap_resamples": scoring.bootstrap_resamples if scoring else 0,
        },
        "devices": report.devices,
        "execution": None
        if scoring is None
        else {
            "fixed_batch": scoring.plan.fixed_batch,
            "batch_made_dynamic": scoring.plan.batch_made_dynamic,
            "variants_per_run": scoring.plan.variants_per_run,
            "images_per_run": scoring.plan.images_per_run,
            "runs": scoring.plan.runs,
            "mechanism": scoring.plan.mechanism,
            "mechanism_note": scoring.plan.mechanism_note,
        },
        "warnings": report.warnings,
        "verdict": report.verdict,
    }
    doc.update(_attack_dict(report))
    if report.layers is not None:
        doc["layers"] = [layer_audit_dict(a) for a in report.layers]
        doc["network"] = {
            "layers": len(report.layers),
            "kernels": sum(a.layer.out_channels for a in report.layers),
            "fragile": sum(len(a.fragile) for a in report.layers),
            "most_damaging": [
                {"layer": a.layer.name, "kernel": k, "accuracy": a.accuracies[k], "drop": drop}
                for a, k, drop in most_damaging(report.layers)
            ],
            "skipped_layers": [{"layer": name, "reason": why} for name, why in report.skipped_layers],
        }
    if include_timings:
        doc["timings"] = {key: _finite(value) for key, value in report.timings.items()}
    return doc


def layer_audit_dict(audit: LayerAudit) -> dict[str, Any]:
    """One audited layer of ``--layers``: its description, kernels (as the top-level ``kernels``), split and
    targeting."""
    site = audit.scoring.mask_site if audit.scoring else audit.fast.mask_site
    return {
        "name": audit.layer.name,
        **{k: v for k, v in layer_dict(audit.layer).items() if k != "name"},
        "mask_site": {"tensor": site.tensor, "after": list(site.passed), "variants_fork_at": audit.variants_fork_at},
        "baseline_accuracy": audit.baseline_accuracy,
        "mean_accuracy": audit.scoring.mean_accuracy if audit.scoring else None,
        "fragile": audit.fragile,
        "null": audit.null,
        "fragile_share": audit.fragile_share,
        "mean_drop": audit.mean_drop,
        "worst_drop": audit.worst_drop,
        "worst_kernel": audit.worst_kernel,
        "kernels": kernel_entries(audit.scoring, audit.fast, audit.fragile, audit.layer, audit.holm_p_values),
        "targeting": targeting_list(audit.targeting),
        "estimate": _estimate(audit.fast),
    }


def fgsm_list(entries: list[EpsilonAccuracy]) -> list[dict[str, Any]]:
    """FGSM accuracy per ε."""
    return [
        {"epsilon": e.epsilon, "accuracy": e.accuracy, "ci95": list(e.ci95), "correct": e.correct, "n": e.n}
        for e in entries
    ]


def targeting_list(entries: list[EpsilonTargeting]) -> list[dict[str, Any]]:
    """Targeting fractions per ε > 0."""
    return [
        {
            "epsilon": t.epsilon,
            "fraction_attacking_fragile": t.fraction,
            "fraction_attacking_fragile_normalized": t.fraction_normalized,
            "attacking_fragile": t.attacking_fragile,
            "attacking_fragile_normalized": t.attacking_fragile_normalized,
            "n": t.n,
        }
        for t in entries
    ]


def targeting_at_dict(at: str, site: MaskSite | None) -> dict[str, Any]:
    """Which tensor the targeting test compared: ``conv`` or ``activation``, its name and the nodes passed."""
    return {
        "site": at,
        "tensor": site.tensor if site is not None else None,
        "after": list(site.passed) if site is not None else [],
    }


def _kernels(report: InspectReport) -> list[dict[str, Any]]:
    """Per-kernel entries of the (first) audited layer."""
    return kernel_entries(report.scoring, report.fast, report.fragile, report.layer, report.holm_p_values)


def kernel_entries(
    scoring: ScoringResult | None, fast: FastScoring | None, fragile_list: list[int], layer: ConvLayer,
    holm: list[float],
) -> list[dict[str, Any]]:  # fmt: skip
    """Per-kernel entries: exact scores when computed, plus the fast method's importance / estimate."""
    count = len(scoring.kernels) if scoring else len(fast.importance)
    fragile = set(fragile_list)
    norms = layer.kernel_norms()
    entries: list[dict[str, Any]] = []
    for k in range(count):
        entry: dict[str, Any] = {"index": k, "fragile": k in fragile, "weight_norm": float(norms[k])}
        if scoring is not None:
            s = scoring.kernels[k]
            entry |= {
                "accuracy": s.accuracy,
                "delta": s.delta,
                "exact_fragile": s.fragile,
                "correct_to_wrong": s.correct_to_wrong,
                "wrong_to_correct": s.wrong_to_correct,
                "p_value": s.p_value,
                "p_value_holm": holm[k],
                "split_stability": s.split_stability,
                "changed_predictions": s.changed_predictions,
            }
        else:
            entry["accuracy"] = fast.accuracies[k] if fast.accuracies is not None else None
        if fast is not None:
            entry["importance"] = fast.importance[k]
            entry["scored_exactly"] = scoring is not None or k in fast.exact_kernels
        entries.append(entry)
    return entries


def _estimate(fast: FastScoring | None) -> dict[str, Any] | None:
    if fast is None:
        return None
    agreement = fast.agreement
    return {
        "method": fast.method,
        "is_estimate": True,
        "exact_kernels": fast.exact_kernels,
        "screened_images": fast.screened_images,
        "seconds": fast.seconds,
        "agreement_with_exact": None
        if agreement is None
        else {"spearman": agreement.spearman, "split_agreement": agreement.split_agreement},
    }


def _attack_dict(report: InspectReport) -> dict[str, Any]:
    attack = report.attack
    if attack is None:
        return {"mirror": None, "fgsm": None, "pgd": None, "targeting": None, "targeting_at": None, "attack": None}
    sweep = attack.sweep
    settings = sweep.pgd
    return {
        "mirror": {
            "max_abs_diff": attack.mirror.max_abs_diff,
            "relative_diff": attack.mirror.relative_diff,
            "tolerance": attack.mirror.tolerance,
            "ok": attack.mirror.ok,
            "images": attack.mirror.images,
            "first_divergence": attack.mirror.first_divergence,
        },
        # The same shape under the name of the attack that ran; the other is null.
        "fgsm": fgsm_list(sweep.accuracy) if sweep.name == "fgsm" else None,
        "pgd": fgsm_list(sweep.accuracy) if sweep.name == "pgd" else None,
        "targeting": targeting_list(sweep.targeting),
        "targeting_at": targeting_at_dict(attack.targeting_at, attack.targeting_site),
        "attack": {
            "name": sweep.name,
            "space": "pixels scaled to [0, 1] (pixel / 255) at the model's size, before normalization",
            "epsilons": sweep.epsilons,
            "epsilon_source": attack.epsilon_source,
            "bounds": list(sweep.bounds),
            "loss": attack.preflight.loss,
            "output_kind": attack.preflight.output_kind,
            "inference_only_ops": attack.preflight.inference_only_ops,
            "zero_gradient_images": sweep.zero_gradient_images,
            "nonfinite_gradient_images": sweep.nonfinite_gradient_images,
            "loss_usage": sweep.loss_usage,
            "pgd": None if settings is None else pgd_settings_dict(settings),
        },
    }


def pgd_settings_dict(settings: PgdSettings) -> dict[str, Any]:
    """How PGD ran: norm, steps, step size (absolute, or relative to ε/steps), random start, restarts."""
    return {
        "norm": settings.norm,
        "steps": settings.steps,
        "step_size": settings.step_size,
        "relative_step": None if settings.step_size is not None else settings.relative_step,
        "random_start": settings.random_start,
        "restarts": settings.restarts,
    }


def dumps(doc: dict[str, Any]) -> str:
    """Serialize a report document: sorted keys, stable float formatting, a trailing newline."""
    return json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n"


def _torchscript_write(result) -> dict | None:
    """How a TorchScript archive was written back (None: the written file, if any, is ONNX)."""
    if result is None:
        return None
    return {
        "updates": [
            {"initializer": u.initializer, "parameters": list(u.parameters), "how": u.how} for u in result.updates
        ],
        "parity_relative_diff": _finite(result.parity_relative_diff),
        "parity_images": result.parity_images,
    }


def harden_to_dict(report: HardenReport, config: InspectConfig, *, include_timings: bool = True) -> dict[str, Any]:
    """The ``harden`` report as plain JSON types (schema: docs/json-schema.md)."""

    def measurement(m: Measurement | None) -> dict[str, Any] | None:
        if m is None:
            return None
        return {
            "clean_accuracy": m.clean_accuracy,
            "fgsm": fgsm_list(m.fgsm),
            "targeting": targeting_list(m.targeting),
            "mirror_relative_diff": m.mirror_relative_diff,
            "robustness": robustness_dict(m.robustness),
        }

    info = report.filter
    chosen = report.chosen
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kernelscope_version": report.kernelscope_version,
        "command": "harden",
        "model": model_dict(report.inputs.model_summary()),
        "layer": layer_dict(report.inputs.layer),
        "data": data_dict(report.inputs.data_summary(config)),
        "drop_mode": report.scoring.drop_mode,
        "baseline_accuracy": report.scoring.baseline_accuracy,
        "mean_accuracy": report.scoring.mean_accuracy,
        "kernels": [
            {
                "index": k.index,
                "accuracy": k.accuracy,
                "delta": k.delta,
                "fragile": k.fragile,
                "correct_to_wrong": k.correct_to_wrong,
                "wrong_to_correct": k.wrong_to_correct,
                "p_value": k.p_value,
                "changed_predictions": k.changed_predictions,
                "weight_norm": k.weight_norm,
            }
            for k in report.scoring.kernels
        ],
        "fragile": report.scoring.fragile,
        "null": report.scoring.null,
        "targeting_at": _harden_targeting_at(report),
        "harden": {
            "noise_level": chosen.noise_level if chosen else None,
            "svd_mode": report.svd_mode,
            "tau": info.tau if info else None,
            "alpha": info.alpha if info else None,
            "kept_singular_values": info.kept_singular_values if info else None,
            "rank": info.rank if info else None,
            "singular_values": list(info.singular_values) if info else None,
            "filtered_singular_values": list(info.filtered_singular_values) if info else None,
            "forced": report.forced,
            "audit_epsilon": report.audit_epsilon,
            "validation_images": report.n_validation,
            "evaluation_images": report.n_evaluation,
            "original_validation": {
                "clean_accuracy": report.original_validation[0],
                "fgsm_accuracy": report.original_validation[1],
                "worst_accuracy": report.original_validation_worst,
            },
            "method": report.method,
            "chosen": candidate_dict(chosen, True) if chosen else None,
            "clean_budget": report.clean_budget,
            "attacks": report.attacks,
            "change": change_dict(report.change),
            "confirmed": report.confirmed,
            "no_op": report.no_op,
            "first_change_level": _finite(report.first_change_level) if report.first_change_level is not None else None,
            "tuned": tuned_dict(report.tunable),
            "train_data": report.train,
            "runs": [
                {
                    "method": r.method,
                    "setting": r.label,
                    "strength": r.strength,
                    "epochs": len(r.checkpoints),
                    "seconds": r.seconds,
                    "images_per_second": r.images_per_second,
                    "skipped_batches": r.skipped_batches,
                }
                for r in report.runs
            ],
            "changed_initializers": report.changed_initializers,
            "candidates": [candidate_dict(c, c is chosen) for c in report.candidates],
            "improved": report.improved,
            "before": measurement(report.before),
            "after": measurement(report.after),
            "written": report.written[0] if report.written else None,
            "files": report.written,
            "torchscript": _torchscript_write(report.torchscript_write),
        },
        "devices": report.devices,
        "warnings": report.warnings,
        "verdict": report.verdict,
    }
    if include_timings:
        doc["timings"] = {key: _finite(value) for key, value in report.timings.items()}
    return doc


def robustness_dict(r: Robustness | None) -> dict[str, Any] | None:
    """Per attack: images right, of how many, and the share (the worst case counts only images that survive all)."""
    if r is None:
        return None
    return {
        "epsilon": r.epsilon,
        "images": r.n,
        **{name: {"correct": r.count(name), "accuracy": r.accuracy(name)} for name in r.attacks},
    }


def change_dict(change: RobustnessChange | None) -> dict[str, Any] | None:
    """Held-out after − before per attack, with the paired test and the interval."""
    if change is None:
        return None
    return {
        name: {
            "before": c.before,
            "after": c.after,
            "images": c.n,
            "difference": c.difference,
            "ci95": list(c.ci95),
            "gained": c.gained,
            "lost": c.lost,
            "p_value": c.p_value,
            "significant": c.significant,
        }
        for name, c in change.comparisons.items()
    }


def candidate_dict(c: Candidate, chosen: bool) -> dict[str, Any]:
    """One candidate of the search, as measured on validation."""
    return {
        "method": c.method,
        "setting": c.label,
        "chosen": chosen,
        "noise_level": c.noise_level,
        "source": c.source,
        "tau": c.tau,
        "alpha": c.alpha,
        "kept_singular_values": c.kept_singular_values,
        "strength": c.strength,
        "epoch": c.epoch,
        "train_images": c.train_images,
        "val_clean_accuracy": c.val_clean_accuracy,
        "val_fgsm_accuracy": c.val_fgsm_accuracy,
        "val_pgd_accuracy": c.val_pgd_accuracy,
        "val_transfer_accuracy": c.val_transfer_accuracy,
        "val_worst_accuracy": c.val_worst_accuracy,
        "within_budget": c.within_budget,
        "no_op": c.no_op,
    }


def tuned_dict(selection: TunableSelection | None) -> dict[str, Any] | None:
    """What fine-tuning could move."""
    if selection is None:
        return None
    return {
        "parameters": selection.parameters,
        "tensors": [
            {"name": t.name, "node": t.node, "op_type": t.op_type, "role": t.role, "shape": list(t.shape)}
            for t in selection.tensors
        ],
        "quantized_not_tuned": selection.quantized,
    }


def _harden_targeting_at(report: HardenReport) -> dict[str, Any] | None:
    """The site of the before/after targeting, as measured (read from the entries, so it cannot disagree)."""
    entries = report.before.targeting
    if not entries:
        return None
    at = entries[0].site
    from kernelscope.robustness import targeting_site

    return targeting_at_dict(at, targeting_site(report.inputs.model.proto, report.inputs.layer, at))


def _number(value: float) -> float | None:
    """A float for JSON: infinities and NaN become null."""
    return float(value) if math.isfinite(value) else None


def neurons_to_dict(report: NeuronsReport, config: InspectConfig, *, include_timings: bool = True) -> dict[str, Any]:
    """The ``neurons`` report as plain JSON types (schema: docs/json-schema.md)."""
    head, check, sens, s = report.head, report.check, report.sensitivity, report.settings
    single, pgd = report.single_neuron, report.pgd
    step = s.pgd.step_for(s.epsilon)
    neurons: dict[str, Any] = {
        "layer": head.name,
        "op_type": head.op_type,
        "feature_tensor": head.feature_tensor,
        "logits_tensor": head.logits_tensor,
        "count": head.features,
        "classes": head.classes,
        "relu_features": head.relu_features,
        "feature_source": list(head.feature_source),
        "after": list(head.after),
        "connected": head.connected,
        "check": {
            "weights_relative_diff": check.weights_relative_diff,
            "prediction_agreement": check.prediction_agreement,
            "feature_min": _number(check.feature_min),
            "mirror_feature_relative_diff": check.mirror_feature_relative_diff,
        },
        "ranking": "per image by (|Δ| − μ_i) / σ_i, smallest first; μ_i, σ_i: mean and std of f_i over the data",
        "most_sensitive": sens.order,
        "unflippable_images": sens.unflippable_images,
        "sensitivity": [
            {
                "index": n.index,
                "median_abs_delta": _number(n.median_abs_delta),
                "mean_scaled_delta": _number(n.mean_scaled_delta),
                "times_most_sensitive": n.times_most_sensitive,
                "flippable": n.flippable,
                "feature_mean": n.feature_mean,
                "feature_std": n.feature_std,
            }
            for n in sens.neurons
        ],
        "single_neuron_attack": None
        if single is None
        else {
            "k": [r.k for r in single.rates],
            "success_rate": [r.rate for r in single.rates],
            "successes": [r.successes for r in single.rates],
            "ci95": [list(r.ci95) for r in single.rates],
            "images": report.data.n,
            "epsilon": s.epsilon,
            "norm": s.pgd.norm,
            "steps": s.pgd.steps,
            "step_size": step,
            "random_start": s.pgd.random_start,
            "lambda": s.lam,
            "attacks": single.attacks,
            "skipped_infinite": single.skipped_infinite,
            "moved_toward_target": single.moved_toward_target,
        },
        "pgd": None
        if pgd is None
        else {
            "success_rate": pgd.rate,
            "successes": pgd.successes,
            "ci95": list(pgd.ci95),
            "images": pgd.n,
            "epsilon": s.epsilon,
            "norm": s.pgd.norm,
            "steps": s.pgd.steps,
            "step_size": step,
            "random_start": s.pgd.random_start,
        },
    }
    mirror = report.mirror
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kernelscope_version": report.kernelscope_version,
        "command": "neurons",
        "model": model_dict(report.model),
        "data": data_dict(report.data),
        "clean_accuracy": report.clean_accuracy,
        "neurons": neurons,
        "mirror": None
        if mirror is None
        else {
            "max_abs_diff": mirror.max_abs_diff,
            "relative_diff": mirror.relative_diff,
            "tolerance": mirror.tolerance,
            "ok": mirror.ok,
            "images": mirror.images,
            "first_divergence": mirror.first_divergence,
        },
        "devices": report.devices,
        "warnings": report.warnings,
        "verdict": report.verdict,
    }
    if include_timings:
        doc["timings"] = {key: _finite(value) for key, value in report.timings.items()}
    return doc
