"""The fused graph's weights as they are written: fp32, or quantized one MatMul at a time.

Why here and not onnxruntime's whole-model quantizers (quantize_dynamic, MatMulNBitsQuantizer):
those load every weight of the fp32 model at once and build the quantized model beside it, two
copies of a 1.5 B model in memory. The fused graph knows its MatMuls as it writes them, so each
weight is quantized when read and only its quantized form is written.

Kinds (export.py's `quantize`):
- "int8-dynamic": DynamicQuantizeMatMul (what onnxruntime fuses quantize_dynamic's pattern into),
  int8 weights with a symmetric per-column scale, activations quantized per call.
- "int8-nbits" / "int4-nbits": MatMulNBits, weights in 32-value blocks with a symmetric scale
  each (onnxruntime's own block quantizer kernels), int8 compute (accuracy_level 4).
The embedding table is int8 with one scale per row (a Gather of a few rows and a multiply) for
both int8 kinds, and GatherBlockQuantized (int4 blocks) at 4 bits.
"""

from __future__ import annotations

import numpy as np

KINDS = (None, "int8-dynamic", "int8-nbits", "int4-nbits")
BLOCK = 32


def _int8_columns(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with one scale per slice along `axis` reduced away."""
    scale = np.abs(w).max(axis=axis, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


class WeightEmitter:
    """Writes initializers through `data` (weights.ExternalData) and nodes through `node`."""

    def __init__(self, data, node, kind: str | None):
        if kind not in KINDS:
            raise ValueError(f"quantization kind must be one of {KINDS}, not {kind!r}")
        self.data, self.node, self.kind = data, node, kind
        self.inits: list = []

    def plain(self, arr: np.ndarray, name: str) -> str:
        """An fp32 (or integer) initializer, never quantized: norms, biases, rotary tables."""
        self.inits.append(self.data.tensor(np.ascontiguousarray(arr), name))
        return name

    def matmul(self, x: str, w_kn: np.ndarray, name: str, out: str) -> str:
        """x @ w_kn (w_kn is (K, N): input features by output features)."""
        if self.kind is None:
            return self.node("MatMul", [x, self.plain(w_kn, name)], [out])
        k, n = w_kn.shape
        if self.kind == "int8-dynamic":
            q, scale = _int8_columns(w_kn, axis=0)
            return self.node("DynamicQuantizeMatMul", [x, self.plain(q, name + "_q"),
                                                       self.plain(scale.reshape(n), name + "_scale")],
                             [out], domain="com.microsoft")
        from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

        bits = 8 if self.kind == "int8-nbits" else 4
        blocks = (k + BLOCK - 1) // BLOCK
        if k % BLOCK:
            w_kn = np.pad(w_kn, ((0, blocks * BLOCK - k), (0, 0)))
        packed = np.zeros((n, blocks, BLOCK * bits // 8), dtype=np.uint8)
        scales = np.zeros((n, blocks), dtype=np.float32)
        zero_points = np.zeros((n, (blocks * bits + 7) // 8), dtype=np.uint8)  # unused: symmetric
        quantize = quantize_matmul_8bits if bits == 8 else quantize_matmul_4bits
        quantize(packed, np.ascontiguousarray(w_kn, dtype=np.float32), scales, zero_points, BLOCK, n,
                 blocks * BLOCK, True)
        return self.node("MatMulNBits", [x, self.plain(packed, name + f"_q{bits}"),
                                         self.plain(scales, name + "_scales")],
                         [out], domain="com.microsoft", K=k, N=n, bits=bits, block_size=BLOCK,
                         accuracy_level=4)

    def gather(self, table: np.ndarray, ids: str, name: str, out: str) -> str:
        """Rows `ids` of an embedding table (V, H)."""
        if self.kind is None:
            return self.node("Gather", [self.plain(table, name), ids], [out], axis=0)
        if self.kind == "int4-nbits":
            from onnx import TensorProto
            from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantizer

            with np.errstate(invalid="ignore", divide="ignore"):  # all-zero blocks: its np.where keeps 0
                packed, scales, _ = DefaultWeightOnlyQuantizer.quantize_ndarray(table, 1, BLOCK, True)
            self.inits.append(self.data.tensor(packed, name + "_q4", TensorProto.INT4, table.shape))
            return self.node("GatherBlockQuantized", [name + "_q4", ids, self.plain(scales, name + "_scales")],
                             [out], domain="com.microsoft", gather_axis=0, quantize_axis=1, block_size=BLOCK)
        from onnx import TensorProto

        q, scale = _int8_columns(table, axis=1)
        rows = self.node("Gather", [self.plain(q, name + "_q"), ids], [out + "_q"], axis=0)
        row_scale = self.node("Gather", [self.plain(scale, name + "_scale"), ids], [out + "_scale"], axis=0)
        wide = self.node("Cast", [rows], [out + "_f"], to=TensorProto.FLOAT)
        return self.node("Mul", [wide, row_scale], [out])
