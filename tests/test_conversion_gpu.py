"""The conversion on a GPU with the production layer spec (Transformer Engine, grouped-GEMM experts):
a tiny DeepSeek-V3 imported, its logits against transformers', generation, export bit-exact.
The recorded run: benchmarks/results/*conversion-verify*.json (benchmarks/run_conversion_verify.py)."""

import pytest

pytest.importorskip("megatron.bridge", reason="needs the train extra (uv sync --extra train)")

from conversion import selfcheck  # noqa: E402
from conversion.checks import Parallelism  # noqa: E402


@pytest.mark.gpu
def test_tiny_model_converts_and_matches_transformers(tmp_path):
    result = selfcheck.run(tmp_path, Parallelism())
    assert result.mismatched == []
    assert result.verify["passed"], result.verify
    assert result.verify["mean_rel_error"] <= 0.01 and result.verify["top1_agreement"] >= 0.95
    assert 1 <= len(result.generated) <= 8
