"""python tools/campaign.py: every GPU figure the project claims, in one command of at most 9.5 minutes.

    python tools/campaign.py --pack                  # here, first: data, warm Triton cache, commit -> pack/
    python tools/campaign.py --out DIR               # on one H100/H200: the phases below, <= 570 s
    python tools/campaign.py --out DIR --rest        # optional, the moment it returns: what it did not finish, <= 180 s
    python tools/campaign.py --out DIR --smoke       # every phase at tiny sizes on a CPU (tests/test_campaign.py)

The phases (PHASES), most valuable first, so that a command cut short still returns the figures that
matter most: env (the machine, versions, commit, the copy and bf16 matmul ceilings, whether the warm
cache was built by this Triton); headline (the training step of triton+compile and torch+compile,
GPT-2 124M, T=1024, bf16, batch 16: python -m tritongpt.bench); parity (the bf16 parity tests at
GPT-2's sizes); eager (the step of triton and torch); kernels (each op's fwd+bwd at GPT-2's sizes
against the roofline: pytest tritongpt/bench); converge-torch, converge-triton (GPT-2 124M from one
seed on the GPT-2 tokens of linux_docs.txt, a short run per backend); profile (the fastest path
under nsys where it exists, else torch.profiler). Each is a child process with a time box: one that
outlives it gets SIGINT, then SIGKILL, is recorded as stopped, and the next phase runs. Each
phase's files are on disk before the next starts: DIR/manifest.json (every phase: status, seconds,
box, Triton cache hits and misses), DIR/logs/, and SUMMARY.md, written last from DIR alone.

The GPU machine has no network, nvtx or datasets: --pack puts what a run needs into pack/ (ignored
by git): the tokenized corpus, the commit (a copy of the tree has no git), and the warm Triton
cache (tools/warm_cache.py; run --pack with the Python and Triton of the GPU machines). Every phase
runs with TRITON_CACHE_DIR=pack/triton-cache and TORCHINDUCTOR_CACHE_DIR=pack/inductor-cache, so
what the first command compiles, --rest finds compiled. docs/campaign.md has the boxes and what
they rest on. The smoke hides nvtx and datasets from its children, as on the GPU machines.
"""

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
BUDGET_S = {"first": 570, "rest": 180, "smoke": 150}  # a command's whole time; the summary fits in RESERVE_S
RESERVE_S, MIN_BOX_S = 8, 3
BATCH = 16  # GPT-2 124M at T=1024 on one 80 GB GPU, every path
BENCH = dict(warmup=5, steps=20)
CONVERGE = {  # python -m tritongpt.train gpt2 overrides
    False: dict(batch_size=16, gradient_accumulation_steps=1, max_iters=200, eval_interval=50, eval_iters=10,
                log_interval=10, warmup_iters=20, lr_decay_iters=200),
    True: dict(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=4, gradient_accumulation_steps=1, max_iters=10,
               eval_interval=5, eval_iters=2, log_interval=5, warmup_iters=2, lr_decay_iters=10, device="cpu"),
}
TOLERANCE = 0.02  # the two backends' losses agree within 2% at every evaluation


def bench(c, paths, name):
    return [c.py, "-m", "tritongpt.bench", "--paths", paths, "--out", str(c.out / f"step-{name}.json")] + (
        ["--smoke"] if c.smoke else ["--batch", str(BATCH), "--warmup", str(BENCH["warmup"]), "--steps", str(BENCH["steps"])])


def converge(backend):
    def build(c):
        data = c.pack / "data" / "linux_docs_gpt2"
        if not (data / "meta.json").is_file():
            return f"no tokenized corpus at {data}: run python tools/campaign.py --pack first"
        scratch = Path(tempfile.mkdtemp(prefix=f"converge-{backend}-"))
        run_as = "torch" if c.smoke else backend  # the trainer runs the triton backend on a GPU only
        keys = dict(CONVERGE[c.smoke], dataset=data, out_dir=scratch, backend=run_as, compile="false",
                    always_save_checkpoint="false", keep_last=1, seed=1337)

        def after():  # the curve comes back from a stopped run too
            if (scratch / "metrics.jsonl").is_file():
                shutil.copyfile(scratch / "metrics.jsonl", c.out / f"converge-{backend}.jsonl")
            shutil.rmtree(scratch, ignore_errors=True)
        return [c.py, "-m", "tritongpt.train", "gpt2", *(f"--{k}={v}" for k, v in keys.items())], after
    return build


def profile(c):
    path = fastest(c.out) or "triton+compile"
    opts = ["--backend", path.split("+")[0]] + ["--compile"] * path.endswith("+compile")
    opts += ["--smoke"] if c.smoke else ["--batch", str(BATCH), "--warmup", "5", "--steps", "3"]
    if shutil.which("nsys"):
        return ["env", f"PYTHON={c.py}", "bash", str(ROOT / "tritongpt/profiles/nsys.sh"), str(c.out / "profile"), *opts]
    return [c.py, "-m", "tritongpt.profiles.torch_profile", "--out", str(c.out / "profile"), "--top", "10", *opts]


# name, box in seconds on a GPU, box in the smoke, the command (or the reason it cannot run, or
# (command, what to do after it)). The GPU boxes: docs/campaign.md. 25+170+60+45+110+60+60+30 = 560 s.
PHASES = [
    ("env", 25, 15, lambda c: [c.py, str(TOOLS / "campaign.py"), "--child-env", str(c.out), "--pack-dir", str(c.pack)]),
    ("headline", 170, 25, lambda c: bench(c, "triton+compile,torch+compile", "headline")),
    ("parity", 60, 20, lambda c: [c.py, "-m", "pytest", "tests", "-m", "gpu", "-k", "gpt2_size or gpt2_mlp", "-q", "-rfEs",
                                  "-p", "no:cacheprovider", f"--junitxml={c.out / 'parity.xml'}"]),
    ("eager", 45, 15, lambda c: bench(c, "triton,torch", "eager")),
    ("kernels", 110, 30, lambda c: [c.py, "-m", "pytest", "tritongpt/bench", "-q", "-p", "no:cacheprovider", "--modes",
                                    "fwd+bwd", "--bench-out", str(c.out / "kernels.json")]
     + (["--bench-smoke"] if c.smoke else ["--sizes", "gpt2"])),
    ("converge-torch", 60, 15, converge("torch")),
    ("converge-triton", 60, 15, converge("triton")),
    ("profile", 30, 20, profile),
]


# ----------------------------------------------------------------------------- running a phase


def _stop(proc, grace):
    """SIGINT to the phase's process group (pytest writes its report, Python unwinds), then SIGKILL
    to what is left of the group (compile workers too)."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            pass


def run_boxed(argv, log, box, grace, env):
    """argv in a process group of its own, output to log, stopped at `box` seconds -> (ok | failed | stopped, rc)."""
    with open(log, "a") as f:
        f.write(f"$ {' '.join(map(str, argv))}\n")
        f.flush()
        # a process group of its own in the campaign's Unix session: what ends that session's processes ends it too
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env, preexec_fn=os.setpgrp)
        try:
            rc = proc.wait(timeout=max(box - grace, 1))
        except subprocess.TimeoutExpired:
            _stop(proc, grace)
            f.write(f"\n[campaign] stopped: the phase outlived its box of {box:.0f} s\n")
            return "stopped", proc.returncode
        except BaseException:  # the campaign itself is stopped: its phase goes with it
            _stop(proc, grace)
            f.write("\n[campaign] stopped: the campaign was interrupted\n")
            raise
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # what the phase left running (its group only) ends with it
    except ProcessLookupError:
        pass
    return ("ok" if rc == 0 else "failed"), rc


def cache_counts(log):
    """{hits, misses, missed: {kernel: count}} from a tools/cache_log.py log (no file: no lookup)."""
    lines = [x.split() for x in Path(log).read_text().splitlines()] if Path(log).is_file() else []
    missed = {}
    for x in lines:
        if x[0] == "miss":
            missed[x[2]] = missed.get(x[2], 0) + 1
    return {"hits": sum(x[0] == "hit" for x in lines), "misses": sum(missed.values()), "missed": missed}


def run_phase(c, name, box, build):
    rec = {"name": name, "status": None, "box_s": round(box, 1), "seconds": 0.0, "rc": None, "note": None,
           "log": f"logs/{name}.log", "command": c.kind}
    c.record(rec)
    t0 = time.time()
    try:
        job = build(c) if box >= MIN_BOX_S else f"no time left of the command's {c.budget:.0f} s"
    except Exception as e:  # noqa: BLE001 - a phase that cannot be set up must not end the campaign
        job = f"set-up failed: {type(e).__name__}: {e}"
    job = (job, None) if isinstance(job, list) else job
    if isinstance(job, str):
        rec.update(status="skipped", note=job)
    else:
        argv, after = job
        cache_log = c.out / "logs" / f"{name}.cache"
        cache_log.unlink(missing_ok=True)
        env = dict(c.env, TRITONGPT_CACHE_LOG=str(cache_log))
        rec.update(status="stopped", note="the campaign was interrupted")  # until the phase returns
        try:
            rec["status"], rec["rc"] = run_boxed(argv, c.out / rec["log"], box, 3 if c.smoke else 10, env)
        finally:
            if after:
                after()
            rec["cache"] = cache_counts(cache_log)
            rec["seconds"] = round(time.time() - t0, 1)
        rec["note"] = {"stopped": f"outlived its box of {box:.0f} s; what it wrote before stands",
                       "failed": f"exit {rec['rc']}: {last_line(c.out / rec['log'])}"}.get(rec["status"])
    c.write()
    print(f"[{c.kind}] {name}: {rec['status']} in {rec['seconds']:.1f} s (box {box:.0f} s)"
          + (f": {rec['note']}" if rec["note"] else ""), flush=True)


class Campaign:
    """What the phases share: DIR, the pack, the budget, the children's environment, the manifest."""

    def __init__(self, args):
        self.smoke, self.kind, self.py = args.smoke, "rest" if args.rest else "first", sys.executable
        self.out, self.pack = Path(args.out).resolve(), Path(args.pack_dir).resolve()
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        self.budget = args.budget or BUDGET_S["smoke" if self.smoke else self.kind]
        self.end = time.time() + self.budget
        self.manifest = read_json(self.out / "manifest.json") if args.rest else None
        self.manifest = self.manifest or {"kind": "campaign", "smoke": self.smoke, "runs": []}
        self.manifest["runs"].append({"command": self.kind, "started": stamp(), "ended": None, "budget_s": self.budget,
                                      "argv": sys.argv[1:], "phases": []})
        self.env = child_env(self.pack, self.smoke, self.out)

    def record(self, rec):
        self.manifest["runs"][-1]["phases"].append(rec)

    def write(self):
        write_json(self.manifest, self.out / "manifest.json")
        os.sync()  # on disk before the next phase starts


def last_status(manifest):
    return {p["name"]: p["status"] for run in manifest["runs"] for p in run["phases"]}


def _terminated(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run(args):
    signal.signal(signal.SIGTERM, _terminated)  # a SIGTERM still stops the phase and writes the summary
    c = Campaign(args)
    relocate(c.pack / "triton-cache")
    done = last_status(c.manifest) if args.rest else {}
    todo = [p for p in PHASES if done.get(p[0]) != "ok" and (not args.only or p[0] in args.only)]
    print(f"[{c.kind}] {'smoke ' if c.smoke else ''}campaign into {c.out}: {', '.join(p[0] for p in todo) or 'nothing to do'}"
          f", budget {c.budget:.0f} s", flush=True)
    interrupted = False
    try:
        for name, box_gpu, box_smoke, build in todo:
            left = c.end - time.time() - RESERVE_S
            run_phase(c, name, max(min(args.box.get(name, box_smoke if c.smoke else box_gpu), left), 0), build)
    except KeyboardInterrupt:
        interrupted = True
        print(f"[{c.kind}] interrupted: the phase running was stopped, the phases after it do not run", flush=True)
    finally:
        c.manifest["runs"][-1]["ended"] = stamp()
        c.write()
        text = write_summary(c.out)
    print(text)
    bad = [n for n, s in last_status(c.manifest).items() if s != "ok"]
    print(f"[{c.kind}] done" + (f"; not ok: {', '.join(bad)} (--rest reruns them)" if bad else ""))
    return 130 if interrupted else 1 if bad else 0


# ----------------------------------------------------------------------------- the pack and the children's environment


def child_env(pack, smoke, out):
    """Offline, the warm caches, tools/ importable (the cache log), the commit named where git is not."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TRITON_CACHE_DIR=str(pack / "triton-cache"), TORCHINDUCTOR_CACHE_DIR=str(pack / "inductor-cache"),
               TRITON_CACHE_MANAGER="cache_log:LoggingCacheManager")
    paths = [str(ROOT), str(TOOLS)]
    if smoke:  # rehearse the GPU machines: no nvtx, no datasets
        (out / "rehearse").mkdir(exist_ok=True)
        (out / "rehearse" / "sitecustomize.py").write_text("import sys\nsys.modules.update(nvtx=None, datasets=None)\n")
        paths.append(str(out / "rehearse"))
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
    commit = git(["rev-parse", "HEAD"])
    noted = read_json(pack / "commit.json") or {}
    if commit is None and noted.get("commit"):
        env["TRITONGPT_GIT_COMMIT"] = noted["commit"] + ("-dirty" if noted.get("dirty") else "")
    return env


def relocate(cache):
    """Triton writes absolute paths into each entry's group file: point them into `cache`, where
    the folder is now, or no entry would be found after a move."""
    for group in Path(cache).glob("*/__grp__*.json"):
        data = json.loads(group.read_text())
        moved = {k: str(group.parent / Path(p).name) for k, p in data.get("child_paths", {}).items()}
        if moved != data.get("child_paths"):
            group.write_text(json.dumps({**data, "child_paths": moved}))


def pack(args):
    """pack/: the commit, the GPT-2 tokens of linux_docs.txt (its head with --smoke), the warm Triton cache."""
    out, steps = Path(args.pack_dir).resolve(), args.pack.split(",")
    out.mkdir(parents=True, exist_ok=True)
    dirty = git(["status", "--porcelain", "--untracked-files=no"])
    write_json({"commit": git(["rev-parse", "HEAD"]), "dirty": bool(dirty), "written": stamp()}, out / "commit.json")
    data_root = Path(os.environ.get("TRITONGPT_DATA", ROOT.parent / "shared" / "data"))
    corpus = Path(args.corpus) if args.corpus else data_root / "linux_docs.txt"
    if "data" in steps and not (out / "data" / "linux_docs_gpt2" / "meta.json").is_file():
        if not corpus.is_file():
            raise SystemExit(f"--pack: no corpus at {corpus}: give --corpus FILE or set TRITONGPT_DATA")
        if args.smoke:  # the head of it, cut at a line's end
            head = corpus.read_bytes()[:200_000]
            corpus = out / "linux_docs_head.txt"
            corpus.write_bytes(head[: head.rfind(b"\n") + 1])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        if (data_root / "tiktoken_cache").is_dir():
            env.setdefault("TIKTOKEN_CACHE_DIR", str(data_root / "tiktoken_cache"))
        argv = [sys.executable, "-m", "tritongpt.prep", "text", "--input", str(corpus), "--name", "linux_docs_gpt2",
                "--out_dir", str(out / "data"), "--quiet"] + ["--block_size", "32"] * args.smoke
        if subprocess.run(argv, cwd=ROOT, env=env).returncode:
            raise SystemExit(f"--pack: tokenizing {corpus} failed (above); this Python needs tritongpt's dependencies")
    if "cache" in steps:  # from scratch: entries of older trees would only take room
        shutil.rmtree(out / "triton-cache", ignore_errors=True)
        if subprocess.run([sys.executable, str(TOOLS / "warm_cache.py"), str(out / "triton-cache")], cwd=ROOT).returncode:
            raise SystemExit("--pack: the warm Triton cache did not build (above): every variant must compile")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {size / 2**20:.1f} MiB, commit {read_json(out / 'commit.json')['commit']}"
          + (" with uncommitted changes: commit first, or the results will say dirty" if dirty else ""))
    return 0


def env_task(out, pack_dir):
    """The env phase, in its child: the machine and versions, whether the warm cache fits this
    Triton (DIR/env.json, written at once), then the two ceilings of bench/ops.py into it."""
    import platform

    import torch
    import triton
    from triton.runtime.cache import triton_key

    from tritongpt.bench import common, ops

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info = {"kind": "campaign_env", **common.result_header(device), "python": platform.python_version()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info["gpu"] = dict(capability=f"{p.major}.{p.minor}", multiprocessors=p.multi_processor_count,
                           memory_gib=round(p.total_memory / 2**30, 1))
    info["tools"] = {name: shutil.which(name) for name in ("nsys", "nvidia-smi", "git")}
    info["importable"] = {name: importlib.util.find_spec(name) is not None for name in ("nvtx", "datasets")}
    built = read_json(Path(pack_dir) / "triton-cache" / "warm-cache.json")
    here = dict(triton=triton.__version__, triton_build=hashlib.sha256(triton_key().encode()).hexdigest()[:16],
                python=platform.python_version())
    info["warm_cache"] = {"built": built and {k: built[k] for k in (*here, "target", "git_commit")}, "here": here,
                          "entries": len(built["variants"]) if built else 0,
                          "usable": bool(built) and all(built[k] == v for k, v in here.items())}
    write_json(info, Path(out) / "env.json")
    info["ceilings"] = ops.measure_roofline(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    write_json(info, Path(out) / "env.json")
    print(json.dumps({k: info[k] for k in ("device_name", "torch", "triton", "python", "git_commit", "warm_cache")}))
    return 0


# ----------------------------------------------------------------------------- the summary


def fastest(out):
    paths = [p for name in ("headline", "eager") for p in (read_json(out / f"step-{name}.json") or {}).get("paths", [])]
    ok = [p for p in paths if p["status"] == "ok"]
    return max(ok, key=lambda p: p["tokens_per_sec"])["path"] if ok else None


def compare(out):
    """DIR/converge.json: both backends' train and val loss at every evaluation, and their relative
    difference |triton - torch| / torch, from the two runs' metrics."""
    evals = {}
    for b in ("torch", "triton"):
        f = out / f"converge-{b}.jsonl"
        rows = [json.loads(x) for x in f.read_text().splitlines() if x.endswith("}")] if f.is_file() else []
        evals[b] = {r["step"]: r for r in rows if r.get("event") == "eval"}
    points = [{"step": s, **{b: {k: evals[b][s][k] for k in ("train_loss", "val_loss")} for b in evals},
               "difference": max(abs(evals["triton"][s][k] - evals["torch"][s][k]) / abs(evals["torch"][s][k])
                                 for k in ("train_loss", "val_loss"))} for s in sorted(set(evals["torch"]) & set(evals["triton"]))]
    worst = max((p["difference"] for p in points), default=None)
    result = {"kind": "convergence", "tolerance": TOLERANCE, "evaluations": points, "largest_difference": worst,
              "agree": worst is not None and worst <= TOLERANCE}
    return write_json(result, out / "converge.json") and result


def write_summary(out):
    """SUMMARY.md from DIR's files alone: the machine, the phases, each phase's figures. It is always
    written: one that cannot be computed says why."""
    try:
        text = summary(out)
    except Exception as e:  # noqa: BLE001 - the campaign's last file must exist, and say what went wrong
        text = f"# Campaign summary\n\nThe summary could not be computed: {type(e).__name__}: {e}\n"
    (out / "SUMMARY.md").write_text(text)
    return text


def summary(out):
    m, env, conv = read_json(out / "manifest.json"), read_json(out / "env.json"), compare(out)
    lines = ["# Campaign summary", "", f"Written by `python tools/campaign.py` from the files of {out.name}/ alone.", ""]
    if env:
        ceil, cache = env.get("ceilings") or {}, env["warm_cache"]
        lines += [f"{env['device_name']}, torch {env['torch']}, triton {env['triton']}, Python {env['python']}, commit "
                  f"{env['git_commit']}{' (dirty)' if env['git_dirty'] else ''}, {env['created_utc']}. Ceilings: copy "
                  f"{fmt(ceil.get('copy_gbps'), ',.0f')} GB/s, matmul {fmt(ceil.get('matmul_tflops'), ',.1f')} TFLOP/s. "
                  f"Warm Triton cache: {cache['entries']} entries, {'usable' if cache['usable'] else 'NOT usable'} here "
                  f"(built by {cache['built']}; here {cache['here']}).", ""]
    lines += ["| command | phase | status | s | box s | Triton cache hits | misses | note |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {p['command']} | {p['name']} | {p['status']} | {p['seconds']:.0f} | {p['box_s']:.0f} | "
              f"{p.get('cache', {}).get('hits', '-')} | {p.get('cache', {}).get('misses', '-')} | "
              f"{(p['note'] or '').replace('|', '/')} |" for run_ in m["runs"] for p in run_["phases"]]
    steps = [(name, p) for name in ("headline", "eager") for p in (read_json(out / f"step-{name}.json") or {}).get("paths", [])]
    if steps:
        lines += ["", "| training step (step-*.json) | path | status | batch | ms/step | tok/s | MFU | peak GiB | vs torch+compile |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {name} | {p['path']} | {p['status']} | {p['batch']} | {fmt(p['ms_per_step'], '.2f')} | "
                  f"{fmt(p['tokens_per_sec'], ',.0f')} | {fmt(p['mfu'], '.1%')} | {fmt(p['peak_memory_gib'], '.2f')} | "
                  f"{fmt(p['speedup_vs_torch_compile'], '.2f')} |" for name, p in steps]
    if (out / "parity.xml").is_file():
        suite = next(ET.parse(out / "parity.xml").getroot().iter("testsuite")).attrib
        lines += ["", "bf16 parity at GPT-2's sizes (parity.xml): "
                  + ", ".join(f"{suite.get(k)} {k}" for k in ("tests", "failures", "errors", "skipped")) + "."]
    kern = read_json(out / "kernels.json")
    if kern:
        lines += ["", f"Kernels (kernels.json): {sum(k['status'] == 'ok' for k in kern['cases'])} of "
                      f"{len(kern['cases'])} cases measured."]
    if conv["evaluations"]:
        lines += ["", f"Convergence (converge.json): {len(conv['evaluations'])} evaluations, largest difference "
                      f"{conv['largest_difference']:.2%}, {'within' if conv['agree'] else 'NOT within'} {TOLERANCE:.0%}."]
    if (out / "profile").is_dir():
        lines += ["", f"Profile of {fastest(out) or 'triton+compile'}: profile/."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- small things


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def stamp():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json(obj, path):
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)
    return path


def last_line(path):
    lines = [x for x in Path(path).read_text(errors="replace").splitlines() if x.strip()] if Path(path).is_file() else []
    return lines[-1][:300] if lines else None


def git(argv):
    try:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python tools/campaign.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--out", help="the campaign's folder: its files, as they come")
    p.add_argument("--rest", action="store_true", help="run only the phases an earlier command into --out did not finish")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on a CPU: every phase runs")
    p.add_argument("--pack", nargs="?", const="data,cache", help="fill --pack-dir: data, cache or both (default)")
    p.add_argument("--pack-dir", default=str(ROOT / "pack"), help="what the runs need, made by --pack (default pack/)")
    p.add_argument("--corpus", default=None, help="linux_docs.txt for --pack (default: the offline data folder)")
    p.add_argument("--budget", type=float, default=None, help="seconds for the command (default 570; 180 with --rest)")
    p.add_argument("--box", action="append", default=[], metavar="PHASE=SECONDS", help="another time box for a phase")
    p.add_argument("--only", default=None, help="comma-separated phases to run; the others are left out")
    p.add_argument("--child-env", metavar="DIR", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = [n for n, *_ in PHASES]
    if args.pack or args.child_env:
        if args.pack and set(args.pack.split(",")) - {"data", "cache"}:
            p.error(f"--pack {args.pack}: give data, cache or data,cache")
        return args
    if not args.out:
        p.error("give --out DIR (or --pack)")
    if args.rest and not (Path(args.out) / "manifest.json").is_file():
        p.error(f"--rest: {args.out} holds no manifest.json of an earlier command; run without --rest")
    boxes = {}
    for item in args.box:
        name, _, value = item.partition("=")
        if name not in names:
            p.error(f"--box {item}: the phases are {', '.join(names)}")
        try:
            boxes[name] = float(value)
        except ValueError:
            p.error(f"--box {item}: give PHASE=SECONDS")
    args.box = boxes
    args.only = args.only and [x for x in args.only.split(",") if x]
    unknown = [x for x in args.only or () if x not in names]
    if unknown:
        p.error(f"--only: no phase {', '.join(unknown)}; the phases are {', '.join(names)}")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child_env:
        return env_task(args.child_env, args.pack_dir)
    return pack(args) if args.pack else run(args)


if __name__ == "__main__":
    sys.exit(main())
