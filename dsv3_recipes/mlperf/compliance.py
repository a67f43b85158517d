"""Check an mllog file with mlperf-logging's compliance checker (training ruleset 6.1.0).

A benchmark-scale log is checked exactly as ``python -m mlperf_logging.compliance_checker --usage
training --ruleset 6.1.0 LOG`` does. A proxy log (``mlperf.proxy``) is checked with the same package
rules, then with overrides for the rules that only hold at benchmark scale: GBS >= 15360, the GBS
learning-rate formula, 1,024 evaluation sequences and the first evaluation at 42 + 24576 // GBS. The
overrides pin those keys to the proxy recipe's own values and require the proxy marker key; the
checker's own override mechanism (a later rule for a key replaces the earlier rule's verdict) applies
them. Everything else, the quality target included, is the package's rule.

Launch side (mlperf-logging, no torch), run as ``dsv3 mlperf-check LOG [--recipe NAME [key=value ...]]``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import yaml
from mlperf_logging.compliance_checker import mlp_compliance, mlp_parser

from dsv3_recipes.mlperf import rules as mlperf_rules
from dsv3_recipes.recipe.schema import Recipe, RecipeError

USAGE = "training"
RULES = f"{USAGE}_{mlperf_rules.RULESET}/common.yaml"


@dataclass(frozen=True)
class ProxyScale:
    """The proxy recipe's values for the rules that only hold at benchmark scale."""

    global_batch_size: int
    base_learning_rate: float
    eval_samples: int
    first_eval_step: int

    @classmethod
    def of(cls, recipe: Recipe) -> ProxyScale:
        return cls(
            global_batch_size=recipe.train.global_batch_size,
            base_learning_rate=recipe.optimizer.lr,
            eval_samples=recipe.mlperf.eval_samples,
            first_eval_step=mlperf_rules.start_eval_step(recipe),
        )

    def rules(self) -> list[dict]:
        """Checker records (the package's YAML schema) for the scale-dependent keys."""
        records = [
            {"NAME": mlperf_rules.PROXY_LOG_KEY, "REQ": "EXACTLY_ONE", "CHECK": "v['value'] is True"},
            {
                "NAME": "global_batch_size",
                "REQ": "EXACTLY_ONE",
                "CHECK": f"v['value'] == {self.global_batch_size}",
                "POST": "s['global_batch_size'] = v['value']",
            },
            {
                "NAME": "opt_base_learning_rate",
                "REQ": "EXACTLY_ONE",
                "CHECK": f"abs(v['value'] - {self.base_learning_rate!r}) < 1e-12",
            },
            {"NAME": "eval_samples", "REQ": "EXACTLY_ONE", "CHECK": f"v['value'] == {self.eval_samples}"},
            {
                "NAME": "eval_accuracy",
                "REQ": "AT_LEAST_ONE",
                "CHECK": "'samples_count' in v['metadata']",
                "FIRST_CHECK": (
                    f"int(v['metadata']['samples_count']) == s['global_batch_size'] * {self.first_eval_step}"
                ),
            },
        ]
        return [{"KEY": record} for record in records]


def check_readable(path: str) -> None:
    """A log the checker can read: a text file with ``:::MLLOG`` lines (else it lists every key missing)."""
    if not os.path.isfile(path):
        raise RecipeError("log", f"{path} is {'a directory' if os.path.isdir(path) else 'not a file'}")
    with open(path, "rb") as f:
        data = f.read()
    if b"\0" in data:
        raise RecipeError("log", f"{path} is not a text log (it holds NUL bytes)")
    if b":::MLLOG" not in data:
        raise RecipeError("log", f"{path} holds no :::MLLOG lines{' (it is empty)' if not data else ''}")


def check_log(path: str, proxy: ProxyScale | None = None) -> tuple[bool, list[str]]:
    """Run the checker; returns (passed, the checker's failure messages)."""
    check_readable(path)
    checker = mlp_compliance.make_checker(USAGE, mlperf_rules.RULESET, quiet=True, werror=False)
    loglines, errors = mlp_parser.parse_file(path, ruleset=mlperf_rules.RULESET)
    if errors:
        return False, [f"unparsable line: {line} ({error})" for line, error in errors]
    checker.check_loglines(loglines, RULES)
    if proxy is not None:
        with tempfile.TemporaryDirectory() as tmp:
            overrides = os.path.join(tmp, "proxy_overrides.yaml")
            with open(overrides, "w") as f:
                yaml.safe_dump(proxy.rules(), f, sort_keys=False)
            checker.check_loglines(loglines, overrides)  # an absolute path: the checker joins it as is
    messages = [*checker.overwritable.values(), *checker.not_overwritable]
    return not messages, messages
