"""Server arguments and environment for SGLang's own parallelism (`--dp-size`, `--tp-size`).

What SGLang 0.5.23 needs beyond the flags, found by running it (docs/scale-out.md):

* On CPU, every rank (dp_size × tp_size × pp_size of them) must be given its cores: without
  `SGLANG_CPU_OMP_THREADS_BIND` SGLang allows only one rank per NUMA node and a 1-node machine
  refuses `--dp-size 2` at start-up.
* On CPU with the CUDA build of torch (this project's cpu profile), `--tp-size > 1` crashes at start-up:
  SGLang creates a PyNccl communicator for the TP group whenever `libnccl` loads, and the CUDA torch
  wheel ships it ("Expected a cuda device, but got: cpu"). Pointing `SGLANG_NCCL_SO_PATH` at a path
  that does not exist makes the load fail, which SGLang treats as "no NCCL" (its path with a CPU-only
  torch), and the TP group runs on gloo.
* On CPU SGLang sizes the KV cache from machine-wide free memory, measured by every rank while the
  other ranks are still loading their weights, so the single-rank `--mem-fraction-static 0.05` can
  leave "no memory for the KV cache". Several ranks get a larger fraction and a fixed token cap
  instead (the cap, not the fraction, decides what is allocated).
* The esamp backend under `--tp-size > 1` requires `SYNC_TOKEN_IDS_ACROSS_TP=1`
  (`runtime_patch/tensor_parallel.py` says why).
"""

from __future__ import annotations

import os

# A path that cannot exist, so SGLang's NCCL loader fails and the TP group uses gloo.
NO_NCCL = "/nonexistent/esamp-sgl-cpu-has-no-nccl/libnccl.so.2"


def cpu_threads_bind(ranks: int, cpus: list[int] | None = None) -> str:
    """`SGLANG_CPU_OMP_THREADS_BIND` giving each of `ranks` ranks a disjoint share of the CPUs this
    process may use, e.g. 2 ranks on CPUs 0-1 -> "0|1", 2 ranks on CPUs 0-7 -> "0-3|4-7"."""
    cpus = sorted(os.sched_getaffinity(0)) if cpus is None else sorted(cpus)
    if ranks < 1 or len(cpus) < ranks:
        raise ValueError(f"cannot bind {ranks} ranks to {len(cpus)} CPUs (each rank needs at least one)")
    share = len(cpus) // ranks
    groups = [cpus[i * share:(i + 1) * share] for i in range(ranks)]
    return "|".join(_cpu_list(g) for g in groups)


def _cpu_list(cpus: list[int]) -> str:
    if len(cpus) == 1:
        return str(cpus[0])
    if cpus == list(range(cpus[0], cpus[-1] + 1)):
        return f"{cpus[0]}-{cpus[-1]}"
    return ",".join(map(str, cpus))


def parallel_env(*, dp_size: int = 1, tp_size: int = 1, on_cpu: bool, esamp: bool,
                 base: dict[str, str] | None = None) -> dict[str, str]:
    """The server environment for `--dp-size dp_size --tp-size tp_size` (a copy of `base`/os.environ)."""
    env = dict(os.environ if base is None else base)
    ranks = dp_size * tp_size
    if on_cpu and ranks > 1:
        env.setdefault("SGLANG_CPU_OMP_THREADS_BIND", cpu_threads_bind(ranks))
        # SGLang applies that binding only through sgl-kernel's AMX path (`init_cpu_threads_env`); without
        # it every rank starts torch with one thread per CPU, and N ranks x all CPUs oversubscribe the
        # cores (OpenMP spin-waits then stall every step). One rank's share of the CPUs each:
        env.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // ranks)))
        # Every core is a rank's: ESamp's `auto` would see torch's share < the cores and start a training
        # thread per rank on cores the other ranks use.
        env.setdefault("ESAMP_SGL_TRAIN_MODE", "sync")
    if on_cpu and tp_size > 1:
        env.setdefault("SGLANG_NCCL_SO_PATH", NO_NCCL)
    if esamp and tp_size > 1:
        env["SYNC_TOKEN_IDS_ACROSS_TP"] = "1"
    return env


CPU_MULTI_RANK_MEM_FRACTION = 0.2
CPU_MULTI_RANK_MAX_TOKENS = 16384  # SmolLM2: 23 KB of KV per token -> 0.4 GB per rank


def parallel_args(*, dp_size: int = 1, tp_size: int = 1, on_cpu: bool) -> list[str]:
    """Flags after `esamp_sgl.launch.server`'s CPU flags (a later flag overrides an earlier one)."""
    memory = (["--mem-fraction-static", str(CPU_MULTI_RANK_MEM_FRACTION),
               "--max-total-tokens", str(CPU_MULTI_RANK_MAX_TOKENS)] if on_cpu and dp_size * tp_size > 1 else [])
    return [*(["--dp-size", str(dp_size)] if dp_size > 1 else []),
            *(["--tp-size", str(tp_size)] if tp_size > 1 else []), *memory]
