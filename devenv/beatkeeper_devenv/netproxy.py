"""A TCP proxy between one client (a worker, beat) and Redis that can be cut: a real partition.

`cut()` drops every byte in both directions from then on, on the open
connections and on new ones (accepted, never answered): what the worker sees
when the network between it and Redis fails silently, with no reset to tell
it. `heal()` forwards again: connections made during the cut are closed (their
clients reconnect), and those whose bytes were dropped time out on their own.
Other clients of the same Redis are not affected.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class Partition:
    upstream: tuple[str, int]
    listener: socket.socket = field(init=False)
    cut_event: threading.Event = field(default_factory=threading.Event)
    sockets: list[socket.socket] = field(default_factory=list)
    hanging: list[socket.socket] = field(default_factory=list)  # accepted during a cut
    lock: threading.Lock = field(default_factory=threading.Lock)
    acceptor: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.acceptor = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self.acceptor.start()

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def cut(self) -> None:
        self.cut_event.set()

    def heal(self) -> None:
        self.cut_event.clear()
        with self.lock:
            hanging, self.hanging = self.hanging, []
        for sock in hanging:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.cut_event.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.acceptor.join(timeout=5)
        with self.lock:
            for sock in self.sockets:
                sock.close()
            self.sockets.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.sockets.append(client)
            if self.cut_event.is_set():
                with self.lock:
                    self.hanging.append(client)
                continue  # accepted and left hanging, as a blackholed route is
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()  # upstream down (restarting): refused, as it would be
                continue
            with self.lock:
                self.sockets.append(server)
            for source, target in ((client, server), (server, client)):
                threading.Thread(
                    target=self._relay, args=(source, target), name="proxy-relay", daemon=True
                ).start()

    def _relay(self, source: socket.socket, target: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                with contextlib.suppress(OSError):
                    target.shutdown(socket.SHUT_WR)
                return
            if self.cut_event.is_set():
                continue  # dropped on the floor
            try:
                target.sendall(data)
            except OSError:
                return
