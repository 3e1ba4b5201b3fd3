#!/usr/bin/env python3
"""Builds the seed corpus fuzz/corpus/<target>/ from the recorded server streams in fixtures/.

Run by `scripts/fuzz --seeds`; the output is deterministic, so the committed seeds can be
rebuilt and compared. Seeds are small (the whole corpus stays well under 2 MB):

- backend_decode: each stream's first 64 KiB and its protocol-dense parts (startup and the
  queries before BASE_BACKUP, the end of the BASE_BACKUP response), cut at message boundaries;
- basebackup_legacy (10, 14) / basebackup_options (17): the BASE_BACKUP response's first
  64 KiB, the whole response with each archive cut to its first members (at a member boundary,
  re-chunked into CopyData, terminated again for 15+) and the manifest cut short, and a
  response that fails with an ErrorResponse;
- replication_message: hand-built CopyBoth payloads and START_REPLICATION streams (no WAL
  stream is recorded), for the receiver the target builds (start 0/100000, 1 MiB segments,
  stop point 0/100100);
- tar_path_policy: member names, and the first members of the 10 and 17 base archives.
"""

import gzip
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
HEAD = 64 * 1024
ARCHIVE_BUDGET = 24 * 1024
MANIFEST_BUDGET = 1024
CHUNK = 8192
WAL_START = 1 << 20


def msg(tag, body=b""):
    return tag.encode() + struct.pack(">I", len(body) + 4) + body


def messages(stream):
    """The stream cut into (tag, body, raw) triples; a trailing partial message is dropped."""
    out, i = [], 0
    while i + 5 <= len(stream):
        length = struct.unpack(">I", stream[i + 1 : i + 5])[0]
        if i + 1 + length > len(stream):
            break
        out.append((chr(stream[i]), stream[i + 5 : i + 1 + length], stream[i : i + 1 + length]))
        i += 1 + length
    return out


def join(msgs):
    return b"".join(m[2] for m in msgs)


def head(msgs, limit=HEAD):
    """Whole messages from the front, at most `limit` bytes."""
    out, size = [], 0
    for m in msgs:
        if size + len(m[2]) > limit:
            break
        out.append(m)
        size += len(m[2])
    return join(out)


def queries(client):
    startup = struct.unpack(">I", client[:4])[0]
    return [body[:-1].decode() for tag, body, _ in messages(client[startup:]) if tag == "Q"]


def member_boundary(tar, budget):
    """The largest offset <= budget where a member header starts (or the archive ends)."""
    best, off = 0, 0
    while off + 512 <= len(tar) and off <= budget:
        block = tar[off : off + 512]
        if block == bytes(512):
            break
        best = off
        size = int(block[124:136].rstrip(b"\0 ").decode() or "0", 8)
        off += 512 + (size + 511) // 512 * 512
    if off <= budget:
        best = min(off, len(tar))
    return best


def chunked(data, prefix=b""):
    return [msg("d", prefix + data[i : i + CHUNK]) for i in range(0, len(data), CHUNK)]


def compact_legacy(resp):
    """The response with the (single) archive cut at a member boundary, the manifest cut."""
    out, i, copies = [], 0, 0
    while i < len(resp):
        tag, _, raw = resp[i]
        out.append(raw)
        i += 1
        if tag != "H":
            continue
        data = b""
        while resp[i][0] == "d":
            data += resp[i][1]
            i += 1
        if copies == 0:  # the base archive (the fixtures have no tablespaces)
            out += chunked(data[: member_boundary(data, ARCHIVE_BUDGET)])
        else:  # the manifest
            out += chunked(data[:MANIFEST_BUDGET])
        copies += 1
    return b"".join(out)


def compact_options(resp):
    """The 15+ response: archive cut at a member boundary and terminated, manifest cut."""
    out, i = [], 0
    while i < len(resp):
        tag, body, raw = resp[i]
        i += 1
        if tag == "d" and body[:1] == b"n":
            out.append(raw)
            data = b""
            while resp[i][0] == "d" and resp[i][1][:1] in (b"d", b"p"):
                if resp[i][1][:1] == b"d":
                    data += resp[i][1][1:]
                i += 1
            out += chunked(data[: member_boundary(data, ARCHIVE_BUDGET)] + bytes(1024), b"d")
        elif tag == "d" and body[:1] == b"m":
            out.append(raw)
            data = b""
            while resp[i][0] == "d" and resp[i][1][:1] == b"d":
                data += resp[i][1][1:]
                i += 1
            out += chunked(data[:MANIFEST_BUDGET], b"d")
        else:
            out.append(raw)
    return b"".join(out)


def failing(resp):
    """The start position, then an ErrorResponse and ReadyForQuery."""
    first_c = next(k for k, m in enumerate(resp) if m[0] == "C")
    error = msg("E", b"SERROR\0VERROR\0C58P01\0Mcould not open file \"x\"\0\0")
    return join(resp[: first_c + 1]) + error + msg("Z", b"I")


def archive_head(resp, options, budget):
    """The first members of the base archive, terminated."""
    data = b""
    for tag, body, _ in resp:
        if tag == "d" and (not options or body[:1] == b"d"):
            data += body[1:] if options else body
            if len(data) > 4 * budget:
                break
    return data[: member_boundary(data, budget)] + bytes(1024)


def xlog(start, data):
    return b"w" + struct.pack(">QQq", start, start + len(data), 7) + data


def keepalive(wal_end, reply):
    return b"k" + struct.pack(">Qq", wal_end, 7) + bytes([reply])


def row_description(*names):
    body = struct.pack(">h", len(names))
    for name in names:
        body += name.encode() + b"\0" + struct.pack(">IhIhih", 0, 0, 25, -1, -1, 0)
    return msg("T", body)


def data_row(*values):
    body = struct.pack(">h", len(values))
    for v in values:
        body += struct.pack(">i", len(v)) + v.encode()
    return msg("D", body)


def replication_seeds():
    wal = bytes(range(256)) * 2
    end = msg("C", b"START_STREAMING\0") + msg("Z", b"I")
    return {
        "payload-xlogdata": xlog(WAL_START, wal[:64]),
        "payload-keepalive": keepalive(WAL_START + 64, 1),
        "stream-to-stop-point": msg("W", b"\0\0\0")
        + msg("d", xlog(WAL_START, wal[:200]))
        + msg("d", keepalive(WAL_START + 200, 1))
        + msg("d", xlog(WAL_START + 200, wal[:100]))
        + msg("d", xlog(WAL_START + 300, wal[:100]))
        + msg("c")
        + end,
        "stream-timeline-switch": msg("W", b"\0\0\0")
        + msg("d", xlog(WAL_START, wal[:100]))
        + msg("c")
        + row_description("next_tli", "next_tli_startpos")
        + data_row("2", "0/100050")
        + msg("C", b"SELECT\0")
        + end,
        "stream-server-error": msg("W", b"\0\0\0")
        + msg("d", xlog(WAL_START, wal[:32]))
        + msg("E", b"SFATAL\0VFATAL\0C57P01\0Mterminating connection\0\0")
        + msg("Z", b"I"),
    }


def main():
    seeds = {t: {} for t in ("backend_decode", "basebackup_legacy", "basebackup_options",
                             "replication_message", "tar_path_policy")}
    for major in (10, 14, 17):
        fixture = os.path.join(ROOT, "fixtures", f"pg{major}")
        with gzip.open(os.path.join(fixture, "backup.server.bin.gz")) as f:
            server = f.read()
        with gzip.open(os.path.join(fixture, "backup.client.bin.gz")) as f:
            client = f.read()
        msgs = messages(server)
        # The BASE_BACKUP response starts after the ReadyForQuery that ends the query before
        # it (the first one ends the startup).
        ready = [k for k, m in enumerate(msgs) if m[0] == "Z"]
        resp = msgs[ready[len(queries(client)) - 1] + 1 :]
        options = major >= 15
        last_copy = max(k for k, m in enumerate(resp) if m[0] == "d")

        seeds["backend_decode"][f"pg{major}-head"] = head(msgs)
        seeds["backend_decode"][f"pg{major}-before-base-backup"] = join(msgs[: len(msgs) - len(resp)])
        seeds["backend_decode"][f"pg{major}-response-end"] = join(resp[last_copy:])
        target = "basebackup_options" if options else "basebackup_legacy"
        seeds[target][f"pg{major}-response-head"] = head(resp)
        compact = compact_options(resp) if options else compact_legacy(resp)
        seeds[target][f"pg{major}-response-compact"] = compact
        seeds[target][f"pg{major}-response-error"] = failing(resp)
        if major in (10, 17):
            seeds["tar_path_policy"][f"pg{major}-archive-head"] = archive_head(resp, options, 8192)

    seeds["replication_message"] = replication_seeds()
    names = [b"backup_label", b"./pg_wal/archive_status/", b"pg_tblspc/16388/", b"base/1/1259",
             b"a//./b", b"../etc", b"/etc/passwd", b"a/.."]
    for k, name in enumerate(names):
        seeds["tar_path_policy"][f"name-{k}"] = name

    total = 0
    for target, files in seeds.items():
        d = os.path.join(CORPUS, target)
        os.makedirs(d, exist_ok=True)
        for name, data in sorted(files.items()):
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
            total += len(data)
        print(f"{target}: {len(files)} seeds, {sum(map(len, files.values()))} bytes")
    print(f"total {total} bytes in {CORPUS}")


if __name__ == "__main__":
    sys.exit(main())
