"""How far a TF32 tensor-core product lands from the f32 one, against burn's `autotune-checks` tolerance.

burn-cubecl's `autotune-checks` compares every candidate kernel's result with the last candidate's. Its published
rule (an element agrees within 1 % of itself or 0.01) is per element; a TF32 candidate (operands rounded to a 10-bit
mantissa) summing a thousand products differs from the f32 one by ~1e-2 on results of magnitude ~10, so elements
near zero by cancellation fail it. The rule patched into `vendor/burn-cubecl/src/tensor/base.rs` also admits
4e-3 of the reference tensor's largest magnitude. This script draws the forward convolution of
`crates/nets/tests/it/backend_kernels.rs`'s first panel case as its GEMM (13 samples of 4 x 4 positions, 128
channels x 3 x 3 taps, 136 outputs; operands uniform in [-1, 1]), rounds the operands to TF32 both ways hardware
does (to nearest, and truncation), and counts the elements each rule rejects.

Usage: python3 xtask/tf32_check.py   (numpy; no GPU)
"""
import numpy as np


def tf32(a, mode):
    bits = a.astype(np.float32).view(np.uint32)
    if mode == "nearest":
        bits = bits + np.uint32(0x1000)
    return (bits & np.uint32(0xFFFFE000)).view(np.float32)


def main():
    rng = np.random.default_rng(1)
    m, k, n = 13 * 16, 128 * 9, 136
    a = rng.uniform(-1, 1, (m, k)).astype(np.float32)
    w = rng.uniform(-1, 1, (k, n)).astype(np.float32)
    f32 = a @ w
    scale = np.abs(a.astype(np.float64) @ w.astype(np.float64)).max()
    for mode in ["nearest", "truncation"]:
        t = tf32(a, mode).astype(np.float64) @ tf32(w, mode).astype(np.float64)
        diff = np.abs(t - f32)
        own = np.maximum(0.01, 0.01 * np.maximum(np.abs(t), np.abs(f32)))
        burn = int((diff >= own).sum())
        patched = int((diff > np.maximum(own, 4e-3 * scale)).sum())
        print(f"{mode}: largest difference {diff.max():.4f} ({diff.max() / scale:.1e} of the largest magnitude {scale:.1f}); "
              f"rejected by burn's rule {burn} of {diff.size}, by the patched rule {patched}")


if __name__ == "__main__":
    main()
