#!/usr/bin/env python3
"""Writes the committed seeds of the `xfs` fuzz target (fuzz/seeds/xfs/) from real images made by
mkfs.xfs -p: each seed is an XSPR sparse excerpt (see fuzz/src/lib.rs, XfsFuzzImage) holding the
superblock sector, the root inode chunk, the log's first blocks and the blocks the inodes' forks
point at (directory blocks, bmbt blocks, remote symlinks, small file data), so that a 300 MB
image fits a seed under 64 KiB. Also writes the image's first 60 KiB as a raw seed.
Run: python3 fuzz/xfs_seeds.py (needs xfsprogs)."""
import os, re, struct, subprocess, sys, tempfile

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "xfs")
LIMIT = 60 * 1024
ENV = dict(os.environ, TEST_DEV="1", TEST_DIR="1", QA_CHECK_FS="1")

def db(img, *cmds):
    args = ["xfs_db", "-r"]
    for c in cmds:
        args += ["-c", c]
    return subprocess.run(args + [img], capture_output=True, text=True, check=True).stdout

def make(tmp, name, proto_body, opts):
    proto = os.path.join(tmp, name + ".proto")
    with open(proto, "w") as f:
        f.write("seed\n0 0\nd--755 0 0\n" + proto_body + "$\n")
    img = os.path.join(tmp, name + ".img")
    with open(img, "wb") as f:
        f.truncate(300 << 20)
    subprocess.run(["mkfs.xfs", "-q", "-p", proto] + opts + [img], env=ENV, check=True)
    return img

def seed(img, name):
    data = open(img, "rb").read()
    bs = int(db(img, "sb 0", "print blocksize").split("=")[1])
    root = int(db(img, "sb 0", "print rootino").split("=")[1])
    isz = int(db(img, "sb 0", "print inodesize").split("=")[1])
    logstart = int(db(img, "sb 0", "print logstart").split("=")[1])
    logd = int(re.search(r"\((\d+)\)", db(img, "convert fsb %d daddr" % logstart)).group(1))
    pieces = [(0, 512), (root * isz, 64 * isz), (logd * 512, 4096)]
    for i in range(64):
        ino = root + i
        out = db(img, "inode %d" % ino, "bmap")
        for m in re.finditer(r"startblock (\d+) \(\d+/\d+\) count (\d+)", out):
            fsb, count = int(m.group(1)), int(m.group(2))
            d = int(re.search(r"\((\d+)\)", db(img, "convert fsb %d daddr" % fsb)).group(1))
            pieces.append((d * 512, min(count, 2) * bs))
        # bmbt blocks of btree-format forks
        for m in re.finditer(r"ptrs\[1-\d+\] = (.*)", db(img, "inode %d" % ino, "print u3.bmbt")):
            for p in m.group(1).split():
                fsb = int(p.split(":")[1])
                d = int(re.search(r"\((\d+)\)", db(img, "convert fsb %d daddr" % fsb)).group(1))
                pieces.append((d * 512, bs))
    blob = b"XSPR" + struct.pack("<Q", len(data))
    for off, ln in pieces:
        rec = struct.pack("<QI", off, ln) + data[off:off + ln]
        if len(blob) + len(rec) > LIMIT:
            break
        blob += rec
    open(os.path.join(OUT, name + ".xspr"), "wb").write(blob)
    open(os.path.join(OUT, name + "-first60k.raw"), "wb").write(data[:60 * 1024])

with tempfile.TemporaryDirectory() as tmp:
    src = os.path.join(tmp, "src")
    os.makedirs(src)
    open(os.path.join(src, "small"), "wb").write(b"hello\n")
    open(os.path.join(src, "block"), "wb").write(bytes(range(256)) * 40)
    body = "small ---644 1 2 %s/small\nblock ---600 3 4 %s/block\n" % (src, src)
    body += "link l--777 0 0 %s\nshort l--777 0 0 small\n" % ("/" + "x" * 300)
    body += "sf d--755 0 0\n" + "".join("f%d ---644 0 0 %s/small\n" % (i, src) for i in range(4)) + "$\n"
    body += "blk d--755 0 0\n" + "".join("e%d ---644 0 0 %s/small\n" % (i, src) for i in range(60)) + "$\n"
    seed(make(tmp, "small", body, []), "small")
    big = "leaf d--755 0 0\n" + "".join("entry_name_%d ---644 0 0 %s/small\n" % (i, src) for i in range(400)) + "$\n"
    seed(make(tmp, "leaf", big, ["-n", "size=8k"]), "leaf")
    seed(make(tmp, "v4", body, ["-m", "crc=0"]), "v4")
print("seeds written to", OUT)
