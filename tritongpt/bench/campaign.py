"""python -m tritongpt.bench.campaign: every GPU figure the project claims, in two calls of under 10 minutes.

    python -m tritongpt.bench.campaign --part 1 --out DIR [--archive FILE.tar.gz]   # <= 9 min on one H100/H200
    python -m tritongpt.bench.campaign --part 2 --out DIR [--archive FILE.tar.gz]   # <= 9 min
    python -m tritongpt.bench.campaign --part 1 --out DIR --smoke                   # every phase, tiny, on a CPU
    python -m tritongpt.bench.campaign --prepare-carry      # here, before the GPU calls: the corpus and commit that travel
    python -m tritongpt.bench.campaign --collect FILE.tar.gz [FILE2.tar.gz]         # here, after: into the repo

Part 1: env (device, driver, CUDA, torch, triton, commit); ceilings (copy GB/s, bf16 matmul
TFLOP/s); tests (pytest -m gpu tests: bf16 parity at GPT-2 sizes, junit XML); kernels (pytest
bench/ at GPT-2's sizes and the goals' sizes, fwd and fwd+bwd, against eager and compiled
PyTorch); step-* (the training step of every path at GPT-2 124M, T=1024, each at its best
micro-batch of a bounded search, bench/campaign_tasks.py).
Part 2: env; profile (the fastest path of part 1 under nsys where it exists, else
torch.profiler: the top-10 kernels); converge-* (GPT-2 124M from the same seed on the GPT-2 tokens
of linux_docs.txt, torch then triton backend, a few hundred steps; both curves and a PNG).

Every phase is a child process with a time box: one that outlives it gets SIGINT, then SIGKILL,
is recorded as stopped, and the next phase runs. The boxes fit inside the part's budget
(--budget, 540 s), and no phase is given more than what is left of it. Results are written when
they exist: the manifest after every phase, the archive (--archive) after every phase too, so a
call cut short still returns what it did. SUMMARY.md, written last from the files in DIR, holds
every goal figure against its goal (bench/campaign_goals.py). Running both parts into the same DIR
gives one summary of both; --collect merges the archives of two calls the same way.

The smoke runs the same phases and commands at tiny sizes on a CPU, with nvtx and datasets
hidden from the children as they are missing on the GPU machines. Its figures are CPU figures.
"""

import argparse
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tritongpt.bench import campaign_files, campaign_goals
from tritongpt.bench.campaign_files import ROOT, read_json, utc_now
from tritongpt.instrument.run import utc_stamp

BUDGET_S = {False: 540, True: 300}  # a part's whole time (GPU, smoke); the summary and archive fit in RESERVE_S
RESERVE_S = {False: 15, True: 5}
GRACE_S = {False: 10, True: 3}  # between SIGINT and SIGKILL
MIN_BOX_S = 3
KERNEL_SIZES = "gpt2,N16k-C768,B16-H12"  # bench/ops.py labels: GPT-2 124M's, and the goals' LayerNorm and attention
KERNEL_MODES = "fwd,fwd+bwd"
STEP_BATCHES = {False: "16,32,64", True: "1,2"}
PROFILE = dict(warmup=5, steps=3, top=10)
CONVERGE = {  # python -m tritongpt.train gpt2 overrides, per size
    False: dict(batch_size=16, gradient_accumulation_steps=1, max_iters=300, eval_interval=50, eval_iters=20,
                log_interval=5, warmup_iters=30, lr_decay_iters=300, learning_rate=6e-4, min_lr=6e-5),
    True: dict(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=4, gradient_accumulation_steps=1,
               max_iters=20, eval_interval=10, eval_iters=2, log_interval=2, warmup_iters=2, lr_decay_iters=20),
}
DATA = ROOT / "carry" / "linux_docs_gpt2"


class Campaign:
    """What the phases share: the folder, the budget, the children's environment, a scratch folder."""

    def __init__(self, args):
        self.args, self.smoke, self.part = args, args.smoke, args.part
        self.dir = Path(args.out).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        self.start = time.time()
        self.end = self.start + args.budget
        self.scratch = Path(tempfile.mkdtemp(prefix="campaign-", dir=_scratch_root()))
        self.py = sys.executable
        self.env = self._child_env()
        self.manifest = {
            "kind": "campaign", "part": self.part, "smoke": self.smoke, "argv": sys.argv[1:],
            "started_utc": utc_now(), "stamp": utc_stamp(), "ended_utc": None, "budget_s": args.budget,
            "git_commit": self.env.get("TRITONGPT_GIT_COMMIT"), "commit_source": self.env["TRITONGPT_COMMIT_SOURCE"],
            "phases": [],
        }

    def file(self, name):
        return str(self.dir / name)

    def _child_env(self):
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        paths = [str(ROOT)]
        if self.smoke:  # rehearse the GPU machines: no nvtx, no datasets
            (self.scratch / "rehearse").mkdir()
            (self.scratch / "rehearse" / "sitecustomize.py").write_text(
                "import sys\nsys.modules.update(nvtx=None, datasets=None)  # as on the GPU machines\n")
            paths.append(str(self.scratch / "rehearse"))
        env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
        commit, source = campaign_files.commit_of_tree()
        env["TRITONGPT_COMMIT_SOURCE"] = source
        if commit and source != "git":
            env["TRITONGPT_GIT_COMMIT"] = commit  # instrument.run reads it where the tree is no git checkout
        return env

    def write_manifest(self):
        self.manifest["device_name"] = (read_json(self.dir / f"env-part{self.part}.json") or {}).get("device_name")
        campaign_files.write_json(self.manifest, self.dir / f"manifest-part{self.part}.json")
        if self.args.archive:
            campaign_files.pack(self.dir, self.args.archive)


# ----------------------------------------------------------------------------- running a phase


def _stop(proc, grace):
    """SIGINT to the phase's process group (pytest writes its report, Python unwinds), then SIGKILL
    to whatever of the group is left."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group, such as compile workers
    except ProcessLookupError:
        pass


def run_boxed(argv, log, box, grace, env, cwd=ROOT):
    """Run argv in a process group of its own, output to log; stop it at `box` seconds.
    Returns (status ok | failed | stopped, return code)."""
    with open(log, "a") as f:
        f.write(f"$ {' '.join(argv)}\n")
        f.flush()
        # a process group of its own, in this session: whoever ends this session's processes ends it too
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, env=env, preexec_fn=os.setpgrp)
        try:
            rc = proc.wait(timeout=max(box - grace, 1))
        except subprocess.TimeoutExpired:
            _stop(proc, grace)
            f.write(f"\n[campaign] stopped: the phase outlived its box of {box:.0f} s\n")
            return "stopped", proc.returncode
        except BaseException:  # the campaign itself is interrupted: its phase goes with it
            _stop(proc, grace)
            f.write("\n[campaign] stopped: the campaign was interrupted\n")
            raise
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # what the phase left running (its group only) ends with it
    except ProcessLookupError:
        pass
    return ("ok" if rc == 0 else "failed"), rc


def run_phase(c, name, box, build):
    """Build the phase's command (or learn why it is skipped), run it boxed, record it."""
    left = c.end - time.time() - RESERVE_S[c.smoke]
    box = max(min(c.args.box.get(name, box), left), 0)
    rec = {"name": name, "status": None, "box_s": round(box, 1), "seconds": 0.0, "rc": None, "command": None,
           "log": f"logs/part{c.part}-{name}.log", "note": None, "started_utc": utc_now()}
    c.manifest["phases"].append(rec)
    if c.args.only and name not in c.args.only:
        rec.update(status="skipped", note="not among --only")
    elif left < MIN_BOX_S:
        rec.update(status="skipped", note=f"no time left in the part's budget of {c.args.budget:.0f} s")
    else:
        t0 = time.time()
        try:
            _run_job(c, rec, box, build, deadline=t0 + box)
        finally:
            rec["seconds"] = round(time.time() - t0, 1)
    print(f"[part {c.part}] {name}: {rec['status']} in {rec['seconds']:.1f} s (box {rec['box_s']:.0f} s)"
          + (f": {rec['note']}" if rec["note"] else ""), flush=True)
    c.write_manifest()


def _run_job(c, rec, box, build, deadline):
    try:
        job = build(c, deadline=deadline)
    except Exception as e:  # noqa: BLE001 - a phase that cannot even be set up must not end the campaign
        job = {"skip": f"set-up failed: {type(e).__name__}: {e}"}
    if "skip" in job:
        rec.update(status="skipped", note=job["skip"])
        return
    rec["command"] = " ".join(job["argv"])
    log = c.dir / rec["log"]
    rec.update(status="stopped", note="stopped: the campaign was interrupted")  # until the phase returns
    rec["status"], rec["rc"] = run_boxed(job["argv"], log, box, GRACE_S[c.smoke], dict(c.env, **job.get("env", {})))
    if job.get("after"):
        job["after"](rec)
    why = {"stopped": f"stopped: outlived its box of {box:.0f} s; what it wrote before stands",
           "failed": f"failed (exit {rec['rc']}): {campaign_files.last_line(log)}"}.get(rec["status"])
    rec["note"] = "; ".join(x for x in (job.get("note"), why) if x) or None


# ----------------------------------------------------------------------------- the phases


def task(c, *args):
    return [c.py, "-m", "tritongpt.bench.campaign_tasks", *args] + (["--smoke"] if c.smoke else [])


def phase_env(c, deadline):
    return {"argv": task(c, "env", "--out", c.file(f"env-part{c.part}.json"))}


def phase_ceilings(c, deadline):
    return {"argv": task(c, "ceilings", "--out", c.file("ceilings.json"))}


def phase_tests(c, deadline):
    argv = [c.py, "-m", "pytest", "tests", "-m", "gpu", "-q", "-rfEs", "-p", "no:cacheprovider",
            f"--junitxml={c.file('tests-gpu.xml')}"]
    if not c.smoke and importlib.util.find_spec("xdist") is not None:
        argv += ["-n", "4"]  # Triton compiles in parallel; the GPU has room for four workers
    return {"argv": argv}


def phase_kernels(c, deadline):
    argv = [c.py, "-m", "pytest", "tritongpt/bench", "-q", "-p", "no:cacheprovider", "--bench-out", c.file("kernels.json"),
            "--modes", KERNEL_MODES]
    return {"argv": argv + (["--bench-smoke"] if c.smoke else ["--sizes", KERNEL_SIZES])}


def phase_step(path):
    def build(c, deadline):
        batches = c.args.step_batches or STEP_BATCHES[c.smoke]
        return {"argv": task(c, "step", "--dir", str(c.dir), "--path", path, "--batches", batches,
                             "--deadline", f"{deadline - GRACE_S[c.smoke]:.0f}")}
    return build


def phase_profile(c, deadline):
    choice = campaign_files.choose_profile_path(c.dir, c.smoke, c.args.profile_path, c.args.profile_batch)
    campaign_files.write_json(choice, c.dir / "profile-choice.json")
    backend, compiled = choice["path"].split("+")[0], choice["path"].endswith("+compile")
    opts = ["--backend", backend, "--batch", str(choice["batch"]), "--warmup", str(PROFILE["warmup"]),
            "--steps", str(PROFILE["steps"])] + (["--compile"] if compiled else []) + (["--smoke"] if c.smoke else [])
    if shutil.which("nsys"):
        return {"argv": ["bash", str(ROOT / "tritongpt" / "profiles" / "nsys.sh"), c.file("profile"), *opts], "env": {"PYTHON": c.py},
                "note": f"{choice['path']} at batch {choice['batch']} under nsys ({choice['why']})"}
    return {"argv": [c.py, "-m", "tritongpt.profiles.torch_profile", "--out", c.file("profile"), "--top", str(PROFILE["top"]), *opts],
            "note": f"{choice['path']} at batch {choice['batch']} under torch.profiler, no nsys here ({choice['why']})"}


def _data(c):
    return Path(c.args.data) if c.args.data else (c.scratch / "data" / "linux_docs_gpt2" if c.smoke else DATA)


def phase_data(c, deadline):
    """Smoke only: a small GPT-2-token dataset from the head of linux_docs.txt, by python -m tritongpt.prep."""
    data = _data(c)
    if (data / "meta.json").is_file():
        return {"skip": f"{data} is there already"}
    head = campaign_files.corpus_head(c.scratch / "linux_docs_head.txt", 300_000)
    return {"argv": [c.py, "-m", "tritongpt.prep", "text", "--input", str(head), "--name", data.name, "--tokenizer", "gpt2",
                     "--out_dir", str(data.parent), "--block_size", "32", "--num_proc", "1", "--quiet"],
            "env": campaign_files.tiktoken_env()}


def phase_converge(backend):
    def build(c, deadline):
        data = _data(c)
        if not (data / "meta.json").is_file():
            return {"skip": f"no tokenized corpus at {data}: run `python -m tritongpt.bench.campaign --prepare-carry` and carry "
                            "`carry` with the call"}
        env_json = read_json(c.dir / f"env-part{c.part}.json")
        on_gpu = env_json["device"] == "cuda" if env_json else not c.smoke  # no env file: as the mode says
        run_as, note = backend, None
        if backend == "triton" and not on_gpu:
            run_as = "torch"  # the trainer runs the triton backend on a GPU only
            note = "no GPU: the triton run used the torch backend (the trainer runs triton on a GPU only)"
            campaign_files.write_json({"triton": note}, c.dir / "converge-substitutions.json")
        out = c.scratch / f"train-{backend}"
        keys = dict(CONVERGE[c.smoke], dataset=str(data.resolve()), out_dir=str(out), backend=run_as, compile="false",
                    always_save_checkpoint="false", keep_last=1, seed=1337)

        def after(rec):  # the curve comes back also from a stopped run
            if (out / "metrics.jsonl").is_file():
                shutil.copyfile(out / "metrics.jsonl", c.dir / f"converge-{backend}.jsonl")
            shutil.rmtree(out, ignore_errors=True)

        return {"argv": [c.py, "-m", "tritongpt.train", "gpt2", *(f"--{k}={v}" for k, v in keys.items())], "after": after,
                "note": note}
    return build


def phase_compare(c, deadline):
    return {"argv": [c.py, "-m", "tritongpt.bench.campaign_tasks", "converge", "--dir", str(c.dir)]}


# name, box in seconds on a GPU, box in the smoke, what it runs. Part 1: 20+40+80+130+230 = 500 s.
PARTS = {
    1: [("env", 20, 30, phase_env), ("ceilings", 40, 30, phase_ceilings), ("tests", 80, 60, phase_tests),
        ("kernels", 130, 90, phase_kernels), ("step-torch-compile", 80, 40, phase_step("torch+compile")),
        ("step-triton", 40, 40, phase_step("triton")), ("step-triton-compile", 80, 40, phase_step("triton+compile")),
        ("step-torch", 30, 30, phase_step("torch"))],
    # Part 2: 20+150+140+160+30 = 500 s (the data phase runs in the smoke only).
    2: [("env", 20, 30, phase_env), ("profile", 150, 60, phase_profile), ("data", 0, 40, phase_data),
        ("converge-torch", 140, 60, phase_converge("torch")), ("converge-triton", 160, 60, phase_converge("triton")),
        ("converge-compare", 30, 30, phase_compare)],
}


def _terminated(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_part(args):
    signal.signal(signal.SIGTERM, _terminated)  # a SIGTERM still stops the phase and writes the summary
    c = Campaign(args)
    print(f"[part {c.part}] {'smoke ' if c.smoke else ''}campaign into {c.dir}, budget {args.budget:.0f} s", flush=True)
    interrupted = False
    try:
        for name, box_gpu, box_smoke, build in PARTS[c.part]:
            box = box_smoke if c.smoke else box_gpu
            if box:
                run_phase(c, name, box, build)
    except KeyboardInterrupt:
        interrupted = True
        print(f"[part {c.part}] interrupted: the phase running was stopped, the phases after it do not run", flush=True)
    finally:
        c.manifest["ended_utc"] = utc_now()
        c.manifest["seconds"] = round(time.time() - c.start, 1)
        c.write_manifest()
        text = campaign_goals.write_summary(c.dir)
        c.write_manifest()  # the archive now holds the summary too
        shutil.rmtree(c.scratch, ignore_errors=True)
    print(text)
    failed = [p["name"] for p in c.manifest["phases"] if p["status"] in ("failed", "stopped")]
    print(f"[part {c.part}] done in {time.time() - c.start:.0f} s" + (f"; not ok: {', '.join(failed)}" if failed else ""))
    return 130 if interrupted else 1 if failed else 0


def _scratch_root():
    """Where the trainer's checkpoints go while a convergence run lasts: memory when there is room."""
    shm = Path("/dev/shm")
    try:
        return str(shm) if shm.is_dir() and shutil.disk_usage(shm).free > 8 * 2**30 else None
    except OSError:
        return None


# ----------------------------------------------------------------------------- command line


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tritongpt.bench.campaign", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--part", type=int, choices=(1, 2), help="which call of the two")
    p.add_argument("--out", help="the campaign folder (both parts may share one)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on a CPU: checks that every phase runs")
    p.add_argument("--archive", help="a .tar.gz of the folder, rewritten after every phase (for $OUT on a GPU machine)")
    p.add_argument("--budget", type=float, default=None, help="seconds for the whole part (default 540; 300 with --smoke)")
    p.add_argument("--box", action="append", default=[], metavar="PHASE=SECONDS", help="another time box for a phase")
    p.add_argument("--only", default=None, help="comma-separated phases to run; the others are recorded as skipped")
    p.add_argument("--data", default=None, help="the tokenized corpus for the convergence runs (default carry/linux_docs_gpt2)")
    p.add_argument("--step-batches", default=None,
                   help="the training step's candidate micro-batches, rising (default 16,32,64; 1,2 with --smoke)")
    p.add_argument("--profile-path", default=None, help="the path to profile (default: the fastest of part 1)")
    p.add_argument("--profile-batch", type=int, default=None, help="its micro-batch (default: its best of part 1)")
    p.add_argument("--prepare-carry", action="store_true", help="tokenize linux_docs.txt into carry/ and note the commit")
    p.add_argument("--corpus", default=None, help="linux_docs.txt for --prepare-carry (default: the offline data folder)")
    p.add_argument("--collect", nargs="+", metavar="ARCHIVE_OR_DIR", help="copy a campaign's results into the repo")
    p.add_argument("--dest", default=str(ROOT), help="the repo root --collect copies into (default this one)")
    args = p.parse_args(argv)
    if args.prepare_carry or args.collect:
        return args
    if args.part is None or args.out is None:
        p.error("give --part 1 or 2 and --out DIR (or --prepare-carry, or --collect)")
    args.budget = args.budget if args.budget is not None else BUDGET_S[args.smoke]
    names = [n for n, *_ in PARTS[args.part]]
    boxes = {}
    for item in args.box:
        name, _, value = item.partition("=")
        try:
            boxes[name] = float(value)
        except ValueError:
            p.error(f"--box {item!r}: give PHASE=SECONDS")
        if name not in names:
            p.error(f"--box {item!r}: part {args.part} has the phases {', '.join(names)}")
    args.box = boxes
    if args.step_batches is not None:
        try:
            batches = [int(x) for x in args.step_batches.split(",")]
        except ValueError:
            batches = []
        if not batches or min(batches) < 1 or batches != sorted(set(batches)):
            p.error(f"--step-batches {args.step_batches!r}: give rising positive integers, e.g. 16,32,64")
    if args.only:
        args.only = [x.strip() for x in args.only.split(",") if x.strip()]
        unknown = [x for x in args.only if x not in names]
        if unknown:
            p.error(f"--only: part {args.part} has no phase {', '.join(unknown)} (it has {', '.join(names)})")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.prepare_carry:
        return campaign_files.prepare_carry(args.corpus)
    if args.collect:
        return campaign_files.collect(args.collect, Path(args.dest))
    return run_part(args)


if __name__ == "__main__":
    sys.exit(main())
