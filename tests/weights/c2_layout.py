"""Test fixtures: MSRA/Detectron ResNet weights in Caffe2 naming, generated from the stage layout rules.

Layout A (Detectron1, BN folded into `_bn_s`/`_bn_b`, zero `_b` on every branch conv) and layout B
(detectron2's converted copy: `_bn_gamma/_beta/_running_mean/_running_var`, only `conv1_b`).
"""

import numpy as np
import torch

STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
BN_SUFFIXES = {"A": ("s", "b"), "B": ("gamma", "beta", "running_mean", "running_var")}
EPS = 1e-5


def _convs(depth: int):
    """(c2 prefix, torchvision conv name, torchvision norm name, shape) for every conv of the body."""
    yield "conv1", "conv1", "bn1", (64, 3, 7, 7)
    for stage, blocks in enumerate(STAGE_BLOCKS[depth], start=2):
        width = 64 * 2 ** (stage - 2)
        out = 4 * width
        stage_in = 64 if stage == 2 else out // 2
        for block in range(blocks):
            block_in = stage_in if block == 0 else out
            tv = f"layer{stage - 1}.{block}."
            c2 = f"res{stage}_{block}_branch"
            yield c2 + "2a", tv + "conv1", tv + "bn1", (width, block_in, 1, 1)
            yield c2 + "2b", tv + "conv2", tv + "bn2", (width, width, 3, 3)
            yield c2 + "2c", tv + "conv3", tv + "bn3", (out, width, 1, 1)
            if block == 0:
                yield c2 + "1", tv + "downsample.0", tv + "downsample.1", (out, stage_in, 1, 1)


def _norm_prefix(c2_conv: str) -> str:
    return "res_conv1_bn" if c2_conv == "conv1" else c2_conv + "_bn"


def c2_resnet_shapes(depth: int, layout: str) -> dict[str, tuple[int, ...]]:
    """Every key of R-50/R-101.pkl in `layout` with its real shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    for c2, _, _, shape in _convs(depth):
        shapes[c2 + "_w"] = shape
        if layout == "A" or c2 == "conv1":
            shapes[c2 + "_b"] = shape[:1]
        for suffix in BN_SUFFIXES[layout]:
            shapes[f"{_norm_prefix(c2)}_{suffix}"] = shape[:1]
    shapes["fc1000_w"] = (1000, 2048)
    shapes["fc1000_b"] = (1000,)
    return shapes


def c2_from_torchvision(
    resnet_state: dict[str, torch.Tensor], depth: int, layout: str
) -> dict[str, np.ndarray]:
    """A torchvision ResNet state dict written out as MSRA's pickle would hold it (folding BN for A)."""
    rng = np.random.default_rng(0)
    blobs: dict[str, np.ndarray] = {}
    for c2, conv, norm, _ in _convs(depth):
        blobs[c2 + "_w"] = resnet_state[conv + ".weight"].numpy()
        gamma, beta, mean, var = (
            resnet_state[f"{norm}.{k}"].numpy() for k in ("weight", "bias", "running_mean", "running_var")
        )
        prefix = _norm_prefix(c2)
        if layout == "A":
            scale = gamma / np.sqrt(var + EPS)
            blobs[prefix + "_s"], blobs[prefix + "_b"] = scale, beta - mean * scale
            blobs[c2 + "_b"] = np.zeros(len(gamma), np.float32)
        else:
            for suffix, value in zip(BN_SUFFIXES["B"], (gamma, beta, mean, var), strict=True):
                blobs[f"{prefix}_{suffix}"] = value
    # conv1_b is a real, tiny learned bias that detectron2 ignores
    blobs["conv1_b"] = (rng.standard_normal(64) * 1e-9).astype(np.float32)
    blobs["fc1000_w"] = resnet_state["fc.weight"].numpy()
    blobs["fc1000_b"] = resnet_state["fc.bias"].numpy()
    return {key: np.ascontiguousarray(value, dtype=np.float32) for key, value in blobs.items()}


def py2_pickle(arrays: dict[str, np.ndarray]) -> bytes:
    """A protocol-2 pickle as Python 2's cPickle wrote them: keys and array payloads are py2 `str`
    (SHORT_BINSTRING / BINSTRING opcodes), numpy globals under `numpy.core.multiarray`."""

    def py2_str(data: bytes) -> bytes:
        if len(data) < 256:
            return b"U" + bytes([len(data)]) + data
        return b"T" + len(data).to_bytes(4, "little") + data

    out = b"\x80\x02}("
    for key, values in arrays.items():
        array = np.ascontiguousarray(values, dtype="<f4")
        shape = b"(" + b"".join(b"J" + d.to_bytes(4, "little", signed=True) for d in array.shape) + b"t"
        dtype = b"cnumpy\ndtype\n" + py2_str(b"f4") + b"K\x00K\x01\x87R(K\x03" + py2_str(b"<")
        dtype += b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        out += py2_str(key.encode("ascii"))
        out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + py2_str(b"b") + b"\x87R"
        out += b"(K\x01" + shape + dtype + b"\x89" + py2_str(array.tobytes()) + b"tb"
    return out + b"u."
