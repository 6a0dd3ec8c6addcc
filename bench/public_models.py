"""Run public MNIST / CIFAR-10 / ImageNet classifiers (ONNX and TorchScript) through inspect, harden and neurons.

    python bench/public_models.py                        # every model in the manifest, 300 images each
    python bench/public_models.py --only zoo_mnist_8,oval21_base --limit 100
    python bench/public_models.py --probe                # plain onnxruntime accuracy per preprocessing guess

The model files are third-party and never committed: ``bench/public_models.json`` says, for each one, the
public repository, commit and path it came from (fetch it and put it under ``--models``, by default
``/work/public_models``), its exporter and opset, the data set, and the preprocessing its authors used.
Each model and command runs as a subprocess with a timeout and prints one line: exit code, wall time,
baseline accuracy, mirror parity and, on failure, the first line of the error. Next to kernelscope's
baseline, an independent one: the same images (own idx / tar readers, the same seeded subset rule as
``--limit``), the manifest's preprocessing, plain onnxruntime (or torch for TorchScript) and argmax.
The table is also written as Markdown (``--results``, updated after every model).

ImageNet classifiers (``"data": "imagenet-proxy"``) have no ImageNet data here: they get the CIFAR-10 test
photos upscaled as torchvision evaluates ImageNet (``--resize 256 --crop 224``, the manifest's ``resize`` /
``crop``) and a partial ``--classes`` index mapping the ten CIFAR folders to one ImageNet class each
(``CIFAR10_AS_IMAGENET`` of ``tests/imagenet_shapes.py``). Their accuracy is NOT a meaningful ImageNet
accuracy (32-px photos blown up, ten classes out of 1,000, one index each): those rows are a run check —
the file parses, the mirror matches onnxruntime, kernels are scored, the attacks run — and the independent
baseline checks that kernelscope's images and labels are the ones the script builds. They run on fewer
images (the manifest's ``max_limit`` / ``max_neurons_limit``, at most ``--limit`` / ``--neurons-limit``).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
CIFAR_TAR = DATA / "cifar10-jpg" / "test.tar"
IMAGENET_PROXY = "imagenet-proxy"  # CIFAR-10 test photos, upscaled, labelled with ImageNet indices
COMMANDS = ("inspect", "harden", "neurons")

# Preprocessing guesses tried by --probe: (name, scale, mean, std) on 0..255 pixels.
PROBES = [
    ("0-1", 1 / 255, [0.0], [1.0]),
    ("0-255", 1.0, [0.0], [1.0]),
    ("-1..1", 1 / 255, [0.5], [0.5]),
    ("mnist", 1 / 255, [0.1307], [0.3081]),
    ("cifar", 1 / 255, [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    ("cifar-kl", 1 / 255, [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
    ("oval", 1 / 255, [0.485, 0.456, 0.406], [0.225, 0.225, 0.225]),
    ("imagenet", 1 / 255, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
]
# The manifest's "preset" (kernelscope's --preset), for the independent baseline: scale, mean and std.
PRESETS = {name: {"scale": scale, "mean": mean, "std": std} for name, scale, mean, std in PROBES}


# ------------------------------------------------------------------------------------------------ data


def read_mnist(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST test split from the official idx files: (N, 28, 28, 1) uint8 and labels."""
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz") as f:
        raw = f.read()
    n, h, w = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(n, h, w, 1)
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return images, labels


def read_cifar_tar(archive: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A tar of ``<class>/<file>.jpg``: classes and files in sorted order (the folder convention)."""
    from PIL import Image

    members = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.isfile() and member.name.lower().endswith((".jpg", ".png")):
                cls, name = member.name.removeprefix("./").split("/")[-2:]
                members[(cls, name)] = tar.extractfile(member).read()
    classes = sorted({cls for cls, _ in members})
    keys = sorted(members)
    images = np.stack([np.asarray(Image.open(io.BytesIO(members[k])).convert("RGB")) for k in keys])
    labels = np.array([classes.index(cls) for cls, _ in keys], dtype=np.int64)
    return images, labels, classes


def cifar10_as_imagenet() -> dict[str, int]:
    """The ten CIFAR-10 folders as ImageNet indices, from the one place the project keeps them."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from imagenet_shapes import CIFAR10_AS_IMAGENET
    finally:
        sys.path.remove(str(ROOT / "tests"))
    return dict(CIFAR10_AS_IMAGENET)


def resize_crop(images: np.ndarray, resize: int | None, crop: int | None) -> np.ndarray:
    """torchvision's Resize(resize) + CenterCrop(crop) on PIL images (bilinear, shorter side to ``resize``)."""
    from PIL import Image

    out = []
    for image in images:
        pil = Image.fromarray(image)
        if resize:
            w, h = pil.size
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = resize, int(resize * long / short)
            pil = pil.resize((new_short, new_long) if w <= h else (new_long, new_short), Image.BILINEAR)
        if crop:
            w, h = pil.size
            top, left = round((h - crop) / 2.0), round((w - crop) / 2.0)
            pil = pil.crop((left, top, left + crop, top + crop))
        out.append(np.asarray(pil))
    return np.stack(out)


def load_images(entry: dict, limit: int, seed: int, cache: dict) -> tuple[np.ndarray, np.ndarray]:
    """The seeded subset ``--limit`` takes: sort(permutation(N, seed)[:limit]) (then, for ImageNet models,
    upscaled and cropped, and labelled with the ImageNet index of each CIFAR-10 folder)."""
    data = entry["data"]
    source = "mnist" if data == "mnist" else "cifar10"
    if source not in cache:
        cache[source] = (*read_mnist(DATA / "mnist"), None) if source == "mnist" else read_cifar_tar(CIFAR_TAR)
    images, labels, classes = cache[source]
    if limit < len(labels):
        chosen = np.sort(np.random.default_rng(seed).permutation(len(labels))[:limit])
        images, labels = images[chosen], labels[chosen]
    if data == IMAGENET_PROXY:
        index = cifar10_as_imagenet()
        images = resize_crop(images, entry.get("resize"), entry.get("crop"))
        labels = np.array([index[classes[label]] for label in labels], dtype=np.int64)
    return images, labels


def data_flags(entry: dict, workdir: Path) -> list[str]:
    if entry["data"] == "mnist":
        return ["--data", "mnist", "--data-dir", str(DATA / "mnist"), "--no-download"]
    flags = ["--data", str(CIFAR_TAR)]
    if entry["data"] == IMAGENET_PROXY:
        classes = workdir / "cifar10_as_imagenet.json"
        if not classes.exists():
            classes.write_text(json.dumps(cifar10_as_imagenet()))
        flags += [f for key in ("resize", "crop") if key in entry for f in (f"--{key}", str(entry[key]))]
        flags += ["--classes", str(classes)]
    return flags


# ------------------------------------------------------------------------------------------------ preprocessing


def prep_flags(pre: dict) -> list[str]:
    """The manifest's preprocessing as kernelscope options (only the keys it sets)."""
    flags = []
    for key in ("preset", "scale", "mean", "std", "layout", "channels", "size"):
        if key in pre:
            value = pre[key]
            flags += [f"--{key}", ",".join(str(v) for v in value) if isinstance(value, list) else str(value)]
    return flags


def preprocess(images: np.ndarray, pre: dict, shape: list, dtype: np.dtype) -> np.ndarray:
    """(pixel * scale - mean) / std, laid out and shaped as the model's input wants."""
    pre = {**PRESETS.get(pre.get("preset", ""), {}), **pre}  # explicit keys override the preset, as in kernelscope
    x = images.astype(np.float64) * pre.get("scale", 1 / 255)
    x = (x - np.array(pre.get("mean", [0.0]))) / np.array(pre.get("std", [1.0]))
    if pre.get("layout", "NCHW") == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    if shape and len(shape) != 4:  # e.g. (N, 28, 28) or (N, 784, 1): the model's own static dims
        x = x.reshape(len(x), *[d if isinstance(d, int) else -1 for d in shape[1:]])
    return np.ascontiguousarray(x.astype(dtype))


# ------------------------------------------------------------------------------------------------ independent baseline


def onnx_predict(path: Path, x_fn, batch: int = 100):
    """Argmax of the first output for every image, batch by batch (batch 1 for fixed-batch graphs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    dtype = {
        "tensor(float)": np.float32,
        "tensor(double)": np.float64,
        "tensor(float16)": np.float16,
        "tensor(uint8)": np.uint8,
    }.get(inp.type, np.float32)
    fixed = isinstance(inp.shape[0], int) if inp.shape else True
    step = inp.shape[0] if fixed else batch
    x = x_fn(inp.shape, dtype)
    preds = []
    for start in range(0, len(x), step):
        chunk = x[start : start + step]
        if len(chunk) < step and fixed:  # pad a fixed batch, drop the padding's predictions
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - len(chunk), 0)])
        out = session.run(None, {inp.name: chunk})[0]
        preds.append(np.asarray(out).reshape(len(chunk), -1).argmax(1)[: min(step, len(x) - start)])
    return np.concatenate(preds)


def torch_predict(path: Path, x_fn, batch: int = 100):
    import torch

    torch.set_num_threads(1)
    module = torch.jit.load(str(path), map_location="cpu").eval()
    x = x_fn([None, None, None, None], np.float32)
    with torch.no_grad():
        return np.concatenate(
            [module(torch.from_numpy(x[i : i + batch])).argmax(1).numpy() for i in range(0, len(x), batch)]
        )


def independent_accuracy(path: Path, entry: dict, pre: dict, images: np.ndarray, labels: np.ndarray) -> float:
    def x_fn(shape, dtype):
        return preprocess(images, pre, shape, dtype)

    predict = torch_predict if path.suffix in (".pt", ".pth") else onnx_predict
    return float((predict(path, x_fn) == labels).mean())


# ------------------------------------------------------------------------------------------------ kernelscope runs


def limit_of(command: str, args, entry: dict) -> int:
    """--limit (--neurons-limit for neurons), at most the manifest's max_limit (max_neurons_limit)."""
    if command == "neurons":
        return min(args.neurons_limit, entry.get("max_neurons_limit", args.neurons_limit))
    return min(args.limit, entry.get("max_limit", args.limit))


def run_command(command: str, path: Path, entry: dict, args, workdir: Path) -> dict:
    report = workdir / f"{entry['id']}.{command}.json"
    cmd = [
        args.kernelscope,
        command,
        str(path),
        *data_flags(entry, workdir),
        *prep_flags(entry.get("preprocessing", {})),
        *entry.get("extra_flags", []),
        "--limit",
        str(limit_of(command, args, entry)),
        "--threads",
        str(args.threads),
        "--json",
        str(report),
        "--force",
    ]
    if command == "inspect":
        cmd += ["--bootstrap", str(args.bootstrap), *shlex.split(args.inspect_extra or "")]
    elif command == "harden":
        cmd += ["--noise", str(args.noise), "-o", str(workdir / f"{entry['id']}.hardened.onnx"), "--force"]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
        rc, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired:
        rc, stderr = "timeout", f"timed out after {args.timeout} s"
    result = {"command": command, "rc": rc, "seconds": time.perf_counter() - started, "error": ""}
    result["images"] = limit_of(command, args, entry)
    if rc != 0:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        errors = [line for line in lines if "Error" in line or line.startswith("error")]
        result["error"] = (errors[-1] if errors else lines[-1] if lines else "")[:300]
    if report.exists():
        doc = json.loads(report.read_text())
        result["baseline"] = doc.get("baseline_accuracy", doc.get("clean_accuracy"))
        if command == "harden":  # the evaluation half: clean accuracy before -> after, and the file in onnxruntime
            harden = doc.get("harden") or {}
            before, after = harden.get("before") or {}, harden.get("after") or {}
            result["baseline"] = before.get("clean_accuracy", result["baseline"])
            if after:
                result["parity"] = f"rel {after.get('mirror_relative_diff', float('nan')):.1e}"
                result["hardened"] = f"{after.get('clean_accuracy', float('nan')):.3f}"
            if harden.get("written"):
                result["hardened"] = result.get("hardened", "") + " " + loads_in_onnxruntime(harden["written"])
        mirror = doc.get("mirror") or {}
        if mirror:
            result["parity"] = f"{'ok' if mirror.get('ok') else 'FAIL'} {mirror.get('max_abs_diff', float('nan')):.1e}"
        fgsm = doc.get("fgsm") or []
        if command == "inspect" and fgsm:
            result["fgsm"] = f"{fgsm[-1]['accuracy']:.3f}@{fgsm[-1]['epsilon']:g}"
        attack = doc.get("attack") or {}
        if attack.get("zero_gradient_images"):
            result["zero_grad"] = attack["zero_gradient_images"]
        result["warnings"] = len(doc.get("warnings", []))
    return result


def loads_in_onnxruntime(path: str) -> str:
    import onnxruntime as ort

    try:
        ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return "loads"
    except Exception as exc:  # reported, not raised
        return f"DOES NOT LOAD ({str(exc).splitlines()[0][:80]})"


def fmt(value, spec=".3f") -> str:
    return "–" if value is None else format(value, spec) if isinstance(value, float) else str(value)


def line(entry: dict, r: dict, ref) -> str:
    extra = f" fgsm={r['fgsm']}" if "fgsm" in r else ""
    extra += f" zero_grad={r['zero_grad']}" if "zero_grad" in r else ""
    extra += f" hardened={r['hardened']}" if "hardened" in r else ""
    err = f" | {r['error']}" if r["error"] else ""
    return (
        f"{entry['id']:<34} {r['command']:<8} rc={fmt(r['rc']):<7} {r['seconds']:6.1f}s "
        f"base={fmt(r.get('baseline'))} ort={fmt(ref)} parity={r.get('parity', '–')}{extra}{err}"
    )


def revision() -> str:
    """The commit kernelscope ran at, marked when its working tree had changes."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    dirty = subprocess.run(["git", "status", "--porcelain", "kernelscope"], capture_output=True, text=True, cwd=ROOT)
    return head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def write_markdown(path: Path, rows: list, limit: int) -> None:
    proxy = {r["images"] for entry, r, _ in rows if entry["data"] == IMAGENET_PROXY and r["command"] != "neurons"}
    proxy = sorted(proxy)
    out = [
        f"# kernelscope on public models ({limit} images each"
        + (f"; ImageNet models {', '.join(map(str, proxy))}" if proxy else "")
        + ")",
        "",
        f"Written by `bench/public_models.py`, {time.strftime('%Y-%m-%d %H:%M')}, kernelscope {revision()}.",
        "",
        "baseline: inspect on all the images; harden: clean accuracy before hardening on its evaluation half"
        " (after: the hardened model's, and whether the file loads in onnxruntime); neurons: on --neurons-limit"
        " images. indep. ORT: plain onnxruntime / torch on the same images (harden: on all of them).",
        "",
        *(
            [
                f"{IMAGENET_PROXY}: ImageNet classifiers fed CIFAR-10 test photos upscaled with --resize 256 --crop 224"
                " and a partial --classes index (each CIFAR folder as one ImageNet class). Their accuracy is NOT a"
                " meaningful ImageNet accuracy; those rows only check that the model parses, the mirror matches"
                " onnxruntime, the kernels are scored and the attacks run.",
                "",
            ]
            if proxy
            else []
        ),
        "| id | data | exporter | opset | command | exit | s | baseline | indep. ORT | parity | notes / error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for entry, r, ref in rows:
        note = r["error"].replace("|", "\\|")
        note = " ".join(
            x
            for x in (
                f"fgsm {r['fgsm']}" if "fgsm" in r else "",
                f"zero-grad {r['zero_grad']}" if "zero_grad" in r else "",
                f"after {r['hardened']}" if "hardened" in r else "",
                note,
            )
            if x
        )
        out.append(
            f"| {entry['id']} | {entry['data']} | {entry.get('exporter', '?')} | {entry.get('opset', '?')} "
            f"| {r['command']} | {r['rc']} | {r['seconds']:.1f} | {fmt(r.get('baseline'))} | {fmt(ref)} "
            f"| {r.get('parity', '–')} | {note} |"
        )
    passed, completed, refused = {}, {}, {}
    for entry, r, _ in rows:
        passed.setdefault(entry["id"], []).append(r["rc"] == 0)
        # harden's documented exit 1: it ran, but wrote nothing (no level helped, or the change is a no-op)
        nothing_written = r["command"] == "harden" and r["rc"] == 1 and "nothing written" in r["error"]
        completed.setdefault(entry["id"], []).append(r["rc"] == 0 or nothing_written)
        if entry.get("expect") == "refuse" and r["command"] in entry.get("refused_by", COMMANDS):
            # "refused_by": the commands that must refuse it (neurons needs no Conv: an MLP is refused by
            # inspect and harden only, and neurons must then run it)
            refused.setdefault(entry["id"], []).append(r["rc"] == 2)
        elif entry.get("expect") == "refuse":
            refused.setdefault(entry["id"], []).append(r["rc"] == 0)
    full = sum(all(v) and len(v) == len(COMMANDS) for k, v in passed.items() if k not in refused)
    done = sum(all(v) and len(v) == len(COMMANDS) for k, v in completed.items() if k not in refused)
    clean = sum(all(v) for v in refused.values())
    out += [
        "",
        f"{full} of {len(passed) - len(refused)} models that should run went through all three commands with exit 0"
        f" ({done} counting harden's exit 1 'nothing written' as done);"
        f" {clean} of {len(refused)} that should be refused were refused with exit 2 by every command meant to"
        " refuse them (and run by the others).",
    ]
    path.write_text("\n".join(out) + "\n")
    records = [{"id": entry["id"], "ref": ref, **r} for entry, r, ref in rows]
    path.with_suffix(".json").write_text(json.dumps(records, indent=1))


# ------------------------------------------------------------------------------------------------ main


def probe(entries: list, args, cache: dict) -> None:
    """Plain onnxruntime accuracy of each model under every preprocessing guess (to choose the manifest's)."""
    for entry in entries:
        path = args.models / entry["file"]
        images, labels = load_images(entry, limit_of("inspect", args, entry), args.seed, cache)
        scores = []
        for name, scale, mean, std in PROBES:
            pre = {**entry.get("preprocessing", {}), "scale": scale, "mean": mean, "std": std}
            if len(mean) != images.shape[-1] and len(mean) > 1:
                continue
            try:
                scores.append(f"{name}={independent_accuracy(path, entry, pre, images, labels):.3f}")
            except Exception as exc:  # a probe reports, it does not stop
                scores.append(f"{name}=ERR({str(exc).splitlines()[0][:60]})")
        print(f"{entry['id']:<34} {' '.join(scores)}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("/work/public_models"), help="folder of model files")
    parser.add_argument("--manifest", type=Path, default=ROOT / "bench" / "public_models.json")
    parser.add_argument("--results", type=Path, help="Markdown table (default: MODELS/results.md)")
    parser.add_argument("--only", help="comma-separated model ids")
    parser.add_argument("--commands", default=",".join(COMMANDS))
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--neurons-limit", type=int, default=100, help="--limit for neurons (its slowest step)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--noise", type=float, default=0.01, help="harden --noise")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per command")
    parser.add_argument("--kernelscope", default=str(Path(sys.executable).with_name("kernelscope")))
    parser.add_argument("--probe", action="store_true", help="only print onnxruntime accuracy per preprocessing")
    parser.add_argument("--inspect-extra", help="more inspect options, e.g. '--layers all --no-attack'")
    args = parser.parse_args()

    entries = json.loads(args.manifest.read_text())["models"]
    if args.only:
        wanted = set(args.only.split(","))
        entries = [e for e in entries if e["id"] in wanted]
    cache: dict = {}
    if args.probe:
        probe(entries, args, cache)
        return 0
    results_path = args.results or args.models / "results.md"
    rows = []
    with tempfile.TemporaryDirectory(prefix="kernelscope-public-") as tmp:
        for entry in entries:
            path = args.models / entry["file"]
            if not path.exists():
                print(f"{entry['id']:<34} missing {path} (fetch {entry['source']['repo']}:{entry['source']['path']})")
                continue
            refs = {}
            for limit in {limit_of(command, args, entry) for command in args.commands.split(",")}:
                images, labels = load_images(entry, limit, args.seed, cache)
                try:
                    refs[limit] = independent_accuracy(path, entry, entry.get("preprocessing", {}), images, labels)
                except Exception as exc:  # reported in the table
                    refs[limit] = f"ERR {str(exc).splitlines()[0][:80]}"
            for command in args.commands.split(","):
                r = run_command(command, path, entry, args, Path(tmp))
                ref = refs[limit_of(command, args, entry)]
                print(line(entry, r, ref), flush=True)
                rows.append((entry, r, ref))
                write_markdown(results_path, rows, args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
