"""A hostile local user: holds as many idle connections to a Unix socket as the
listener lets it keep, and sends nothing on them.

Connections are opened in batches; one the listener refuses is closed at once, so a
batch that comes back all closed ends the attempt. Prints "held N refused M" and
keeps the connections open until its standard input closes.

usage: hold_connections.py SOCKET MOST
"""

import resource
import socket
import sys
import time

BATCH = 256
SETTLE = 0.4


def closed(s):
    try:
        return s.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def main():
    path, most = sys.argv[1], int(sys.argv[2])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held, refused = [], 0
    while len(held) < most:
        batch = []
        for _ in range(min(BATCH, most - len(held))):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
            except OSError:
                refused += 1
                s.close()
                continue
            batch.append(s)
        time.sleep(SETTLE)
        kept = []
        for s in batch:
            if closed(s):
                refused += 1
                s.close()
            else:
                kept.append(s)
        held.extend(kept)
        if not kept:
            break
    print(f"held {len(held)} refused {refused}", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
