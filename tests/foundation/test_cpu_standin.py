"""The pure-torch `sgl_kernel` stand-in: op correctness and when the finder activates it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from runtime_patch.cpu_compat import sgl_kernel_standin as standin


def reference_assign(req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc):
    """The op's definition, one request at a time (what the Triton kernel in SGLang computes)."""
    offset = 0
    for row, start, end in zip(req_pool_indices.tolist(), start_offset.tolist(), end_offset.tolist()):
        n = end - start
        req_to_token[row, start:end] = out_cache_loc[offset:offset + n].to(req_to_token.dtype)
        offset += n


def make_case(batch: int, pool_rows: int, pool_len: int, max_new: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(pool_rows, generator=gen)[:batch].to(torch.int64)
    start = torch.randint(0, pool_len - max_new, (batch,), generator=gen)
    lengths = torch.randint(0, max_new + 1, (batch,), generator=gen)  # zero-length requests included
    end = start + lengths
    out_cache_loc = torch.randint(1, 10_000, (int(lengths.sum()) + 3,), generator=gen)  # longer than needed
    table = torch.zeros(pool_rows, pool_len, dtype=torch.int32)
    return rows, table, start, end, out_cache_loc


@pytest.mark.parametrize("batch,max_new", [(1, 1), (8, 1), (5, 17), (33, 64), (16, 0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_assign_req_to_token_pool_matches_reference(batch, max_new, seed):
    rows, table, start, end, loc = make_case(batch, pool_rows=64, pool_len=256, max_new=max(max_new, 1), seed=seed)
    if max_new == 0:
        end = start.clone()
    expected = table.clone()
    reference_assign(rows, expected, start, end, loc)
    standin.assign_req_to_token_pool_cpu(rows, table, start, end, loc, table.shape[1])
    assert torch.equal(table, expected)
    if int((end - start).sum()) > 0:
        assert table.abs().sum() > 0  # something was actually written


def test_assign_req_to_token_pool_empty_batch_is_a_noop():
    table = torch.full((4, 8), -1, dtype=torch.int32)
    empty = torch.empty(0, dtype=torch.int64)
    standin.assign_req_to_token_pool_cpu(empty, table, empty, empty, empty, 8)
    assert torch.equal(table, torch.full((4, 8), -1, dtype=torch.int32))


def test_unimplemented_ops_name_themselves():
    op = standin.copy_all_layer_kv_cache_cpu  # imported at module level by SGLang, never called for decoding
    with pytest.raises(NotImplementedError, match="copy_all_layer_kv_cache_cpu"):
        op(None, None, None, None)
    with pytest.raises(AttributeError):
        standin.not_a_cpu_helper  # noqa: B018  (non-*_cpu names are not faked)


def _import_in_subprocess(tmp_path, fake_package: str | None, cpu_engine: bool = True) -> subprocess.CompletedProcess:
    if fake_package is not None:
        pkg = tmp_path / "sgl_kernel"
        pkg.mkdir()
        (pkg / "__init__.py").write_text(textwrap.dedent(fake_package))
    code = "import sgl_kernel; print(getattr(sgl_kernel, 'IS_ESAMP_STANDIN', False), getattr(sgl_kernel, 'ORIGIN', '-'))"
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    if cpu_engine:
        env["SGLANG_USE_CPU_ENGINE"] = "1"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)


def test_finder_supplies_the_standin_on_a_cpu_server_without_sgl_kernel(tmp_path):
    out = _import_in_subprocess(tmp_path, None)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True -"


def test_finder_stays_out_of_the_way_when_not_serving_on_cpu(tmp_path):
    """Without SGLANG_USE_CPU_ENGINE=1 (a GPU server, or any other process) nothing is faked."""
    out = _import_in_subprocess(tmp_path, None, cpu_engine=False)
    assert out.returncode != 0 and "ModuleNotFoundError: No module named 'sgl_kernel'" in out.stderr


def test_an_installed_sgl_kernel_that_fails_to_import_raises_its_own_error(tmp_path):
    broken = "raise ImportError('libcuda.so.1: cannot open shared object file')\n"
    out = _import_in_subprocess(tmp_path, broken)
    assert out.returncode != 0
    assert "libcuda.so.1: cannot open shared object file" in out.stderr  # not hidden behind the stand-in


def test_finder_prefers_a_working_real_package(tmp_path):
    out = _import_in_subprocess(tmp_path, "ORIGIN = 'real'\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False real"


def test_finder_is_installed_by_the_package_pth_file():
    out = subprocess.run([sys.executable, "-c", "import sys; print(any(type(f).__name__ == 'SglKernelFinder' for f in sys.meta_path))"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
