#!/usr/bin/env python3
"""Independent verifier of Bulkhead's audit log, written from docs/audit-log.md alone.

    python3 tools/audit_verify.py DIR [--key PUBFILE] [--checkpoint FILE ...]
                                  [--witness-key PUBFILE [--witness-checkpoint FILE ...]]

Prints the report of "The verifiers' report" as one JSON object and exits 0 when the log is
clean, 1 when it has a problem, 2 on a usage error or when the directory, a segment, a key or a
saved or witness checkpoint cannot be read. Needs Python 3.11 and PyNaCl (pip install pynacl).
"""
import argparse, base64, binascii, hashlib, json, os, re, stat, struct, sys

import nacl.exceptions
import nacl.signing

MAX_FRAME, MAX_I64 = 1 << 20, (1 << 63) - 1
EMPTY_ROOT = hashlib.sha256(b"").digest()
SEGMENT = re.compile(r"[0-9]{10}\.seg")
FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")
SIZE = re.compile(r"0|[1-9][0-9]{0,18}")
CONTROL = re.compile("[\x00-\x09\x0b-\x1f]")  # the control characters but newline
RECORD_KEYS = {"v", "seq", "time_ns", "boot_id", "actor", "tenant", "action", "target",
               "decision", "stage", "operation", "result"}

def _crc_tables():
    """CRC-32C's byte table (reflected 0x82F63B78), and from it a table for two bytes at once."""
    t8 = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t8.append(c)
    return t8, [t8[(t8[x & 0xFF] ^ (x >> 8)) & 0xFF] ^ (t8[x & 0xFF] >> 8) for x in range(65536)]

CRC8, CRC16 = _crc_tables()

def crc32c(data):
    c, t16 = 0xFFFFFFFF, CRC16
    for w in struct.unpack_from("<%dH" % (len(data) >> 1), data):
        c = t16[(c ^ w) & 0xFFFF] ^ (c >> 16)
    if len(data) & 1:
        c = CRC8[(c ^ data[-1]) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF

def _reject(text):
    raise ValueError("not an integer: " + text)

_SHORT = {"b": "\\u0008", "f": "\\u000c", "n": "\\u000a", "r": "\\u000d", "t": "\\u0009"}
_ESCAPE = re.compile(r'\\(["\\bfnrt]|u[0-9a-f]{4})')

def parse_canonical(payload):
    """The value of a payload in canonical JSON (docs: Payloads), else None: parse, re-encode,
    compare. json.dumps escapes only '"', '\\' and controls, some of those in short form (\\n),
    which _ESCAPE rewrites as \\u00xx. Depth and 64-bit range are left to valid_record: it allows
    depth 2 only and bounds every integer, so a payload failing them is a bad record either way."""
    try:
        value = json.loads(payload.decode("utf-8"), parse_float=_reject, parse_constant=_reject)
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        if "\\" in text:
            text = _ESCAPE.sub(lambda m: _SHORT.get(m.group(1), m.group()), text)
        return value if text.encode("utf-8") == payload else None
    except (ValueError, RecursionError):  # UnicodeError and JSONDecodeError are ValueErrors
        return None

def _int(x, lo, hi):
    return type(x) is int and lo <= x <= hi

def _str(x):
    return type(x) is str and 1 <= len(x.encode("utf-8")) <= 1024

def valid_record(r):
    """Is r a version-1 record (docs: Records (version 1))?"""
    if type(r) is not dict or set(r) != RECORD_KEYS or type(r["actor"]) is not dict:
        return False
    actor, decision = r["actor"], r["decision"]
    kind = actor.get("kind")
    if kind == "local":
        ok_actor = (set(actor) == {"kind", "uid", "gid", "pid"} and _int(actor["uid"], 0, 2**32 - 1)
                    and _int(actor["gid"], 0, 2**32 - 1) and _int(actor["pid"], 0, 2**31 - 1))
    elif kind == "certificate":
        fp = actor.get("fingerprint")
        ok_actor = set(actor) == {"kind", "fingerprint"} and type(fp) is str and FINGERPRINT.fullmatch(fp)
    else:
        ok_actor = kind == "system" and set(actor) == {"kind"}
    return bool(
        ok_actor and _int(r["v"], 1, 1) and _int(r["seq"], 0, MAX_I64) and _int(r["time_ns"], 0, MAX_I64)
        and _str(r["boot_id"]) and _str(r["action"]) and _str(r["operation"])
        and (r["tenant"] is None or _str(r["tenant"])) and (r["target"] is None or _str(r["target"]))
        and type(decision) is dict and set(decision) == {"allowed", "reason"}
        and type(decision["allowed"]) is bool and _str(decision["reason"])
        and (r["stage"] == "intent" and r["result"] is None or r["stage"] == "outcome" and _str(r["result"])))

def valid_name(name):
    return name != "" and "+" not in name and not any(c.isspace() for c in name)

def b64(text):
    """Strict, canonical standard base64 with padding (RFC 4648 §4), else None."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if base64.b64encode(raw).decode("ascii") == text else None

class Key:
    """A verifier key, the text NAME+KEYID+base64(TYPE || Ed25519 public key): TYPE 0x01 for the
    log's key (a note signature), 0x04 for a witness's (a cosignature/v1)."""

    def __init__(self, text, kind=1):
        parts = (text[:-1] if text.endswith("\n") else text).split("+", 2)  # base64 may hold '+'
        if len(parts) != 3 or not valid_name(parts[0]) or not re.fullmatch(r"[0-9a-f]{8}", parts[1]):
            raise ValueError("the key is not NAME+KEYID+BASE64")
        self.name, raw = parts[0], b64(parts[2])
        if raw is None or len(raw) != 33 or raw[0] != kind:
            raise ValueError("the key is not base64 of 0x%02x and a 32-byte Ed25519 public key" % kind)
        self.id = hashlib.sha256(self.name.encode() + b"\n" + raw).digest()[:4]
        if self.id != bytes.fromhex(parts[1]):
            raise ValueError("the key's ID does not match the key")
        self.verifier = nacl.signing.VerifyKey(raw[1:])

def parse_note(note):
    """(text, [(name, signature bytes)]) of a signed note's form (docs: Checkpoints...), else None."""
    try:
        s = note.decode("utf-8")
    except UnicodeDecodeError:
        return None
    split = s.rfind("\n\n")
    if len(note) > 65536 or CONTROL.search(s) or split < 0 or not s.endswith("\n"):
        return None
    lines, sigs = s[split + 2:-1].split("\n"), []
    if len(lines) > 64:
        return None
    for line in lines:
        name, space, sig64 = line[2:].partition(" ")
        sig = b64(sig64)
        if not line.startswith("\u2014 ") or not space or not valid_name(name) or sig is None or len(sig) < 5:
            return None
        sigs.append((name, sig))
    return s[:split + 1].encode("utf-8"), sigs

def _verifies(key, message, signature):
    try:
        key.verifier.verify(message, signature)
        return True
    except (nacl.exceptions.BadSignatureError, ValueError):
        return False

def open_checkpoint(note, key):
    """(size, root) of a checkpoint note signed by key, else None (docs: Checkpoints...). Signatures
    from other keys are ignored; one from key that does not verify rejects the note."""
    parsed = parse_note(note)
    if parsed is None:
        return None
    text, sigs = parsed
    mine = [sig[4:] for name, sig in sigs if name == key.name and sig[:4] == key.id]
    if not mine or not all(_verifies(key, text, sig) for sig in mine):
        return None
    body = text.decode("utf-8").split("\n")  # origin, size, root and "" after the last newline
    if len(body) != 4 or body[0] != key.name or not SIZE.fullmatch(body[1]):
        return None
    size, root = int(body[1]), b64(body[2])
    return (size, root) if root is not None and len(root) == 32 and size <= MAX_I64 else None

def cosigned(note, wkey):
    """Does the note carry a cosignature/v1 by the witness key wkey, and every such line verify?
    (docs: The witness) A line is key ID || u64 timestamp, big-endian || Ed25519 signature over
    "cosignature/v1\n" "time T\n" and the checkpoint's text."""
    parsed = parse_note(note) or (b"", [])
    mine = [sig[4:] for name, sig in parsed[1] if name == wkey.name and sig[:4] == wkey.id]
    for sig in mine:
        t = struct.unpack_from(">Q", sig)[0] if len(sig) == 72 else MAX_I64 + 1
        if t > MAX_I64 or not _verifies(wkey, b"cosignature/v1\ntime %d\n" % t + parsed[0], sig[8:]):
            return False
    return bool(mine)

class Tree:
    """An RFC 6962 Merkle tree kept as its right edge: (root, height) of its complete subtrees."""

    def __init__(self):
        self.edge, self.size = [], 0

    def append(self, payload):
        h, height = hashlib.sha256(b"\x00" + payload).digest(), 0
        while self.edge and self.edge[-1][1] == height:
            h, height = hashlib.sha256(b"\x01" + self.edge.pop()[0] + h).digest(), height + 1
        self.edge.append((h, height))
        self.size += 1

    def root(self):
        r = self.edge[-1][0] if self.edge else EMPTY_ROOT
        for h, _ in reversed(self.edge[:-1]):
            r = hashlib.sha256(b"\x01" + h + r).digest()
        return r

def read_segment(path):
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)  # a symlink fails (ELOOP)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError("%s: not a regular file" % path)
        return f.read()

def verify(directory, key, saved, witnessed=()):
    """The report on the log in directory; saved and witnessed hold (size, root) of the auditor's
    and of the witness's checkpoints, or None for one that does not verify."""
    names = sorted(n for n in os.listdir(directory) if SEGMENT.fullmatch(n))
    for n in names:
        if not stat.S_ISREG(os.lstat(os.path.join(directory, n)).st_mode):
            raise OSError("%s: not a regular file" % os.path.join(directory, n))
    wanted, roots = {c[0] for c in (*saved, *witnessed) if c}, {0: EMPTY_ROOT}
    tree, checkpoints, size, torn_tail, problems = Tree(), 0, 0, False, []
    for s, name in enumerate(names):
        if int(name[:10]) != s:
            problems.append({"kind": "missing-segment", "segment": s})
            break
        data, o = read_segment(os.path.join(directory, name)), 0
        while o < len(data) and not problems and not torn_tail:
            at = {"segment": s, "offset": o}
            length, crc = struct.unpack_from("<II", data, o) if len(data) - o >= 8 else (None, None)
            if length is not None and (length == 0 or length > MAX_FRAME):
                problems.append({"kind": "damaged-frame", **at, "record": tree.size})
            elif length is None or len(data) - o - 8 < length:
                if s == len(names) - 1:
                    torn_tail = True
                else:
                    problems.append({"kind": "torn-frame", **at, "record": tree.size})
            elif crc32c(payload := data[o + 8:o + 8 + length]) != crc:
                problems.append({"kind": "damaged-frame", **at, "record": tree.size})
            elif payload[:1] == b"{":
                record = parse_canonical(payload)
                if record is None or not valid_record(record):
                    problems.append({"kind": "bad-record", **at, "record": tree.size})
                elif record["seq"] != tree.size:
                    problems.append({"kind": "out-of-sequence", **at, "record": tree.size})
                else:
                    tree.append(payload)
                    if tree.size in wanted:
                        roots[tree.size] = tree.root()
            else:
                head = open_checkpoint(payload, key)
                if head is None:
                    problems.append({"kind": "bad-checkpoint", **at})
                elif head[0] != tree.size:
                    problems.append({"kind": "checkpoint-size", **at})
                elif head[1] != tree.root():
                    problems.append({"kind": "root-mismatch", **at})
                else:
                    checkpoints, size = checkpoints + 1, head[0]
            o += 8 + (length or 0)
        if problems or torn_tail:
            break
    # Then the checkpoints kept elsewhere: the ones that do not verify, the auditor's before the
    # witness's, each in index order; then the rest by size, ties the auditor's first, then by
    # index (so every rewritten/witness-disagrees comes before every truncated/witness-ahead).
    kept = [(0, i, c) for i, c in enumerate(saved)] + [(1, i, c) for i, c in enumerate(witnessed)]
    labels = [("saved", "bad-saved-checkpoint", "truncated", "rewritten"),
              ("witness", "bad-witness-checkpoint", "witness-ahead", "witness-disagrees")]
    for who, i, c in kept:
        if c is None:
            problems.append({"kind": labels[who][1], labels[who][0]: i})
    for n, who, i, root in sorted((c[0], who, i, c[1]) for who, i, c in kept if c):
        if n > tree.size or roots[n] != root:
            problems.append({"kind": labels[who][2 if n > tree.size else 3], labels[who][0]: i})
    return {"records": tree.size, "checkpoints": checkpoints, "size": size,
            "torn_tail": torn_tail, "problems": problems}

def main(argv=None):
    p = argparse.ArgumentParser(description="Verify a Bulkhead audit log (docs/audit-log.md).")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--key", metavar="PUBFILE", help="the verifier key (default DIR/log.pub)")
    p.add_argument("--checkpoint", metavar="FILE", action="append", default=[],
                   help="a signed checkpoint saved earlier; repeat for more")
    p.add_argument("--witness-key", metavar="PUBFILE", help="the witness's key (its witness.pub)")
    p.add_argument("--witness-checkpoint", metavar="FILE", action="append", default=[],
                   help="a checkpoint the witness cosigned; repeat for more (default DIR/witness.cosigned)")
    args = p.parse_args(argv)
    if args.witness_checkpoint and not args.witness_key:
        p.error("--witness-checkpoint needs --witness-key")  # exits 2
    try:
        with open(args.key or os.path.join(args.dir, "log.pub"), "rb") as f:
            key = Key(f.read().decode("utf-8"))
        saved = []
        for path in args.checkpoint:
            with open(path, "rb") as f:
                saved.append(open_checkpoint(f.read(), key))
        witnessed = []
        if args.witness_key:
            with open(args.witness_key, "rb") as f:
                wkey = Key(f.read().decode("utf-8"), kind=4)
            for path in args.witness_checkpoint or [os.path.join(args.dir, "witness.cosigned")]:
                with open(path, "rb") as f:
                    note = f.read()
                witnessed.append(open_checkpoint(note, key) if cosigned(note, wkey) else None)
        report = verify(args.dir, key, saved, witnessed)
    except (OSError, ValueError) as e:
        print("audit_verify: cannot read the log: %s" % e, file=sys.stderr)
        return 2
    print(json.dumps(report, separators=(",", ":"), sort_keys=True))
    return 1 if report["problems"] else 0

if __name__ == "__main__":
    sys.exit(main())
