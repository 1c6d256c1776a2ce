"""Damaged copies of weight files, for tests/test_damaged_weights.py: where a file's
structure is (a `.caffemodel`'s protobuf keys, lengths, numbers and names; a `.npy`'s header
and pickle opcodes, found by the standard library's pickletools) and seeded mutations of it,
each a (class, description, bytes). Independent of the readers in alexnet_keras/."""

import io
import pickletools

HUGE = (2**31 - 1, 2**32 - 1, 2**60, 2**64 - 1)


# === Where a file's structure is: protobuf fields, pickle opcodes ===


def _varint(data, position):
    value = shift = 0
    while True:
        byte = data[position]
        value |= (byte & 0x7F) << shift
        position, shift = position + 1, shift + 7
        if byte < 0x80:
            return value, position


def encode_varint(value):
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


# caffe.proto's messages the walk enters, by (enclosing message, field number); the other
# length-delimited fields of a layer (name, type, bottom, top) are text.
_MESSAGES = {
    ("net", 100): "layer",
    ("layer", 7): "blob",
    ("blob", 7): "shape",
    **{("layer", number): "parameter" for number in (6, 8, 106, 108, 117, 118, 121)},
}
_TEXT = {("layer", number) for number in (1, 2, 3, 4)}


def protobuf_landmarks(data, start=0, end=None, message="net", found=None):
    """{"key", "length", "varint", "text": [(start, end)]} of a .caffemodel's bytes."""
    found = found or {"key": [], "length": [], "varint": [], "text": []}
    position, end = start, len(data) if end is None else end
    while position < end:
        key, after = _varint(data, position)
        found["key"].append((position, after))
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value_end = _varint(data, after)[1]
            found["varint"].append((after, value_end))
            position = value_end
        elif wire_type == 2:
            length, payload = _varint(data, after)
            found["length"].append((after, payload))
            inner = _MESSAGES.get((message, number))
            if inner:
                protobuf_landmarks(data, payload, payload + length, inner, found)
            elif (message, number) in _TEXT:
                found["text"].append((payload, payload + length))
            elif message == "shape":  # packed dims
                inner_position = payload
                while inner_position < payload + length:
                    value_end = _varint(data, inner_position)[1]
                    found["varint"].append((inner_position, value_end))
                    inner_position = value_end
            position = payload + length
        else:
            position = after + (4 if wire_type == 5 else 8)
    return found


def pickle_landmarks(data, start):
    """[(opcode name, opcode position, end of its argument)] of the pickle at data[start:]."""
    operations = list(pickletools.genops(io.BytesIO(data[start:])))
    ends = [position for _, _, position in operations[1:]] + [len(data) - start]
    return [
        (opcode.name, start + position, start + end)
        for (opcode, _, position), end in zip(operations, ends)
    ]


# === Mutations, each a (class, description, bytes) ===


def replace(data, span, new):
    return data[: span[0]] + new + data[span[1] :]


def caffemodel_mutations(data, rng, count):
    marks = protobuf_landmarks(data)
    texts = [bytes(data[a:b]) for a, b in marks["text"]]
    structure = [span for spans in marks.values() for span in spans]
    for index in range(count):
        kind = ("key", "length", "varint", "text", "truncation", "flip")[index % 6]
        if kind == "key":
            span = rng.choice(marks["key"])
            number = rng.choice((0, 1, 2, 3, 4, 5, 7, 100, 106, 117, rng.randrange(1, 600)))
            new = encode_varint(number << 3 | rng.randrange(8))
        elif kind in ("length", "varint"):
            span = rng.choice(marks[kind])
            old = _varint(data, span[0])[0]
            choices = (0, 1, max(old - 1, 0), old + 1, rng.randrange(2 * old + 2), *HUGE)
            new = encode_varint(rng.choice(choices))
        elif kind == "text":
            span = rng.choice(marks["text"])
            new = rng.choice(
                (rng.choice(texts), rng.randbytes(span[1] - span[0]), b"\xff\xfe", b"")
            )
        if kind in ("key", "length", "varint", "text"):
            yield kind, f"{kind} at {span[0]} -> {new[:12]!r}", replace(data, span, new)
        elif kind == "truncation":
            cut = rng.choice((rng.randrange(len(data)), rng.choice(marks["key"])[0]))
            yield kind, f"cut at {cut}", data[:cut]
        else:
            yield kind, *_flipped(data, rng, structure)


def _flipped(data, rng, structure):
    """1 to 4 bytes XORed with random values: anywhere, or (half the time) among the bytes
    of `structure`'s spans, since most of a weights file is the weights' own bytes."""
    positions = [range(a, b) for a, b in structure] if rng.random() < 0.5 else [range(len(data))]
    mutated = bytearray(data)
    positions = [rng.choice(rng.choice(positions)) for _ in range(rng.randint(1, 4))]
    for position in positions:
        mutated[position] ^= rng.randrange(1, 256)
    return f"bytes {positions} flipped", bytes(mutated)


_HEADER_CHARACTERS = b"(){}[],:'\" aLeO|<f40-1\n\\#"
# Globals a mutated pickle may name: numpy's own, and what would run code.
_GLOBALS = (
    b"os\nsystem",
    b"posix\nsystem",
    b"builtins\neval",
    b"__builtin__\nexec",
    b"subprocess\nPopen",
    b"numpy\nload",
    b"numpy\nndarray",
    b"numpy\ndtype",
    b"numpy.core.multiarray\n_reconstruct",
)


def npy_mutations(data, rng, count):
    header_end = data.index(b"\n") + 1
    operations = pickle_landmarks(data, header_end)
    # the header, each opcode and the first bytes of its argument (not an array's data)
    structure = [(0, header_end)] + [(start, min(end, start + 9)) for _, start, end in operations]
    for index in range(count):
        kind = ("header", "opcode", "argument", "global", "truncation", "flip")[index % 6]
        if kind == "header":
            position = rng.randrange(6, header_end)
            new = rng.choice((bytes([rng.choice(_HEADER_CHARACTERS)]), b"", b"((", b"[[L"))
            yield (
                kind,
                f"header byte {position} -> {new!r}",
                replace(data, (position, position + 1), new),
            )
        elif kind == "opcode":
            _, position, _ = rng.choice(operations)
            new = bytes([rng.randrange(256)])
            yield (
                kind,
                f"opcode at {position} -> {new!r}",
                replace(data, (position, position + 1), new),
            )
        elif kind == "argument":
            name, position, end = rng.choice([op for op in operations if op[2] > op[1] + 1])
            size = min(end - position - 1, 8)
            value = rng.choice((0, 1, rng.randrange(256**size), *HUGE)) % 256**size
            new = value.to_bytes(size, "little")
            yield (
                kind,
                f"{name} at {position} -> {value}",
                replace(data, (position + 1, position + 1 + size), new),
            )
        elif kind == "global":
            _, position, end = rng.choice([op for op in operations if op[0] == "GLOBAL"])
            new = rng.choice(_GLOBALS) + b"\n"
            yield kind, f"GLOBAL at {position} -> {new!r}", replace(data, (position + 1, end), new)
        elif kind == "truncation":
            cut = rng.choice((rng.randrange(len(data)), rng.choice(operations)[1]))
            yield kind, f"cut at {cut}", data[:cut]
        else:
            yield kind, *_flipped(data, rng, structure)


def mean_mutations(data, rng, count):
    header_end = data.index(b"\n") + 1 if data.startswith(b"\x93NUMPY") else 0
    for index in range(count):
        if index % 3 == 0 and header_end:
            position = rng.randrange(6, header_end)
            new = bytes([rng.choice(_HEADER_CHARACTERS)])
            yield (
                "header",
                f"byte {position} -> {new!r}",
                replace(data, (position, position + 1), new),
            )
        elif index % 3 == 1:
            cut = rng.randrange(len(data))
            yield "truncation", f"cut at {cut}", data[:cut]
        else:
            yield "flip", *_flipped(data, rng, [(0, len(data))])
