#!/usr/bin/env python3
"""Self-tests of tools/audit_verify.py: python3 tools/test_audit_verify.py

They tamper with temporary copies of a clean log written by Bulkhead, taken from the directory
in $AUDIT_SAMPLE (default /tmp/auditsamples/valid), which is never modified; the witness tests
sign checkpoints with its log.key and cosign them with a fresh witness key. A few build small
logs of their own with a fresh key. AUDIT_PERF=1 also times a log of 10^5 records.
"""
import base64, hashlib, json, os, shutil, struct, subprocess, sys, tempfile, time, unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "audit_verify.py")
SAMPLE = os.environ.get("AUDIT_SAMPLE", "/tmp/auditsamples/valid")
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # leave no __pycache__ in tools/
import audit_verify as av  # noqa: E402
import nacl.signing  # noqa: E402


def crc32c_bitwise(data):  # independent of the verifier's table-driven one
    c = 0xFFFFFFFF
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    return c ^ 0xFFFFFFFF


def frame(payload):
    return struct.pack("<II", len(payload), av.crc32c(payload)) + payload  # checked in test_crc32c


def read_frames(path):
    """[(offset, payload)] of a well-formed segment."""
    with open(path, "rb") as f:
        data = f.read()
    out, o = [], 0
    while o < len(data):
        n = struct.unpack_from("<I", data, o)[0]
        out.append((o, data[o + 8:o + 8 + n]))
        o += 8 + n
    return out


def write_frames(path, payloads):
    with open(path, "wb") as f:
        f.write(b"".join(frame(p) for p in payloads))


def run(directory, *args):
    p = subprocess.run([sys.executable, SCRIPT, directory, *args], capture_output=True, text=True)
    return p.returncode, (json.loads(p.stdout) if p.stdout.strip() else None)


def mth(leaves):  # RFC 6962 MTH, recursively, straight from the definition
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def record(seq, result="ok"):
    r = {"action": "vm.start", "actor": {"gid": 0, "kind": "local", "pid": 7, "uid": 0},
         "boot_id": "b", "decision": {"allowed": True, "reason": "test"}, "operation": "op-%d" % seq,
         "result": result, "seq": seq, "stage": "outcome", "target": "vm/t", "tenant": None,
         "time_ns": 1, "v": 1}
    return json.dumps(r, separators=(",", ":"), sort_keys=True).encode()


def write_log(directory, payloads, sk, name="test/log", group=10):
    """A one-segment log of the given record payloads, a checkpoint after every group."""
    os.makedirs(directory, exist_ok=True)
    pub = b"\x01" + bytes(sk.verify_key)
    kid = hashlib.sha256(name.encode() + b"\n" + pub).digest()[:4]
    with open(os.path.join(directory, "log.pub"), "w") as f:
        f.write("%s+%s+%s\n" % (name, kid.hex(), base64.b64encode(pub).decode()))
    out, tree, notes = [], av.Tree(), []
    for i, p in enumerate(payloads):
        out.append(p)
        tree.append(p)
        if (i + 1) % group == 0 or i == len(payloads) - 1:
            text = "%s\n%d\n%s\n" % (name, tree.size, base64.b64encode(tree.root()).decode())
            sig = base64.b64encode(kid + sk.sign(text.encode()).signature).decode()
            notes.append((text + "\n\u2014 %s %s\n" % (name, sig)).encode())
            out.append(notes[-1])
    write_frames(os.path.join(directory, "0000000000.seg"), out)
    return notes


def key_text(name, pub, kind):
    raw = bytes([kind]) + bytes(pub)
    kid = hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4]
    return kid, "%s+%s+%s\n" % (name, kid.hex(), base64.b64encode(raw).decode())


def sig_line(name, sig):
    return "\u2014 %s %s\n" % (name, base64.b64encode(sig).decode())


def sign_note(text, name, kid, sk):
    """The signed note of checkpoint text (bytes), signed by the log key sk."""
    return text + b"\n" + sig_line(name, kid + sk.sign(text).signature).encode()


def cosign(note, name, kid, sk, ts=1765000000):
    """note with a cosignature/v1 line added: key ID || u64 big-endian ts || Ed25519 signature."""
    text = note[:note.rindex(b"\n\n") + 1]
    sig = sk.sign(b"cosignature/v1\ntime %d\n" % ts + text).signature
    return note + sig_line(name, kid + struct.pack(">Q", ts) + sig).encode()


class Units(unittest.TestCase):
    def test_crc32c(self):
        self.assertEqual(av.crc32c(b"123456789"), 0xE3069283)
        for n in range(70):
            data = hashlib.sha512(bytes([n])).digest()[:n]
            self.assertEqual(av.crc32c(data), crc32c_bitwise(data))

    def test_worked_example(self):
        rec = (b'{"action":"vm.start","actor":{"gid":1000,"kind":"local","pid":4242,"uid":1000},'
               b'"boot_id":"6f1e9c1a-0b7e-4c53-9d5e-2a0c1f0e9b77","decision":{"allowed":true,'
               b'"reason":"grant operator@tenant/acme"},"operation":"op-7","result":"ok","seq":42,'
               b'"stage":"outcome","target":"vm/web-1","tenant":"acme","time_ns":1764990000123456789,"v":1}')
        self.assertEqual(len(rec), 326)
        self.assertEqual(frame(rec)[:8].hex(" "), "46 01 00 00 9a 43 4b 31")
        self.assertEqual(hashlib.sha256(b"\x00" + rec).hexdigest(),
                         "f1dcef953adbdf4f40b4969b01ba0251f7e8851b71e7e43b1e10a226337b1cd2")
        self.assertTrue(av.valid_record(av.parse_canonical(rec)))

    def test_tree(self):
        tree, leaves = av.Tree(), []
        self.assertEqual(tree.root().hex()[:8], "e3b0c442")
        for n in range(1, 70):
            leaves.append(b"leaf %d" % n)
            tree.append(leaves[-1])
            self.assertEqual(tree.root(), mth(leaves), n)

    def test_canonical_json(self):
        good = [b'{"a":"\\u000a"}', b'{"a":"\\\\n"}', b'{"a":"\xc3\xa9\x7f"}', b'{"a":"\\""}',
                b'{"a":-1,"b":[true,false,null]}', b'{"Z":1,"a":2}']
        bad = [b'{"a":"\\n"}', b'{"a":"\\u001F"}', b'{"a":"\\/"}', b'{"a":"\\u00e9"}', b'{"a":1.0}',
               b'{"a":1e2}', b'{"a":-0}', b'{"a":01}', b'{"a":NaN}', b'{"b":1,"a":2}', b'{"a":1,"a":1}',
               b'{"a":"\\ud800"}', b' {}', b'{"a": 1}', b'{"a":"\xff"}', b'{"a":"\x01"}', b'[' * 5000]
        for p in good:
            self.assertIsNotNone(av.parse_canonical(p), p)
        for p in bad:
            self.assertIsNone(av.parse_canonical(p), p)

    def test_records(self):
        base = json.loads(record(3))
        self.assertTrue(av.valid_record(base))
        changes = [("v", 2), ("seq", -1), ("seq", 2**63), ("time_ns", True), ("tenant", ""),
                   ("target", "x" * 1025), ("stage", "intent"), ("result", None), ("extra", 1),
                   ("actor", {"kind": "system", "uid": 0}), ("actor", {"kind": "certificate",
                   "fingerprint": "sha256:" + "A" * 64}), ("decision", {"allowed": 1, "reason": "r"})]
        for key, value in changes:
            self.assertFalse(av.valid_record({**base, key: value}), (key, value))
        self.assertTrue(av.valid_record({**base, "stage": "intent", "result": None}))
        self.assertTrue(av.valid_record({**base, "actor": {"kind": "certificate",
                                                           "fingerprint": "sha256:" + "ab" * 32}}))


class SampleLog(unittest.TestCase):
    """A temporary copy of the sample log and helpers to tamper with it (no tests of its own)."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="audit-verify-test-")
        self.addCleanup(shutil.rmtree, self.tmp)
        self.dir = os.path.join(self.tmp, "log")
        shutil.copytree(SAMPLE, self.dir, ignore=shutil.ignore_patterns("log.key", "lock"))
        self.segs = sorted(n for n in os.listdir(self.dir) if n.endswith(".seg"))
        self.frames, index = [], 0  # (segment, offset, payload, record index or None)
        for s, n in enumerate(self.segs):
            for o, p in read_frames(self.seg(s)):
                self.frames.append((s, o, p, index if p[:1] == b"{" else None))
                index += p[:1] == b"{"
        self.records = index

    def seg(self, s):
        return os.path.join(self.dir, self.segs[s])

    def replace(self, s, edit):
        """Rewrite segment s from its payloads as edit(list of payloads) returns them."""
        write_frames(self.seg(s), edit([f[2] for f in self.frames if f[0] == s]))

    def records_before_segment(self, s):
        return sum(1 for f in self.frames if f[0] < s and f[3] is not None)

    def pair_of_records(self, s):
        """A segment (s if it has one, else the next that does, round the log) and the position
        in it of a record frame followed by a record frame (groups fall where the writers' timing
        put them)."""
        n = len(self.segs)
        for t in [(s + k) % n for k in range(n) if os.path.exists(self.seg((s + k) % n))]:
            fs = [f for f in self.frames if f[0] == t]
            for i in range(len(fs) - 1):
                if fs[i][3] is not None and fs[i + 1][3] is not None:
                    return t, i
        self.skipTest("no two records next to each other in this sample")

    def expect(self, *problems, rc=1, **fields):
        code, report = run(self.dir, *fields.pop("args", ()))
        self.assertEqual(report["problems"], list(problems))
        for k, v in fields.items():
            self.assertEqual(report[k], v, k)
        self.assertEqual(code, rc)
        return report


class SampleTests(SampleLog):
    def test_clean(self):
        checkpoints = sum(1 for f in self.frames if f[3] is None)
        self.expect(rc=0, records=self.records, size=self.records, checkpoints=checkpoints, torn_tail=False)

    def test_flipped_payload_byte(self):
        s, o, p, r = next(f for f in self.frames if f[0] == 3 and f[3] is not None)
        with open(self.seg(3), "r+b") as f:
            f.seek(o + 8 + 40)
            byte = f.read(1)
            f.seek(o + 8 + 40)
            f.write(bytes([byte[0] ^ 0x01]))
        self.expect({"kind": "damaged-frame", "segment": 3, "offset": o, "record": r}, records=r)

    def test_rewritten_record_with_fixed_crc(self):
        fs = [f for f in self.frames if f[0] == 2]
        i = next(i for i, f in enumerate(fs) if f[3] is not None and b'"result":"ok"' in f[2])
        cp = next(f for f in fs[i:] if f[3] is None)
        self.replace(2, lambda ps: ps[:i] + [ps[i].replace(b'"result":"ok"', b'"result":"no"')] + ps[i + 1:])
        self.expect({"kind": "root-mismatch", "segment": 2, "offset": cp[1]})

    def test_deleted_record(self):
        g, i = self.pair_of_records(4)
        s, o, p, r = [f for f in self.frames if f[0] == g][i]
        self.replace(g, lambda ps: ps[:i] + ps[i + 1:])
        self.expect({"kind": "out-of-sequence", "segment": g, "offset": o, "record": r}, records=r)

    def test_swapped_records(self):
        g, i = self.pair_of_records(5)
        s, o, p, r = [f for f in self.frames if f[0] == g][i]
        self.replace(g, lambda ps: ps[:i] + [ps[i + 1], ps[i]] + ps[i + 2:])
        self.expect({"kind": "out-of-sequence", "segment": g, "offset": o, "record": r}, records=r)

    def test_deleted_last_record_keeps_checkpoint(self):
        last = len(self.segs) - 1
        fs = [f for f in self.frames if f[0] == last]
        i = max(i for i, f in enumerate(fs) if f[3] is not None)
        self.assertIsNone(fs[i + 1][3])
        self.replace(last, lambda ps: ps[:i] + ps[i + 1:])
        self.expect({"kind": "checkpoint-size", "segment": last, "offset": fs[i][1]},
                    records=self.records - 1)

    def test_torn_tail(self):
        size = os.path.getsize(self.seg(len(self.segs) - 1))
        os.truncate(self.seg(len(self.segs) - 1), size - 10)  # inside the last checkpoint
        checkpoints = sum(1 for f in self.frames if f[3] is None)
        self.expect(rc=0, torn_tail=True, records=self.records, checkpoints=checkpoints - 1)

    def test_torn_frame_in_earlier_segment(self):
        os.truncate(self.seg(1), os.path.getsize(self.seg(1)) - 10)
        o = [f for f in self.frames if f[0] == 1][-1][1]
        r = self.records_before_segment(2)
        self.expect({"kind": "torn-frame", "segment": 1, "offset": o, "record": r}, torn_tail=False)

    def test_zeros_are_damage(self):
        last = len(self.segs) - 1
        o = os.path.getsize(self.seg(last))
        with open(self.seg(last), "ab") as f:
            f.write(bytes(8))
        self.expect({"kind": "damaged-frame", "segment": last, "offset": o, "record": self.records})

    def test_missing_segment(self):
        os.remove(self.seg(4))
        self.expect({"kind": "missing-segment", "segment": 4}, records=self.records_before_segment(4))

    def test_corrupt_signature(self):
        s, o, p, _ = next(f for f in self.frames if f[3] is None)
        i = len(p) - 12  # a character of the signature's base64, well before the padding
        bad = p[:i] + (b"B" if p[i:i + 1] == b"A" else b"A") + p[i + 1:]
        self.replace(s, lambda ps: [bad if q == p else q for q in ps])
        self.expect({"kind": "bad-checkpoint", "segment": s, "offset": o})

    def test_bad_record(self):
        s, o, p, r = next(f for f in self.frames if f[0] == 6 and f[3] is not None)
        self.replace(6, lambda ps: [q.replace(b'{"action"', b'{ "action"') if q == p else q for q in ps])
        self.expect({"kind": "bad-record", "segment": 6, "offset": o, "record": r})

    def test_saved_checkpoints(self):
        first, last = os.path.join(self.tmp, "first.note"), os.path.join(self.tmp, "last.note")
        with open(first, "wb") as f:
            f.write(next(f[2] for f in self.frames if f[3] is None))
        with open(last, "wb") as f:
            f.write([f[2] for f in self.frames if f[3] is None][-1])
        self.expect(rc=0, args=("--checkpoint", first, "--checkpoint", last))
        os.remove(self.seg(len(self.segs) - 1))
        self.expect({"kind": "truncated", "saved": 1}, args=("--checkpoint", first, "--checkpoint", last))
        with open(first, "r+b") as f:
            f.seek(3)
            f.write(b"#")
        self.expect({"kind": "bad-saved-checkpoint", "saved": 0}, {"kind": "truncated", "saved": 1},
                    args=("--checkpoint", first, "--checkpoint", last))

    def test_cannot_read(self):
        self.assertEqual(run(os.path.join(self.tmp, "nowhere")), (2, None))
        self.assertEqual(run(self.dir, "--key", os.path.join(self.tmp, "nokey"))[0], 2)
        os.rename(self.seg(2), os.path.join(self.tmp, "moved"))
        os.symlink(os.path.join(self.tmp, "moved"), self.seg(2))
        self.assertEqual(run(self.dir), (2, None))


class WitnessTests(SampleLog):
    """The witness's view (docs: Verifying a log, The witness) of the sample log."""

    def setUp(self):
        super().setUp()
        with open(os.path.join(SAMPLE, "log.key")) as f:  # PRIVATE+KEY+NAME+KEYID+base64(0x01 || seed)
            _, _, self.name, kid, seed = f.read().strip().split("+", 4)
        self.log_sk = nacl.signing.SigningKey(base64.b64decode(seed)[1:])
        self.log_kid = key_text(self.name, self.log_sk.verify_key, 1)[0]
        self.assertEqual(self.log_kid.hex(), kid)
        self.wname, self.wsk = "witness.test/w1", nacl.signing.SigningKey.generate()
        self.wkid, text = key_text(self.wname, self.wsk.verify_key, 4)
        self.wpub = os.path.join(self.tmp, "witness.pub")
        with open(self.wpub, "w") as f:
            f.write(text)
        self.payloads = [f[2] for f in self.frames if f[3] is not None]
        self.last = [f[2] for f in self.frames if f[3] is None][-1]

    def checkpoint(self, size, rewrite=False):
        """A checkpoint of the sample's first size records (one changed if rewrite), log-signed."""
        tree = av.Tree()
        for i, p in enumerate(self.payloads[:size]):
            tree.append(p + b" " if rewrite and i == 1 else p)  # any change to record 1
        text = b"%s\n%d\n%s\n" % (self.name.encode(), size, base64.b64encode(tree.root()))
        return sign_note(text, self.name, self.log_kid, self.log_sk)

    def cosigned(self, note, **kw):
        return cosign(note, self.wname, self.wkid, self.wsk, **kw)

    def files(self, *notes):
        paths = []
        for note in notes:
            paths.append(os.path.join(self.tmp, "n%d.note" % len(os.listdir(self.tmp))))
            with open(paths[-1], "wb") as f:
                f.write(note)
        return paths

    def witness(self, *notes, saved=()):
        """Arguments giving the witness's key and notes (if any) and the saved checkpoints."""
        args = ["--witness-key", self.wpub] if notes else []
        for path in self.files(*notes):
            args += ["--witness-checkpoint", path]
        for path in self.files(*saved):
            args += ["--checkpoint", path]
        return args

    def test_clean(self):
        self.assertEqual(self.checkpoint(self.records), self.last)  # the helper signs as the log does
        with open(os.path.join(self.dir, "witness.cosigned"), "wb") as f:
            f.write(self.cosigned(self.last))
        self.expect(rc=0, args=("--witness-key", self.wpub))  # DIR/witness.cosigned by default
        self.expect(rc=0, args=self.witness(self.cosigned(self.last), self.cosigned(self.checkpoint(5))))
        other = nacl.signing.SigningKey.generate()  # a cosignature from a key not held is ignored
        extra = cosign(self.cosigned(self.last), "someone.else", bytes(4), other)
        self.expect(rc=0, args=self.witness(extra))

    def test_bad_witness_checkpoint(self):
        good = self.cosigned(self.last)
        i = len(good) - 12  # a character of the cosignature's base64
        corrupt = good[:i] + (b"B" if good[i:i + 1] == b"A" else b"A") + good[i + 1:]
        impostor = cosign(self.last, self.wname, self.wkid, nacl.signing.SigningKey.generate())
        another = nacl.signing.SigningKey.generate()  # same name, another key (and so key ID)
        other_key = cosign(self.last, self.wname, key_text(self.wname, another.verify_key, 4)[0], another)
        future = self.cosigned(self.last, ts=1 << 63)
        log_sig = self.last.split(b" ")[-1]  # base64 of the log's key ID and signature, newline
        not_log_signed = self.cosigned(self.last.replace(log_sig, b"A" * 88 + b"\n"))
        for bad in (corrupt, impostor, other_key, self.last, future, not_log_signed):
            self.expect({"kind": "bad-witness-checkpoint", "witness": 1}, args=self.witness(good, bad, good))

    def test_witness_ahead(self):
        last = len(self.segs) - 1
        os.remove(self.seg(last))
        self.expect({"kind": "witness-ahead", "witness": 0}, records=self.records_before_segment(last),
                    args=self.witness(self.cosigned(self.last)))

    def test_witness_disagrees(self):
        self.expect({"kind": "witness-disagrees", "witness": 0},
                    args=self.witness(self.cosigned(self.checkpoint(40, rewrite=True))))

    def test_order(self):
        """Frame problem; bad saved, bad witness (index order); then by size, saved first on ties."""
        os.remove(self.seg(len(self.segs) - 1))
        n, cp, co = self.records_before_segment(len(self.segs) - 1), self.checkpoint, self.cosigned
        saved = [self.last.replace(b"\n", b"\n\n", 1), self.last, cp(10, True), cp(20, True), cp(7)]
        witnessed = [co(cp(10, True)), cp(3), co(cp(n + 1)), co(cp(5, True)), co(cp(n)), co(cp(n + 1))]
        # Those past the log's end: by size (the log's own last checkpoint, saved 1, may be just
        # one record past it, as big as the witness's n + 1, where saved comes first).
        total = self.records
        beyond = sorted([(total, 0, 1, {"kind": "truncated", "saved": 1}),
                         (n + 1, 1, 2, {"kind": "witness-ahead", "witness": 2}),
                         (n + 1, 1, 5, {"kind": "witness-ahead", "witness": 5})], key=lambda t: t[:3])
        self.expect({"kind": "bad-saved-checkpoint", "saved": 0},
                    {"kind": "bad-witness-checkpoint", "witness": 1},
                    {"kind": "witness-disagrees", "witness": 3}, {"kind": "rewritten", "saved": 2},
                    {"kind": "witness-disagrees", "witness": 0}, {"kind": "rewritten", "saved": 3},
                    *[t[3] for t in beyond], args=self.witness(*witnessed, saved=saved))
        self.expect({"kind": "rewritten", "saved": 1}, {"kind": "truncated", "saved": 0},  # not index order
                    args=self.witness(saved=[self.last, cp(9, True)]))
        g, i = self.pair_of_records(2)
        s, o, p, r = [f for f in self.frames if f[0] == g][i]
        self.replace(g, lambda ps: ps[:i] + ps[i + 1:])  # a frame problem comes first of all
        self.expect({"kind": "out-of-sequence", "segment": g, "offset": o, "record": r},
                    {"kind": "bad-witness-checkpoint", "witness": 0}, {"kind": "witness-ahead", "witness": 1},
                    args=self.witness(cp(3), co(cp(n))))

    def test_usage_and_unreadable(self):
        note = self.files(self.cosigned(self.last))[0]
        self.assertEqual(run(self.dir, "--witness-checkpoint", note), (2, None))
        self.assertEqual(run(self.dir, "--witness-key", self.wpub), (2, None))  # no DIR/witness.cosigned
        self.assertEqual(run(self.dir, "--witness-key", os.path.join(self.dir, "log.pub"),
                             "--witness-checkpoint", note), (2, None))  # a 0x01 key, not a witness's


class OwnLogs(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="audit-verify-test-")
        self.addCleanup(shutil.rmtree, self.tmp)
        self.sk = nacl.signing.SigningKey.generate()

    def test_rewritten(self):
        a, b = os.path.join(self.tmp, "a"), os.path.join(self.tmp, "b")
        saved = os.path.join(self.tmp, "saved.note")
        with open(saved, "wb") as f:
            f.write(write_log(a, [record(i) for i in range(25)], self.sk)[1])  # size 20
        write_log(b, [record(i, "ok" if i != 7 else "changed") for i in range(30)], self.sk)
        self.assertEqual(run(a, "--checkpoint", saved)[0], 0)
        self.assertEqual(run(b), (0, {"records": 30, "checkpoints": 3, "size": 30,
                                      "torn_tail": False, "problems": []}))
        self.assertEqual(run(b, "--checkpoint", saved)[1]["problems"], [{"kind": "rewritten", "saved": 0}])

    def test_foreign_key(self):
        a = os.path.join(self.tmp, "a")
        write_log(a, [record(i) for i in range(3)], self.sk)
        other = os.path.join(self.tmp, "other.pub")
        write_log(os.path.join(self.tmp, "o"), [], nacl.signing.SigningKey.generate())
        shutil.copy(os.path.join(self.tmp, "o", "log.pub"), other)
        self.assertEqual(run(a, "--key", other)[1]["problems"],
                         [{"kind": "bad-checkpoint", "segment": 0, "offset": 3 * (8 + len(record(0)))}])

    @unittest.skipUnless(os.environ.get("AUDIT_PERF"), "set AUDIT_PERF=1 to time 10^5 records")
    def test_performance(self):
        a = os.path.join(self.tmp, "big")
        write_log(a, [record(i) for i in range(100000)], self.sk, group=10)
        start = time.monotonic()
        code, report = run(a)
        print("\n10^5 records: %.1f s" % (time.monotonic() - start), file=sys.stderr)
        self.assertEqual((code, report["records"], report["checkpoints"]), (0, 100000, 10000))


if __name__ == "__main__":
    unittest.main()
