"""Experiment grids: the suites of trace-replay runs (a server per configuration, the replay
client per run) and the driver that runs them. The named model settings live in
``valora.model_settings`` (re-exported here for the grids and scripts that name them).
"""

from __future__ import annotations

from types import MappingProxyType

from valora.model_settings import MODEL_SETTINGS  # noqa: F401  (re-exported)

# Where real checkpoints live when a user has them on disk (setting -> path); empty by default:
# the named settings then run on dummy weights.
BASE_MODEL: MappingProxyType = MappingProxyType({})
LORA_DIR: MappingProxyType = MappingProxyType({})


# ---- experiment suites ---------------------------------------------------------------------
# A suite is a list of runs. Runs that share ``server`` flags share one server process (started
# by ``python exp_suite.py SUITE``, stopped after its runs); ``client`` flags go to
# ``benchmarks/run_exp.py``. Common flags (model setting, quantization, duration) are added at
# run time. VaLoRA's Fig. 14 setup: 16 adapters, skewness 0.8, per-second sampling of the Azure
# code trace, rates 2 / 4 / 6 / 10 / 16 req/s, vqa and vat.

POLICIES = ("valora", "slora", "punica", "dlora")
FIG14_RATES = (2, 4, 6, 10, 16)


def _run(name: str, server: dict, client: dict) -> MappingProxyType:
    return MappingProxyType(
        {"name": name, "server": MappingProxyType(server), "client": MappingProxyType(client)}
    )


def _fig14() -> list:
    return [
        _run(
            f"{policy}_{task}_{rate}",
            # vat: video clips to /v1/classify next to vqa traffic, so every adapter has a head
            {"policy": policy, "num-adapter": 16, "dummy-task-classes": 8},
            {"task": task, "req_rate": rate, "skewness": 0.8, "num_adapters": 16},
        )
        for policy in POLICIES
        for task in ("vqa", "vat")
        for rate in FIG14_RATES
    ]


def _skewness() -> list:
    return [
        _run(
            f"{policy}_skew{skew}",
            {"policy": policy, "num-adapter": 16},
            {"task": "vqa", "req_rate": 6, "skewness": skew, "num_adapters": 16},
        )
        for policy in POLICIES
        for skew in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    ]


def _adapters() -> list:
    """Up to 1,000 adapters (dummy ones are regenerated on demand: the host cache holds 256)."""
    return [
        _run(
            f"{policy}_n{n}",
            {"policy": policy, "num-adapter": n, "max-cpu-loras": 256, "max-loras": 32},
            {"task": "vqa", "req_rate": 6, "popularity": "power", "alpha": 0.3, "num_adapters": n},
        )
        for policy in POLICIES
        for n in (1, 16, 64, 256, 1000)
    ]


def _rank_mix() -> list:
    mixes = {"r8": "8", "r64": "64", "mixed": "8 16 32 64", "r128": "128"}
    return [
        _run(
            f"{policy}_{label}",
            {"policy": policy, "num-adapter": 16, "dummy-ranks": ranks, "max-lora-rank": 128},
            {"task": "vqa", "req_rate": 6, "skewness": 0.5, "num_adapters": 16},
        )
        for policy in POLICIES
        for label, ranks in mixes.items()
    ]


SUITES: MappingProxyType = MappingProxyType(
    {"fig14": _fig14(), "skewness": _skewness(), "adapters": _adapters(), "rank-mix": _rank_mix()}
)


def _flags(options: dict) -> list[str]:
    out = []
    for key, value in options.items():
        out += [f"--{key}", *str(value).split()]
    return out


def _server_groups(runs: list) -> list[tuple[dict, list]]:
    """Runs grouped by their server flags, in suite order."""
    groups: dict[tuple, tuple[dict, list]] = {}
    for run in runs:
        key = tuple(sorted(run["server"].items()))
        groups.setdefault(key, (dict(run["server"]), []))[1].append(run)
    return list(groups.values())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc, port: int, log_path, timeout_s: float = 900.0) -> None:
    """Until the server answers /health; fails at once if its process exits."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "".join(open(log_path).readlines()[-20:])
            raise RuntimeError(f"the server exited ({proc.returncode}):\n{tail}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return
        except OSError:
            time.sleep(1.0)
    raise TimeoutError(f"the server did not answer /health within {timeout_s:.0f} s")


def run_suite(
    suite: str,
    out_dir: str,
    server_args: list[str],
    client_args: list[str],
    policies: list[str] | None = None,
    rerun: bool = False,
    match: str = "",
    warmup_s: float = 10.0,
) -> None:
    """Start a server per configuration, replay ``warmup_s`` seconds of its first run's workload
    unrecorded, replay each of its runs, stop it; skip runs whose result file exists unless
    ``rerun``."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    root, out = Path(__file__).resolve().parent, Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = [
        r
        for r in SUITES[suite]
        if re.search(match, r["name"]) and (policies is None or r["server"]["policy"] in policies)
    ]
    for server, group in _server_groups(runs):
        todo = [r for r in group if rerun or not (out / f"{r['name']}.jsonl").exists()]
        if not todo:
            continue
        port = _free_port()
        log = open(out / f"server_{todo[0]['name']}.log", "w")  # noqa: SIM115 (closed below)
        cmd = [
            sys.executable,
            str(root / "benchmarks/launch_server.py"),
            *server_args,
            *_flags(server),
            "--port",
            str(port),
        ]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(proc, port, out / f"server_{todo[0]['name']}.log")
            if warmup_s > 0:  # a replay nobody records: kernels compiled, caches warm
                subprocess.run(
                    [
                        sys.executable,
                        str(root / "benchmarks/run_exp.py"),
                        "--server",
                        f"http://127.0.0.1:{port}",
                        *client_args,
                        *_flags(todo[0]["client"]),
                        "--duration",
                        str(warmup_s),
                        "--seed",
                        "7",
                    ],
                    check=True,
                )
            for run in todo:
                subprocess.run(
                    [
                        sys.executable,
                        str(root / "benchmarks/run_exp.py"),
                        "--server",
                        f"http://127.0.0.1:{port}",
                        *client_args,
                        *_flags(run["client"]),
                        "--label",
                        run["name"],
                        "--out",
                        str(out / f"{run['name']}.jsonl"),
                    ],
                    check=True,
                )
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def main(argv: list[str] | None = None) -> None:
    """``python exp_suite.py SUITE --out-dir DIR [--server-args "..."] [--client-args "..."]``"""
    import argparse
    import shlex

    p = argparse.ArgumentParser(
        description="Run a named experiment suite (one server per configuration)."
    )
    p.add_argument("suite", choices=sorted(SUITES))
    p.add_argument("--out-dir", required=True)
    p.add_argument(
        "--server-args",
        default="--model-setting tiny --device cpu",
        help="flags every server gets (model, quantization, memory)",
    )
    p.add_argument("--client-args", default="--duration 30", help="flags every replay gets")
    p.add_argument("--policies", nargs="+", choices=POLICIES)
    p.add_argument("--rerun", action="store_true", help="replay runs that have results already")
    p.add_argument(
        "--match", default="", help="only the runs whose name this regex matches (re.search)"
    )
    p.add_argument(
        "--warmup-s",
        type=float,
        default=10.0,
        help="unrecorded replay seconds per server before its runs",
    )
    p.add_argument("--list", action="store_true", help="print the runs and exit")
    args = p.parse_args(argv)
    if args.list:
        for run in SUITES[args.suite]:
            print(run["name"], _flags(run["server"]), _flags(run["client"]))
        return
    run_suite(
        args.suite,
        args.out_dir,
        shlex.split(args.server_args),
        shlex.split(args.client_args),
        args.policies,
        args.rerun,
        args.match,
        args.warmup_s,
    )


if __name__ == "__main__":
    main()
