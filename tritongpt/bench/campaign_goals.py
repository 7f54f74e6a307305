"""SUMMARY.md of a campaign folder: every goal figure against its goal, computed from the folder's
files alone (bench/campaign.py writes it last; --collect writes it again over both parts).

The goals (one GPU, bf16, GPT-2 124M, T=1024):
    training step   >= 600,000 tokens/sec (MFU about 50% of 989 TFLOP/s by gpt/flops.py's formula)
                    and >= 1.25x torch+compile, each path at its best micro-batch; peak memory
                    <= 0.6x torch+compile's at the same micro-batch
    attention       causal, D=64, T=1024, B*H=192: fwd >= 350 TFLOP/s, fwd+bwd >= 250 TFLOP/s, and
                    at least as fast as F.scaled_dot_product_attention in the same run
    LayerNorm       (and the fused residual LayerNorm) fwd+bwd at (16384, 768): >= 85% of the
                    measured copy bandwidth, faster than torch and torch.compile
    cross_entropy   >= 80% of copy bandwidth (fwd+bwd, GPT-2's 8192 x 50304)
    linear_cross_entropy  no slower than compiled F.linear + F.cross_entropy, at <= 1/4 of its memory
    linear_gelu     >= 1.1x matmul + GELU unfused (eager), within 10% of cuBLAS's matmul alone (fwd)
    convergence     the torch and triton backends' losses within 2% at every evaluation

A verdict is met or not met only for a GPU figure of this folder; a CPU figure (the smoke) is
shown but "not measured", and so is a figure whose file or case is missing.
"""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

PATH_NAMES = ("torch", "torch+compile", "triton", "triton+compile")
FUSED_LN = "add_layer_norm"  # the fused residual + LayerNorm op, where bench/ops.py has it


def _json(folder, name):
    try:
        return json.loads((Path(folder) / name).read_text())
    except (OSError, ValueError):
        return None


def _junit(path):
    """(counts, [failing test ids]) of a junit XML, or None."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in root.iter("testsuite"):
        for k in counts:
            counts[k] += int(suite.get(k, 0))
    failing = [f"{c.get('classname')}::{c.get('name')}" for c in root.iter("testcase")
               if c.find("failure") is not None or c.find("error") is not None]
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts, failing


class Rows:
    """The goal table: each row a goal, its target, the measured figure, the verdict, the file.
    A smoke run's figures are never judged, not even on a GPU: they are not at the goals' sizes."""

    def __init__(self, smoke=False):
        self.rows = []
        self.smoke = smoke

    def add(self, goal, target, value, ok, gpu, source, why=None):
        """value: the measured figure as text (None: not measured, `why` says why); ok: the
        comparison's outcome; gpu: whether the figure is a GPU figure."""
        if value is None:
            verdict = f"not measured: {why}" if why else "not measured"
        elif self.smoke:
            verdict = "not measured (smoke figure, not at the goal's size)"
        elif not gpu:
            verdict = "not measured (CPU figure, not a GPU figure)"
        else:
            verdict = "met" if ok else "not met"
        self.rows.append((goal, target, value or "-", verdict, source))


# ----------------------------------------------------------------------------- the training step


def step_goals(rows, step, src):
    if not step:
        for goal in ("training step tokens/sec", "MFU", "speedup over torch+compile", "peak memory vs torch+compile"):
            rows.add(goal, "", None, False, False, src, "no training-step result")
        return
    gpu = step["gpu_figures"]
    paths = {p["path"]: p for p in step["paths"] if p["status"] == "ok"}
    ours = [paths[p] for p in ("triton", "triton+compile") if p in paths]
    best = max(ours, key=lambda p: p["tokens_per_sec"]) if ours else None
    base = paths.get("torch+compile")
    why = "no triton path ran"
    at = f"({best['path']}, batch {best['batch']})" if best else ""
    rows.add("training step tokens/sec, fastest triton path at its best batch", ">= 600,000",
             best and f"{best['tokens_per_sec']:,.0f} {at}", best and best["tokens_per_sec"] >= 600_000, gpu, src, why)
    mfu = best and best["mfu"]
    rows.add("MFU of that step (6N + 12 L C T FLOPs per token over the dense bf16 peak)", "about 50% (>= 50%)",
             mfu and f"{100 * mfu:.1f}% {at}", mfu is not None and mfu >= 0.5, gpu, src,
             why if not best else step["flops"].get("peak_note") or "no peak for this device")
    ratio = best and base and base["ms_per_step"] and best["tokens_per_sec"] / base["tokens_per_sec"]
    rows.add("speedup over torch+compile, each at its best batch", ">= 1.25x",
             ratio and f"{ratio:.2f}x ({best['tokens_per_sec']:,.0f} vs {base['tokens_per_sec']:,.0f} tok/s, "
                       f"batch {best['batch']} vs {base['batch']})",
             ratio and ratio >= 1.25, gpu, src, why if not best else "torch+compile did not run")
    # peak memory at one micro-batch both measured: the triton path's best, else the largest in common
    value, ok, why_mem = None, False, why if not best else "torch+compile did not run"
    if best and base:
        mine = {t["batch"]: t["peak_memory_gib"] for t in best.get("tries", []) if t["status"] == "ok"}
        theirs = {t["batch"]: t["peak_memory_gib"] for t in base.get("tries", []) if t["status"] == "ok"}
        mine.setdefault(best["batch"], best["peak_memory_gib"])
        theirs.setdefault(base["batch"], base["peak_memory_gib"])
        common = [b for b in mine if b in theirs and mine[b] is not None and theirs[b]]
        b = best["batch"] if best["batch"] in common else max(common, default=None)
        if b is None:
            why_mem = "no micro-batch with a peak-memory figure for both (peak memory is measured on a GPU only)"
        else:
            r = mine[b] / theirs[b]
            value, ok = f"{r:.2f}x ({mine[b]:.2f} vs {theirs[b]:.2f} GiB at batch {b})", r <= 0.6
    rows.add("peak memory vs torch+compile at the same micro-batch", "<= 0.6x", value, ok, gpu, src, why_mem)


# ----------------------------------------------------------------------------- the kernels


def _case(kern, op, mode, provider, size=None, where=None):
    """The measured case of op, mode and provider at a size label or a shape that `where` accepts;
    in a smoke result (every case at the tiny size) that tiny case, so the smoke computes each row."""
    cases = kern["cases"] if kern else []
    smoke = bool(cases) and all(c["size"] == "smoke" for c in cases)
    for c in cases:
        if c["op"] == op and c["mode"] == mode and c["provider"] == provider and c["status"] == "ok" and (
                smoke or ((size is None or c["size"] == size) and (where is None or where(c["shape"])))):
            return c
    return None


def _faster(rows, goal, target, mine, other, gpu, src, factor=1.0, strict=True):
    """mine's ms against other's: met when mine <= other * factor (strictly below with strict)."""
    if mine is None or other is None:
        rows.add(goal, target, None, False, gpu, src, "case missing from the kernel benchmarks")
        return
    ratio = other["ms"] / mine["ms"]
    ok = mine["ms"] < other["ms"] * factor if strict else mine["ms"] <= other["ms"] * factor
    rows.add(goal, target, f"{ratio:.2f}x its speed ({mine['ms']:.3f} vs {other['ms']:.3f} ms)", ok, gpu, src)


def _share(rows, goal, target, case, least, gpu, src):
    value = case and f"{case['percent_of_roofline']:.0f}% ({case['rate']:,.0f} {case['unit']})"
    rows.add(goal, target, value, case is not None and case["percent_of_roofline"] >= least, gpu, src,
             "case missing from the kernel benchmarks")


def kernel_goals(rows, kern, src):
    gpu = bool(kern and kern["gpu_figures"])
    if not kern:
        rows.add("kernel goals", "", None, False, False, src, "no kernel benchmark result")
        return

    def attn(shape):
        return shape.get("T") == 1024 and shape.get("D") == 64 and shape.get("B", 0) * shape.get("H", 0) == 192

    for mode, least in (("fwd", 350), ("fwd+bwd", 250)):
        k = _case(kern, "attention", mode, "kernels", where=attn)
        rows.add(f"attention {mode} (causal, D=64, T=1024, B*H=192)", f">= {least} TFLOP/s",
                 k and f"{k['rate']:.0f} TFLOP/s", k is not None and k["rate"] >= least, gpu, src,
                 "case missing from the kernel benchmarks")
        _faster(rows, f"attention {mode} vs F.scaled_dot_product_attention", "at least as fast", k,
                _case(kern, "attention", mode, "torch", where=attn), gpu, src)

    def ln(shape):
        return shape.get("N") == 16384 and shape.get("C") == 768

    for op in ("layer_norm", FUSED_LN):
        if not any(c["op"] == op for c in kern["cases"]):
            rows.add(f"{op} fwd+bwd at (16384, 768)", "", None, False, gpu, src, f"no {op} op in the kernel benchmarks")
            continue
        k = _case(kern, op, "fwd+bwd", "kernels", where=ln)
        _share(rows, f"{op} fwd+bwd at (16384, 768), share of copy bandwidth", ">= 85%", k, 85, gpu, src)
        for prov, name in (("torch", "torch"), ("torch_compile", "torch.compile")):
            _faster(rows, f"{op} fwd+bwd vs {name}", "faster", k, _case(kern, op, "fwd+bwd", prov, where=ln), gpu, src,
                    strict=True)
    _share(rows, "cross_entropy fwd+bwd (8192 x 50304), share of copy bandwidth", ">= 80%",
           _case(kern, "cross_entropy", "fwd+bwd", "kernels", "gpt2"), 80, gpu, src)
    k = _case(kern, "linear_cross_entropy", "fwd+bwd", "kernels", "gpt2")
    tc = _case(kern, "linear_cross_entropy", "fwd+bwd", "torch_compile", "gpt2")
    _faster(rows, "linear_cross_entropy fwd+bwd vs compiled F.linear + F.cross_entropy", "no slower", k, tc, gpu, src)
    value, ok = None, False
    if k and tc and k.get("peak_memory_mib") is not None and tc.get("peak_memory_mib"):
        mine, theirs = k["peak_memory_mib"], tc["peak_memory_mib"]
        value, ok = f"{mine / theirs:.2f}x ({mine:.0f} vs {theirs:.0f} MiB)", mine <= 0.25 * theirs
    rows.add("linear_cross_entropy peak memory vs compiled F.linear + F.cross_entropy", "<= 0.25x", value, ok, gpu,
             src, "no peak-memory figure (measured on a GPU only)" if k and tc else "case missing from the kernel benchmarks")
    k = _case(kern, "linear_gelu", "fwd", "kernels", "gpt2")
    _faster(rows, "linear_gelu fwd vs matmul + GELU unfused (eager)", ">= 1.1x", k,
            _case(kern, "linear_gelu", "fwd", "torch", "gpt2"), gpu, src, factor=1 / 1.1)
    mm = _case(kern, "linear_gelu", "fwd", "matmul", "gpt2")
    value = k and mm and f"{k['ms'] / mm['ms']:.2f}x its time ({k['ms']:.3f} vs {mm['ms']:.3f} ms)"
    rows.add("linear_gelu fwd vs cuBLAS's matmul alone", "within 10% (<= 1.1x its time)", value,
             bool(value) and k["ms"] <= 1.1 * mm["ms"], gpu, src, "case missing from the kernel benchmarks")


# ----------------------------------------------------------------------------- convergence


def converge_goal(rows, conv, src):
    if not conv or not conv.get("evaluations"):
        rows.add("loss curves, torch vs triton backend, same seed", "within 2% at every evaluation", None, False,
                 False, src, "no convergence comparison (part 2 did not run, or a run did not reach an evaluation)")
        return
    runs = [r for r in conv["runs"].values() if r]
    gpu = bool(runs) and all(not (r.get("device_name") or "CPU").startswith("CPU") for r in runs) \
        and not conv.get("substitutions")
    n, worst = len(conv["evaluations"]), conv["max_relative_difference"]
    rows.add("loss curves, torch vs triton backend, same seed", f"within {conv['tolerance']:.0%} at every evaluation",
             f"largest {100 * worst:.2f}% over {n} evaluations (steps {conv['evaluations'][0]['step']}-"
             f"{conv['evaluations'][-1]['step']})", conv["agree"], gpu, src)


# ----------------------------------------------------------------------------- the document


def _table(header, rows):
    esc = [[str(x).replace("|", "\\|") for x in r] for r in rows]
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in esc])


def _fmt(x, spec, scale=1):
    return "-" if x is None else format(x * scale, spec)


def summarize(folder, names=None):
    """The SUMMARY.md text of a campaign folder; `names` maps its files to where --collect put them."""
    folder = Path(folder)

    def src(name):
        return (names or {}).get(name, name)

    manifests = [m for m in (_json(folder, f"manifest-part{i}.json") for i in (1, 2)) if m]
    envs = {i: _json(folder, f"env-part{i}.json") for i in (1, 2)}
    step, kern = _json(folder, "step.json"), _json(folder, "kernels.json")
    conv, ceil = _json(folder, "converge.json"), _json(folder, "ceilings.json")
    out = ["# Campaign summary", ""]
    out.append("Written by `python -m tritongpt.bench.campaign` from the files of this campaign alone; each figure names its "
               "file. A goal is judged only on a GPU figure.")
    cpu = [i for i, e in envs.items() if e and e.get("device") != "cuda"]
    if cpu or any(m.get("smoke") for m in manifests):
        out += ["", "**CPU / smoke run**: the figures below only show that the campaign runs; none is a GPU figure, "
                    "so no goal is judged."]

    out += ["", "## Where and when", ""]
    env_rows = []
    for i, e in envs.items():
        if e:
            gpu = e.get("gpu") or {}
            env_rows.append([f"part {i}", e["device_name"], _fmt(gpu.get("memory_gib"), ".1f"), gpu.get("multiprocessors", "-"),
                             e.get("driver") or "-", e.get("cuda") or "-", e["torch"], e["triton"], e["python"],
                             (e.get("git_commit") or "?")[:12] + (" (dirty)" if e.get("git_dirty") else ""),
                             e["created_utc"]])
    out.append(_table(["part", "device", "GiB", "SMs", "driver", "CUDA", "torch", "triton", "python", "commit", "UTC"],
                      env_rows) if env_rows else "No environment file.")
    roof = (kern or {}).get("roofline") or {}
    out += ["", f"Ceilings ({src('ceilings.json')}): copy {_fmt((ceil or {}).get('copy_gbps'), ',.0f')} GB/s, "
                f"matmul {_fmt((ceil or {}).get('matmul_tflops'), ',.1f')} TFLOP/s; as the kernel benchmarks measured "
                f"them ({src('kernels.json')}): {_fmt(roof.get('copy_gbps'), ',.0f')} GB/s, "
                f"{_fmt(roof.get('matmul_tflops'), ',.1f')} TFLOP/s."]

    out += ["", "## Goals", ""]
    rows = Rows(smoke=any(m.get("smoke") for m in manifests))
    step_goals(rows, step, src("step.json"))
    kernel_goals(rows, kern, src("kernels.json"))
    converge_goal(rows, conv, src("converge.json"))
    out.append(_table(["goal", "target", "measured", "verdict", "file"], rows.rows))
    verdicts = [r[3] for r in rows.rows]
    out += ["", f"{verdicts.count('met')} met, {verdicts.count('not met')} not met, "
                f"{sum(v.startswith('not measured') for v in verdicts)} not measured."]

    tests = _junit(folder / "tests-gpu.xml")
    out += ["", "## GPU tests", ""]
    if tests:
        counts, failing = tests
        out.append(f"`pytest -m gpu tests` ({src('tests-gpu.xml')}): {counts['passed']} passed, {counts['failures']} "
                   f"failed, {counts['errors']} errors, {counts['skipped']} skipped.")
        out += [f"- failing: `{t}`" for t in failing]
    else:
        out.append("No junit XML: the tests phase did not run or was stopped before pytest wrote it.")

    if step:
        out += ["", f"## Training step ({src('step.json')})", ""]
        out.append(_table(
            ["path", "status", "batch", "ms/step", "tok/s", "MFU", "peak GiB", "vs torch+compile", "batches tried"],
            [[p["path"], p["status"], _fmt(p["batch"], "d"), _fmt(p["ms_per_step"], ".2f"), _fmt(p["tokens_per_sec"], ",.0f"),
              _fmt(p["mfu"], ".1%"), _fmt(p["peak_memory_gib"], ".2f"), _fmt(p["speedup_vs_torch_compile"], ".2f"),
              ", ".join(f"{t['batch']}:{t['status']}" for t in p.get("tries", [])) or (p["reason"] or "-")]
             for p in step["paths"]]))

    out += profile_section(folder, src)
    if conv and conv.get("evaluations"):
        out += ["", f"## Convergence ({src('converge.json')}, {src('converge.png')})", ""]
        for note in (conv.get("substitutions") or {}).values():
            out.append(f"Note: {note}.\n")
        out.append(_table(["step", "torch val", "triton val", "torch train", "triton train", "largest difference"],
                          [[e["step"], f"{e['torch']['val_loss']:.4f}", f"{e['triton']['val_loss']:.4f}",
                            f"{e['torch']['train_loss']:.4f}", f"{e['triton']['train_loss']:.4f}",
                            f"{100 * max(e['relative_difference'].values()):.2f}%"] for e in conv["evaluations"]]))

    out += ["", "## Phases", ""]
    prow = [[f"part {m['part']}", p["name"], p["status"], f"{p['seconds']:.0f}", f"{p['box_s']:.0f}", p["note"] or ""]
            for m in manifests for p in m["phases"]]
    out.append(_table(["part", "phase", "status", "s", "box s", "note"], prow) if prow else "No manifest.")
    return "\n".join(out) + "\n"


def profile_section(folder, src):
    choice = _json(folder, "profile-choice.json")
    if not choice:
        return []
    out = ["", "## Profile", "", f"{choice['path']} at batch {choice['batch']}: {choice['why']}."]
    summ, nsys = _json(folder, "profile/summary.json"), folder / "profile" / "summary.md"
    if summ:
        steps, step_ms = summ["settings"]["steps"], choice.get("ms_per_step")
        clock = summ["clock"]
        out.append(f"torch.profiler, {steps} steps ({src('profile/summary.json')}): {summ['ms_per_step']:.3f} ms of "
                   f"{clock} time per step" + (f"; the benchmark's step: {step_ms:.3f} ms" if step_ms else "") + ".")
        out += ["", _table(["kernel" if clock == "GPU" else "op", "calls/step", "ms/step", f"% of {clock} time",
                            "% of the step"],
                           [[f"`{r['name'][:80]}`", f"{r['calls'] / steps:.0f}", f"{r['total_ms'] / steps:.3f}",
                             f"{r['percent']:.1f}", _fmt(step_ms and r["total_ms"] / steps / step_ms, ".1%")]
                            for r in summ["rows"][:10]])]
    elif nsys.is_file():
        lines = nsys.read_text().splitlines()
        out += ["", f"Nsight Systems ({src('profile/summary.md')}), its first table's top 10:", ""]
        table = [x for x in lines if x.startswith("|")]
        out += table[:12]
    else:
        out.append("No profile summary: the profile phase did not finish.")
    return out


def write_summary(folder, names=None):
    """Write SUMMARY.md into the folder and return its text; a summary that fails says why in the file."""
    try:
        text = summarize(folder, names)
    except Exception as e:  # noqa: BLE001 - the campaign's last file must exist, and say what went wrong
        text = f"# Campaign summary\n\nThe summary could not be computed: {type(e).__name__}: {e}\n"
    (Path(folder) / "SUMMARY.md").write_text(text)
    return text
