"""Batched SRTP sending: one ``sendmmsg`` per transport and event-loop iteration.

A publisher's video frame arrives as a burst of packets, and the forwarder sends each
of them to every subscriber. Handing those datagrams to the kernel one ``sendto`` at a
time costs a system call and an event-loop transport call per packet and subscriber,
and wakes each receiver once per packet. A :class:`SendBatch` instead protects every
packet in place into a slot of its own buffer (libsrtp through pylibsrtp's bindings,
no intermediate ``bytes``), and a :class:`FlushScheduler` sends all slots of every
batch that has any with one ``sendmmsg(2)`` per transport once the current loop
iteration's socket callbacks have run: the packets of a burst leave together a few
microseconds later than they would have one by one. Runs of equal-sized datagrams go
out with UDP segmentation offload, so the kernel's output path runs once per run, not
once per packet (see :class:`SendBatch`).

``sendmmsg`` is Linux's (since 3.0); it is reached through cffi's ABI mode (cffi is
already a dependency of pylibsrtp), so nothing is compiled at install time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
import weakref
from collections.abc import Callable

import cffi
import pylibsrtp
from pylibsrtp._binding import ffi as _srtp_ffi
from pylibsrtp._binding import lib as _srtp_lib

from sfu.rtp.packet import RTP_HEADER_SIZE

SLOTS = 64
"""Datagrams a batch holds; a full batch is sent at once and starts over."""
SRTP_MAX_TRAILER = 16 + 128
"""Bytes SRTP may append to a packet (authentication tag and MKI), as pylibsrtp allows."""
MAX_PACKET = 1500
"""Largest RTP packet a slot takes before protection (an Ethernet MTU)."""
SLOT_SIZE = MAX_PACKET + SRTP_MAX_TRAILER
GSO_MAX_SEGMENT = 1400
"""Largest datagram sent by segmentation offload: below any usual path MTU's payload
(the kernel refuses a segment size above it)."""
GSO_MAX_BYTES = 65000
"""Bytes one segmentation-offload send may carry (a UDP datagram's limit, less headers)."""
MSG_DONTWAIT = 0x40
SOL_UDP = 17
UDP_SEGMENT = 103
_CMSG_LEN = 16 + 2
"""``CMSG_LEN(sizeof(uint16_t))`` on 64-bit Linux: the header, then the segment size."""
_CMSG_SPACE = 24
_DROP_ALL = frozenset((errno.EAGAIN, errno.ENOBUFS, errno.ENOMEM, errno.EBADF))
"""Errors after which the rest of the batch is dropped rather than tried one by one."""
_GSO_REFUSED = frozenset((errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP))

_ffi = cffi.FFI()
_ffi.cdef(
    """
    struct iovec { void *iov_base; size_t iov_len; };
    struct msghdr {
        void *msg_name; unsigned int msg_namelen;
        struct iovec *msg_iov; size_t msg_iovlen;
        void *msg_control; size_t msg_controllen;
        int msg_flags;
    };
    struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; };
    struct cmsg_u16 { size_t cmsg_len; int cmsg_level; int cmsg_type; uint16_t value; };
    int sendmmsg(int sockfd, struct mmsghdr *msgvec, unsigned int vlen, int flags);
    """
)
_libc = _ffi.dlopen(None)
_sendmmsg = _libc.sendmmsg
_SOCKADDR_IN = struct.Struct("=H2s4s8x")
_SOCKADDR_IN6 = struct.Struct("=H2sI16sI")

logger = logging.getLogger(__name__)


class _Offload:
    """Whether the kernel takes UDP segmentation offload (``UDP_SEGMENT``, Linux 4.18):
    on until a send is refused for it, then off for the process."""

    enabled = True


def sockaddr(address: tuple[str, int]) -> bytes:
    """The ``struct sockaddr_in`` / ``sockaddr_in6`` of a numeric (host, port)."""
    host, port = address[0], address[1]
    port_bytes = port.to_bytes(2, "big")
    if ":" in host:
        host, _, scope = host.partition("%")
        scope_id = socket.if_nametoindex(scope) if scope else 0
        packed = socket.inet_pton(socket.AF_INET6, host)
        return _SOCKADDR_IN6.pack(socket.AF_INET6, port_bytes, 0, packed, scope_id)
    return _SOCKADDR_IN.pack(socket.AF_INET, port_bytes, socket.inet_pton(socket.AF_INET, host))


class SendBatch:
    """SRTP-protected datagrams to one remote address, waiting for one ``sendmmsg``.

    At the flush, consecutive datagrams of one size (a video frame's packets: encoders
    packetize a frame into equal parts), optionally followed by one smaller one, go out
    as one message with UDP segmentation offload (``UDP_SEGMENT``): the kernel walks
    its UDP/IP output path once for the run and cuts it into the same datagrams. Where
    the kernel refuses offload, the batch sends one message per datagram from then on.

    ``fd`` is duplicated: the batch owns its copy and closes it in :meth:`close` (or
    when it is garbage-collected), so a flush after the ICE socket was closed elsewhere
    fails cleanly instead of writing to whatever reused the number. Without
    ``duplicate`` the batch uses ``fd`` itself, which must outlive it: the worker's
    single UDP port (:mod:`sfu.udp_mux`) closes only after every transport, and a copy
    per transport would cost a file descriptor each.
    """

    def __init__(
        self,
        fd: int,
        address: tuple[str, int],
        session: pylibsrtp.Session,
        scheduler: FlushScheduler,
        duplicate: bool = True,
    ) -> None:
        self._fd = os.dup(fd) if duplicate else fd
        self._release = weakref.finalize(self, os.close, self._fd) if duplicate else None
        """Closes the duplicate once: at :meth:`close`, or when the batch is collected."""
        self._scheduler = scheduler
        self._session = session
        """Kept alive here: libsrtp's context (``_srtp``) is freed with the session."""
        self._context = session._srtp[0]
        """libsrtp's ``srtp_t``, read once (indexing the cdata makes an object)."""
        self._protect = _srtp_lib.srtp_protect
        self._length = _srtp_ffi.new("int *")
        self._buffer = _ffi.new("char[]", SLOTS * SLOT_SIZE)
        self._view = memoryview(_ffi.buffer(self._buffer))
        self._slots = [self._buffer + i * SLOT_SIZE for i in range(SLOTS)]
        self._sizes = [0] * SLOTS
        self._name = _ffi.new("char[]", sockaddr(address))
        self._iov = _ffi.new("struct iovec[]", SLOTS)
        self._iov_entries = [self._iov[i] for i in range(SLOTS)]
        self._controls = _ffi.new("struct cmsg_u16[]", SLOTS)
        self._messages = _ffi.new("struct mmsghdr[]", SLOTS)
        self._runs = [0] * SLOTS
        """Datagrams in each message of the flush being sent."""
        for index in range(SLOTS):
            self._iov[index].iov_base = self._slots[index]
            control = self._controls[index]
            control.cmsg_len = _CMSG_LEN
            control.cmsg_level = SOL_UDP
            control.cmsg_type = UDP_SEGMENT
            header = self._messages[index].msg_hdr
            header.msg_name = self._name
            header.msg_namelen = len(self._name) - 1
            header.msg_control = self._controls + index
        self._count = 0
        self._closed = False
        self.packets_sent = 0
        self.errors = 0
        """Packets dropped: too long, refused by libsrtp, or refused by the kernel
        (a full socket buffer, an unreachable peer)."""

    def add(self, header: bytes, payload: bytes = b"", extension: bytes = b"") -> None:
        """Protect one RTP packet, ``header`` followed by ``payload``, into the next
        slot; it is sent at the next flush.

        The two parts are copied into the slot separately, so a forwarder hands over
        its new header and the publisher's payload without joining them first. A
        non-empty ``extension`` (a whole RFC 8285 header extension block: profile,
        length and elements) is inserted between them, and the X bit set; ``header``
        must then be the 12-byte fixed header alone.
        """
        count = self._count
        if count == SLOTS:
            self.flush()
            count = 0
        head = len(header)
        stamp = len(extension)
        size = head + stamp + len(payload)
        if size > MAX_PACKET or self._closed or (stamp and head != RTP_HEADER_SIZE):
            self.errors += 1
            return
        slot = self._slots[count]
        offset = count * SLOT_SIZE
        view = self._view
        end = offset + head
        view[offset:end] = header
        if stamp:
            view[offset] = header[0] | 0x10
            start, end = end, end + stamp
            view[start:end] = extension
        if payload:
            view[end : offset + size] = payload
        length = self._length
        length[0] = size
        if self._protect(self._context, slot, length):
            self.errors += 1
            return
        size = length[0]
        self._iov_entries[count].iov_len = size
        self._sizes[count] = size
        self._count = count + 1
        if count == 0:
            self._scheduler.schedule(self)

    def flush(self) -> None:
        """Send every protected slot, in as few system calls and kernel passes as the
        sizes allow."""
        count = self._count
        if count:
            self._count = 0
            self._send(0, count)

    def _send(self, first: int, end: int) -> None:
        messages = self._messages
        sizes = self._sizes
        runs = self._runs
        offload = _Offload.enabled
        total = 0
        index = first
        while index < end:
            size = sizes[index]
            stop = index + 1
            if offload and size <= GSO_MAX_SEGMENT:
                length = size
                while stop < end and sizes[stop] == size and length + size <= GSO_MAX_BYTES:
                    length += size
                    stop += 1
                if stop < end and sizes[stop] < size and length + sizes[stop] <= GSO_MAX_BYTES:
                    stop += 1
            header = messages[total].msg_hdr
            header.msg_iov = self._iov + index
            header.msg_iovlen = stop - index
            if stop - index > 1:
                self._controls[total].value = size
                header.msg_controllen = _CMSG_SPACE
            else:
                header.msg_controllen = 0
            runs[total] = stop - index
            total += 1
            index = stop
        done = 0
        slot = first
        while done < total:
            sent = _sendmmsg(self._fd, messages + done, total - done, MSG_DONTWAIT)
            if sent > 0:
                for message in range(done, done + sent):
                    self.packets_sent += runs[message]
                    slot += runs[message]
                done += sent
                continue
            error = _ffi.errno
            if runs[done] > 1 and error in _GSO_REFUSED:
                _Offload.enabled = False
                logger.warning(
                    "UDP segmentation offload refused (%s): sending datagrams one by one",
                    os.strerror(error),
                )
                self._send(slot, end)
                return
            if error in _DROP_ALL:
                self.errors += end - slot
                return
            self.errors += runs[done]
            slot += runs[done]
            done += 1

    def close(self) -> None:
        """Drop what is queued and release the socket."""
        if not self._closed:
            self._closed = True
            self._count = 0
            if self._release is not None:
                self._release()


class FlushScheduler:
    """Flushes every batch that got packets, once per event-loop iteration.

    Callbacks registered with :meth:`add_after_flush` run after each flush, and after
    each iteration that received media (:meth:`poke`): periodic work that checks there
    whether it is due rides on the wake-ups media causes anyway instead of waking the
    process with a timer of its own (see :class:`sfu.worker.Worker`).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[SendBatch] = []
        self._scheduled = False
        self._after_flush: list[Callable[[], None]] = []

    def schedule(self, batch: SendBatch) -> None:
        self._pending.append(batch)
        self.poke()

    def poke(self) -> None:
        """Flush at the end of this loop iteration, and run the after-flush callbacks
        then even if nothing is sent (called for every received packet)."""
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def add_after_flush(self, callback: Callable[[], None]) -> None:
        self._after_flush.append(callback)

    def remove_after_flush(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._after_flush.remove(callback)

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for batch in pending:
            batch.flush()
        for callback in self._after_flush:
            try:
                callback()
            except Exception:  # one failing callback must not stop the sending
                logger.exception("after-flush callback failed")


_schedulers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FlushScheduler] = (
    weakref.WeakKeyDictionary()
)


def flush_scheduler() -> FlushScheduler:
    """The running event loop's scheduler."""
    loop = asyncio.get_running_loop()
    scheduler = _schedulers.get(loop)
    if scheduler is None:
        scheduler = _schedulers[loop] = FlushScheduler(loop)
    return scheduler
