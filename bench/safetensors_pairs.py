"""Safetensors-like pairs (an old file and a new one) for the delta-update bench.

    python bench/safetensors_pairs.py OUT_DIR [--mb 200]

A real safetensors layout: 8 bytes of little-endian header length, a JSON header (padded with
spaces to a multiple of 8) with `__metadata__` and each tensor's dtype, shape and data_offsets
(relative to the end of the header), then the tensors' bytes back to back. The tensors are the
weights of a small transformer, a few MB each, in F16 with float-like bytes (plausible exponents
for weights around 0.01), deterministic per name and seed, so every run cuts the same chunks.

The new files, each against the same old one:
  tail      the last 10% of the tensors changed (a fine-tune of the last layers)
  append    one tensor appended (the header grows, so every tensor moves)
  metadata  only `__metadata__` changed (a longer description: every tensor moves a few bytes)
  all       every tensor changed
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import struct
from pathlib import Path

KINDS = ("tail", "append", "metadata", "all")
DESCRIPTIONS = {
    "tail": "the last 10% of the tensors changed",
    "append": "one tensor appended",
    "metadata": "only the header's metadata changed",
    "all": "every tensor changed",
}
HIDDEN = 768
# F16, little-endian: the high byte of each value is sign, 5 exponent bits, 2 mantissa bits.
# Exponents 9..11 (values of about 2^-6..2^-4), like trained weights; the other bits stay random.
F16_HIGH = bytes.maketrans(bytes(range(256)), bytes((b & 0x83) | ((9 + (b >> 2) % 3) << 2) for b in range(256)))


def tensor_bytes(name: str, seed: str, size: int) -> bytes:
    data = bytearray(hashlib.shake_128(f"{seed}/{name}".encode()).digest(size))
    data[1::2] = data[1::2].translate(F16_HIGH)
    return bytes(data)


def base_tensors(megabytes: int) -> list[tuple[str, list[int]]]:
    """(name, shape) of F16 tensors summing to about `megabytes` MB: an embedding, then layers."""
    tensors = [("model.embed_tokens.weight", [4096, HIDDEN])]
    per_layer = [("self_attn.qkv_proj.weight", [HIDDEN, 3 * HIDDEN]), ("mlp.up_proj.weight", [HIDDEN, 4 * HIDDEN]),
                 ("mlp.down_proj.weight", [4 * HIDDEN, HIDDEN])]  # fmt: skip
    layer_bytes = sum(2 * math.prod(shape) for _, shape in per_layer)
    layers = max(1, round((megabytes * 1_000_000 - 2 * 4096 * HIDDEN) / layer_bytes))
    for layer in range(layers):
        tensors += [(f"model.layers.{layer}.{name}", shape) for name, shape in per_layer]
    return tensors


def write_safetensors(path: Path, tensors: list[tuple[str, list[int], str]], metadata: dict) -> dict:
    """Write (name, shape, seed) tensors in F16; return where the data starts and each tensor's bytes."""
    header, offset = {"__metadata__": metadata}, 0
    for name, shape, _ in tensors:
        length = 2 * math.prod(shape)
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + length]}
        offset += length
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    spans = {}
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)) + text)
        for name, shape, seed in tensors:
            spans[name] = (out.tell(), 2 * math.prod(shape), seed)
            out.write(tensor_bytes(name, seed, 2 * math.prod(shape)))
    return {"data_start": 8 + len(text), "size": 8 + len(text) + offset, "spans": spans}


def read_header(path: Path) -> dict:
    with open(path, "rb") as source:
        (length,) = struct.unpack("<Q", source.read(8))
        return json.loads(source.read(length))


def write_pairs(out: Path, megabytes: int = 200, kinds=KINDS) -> dict:
    """Write OUT/old.safetensors and OUT/<kind>.safetensors; for each kind: its path, size, and the
    bytes of the new file that the old one does not hold (the header, when it changed, and the
    changed or added tensors)."""
    out.mkdir(parents=True, exist_ok=True)
    shapes = base_tensors(megabytes)
    metadata = {"format": "pt", "description": "bench model"}
    old_tensors = [(name, shape, "v1") for name, shape in shapes]
    old = write_safetensors(out / "old.safetensors", old_tensors, metadata)
    pairs = {"old": {"path": out / "old.safetensors", "size": old["size"], "tensors": len(shapes)}}
    changed_count = math.ceil(len(shapes) / 10)
    for kind in kinds:
        tensors, meta = list(old_tensors), dict(metadata)
        if kind == "tail":
            tensors[-changed_count:] = [(name, shape, "v2") for name, shape, _ in tensors[-changed_count:]]
        elif kind == "append":
            tensors.append(("lm_head.weight", [4096, HIDDEN], "v2"))
        elif kind == "metadata":
            meta["description"] = "bench model, fine-tuned on more data (same weights)"
        elif kind == "all":
            tensors = [(name, shape, "v2") for name, shape, _ in tensors]
        new = write_safetensors(out / f"{kind}.safetensors", tensors, meta)
        header_changed = new["data_start"] != old["data_start"] or kind == "metadata"
        changed = (new["data_start"] if header_changed else 0) + sum(
            length for name, (_, length, seed) in new["spans"].items() if seed != "v1"
        )
        pairs[kind] = {
            "path": out / f"{kind}.safetensors",
            "size": new["size"],
            "changed": changed,
            "what": DESCRIPTIONS[kind],
            "shift": new["data_start"] - old["data_start"],
        }
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--mb", type=int, default=200, help="size of the old file in MB (default 200)")
    arguments = parser.parse_args()
    for kind, info in write_pairs(arguments.out_dir, arguments.mb).items():
        extra = f", {info['changed']:,} bytes changed ({info['what']})" if "changed" in info else ""
        print(f"{info['path']}: {info['size']:,} bytes{extra}")


if __name__ == "__main__":
    main()
