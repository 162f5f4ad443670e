"""Break the mechanism four ways (concatenation, per-frame rows, block choice, caching); each time its test must
fail. Run: ``python tests/reference/check_mutants.py`` (one process for all four; prints ``MUTANT ... caught``)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
T = f"{ROOT / 'tests' / 'reference'}/"


def main() -> int:
    sys.path.insert(0, str(ROOT / "src"))
    import pytest

    from dreamvideo.reference import config as cfg
    from dreamvideo.reference import encoder as enc
    from dreamvideo.reference import layer

    real_attn, real_prefixes, real_step = (
        layer.reference_attention,
        cfg.ReferenceConfig.prefixes,
        enc.ReferenceFeatureCache.step,
    )

    def no_concat(attn, h, ref):  # K/V from z only: the concatenation dropped
        return real_attn(attn, h, ref[:, :0])

    def wrong_rows(value, rows, what):  # samples tiled instead of repeated for each of their frames
        return value.repeat(rows // value.shape[0], *([1] * (value.ndim - 1)))

    def with_down(self):  # block choice wrong: down blocks hooked too
        return real_prefixes(self) + ("down_blocks.",)

    def no_cache(self, unet, t):  # the encoder re-run at every call
        self.timestep = None
        return real_step(self, unet, t)

    formula = T + "test_mechanism.py::test_hooked_attention_is_the_formula_with_features_repeated_per_frame"
    mutants = [
        ("concatenation", layer, "reference_attention", no_concat, formula),
        ("per-frame rows", layer, "_per_row", wrong_rows, formula),
        (
            "block choice",
            cfg.ReferenceConfig,
            "prefixes",
            with_down,
            T + "test_mechanism.py::test_default_blocks_are_mid_and_up_and_only_their_self_attention_changes",
        ),
        (
            "caching",
            enc.ReferenceFeatureCache,
            "step",
            no_cache,
            T
            + "test_pipeline_and_cli.py::test_cache_reuses_features_within_a_step_and_tiles_them_for_both_branches",
        ),
    ]
    missed = 0
    for name, owner, attr, fn, test in mutants:
        real = getattr(owner, attr)
        setattr(owner, attr, fn)
        try:
            rc = pytest.main(
                [
                    "-q",
                    "-p",
                    "no:cacheprovider",
                    "--rootdir",
                    str(ROOT),
                    "-c",
                    str(ROOT / "pyproject.toml"),
                    test,
                ]
            )
        finally:
            setattr(owner, attr, real)
        missed += int(rc) != 1
        print(
            f"MUTANT {name}: pytest rc {int(rc)} ({'caught' if int(rc) == 1 else 'NOT CAUGHT'})", flush=True
        )
    return missed


if __name__ == "__main__":
    sys.exit(main())
