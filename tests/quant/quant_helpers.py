"""Shared pieces for the quant tests (a plain module, like tests/infer/infer_helpers.py)."""


def rel(a, b) -> float:
    """Relative error ||a - b|| / ||b|| in fp32."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()
